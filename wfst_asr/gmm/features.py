"""Features of a GMM system: MFCCs with deltas and per-speaker cepstral mean normalisation.

Kaldi's monophone recipe (``train_mono.sh``) models ``MFCC (13) + delta + delta-delta`` (39
dims) with per-speaker CMN (``apply-cmvn --norm-vars=false``). :func:`add_deltas` is Kaldi's
``add-deltas`` (window 2: the order-``k`` filter is the order-1 filter convolved with itself
``k`` times, applied to the input with the edge frames repeated); :func:`speaker_cmn` subtracts
each speaker's mean (optionally divides by its standard deviation); :func:`cut_features` is the
whole pipeline over the recordings of a cut set (MFCCs computed from the audio).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["CutFeatures", "add_deltas", "cut_features", "delta_filters", "speaker_cmn"]


def delta_filters(order: int = 2, window: int = 2) -> list[torch.Tensor]:
    """Kaldi's delta filters: ``[1]`` then, for ``k = 1..order``, float64 ``[2 k window + 1]``:
    the order-``k - 1`` filter convolved with ``n / (2 sum_{m=1}^{window} m^2)``,
    ``n = -window..window``."""
    if order < 0 or window < 1:
        raise ValueError(f"order must be >= 0 and window >= 1, got {order}, {window}")
    base = torch.arange(-window, window + 1, dtype=torch.float64)
    base = base / (2.0 * float((torch.arange(1, window + 1, dtype=torch.float64) ** 2).sum()))
    out = [torch.ones(1, dtype=torch.float64)]
    for _ in range(order):
        prev = out[-1]
        n = prev.numel() + base.numel() - 1
        cur = torch.zeros(n, dtype=torch.float64)
        for i, b in enumerate(base.tolist()):
            cur[i:i + prev.numel()] += b * prev
        out.append(cur)
    return out


def add_deltas(feats: torch.Tensor, order: int = 2, window: int = 2) -> torch.Tensor:
    """``[T, D]`` -> ``[T, D * (order + 1)]``: the features, then their deltas up to ``order``
    (:func:`delta_filters`; frame ``t + j`` outside ``0..T-1`` reads the nearest edge frame)."""
    if feats.dim() != 2:
        raise ValueError(f"feats must be [T, D], got {tuple(feats.shape)}")
    if feats.shape[0] == 0:
        return feats.new_zeros(0, feats.shape[1] * (order + 1))
    x = feats.to(torch.float64).t().unsqueeze(1)  # [D, 1, T]
    outs = [feats.to(torch.float64)]
    for filt in delta_filters(order, window)[1:]:
        half = filt.numel() // 2
        padded = F.pad(x, (half, half), mode="replicate") if feats.shape[0] > 1 else \
            x.expand(-1, -1, 2 * half + 1)
        outs.append(F.conv1d(padded, filt.view(1, 1, -1)).squeeze(1).t())
    return torch.cat(outs, 1).to(feats.dtype)


def speaker_cmn(feats: Mapping[str, torch.Tensor], speaker_of: Mapping[str, str],
                norm_vars: bool = False) -> dict[str, torch.Tensor]:
    """Per-speaker mean (and, with ``norm_vars``, variance) normalisation of ``{utt: [T, D]}``.

    The statistics of a speaker are over all frames of its utterances (``speaker_of[utt]``;
    an utterance without a speaker is its own speaker)."""
    groups: dict[str, list[str]] = {}
    for u in feats:
        groups.setdefault(str(speaker_of.get(u, u)), []).append(u)
    out: dict[str, torch.Tensor] = {}
    for utts in groups.values():
        allf = torch.cat([feats[u].to(torch.float64) for u in utts], 0)
        mean = allf.mean(0)
        std = allf.std(0, unbiased=False).clamp(min=1e-5) if norm_vars else None
        for u in utts:
            y = feats[u].to(torch.float64) - mean
            out[u] = (y / std if std is not None else y).to(feats[u].dtype)
    return out


class CutFeatures(NamedTuple):
    """What :func:`cut_features` computed."""

    feats: dict[str, torch.Tensor]
    """``{cut id: float32 [T, 39]}``: MFCC + deltas + delta-deltas, per-speaker mean
    normalised."""
    speakers: dict[str, str]
    """``{cut id: speaker}`` (the first supervision's; the cut id when it has none)."""
    adjusted: int
    """Cuts whose MFCC frame count was cut or edge-padded to their precomputed features'."""
    skipped: list[str]
    """``"<cut id>: <error>"`` of the cuts whose audio could not be read."""


def cut_features(cuts: Iterable[Any], extractor: Any = None) -> CutFeatures:
    """The features of a monophone GMM system for lhotse cuts with recordings: 13 MFCCs
    (``wfst_asr.data.make_extractor("mfcc")`` unless ``extractor`` is given) computed from each
    cut's audio, per-speaker CMN (:func:`speaker_cmn`), deltas (:func:`add_deltas`).

    A cut that has precomputed features (e.g. fbank with the same frame options) gets exactly
    its ``num_frames`` MFCC frames: the MFCCs are cut, or padded with their last frame, to that
    count (counted in ``adjusted``), so that frame ``t`` of both describes the same audio. A
    cut whose audio cannot be read is left out and listed in ``skipped``.
    """
    from wfst_asr.data import make_extractor

    ext = extractor if extractor is not None else make_extractor("mfcc")
    raw: dict[str, torch.Tensor] = {}
    spk: dict[str, str] = {}
    adjusted, skipped = 0, []
    for c in cuts:
        try:
            f = torch.from_numpy(c.compute_features(ext)).float()
        except (RuntimeError, ValueError, OSError) as e:
            skipped.append(f"{c.id}: {type(e).__name__}: {e}")
            continue
        n = c.num_frames if c.has_features else f.shape[0]
        if f.shape[0] != n:
            adjusted += 1
            f = f[:n] if f.shape[0] > n else torch.cat([f, f[-1:].expand(n - f.shape[0], -1)])
        sup = c.supervisions[0] if c.supervisions else None
        raw[c.id] = f
        spk[c.id] = str(sup.speaker) if sup is not None and sup.speaker is not None else c.id
    feats = {u: add_deltas(x) for u, x in speaker_cmn(raw, spk).items()}
    return CutFeatures(feats, spk, adjusted, skipped)
