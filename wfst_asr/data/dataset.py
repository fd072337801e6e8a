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

Large corpora: :func:`open_cuts` opens a manifest lazily (``.jsonl``/``.jsonl.gz`` read cut by
cut, a lhotse Shar directory shard by shard), so memory does not grow with the corpus; read
errors name the file (the shard, the manifest line). ``DynamicBucketingSampler`` then holds a
bounded buffer of cuts, estimates its buckets from the first cuts only, and starts in a time
that does not depend on the corpus size.
"""

from __future__ import annotations

import logging
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Protocol

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, OnTheFlyFeatures, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler, TimeConstraint
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
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
    "open_cuts",
    "shar_dir",
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


# --------------------------------------------------------------------------- manifests

#: Prefix that marks a lhotse Shar directory explicitly (``shar:DIR``); a directory holding
#: ``cuts.NNNNNN.jsonl[.gz]`` files is taken for one without it.
SHAR_PREFIX = "shar:"

#: Suffixes of the manifests read lazily, line by line.
LAZY_SUFFIXES = (".jsonl", ".jsonl.gz")

#: Cuts the bucketing sampler reads to estimate its duration bins (lhotse's default).
NUM_CUTS_FOR_BINS = 10000

_READ_ERRORS = (ValueError, KeyError, TypeError, AttributeError, AssertionError, OSError,
                EOFError, tarfile.TarError, RuntimeError)


def shar_dir(path: str | os.PathLike) -> Path | None:
    """The lhotse Shar directory ``path`` names (``shar:DIR``, or a directory with
    ``cuts.NNNNNN.jsonl[.gz]`` shards), else None. ValueError naming ``path`` for a
    ``shar:`` path that is not such a directory."""
    name = os.fspath(path)
    explicit = name.startswith(SHAR_PREFIX)
    folder = Path(name[len(SHAR_PREFIX):] if explicit else name)
    if folder.is_dir() and any(folder.glob("cuts.*.jsonl*")):
        return folder
    if explicit:
        raise ValueError(f"{folder}: not a lhotse Shar directory (no cuts.NNNNNN.jsonl.gz)")
    return None


def open_cuts(path: str | os.PathLike, *, metadata_only: bool = False,
              shuffle_shards: bool = False, seed: int = 0) -> CutSet:
    """The cuts of a manifest as a lazy ``CutSet`` whatever the format.

    * ``.jsonl`` / ``.jsonl.gz``: read cut by cut (``CutSet.from_jsonl_lazy``);
    * a lhotse Shar directory (``shar:DIR`` or a directory of ``cuts.NNNNNN.jsonl.gz`` and
      field shards, as ``wfst-asr export-shar`` writes): read shard by shard, the fields'
      data (features, audio) attached in memory; ``metadata_only`` reads the cuts shards
      alone; ``shuffle_shards`` shuffles the shard order, anew on every full pass (seed
      ``seed + pass``);
    * any other lhotse manifest (``.json``, ``.json.gz``, ...): read whole, iterated lazily.

    The samplers thus treat every format alike (same seed, same batches). A missing path is a
    ValueError naming it; a read error while iterating is a ValueError naming the file (the
    manifest and its line, or the Shar shard file that is truncated or corrupt).
    """
    folder = shar_dir(path)
    if folder is not None:
        return CutSet(SharCuts.from_dir(folder, metadata_only, shuffle_shards, seed))
    name = os.fspath(path)
    if not Path(name).is_file():
        raise ValueError(f"{name}: no such cuts manifest"
                         + (" (a directory without Shar shards)" if Path(name).is_dir() else ""))
    if name.endswith(LAZY_SUFFIXES):
        return CutSet(JsonlCuts(name))
    try:
        cuts = CutSet.from_file(name).to_eager()
    except _READ_ERRORS as e:
        raise ValueError(f"{name}: {type(e).__name__}: {_first_line(e)} (not a readable "
                         "lhotse cut manifest)") from None
    return CutSet(ListCuts(list(cuts), name))


class ListCuts:
    """A list of cuts seen as a lazy source (one code path for every manifest format)."""

    def __init__(self, cuts: list, path: str) -> None:
        self.cuts, self.path = cuts, path

    def __iter__(self) -> Iterator:
        return iter(self.cuts)

    def __len__(self) -> int:
        return len(self.cuts)


class JsonlCuts:
    """The cuts of a JSON-lines manifest, read lazily; a read error is a ValueError naming
    the file and the line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __iter__(self) -> Iterator:
        line = 0
        try:
            for cut in CutSet.from_jsonl_lazy(self.path):
                line += 1
                yield cut
        except _READ_ERRORS as e:
            raise ValueError(f"{self.path}:{line + 1}: {type(e).__name__}: {_first_line(e)} "
                             "(not a readable lhotse cut manifest)") from None

    def __len__(self) -> int:
        return _count_lines(self.path)


class SharCuts:
    """The cuts of lhotse Shar shards, read shard by shard with lhotse's reader.

    lhotse stops silently at the end of a field's tar file that is shorter than the shard's
    cuts manifest, and its errors on a damaged tar or gzip file do not say which file: here
    either is a ValueError naming the shard file that is truncated or corrupt.

    Args:
      shards: one ``{field: path}`` per shard, ``"cuts"`` in each (the reader's ``shards``).
      shuffle_shards: shuffle the shard order, with seed ``seed + epoch``: the epoch of
        ``sampler`` when set (:meth:`follow`; a resumed run then reads the shards in the order
        of an uninterrupted one), else the number of full passes so far.
    """

    def __init__(self, shards: list[dict[str, Path]], shuffle_shards: bool = False,
                 seed: int = 0) -> None:
        self.shards, self.shuffle_shards, self.seed = shards, shuffle_shards, seed
        self.epoch = 0
        self.sampler: CutSampler | None = None

    def follow(self, sampler: CutSampler) -> None:
        """Take the shard order's epoch from ``sampler.epoch`` (``sampler.set_epoch``)."""
        self.sampler = sampler

    @classmethod
    def from_dir(cls, folder: Path, metadata_only: bool = False, shuffle_shards: bool = False,
                 seed: int = 0) -> SharCuts:
        """The shards of a Shar directory (written by ``CutSet.to_shar``)."""
        from lhotse.shar.readers.lazy import LazySharIterator

        try:
            shards = LazySharIterator(in_dir=folder).shards
        except AssertionError as e:
            raise ValueError(f"{folder}: not a complete lhotse Shar directory "
                             f"({_first_line(e) or 'no cuts shards'})") from None
        if metadata_only:
            shards = [{"cuts": s["cuts"]} for s in shards]
        return cls(shards, shuffle_shards, seed)

    def __iter__(self) -> Iterator:
        shards = list(self.shards)
        if self.shuffle_shards:
            epoch = self.sampler.epoch if self.sampler is not None else self.epoch
            random.Random(self.seed + epoch).shuffle(shards)
        for shard in shards:
            yield from _read_shard(shard)
        self.epoch += 1

    def __len__(self) -> int:
        return sum(_count_lines(s["cuts"]) for s in self.shards)


def _count_lines(path: str | os.PathLike) -> int:
    """Lines of a (gzipped) manifest; a read error is a ValueError naming it."""
    from lhotse.lazy import count_newlines_fast

    try:
        return count_newlines_fast(path)
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: {type(e).__name__}: {_first_line(e)} (unreadable "
                         "manifest)") from None


def _read_shard(shard: dict[str, Path]) -> Iterator:
    """The cuts of one shard; a damaged or short file of it is a ValueError naming it."""
    from lhotse.shar.readers.lazy import LazySharIterator

    n = 0
    try:
        for cut in LazySharIterator(fields={k: [v] for k, v in shard.items()}):
            n += 1
            yield cut
        expected = _count_lines(shard["cuts"])
    except _READ_ERRORS as e:
        raise ValueError(_shard_problem(shard, None)
                         or f"{shard['cuts']}: {type(e).__name__}: {_first_line(e)} "
                            "(unreadable Shar shard)") from None
    if n != expected:
        raise ValueError(_shard_problem(shard, expected)
                         or f"{shard['cuts']}: {n} of {expected} cuts read (truncated Shar shard)")


def _shard_problem(shard: dict[str, Path], expected: int | None) -> str | None:
    """``"FILE: what"`` for the first file of ``shard`` that cannot be read whole (or, for a
    tar file, holds fewer than ``expected`` items), else None."""
    import gzip

    for field in ["cuts"] + sorted(k for k in shard if k != "cuts"):
        path = shard[field]
        try:
            if str(path).endswith(".tar"):
                with tarfile.open(path, mode="r|*") as tar:
                    items = sum(1 for m in tar if not m.name.endswith((".json", ".nometa")))
                if expected is not None and items < expected:
                    return f"{path}: {items} of {expected} items (truncated Shar shard)"
            else:
                opener = gzip.open if str(path).endswith(".gz") else open
                with opener(path, "rb") as f:
                    while f.read(1 << 20):
                        pass
        except (OSError, EOFError, tarfile.TarError) as e:
            return f"{path}: {type(e).__name__}: {_first_line(e)} (truncated or corrupt Shar shard)"
    return None


def duration_bins(cuts: CutSet, num_buckets: int, max_duration: float,
                  max_cuts: int | None = None) -> list[float]:
    """The bucket bins ``DynamicBucketingSampler`` would estimate from the first
    :data:`NUM_CUTS_FOR_BINS` of ``cuts`` (e.g. a Shar directory's metadata alone: no
    audio or features read)."""
    constraint = TimeConstraint(max_duration=max_duration, max_cuts=max_cuts)
    return estimate_duration_buckets(islice(cuts, NUM_CUTS_FOR_BINS), num_buckets=num_buckets,
                                     constraint=constraint)


# --------------------------------------------------------------------------- samplers


def make_sampler(cuts: CutSet, max_duration: float, shuffle: bool = False,
                 bucketing: bool = True, num_buckets: int = 10, drop_last: bool = False,
                 seed: int = 0, world_size: int | None = None, rank: int | None = None,
                 max_cuts: int | None = None, buffer_size: int = 20000,
                 bins: list[float] | None = None) -> CutSampler:
    """A lhotse sampler of ``CutSet`` mini-batches of at most ``max_duration`` seconds.

    ``bucketing=True``: ``DynamicBucketingSampler`` (cuts of similar duration batched together,
    little padding; ``num_buckets`` buckets). It reads ``cuts`` as a stream (give a lazy
    ``CutSet``, :func:`open_cuts`): the bucket bins come from the first
    :data:`NUM_CUTS_FOR_BINS` cuts (or ``bins``, e.g. :func:`duration_bins` of a Shar
    directory's metadata), at most ``buffer_size`` cuts are held at a time, and ``shuffle``
    picks each batch at random from that buffer; memory and the time to the first batch do not
    grow with the corpus. ``bucketing=False``: ``SimpleCutSampler`` (a lazy ``CutSet`` is
    shuffled through a buffer of 10,000 cuts). Call ``sampler.set_epoch(epoch)`` each epoch for
    a new shuffle.
    """
    if bucketing:
        return DynamicBucketingSampler(cuts, max_duration=max_duration, max_cuts=max_cuts,
                                       shuffle=shuffle, num_buckets=num_buckets,
                                       drop_last=drop_last, seed=seed, world_size=world_size,
                                       rank=rank, buffer_size=buffer_size, duration_bins=bins,
                                       num_cuts_for_bins_estimate=NUM_CUTS_FOR_BINS)
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
