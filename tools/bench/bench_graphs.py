#!/usr/bin/env python3
"""Decoding-graph compilation on real and large data: sizes, times, kaldifst share, memory.

Cases (each compile runs in its own subprocess, so its peak resident memory, VmHWM, is its own):

* **TIMIT phone level** (``--timit-dir``, the NLTK sample): 48-phone lang (each phone its own
  word, Lee & Hon's 61 -> 48 map, ``egs/timit/local``), Kneser-Ney phone bigram from the
  ``.phn`` transcripts -> HLG (``ctc``) and HCLG (``hmm-3state``);
* **TIMIT word level**: the ``.wrd`` words with their CMUdict pronunciations (ARPAbet, stress
  removed, optional ``SIL``), Kneser-Ney word bigram and trigram from the ``.wrd`` transcripts
  -> HLG (``ctc``);
* **large**: ``--num-words`` CMUdict words and a ``--order``-gram ARPA estimated on
  ``--num-tokens`` tokens of seeded synthetic text (``make_synthetic_lm.py``; the defaults give
  about 1M n-grams) -> ``prepare_lang`` -> G (``arpa_to_fst``) -> HLG (``ctc``).

Every compile is :func:`wfst_asr.graphs.compile_graph` (``force=True``): read L_disambig.fst and
G.fst, LG, HLG/HCLG, write ``<kind>.fst`` and ``<kind>.pt``. Columns: ``total`` (all of it),
``kaldifst`` (inside kaldifst's own operations: compose, determinize_star, rmepsilon,
minimize_encoded, connect, arcsort; share of total in brackets), ``convert`` (Fsa <-> kaldifst
conversions and reading the inputs), ``rm-in-eps`` (:func:`wfst_asr.graphs.remove_input_epsilons`),
``write``, ``other`` (the remaining Python), ``peak MB`` (VmHWM of the compile subprocess,
imports included) and ``base MB`` (its resident memory just before compiling: Python, torch
and the toolkit imported).

Usage::

    .venv/bin/python tools/bench/bench_graphs.py                 # full run
    .venv/bin/python tools/bench/bench_graphs.py --quick         # smoke test (small "large")
    .venv/bin/python tools/bench/bench_graphs.py --out-dir /tmp/bg --skip-large
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TIMIT_GRAPHS = REPO / "egs" / "timit" / "local" / "timit_graphs.py"  # run, not imported
DEFAULT_TIMIT = REPO.parent / "shared" / "data" / "timit_nltk_sample"
_TAG = "@@BENCH_GRAPHS_JSON@@"


def _vm_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


# ---------------------------------------------------------------------- workers (subprocess)
def _emit(obj: dict) -> None:
    print(_TAG + json.dumps(obj), flush=True)


def _worker_prep_large(out: str, num_words: int, num_tokens: int, order: int, seed: int
                       ) -> dict:
    from wfst_asr.atomic import atomic_write_text
    from wfst_asr.graphs.lang import prepare_lang
    from wfst_asr.graphs.lm import arpa_to_fst

    sys.path.insert(0, str(HERE))
    import make_synthetic_lm

    d = Path(out)
    params = {"num_words": num_words, "num_tokens": num_tokens, "order": order, "seed": seed}
    stamp = d / "synth.json"
    res: dict = {}
    t = time.perf_counter()
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params
            and (d / "lm.arpa").is_file()):
        make_synthetic_lm.main(["--out-dir", str(d), "--num-words", str(num_words),
                                "--num-tokens", str(num_tokens), "--order", str(order),
                                "--seed", str(seed)])
        atomic_write_text(stamp, json.dumps(params) + "\n")
    res["synth_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lang = prepare_lang(d / "lang", d / "lexicon.txt")
    res["prepare_lang_s"] = time.perf_counter() - t
    res["num_prons"] = len(lang.lexicon)
    res["max_disambig"] = lang.max_disambig
    del lang
    t = time.perf_counter()
    G = arpa_to_fst(d / "lm.arpa", d / "lang" / "words.txt", d / "lang" / "G.fst")
    res["arpa_to_fst_s"] = time.perf_counter() - t
    res["G_states"], res["G_arcs"] = G.num_states, G.num_arcs
    with open(d / "lm.arpa", encoding="utf-8") as f:
        res["ngrams"] = [int(line.split("=")[1]) for line in f.read(4096).splitlines()
                         if line.startswith("ngram ")]
    res["peak_mb"] = _vm_mb("VmHWM")
    return res


def _worker_compile(lang: str, kind: str, topo: str, out: str) -> dict:
    from wfst_asr import _kaldi

    _kaldi.kaldifst()
    from wfst_asr.graphs.compile import compile_graph

    base = _vm_mb("VmRSS")
    _, stats = compile_graph(lang, kind, topo, out_dir=out, force=True)
    stats["peak_mb"] = _vm_mb("VmHWM")
    stats["base_mb"] = base
    return stats


def _run_worker(args: list[str]) -> dict:
    """Run this script as a worker; returns its JSON (raises with its output on failure)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args} failed (rc {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(_TAG):])


def worker_main(argv: list[str]) -> int:
    what = argv[0]
    if what == "prep-large":
        res = _worker_prep_large(argv[1], *(int(x) for x in argv[2:6]))
    elif what == "compile":
        res = _worker_compile(*argv[1:5])
    else:
        raise SystemExit(f"unknown worker {what!r}")
    _emit(res)
    return 0


# ---------------------------------------------------------------------- table
COLS = ("case", "graph", "LG st/arcs", "states", "arcs", "total s", "kaldifst s (share)",
        "convert s", "rm-in-eps s", "write s", "other s", "peak MB", "base MB")


def _row(case: str, kind: str, st: dict) -> list[str]:
    rie = st.get("remove_input_epsilons_s", 0.0)
    other = st["python_s"] - rie - st.get("write_s", 0.0)
    return [case, f"{kind}", f"{st['LG_states']:,}/{st['LG_arcs']:,}",
            f"{st[kind + '_states']:,}", f"{st[kind + '_arcs']:,}", f"{st['total_s']:.2f}",
            f"{st['kaldifst_s']:.2f} ({100 * st['kaldifst_share']:.0f}%)",
            f"{st['convert_s']:.2f}", f"{rie:.2f}", f"{st.get('write_s', 0.0):.2f}",
            f"{other:.2f}", f"{st['peak_mb']:.0f}", f"{st['base_mb']:.0f}"]


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLS) + " |", "|" + "|".join(["---"] * len(COLS)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def prep_timit(timit_dir: Path, out: Path, word_orders: list[int]) -> dict[int, float]:
    """The TIMIT lang dirs + G of the recipe's ``timit_graphs.py`` (run as a command, once per
    word n-gram order ``n``: ``<out>/w<n>/{phone48,cmudict}``); ``{n: seconds}``."""
    res = {}
    for n in word_orders:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(TIMIT_GRAPHS), "--timit-dir", str(timit_dir),
                               "--out-dir", str(out / f"w{n}"), "--phone-order", "2",
                               "--word-order", str(n)],
                              check=False, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"{TIMIT_GRAPHS.name} failed (rc {proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        res[n] = time.perf_counter() - t
    return res


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return worker_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: word bigram only, 'large' = 3,000 words / 30,000 tokens")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="work files (lang dirs, LMs, graphs); default a temporary folder")
    p.add_argument("--timit-dir", type=Path, default=DEFAULT_TIMIT)
    p.add_argument("--num-words", type=int, default=None, help="large case (default 100,000)")
    p.add_argument("--num-tokens", type=int, default=None, help="large case (default 900,000)")
    p.add_argument("--order", type=int, default=3, help="large case n-gram order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-timit", action="store_true")
    p.add_argument("--skip-large", action="store_true")
    args = p.parse_args(argv)
    num_words = args.num_words or (3_000 if args.quick else 100_000)
    num_tokens = args.num_tokens or (30_000 if args.quick else 900_000)
    word_orders = [2] if args.quick else [2, 3]

    tmp = None
    if args.out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_graphs_")
        out = Path(tmp.name)
    else:
        out = args.out_dir
        out.mkdir(parents=True, exist_ok=True)
    print(f"# bench_graphs: {_cpu()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; work dir {out}", flush=True)
    rows: list[list[str]] = []
    notes: list[str] = []
    try:
        if not args.skip_timit:
            if not (args.timit_dir / "timitdic.txt").is_file():
                print(f"TIMIT sample not found at {args.timit_dir}: TIMIT cases skipped")
            else:
                prep = prep_timit(args.timit_dir, out / "timit", word_orders)
                notes.append("TIMIT lang dirs + G (timit_graphs.py: prepare_lang, "
                             "estimate_ngram, arpa_to_fst; phone 2-gram and word n-gram): "
                             + ", ".join(f"word {n}-gram {v:.1f} s" for n, v in prep.items()))
                phone48 = f"w{word_orders[0]}/phone48"
                cases = [("TIMIT 48 phones, phone 2-gram", phone48, "HLG", "ctc"),
                         ("TIMIT 48 phones, phone 2-gram", phone48, "HCLG", "hmm-3state")]
                cases += [(f"TIMIT CMUdict words, word {n}-gram", f"w{n}/cmudict", "HLG",
                           "ctc") for n in word_orders]
                for case, sub, kind, topo in cases:
                    lang = out / "timit" / sub
                    st = _run_worker(["compile", str(lang), kind, topo,
                                      str(lang / f"{kind}_{topo}")])
                    rows.append(_row(case, kind, st))
                    print(_table(rows[-1:]).splitlines()[-1], flush=True)
        if not args.skip_large:
            d = out / f"large_{num_words}w_{num_tokens}t_{args.order}g_s{args.seed}"
            d.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            prep = _run_worker(["prep-large", str(d), str(num_words), str(num_tokens),
                                str(args.order), str(args.seed)])
            notes.append(
                f"large: {num_words:,} words, {prep['num_prons']:,} prons (#0..#"
                f"{prep['max_disambig']}), n-grams {prep['ngrams']} (total "
                f"{sum(prep['ngrams']):,}); synthetic text + ARPA {prep['synth_s']:.1f} s, "
                f"prepare_lang {prep['prepare_lang_s']:.1f} s, arpa_to_fst (G "
                f"{prep['G_states']:,} states, {prep['G_arcs']:,} arcs) "
                f"{prep['arpa_to_fst_s']:.1f} s, peak {prep['peak_mb']:.0f} MB "
                f"(wall {time.perf_counter() - t:.1f} s)")
            print(notes[-1], flush=True)
            st = _run_worker(["compile", str(d / "lang"), "HLG", "ctc", str(d / "HLG_ctc")])
            rows.append(_row(f"large: {num_words // 1000}k words, "
                             f"{sum(prep['ngrams']) / 1e6:.2f}M {args.order}-grams", "HLG", st))
            ops = {k[len("kaldifst_"):-2]: v for k, v in st.items()
                   if k.startswith("kaldifst_") and k.endswith("_s") and k != "kaldifst_s"}
            notes.append("large HLG, time inside kaldifst by operation: "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in ops.items()))
            print(notes[-1], flush=True)
    finally:
        print()
        print(_table(rows))
        print()
        for n in notes:
            print(f"- {n}")
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
