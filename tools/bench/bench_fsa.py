#!/usr/bin/env python3
"""Speed and peak memory of the FSA engine, as ratios to torch's CTC loss in the same run.

Every case runs in its own subprocess so that its peak memory (extra resident memory over
the inputs, from /proc/self/status VmHWM after resetting it) is its own. Times are the median
of ``--repeats`` runs after one warm-up, forward + backward.

    python tools/bench/bench_fsa.py            # all cases, 2 threads
    python tools/bench/bench_fsa.py --quick    # smaller sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _measure(fn: Callable[[], None], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    base = _rss_kb("VmRSS")
    _reset_peak()
    fn()
    peak = _rss_kb("VmHWM")
    return {"time_s": statistics.median(times), "peak_extra_mb": max(0, peak - base) / 1024}


def case_torch_ctc(B: int, T: int, V: int, U: int) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, V, generator=g, requires_grad=True)
    tg = torch.randint(1, V, (B, U), generator=g)
    lens, tlens = torch.full((B,), T), torch.full((B,), U)

    def run() -> None:
        x.grad = None
        lp = x.log_softmax(-1)
        torch.nn.functional.ctc_loss(lp.transpose(0, 1), tg, lens, tlens,
                                     reduction="sum").backward()
    return run


def case_engine_ctc(B: int, T: int, V: int, U: int) -> Callable[[], None]:
    from wfst_asr.fsa import DenseFsaVec, ctc_graph, get_tot_scores, intersect_dense
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, V, generator=g, requires_grad=True)
    tg = torch.randint(1, V, (B, U), generator=g).tolist()
    segs = torch.tensor([[i, 0, T] for i in range(B)], dtype=torch.int32)

    def run() -> None:
        x.grad = None
        lp = x.log_softmax(-1)
        graphs = ctc_graph(tg)
        tot = get_tot_scores(intersect_dense(graphs, DenseFsaVec(lp, segs)))
        (-tot.sum()).backward()
    return run


def random_shared_graph(num_states: int, num_arcs: int, V: int, seed: int = 0):
    """A random, strongly connected-ish graph like an LF-MMI denominator graph.

    ``num_states`` states (plus the final state), ``num_arcs`` frame arcs with random labels in
    [0, V) and random scores, and a -1 arc from every state (all states final, as in P o H).
    """
    from wfst_asr.fsa import Fsa
    g = torch.Generator().manual_seed(seed)
    n_frame = num_arcs - num_states
    src = torch.randint(0, num_states, (n_frame,), generator=g)
    src[:num_states] = torch.arange(num_states)  # every state has a leaving arc
    dst = torch.randint(0, num_states, (n_frame,), generator=g)
    lab = torch.randint(0, V, (n_frame,), generator=g)
    fs = torch.arange(num_states)
    arcs = torch.stack([torch.cat([src, fs]), torch.cat([dst, torch.full_like(fs, num_states)]),
                        torch.cat([lab, torch.full_like(fs, -1)])], 1).to(torch.int32)
    scores = torch.cat([torch.randn(n_frame, generator=g) * 0.5, torch.zeros(num_states)])
    return Fsa(arcs, scores, num_states=num_states + 1)


def case_engine_mmi(B: int, T: int, V: int, num_states: int, num_arcs: int
                    ) -> Callable[[], None]:
    from wfst_asr.fsa import DenseFsaVec, get_tot_scores, intersect_dense
    graph = random_shared_graph(num_states, num_arcs, V)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, V, generator=g, requires_grad=True)
    segs = torch.tensor([[i, 0, T] for i in range(B)], dtype=torch.int32)

    def run() -> None:
        x.grad = None
        lp = x.log_softmax(-1)
        tot = get_tot_scores(intersect_dense(graph, DenseFsaVec(lp, segs)))
        (-tot.sum()).backward()
    return run


CASES = {"torch_ctc": case_torch_ctc, "engine_ctc": case_engine_ctc,
         "engine_mmi": case_engine_mmi}


def _child(spec: str) -> None:
    d = json.loads(spec)
    torch.set_num_threads(d["threads"])
    fn = CASES[d["case"]](**d["args"])
    print(json.dumps(_measure(fn, d["repeats"])))


def run_case(case: str, args: dict[str, int], threads: int, repeats: int) -> dict[str, float]:
    spec = json.dumps({"case": case, "args": args, "threads": threads, "repeats": repeats})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # threads are set with torch.set_num_threads in the child; OMP_NUM_THREADS is left alone
    # (set, it makes OpenMP spin-wait, which is very slow on a loaded 2-core machine)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--child", spec], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(a.child)
        return
    ctc = {"B": 16, "T": 500, "V": 500, "U": 100} if not a.quick else {"B": 4, "T": 100, "V": 50, "U": 20}
    mmi_T = [50, 100, 150] if not a.quick else [10, 20]
    mmi_A = [5000, 10000, 20000] if not a.quick else [500, 1000]
    mmi = {"B": 16, "V": 300, "num_states": 2000} if not a.quick else {"B": 2, "V": 30, "num_states": 100}
    print(f"torch {torch.__version__}, {a.threads} threads, median of {a.repeats}")
    ref = run_case("torch_ctc", ctc, a.threads, a.repeats)
    print(f"reference torch.nn.functional.ctc_loss fwd+bwd {ctc}: {ref['time_s'] * 1e3:.1f} ms, "
          f"peak +{ref['peak_extra_mb']:.0f} MB")
    rows = [("CTC " + " ".join(f"{k}={v}" for k, v in ctc.items()),
             run_case("engine_ctc", ctc, a.threads, a.repeats))]
    for T in mmi_T:
        args = dict(mmi, T=T, num_arcs=mmi_A[-1])
        rows.append(((f"shared graph S={mmi['num_states']} A={mmi_A[-1]} B={mmi['B']} T={T} "
                     f"V={mmi['V']}"), run_case("engine_mmi", args, a.threads, a.repeats)))
    for A in mmi_A[:-1]:
        args = dict(mmi, T=mmi_T[-1], num_arcs=A)
        rows.append(((f"shared graph S={mmi['num_states']} A={A} B={mmi['B']} T={mmi_T[-1]} "
                     f"V={mmi['V']}"), run_case("engine_mmi", args, a.threads, a.repeats)))
    print(f"{'case':58s} {'time ms':>9s} {'ratio':>7s} {'peak MB':>8s}")
    for name, r in rows:
        print(f"{name:58s} {r['time_s'] * 1e3:9.1f} {r['time_s'] / ref['time_s']:7.2f} "
              f"{r['peak_extra_mb']:8.0f}")


if __name__ == "__main__":
    main()
