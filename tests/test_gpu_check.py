"""tools/bench/gpu_check.sh and gpu_check.py (issue 18) run CPU-only: the "no GPU found" lines,
one table with every row, finite positive figures, the table file written."""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "bench" / "gpu_check.sh"
ROWS = ["yardstick: torch ctc_loss fwd+bwd", "engine CTC (CtcLoss) fwd+bwd",
        "decoding: 1-best (one_best, back-pointer beam search)",
        "decoding: lattices (get_lattice, intersect_dense_pruned)",
        "pruned RNN-T pipeline fwd+bwd (bench_transducer)", "training step timit.ctc_blstm"]
NUMBER = re.compile(r"[0-9][0-9,]*(?:\.[0-9]+)?")


def _gpu_check():
    sys.path.insert(0, str(ROOT / "tools" / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "tools" / "bench"))
    return gpu_check


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_cpu_run_writes_the_table(tmp_path):
    out = tmp_path / "table.md"
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    # --quick sizes, smaller decoding and 2 rounds: about 6 s on a 2-core VM; run from
    # elsewhere (the script goes to the repo root itself)
    done = subprocess.run(["bash", str(SCRIPT), "--quick", "--rounds", "2", "--decode",
                           "utts=4,batch=4,words=100,tokens=24", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "no GPU found: the cuda cases of the device-parametrised tests" in done.stdout
    assert "tests/test_ctc.py" in done.stdout  # the device tests it found
    text = out.read_text()
    assert text in done.stdout  # the same table on stdout
    assert text.startswith("device: CPU (no GPU found) | torch ")
    assert "no GPU found: figures below are CPU figures, not GPU ones" in text
    assert "| commit " in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split(" | ")[0][2:] for r in rows] == ROWS, text
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert "FAILED" not in r
        ms, ratio, rate = float(cells[2].replace(",", "")), float(cells[3]), cells[4]
        assert math.isfinite(ms) and ms > 0 and math.isfinite(ratio) and ratio > 0, r
        rates = [float(x.replace(",", "")) for x in NUMBER.findall(rate.split(",", 1)[0])]
        assert rates and all(math.isfinite(x) and x > 0 for x in rates), r
        assert cells[5] == "-"  # peak memory: CUDA only
    assert rows[0].split(" | ")[3] == "1.00"
    assert "/s," in rows[2] and "utt/s" in rows[2] and "4/4 utt right" in rows[2]
    assert "lattice arcs" in rows[3]
    assert "steps/s" in rows[5]


def test_sizes_parse():
    gc = _gpu_check()
    assert gc.parse_shape("B=2,T=3", ("B", "T")) == {"B": 2, "T": 3}
    for bad in ("B=2", "B=2,T=0", "B=2,T=x", "B=2,T=3,Q=1", "B2,T=3"):
        with pytest.raises(argparse.ArgumentTypeError, match="missing|bad size"):
            gc.parse_shape(bad, ("B", "T"))
    a = gc.parse_args(["--quick", "--ctc", "B=1,T=20,V=5,U=3"])
    assert a.ctc == {"B": 1, "T": 20, "V": 5, "U": 3} and a.rounds == gc.QUICK["rounds"]
    assert gc.parse_args([]).rounds >= 5 and gc.parse_args([]).ctc == {
        "B": 16, "T": 500, "V": 500, "U": 100}


def test_on_device_moves_the_inputs_of_a_bench_case():
    """The closures of bench_fsa / bench_transducer, built on the CPU, get their tensors moved
    (checked with the meta device: nothing runs)."""
    import torch

    gc = _gpu_check()
    run = gc.case_pipeline(B=1, T=4, U=2, V=5, s_range=2)
    assert gc.on_device(run, torch.device("cpu")) is run
    gc.on_device(run, torch.device("meta"))
    tensors = {c.cell_contents for c in run.__closure__
               if isinstance(c.cell_contents, torch.Tensor)}
    assert len(tensors) == 2  # am, lm
    assert all(t.device.type == "meta" and t.requires_grad and t.is_leaf for t in tensors)
