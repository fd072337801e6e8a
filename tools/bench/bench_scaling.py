#!/usr/bin/env python3
"""How the engine's loss cost and memory grow with the batch, the frames and the graph: the
measured inputs of docs/scaling.md.

Each case is ``bench_fsa``'s (forward + backward of the total w.r.t. the network output,
float32): exact CTC through the engine at per-GPU batch shapes of a LibriSpeech BPE-500 model,
and an LF-MMI-like denominator (a shared graph, label per state as H o P) at growing sizes.
Time: the median of ``--repeats`` calls, with torch's ``ctc_loss`` (B=16, T=500, V=500,
U=100) timed in the same rounds as the yardstick; memory: the peak rise of resident memory of
one call, in a fresh subprocess (``bench_fsa.peak_of``).

    python tools/bench/bench_scaling.py            # 2 threads
    python tools/bench/bench_scaling.py --quick    # smaller sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fsa import CASES, child_main, peak_of, time_ratio

REF = {"B": 16, "T": 500, "V": 500, "U": 100}

def _label(case: str, args: dict) -> str:
    if case == "engine_ctc":
        return f"CTC V={args['V']}, B={args['B']} T={args['T']} U={args['U']}"
    return (f"den S={args['num_states']} A={args['num_arcs']}, B={args['B']} "
            f"T={args['T']}")


_DEN = {"V": 300, "label_per_state": True}
#: (case, args): CTC grows with B x T x U; the denominator with B x T x arcs
FULL = [
    ("engine_ctc", {"B": 16, "T": 250, "V": 500, "U": 40}),
    ("engine_ctc", {"B": 32, "T": 250, "V": 500, "U": 40}),
    ("engine_ctc", {"B": 32, "T": 500, "V": 500, "U": 80}),
    ("engine_mmi", {"B": 16, "T": 150, "num_states": 2000, "num_arcs": 20000, **_DEN}),
    ("engine_mmi", {"B": 16, "T": 300, "num_states": 2000, "num_arcs": 20000, **_DEN}),
    ("engine_mmi", {"B": 32, "T": 150, "num_states": 2000, "num_arcs": 20000, **_DEN}),
    ("engine_mmi", {"B": 16, "T": 150, "num_states": 4000, "num_arcs": 40000, **_DEN}),
]
QUICK = [("engine_ctc", {"B": 4, "T": 50, "V": 500, "U": 10}),
         ("engine_mmi", {"B": 4, "T": 50, "num_states": 2000, "num_arcs": 20000, **_DEN})]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(CASES, a.child)
        return
    torch.set_num_threads(a.threads)
    ref = CASES["torch_ctc"](**REF)
    print(f"torch {torch.__version__}, {a.threads} threads; yardstick torch ctc_loss {REF}")
    print("| case | ms (median) | x yardstick | out frames/s | peak MB | MB per 1k frames |")
    print("|---|---|---|---|---|---|")
    rows = []
    for case, args in QUICK if a.quick else FULL:
        label = _label(case, args)
        t, ratio = time_ratio(CASES[case](**args), ref, a.repeats)
        peak = peak_of(case, args, a.threads, script=os.path.abspath(__file__))
        frames = args["B"] * args["T"]
        rows.append({"case": label, "args": args, "seconds": t, "ratio": ratio,
                     "peak_mb": peak, "frames": frames})
        print(f"| {label} | {t * 1e3:.0f} | {ratio:.2f} | {frames / t:,.0f} | {peak:.0f} | "
              f"{peak / frames * 1e3:.1f} |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
