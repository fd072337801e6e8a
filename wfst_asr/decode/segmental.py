"""Decoding segmental models with a label bigram: the segment lattice (``wfst_asr.fsa.segment``)
composed with a bigram LM over its labels (e.g. the phone bigram G of a lang dir).

The label sequence of a segment path is a string the LM scores, so the best path of the
composition maximises, over segmentations ``(s_i, t_i, y_i)``, ``i = 1..n``::

    sum_i score(s_i, t_i, y_i) + lm_scale * log p(y_1 .. y_n </s> | <s>) - penalty * n

The composed lattice's states are (frame boundary, last label); the recursion runs over the
frame boundaries with one vectorised step over ``[B, D, L + 1, L]`` (duration x previous label
x label), as :mod:`wfst_asr.fsa.segment` does without the LM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from wfst_asr.graphs.ngram import NgramModel

__all__ = ["best_segmentation_lm", "bigram_matrix"]


def bigram_matrix(model: NgramModel, labels: Sequence[str]) -> torch.Tensor:
    """float64 ``[L + 1, L + 1]`` natural-log bigram probabilities (back-off applied): row
    ``y'`` (``0..L-1``: the labels, ``L``: ``<s>``), column ``y`` (``0..L-1``: the labels,
    ``L``: ``</s>``). A label the LM does not know gets its ``<unk>`` probability, else
    ``-inf``."""
    L = len(labels)
    rows = [*labels, "<s>"]
    cols = [*labels, "</s>"]
    out = torch.empty(L + 1, L + 1, dtype=torch.float64)
    for i, prev in enumerate(rows):
        for j, y in enumerate(cols):
            try:
                out[i, j] = model.log10_prob(y, (prev,)) * math.log(10.0)
            except (KeyError, ValueError):
                out[i, j] = float("-inf")
    return out


def best_segmentation_lm(scores: torch.Tensor, lens: torch.Tensor, bigram: torch.Tensor,
                         lm_scale: float = 1.0, penalty: float = 0.0
                         ) -> list[list[tuple[int, int, int]]]:
    """The best segmentation of each utterance under segment scores + ``lm_scale`` x the
    bigram (:func:`bigram_matrix`) - ``penalty`` per segment; ``[(s, t, y), ...]`` in time
    order (``[]`` for an utterance without frames).

    Args:
      scores: end-indexed segment scores ``[B, T, D, L]`` (:mod:`wfst_asr.fsa.segment`).
      lens: ``[B]`` frames.
      bigram: ``[L + 1, L + 1]`` natural-log probabilities (row ``L``: ``<s>``, column ``L``:
        ``</s>``).
    """
    B, T, D, L = scores.shape
    if bigram.shape != (L + 1, L + 1):
        raise ValueError(f"bigram must be [{L + 1}, {L + 1}] for {L} labels, got "
                         f"{tuple(bigram.shape)}")
    dev = scores.device
    lens = torch.as_tensor(lens, dtype=torch.int64, device=dev)
    sc = scores.detach().to(torch.float64)
    lm = bigram.to(dev, torch.float64).nan_to_num(neginf=-1e30) * lm_scale
    trans = lm[:, :L] - penalty  # [L + 1 (prev, L = <s>), L]
    final = lm[:L, L]  # [L]: </s> after each label
    neg = -1e300
    start = torch.full((B, L + 1), neg, dtype=torch.float64, device=dev)
    start[:, L] = 0.0
    alphas = [start]
    back_d: list[torch.Tensor] = [torch.zeros(B, L, dtype=torch.int64, device=dev)]
    back_p: list[torch.Tensor] = [torch.zeros(B, L, dtype=torch.int64, device=dev)]
    steps = sc.unbind(1)
    for t in range(1, T + 1):
        k = min(D, t)
        window = torch.stack(alphas[t - k:][::-1], dim=1)  # [B, k, L + 1]
        cand = window[:, :, :, None] + trans[None, None] + steps[t - 1][:, :k, None, :]
        flat = cand.permute(0, 3, 1, 2).reshape(B, L, k * (L + 1))  # [B, L, k x prev]
        best, arg = flat.max(dim=2)
        alphas.append(torch.cat([best, torch.full((B, 1), neg, dtype=torch.float64,
                                                  device=dev)], dim=1))
        back_d.append(arg // (L + 1) + 1)
        back_p.append(arg % (L + 1))
    alpha = torch.stack(alphas, dim=1)  # [B, T + 1, L + 1]
    bd = torch.stack(back_d, dim=1).cpu()
    bp = torch.stack(back_p, dim=1).cpu()
    out: list[list[tuple[int, int, int]]] = []
    for b in range(B):
        n = int(lens[b])
        if n == 0:
            out.append([])
            continue
        end = alpha[b, n, :L] + final
        y = int(end.argmax())
        if float(end[y]) <= neg / 2:
            out.append([])
            continue
        segs = []
        t = n
        while t > 0:
            d, prev = int(bd[b, t, y]), int(bp[b, t, y])
            segs.append((t - d, t, y))
            t -= d
            y = prev
        out.append(segs[::-1])
    return out
