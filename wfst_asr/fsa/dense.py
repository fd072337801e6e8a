"""DenseFsaVec: network output log-probs plus supervision segments.

Non-finite inputs: a NaN or ``+inf`` log-prob in the frames of one segment must not touch any
other segment. :func:`nonfinite_rows` finds the rows (frames) that hold one, with one reduction
over the tensor in the common case where there is none, and :meth:`DenseFsaVec.finite` gives
the log-probs the engine computes on: the same tensor when every row is clean, else a copy
whose bad rows are zeros (through ``torch.where``: their gradient is exactly 0, never NaN),
plus the segments that had a bad row among their frames (the engine excludes them: total NaN,
zero gradient, empty lattice). A ``-inf`` log-prob is a zero probability, not an error: it only
matters when it leaves a segment no path (total ``-inf``, zero gradient).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

#: what counts as a non-finite value of a row (the last dimension): "log_probs": NaN or +inf;
#: "logits" (log-softmax input): also a row that is -inf everywhere (its log-softmax is NaN);
#: "finite": any NaN or +-inf. Each kind is stricter than the ones before it.
NONFINITE_KINDS = ("log_probs", "logits", "finite")
_TAG = "_wfst_asr_clean"  # on a tensor: (version, kind level) it was found clean at


def _version(x: torch.Tensor) -> int | None:
    """``x``'s in-place modification counter (None for an inference-mode tensor: no memo)."""
    try:
        return x._version
    except RuntimeError:
        return None


def _row_flags(x: torch.Tensor, level: int) -> torch.Tensor:
    """bool ``x.shape[:-1]``: rows with a non-finite value of the kind ``NONFINITE_KINDS[level]``."""
    if level == 2:
        lo, hi = torch.aminmax(x, dim=-1)
        return ~(torch.isfinite(lo) & torch.isfinite(hi))
    m = torch.amax(x, -1)  # NaN and +inf propagate; -inf only for a row that is -inf throughout
    return ~torch.isfinite(m) if level == 1 else ~(m < float("inf"))


def nonfinite_rows(x: torch.Tensor, kind: str = "log_probs") -> torch.Tensor | None:
    """The rows of ``x [..., V]`` holding a non-finite value of ``kind`` (see
    ``NONFINITE_KINDS``): bool ``x.shape[:-1]`` on ``x``'s device, or None when there is none.

    The common case costs one reduction over ``x`` and one sync. "None" is remembered on the
    tensor (until it is modified in place), so a loss that checked its input and the engine it
    calls do not read it twice.
    """
    level = NONFINITE_KINDS.index(kind)
    tag = getattr(x, _TAG, None)
    if tag is not None and tag[0] == _version(x) is not None and tag[1] >= level:
        return None
    with torch.no_grad():
        xd = x.detach()
        if xd.numel() == 0:
            return None
        if level == 0:  # one scalar reduction; rows only when something is there
            clean = bool(torch.amax(xd) < float("inf"))
            bad = None if clean else _row_flags(xd, level)
        else:
            bad = _row_flags(xd, level)
            clean = not bool(bad.any())
    if clean:
        mark_clean(x, kind)
        return None
    return bad


def mark_clean(x: torch.Tensor, kind: str = "log_probs") -> None:
    """Record that ``x`` (as it is now) has no non-finite value of ``kind``."""
    try:
        setattr(x, _TAG, (_version(x), NONFINITE_KINDS.index(kind)))
    except (AttributeError, RuntimeError):  # e.g. a tensor subclass without a __dict__
        pass


def zero_rows(x: torch.Tensor, rows: torch.Tensor, kind: str = "log_probs",
              fill: float = 0.0) -> torch.Tensor:
    """``x`` with the rows ``rows`` (bool ``x.shape[:-1]``) set to ``fill``, through
    ``torch.where``: the gradient w.r.t. ``x`` is exactly 0 there (``x * 0`` would let NaN
    through). The result is marked clean for ``kind`` when ``rows`` covers every bad row."""
    out = torch.where(rows.to(x.device).unsqueeze(-1), x.new_full((), fill), x)
    mark_clean(out, kind)
    return out


class DenseFsaVec:
    """Network output seen as a batch of dense, linear FSAs (one per supervision segment).

    Args:
      log_probs: float ``[B, T, V]``; column 0 is blank. Usually the output of log_softmax, but
        any scores work (they are added to graph scores, log semiring).
      supervision_segments: int32 ``[N, 3]`` rows of (sequence index, start frame, number of
        frames). Several segments may come from the same sequence.
      allow_truncate: frames to cut from a segment that runs past ``T`` (k2's option); 0 means
        such a segment is an error.

    Segment ``n`` covers frames ``start_n .. start_n + len_n - 1`` of sequence ``seq_n``; after
    its last frame a virtual frame consumes only label -1 with score 0, as in k2.
    """

    def __init__(self, log_probs: torch.Tensor, supervision_segments: torch.Tensor,
                 allow_truncate: int = 0) -> None:
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs must be [B, T, V], got {tuple(log_probs.shape)}")
        seg = torch.as_tensor(supervision_segments)
        if seg.dim() != 2 or seg.shape[1] != 3:
            raise ValueError(f"supervision_segments must be [N, 3], got {tuple(seg.shape)}")
        if seg.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"supervision_segments must be int32, got {seg.dtype}")
        seg = seg.to(device="cpu", dtype=torch.int64).clone()
        B, T, _ = log_probs.shape
        for i, (s, st, n) in enumerate(seg.tolist()):
            if not 0 <= s < B:
                raise ValueError(f"segment {i}: sequence index {s} out of range [0, {B})")
            if st < 0 or n < 0:
                raise ValueError(f"segment {i}: negative start or length ({st}, {n})")
            if st + n > T:
                if st + n - T <= allow_truncate:
                    seg[i, 2] = T - st
                else:
                    raise ValueError(f"segment {i}: frames {st}..{st + n - 1} run past T={T}")
        self.log_probs = log_probs
        self.segments = seg  # CPU int64 [N, 3]

    @property
    def num_segments(self) -> int:
        return self.segments.shape[0]

    @property
    def num_labels(self) -> int:
        """V, the number of output columns (labels 0..V-1)."""
        return self.log_probs.shape[2]

    @property
    def duration(self) -> torch.Tensor:
        """int64 ``[N]`` (CPU): number of frames of each segment."""
        return self.segments[:, 2]

    @property
    def device(self) -> torch.device:
        return self.log_probs.device

    def finite(self) -> tuple[DenseFsaVec, torch.Tensor | None]:
        """``(dense, bad)``: what the engine computes on.

        ``bad`` is None when no log-prob is NaN or ``+inf`` (then ``dense`` is ``self``);
        otherwise ``dense`` has every frame (row) holding one set to zeros (frames outside all
        segments then do not matter at all) and ``bad`` is bool ``[N]`` (CPU): the segments
        with such a frame, which the engine excludes. Cached until the log-probs change.
        """
        lp = self.log_probs
        cached = self.__dict__.get("_finite")
        if cached is not None and cached[0] is lp and cached[1] == _version(lp) is not None:
            return cached[2] or self, cached[3]
        rows = nonfinite_rows(lp)
        if rows is None:
            res: tuple[DenseFsaVec | None, torch.Tensor | None] = (None, None)  # None: self
        else:
            # bad frames per segment from a prefix count of bad rows per sequence
            cs = torch.nn.functional.pad(rows.to(torch.int64).cumsum(1), (1, 0)).cpu()
            seq, start, n = self.segments.unbind(1)
            bad = (cs[seq, start + n] - cs[seq, start]) > 0
            res = (DenseFsaVec(zero_rows(lp, rows), self.segments), bad)
            if bool(bad.any()):
                log.warning("%d of %d segment(s) have NaN or +inf log-probs in their frames; "
                            "excluded (total NaN, zero gradient, empty lattice): %s",
                            int(bad.sum()), bad.numel(), bad.nonzero().squeeze(1).tolist())
        self._finite = (lp, _version(lp), *res)
        return res[0] or self, res[1]

    def to(self, device) -> DenseFsaVec:
        return DenseFsaVec(self.log_probs.to(device), self.segments)

    def __repr__(self) -> str:
        return (f"DenseFsaVec(num_segments={self.num_segments}, "
                f"log_probs={tuple(self.log_probs.shape)}, device={self.device})")
