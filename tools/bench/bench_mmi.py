#!/usr/bin/env python3
"""LF-MMI loss speed vs the CTC loss on the same batch (wfst_asr engine, CPU).

Batch: B utterances of T output frames (after subsampling), random outputs, transcripts of
T/4 phones drawn from a phone bigram over 48 phones. The phone LM ``P`` is a bigram estimated
with the project's own estimator (:func:`wfst_asr.graphs.ngram.estimate_ngram`, interpolated
Kneser-Ney) on 2000 random phone sequences from a fixed random Markov chain, expanded into a
deterministic, epsilon-free acceptor (a state per history, an arc per phone, the back-off
probabilities folded in). Topologies: ``ctc`` (49 outputs, blank = 0) and Kaldi's ``chain``
(:func:`wfst_asr.losses.pdf_topo`: 2 pdfs per phone, 97 outputs).

Cases, each forward + backward w.r.t. the outputs:

* ``CtcLoss``: :class:`wfst_asr.losses.CtcLoss` on ``log_softmax(x)`` (49 outputs): the
  baseline of every ratio;
* ``den only``: the shared denominator graph ``H o P`` (without, then with the leaky-HMM
  arcs) intersected with the whole batch at once: one DenseFsaVec, one ``intersect_dense``;
* ``MmiLoss``: the whole LF-MMI loss (numerator graphs compiled from the transcripts, the
  denominator, leaky HMM 1e-5, L2 1e-4).

Timing as in ``bench_fsa.py`` (its functions are imported): every case is interleaved with its
baseline and the ratio is the median over rounds of (case time / baseline time of the same
round); each row also gives the median of (case / the project's reference, torch's
``ctc_loss`` fwd+bwd on B=16, T=500, V=500, U=100), timed once per round too.

    python tools/bench/bench_mmi.py            # B=16, T=150, 2 threads, 7 rounds
    python tools/bench/bench_mmi.py --quick    # B=4, T=40, 3 rounds (smoke test)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fsa import _time, case_torch_ctc

from wfst_asr.fsa import DenseFsaVec, Fsa, get_tot_scores, intersect_dense
from wfst_asr.graphs import MmiTrainingGraphCompiler, make_topology, pdf_topo
from wfst_asr.graphs.ngram import EOS, estimate_ngram
from wfst_asr.losses import CtcLoss, MmiLoss

NUM_PHONES = 48
REF = {"B": 16, "T": 500, "V": 500, "U": 100}
REF_QUICK = {"B": 4, "T": 100, "V": 50, "U": 20}


def phone_sequences(n: int, seed: int = 0, mean_len: int = 30) -> list[list[int]]:
    """``n`` random phone sequences (ids 1..48) from a fixed random Markov chain."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(torch.randn(NUM_PHONES, NUM_PHONES, generator=g) * 2.0, -1)
    first = torch.softmax(torch.randn(NUM_PHONES, generator=g), -1)
    out = []
    for _ in range(n):
        L = max(3, int(torch.poisson(torch.tensor(float(mean_len)), generator=g)))
        p = int(torch.multinomial(first, 1, generator=g))
        seq = [p]
        for _ in range(L - 1):
            p = int(torch.multinomial(trans[p], 1, generator=g))
            seq.append(p)
        out.append([q + 1 for q in seq])
    return out


def bigram_acceptor(seqs: list[list[int]]) -> Fsa:
    """The bigram (KN) of ``seqs`` as a deterministic epsilon-free acceptor: state 0 = ``<s>``,
    state p = last phone p, arcs to every phone, a final arc per state (``</s>``)."""
    model = estimate_ngram([[str(t) for t in s] for s in seqs], 2,
                           vocab=[str(p) for p in range(1, NUM_PHONES + 1)])
    ln10 = math.log(10.0)
    rows, scores = [], []
    final = NUM_PHONES + 1
    for h in range(NUM_PHONES + 1):
        hist = ["<s>"] if h == 0 else [str(h)]
        for p in range(1, NUM_PHONES + 1):
            rows.append((h, p, p))
            scores.append(ln10 * model.log10_prob(str(p), hist))
        rows.append((h, final, -1))
        scores.append(ln10 * model.log10_prob(EOS, hist))
    return Fsa(torch.tensor(rows, dtype=torch.int32), torch.tensor(scores),
               num_states=final + 1)


def make_batch(B: int, T: int, V: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, V, generator=g, requires_grad=True)
    lens = torch.full((B,), T)
    texts = [s[:T // 4] for s in phone_sequences(B, seed=seed + 100, mean_len=T // 3)]
    return x, lens, texts


def case_ctc(x: torch.Tensor, lens: torch.Tensor, texts) -> Callable[[], None]:
    loss_fn = CtcLoss()

    def run() -> None:
        x.grad = None
        loss, _ = loss_fn(x.log_softmax(-1), lens, texts)
        loss.backward()
    return run


def case_den(den: Fsa, x: torch.Tensor, lens: torch.Tensor) -> Callable[[], None]:
    B = x.shape[0]
    segs = torch.stack([torch.arange(B), torch.zeros(B, dtype=torch.int64), lens], 1)

    def run() -> None:
        x.grad = None
        tot = get_tot_scores(intersect_dense(den, DenseFsaVec(x, segs.to(torch.int32))))
        tot.sum().backward()
    return run


def case_mmi(loss_fn: MmiLoss, x: torch.Tensor, lens: torch.Tensor, texts
             ) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        loss, _ = loss_fn(x, lens, texts)
        loss.backward()
    return run


def measure(case: Callable[[], None], base: Callable[[], None], ref: Callable[[], None],
            rounds: int) -> tuple[float, float, float]:
    """(median case time s, median case/base ratio, median case/reference ratio)."""
    case()
    base()
    ref()
    times, r_base, r_ref = [], [], []
    for _ in range(rounds):
        tr = _time(ref)
        tb = _time(base)
        tc = _time(case)
        times.append(tc)
        r_base.append(tc / tb)
        r_ref.append(tc / tr)
    return statistics.median(times), statistics.median(r_base), statistics.median(r_ref)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7, help="timing rounds per case")
    p.add_argument("-B", type=int, default=16, help="utterances per batch")
    p.add_argument("-T", type=int, default=150, help="output frames (after subsampling)")
    p.add_argument("--quick", action="store_true", help="B=4, T=40, 3 rounds (smoke test)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    B, T, rounds, ref_args = a.B, a.T, a.repeats, REF
    if a.quick:
        B, T, rounds, ref_args = 4, 40, 3, REF_QUICK
    t0 = time.perf_counter()
    P = bigram_acceptor(phone_sequences(2000))
    topos = {"ctc": "ctc", "chain": pdf_topo(make_topology("chain", NUM_PHONES))}
    losses = {}
    for name, topo in topos.items():
        comp = MmiTrainingGraphCompiler(P, topo=topo)
        losses[name] = MmiLoss(comp, leaky_hmm_coefficient=1e-5, l2_regularize=1e-4)
    setup = time.perf_counter() - t0
    ref_fn = case_torch_ctc(**ref_args)
    x_ctc, lens, texts = make_batch(B, T, NUM_PHONES + 1)
    base = case_ctc(x_ctc, lens, texts)
    print(f"torch {torch.__version__}, {a.threads} threads, {rounds} rounds; batch B={B} "
          f"T={T}, {T // 4} phones per transcript, P: bigram over {NUM_PHONES} phones "
          f"({P.num_arcs} arcs); graphs built in {setup:.1f} s")
    print(f"baseline: CtcLoss fwd+bwd on the same batch (V={NUM_PHONES + 1}); reference: "
          f"torch ctc_loss fwd+bwd {ref_args}")
    print(f"{'case (forward + backward)':44s} {'states':>7s} {'arcs':>7s} {'time ms':>9s} "
          f"{'/ CtcLoss':>9s} {'/ ref':>7s}")
    t, rb, rr = measure(base, base, ref_fn, rounds)
    print(f"{'CtcLoss (ctc topology)':44s} {'':>7s} {'':>7s} {t * 1e3:9.1f} {rb:9.2f} "
          f"{rr:7.2f}", flush=True)
    for name, loss_fn in losses.items():
        den = loss_fn.den_graph()
        x, _, _ = make_batch(B, T, loss_fn.num_outputs)
        plain = loss_fn.compiler.den
        rows = [(f"den only, {name} (H o P, no leaky arcs)", case_den(plain, x, lens)),
                (f"den only, {name} (H o P + leaky arcs)", case_den(den, x, lens)),
                (f"MmiLoss, {name} (num + den, leaky, L2)", case_mmi(loss_fn, x, lens, texts))]
        for label, fn in rows:
            t, rb, rr = measure(fn, base, ref_fn, rounds)
            g = plain if "no leaky" in label else den
            print(f"{label:44s} {g.num_states:7d} {g.num_arcs:7d} {t * 1e3:9.1f} "
                  f"{rb:9.2f} {rr:7.2f}", flush=True)


if __name__ == "__main__":
    main()
