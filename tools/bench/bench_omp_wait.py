#!/usr/bin/env python3
"""Beam-search decoding time with and without ``OMP_WAIT_POLICY=PASSIVE``, idle and loaded.

Each measurement runs in a fresh subprocess (the policy is read when torch loads OpenMP):
``intersect_dense_pruned(ctc_topo(V-1), ...)`` + ``shortest_path`` over B x T frames with 2
torch threads. "loaded" starts a competing process that keeps both cores busy.

    .venv/bin/python tools/bench/bench_omp_wait.py [--B 8] [--T 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CHILD = """
import sys, time, torch
from wfst_asr.fsa import DenseFsaVec, ctc_topo, intersect_dense_pruned, shortest_path
torch.set_num_threads(2)
B, T, V = int(sys.argv[1]), int(sys.argv[2]), 49
lp = torch.randn(B, T, V, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
dense = DenseFsaVec(lp, torch.tensor([[i, 0, T] for i in range(B)], dtype=torch.int32))
graph = ctc_topo(V - 1)
shortest_path(intersect_dense_pruned(graph, dense, 20.0, 8.0, 30, 1000))  # warm-up
t = time.perf_counter()
shortest_path(intersect_dense_pruned(graph, dense, 20.0, 8.0, 30, 1000))
print(time.perf_counter() - t)
"""

BURN = "import torch\ntorch.set_num_threads(2)\nx = torch.randn(600, 600)\nwhile True: x @ x\n"


def run(B: int, T: int, passive: bool) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)  # unset: libgomp's default (spin, then sleep)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run([sys.executable, "-c", CHILD, str(B), str(T)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=100)
    a = p.parse_args()
    print(f"intersect_dense_pruned + shortest_path, ctc_topo(48), B={a.B} T={a.T}, 2 threads")
    for loaded in (False, True):
        burner = subprocess.Popen([sys.executable, "-c", BURN]) if loaded else None
        try:
            time.sleep(1.0 if loaded else 0.0)
            for passive in (False, True):
                t = run(a.B, a.T, passive)
                policy = "PASSIVE" if passive else "(unset)"
                print(f"  {'loaded' if loaded else 'idle':6s}  OMP_WAIT_POLICY={policy:8s} "
                      f"{t:7.2f} s", flush=True)
        finally:
            if burner is not None:
                burner.kill()


if __name__ == "__main__":
    main()
