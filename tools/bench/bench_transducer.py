#!/usr/bin/env python3
"""Speed and peak memory of the transducer losses, as ratios to torch's CTC loss in the same run.

Cases (forward + backward, float32, random inputs, every utterance full length):

* ``full``: :func:`wfst_asr.losses.transducer_loss` on joiner logits ``[B, T, U+1, V]``
  (the log-softmax over V is part of the loss); given, so its peak leaves them out;
* ``full, logits made in the call``: the same with the logits ``am + lm`` made (and their
  gradient freed) inside the measured call, as the pipeline makes its pruned logits: the
  memory to compare the pipeline with;
* ``simple``: :func:`~wfst_asr.losses.simple_transducer_loss` on ``am [B, T, V]``,
  ``lm [B, U+1, V]`` with the occupation for pruning;
* ``pruned pipeline``: what a pruned RNN-T training step runs besides the network: the simple
  loss with occupation, :func:`~wfst_asr.losses.get_pruned_ranges`,
  :func:`~wfst_asr.losses.do_rnnt_pruning`, logits ``am_pruned + lm_pruned`` ``[B, T, s_range,
  V]`` (the additive joiner stands in for the network's joiner) and
  :func:`~wfst_asr.losses.pruned_transducer_loss`; loss ``0.5 * simple + pruned``;
* ``pruned loss only``: :func:`~wfst_asr.losses.pruned_transducer_loss` on given logits
  ``[B, T, s_range, V]`` and ranges;
* ``torchaudio``: ``torchaudio.functional.rnnt_loss`` on the full logits, when importable;
* ``same, engine (old path)``: the case above it by the path the direct DP replaced
  (``transducer._USE_ENGINE``): each grid lattice an FsaVec summed by the generic engine's
  ``get_tot_scores``, the simple loss's log-probs by autograd (the joiner's chunked
  log-softmax is shared); ``--no-engine`` skips these rows.

Timing and memory as in ``bench_fsa.py`` (its helpers are imported from there): each case is
interleaved round by round with the reference (torch ``ctc_loss`` forward + backward, B=16,
T=500, V=500, U=100) and the ratio is the median of per-round ratios; the peak is the rise of
resident memory during one call, in a fresh subprocess.

    python tools/bench/bench_transducer.py            # B=8 T=200 U=50 V=500 s_range=5
    python tools/bench/bench_transducer.py --quick    # small sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fsa import _time, case_torch_ctc, child_main, peak_of, time_ratio

from wfst_asr.losses import (
    do_rnnt_pruning,
    get_pruned_ranges,
    pruned_transducer_loss,
    simple_transducer_loss,
    transducer_loss,
)
from wfst_asr.losses import transducer as _tr


def _data(B: int, T: int, U: int, V: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(1, V, (B, U), generator=g).tolist()
    return g, targets, [T] * B


def case_full(B: int, T: int, U: int, V: int, **_) -> Callable[[], None]:
    g, ys, lens = _data(B, T, U, V)
    x = torch.randn(B, T, U + 1, V, generator=g, requires_grad=True)

    def run() -> None:
        x.grad = None
        transducer_loss(x, ys, lens)[0].backward()
    return run


def case_full_joined(B: int, T: int, U: int, V: int, **_) -> Callable[[], None]:
    """The full loss with its logits made inside the call (an additive joiner, ``am + lm``), so
    that its peak memory counts them as the pipeline's counts its pruned logits."""
    g, ys, lens = _data(B, T, U, V)
    am = torch.randn(B, T, V, generator=g, requires_grad=True)
    lm = torch.randn(B, U + 1, V, generator=g, requires_grad=True)

    def run() -> None:
        am.grad = lm.grad = None
        transducer_loss(am.unsqueeze(2) + lm.unsqueeze(1), ys, lens)[0].backward()
    return run


def case_simple(B: int, T: int, U: int, V: int, **_) -> Callable[[], None]:
    g, ys, lens = _data(B, T, U, V)
    am = torch.randn(B, T, V, generator=g, requires_grad=True)
    lm = torch.randn(B, U + 1, V, generator=g, requires_grad=True)

    def run() -> None:
        am.grad = lm.grad = None
        simple_transducer_loss(am, lm, ys, lens, return_occupation=True)[0].backward()
    return run


def case_pipeline(B: int, T: int, U: int, V: int, s_range: int) -> Callable[[], None]:
    g, ys, lens = _data(B, T, U, V)
    am = torch.randn(B, T, V, generator=g, requires_grad=True)
    lm = torch.randn(B, U + 1, V, generator=g, requires_grad=True)

    def run() -> None:
        am.grad = lm.grad = None
        simple, info = simple_transducer_loss(am, lm, ys, lens, return_occupation=True)
        ranges = get_pruned_ranges(info["occupation"], lens, [U] * B, s_range)
        am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
        pruned, _ = pruned_transducer_loss(am_p + lm_p, ys, ranges, lens)
        (0.5 * simple + pruned).backward()
    return run


def case_pruned_only(B: int, T: int, U: int, V: int, s_range: int) -> Callable[[], None]:
    g, ys, lens = _data(B, T, U, V)
    x = torch.randn(B, T, s_range, V, generator=g, requires_grad=True)
    # a diagonal band of windows (what a trained model's ranges look like)
    start = (torch.arange(T) * (U + 1 - s_range) // max(T - 1, 1)).clamp(min=0)
    ranges = (start.view(1, T, 1) + torch.arange(s_range)).expand(B, T, s_range).contiguous()

    def run() -> None:
        x.grad = None
        pruned_transducer_loss(x, ys, ranges, lens)[0].backward()
    return run


def _torchaudio():
    try:
        import torchaudio.functional as taf
    except Exception:  # noqa: BLE001 - absent or broken: the case is skipped
        return None
    return taf


def case_torchaudio(B: int, T: int, U: int, V: int, **_) -> Callable[[], None]:
    taf = _torchaudio()
    g, ys, lens = _data(B, T, U, V)
    x = torch.randn(B, T, U + 1, V, generator=g, requires_grad=True)
    tg = torch.tensor(ys, dtype=torch.int32)
    ll, tl = torch.tensor(lens, dtype=torch.int32), torch.full((B,), U, dtype=torch.int32)

    def run() -> None:
        x.grad = None
        taf.rnnt_loss(x, tg, ll, tl, blank=0, reduction="sum").backward()
    return run


def _engine(case: Callable[..., Callable[[], None]]) -> Callable[..., Callable[[], None]]:
    """``case`` run by the generic engine instead of the direct DP (the old path)."""
    def make(**kw) -> Callable[[], None]:
        fn = case(**kw)

        def run() -> None:
            _tr._USE_ENGINE = True
            try:
                fn()
            finally:
                _tr._USE_ENGINE = False
        return run
    return make


CASES = {"torch_ctc": case_torch_ctc, "full": case_full, "simple": case_simple,
         "pipeline": case_pipeline, "pruned_only": case_pruned_only,
         "full_joined": case_full_joined,
         "torchaudio": case_torchaudio}
CASES.update({f"{k}_engine": _engine(CASES[k])
              for k in ("full", "simple", "pipeline", "pruned_only")})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7, help="timing rounds per case")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--no-engine", action="store_true",
                   help="skip the old engine-path rows")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(CASES, a.child)
        return
    torch.set_num_threads(a.threads)
    ctc = {"B": 16, "T": 500, "V": 500, "U": 100}
    rnnt = {"B": 8, "T": 200, "U": 50, "V": 500}
    s_range = 5
    if a.quick:
        ctc = {"B": 4, "T": 100, "V": 50, "U": 20}
        rnnt = {"B": 2, "T": 40, "U": 10, "V": 50}
        s_range = 4
    pr = dict(rnnt, s_range=s_range)
    sizes = f"B={rnnt['B']} T={rnnt['T']} U={rnnt['U']} V={rnnt['V']}"
    cases = []
    for name, case, args in [(f"full {sizes}", "full", rnnt),
                             ("full, logits am + lm made in the call", "full_joined", rnnt),
                             ("simple (+ occupation)", "simple", rnnt),
                             (f"pruned pipeline s_range={s_range}", "pipeline", pr),
                             (f"pruned loss only s_range={s_range}", "pruned_only", pr)]:
        cases.append((name, case, args))
        if not a.no_engine and case != "full_joined":
            cases.append(("  same, engine (old path)", f"{case}_engine", args))
    if _torchaudio() is not None:
        cases.append(("torchaudio rnnt_loss (full)", "torchaudio", rnnt))
    else:
        print("torchaudio: not importable, its case is skipped")
    ref_fn = case_torch_ctc(**ctc)
    ref_t = statistics.median([_time(ref_fn) for _ in range(a.repeats + 1)][1:])
    print(f"torch {torch.__version__}, {a.threads} threads, {a.repeats} rounds")
    print(f"reference torch.nn.functional.ctc_loss fwd+bwd {ctc}: {ref_t * 1e3:.1f} ms, "
          f"peak +{peak_of('torch_ctc', ctc, a.threads, __file__):.0f} MB")
    print(f"{'case (forward + backward)':46s} {'time ms':>9s} {'ratio':>7s} {'peak MB':>8s}")
    for name, case, args in cases:
        t, ratio = time_ratio(CASES[case](**args), ref_fn, a.repeats)
        mb = peak_of(case, args, a.threads, __file__)
        print(f"{name:46s} {t * 1e3:9.1f} {ratio:7.2f} {mb:8.0f}", flush=True)


if __name__ == "__main__":
    main()
