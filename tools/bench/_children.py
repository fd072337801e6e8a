"""Helpers of the benchmarks that run each case in a fresh subprocess (so that the process's
peak RSS, which cannot go down, is that case's): ``measure`` in the child, ``run_cases`` in the
parent (``script --child NAME --rounds R --threads N`` prints one JSON line)."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def measure(run: Callable[[], object], rounds: int, threads: int) -> dict:
    """``{"seconds": median of rounds, "peak_mib": RSS growth of the warm-up call}``."""
    import torch

    torch.set_num_threads(threads)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()  # warm-up (and the memory peak)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "peak_mib": peak / 1024}


def run_cases(script: str, cases: Sequence[str], rounds: int, threads: int) -> dict[str, dict]:
    """Each case of ``script`` in its own subprocess; ``{case: its JSON result}``."""
    res = {}
    for name in cases:
        out = subprocess.run([sys.executable, script, "--child", name, "--rounds", str(rounds),
                              "--threads", str(threads)],
                             check=True, capture_output=True, text=True).stdout
        res[name] = json.loads(out.strip().splitlines()[-1])
    return res


def parent_or_child(doc: str, script: str, cases: Sequence[str],
                    child: Callable[[str, int, int], dict], rounds: int = 3
                    ) -> tuple[dict[str, dict], object] | None:
    """The benchmark's command line (``--threads``, ``--rounds``; ``--child`` internally): in
    a child, print ``child(name, rounds, threads)`` as JSON and return None; in the parent,
    run every case and return ``(results, args)``."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.threads)))
        return None
    return run_cases(script, cases, args.rounds, args.threads), args
