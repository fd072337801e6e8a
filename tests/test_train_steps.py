"""The trainer between epochs: mid-epoch checkpoints and their resume (in process and after a
SIGKILL), completion markers, gradient accumulation and autocast.

Data and tiny models: those of tests/test_train.py (a synthetic 4-phone task, a 16-cell BLSTM).
The references are independent of the code under test: an uninterrupted run of the same seed
(resume), a hand-written SGD step on the mean of two batches' gradients (accumulation), the
float32 network (autocast).
"""
# ruff: noqa: F811 (the fixture `data` imported from test_train is the tests' argument)

from __future__ import annotations

import copy
import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import devices
from test_train import _cfg, _cli_args, _env, _one_thread, _trainer, data  # noqa: F401

from wfst_asr.bin.train_cmd import build
from wfst_asr.losses import CtcLoss
from wfst_asr.train import Trainer, load_checkpoint, save_checkpoint, seed_everything
from wfst_asr.train.checkpoint import (
    checkpoint_complete,
    find_step_checkpoints,
    latest_checkpoint,
    marker_path,
)
from wfst_asr.train.trainer import TRAINING_DONE, batch_targets


def _params(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


# --------------------------------------------------------------------------- resume


def test_resume_from_any_mid_epoch_checkpoint_equals_uninterrupted(data, tmp_path):
    """A run writing ``step-G.pt`` after every 2 batches (dropout and SpecAugment on: the RNG
    state matters) ends with the same parameters, losses and checkpoints whichever step-G.pt
    (or epoch end) a second run resumes from: what a kill right after that checkpoint leaves."""
    sets = ("save_every_n=2", "keep_last_n=0", "spec_augment=true", "num_epochs=2")
    full = _trainer(_cfg(data, tmp_path / "full", "test.tiny_blstm", *sets))
    h_full = full.fit()
    ref = _params(full)
    steps = find_step_checkpoints(tmp_path / "full")
    assert len(steps) >= 4, [p.name for p in steps]
    rng = random.Random(7)
    picks = sorted(set(rng.sample(steps, 2) + [steps[0], steps[-1]]))
    for i, step in enumerate(picks):
        exp = tmp_path / f"part{i}"
        exp.mkdir()
        shutil.copy(step, exp / step.name)
        state = load_checkpoint(step)
        if state["epoch"] > 1:  # an epoch-1 checkpoint as well: best.pt/averaging need it
            shutil.copy(tmp_path / "full" / "epoch-1.pt", exp / "epoch-1.pt")
        second = _trainer(_cfg(data, exp, "test.tiny_blstm", *sets))
        h_part = second.fit(resume=True)
        _assert_same(ref, _params(second))
        assert [h["train_loss"] for h in h_part] == [h["train_loss"] for h in h_full], step
        assert [h["dev_loss"] for h in h_part] == [h["dev_loss"] for h in h_full], step
        _assert_same(load_checkpoint(tmp_path / "full" / "averaged.pt")["model"],
                     load_checkpoint(exp / "averaged.pt")["model"])


def test_latest_checkpoint_orders_epoch_and_step_checkpoints(tmp_path):
    def put(name: str, epoch: int, step_in_epoch: int, mid: bool) -> None:
        save_checkpoint(tmp_path / name, {"model": {}, "epoch": epoch, "mid_epoch": mid,
                                          "step_in_epoch": step_in_epoch})

    put("epoch-1.pt", 1, 9, False)
    put("step-5.pt", 1, 5, True)  # mid-epoch 1: before epoch-1.pt
    assert latest_checkpoint(tmp_path)[0].name == "epoch-1.pt"
    put("step-12.pt", 2, 3, True)  # 3 batches into epoch 2
    assert latest_checkpoint(tmp_path)[0].name == "step-12.pt"
    assert latest_checkpoint(tmp_path, mid_epoch=False)[0].name == "epoch-1.pt"
    (tmp_path / "step-12.pt").write_bytes(b"garbage")  # unreadable: skipped
    assert latest_checkpoint(tmp_path)[0].name == "epoch-1.pt"
    put("step-14.pt", 2, 5, True)
    put("epoch-2.pt", 2, 9, False)
    assert latest_checkpoint(tmp_path)[0].name == "epoch-2.pt"


def test_keep_last_n_and_markers(data, tmp_path):
    exp = tmp_path / "exp"
    trainer = _trainer(_cfg(data, exp, "test.tiny_blstm", "save_every_n=1", "keep_last_n=2",
                            "num_epochs=1"))
    trainer.fit()
    steps = find_step_checkpoints(exp)
    assert [p.name for p in steps] == [f"step-{g}.pt" for g in
                                       (trainer.global_step - 1, trainer.global_step)]
    for path in [*steps, exp / "epoch-1.pt", exp / "best.pt", exp / "averaged.pt"]:
        info = checkpoint_complete(path)
        assert info is not None and info["file"] == path.name, path
    # no marker left of a removed checkpoint
    assert sorted(exp.glob("step-*.pt.done")) == sorted(marker_path(p) for p in steps)
    done = json.loads((exp / TRAINING_DONE).read_text())
    assert done == {"epoch": 1, "global_step": trainer.global_step, "time": done["time"]}
    # a marker no longer matching its file (truncated, rewritten): not complete
    path = exp / "epoch-1.pt"
    path.write_bytes(path.read_bytes()[:-10])
    assert checkpoint_complete(path) is None
    marker_path(steps[0]).unlink()
    assert checkpoint_complete(steps[0]) is None


def test_sigkill_at_a_random_step_loses_at_most_n_batches(data, tmp_path):
    """The CLI, killed (SIGKILL) at a random point after its first mid-epoch checkpoint and
    resumed with --resume, ends with the parameters of an uninterrupted run."""
    sets = ["--set", "num_epochs=3", "--set", "save_every_n=3", "--set", "spec_augment=true",
            "--set", "keep_last_n=0"]
    full = subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli",
                           *_cli_args(data, tmp_path / "full", *sets)],
                          check=False, env=_env(), capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr[-3000:]
    exp = tmp_path / "exp"
    proc = subprocess.Popen([sys.executable, "-m", "wfst_asr.bin.cli",
                             *_cli_args(data, exp, *sets)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        k = random.Random().randint(1, 6)  # killed after the k-th mid-epoch checkpoint ...
        while len(find_step_checkpoints(exp)) < k and proc.poll() is None:
            assert time.time() < deadline, "no mid-epoch checkpoint"
            time.sleep(0.005)
        time.sleep(random.Random().uniform(0.0, 0.05))  # ... and a little later
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    if proc.returncode != -signal.SIGKILL or (exp / TRAINING_DONE).exists():
        pytest.skip("the run finished before it could be killed (a very fast machine)")
    out = subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli",
                          *_cli_args(data, exp, *sets, "--resume")],
                         check=False, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stderr, out.stderr[-2000:]
    a = load_checkpoint(tmp_path / "full" / "epoch-3.pt")
    b = load_checkpoint(exp / "epoch-3.pt")
    _assert_same(a["model"], b["model"])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert (exp / TRAINING_DONE).exists()


# --------------------------------------------------------------------------- accumulation


def test_accum_grad_is_one_step_on_the_mean_gradient(data, tmp_path):
    """accum_grad=2: two batches, one SGD step whose gradient is the mean of the two batches'
    per-frame-loss gradients, computed here by hand on a copy of the model."""
    cfg = _cfg(data, tmp_path / "exp", "test.tiny_blstm", "accum_grad=2", "optimizer=sgd",
               "momentum=0", "grad_clip=0", "model.dropout=0", "spec_augment=false", "lr=0.1")
    trainer = _trainer(cfg)
    ref = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    batches = []
    for batch in trainer.train_dl:
        batches.append(batch)
        if len(batches) == 2:
            break
    twin = copy.deepcopy(trainer.raw_model)  # a second network with the same weights
    twin.load_state_dict(ref)
    twin.train()
    grads = {n: torch.zeros_like(p) for n, p in twin.named_parameters()}
    ctc = CtcLoss(reduction="sum")
    for batch in batches:
        twin.zero_grad()
        lp, lens = twin(batch["features"], batch["feature_lens"])
        targets = batch_targets(batch, cfg.token_field, _table(data))
        loss, info = ctc(lp, lens, targets)
        (loss / info["frames"]).backward()
        for n, p in twin.named_parameters():
            grads[n] += p.grad / 2
    trainer.model.train()
    assert trainer.train_step(batches[0]) is not None
    assert trainer.global_step == 0 and trainer._pending == 1  # no step yet
    _assert_same(ref, _params(trainer))
    trainer.train_step(batches[1])
    assert trainer.global_step == 1 and trainer._pending == 0
    for n, p in trainer.raw_model.named_parameters():
        torch.testing.assert_close(p.detach(), ref[n] - 0.1 * grads[n], rtol=1e-5, atol=1e-6)


def _table(data) -> dict[str, int]:
    from wfst_asr.train import token_table
    return token_table(data["tokens"])


# --------------------------------------------------------------------------- autocast


def _amp_supported(device: str, dtype: torch.dtype) -> bool:
    try:
        with torch.autocast(device, dtype=dtype):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("device", devices)
def test_autocast_keeps_the_loss_in_float32_within_tolerance(data, tmp_path, amp, device):
    """The network under autocast, the CTC loss (the engine's total) on its float32 output:
    within 2 % (bf16) / 0.5 % (fp16) of the float32 network's; a step trains."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if amp == "fp16" and device == "cpu":
        with pytest.raises(ValueError, match="fp16 needs CUDA"):
            _trainer(_cfg(data, tmp_path / "exp", "test.tiny_blstm", "amp=fp16"))
        return
    if not _amp_supported(device, dtype):
        pytest.skip(f"no {amp} autocast on {device}")
    cfg = _cfg(data, tmp_path / "exp", "test.tiny_blstm", f"amp={amp}", "model.dropout=0",
               "spec_augment=false")
    seed_everything(cfg.seed)
    model, loss, train_dl, dev_dl, table = build(cfg)
    trainer = Trainer(cfg, model, loss, train_dl, dev_dl, device, token_table=table)
    batch = next(iter(trainer.train_dl))
    feats, lens = batch["features"].to(device), batch["feature_lens"].to(device)
    targets = trainer.targets(batch)
    trainer.raw_model.eval()
    with torch.no_grad():
        lp32, l32 = trainer.raw_model(feats, lens)
        lp16, l16 = trainer.forward(feats, lens, trainer.raw_model)
    assert lp16.dtype == torch.float32 and torch.equal(l32, l16)
    ref, _ = trainer.loss_fn(lp32, l32, targets)
    got, _ = trainer.loss_fn(lp16, l16, targets)
    assert got.dtype in (torch.float32, torch.float64)
    tol = 0.02 if amp == "bf16" else 0.005
    assert abs(float(got) - float(ref)) <= tol * abs(float(ref)), (float(got), float(ref))
    trainer.raw_model.train()
    assert trainer.train_step(batch) is not None
    assert trainer.global_step == 1 or trainer.skipped_steps == 1  # fp16: a first overflow


def test_bad_accum_and_amp_settings_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match="accum_grad"):
        _trainer(_cfg(data, tmp_path / "a", "test.tiny_blstm", "accum_grad=0"))
    with pytest.raises(ValueError, match="unknown amp"):
        _trainer(_cfg(data, tmp_path / "b", "test.tiny_blstm", "amp=fp8"))
