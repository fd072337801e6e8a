"""Data-parallel runs (torchrun, 2 processes, gloo) killed and resumed, and a multi-task
configuration under DDP.

References: the uninterrupted 2-process run of the same command (parameters bit for bit: every
rank's RNG state is in the checkpoints), and the same multi-task training in one process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import timit_conf
from test_multinode import _torchrun, slow
from test_train import _cli_args, _env, _write_cuts, data  # noqa: F401

from wfst_asr.train import load_checkpoint
from wfst_asr.train.checkpoint import find_step_checkpoints
from wfst_asr.train.trainer import TRAINING_DONE

# ruff: noqa: F811 (the fixture `data` imported from test_train is the tests' argument)


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, env={**_env(), "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=timeout)


@slow
def test_ddp_killed_at_a_random_step_resumes_bit_for_bit(data, tmp_path):
    """2 processes, dropout and SpecAugment on: killed (SIGKILL, the whole process group) after
    a random mid-epoch checkpoint, resumed: the parameters equal the uninterrupted run's."""
    torchrun = _torchrun()
    sets = ["--set", "num_epochs=2", "--set", "save_every_n=2", "--set", "keep_last_n=0",
            "--set", "spec_augment=true", "--set", "model.dropout=0.2"]

    def cmd(exp, *extra):
        return [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "wfst_asr.bin.cli",
                *_cli_args(data, exp, *sets, *extra)]

    full = _run(cmd(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    exp = tmp_path / "exp"
    proc = subprocess.Popen(cmd(exp), env={**_env(), "CUDA_VISIBLE_DEVICES": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        k = random.Random().randint(1, 3)
        deadline = time.time() + 90
        while len(find_step_checkpoints(exp)) < k and proc.poll() is None:
            assert time.time() < deadline, "no mid-epoch checkpoint"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    if (exp / TRAINING_DONE).exists():
        pytest.skip("the run finished before it could be killed")
    out = _run(cmd(exp, "--resume"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr
    a = load_checkpoint(tmp_path / "full" / "epoch-2.pt")
    b = load_checkpoint(exp / "epoch-2.pt")
    assert len(b["rng_ranks"]) == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


@slow
def test_multitask_under_ddp(data, tmp_path):
    """Two CTC tasks on two token sets, 2 processes: both heads train, every rank follows the
    same task schedule (no hang), and the losses are those of one process with the doubled
    batch to within the tolerance of the 2-process test of tests/test_train.py."""
    torchrun = _torchrun()
    tokens_b = tmp_path / "tokens_b.txt"
    tokens_b.write_text("<blk> 0\nd 1\nc 2\nb 3\na 4\nx 5\n")
    conf = tmp_path / "mt.yaml"
    conf.write_text(yaml.safe_dump({
        "base": timit_conf("ctc_blstm"),
        "tasks": [{"name": "a", "weight": 1.0},
                  {"name": "b", "weight": 1.0, "tokens": str(tokens_b), "dev_cuts": "",
                   "train_cuts": str(_write_cuts(tmp_path, "btrain", 16, 5))}]}))

    def args(exp, *extra):
        out = _cli_args(data, exp, "--set", "num_epochs=2", "--set", "model.dropout=0", *extra)
        out[out.index("--config") + 1] = str(conf)
        return out

    one = _run([sys.executable, "-m", "wfst_asr.bin.cli",
                *args(tmp_path / "one", "--set", "max_duration=1.6")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "wfst_asr.bin.cli",
                *args(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    h1 = load_checkpoint(tmp_path / "one" / "epoch-2.pt")
    h2 = load_checkpoint(tmp_path / "two" / "epoch-2.pt")
    first = load_checkpoint(tmp_path / "two" / "epoch-1.pt")["model"]
    for head in ("heads.a.weight", "heads.b.weight"):
        assert not torch.equal(first[head], h2["model"][head]), head  # both heads trained
    for a, b in zip(h1["history"], h2["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.15 * a["train_loss"], (a, b)
