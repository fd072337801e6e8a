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
* ``den only``: the shared denominator graph ``H o P`` intersected with the whole batch at
  once (one DenseFsaVec): without leaky HMM; with the leaky-HMM arcs of ``add_leaky_arcs``
  (every state given a copy of the start state's arcs: the old way); with the leaky step
  inside the streamed intersection (``leaky_hmm_tot_scores``, what ``MmiLoss`` uses);
* ``MmiLoss``: the whole LF-MMI loss (numerator graphs compiled from the transcripts, the
  denominator, leaky HMM 1e-5, L2 1e-4); "old den" is the same loss with its denominator
  computed the old way (the leaky-arc graph of ``MmiLoss.den_graph``, no leaky step).

Timing as in ``bench_fsa.py`` (its functions are imported): every case is interleaved with its
baseline and the ratio is the median over rounds of (case time / baseline time of the same
round); each row also gives the median of (case / the project's reference, torch's
``ctc_loss`` fwd+bwd on B=16, T=500, V=500, U=100), timed once per round too, and the leaky
denominator rows the median of (case / the denominator without leaky HMM), timed in the same
rounds. Peak memory as in ``bench_fsa.py``: the rise of resident memory during one call, in a
fresh subprocess.

    python tools/bench/bench_mmi.py            # B=16, T=150, 2 threads, 7 rounds
    python tools/bench/bench_mmi.py --quick    # B=4, T=40, 3 rounds (smoke test)
    python tools/bench/bench_mmi.py --no-memory    # without the peak-memory subprocesses
"""

from __future__ import annotations

import argparse
import json
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
from bench_fsa import _peak_mb, _time, case_torch_ctc, peak_of

from wfst_asr.fsa import DenseFsaVec, Fsa, get_tot_scores, intersect_dense
from wfst_asr.fsa.intersect import leaky_hmm_tot_scores
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


def case_den(den: Fsa, x: torch.Tensor, lens: torch.Tensor, leaky: float = 0.0
             ) -> Callable[[], None]:
    """Denominator totals fwd+bwd; ``leaky > 0``: the leaky step inside the intersection."""
    B = x.shape[0]
    segs = torch.stack([torch.arange(B), torch.zeros(B, dtype=torch.int64), lens], 1)

    def run() -> None:
        x.grad = None
        dense = DenseFsaVec(x, segs.to(torch.int32))
        if leaky > 0:
            tot = leaky_hmm_tot_scores(den, dense, leaky)
        else:
            tot = get_tot_scores(intersect_dense(den, dense))
        tot.sum().backward()
    return run


def old_den_loss(loss_fn: MmiLoss) -> MmiLoss:
    """A copy of ``loss_fn`` computing its denominator the old way: the leaky-arc graph of
    ``den_graph()`` intersected without a leaky step (the same totals, up to rounding)."""
    old = MmiLoss(loss_fn.compiler, leaky_hmm_coefficient=loss_fn.leaky,
                  l2_regularize=loss_fn.l2, ctc_weight=loss_fn.ctc_weight,
                  aux_loss=loss_fn.aux_loss, reduction=loss_fn.reduction)
    old._den_plain[torch.device("cpu")] = old.den_graph()
    old.leaky = 0.0
    return old


def case_mmi(loss_fn: MmiLoss, x: torch.Tensor, lens: torch.Tensor, texts
             ) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        loss, _ = loss_fn(x, lens, texts)
        loss.backward()
    return run


def measure(case: Callable[[], None], base: Callable[[], None], ref: Callable[[], None],
            rounds: int, plain: Callable[[], None] | None = None
            ) -> tuple[float, float, float, float | None]:
    """(median case time s, median case/base ratio, median case/reference ratio, median
    case/plain ratio or None), all timed in the same rounds."""
    case()
    base()
    ref()
    if plain is not None:
        plain()
    times, r_base, r_ref, r_plain = [], [], [], []
    for _ in range(rounds):
        tr = _time(ref)
        tb = _time(base)
        tp = _time(plain) if plain is not None else None
        tc = _time(case)
        times.append(tc)
        r_base.append(tc / tb)
        r_ref.append(tc / tr)
        if tp is not None:
            r_plain.append(tc / tp)
    return (statistics.median(times), statistics.median(r_base), statistics.median(r_ref),
            statistics.median(r_plain) if r_plain else None)


def build(B: int, T: int) -> tuple[Fsa, dict[str, MmiLoss], tuple]:
    """The phone LM, the MmiLoss of each topology and the CTC batch."""
    P = bigram_acceptor(phone_sequences(2000))
    topos = {"ctc": "ctc", "chain": pdf_topo(make_topology("chain", NUM_PHONES))}
    losses = {}
    for name, topo in topos.items():
        comp = MmiTrainingGraphCompiler(P, topo=topo)
        losses[name] = MmiLoss(comp, leaky_hmm_coefficient=1e-5, l2_regularize=1e-4)
    return P, losses, make_batch(B, T, NUM_PHONES + 1)


ROWS = ("den_plain", "den_arcs", "den_leaky", "mmi_old", "mmi")


def row_case(kind: str, loss_fn: MmiLoss, B: int, T: int) -> Callable[[], None]:
    """The timed function of one row (``ROWS``) for one topology's loss."""
    x, lens, texts = make_batch(B, T, loss_fn.num_outputs)
    plain = loss_fn.compiler.den
    if kind == "den_plain":
        return case_den(plain, x, lens)
    if kind == "den_arcs":
        return case_den(loss_fn.den_graph(), x, lens)
    if kind == "den_leaky":
        return case_den(plain, x, lens, leaky=loss_fn.leaky)
    if kind == "mmi_old":
        return case_mmi(old_den_loss(loss_fn), x, lens, texts)
    return case_mmi(loss_fn, x, lens, texts)


def child_main(spec: str) -> None:
    """``--child SPEC``: peak extra memory of one row (see ``bench_fsa.peak_of``)."""
    d = json.loads(spec)
    torch.set_num_threads(d["threads"])
    a = d["args"]
    if d["case"] == "ctc":
        _, _, (x, lens, texts) = build(a["B"], a["T"])
        fn = case_ctc(x, lens, texts)
    else:
        _, losses, _ = build(a["B"], a["T"])
        fn = row_case(a["row"], losses[a["topo"]], a["B"], a["T"])
    print(json.dumps({"peak_extra_mb": _peak_mb(fn)}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7, help="timing rounds per case")
    p.add_argument("-B", type=int, default=16, help="utterances per batch")
    p.add_argument("-T", type=int, default=150, help="output frames (after subsampling)")
    p.add_argument("--quick", action="store_true", help="B=4, T=40, 3 rounds (smoke test)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(a.child)
        return
    torch.set_num_threads(a.threads)
    B, T, rounds, ref_args = a.B, a.T, a.repeats, REF
    if a.quick:
        B, T, rounds, ref_args = 4, 40, 3, REF_QUICK
    t0 = time.perf_counter()
    P, losses, (x_ctc, lens, texts) = build(B, T)
    setup = time.perf_counter() - t0
    ref_fn = case_torch_ctc(**ref_args)
    base = case_ctc(x_ctc, lens, texts)

    def peak(case: str, **args) -> str:
        if a.no_memory:
            return ""
        mb = peak_of(case, dict(args, B=B, T=T), a.threads, script=os.path.abspath(__file__))
        return f"{mb:.0f}"

    print(f"torch {torch.__version__}, {a.threads} threads, {rounds} rounds; batch B={B} "
          f"T={T}, {T // 4} phones per transcript, P: bigram over {NUM_PHONES} phones "
          f"({P.num_arcs} arcs); graphs built in {setup:.1f} s")
    print(f"baseline: CtcLoss fwd+bwd on the same batch (V={NUM_PHONES + 1}); reference: "
          f"torch ctc_loss fwd+bwd {ref_args}")
    print(f"{'case (forward + backward)':44s} {'states':>7s} {'arcs':>7s} {'time ms':>9s} "
          f"{'/ CtcLoss':>9s} {'/ ref':>7s} {'/ no leaky':>10s} {'peak MB':>8s}")
    t, rb, rr, _ = measure(base, base, ref_fn, rounds)
    print(f"{'CtcLoss (ctc topology)':44s} {'':>7s} {'':>7s} {t * 1e3:9.1f} {rb:9.2f} "
          f"{rr:7.2f} {'':>10s} {peak('ctc'):>8s}", flush=True)
    labels = {"den_plain": "den only, {} (H o P, no leaky)",
              "den_arcs": "den only, {} (leaky arcs, old)",
              "den_leaky": "den only, {} (leaky in intersection, new)",
              "mmi_old": "MmiLoss, {} (leaky arcs den, old)",
              "mmi": "MmiLoss, {} (leaky in intersection, new)"}
    for name, loss_fn in losses.items():
        plain_g, arcs_g = loss_fn.compiler.den, loss_fn.den_graph()
        plain_fn = row_case("den_plain", loss_fn, B, T)
        for row in ROWS:
            fn = row_case(row, loss_fn, B, T)
            leaky_den = row in ("den_arcs", "den_leaky")
            t, rb, rr, rp = measure(fn, base, ref_fn, rounds, plain_fn if leaky_den else None)
            g = arcs_g if row in ("den_arcs", "mmi_old") else plain_g
            rp_s = f"{rp:10.2f}" if rp is not None else f"{'':>10s}"
            print(f"{labels[row].format(name):44s} {g.num_states:7d} {g.num_arcs:7d} "
                  f"{t * 1e3:9.1f} {rb:9.2f} {rr:7.2f} {rp_s} "
                  f"{peak('row', row=row, topo=name):>8s}", flush=True)


if __name__ == "__main__":
    main()
