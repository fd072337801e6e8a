"""Features of a GMM system: MFCCs with deltas and per-speaker cepstral mean normalisation.

Kaldi's monophone recipe (``train_mono.sh``) models ``MFCC (13) + delta + delta-delta`` (39
dims) with per-speaker CMN (``apply-cmvn --norm-vars=false``). :func:`add_deltas` is Kaldi's
``add-deltas`` (window 2: the order-``k`` filter is the order-1 filter convolved with itself
``k`` times, applied to the input with the edge frames repeated); :func:`speaker_cmn` subtracts
each speaker's mean (optionally divides by its standard deviation).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["add_deltas", "delta_filters", "speaker_cmn"]


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
