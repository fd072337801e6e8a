"""A multi-task experiment after training: its model per task (``load_model(task=...)``), the
evaler and decoder jobs with ``--task``.

References: the trainer's own record of the dev loss (the dev set of task ``b`` only, computed
by the training run's multi-task criterion, not the evaler's construction), the checkpoint's
head weights applied by hand to the encoder's hidden output, and greedy CTC scored with
kaldialign.
"""
# ruff: noqa: F811 (fixtures imported from the test modules are the tests' arguments)

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import kaldialign
import pytest
import torch
from test_multitask import _mt_cfg, _mt_trainer, _two_tasks, data_b  # noqa: F401
from test_train import _env, _one_thread, data  # noqa: F401

from wfst_asr.train import load_checkpoint, token_table
from wfst_asr.train.inference import load_model, run_model


@pytest.fixture(scope="module")
def mt_exp(data, data_b, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("mt")
    cfg = _mt_cfg(data, exp, _two_tasks(data_b), "spec_augment=false", "dev_cuts=",
                  "model.dropout=0")
    _mt_trainer(cfg).fit()
    return exp


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli", *args], check=False,
                          env=_env(), capture_output=True, text=True, timeout=120)


def test_load_model_per_task(mt_exp, data, data_b):
    state = load_checkpoint(mt_exp / "averaged.pt")["model"]
    outs = {}
    for task, tokens, vocab in (("a", data["tokens"], 5), ("b", data_b["tokens"], 6)):
        model, cfg, _ = load_model(mt_exp, "cpu", task=task)
        assert cfg["tokens"] == tokens and cfg["num_classes"] == vocab and cfg["task"] == task
        b = run_model(model, data_b["dev_cuts"], cfg, "cpu", max_duration=100.0)[0]
        outs[task] = b.log_probs
        # by hand: the encoder's hidden output through the head's weights, log-softmax
        hidden: list[torch.Tensor] = []
        hook = model.encoder.output.register_forward_hook(
            lambda _m, inp, _o, keep=hidden: keep.append(inp[0]))
        run_model(model, data_b["dev_cuts"], cfg, "cpu", max_duration=100.0)
        hook.remove()
        w, bias = state[f"heads.{task}.weight"], state[f"heads.{task}.bias"]
        ref = torch.log_softmax(hidden[0] @ w.T + bias, dim=-1)
        n = int(b.lens[0])
        torch.testing.assert_close(b.log_probs[0, :n], ref[0, :n], rtol=1e-5, atol=1e-5)
    assert outs["a"].shape[-1] == 5 and outs["b"].shape[-1] == 6
    assert load_model(mt_exp, "cpu")[1]["task"] == "a"  # the first task by default
    with pytest.raises(ValueError, match="no task 'zz'.*a, b"):
        load_model(mt_exp, "cpu", task="zz")


def test_eval_and_decode_a_task(mt_exp, data, data_b):
    # the trainer's dev loss: task b's dev set (task a has none), epoch 2's weights
    hist = load_checkpoint(mt_exp / "epoch-2.pt")["history"]
    out = _cli("eval", "--exp-dir", str(mt_exp), "--cuts", data_b["dev_cuts"], "--task", "b")
    assert out.returncode == 0, out.stderr[-3000:]
    with open(mt_exp / "eval_cuts_bdev" / "results.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["checkpoint"] for r in rows] == ["epoch-2.pt"]
    assert float(rows[0]["loss"]) == pytest.approx(hist[-1]["dev_loss"], rel=1e-5)

    out = _cli("decode", "--exp-dir", str(mt_exp), "--task", "b", "--cuts", data_b["dev_cuts"],
               "--methods", "greedy", "--metric", "PER", "--out-dir", str(mt_exp / "dec_b"))
    assert out.returncode == 0, out.stderr[-3000:]
    text = (mt_exp / "dec_b" / "greedy" / "cuts_bdev.hyp").read_text().splitlines()
    model, cfg, _ = load_model(mt_exp, "cpu", task="b")
    phones = {i: p for p, i in token_table(data_b["tokens"]).items()}
    hyps, refs = {}, {}
    for b in run_model(model, data_b["dev_cuts"], cfg, "cpu", max_duration=100.0):
        for uid, lp, n, ref in zip(b.ids, b.log_probs, b.lens.tolist(), b.refs):
            best = lp[:n].argmax(-1).tolist()
            hyps[uid] = [phones[t] for i, t in enumerate(best)
                         if t and (i == 0 or t != best[i - 1])]
            refs[uid] = ref
    got = {line.split()[0]: line.split()[1:] for line in text}
    assert got == hyps
    errs = sum(kaldialign.edit_distance(refs[u], hyps[u])["total"] for u in refs)
    out = _cli("score", "--decode-dir", str(mt_exp / "dec_b"))
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"^greedy +cuts_bdev +PER +([0-9.]+)%",
                  (mt_exp / "dec_b" / "results.txt").read_text(), re.MULTILINE)
    assert m, (mt_exp / "dec_b" / "results.txt").read_text()
    assert float(m.group(1)) == pytest.approx(
        100 * errs / sum(len(r) for r in refs.values()), abs=0.01)
    out = _cli("decode", "--exp-dir", str(mt_exp), "--task", "zz", "--cuts", data_b["dev_cuts"],
               "--methods", "greedy")
    assert out.returncode == 2 and "no task 'zz'" in out.stderr
