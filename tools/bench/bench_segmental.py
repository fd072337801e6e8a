#!/usr/bin/env python3
"""Segmental losses (Tang et al. 2016): forward + backward of each loss, as a ratio to the
torch ``ctc_loss`` yardstick and to the BLSTM's step, with peak memory.

Shapes (issue 14): B=16, T=300 output frames, |L|=48 labels, D=30, U=100 labels per utterance
for the constrained lattices; the segment scores come from the
:class:`~wfst_asr.models.SegmentScorer` on random log-softmax frame vectors (its time is part
of each loss's). The BLSTM step is the recipe's encoder (3x256, 80 fbank x 3 stacked inputs,
900 input frames -> 300 outputs) forward + backward on the same batch; the yardstick is
``torch.nn.functional.ctc_loss`` fwd+bwd at B=16, T=500, V=500, U=100. Each figure is the
median of ``--rounds`` rounds; peak memory is the largest RSS growth over the process's
baseline during one call (``ru_maxrss`` cannot go down, so each measurement runs in a fresh
subprocess).

    python tools/bench/bench_segmental.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import itertools
import os
import sys

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

from wfst_asr.losses.segmental import segmental_loss
from wfst_asr.models import Blstm, SegmentScorer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _children import measure, parent_or_child

B, T, L, D, U = 16, 300, 48, 30, 100


def _gold(gen: torch.Generator) -> list[list[tuple[int, int, int]]]:
    """U segments per utterance tiling T frames (durations 1..D), random labels."""
    out = []
    for _ in range(B):
        cuts = sorted(torch.randperm(T - 1, generator=gen)[:U - 1].add(1).tolist())
        bounds = [0, *cuts, T]
        segs = [(s, t, int(torch.randint(L, (1,), generator=gen))) for s, t in
                itertools.pairwise(bounds)]
        if max(t - s for s, t, _ in segs) > D:  # re-cut evenly (rare)
            step = T // U
            segs = [(i * step, T if i == U - 1 else (i + 1) * step, y)
                    for i, (_s, _t, y) in enumerate(segs)]
        out.append(segs)
    return out


def make_case(name: str):
    gen = torch.Generator().manual_seed(0)
    if name == "ctc_yardstick":
        Ty, V, Uy = 500, 500, 100
        lp = torch.randn(Ty, B, V, generator=gen).log_softmax(-1).requires_grad_(True)
        tg = torch.randint(1, V, (B, Uy), generator=gen)

        def run():
            torch.nn.functional.ctc_loss(lp, tg, torch.full((B,), Ty), torch.full((B,), Uy),
                                         reduction="sum").backward()
        return run
    if name == "blstm":
        enc = Blstm(240, L + 1, hidden=256, num_layers=3, dropout=0.3, subsample_after=0)
        x = torch.randn(B, T, 240, generator=gen)
        lens = torch.full((B,), T)

        def run():
            enc.zero_grad(set_to_none=True)
            out, _ = enc(x, lens)
            out.sum().backward()
        return run
    scorer = SegmentScorer(L + 1, L, D)
    k = torch.randn(B, T, L + 1, generator=gen).log_softmax(-1).requires_grad_(True)
    lens = torch.full((B,), T)
    gold = _gold(gen)

    def run():
        scorer.zero_grad(set_to_none=True)
        scores = scorer(k, lens)
        segmental_loss(scores, lens, name, segments=gold).sum().backward()
    return run


CASES = ("ctc_yardstick", "blstm", "hinge", "log", "latent_hinge", "marginal_log")


def child(name: str, rounds: int, threads: int) -> dict:
    return measure(make_case(name), rounds, threads)


def main() -> None:
    got = parent_or_child(__doc__, __file__, CASES, child, rounds=5)
    if got is None:
        return
    res, args = got
    ctc, lstm = res["ctc_yardstick"]["seconds"], res["blstm"]["seconds"]
    print(f"B={B} T={T} L={L} D={D} U={U}, {args.threads} threads, median of {args.rounds}")
    print(f"{'case':14s} {'seconds':>8s} {'x ctc_loss':>10s} {'x BLSTM':>8s} {'peak MiB':>9s}")
    for name, r in res.items():
        print(f"{name:14s} {r['seconds']:8.3f} {r['seconds'] / ctc:10.2f} "
              f"{r['seconds'] / lstm:8.2f} {r['peak_mib']:9.0f}")


if __name__ == "__main__":
    main()
