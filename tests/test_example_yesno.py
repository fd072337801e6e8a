"""examples/ctc_yesno.py: fbank framing, the missing-data message, and a short run on yesno."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, shared_data_dir

SCRIPT = REPO_ROOT / "examples" / "ctc_yesno.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("ctc_yesno", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("num_samples", [199, 200, 279, 280, 8000, 12345])
def test_fbank_shape_of_sine(num_samples: int) -> None:
    ex = _load_example()
    t = np.arange(num_samples) / 8000.0
    samples = (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    feats = ex.compute_fbank(samples, 8000)
    # 25 ms window (200 samples), 10 ms shift (80 samples), snip_edges=True
    expected = 1 + (num_samples - 200) // 80 if num_samples >= 200 else 0
    assert feats.shape == (expected, 23)
    assert np.isfinite(feats).all()


def test_missing_data_dir_is_explained(tmp_path) -> None:
    proc = _run("--data-dir", str(tmp_path / "nowhere"), "--exp-dir", str(tmp_path / "exp"),
                timeout=120)
    assert proc.returncode != 0
    assert "waves_yesno.tar.gz" in proc.stderr and "OpenSLR" in proc.stderr
    assert not (tmp_path / "exp").exists()


def test_short_run_writes_two_wers(tmp_path) -> None:
    data_dir = shared_data_dir() / "yesno" / "waves_yesno"
    if not data_dir.is_dir():
        reason = f"yesno corpus not found: {data_dir} does not exist"
        print(reason)
        pytest.skip(reason)
    exp_dir = tmp_path / "exp"
    proc = _run("--data-dir", str(data_dir), "--exp-dir", str(exp_dir), "--epochs", "2",
                timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = (exp_dir / "results.txt").read_text().splitlines()
    assert len(lines) == 2
    assert [ln.split()[0] for ln in lines] == ["greedy_ctc", "ctc_topo_1best"]
    for line in lines:
        m = re.search(r"%WER (\S+) \[ (\d+) / (\d+),", line)
        assert m, line
        wer, errors, words = float(m.group(1)), int(m.group(2)), int(m.group(3))
        assert math.isfinite(wer) and wer >= 0.0
        assert words == 29 * 8
        assert abs(wer - 100.0 * errors / words) < 0.01
        assert line in proc.stdout
    assert not [p for p in exp_dir.iterdir() if p.name != "results.txt"]  # no temp files left
