"""The four losses of discriminative segmental models (Tang, Wang, Gimpel and Livescu 2016),
on the dense segment lattices of :mod:`wfst_asr.fsa.segment`.

Inputs are end-indexed segment scores ``[B, T, D, L]`` (``scores[b, e, d - 1, y]``: the
segment ``(e + 1 - d, e + 1, y)``, e.g. from :class:`wfst_asr.models.SegmentScorer`) and
``lens [B]`` frames. A *segmentation* is a list of segments ``(s, t, y)`` covering ``0 .. n``
(frames ``s .. t - 1``). Per utterance ``b``, with ``score(z)`` the sum of a path's segment
scores:

==================  =======================================================================
``log``             ``logsumexp_z score(z) - score(z_gold)``  (needs the gold segmentation)
``hinge``           ``max_z [score(z) + cost(z, z_gold)] - score(z_gold)``  (tropical;
                    needs the gold segmentation)
``latent_hinge``    ``max_z [score(z) + cost(z, z*)] - max_{z in Z(y)} score(z)``, with ``z*``
                    the best segmentation of the label sequence ``y`` (the argmax of the
                    second term)
``marginal_log``    ``logsumexp_z score(z) - logsumexp_{z in Z(y)} score(z)``
==================  =======================================================================

``Z(y)`` is the constrained lattice of the label sequence; ``cost`` the overlap cost counted
per frame: the number of frames whose label differs (a Hamming distance between the frame
labellings, which decomposes over segments).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from wfst_asr.fsa.segment import (
    best_paths_of,
    best_segmentation,
    constrained_scores,
    segment_tot_scores,
)
from wfst_asr.losses.align import subsample_alignments
from wfst_asr.losses.common import drop_nonfinite, exclusion_info, reduce_loss

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "SegmentalLoss",
    "Segments",
    "frame_labels",
    "infeasible",
    "overlap_cost",
    "path_scores",
    "runs",
    "segmental_loss",
    "segments_to_labels",
]

KINDS = ("hinge", "log", "latent_hinge", "marginal_log")
#: which losses need a gold segmentation (the others need only the label sequence)
NEEDS_SEGMENTS = {"hinge": True, "log": True, "latent_hinge": False, "marginal_log": False}

Segments = Sequence[Sequence[tuple[int, int, int]]]


def frame_labels(segments: Segments, T: int, device: torch.device | str | None = None
                 ) -> torch.Tensor:
    """int64 ``[B, T]``: each frame's label under the segmentations (``-1``: no segment)."""
    out = torch.full((len(segments), T), -1, dtype=torch.int64)
    for b, segs in enumerate(segments):
        for s, t, y in segs:
            out[b, s:t] = y
    return out.to(device)


def segments_to_labels(segments: Segments, device: torch.device | str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [B, U] int64, label_lens [B])``: the label sequences of segmentations."""
    return pad_labels([[y for _s, _t, y in segs] for segs in segments], device)


def overlap_cost(frames: torch.Tensor, D: int, L: int) -> torch.Tensor:
    """End-indexed ``[B, T, D, L]``: the frames of segment ``(e + 1 - d, e + 1, y)`` whose
    label in ``frames`` (``[B, T]``, ``-1``: none) is not ``y`` (segments starting before
    frame 0 count only their frames from 0)."""
    B, T = frames.shape
    onehot = torch.zeros(B, T + 1, L, dtype=torch.float32, device=frames.device)
    ok = frames >= 0
    onehot[:, 1:][ok] = torch.nn.functional.one_hot(frames[ok], L).float()
    cum = onehot.cumsum(1)  # [B, T + 1, L]: label counts of frames 0 .. i - 1
    end = torch.arange(1, T + 1, device=frames.device)  # t = e + 1
    d = torch.arange(1, D + 1, device=frames.device)
    start = (end[:, None] - d[None, :]).clamp(min=0)  # [T, D]
    same = cum[:, end][:, :, None, :] - cum[:, start.reshape(-1)].view(B, T, D, L)
    length = (end[:, None] - start).to(torch.float32)  # [T, D]
    return length[None, :, :, None] - same


def path_scores(scores: torch.Tensor, segments: Segments) -> torch.Tensor:
    """``[B]``: the sum of each segmentation's segment scores (differentiable); NaN for a
    segmentation with a segment outside the layout (empty, longer than ``D``, past ``T``, or a
    label outside ``[0, L)``)."""
    B, T, D, L = scores.shape
    idx, bad = [], set()
    for b, segs in enumerate(segments):
        for s, t, y in segs:
            if 0 <= s < t <= T and t - s <= D and 0 <= y < L:
                idx.append((b, t - 1, t - s - 1, y))
            else:
                bad.add(b)
    out = scores.new_zeros(B)
    if idx:
        i = torch.tensor(idx, dtype=torch.int64, device=scores.device)
        out = out.index_add(0, i[:, 0], scores[i[:, 0], i[:, 1], i[:, 2], i[:, 3]])
    if bad:
        mask = torch.zeros(B, dtype=torch.bool, device=scores.device)
        mask[sorted(bad)] = True
        out = torch.where(mask, torch.full_like(out, float("nan")), out)
    return out


def infeasible(lens: Sequence[int] | torch.Tensor, D: int,
               label_lens: Sequence[int] | torch.Tensor | None = None,
               segments: Segments | None = None) -> list[str]:
    """Why each utterance cannot be trained on (``""``: it can): no frames, fewer frames than
    labels, more frames than ``D`` per label, or a gold segment longer than ``D`` / not
    covering the frames ``0 .. n`` in order."""
    lens_l = [int(x) for x in torch.as_tensor(lens).tolist()]
    out = [""] * len(lens_l)
    for b, n in enumerate(lens_l):
        if n == 0:
            out[b] = "no frames"
            continue
        if label_lens is not None:
            u = int(torch.as_tensor(label_lens)[b])
            if u == 0:
                out[b] = "no labels"
            elif n < u:
                out[b] = f"{n} frames for {u} labels"
            elif n > u * D:
                out[b] = f"{n} frames need segments longer than D={D} for {u} labels"
        if not out[b] and segments is not None:
            pos = 0
            for s, t, _y in segments[b]:
                if s != pos or t <= s:
                    out[b] = f"gold segments do not tile the frames (at frame {pos})"
                    break
                if t - s > D:
                    out[b] = f"a gold segment of {t - s} frames is longer than D={D}"
                    break
                pos = t
            if not out[b] and pos != n:
                out[b] = f"gold segments end at frame {pos}, the utterance at {n}"
    return out


def segmental_loss(scores: torch.Tensor, lens: torch.Tensor, kind: str, *,
                   labels: torch.Tensor | None = None, label_lens: torch.Tensor | None = None,
                   segments: Segments | None = None) -> torch.Tensor:
    """Per-utterance loss ``[B]`` (see the module docstring).

    Args:
      scores: end-indexed segment scores ``[B, T, D, L]``.
      lens: ``[B]`` frames per utterance.
      kind: one of :data:`KINDS`.
      labels, label_lens: the label sequences (``latent_hinge``, ``marginal_log``; derived from
        ``segments`` when not given).
      segments: gold segmentations (``hinge``, ``log``).

    Feasibility is the caller's (:func:`infeasible`): an infeasible utterance gives ``inf``
    or ``nan`` here.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown segmental loss {kind!r}; one of {', '.join(KINDS)}")
    _, T, D, L = scores.shape
    if NEEDS_SEGMENTS[kind]:
        if segments is None:
            raise ValueError(f"the {kind} loss needs gold segmentations")
        gold = path_scores(scores, segments)
        if kind == "log":
            return segment_tot_scores(scores, lens, log_semiring=True) - gold
        cost = overlap_cost(frame_labels(segments, T, scores.device), D, L)
        return segment_tot_scores(scores + cost, lens, log_semiring=False) - gold
    if labels is None:
        if segments is None:
            raise ValueError(f"the {kind} loss needs label sequences (or segmentations)")
        labels, label_lens = segments_to_labels(segments, scores.device)
    if kind == "marginal_log":
        return (segment_tot_scores(scores, lens, log_semiring=True)
                - constrained_scores(scores, lens, labels, label_lens, log_semiring=True))
    con = constrained_scores(scores, lens, labels, label_lens, log_semiring=False)
    # z*: read from the gradient of this maximum (no second pass), or searched when there is
    # no graph (e.g. under no_grad); either way the cost is a constant
    best = (best_paths_of(con, scores) if con.requires_grad
            else best_segmentation(scores, lens, labels, label_lens))
    cost = overlap_cost(frame_labels(best, T, scores.device), D, L)
    return segment_tot_scores(scores + cost, lens, log_semiring=False) - con


def runs(frames: Sequence[int]) -> list[tuple[int, int, int]]:
    """The segmentation of a frame labelling: one ``(s, t, y)`` per run of equal labels
    (``-1`` frames end the labelling; adjacent segments with the same label merge)."""
    out: list[tuple[int, int, int]] = []
    for i, y in enumerate(frames):
        y = int(y)
        if y < 0:
            break
        if out and out[-1][2] == y and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1, y)
        else:
            out.append((i, i + 1, y))
    return out


class SegmentalLoss(nn.Module):
    """A segmental loss over a batch (:func:`segmental_loss`), with the trainer's contract.

    ``forward(scores [B, T, D, L], lens [B], targets) -> (loss, info)``: ``targets`` are one
    label sequence per utterance (token ids ``1..L``; label ``y = id - 1``), or, with
    ``frame_targets``, one token id per *input* frame (a reference segmentation, e.g. TIMIT's
    ``.phn`` boundaries), brought to the output rate like alignments (the middle input frame of
    each output frame, :func:`~wfst_asr.losses.align.subsample_alignments`) and cut into runs.

    Args:
      kind: one of :data:`KINDS`; ``hinge`` and ``log`` need ``frame_targets``.
      reduction: ``"sum"`` (the trainer divides by frames), ``"mean"`` (per frame) or ``"none"``.
      frame_targets: the targets are per-input-frame labels (a segmentation).
      subsampling: input frames per output frame (set from the model by the criterion).

    Utterances that cannot be trained on (:func:`infeasible`: no frames, fewer frames than
    labels, a gold segment longer than ``D``, ...) are excluded before the loss and counted in
    ``info`` (:func:`~wfst_asr.losses.common.exclusion_info`); a total that still comes out
    non-finite is dropped with a zero gradient.
    """

    def __init__(self, kind: str = "marginal_log", reduction: str = "sum",
                 frame_targets: bool = False, subsampling: int = 1) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown segmental loss {kind!r}; one of {', '.join(KINDS)}")
        if NEEDS_SEGMENTS[kind] and not frame_targets:
            raise ValueError(f"the {kind} loss needs gold segmentations: frame_targets=true "
                             "with a per-frame label field as token_field")
        if reduction not in ("sum", "mean", "none"):
            raise ValueError(f"reduction must be sum, mean or none, got {reduction!r}")
        self.kind, self.reduction = kind, reduction
        self.frame_targets, self.subsampling = bool(frame_targets), int(subsampling)

    def gold(self, targets, lens: torch.Tensor) -> tuple[list, list[list[int]]]:
        """``(segmentations or None per utterance, label sequences)`` of a batch's targets."""
        seqs = [list(t.tolist() if isinstance(t, torch.Tensor) else t) for t in targets]
        if not self.frame_targets:
            return [None] * len(seqs), [[int(x) - 1 for x in s] for s in seqs]
        frames = subsample_alignments(seqs, self.subsampling)
        segs = []
        for b, n in enumerate(torch.as_tensor(lens).tolist()):
            row = frames[b, :n] - 1 if frames.shape[1] else frames[b, :0]
            segs.append(runs(row.tolist()))
        return segs, [[y for _s, _t, y in sg] for sg in segs]

    def forward(self, scores: torch.Tensor, lens: torch.Tensor, targets
                ) -> tuple[torch.Tensor, dict]:
        B, _, D, L = scores.shape
        lens = torch.as_tensor(lens, dtype=torch.int64, device=scores.device)
        segs, labels = self.gold(targets, lens.cpu())
        bad_label = [b for b, s in enumerate(labels) if s and (min(s) < 0 or max(s) >= L)]
        if bad_label:
            b = bad_label[0]
            raise ValueError(f"utterance {b} of the batch: token ids must be in [1, {L}], got "
                             f"{[y + 1 for y in labels[b]]}")
        reasons = infeasible(lens.cpu(), D, [len(s) for s in labels],
                             segs if self.frame_targets else None)
        ok = torch.tensor([not r for r in reasons], dtype=torch.bool)
        if not bool(ok.all()):
            log.debug("SegmentalLoss: excluded %s", {b: r for b, r in enumerate(reasons) if r})
        keep = ok.nonzero().squeeze(1)
        per_utt = scores.new_zeros(B)
        num_nonfinite = 0
        if keep.numel():
            k = keep.tolist()
            sub = scores[keep.to(scores.device)]
            lab, lab_lens = pad_labels([labels[i] for i in k], scores.device)
            gold = [segs[i] for i in k] if self.frame_targets else None
            val = segmental_loss(sub, lens[keep.to(scores.device)], self.kind, labels=lab,
                                 label_lens=lab_lens, segments=gold)
            fin, num_nonfinite = drop_nonfinite(val, keep, ok, "SegmentalLoss",
                                                "gave a non-finite loss")
            val = torch.where(fin, val, torch.zeros_like(val))
            per_utt = per_utt.index_put((keep.to(scores.device),), val)
        frames = int(lens.cpu()[ok].sum())
        info = exclusion_info(B, ok, frames, num_nonfinite, torch.zeros(B, dtype=torch.bool))
        info["reasons"] = {b: r for b, r in enumerate(reasons) if r}
        return reduce_loss(per_utt, frames, self.reduction,
                           () if keep.numel() else (scores,)), info


def pad_labels(seqs: Sequence[Sequence[int]], device: torch.device | str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [B, max(U, 1)] int64, label_lens [B])`` of label sequences, padded with 0."""
    U = max((len(s) for s in seqs), default=0)
    out = torch.zeros(len(seqs), max(U, 1), dtype=torch.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(list(s), dtype=torch.int64)
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64, device=device)
    return out.to(device), lens
