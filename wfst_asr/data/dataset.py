"""ASR dataset, samplers and supervision segments (lhotse style).

A lhotse sampler (:func:`make_sampler`) yields a ``CutSet`` per mini-batch; the
:class:`AsrDataset` turns it into tensors; :func:`supervision_segments` turns the batch's
supervisions into the ``int32 [N, 3]`` rows a :class:`~wfst_asr.fsa.DenseFsaVec` takes, at the
frame rate of the network output::

    sampler = make_sampler(cuts, max_duration=200.0, shuffle=True)
    loader = make_dataloader(AsrDataset(cmvn="data/fbank/cmvn.pt"), sampler)
    for batch in loader:
        log_probs, out_lens = model(batch["features"], batch["feature_lens"])  # [B, T', V]
        segs = supervision_segments(batch, model)  # the model's own frame-rate rule
        dense = DenseFsaVec(log_probs, segs)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, OnTheFlyFeatures, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler
from lhotse.features.base import FeatureExtractor
from lhotse.utils import compute_num_frames

from wfst_asr.data.features import _first_line, apply_cmvn, load_cmvn

try:  # lhotse >= 1.0 has it; the fallback below keeps the dataset working without it
    from lhotse.dataset import SpecAugment
except ImportError:  # pragma: no cover
    SpecAugment = None

__all__ = [
    "AsrDataset",
    "TimeFreqMask",
    "make_dataloader",
    "make_sampler",
    "supervision_segments",
]

log = logging.getLogger(__name__)


class TimeFreqMask(torch.nn.Module):
    """Small SpecAugment without time warping: ``num_freq_masks`` bands of at most
    ``freq_mask_size`` bins and ``num_time_masks`` spans of at most ``time_mask_size`` frames
    (and at most ``max_time_fraction`` of the sequence) per sequence, set to 0 (the mean after
    CMVN). Used when lhotse's ``SpecAugment`` is not available; same call signature."""

    def __init__(self, num_freq_masks: int = 2, freq_mask_size: int = 27,
                 num_time_masks: int = 10, time_mask_size: int = 100,
                 max_time_fraction: float = 0.15, p: float = 0.9) -> None:
        super().__init__()
        self.num_freq_masks = num_freq_masks
        self.freq_mask_size = freq_mask_size
        self.num_time_masks = num_time_masks
        self.time_mask_size = time_mask_size
        self.max_time_fraction = max_time_fraction
        self.p = p

    def forward(self, features: torch.Tensor,
                supervision_segments: torch.Tensor | None = None) -> torch.Tensor:
        features = features.clone()
        B, T, F = features.shape
        lens = [T] * B
        if supervision_segments is not None:
            lens = [0] * B
            for s, st, n in supervision_segments.tolist():
                lens[s] = max(lens[s], st + n)
        for b in range(B):
            if torch.rand(()) > self.p:
                continue
            for _ in range(self.num_freq_masks):
                w = int(torch.randint(0, min(self.freq_mask_size, F) + 1, ()))
                f0 = int(torch.randint(0, F - w + 1, ()))
                features[b, :, f0:f0 + w] = 0.0
            budget = int(self.max_time_fraction * lens[b])
            for _ in range(self.num_time_masks):
                w = int(torch.randint(0, min(self.time_mask_size, budget) + 1, ()))
                budget -= w
                t0 = int(torch.randint(0, max(lens[b] - w, 0) + 1, ()))
                features[b, t0:t0 + w, :] = 0.0
        return features


class AsrDataset(torch.utils.data.Dataset):
    """Map a ``CutSet`` mini-batch (from a lhotse sampler) to padded tensors.

    Args:
      extractor: when given, features are computed on the fly from audio with lhotse's
        ``OnTheFlyFeatures`` (use the extractor the CMVN stats were computed with); otherwise
        the cuts must have precomputed features.
      cmvn: ``(mean [F], std [F])``, or the path of a ``.pt`` from
        :func:`~wfst_asr.data.features.save_cmvn`; applied to every frame.
      spec_augment: ``True`` for lhotse's ``SpecAugment`` with its defaults (or
        :class:`TimeFreqMask` without lhotse's), or any module ``f(features, segments)``;
        ``None``/``False`` for none (use it on the training set only). Applied after CMVN.
      padding_value: value of the frames past each sequence's end (after CMVN).
      return_cuts: put the batch's (sorted, surviving) ``CutSet`` in ``batch["cuts"]``.

    ``__getitem__(cuts)`` sorts the cuts by decreasing duration (so sequence 0 is the longest
    and one-supervision cuts give segments in decreasing length) and returns::

      {"features": float32 [B, T, F], "feature_lens": int64 [B],
       "supervisions": {"sequence_idx", "start_frame", "num_frames": int64 [N],
                        "text", "id", "cut_id", "speaker", "language": lists of N,
                        <every key of supervision.custom, e.g. "tokens">: lists of N (None where
                        a supervision lacks it)},
       "skipped": ids of cuts dropped because their audio/features could not be read,
       "cuts": CutSet (only with return_cuts)}

    Start and number of frames are at the feature frame rate (see :func:`supervision_segments`
    for the network's). A batch whose cuts all fail has ``B = 0``: skip it.
    """

    def __init__(self, extractor: FeatureExtractor | None = None,
                 cmvn: tuple[torch.Tensor, torch.Tensor] | str | os.PathLike | None = None,
                 spec_augment: bool | torch.nn.Module | None = None,
                 padding_value: float = 0.0, return_cuts: bool = False,
                 num_audio_workers: int = 0) -> None:
        super().__init__()
        self.extractor = extractor
        self.on_the_fly = (OnTheFlyFeatures(extractor, num_workers=num_audio_workers,
                                            fault_tolerant=True)
                           if extractor is not None else None)
        if isinstance(cmvn, (str, os.PathLike)):
            cmvn = load_cmvn(cmvn)
        self.cmvn = cmvn
        if spec_augment is True:
            spec_augment = SpecAugment() if SpecAugment is not None else TimeFreqMask()
        self.spec_augment = spec_augment or None
        self.padding_value = padding_value
        self.return_cuts = return_cuts

    # -- feature loading ------------------------------------------------------------------

    def _precomputed(self, cuts: CutSet) -> tuple[list[torch.Tensor], list, list[str]]:
        feats, ok, skipped = [], [], []
        for cut in cuts:
            try:
                feats.append(torch.as_tensor(cut.load_features(), dtype=torch.float32))
                ok.append(cut)
            except Exception as e:  # noqa: BLE001 -- skip and report, never crash
                log.warning("skipped cut %s: %s: %s", cut.id, type(e).__name__, _first_line(e))
                skipped.append(cut.id)
        return feats, ok, skipped

    def _on_the_fly(self, cuts: CutSet) -> tuple[list[torch.Tensor], list, list[str]]:
        try:
            feats, lens, ok_cuts = self.on_the_fly(cuts)
            ok = list(ok_cuts)
            out = [feats[i, :n] for i, n in enumerate(lens.tolist())]
        except Exception:  # noqa: BLE001 -- find the culprit(s) one cut at a time
            out, ok = [], []
            for cut in cuts:
                try:
                    f, n, c = self.on_the_fly(CutSet.from_cuts([cut]))
                    if len(c):
                        out.append(f[0, :int(n[0])])
                        ok.append(cut)
                except Exception as e:  # noqa: BLE001 -- skip and report, never crash
                    log.warning("skipped cut %s: %s: %s", cut.id, type(e).__name__, _first_line(e))
        ok_ids = {c.id for c in ok}
        skipped = [c.id for c in cuts if c.id not in ok_ids]
        if skipped:
            log.warning("skipped %d cuts whose audio could not be read: %s", len(skipped),
                        ", ".join(skipped))
        return out, ok, skipped

    def _feature_dim(self, cuts: CutSet) -> int:
        if self.extractor is not None:
            first = next(iter(cuts), None)
            return self.extractor.feature_dim(first.sampling_rate if first else 16000)
        return next((c.num_features for c in cuts if c.has_features), 0)

    # -- batch ----------------------------------------------------------------------------

    def __getitem__(self, cuts: CutSet) -> dict:
        cuts = cuts.sort_by_duration(ascending=False)
        if self.on_the_fly is not None:
            feats, ok, skipped = self._on_the_fly(cuts)
            frame_shift = self.extractor.frame_shift
        else:
            feats, ok, skipped = self._precomputed(cuts)
            frame_shift = None
        B = len(feats)
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        T = int(lens.max()) if B else 0
        F = feats[0].shape[1] if B else self._feature_dim(cuts)
        features = torch.full((B, T, F), self.padding_value, dtype=torch.float32)
        for i, f in enumerate(feats):
            if self.cmvn is not None:
                f = apply_cmvn(f, *self.cmvn)
            features[i, :f.shape[0]] = f
        if self.spec_augment is not None and B:
            full = torch.stack([torch.arange(B), torch.zeros(B, dtype=torch.int64), lens], 1)
            features = self.spec_augment(features, full.to(torch.int32))
            valid = torch.arange(T)[None, :] < lens[:, None]
            features = features.masked_fill(~valid[:, :, None], self.padding_value)

        sup = _collect_supervisions(ok, lens.tolist(), frame_shift)
        batch = {"features": features, "feature_lens": lens, "supervisions": sup,
                 "skipped": skipped}
        if self.return_cuts:
            batch["cuts"] = CutSet.from_cuts(ok)
        return batch


def _collect_supervisions(cuts: Sequence, lens: list[int], frame_shift: float | None) -> dict:
    seq, start, num = [], [], []
    fields: dict[str, list] = {"text": [], "id": [], "cut_id": [], "speaker": [],
                               "language": []}
    customs: list[dict] = []
    for i, cut in enumerate(cuts):
        shift = frame_shift if frame_shift is not None else cut.frame_shift
        for s in cut.supervisions:
            st = compute_num_frames(max(s.start, 0.0), shift, cut.sampling_rate)
            st = min(st, lens[i])
            end = compute_num_frames(min(s.end, cut.duration), shift, cut.sampling_rate)
            n = max(min(end, lens[i]) - st, 0)
            seq.append(i)
            start.append(st)
            num.append(n)
            fields["text"].append(s.text)
            fields["id"].append(s.id)
            fields["cut_id"].append(cut.id)
            fields["speaker"].append(s.speaker)
            fields["language"].append(s.language)
            customs.append(s.custom or {})
    out: dict = {"sequence_idx": torch.tensor(seq, dtype=torch.int64),
                 "start_frame": torch.tensor(start, dtype=torch.int64),
                 "num_frames": torch.tensor(num, dtype=torch.int64)}
    out.update(fields)
    keys = sorted({k for c in customs for k in c})
    for k in keys:
        if k in out:
            log.warning("supervision custom field %r shadows a built-in field; skipped", k)
            continue
        out[k] = [c.get(k) for c in customs]
    return out


# --------------------------------------------------------------------------- samplers


def make_sampler(cuts: CutSet, max_duration: float, shuffle: bool = False,
                 bucketing: bool = True, num_buckets: int = 10, drop_last: bool = False,
                 seed: int = 0, world_size: int | None = None, rank: int | None = None,
                 max_cuts: int | None = None) -> CutSampler:
    """A lhotse sampler of ``CutSet`` mini-batches of at most ``max_duration`` seconds.

    ``bucketing=True``: ``DynamicBucketingSampler`` (cuts of similar duration batched together,
    little padding; ``num_buckets`` buckets). ``bucketing=False``: ``SimpleCutSampler``. Call
    ``sampler.set_epoch(epoch)`` each epoch for a new shuffle.
    """
    if bucketing:
        return DynamicBucketingSampler(cuts, max_duration=max_duration, max_cuts=max_cuts,
                                       shuffle=shuffle, num_buckets=num_buckets,
                                       drop_last=drop_last, seed=seed, world_size=world_size,
                                       rank=rank)
    return SimpleCutSampler(cuts, max_duration=max_duration, max_cuts=max_cuts,
                            shuffle=shuffle, drop_last=drop_last, seed=seed,
                            world_size=world_size, rank=rank)


def make_dataloader(dataset: AsrDataset, sampler: CutSampler,
                    num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` whose sampler yields whole batches (``batch_size=None``)."""
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None,
                                       num_workers=num_workers,
                                       persistent_workers=num_workers > 0)


# --------------------------------------------------------------------------- segments


class FrameRate(Protocol):
    """A network's frame-rate rule (every :mod:`wfst_asr.models` encoder is one)."""

    subsampling_factor: int

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor: ...


def supervision_segments(batch: dict, model: FrameRate | None = None, sort: bool = False):
    """``int32 [N, 3]`` rows (sequence index, start frame, number of frames) for
    :class:`~wfst_asr.fsa.DenseFsaVec`, at the network's output frame rate.

    The frame-rate rule is the model's (data asks the model): ``model`` is anything with
    ``subsampling_factor`` (int) and ``output_lengths(lens [N] int64) -> [N] int64``, as every
    encoder of :mod:`wfst_asr.models` has; None means no subsampling. The start frame is
    ``start // subsampling_factor``; the number of frames is ``output_lengths`` of the
    supervision's frames, clamped so that the segment ends within
    ``output_lengths(feature_lens[seq])``: every row fits a network output of
    ``output_lengths(features.shape[1])`` frames whatever the padding.

    The rows follow ``batch["supervisions"]`` order (already by decreasing duration for
    one-supervision cuts, see :class:`AsrDataset`). With ``sort=True`` they are sorted by
    decreasing number of frames (stable) and ``(segments, order)`` is returned, ``order``
    indexing the supervision lists (``[texts[i] for i in order]``).
    """
    sup = batch["supervisions"]
    seq = torch.as_tensor(sup["sequence_idx"], dtype=torch.int64)
    start = torch.as_tensor(sup["start_frame"], dtype=torch.int64)
    num = torch.as_tensor(sup["num_frames"], dtype=torch.int64)
    lens = torch.as_tensor(batch["feature_lens"], dtype=torch.int64)
    s = int(model.subsampling_factor) if model is not None else 1
    rule = model.output_lengths if model is not None else (lambda n: n)
    start_sub = start // s
    limit = torch.as_tensor(rule(lens), dtype=torch.int64)[seq] if len(seq) else seq
    start_sub = torch.minimum(start_sub, limit)
    num_sub = torch.minimum(torch.as_tensor(rule(num), dtype=torch.int64), limit - start_sub)
    segs = torch.stack([seq, start_sub, num_sub], dim=1).to(torch.int32)
    if not sort:
        return segs
    order = torch.sort(num_sub, descending=True, stable=True).indices
    return segs[order], order
