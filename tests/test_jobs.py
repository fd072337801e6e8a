"""Evaler and decoder jobs watching a trainer's experiment directory (wfst_asr.train.jobs,
``wfst-asr eval``, ``wfst-asr decode --watch``).

References computed here, not by the code under test: the CTC loss of each checkpoint's model
with ``torch.nn.functional.ctc_loss`` and a greedy CTC decoding scored with kaldialign's edit
distance. Data and tiny models: those of tests/test_train.py.
"""
# ruff: noqa: F811 (the fixture `data` imported from test_train is the tests' argument)

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import kaldialign
import pytest
import torch
from test_train import _cli_args, _env, _one_thread, data  # noqa: F401

from wfst_asr.train import save_checkpoint, token_table
from wfst_asr.train.checkpoint import marker_path
from wfst_asr.train.inference import load_model, run_model
from wfst_asr.train.jobs import ResultsTable, process_checkpoints, run_eval_job
from wfst_asr.train.trainer import TRAINING_DONE


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli", *args], check=False,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _train(data, exp: Path, *sets: str) -> None:
    out = _cli(*_cli_args(data, exp, "--set", "num_epochs=2", "--set", "model.dropout=0",
                          *sets))
    assert out.returncode == 0, out.stderr[-3000:]


def _ctc_loss_per_frame(exp: Path, ckpt: Path, cuts: str, table: dict[str, int]) -> float:
    """The reference: F.ctc_loss (sum) over the set / output frames, the model loaded here."""
    model, cfg, _ = load_model(exp, "cpu", ckpt)
    tot = frames = 0.0
    for b in run_model(model, cuts, cfg, "cpu", max_duration=100.0):
        targets = [torch.tensor([table[p] for p in r]) for r in b.refs]
        tot += float(torch.nn.functional.ctc_loss(
            b.log_probs.transpose(0, 1), torch.cat(targets), b.lens,
            torch.tensor([len(t) for t in targets]), reduction="sum", zero_infinity=False))
        frames += float(b.lens.sum())
    return tot / frames


def test_eval_once_and_watch_match_the_ctc_loss(data, tmp_path):
    exp = tmp_path / "exp"
    _train(data, exp, "--set", "save_every_n=4", "--set", "keep_last_n=0")
    table = token_table(data["tokens"])
    once = _cli("eval", "--exp-dir", str(exp), "--cuts", data["dev_cuts"])
    assert once.returncode == 0, once.stderr[-3000:]
    rows = _rows(exp / "eval_cuts_dev" / "results.tsv")
    assert [r["checkpoint"] for r in rows] == ["epoch-2.pt"]  # the newest only
    ref = _ctc_loss_per_frame(exp, exp / "epoch-2.pt", data["dev_cuts"], table)
    assert float(rows[0]["loss"]) == pytest.approx(ref, rel=1e-5)
    # every checkpoint (training is over: training-done is there, the job ends by itself);
    # the row of epoch-2.pt is kept, not recomputed
    watch = _cli("eval", "--exp-dir", str(exp), "--cuts", data["dev_cuts"], "--watch",
                 "--poll", "0.1")
    assert watch.returncode == 0, watch.stderr[-3000:]
    rows = _rows(exp / "eval_cuts_dev" / "results.tsv")
    names = {p.name for p in [*exp.glob("epoch-*.pt"), *exp.glob("step-*.pt")]}
    assert {r["checkpoint"] for r in rows} == names and len(rows) == len(names) >= 5
    assert [int(r["step"]) for r in rows] == sorted(int(r["step"]) for r in rows)
    for r in rows[:2] + rows[-2:]:
        ref = _ctc_loss_per_frame(exp, exp / r["checkpoint"], data["dev_cuts"], table)
        assert float(r["loss"]) == pytest.approx(ref, rel=1e-5), r
    hist = json.loads((exp / TRAINING_DONE).read_text())
    assert max(int(r["step"]) for r in rows) == hist["global_step"]
    assert any((exp / "eval_cuts_dev" / "tensorboard").iterdir())


def test_eval_watch_follows_a_running_trainer(data, tmp_path):
    """The evaler started with the trainer: it evaluates checkpoints as they come and stops
    when the trainer is done."""
    exp = tmp_path / "exp"
    trainer = subprocess.Popen([sys.executable, "-m", "wfst_asr.bin.cli",
                                *_cli_args(data, exp, "--set", "num_epochs=3", "--set",
                                           "save_every_n=5", "--set", "keep_last_n=0")],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        watch = _cli("eval", "--exp-dir", str(exp), "--cuts", data["dev_cuts"], "--watch",
                     "--poll", "0.2", "--max-wait", "90", timeout=180)
    finally:
        _, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 0, err[-3000:]
    assert watch.returncode == 0, watch.stderr[-3000:]
    assert "training done" in watch.stderr
    rows = _rows(exp / "eval_cuts_dev" / "results.tsv")
    assert {"epoch-1.pt", "epoch-2.pt", "epoch-3.pt"} <= {r["checkpoint"] for r in rows}


def test_partial_and_corrupt_checkpoints_are_skipped_and_retried(tmp_path, caplog):
    exp = tmp_path / "exp"
    exp.mkdir()
    state = {"model": {"w": torch.ones(2)}, "epoch": 1, "global_step": 5}
    save_checkpoint(exp / "epoch-1.pt", state, marker=True)
    save_checkpoint(exp / "epoch-2.pt", state | {"epoch": 2, "global_step": 10}, marker=True)
    marker_path(exp / "epoch-2.pt").unlink()  # being copied: no marker yet
    save_checkpoint(exp / "epoch-3.pt", state | {"epoch": 3, "global_step": 15}, marker=True)
    # corrupt, with a marker that matches it (e.g. a bad disk block before the marker)
    bad = exp / "epoch-3.pt"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    import hashlib
    info = json.loads(marker_path(bad).read_text())
    info |= {"bytes": bad.stat().st_size, "sha256": hashlib.sha256(bad.read_bytes()).hexdigest()}
    marker_path(bad).write_text(json.dumps(info))
    polls = []

    def sleep(_s: float) -> None:
        polls.append(1)
        if len(polls) == 2:  # the copy finishes; the trainer ends
            save_checkpoint(exp / "epoch-2.pt", state | {"epoch": 2, "global_step": 10}, marker=True)
            (exp / TRAINING_DONE).write_text(json.dumps({"epoch": 3, "global_step": 15}))
        assert len(polls) < 10, "the watcher does not stop"

    from wfst_asr.train.checkpoint import load_checkpoint
    seen = []

    def fn(c):
        load_checkpoint(c.path)
        seen.append(c.path.name)
        return [{"loss": 1.0}]

    table = ResultsTable(tmp_path / "out" / "results.tsv", ["loss"])
    with caplog.at_level(logging.WARNING):
        n = process_checkpoints(exp, table, fn, watch=True, poll=0.0, max_wait=None,
                                retries=2, sleep=sleep)
    assert seen == ["epoch-1.pt", "epoch-2.pt"] and n == 2
    text = caplog.text
    assert "epoch-2.pt: not complete" in text and "retried at the next poll" in text
    assert "epoch-3.pt: skipped (cannot load checkpoint" in text and "given up" in text
    assert [r["checkpoint"] for r in _rows(table.path)] == ["epoch-1.pt", "epoch-2.pt"]


def test_watch_without_trainer_stops_after_max_wait(tmp_path, data):
    exp = tmp_path / "exp"
    _train(data, exp)
    (exp / TRAINING_DONE).unlink()  # as if the trainer had died
    shutil.rmtree(exp / "eval_cuts_dev", ignore_errors=True)
    run_eval_job(exp, data["dev_cuts"], watch=True, poll=0.05, max_wait=0.3,
                 tensorboard=False)
    rows = _rows(exp / "eval_cuts_dev" / "results.tsv")
    assert {r["checkpoint"] for r in rows} == {"epoch-1.pt", "epoch-2.pt"}


def _greedy(lp: torch.Tensor, n: int) -> list[int]:
    best = lp[:n].argmax(-1).tolist()
    return [t for i, t in enumerate(best) if t and (i == 0 or t != best[i - 1])]


def test_decode_watch_scores_every_checkpoint(data, tmp_path):
    exp = tmp_path / "exp"
    _train(data, exp)
    out = _cli("decode", "--exp-dir", str(exp), "--cuts", data["dev_cuts"], "--methods",
               "greedy", "--metric", "PER", "--watch", "--poll", "0.1")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(exp / "decode_watch" / "results.tsv")
    assert [(r["checkpoint"], r["method"], r["set"]) for r in rows] == [
        ("epoch-1.pt", "greedy", "cuts_dev"), ("epoch-2.pt", "greedy", "cuts_dev")]
    phones = {i: p for p, i in token_table(data["tokens"]).items()}
    for r in rows:  # the reference: greedy CTC here, edit distance by kaldialign
        model, cfg, _ = load_model(exp, "cpu", exp / r["checkpoint"])
        errs = words = 0
        for b in run_model(model, data["dev_cuts"], cfg, "cpu", max_duration=100.0):
            for lp, n, ref in zip(b.log_probs, b.lens.tolist(), b.refs):
                hyp = [phones[t] for t in _greedy(lp, n)]
                errs += kaldialign.edit_distance(ref, hyp)["total"]
                words += len(ref)
        assert float(r["rate"]) == pytest.approx(100.0 * errs / words, abs=0.01), r
        assert (exp / "decode_watch" / Path(r["checkpoint"]).stem / "settings.json").is_file()


def test_jobs_bad_input_is_one_line(data, tmp_path):
    out = _cli("eval", "--exp-dir", str(tmp_path / "nothing"), "--cuts", data["dev_cuts"])
    assert out.returncode == 2 and "config.json: no such file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    exp = tmp_path / "exp"
    _train(data, exp)
    out = _cli("eval", "--exp-dir", str(exp), "--cuts", str(tmp_path / "missing.jsonl.gz"))
    assert out.returncode == 2 and "missing.jsonl.gz: no such cuts file" in out.stderr
    out = _cli("decode", "--exp-dir", str(exp), "--cuts", data["dev_cuts"], "--watch",
               "--checkpoint", str(exp / "epoch-1.pt"))
    assert out.returncode == 2 and "no --checkpoint with it" in out.stderr


def test_checkpoint_removed_before_processing_is_passed_over(tmp_path, caplog):
    """keep_last_n removes old step checkpoints: one gone before the job reads it is passed
    over without retries or warnings; the others are processed."""
    exp = tmp_path / "exp"
    exp.mkdir()
    for g in (2, 4):
        save_checkpoint(exp / f"step-{g}.pt", {"model": {}, "epoch": 1, "global_step": g,
                                               "mid_epoch": True}, marker=True)
    (exp / TRAINING_DONE).write_text(json.dumps({"epoch": 1, "global_step": 4}))
    from wfst_asr.train.checkpoint import load_checkpoint, remove_checkpoint

    def fn(c):
        if c.step == 2:
            remove_checkpoint(c.path)  # as the trainer's keep_last_n, just before the read
        load_checkpoint(c.path)
        return [{"loss": 0.5}]

    table = ResultsTable(tmp_path / "results.tsv", ["loss"])
    with caplog.at_level(logging.WARNING):
        n = process_checkpoints(exp, table, fn, watch=True, poll=0.0, max_wait=None,
                                sleep=lambda _s: None)
    assert n == 1 and [r["checkpoint"] for r in _rows(table.path)] == ["step-4.pt"]
    assert "WARNING" not in caplog.text
