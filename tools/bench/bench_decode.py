#!/usr/bin/env python3
"""Graph decoding speed: the engine's ``one_best`` / ``get_lattice`` against kaldi-decoder's
``FasterDecoder`` on the same graph, beams and inputs.

Per case (a decoding graph), the same utterances are decoded by

* ``kaldi``: :func:`~wfst_asr.decode.kaldi_one_best` (``FasterDecoder`` + ``DecodableCtc``, one
  utterance at a time; the reference of every ratio);
* ``one_best B=1``: :func:`~wfst_asr.decode.one_best`, one utterance per call;
* ``one_best batch``: the same, ``--batch`` utterances per call;
* ``get_lattice batch``: :func:`~wfst_asr.decode.lattice.get_lattice` (``--output-beam``), the
  same batches;
* ``kaldi lattice``: kaldi-decoder's ``LatticeSimpleDecoder`` (its only lattice decoder: beam
  only, no ``max_active``) with ``--beam`` and ``--output-beam`` as its lattice beam, one
  utterance at a time, each raw (undeterminized) lattice taken with ``get_raw_lattice``;
  Kaldi's own cost of a lattice over its 1-best;
* ``lattice route batch`` (``--old``): 1-best the way ``one_best`` did it before the
  back-pointer search, ``intersect_dense_pruned`` (output beam 0) + ``shortest_path``, with
  today's ``intersect_dense_pruned``.

``--methods`` picks a subset (``kaldi`` is always run: it is the reference); run from an
older checkout, the same script measures that checkout's ``one_best``.

Same search beam, ``max_active`` and ``min_active`` everywhere, ``lm_scale`` and word penalty
applied to the graph (Kaldi: in its costs). A ratio is the median over ``--rounds`` rounds of
the method's time over Kaldi's time in the same round (methods interleaved round by round).
``same`` counts the utterances whose engine 1-best equals Kaldi's. ``peak MiB``: peak resident
memory of one call of the method over the resident memory before it, in a fresh subprocess
(graph and inputs loaded first; Linux's VmHWM, reset through ``/proc/self/clear_refs``).

Inputs: synthetic peaky CTC log-probs (blank-dominated frames, a random token spiking on 30%
of frames; seeded), ``--utts`` utterances of 80-139 frames. Graphs (built when missing):

* TIMIT phone HLG and HCLG, CMUdict-word bigram and trigram HLGs of ``bench_graphs.py``
  (``--graph-dir``; made with ``bench_graphs.py --skip-large`` when absent);
* the LJ Speech recipe's phone and BPE word-level HLGs (``--lj-dir``, stages 0, 2-4 of
  ``egs/ljspeech/run.sh``), when present.

    python tools/bench/bench_decode.py                      # every case found, 5 rounds
    python tools/bench/bench_decode.py --cases phone_hlg --rounds 2 --utts 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import numpy as np
import torch

from wfst_asr import _kaldi
from wfst_asr.decode import kaldi_ctc_graph, kaldi_one_best, one_best
from wfst_asr.decode.lattice import get_lattice
from wfst_asr.fsa import DenseFsaVec, intersect_dense_pruned, load, shortest_path

REPO = Path(__file__).resolve().parents[2]
GRAPHS = {  # case -> path under --graph-dir, or under --lj-dir for lj_*
    "phone_hlg": "timit/w2/phone48/HLG_ctc/HLG.pt",
    "phone_hclg": "timit/w2/phone48/HCLG_hmm-3state/HCLG.pt",
    "word2_hlg": "timit/w2/cmudict/HLG_ctc/HLG.pt",
    "word3_hlg": "timit/w3/cmudict/HLG_ctc/HLG.pt",
    "lj_phone_hlg": "lang_phone/HLG.pt",
    "lj_bpe_hlg": "lang_bpe_500/HLG.pt",
}
METHODS = ["kaldi", "one_best B=1", "one_best batch", "get_lattice batch", "kaldi lattice"]


def peaky_inputs(V: int, utts: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_probs [utts, T, V], lens [utts])``: blank-dominated frames, a random token
    spiking on 30% of them (the shape of a trained CTC model's output)."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(80, 140, (utts,), generator=gen)
    T = int(lens.max())
    logits = torch.randn(utts, T, V, generator=gen)
    tok = torch.randint(1, V, (utts, T), generator=gen)
    spike = torch.rand(utts, T, generator=gen) < 0.3
    logits[..., 0] += 6.0
    logits.scatter_add_(2, tok.unsqueeze(2), torch.where(spike, 9.0, 0.0).unsqueeze(2))
    return logits.log_softmax(-1), lens


def graph_path(case: str, args) -> Path:
    base = args.lj_dir if case.startswith("lj_") else args.graph_dir
    return Path(base) / GRAPHS[case]


def ensure_timit_graphs(graph_dir: Path) -> None:
    if (graph_dir / GRAPHS["word3_hlg"]).exists():
        return
    subprocess.run([sys.executable, str(REPO / "tools/bench/bench_graphs.py"), "--skip-large",
                    "--out-dir", str(graph_dir)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


class Case:
    """A graph, its Kaldi form and the inputs; ``run(method)`` decodes them all."""

    def __init__(self, path: Path, args) -> None:
        self.g = load(path)
        self.V = int(self.g.labels.max()) + 1
        self.lp, self.lens = peaky_inputs(self.V, args.utts)
        self.args = args
        self.kg = kaldi_ctc_graph(self.g, args.lm_scale, args.penalty)

    def run(self, method: str) -> list[list[int]]:
        a, lp, lens = self.args, self.lp, self.lens
        kw = {"lm_scale": a.lm_scale, "word_penalty": a.penalty}
        if method == "kaldi":
            return kaldi_one_best(self.kg, lp, lens, beam=a.beam, max_active=a.max_active,
                                  min_active=a.min_active)
        if method == "kaldi lattice":
            self._kaldi_lattices()
            return []
        bs = 1 if method == "one_best B=1" else a.batch
        out: list[list[int]] = []
        for i in range(0, lp.shape[0], bs):
            x, n = lp[i:i + bs], lens[i:i + bs]
            if method.startswith("one_best"):
                out += one_best(self.g, x, n, search_beam=a.beam, min_active_states=a.min_active,
                                max_active_states=a.max_active, **kw)
            elif method == "get_lattice batch":
                get_lattice(self.g, x, n, search_beam=a.beam, output_beam=a.output_beam,
                            min_active_states=a.min_active, max_active_states=a.max_active, **kw)
            else:  # the lattice route to the 1-best
                out += _old_one_best(self.g, x, n, a)
        return out


    def _kaldi_lattices(self) -> None:
        kd = _kaldi.kaldi_decoder()
        cfg = kd.LatticeSimpleDecoderConfig()
        cfg.beam, cfg.lattice_beam = self.args.beam, self.args.output_beam
        cfg.determinize_lattice = False
        dec = kd.LatticeSimpleDecoder(self.kg, cfg)
        for b, n in enumerate(self.lens.tolist()):
            dec.decode(kd.DecodableCtc(np.ascontiguousarray(self.lp[b, :n].numpy())))
            dec.get_raw_lattice()


def _old_one_best(g, lp, lens, a) -> list[list[int]]:
    from wfst_asr.decode.ctc import aux_label_sequences, scale_graph
    sg = scale_graph(g, a.lm_scale, a.penalty)
    B = lp.shape[0]
    segs = torch.stack([torch.arange(B), torch.zeros(B, dtype=torch.int64), lens], 1)
    lat = intersect_dense_pruned(sg, DenseFsaVec(lp, segs.to(torch.int32)), a.beam, 0.0,
                                 a.min_active, a.max_active)
    return aux_label_sequences(shortest_path(lat))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child_peak(args) -> None:
    """One call of ``--child-method`` on ``--child-case``; prints its peak resident memory
    over the resident memory just before it (MiB; the kernel's peak is reset first)."""
    torch.set_num_threads(args.threads)
    case = Case(graph_path(args.child_case, args), args)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    case.run(args.child_method)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))


def peak_of(case: str, method: str, argv: list[str]) -> float:
    out = subprocess.run([sys.executable, __file__, *argv, "--child-case", case,
                          "--child-method", method], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(GRAPHS))
    p.add_argument("--graph-dir", type=Path, default=Path("/tmp/wg_bench/full"))
    p.add_argument("--lj-dir", type=Path, default=REPO / "egs/ljspeech/data")
    p.add_argument("--utts", type=int, default=40)
    p.add_argument("--batch", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--beam", type=float, default=20.0)
    p.add_argument("--output-beam", type=float, default=8.0)
    p.add_argument("--max-active", type=int, default=10000)
    p.add_argument("--min-active", type=int, default=30)
    p.add_argument("--lm-scale", type=float, default=0.2)
    p.add_argument("--penalty", type=float, default=-1.0)
    p.add_argument("--old", action="store_true", help="also the lattice route to the 1-best")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {METHODS[1:]} (kaldi always runs)")
    p.add_argument("--no-peak", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--child-case", help=argparse.SUPPRESS)
    p.add_argument("--child-method", help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    if args.child_case:
        child_peak(args)
        return 0
    torch.set_num_threads(args.threads)
    cases = [c for c in args.cases.split(",") if c]
    if any(not c.startswith("lj_") for c in cases):
        ensure_timit_graphs(args.graph_dir)
    methods = METHODS if args.methods is None else \
        ["kaldi"] + [m for m in args.methods.split(",") if m and m != "kaldi"]
    methods += ["lattice route batch"] if args.old else []
    print(f"# bench_decode: {args.utts} utterances, beam {args.beam}, max/min active "
          f"{args.max_active}/{args.min_active}, lm_scale {args.lm_scale}, penalty "
          f"{args.penalty}, lattice beam {args.output_beam}, batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.rounds} interleaved rounds")
    print("| graph | states | arcs | frames | method | seconds | x kaldi | same 1-best | "
          "peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in cases:
        path = graph_path(name, args)
        if not path.exists():
            print(f"| {name} | (no {path}) | | | | | | | |")
            continue
        case = Case(path, args)
        ref = case.run("kaldi")
        same = {m: sum(a == b for a, b in zip(case.run(m), ref)) if "lattice" not in m
                else None for m in methods}  # also the warm-up
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                t0 = time.perf_counter()
                case.run(m)
                times[m].append(time.perf_counter() - t0)
        frames = int(case.lens.sum())
        for m in methods:
            ratio = statistics.median(t / k for t, k in zip(times[m], times["kaldi"]))
            peak = "" if args.no_peak else f"{peak_of(name, m, raw):.0f}"
            s = "" if same[m] is None else f"{same[m]}/{len(ref)}"
            print(f"| {name} | {case.g.num_states:,} | {case.g.num_arcs:,} | {frames:,} | {m} "
                  f"| {statistics.median(times[m]):.3f} | {ratio:.2f} | {s} | {peak} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
