"""Fault tests (issue 12): ``kill -9`` at a random point of a long stage, then a rerun.

After the kill, every output with its final name is complete (a checkpoint loads, a manifest's
features load, a lattice directory either reads whole or is refused as unfinished); the rerun
redoes what was not finished and succeeds. Stages: training (``wfst-asr train``), feature
extraction (``wfst-asr compute-features``) and lattice writing
(:func:`wfst_asr.decode.pipeline.write_lattice_dir`, which ``wfst-asr make-lattices``
uses). Tiny synthetic data; the random kill points are seeded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import _cli_args, data  # noqa: F401 (data: the training cuts)
from wfst_asr.bin.cli import main
from wfst_asr.decode.lattice_io import LatticeError, LatticeReader
from wfst_asr.train import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "wfst_asr.bin.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _kill_when(proc: subprocess.Popen, ready, delay: float, what: str, limit: float = 60.0
               ) -> bool:
    """Wait until ``ready()`` (or the process ends), sleep ``delay`` s, ``kill -9`` it; whether
    it was killed (False: it had finished)."""
    deadline = time.time() + limit
    while not ready() and proc.poll() is None:
        assert time.time() < deadline, f"{what} never got going"
        time.sleep(0.02)
    time.sleep(delay)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_training_then_resume(data, tmp_path, seed):  # noqa: F811
    """The killed run is a process of its own; the rerun (``--resume``) runs in this one."""
    exp = tmp_path / "exp"
    args = _cli_args(data, exp, "--set", "num_epochs=6")
    proc = subprocess.Popen(CLI + args, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lock = exp / ".lock"
    delay = random.Random(seed).uniform(0.0, 1.5)
    assert _kill_when(proc, lambda: lock.is_file() and lock.stat().st_size > 0, delay,
                      "training"), "the run finished before it could be killed"
    # whatever has its final name is complete
    for p in exp.glob("*.pt"):
        load_checkpoint(p)
    if (exp / "config.json").exists():
        json.loads((exp / "config.json").read_text())
    assert main(args + ["--resume"]) == 0
    for n in range(1, 7):
        state = load_checkpoint(exp / f"epoch-{n}.pt")
        assert state["epoch"] == n
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4, 5, 6]
    assert [a["epoch"] for a in load_checkpoint(exp / "averaged.pt")["averaged_from"]] == [5, 6]
    assert not list(exp.glob(".tmp-*"))  # the killed run's temporary files are gone


# ---------------------------------------------------------------------- features
def _audio_cuts(folder: Path, name: str, n: int, seed: int) -> Path:
    import soundfile as sf
    from lhotse import CutSet, Recording, RecordingSet

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        wav = folder / f"{name}{i}.wav"
        sf.write(wav, (rng.standard_normal(16000 * 2) * 0.1).astype(np.float32), 16000,
                 subtype="PCM_16")
        recs.append(Recording.from_file(wav, recording_id=f"{name}{i}"))
    path = folder / f"cuts_{name}.jsonl.gz"
    CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs)).to_file(path)
    return path


def _check_feature_manifests(out: Path, names: list[str], must_exist: bool) -> None:
    from lhotse import CutSet

    for name in names:
        path = out / name
        if not path.exists():
            assert not must_exist, path
            continue
        cuts = CutSet.from_file(path)
        assert len(cuts) == N_CUTS
        for cut in cuts:
            assert cut.load_features().shape[0] == cut.num_frames


N_CUTS = 30  # of 2 s each: about 0.3 s of extraction per manifest


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_feature_extraction_then_rerun(tmp_path, seed):
    src = tmp_path / "audio"
    src.mkdir()
    manifests = [_audio_cuts(src, name, N_CUTS, k) for k, name in enumerate(("a", "b", "c"))]
    out = tmp_path / "fbank"
    args = ["compute-features", *(x for m in manifests for x in ("--cuts", str(m))),
            "--out-dir", str(out), "--num-mel-bins", "40"]
    names = [m.name for m in manifests]
    # a complete first run, then a rerun killed part-way (its own process): the first run's
    # outputs are either still whole or removed, never mixed with the half-written rerun
    assert main(args) == 0
    _check_feature_manifests(out, names, must_exist=True)
    proc = subprocess.Popen(CLI + args, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("[cuts_a")  # extraction has started
    delay = random.Random(seed).uniform(0.0, 0.4)
    killed = _kill_when(proc, lambda: True, delay, "feature extraction")
    _check_feature_manifests(out, names, must_exist=not killed)
    assert main(args) == 0
    _check_feature_manifests(out, names, must_exist=True)
    assert (out / "cmvn.pt").is_file()
    assert not list(out.glob(".tmp-feats-*"))


# ---------------------------------------------------------------------- lattices
_WRITER = """
import sys, time, torch
from tests.test_lattice import make_case
from wfst_asr.decode.pipeline import write_lattice_dir
from wfst_asr.fsa import SymbolTable

def write(out, delay):
    c = make_case(3, T=5, lens=[5, 4])
    words = SymbolTable.from_str("<eps> 0\\na 1\\nb 2\\nc 3\\n")

    def batches():
        print("start", flush=True)
        for i in range(30):
            time.sleep(delay)
            yield [f"u{i:02d}a", f"u{i:02d}b"], c["lp"], torch.tensor(c["lens"])

    write_lattice_dir(c["graph"], batches(), out, words=words, overwrite=True,
                      search_beam=20.0, output_beam=8.0)

if __name__ == "__main__":
    write(sys.argv[1], float(sys.argv[2]))
"""


def _whole_or_refused(d: Path) -> bool:
    """True when ``d`` reads whole (60 usable lattices), False when refused as unfinished;
    anything else fails."""
    try:
        r = LatticeReader(d)
    except ValueError as e:
        assert "writer did not finish" in str(e), e
        return False
    got = dict(r)
    assert len(got) == 60 and not any(isinstance(v, LatticeError) for v in got.values()), got
    return True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_lattice_writing_then_rerun(tmp_path, seed):
    """The first run and the rerun in this process, the killed one in its own."""
    script = tmp_path / "write_lattices.py"
    script.write_text(_WRITER)
    write: dict = {}
    exec(compile(_WRITER, str(script), "exec"), write)  # noqa: S102 -- the test's own code
    d = tmp_path / "lats"
    write["write"](d, 0.0)
    assert _whole_or_refused(d)
    # rewrite it in place, killed at a random point
    proc = subprocess.Popen([sys.executable, str(script), str(d), "0.02"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
    killed = _kill_when(proc, lambda: True, random.Random(seed).uniform(0.0, 0.8),
                        "lattice writing")
    whole = _whole_or_refused(d)
    assert whole or killed
    write["write"](d, 0.0)
    assert _whole_or_refused(d)
    assert not list(d.glob(".tmp-*"))  # the killed writer's staging folder is gone


@pytest.mark.parametrize("fail_at", range(4))  # lat.00000.pt, lat.00001.pt, meta, index
def test_failure_while_swapping_lattices_in_leaves_no_mixed_directory(tmp_path, monkeypatch,
                                                                      fail_at):
    """A crash between the renames that move the new lattice files in: the directory is
    refused as unfinished (its old index is removed first), never a mix of old and new."""
    from tests.test_lattice import make_case
    from wfst_asr.decode.lattice_io import LatticeWriter

    lat = make_case(3, T=5, lens=[5, 4])["lat"]
    d = tmp_path / "lats"
    with LatticeWriter(d) as w:
        for i in range(3):
            w.write([f"old{i}a", f"old{i}b"], lat)
    real, moved = os.replace, []

    def replace(src, dst):
        if Path(dst).parent == d:
            if len(moved) == fail_at:
                raise OSError(5, "Input/output error", str(dst))
            moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"), LatticeWriter(d, overwrite=True) as w:
        for i in range(2):
            w.write([f"new{i}a", f"new{i}b"], lat)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="writer did not finish"):
        LatticeReader(d)
    assert not list(d.glob(".tmp-*"))
