#!/usr/bin/env python3
"""Speed and peak memory of the FSA engine, as ratios to torch's CTC loss in the same run.

Timing: every case runs in this process, interleaved with the reference (torch's
``ctc_loss`` forward + backward on B=16, T=500, V=500, U=100), and the reported ratio is the
median over rounds of (case time / reference time of the same round), which cancels slow
drifts of a shared machine. Memory: each case runs once more in its own subprocess with glibc
returning freed memory (``MALLOC_MMAP_THRESHOLD_``); the peak is the rise of resident memory
(VmHWM) over the resident memory before the measured call: what the call needs on top of its
inputs.

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


def _peak_mb(fn: Callable[[], None]) -> float:
    fn()  # warm-up (compilation, caches)
    base = _rss_kb("VmRSS")
    _reset_peak()
    fn()
    return max(0, _rss_kb("VmHWM") - base) / 1024


def _time(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


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
    from wfst_asr.fsa import DenseFsaVec, get_tot_scores, intersect_dense
    from wfst_asr.graphs import ctc_graph
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


def random_shared_graph(num_states: int, num_arcs: int, V: int, seed: int = 0,
                        label_per_state: bool = False):
    """A random graph of the size of an LF-MMI denominator graph.

    ``num_states`` states (plus the final state), ``num_arcs`` arcs in all (frame arcs with
    labels in [0, V) and random scores, and a -1 arc from every state: all states final, as in
    a denominator graph). ``label_per_state``: every arc entering a state has that state's
    label, as in a graph composed with a CTC or HMM topology (H o P); else random labels.
    """
    from wfst_asr.fsa import Fsa
    g = torch.Generator().manual_seed(seed)
    n_frame = num_arcs - num_states
    src = torch.randint(0, num_states, (n_frame,), generator=g)
    src[:num_states] = torch.arange(num_states)  # every state has a leaving arc
    dst = torch.randint(0, num_states, (n_frame,), generator=g)
    lab = torch.randint(0, V, (n_frame,), generator=g)
    if label_per_state:
        lab = torch.randint(0, V, (num_states,), generator=g)[dst]
    fs = torch.arange(num_states)
    arcs = torch.stack([torch.cat([src, fs]), torch.cat([dst, torch.full_like(fs, num_states)]),
                        torch.cat([lab, torch.full_like(fs, -1)])], 1).to(torch.int32)
    scores = torch.cat([torch.randn(n_frame, generator=g) * 0.5, torch.zeros(num_states)])
    return Fsa(arcs, scores, num_states=num_states + 1)


def case_engine_mmi(B: int, T: int, V: int, num_states: int, num_arcs: int,
                    label_per_state: bool = False) -> Callable[[], None]:
    from wfst_asr.fsa import DenseFsaVec, get_tot_scores, intersect_dense
    graph = random_shared_graph(num_states, num_arcs, V, label_per_state=label_per_state)
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


def child_main(cases: dict[str, Callable[..., Callable[[], None]]], spec: str) -> None:
    """In the ``--child`` subprocess: build the case of ``spec`` from ``cases`` and print its
    peak extra memory as JSON (used by :func:`peak_of`)."""
    d = json.loads(spec)
    torch.set_num_threads(d["threads"])
    fn = cases[d["case"]](**d["args"])
    print(json.dumps({"peak_extra_mb": _peak_mb(fn)}))


def peak_of(case: str, args: dict, threads: int, script: str = __file__) -> float:
    """Peak extra memory (MB) of one call of a case, in a fresh subprocess running
    ``script --child SPEC`` (a benchmark script whose ``--child`` calls :func:`child_main`)."""
    spec = json.dumps({"case": case, "args": args, "threads": threads})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # threads are set with torch.set_num_threads in the child; OMP_NUM_THREADS is left alone
    # (set, it makes OpenMP spin-wait, which is very slow on a loaded 2-core machine)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, script, "--child", spec], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_extra_mb"]


def time_ratio(case_fn: Callable[[], None], ref_fn: Callable[[], None], rounds: int
               ) -> tuple[float, float]:
    """(median case time in s, median of per-round ratios case / reference)."""
    case_fn()
    ref_fn()
    times, ratios = [], []
    for _ in range(rounds):
        r = _time(ref_fn)
        c = _time(case_fn)
        times.append(c)
        ratios.append(c / r)
    return statistics.median(times), statistics.median(ratios)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7, help="timing rounds per case")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(CASES, a.child)
        return
    torch.set_num_threads(a.threads)
    ctc = {"B": 16, "T": 500, "V": 500, "U": 100}
    if a.quick:
        ctc = {"B": 4, "T": 100, "V": 50, "U": 20}
    mmi_T = [50, 100, 150] if not a.quick else [10, 20]
    mmi_A = [5000, 10000, 20000] if not a.quick else [500, 1000]
    mmi = {"B": 16, "V": 300, "num_states": 2000}
    if a.quick:
        mmi = {"B": 2, "V": 30, "num_states": 100}
    S = mmi["num_states"]
    cases = [(f"CTC B={ctc['B']} T={ctc['T']} V={ctc['V']} U={ctc['U']}", "engine_ctc", ctc)]
    for T in mmi_T:
        cases.append((f"shared graph S={S} A={mmi_A[-1]} T={T}", "engine_mmi",
                      dict(mmi, T=T, num_arcs=mmi_A[-1])))
    for A in mmi_A[:-1]:
        cases.append((f"shared graph S={S} A={A} T={mmi_T[-1]}", "engine_mmi",
                      dict(mmi, T=mmi_T[-1], num_arcs=A)))
    cases.append((f"shared graph S={S} A={mmi_A[-1]} T={mmi_T[-1]}, label/state", "engine_mmi",
                  dict(mmi, T=mmi_T[-1], num_arcs=mmi_A[-1], label_per_state=True)))
    ref_fn = case_torch_ctc(**ctc)
    ref_t = statistics.median([_time(ref_fn) for _ in range(a.repeats + 1)][1:])
    print(f"torch {torch.__version__}, {a.threads} threads, {a.repeats} rounds; shared graphs: "
          f"B={mmi['B']} V={mmi['V']}, random scores, every state final")
    print(f"reference torch.nn.functional.ctc_loss fwd+bwd {ctc}: {ref_t * 1e3:.1f} ms, "
          f"peak +{peak_of('torch_ctc', ctc, a.threads):.0f} MB")
    print(f"{'case (forward + backward)':46s} {'time ms':>9s} {'ratio':>7s} {'peak MB':>8s}")
    for name, case, args in cases:
        t, ratio = time_ratio(CASES[case](**args), ref_fn, a.repeats)
        mb = peak_of(case, args, a.threads)
        print(f"{name:46s} {t * 1e3:9.1f} {ratio:7.2f} {mb:8.0f}", flush=True)


if __name__ == "__main__":
    main()
