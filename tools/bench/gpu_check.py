#!/usr/bin/env python3
"""GPU check (issue 18): the engine, decoding, transducer and training benchmarks on one device.

One markdown table, every row timed on the same device (CUDA when available, else the CPU, and
then the output says that no GPU was found) against the project's yardstick: torch's
``ctc_loss`` forward + backward on B=16, T=500, V=500, U=100 (``case_torch_ctc`` of
``bench_fsa.py``), on that device too. Rows:

* **engine CTC**: :class:`wfst_asr.losses.CtcLoss` (the FSA engine's exact CTC,
  ``intersect_dense`` + ``get_tot_scores``) forward + backward on the yardstick's sizes;
* **decoding**: :func:`wfst_asr.decode.one_best` (the back-pointer beam search,
  :func:`~wfst_asr.fsa.best_path_arcs`) and :func:`~wfst_asr.decode.lattice.get_lattice`
  (:func:`~wfst_asr.fsa.intersect_dense_pruned`, lattice beam 8) with a synthetic HLG
  (random lexicon over 48 tokens, a bigram of random sentences, ``compile_graph``) on peaky
  log-probs that spell other random sentences (each token 1-3 frames then a blank, plus Gaussian noise); frames/s, utterances/s
  and how many utterances came out right (1-best) or the lattices' arcs;
* **pruned RNN-T**: the pruned transducer pipeline of ``bench_transducer.py`` (simple loss with
  occupation, pruning ranges, pruned loss; forward + backward);
* **training**: ``Trainer.train_step`` of ``egs/timit/conf/ctc_blstm.yaml`` (``timit.ctc_blstm``)
  on synthetic batches (``bench_train.py --synthetic``): steps/s and input frames/s.

Timing: after one warm-up call of each (on CUDA, the peak of ``torch.cuda.max_memory_allocated``
over the memory allocated before it is reported), every round times the yardstick then each row
(``torch.cuda.synchronize()`` before and after each timed call on CUDA); a row's ratio is the
median over the rounds of (its time / the yardstick's time in the same round), its time the
median of its times. The case builders of ``bench_fsa.py`` / ``bench_transducer.py`` /
``bench_train.py`` are imported, not copied (their CPU inputs are moved to the device).

    python tools/bench/gpu_check.py                      # full sizes, 7 rounds
    python tools/bench/gpu_check.py --quick --out /tmp/gpu_check.md   # small sizes, 3 rounds
    python tools/bench/gpu_check.py --ctc B=8,T=200,V=500,U=50 --rounds 5

A row that fails is reported as FAILED in the table (the others still run) and the exit status
is then 1. Run through ``tools/bench/gpu_check.sh``, which runs the device tests first.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fsa import case_torch_ctc
from bench_train import QUICK_SETS, build, make_config, synthetic_batches
from bench_transducer import case_pipeline

from wfst_asr.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = "no GPU found: figures below are CPU figures, not GPU ones"
TRAIN_CONFIG = "egs/timit/conf/ctc_blstm.yaml"  # timit.ctc_blstm

#: sizes of each row: full run, and --quick (a CPU run of everything in well under a minute)
FULL = {"ctc": "B=16,T=500,V=500,U=100", "rnnt": "B=8,T=200,U=50,V=500,s_range=5",
        "decode": "utts=64,batch=16,words=1000,tokens=48", "train": "B=16,T=300",
        "rounds": 7}
QUICK = {"ctc": "B=4,T=100,V=50,U=20", "rnnt": "B=2,T=40,U=10,V=50,s_range=4",
         "decode": "utts=8,batch=8,words=200,tokens=48", "train": "B=4,T=100", "rounds": 3}
SHAPE_KEYS = {"ctc": ("B", "T", "V", "U"), "rnnt": ("B", "T", "U", "V", "s_range"),
              "decode": ("utts", "batch", "words", "tokens"), "train": ("B", "T")}


def parse_shape(text: str, keys: tuple[str, ...]) -> dict[str, int]:
    """``"B=16,T=500"`` -> ``{"B": 16, "T": 500}`` (every key of ``keys``, positive ints)."""
    out = {}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if not sep or k.strip() not in keys or not v.strip().isdigit() or int(v) < 1:
            raise argparse.ArgumentTypeError(f"bad size {item!r} in {text!r}: expected "
                                             f"{','.join(k + '=N' for k in keys)}, N >= 1")
        out[k.strip()] = int(v)
    missing = [k for k in keys if k not in out]
    if missing:
        raise argparse.ArgumentTypeError(f"{text!r}: missing {', '.join(missing)}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and 3 rounds (smoke test)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:N or cpu (default: cuda if available, else cpu)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"timing rounds (default {FULL['rounds']}, --quick {QUICK['rounds']})")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    for key, keys in SHAPE_KEYS.items():
        p.add_argument(f"--{key}", default=None, metavar=",".join(k + "=N" for k in keys),
                       help=f"sizes (default {FULL[key]}; --quick {QUICK[key]})")
    p.add_argument("--train-config", default=TRAIN_CONFIG,
                   help="config of the training row (registered name or file)")
    p.add_argument("--out", help="also write the output to this file (atomically)")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    try:
        for key, keys in SHAPE_KEYS.items():
            setattr(a, key, parse_shape(getattr(a, key) or base[key], keys))
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    a.rounds = a.rounds if a.rounds is not None else base["rounds"]
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    return a


# ---------------------------------------------------------------------------- device, timing

def pick_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return "CPU (no GPU found)" if not torch.cuda.is_available() else "CPU (GPU not used)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device's queued work included."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def warm_up(fn: Callable[[], object], device: torch.device) -> float | None:
    """One call of ``fn`` (compilation, caches); on CUDA, the MiB it allocated at its peak
    over what was allocated before it (``torch.cuda.max_memory_allocated``), else None."""
    if device.type != "cuda":
        fn()
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def on_device(run: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """A case closure of ``bench_fsa.py`` / ``bench_transducer.py`` (its inputs built on the
    CPU) with every tensor it holds moved to ``device``; leaves keep ``requires_grad``."""
    if device.type == "cpu":
        return run
    for cell in run.__closure__ or ():
        v = cell.cell_contents
        if isinstance(v, torch.Tensor):
            cell.cell_contents = v.detach().to(device).requires_grad_(v.requires_grad)
    return run


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (+ uncommitted changes)" if dirty else "")


# ------------------------------------------------------------------------------------ rows

@dataclass
class Row:
    """One row of the table: ``run`` is timed; ``rate(seconds)`` gives the throughput text."""
    name: str
    sizes: str
    run: Callable[[], object] | None = None
    rate: Callable[[float], str] = lambda s: ""
    error: str = ""
    peak: float | None = None
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def _sizes(d: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items())


def frame_rate(frames: int) -> Callable[[float], str]:
    return lambda s: f"{frames / s:,.0f} frames/s"


def row_engine_ctc(ctc: dict, device: torch.device) -> Row:
    """:class:`CtcLoss` forward + backward, inputs as ``case_torch_ctc``'s (same seed)."""
    from wfst_asr.losses import CtcLoss

    B, T, V, U = ctc["B"], ctc["T"], ctc["V"], ctc["U"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, V, generator=g).to(device).requires_grad_()
    targets = torch.randint(1, V, (B, U), generator=g).tolist()
    lens = torch.full((B,), T)
    loss_fn = CtcLoss(reduction="sum")

    def run() -> None:
        x.grad = None
        loss, _ = loss_fn(x.log_softmax(-1), lens, targets)
        loss.backward()
    return Row("engine CTC (CtcLoss) fwd+bwd", _sizes(ctc), run, frame_rate(B * T))


def synthetic_hlg(work: Path, num_tokens: int, num_words: int, seed: int = 0):
    """``(HLG, {word: token ids}, word ids, rng)``: a random lexicon of ``num_words`` words
    of 2-6 of ``num_tokens`` tokens (distinct pronunciations), a bigram estimated on 1000
    random sentences, compiled as the recipes do (``compile_graph``, CTC topology)."""
    from wfst_asr.fsa import SymbolTable
    from wfst_asr.graphs import lang, lm
    from wfst_asr.graphs.compile import compile_graph
    from wfst_asr.graphs.ngram import estimate_ngram

    rng = random.Random(seed)
    toks = [f"t{i}" for i in range(1, num_tokens + 1)]
    prons: dict[tuple[str, ...], str] = {}
    while len(prons) < num_words:
        p = tuple(rng.choice(toks) for _ in range(rng.randint(2, 6)))
        prons.setdefault(p, f"w{len(prons)}")
    lex = {w: list(p) for p, w in prons.items()}
    (work / "lexicon.txt").write_text("".join(f"{w} {' '.join(p)}\n" for w, p in lex.items()))
    lang.prepare_lang(work, work / "lexicon.txt", tokens=toks)
    vocab = list(lex)
    sents = [[rng.choice(vocab) for _ in range(rng.randint(4, 12))] for _ in range(1000)]
    estimate_ngram(sents, 2).write_arpa(work / "lm.arpa")
    lm.arpa_to_fst(work / "lm.arpa", work / "words.txt", out_path=work / "G.fst")
    hlg, _ = compile_graph(work, kind="HLG", topo="ctc")
    tokens = SymbolTable.from_file(work / "tokens.txt")
    words = SymbolTable.from_file(work / "words.txt")
    spell = {w: [int(tokens[t]) for t in p] for w, p in lex.items()}
    return hlg, spell, {w: int(words[w]) for w in lex}, int(tokens["#0"]), rng


def peaky_log_probs(sents: list[list[str]], spell: dict[str, list[int]], V: int,
                    rng: random.Random, noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, V]`` log-probs spelling ``sents`` (a blank, then each token for 1-3 frames and
    a blank; the spelled output 0, the others -8, plus N(0, noise)) and the lengths ``[B]``."""
    frames = []
    for s in sents:
        f = [0]
        for w in s:
            for t in spell[w]:
                f += [t] * rng.randint(1, 3) + [0]
        frames.append(f)
    x = torch.full((len(frames), max(map(len, frames)), V), -8.0)
    for b, f in enumerate(frames):
        x[b, torch.arange(len(f)), torch.tensor(f)] = 0.0
    g = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    x = x + noise * torch.randn(x.shape, generator=g)
    return x.log_softmax(-1), torch.tensor([len(f) for f in frames])


DECODE_1BEST = "decoding: 1-best (one_best, back-pointer beam search)"
DECODE_LATTICE = "decoding: lattices (get_lattice, intersect_dense_pruned)"


def row_decoding(dec: dict, device: torch.device, work: Path, lattice: bool = False) -> Row:
    """1-best decoding (``one_best``: the back-pointer beam search) of every batch or, with
    ``lattice``, their lattices (``get_lattice``: intersect_dense_pruned, lattice beam 8)."""
    from wfst_asr.decode import one_best
    from wfst_asr.decode.lattice import get_lattice

    hlg, spell, word_id, V, rng = synthetic_hlg(work, dec["tokens"], dec["words"])
    vocab = list(spell)
    sents = [[rng.choice(vocab) for _ in range(rng.randint(4, 12))] for _ in range(dec["utts"])]
    batches = []
    for a in range(0, len(sents), dec["batch"]):
        lp, lens = peaky_log_probs(sents[a:a + dec["batch"]], spell, V, rng)
        batches.append((lp.to(device), lens))
    graph = hlg.to(device)
    want = [[word_id[w] for w in s] for s in sents]
    frames = sum(int(lens.sum()) for _, lens in batches)
    right: list[int] = []

    def run() -> None:
        if lattice:
            arcs = [get_lattice(graph, lp, lens, search_beam=20.0, output_beam=8.0).num_arcs
                    for lp, lens in batches]
            right[:] = [sum(arcs)]
            return
        got = [h for lp, lens in batches for h in one_best(graph, lp, lens, search_beam=20.0)]
        right[:] = [sum(g == w for g, w in zip(got, want))]

    def rate(s: float) -> str:
        what = (f"{right[0]:,} lattice arcs" if lattice else
                f"{right[0]}/{len(sents)} utt right")
        return f"{frames / s:,.0f} frames/s, {len(sents) / s:,.1f} utt/s, {what}"
    sizes = (f"HLG {hlg.num_states} states {hlg.num_arcs} arcs ({dec['words']} words, "
             f"{dec['tokens']} tokens, bigram); {len(sents)} utts in batches of {dec['batch']}, "
             f"{frames} frames, search beam 20")
    name = DECODE_LATTICE if lattice else DECODE_1BEST
    return Row(name, sizes, run, rate)


def row_pruned_rnnt(rnnt: dict, device: torch.device) -> Row:
    run = on_device(case_pipeline(**rnnt), device)
    return Row("pruned RNN-T pipeline fwd+bwd (bench_transducer)", _sizes(rnnt), run,
               frame_rate(rnnt["B"] * rnnt["T"]))


def row_training(train: dict, config: str, quick: bool, device: torch.device,
                 n_batches: int = 4) -> Row:
    """``Trainer.train_step`` (forward, loss, backward, guarded optimizer step) of ``config``
    on synthetic batches built as ``bench_train.py --synthetic`` builds them."""
    from wfst_asr.train import Trainer, seed_everything

    with contextlib.redirect_stdout(sys.stderr):  # its notes go with the progress lines
        cfg = make_config(config, QUICK_SETS if quick else [])
    seed_everything(cfg.seed)
    model, loss_fn, _, _ = build(cfg, False)
    batches = [{"features": f, "feature_lens": n, "targets": t}
               for f, n, t in synthetic_batches(cfg, n_batches, train["B"], train["T"])]
    trainer = Trainer(cfg, model, loss_fn, None, device=device, targets=lambda b: b["targets"])
    trainer.model.train()
    it = itertools.cycle(batches)

    def run() -> None:
        if trainer.train_step(next(it)) is None:
            raise RuntimeError("the training step skipped its batch")

    frames = train["B"] * train["T"]
    params = sum(p.numel() for p in model.parameters())
    over = f", {' '.join(QUICK_SETS)}" if quick else ""
    return Row(f"training step {cfg.name}", f"synthetic B={train['B']} T={train['T']}, "
               f"{params:,} params{over}", run,
               lambda s: f"{1 / s:,.2f} steps/s, {frames / s:,.0f} input frames/s")


# ---------------------------------------------------------------------------------- main

def measure(ref: Row, rows: list[Row], rounds: int, device: torch.device) -> None:
    """Warm-up (and peak memory) of each, then ``rounds`` rounds of (yardstick, row) pairs."""
    for r in [ref, *rows]:
        if r.error:
            continue
        try:
            r.peak = warm_up(r.run, device)
        except Exception as e:  # reported in the table, the others go on
            if r is ref:
                raise
            r.error = f"{type(e).__name__}: {e}"
    for i in range(rounds):
        print(f"round {i + 1}/{rounds}", file=sys.stderr, flush=True)
        for r in rows:
            if r.error:
                continue
            t_ref = timed(ref.run, device)
            try:
                t = timed(r.run, device)
            except Exception as e:  # noqa: BLE001 - the row is reported as FAILED
                r.error = f"{type(e).__name__}: {e}"
                continue
            ref.times.append(t_ref)
            r.times.append(t)
            r.ratios.append(t / t_ref)


def table(ref: Row, rows: list[Row], device: torch.device) -> list[str]:
    peak = "peak MiB (CUDA)" if device.type == "cuda" else "peak MiB"
    out = [f"| check | sizes | median ms | x yardstick | throughput | {peak} |",
           "|---|---|---|---|---|---|"]
    for r in [ref, *rows]:
        if r.error or not r.times:
            msg = r.error or "no timing"
            out.append(f"| {r.name} | {r.sizes} | FAILED: {msg.splitlines()[0][:200]} "
                       "| - | - | - |")
            continue
        t = statistics.median(r.times)
        ratio = statistics.median(r.ratios) if r is not ref else 1.0
        mem = f"{r.peak:,.0f}" if r.peak is not None else "-"
        out.append(f"| {r.name} | {r.sizes} | {t * 1e3:,.1f} | {ratio:.2f} | {r.rate(t)} "
                   f"| {mem} |")
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    t_start = time.perf_counter()
    header = (f"device: {device_name(device)} | torch {torch.__version__} | commit "
              f"{git_commit()} | {a.threads} CPU threads | {a.rounds} rounds"
              f"{' | --quick' if a.quick else ''}")
    lines = [header]
    if device.type != "cuda":
        lines.append(NO_GPU)
    print("\n".join(lines), file=sys.stderr, flush=True)

    ref = Row("yardstick: torch ctc_loss fwd+bwd", _sizes(a.ctc),
              on_device(case_torch_ctc(**a.ctc), device), frame_rate(a.ctc["B"] * a.ctc["T"]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        builders: list[tuple[str, str, Callable[[], Row]]] = [
            ("engine CTC (CtcLoss) fwd+bwd", _sizes(a.ctc),
             lambda: row_engine_ctc(a.ctc, device)),
            (DECODE_1BEST, _sizes(a.decode), lambda: row_decoding(a.decode, device, Path(tmp))),
            (DECODE_LATTICE, _sizes(a.decode),
             lambda: row_decoding(a.decode, device, Path(tmp), lattice=True)),
            ("pruned RNN-T pipeline fwd+bwd (bench_transducer)", _sizes(a.rnnt),
             lambda: row_pruned_rnnt(a.rnnt, device)),
            ("training step timit.ctc_blstm", _sizes(a.train),
             lambda: row_training(a.train, a.train_config, a.quick, device)),
        ]
        for name, sizes, make in builders:
            print(f"building: {name}", file=sys.stderr, flush=True)
            try:
                rows.append(make())
            except Exception as e:  # noqa: BLE001 - reported in the table
                rows.append(Row(name, sizes, error=f"{type(e).__name__}: {e}"))
        measure(ref, rows, a.rounds, device)

    seconds = time.perf_counter() - t_start
    lines.append(f"yardstick: torch.nn.functional.ctc_loss forward + backward, "
                 f"{_sizes(a.ctc)}, on the same device; x yardstick = median over the rounds "
                 f"of (time / yardstick time of the same round); run took {seconds:.0f} s")
    lines += ["", *table(ref, rows, device)]
    text = "\n".join(lines) + "\n"
    print(text, end="", flush=True)
    if a.out:
        atomic_write_text(a.out, text)
    failed = [r.name for r in rows if r.error or not r.times]
    ok = all(math.isfinite(x) and x > 0 for r in rows for x in r.ratios)
    return 1 if failed or not ok else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
