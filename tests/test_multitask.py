"""Multi-task training and distillation (wfst_asr.train.multitask).

Data and tiny models: those of tests/test_train.py (a synthetic 4-phone task, a 16-cell
BLSTM), plus a second corpus with another token set (the phones in another order and an
extra symbol: 6 outputs). The references are independent of the code under test: the
gradients each part receives, a chi-square bound on the task counts, the other rank's
schedule, an uninterrupted run (resume), ``torch.nn.functional.kl_div`` (the KL loss) and the
teacher's own outputs (distillation).
"""
# ruff: noqa: F811 (the fixture `data` imported from test_train is the tests' argument)

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train import (  # noqa: F401
    REPO,
    _cfg,
    _cli_args,
    _env,
    _one_thread,
    _trainer,
    _write_cuts,
    data,
)
from torch import nn

from wfst_asr.bin.train_cmd import build
from wfst_asr.train import ConfigError, Trainer, load_checkpoint, seed_everything
from wfst_asr.train.checkpoint import find_step_checkpoints
from wfst_asr.train.multitask import (
    DistillLoss,
    TaskSampler,
    apply_task_overrides,
    build_multitask,
    frame_kl,
    task_specs,
)

DISTILL_YAML = REPO / "egs" / "timit" / "conf" / "distill_ctc_blstm.yaml"


@pytest.fixture(scope="module")
def data_b(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("data_b")
    tokens = folder / "tokens.txt"
    tokens.write_text("<blk> 0\nd 1\nc 2\nb 3\na 4\nx 5\n")
    return {"train_cuts": str(_write_cuts(folder, "btrain", 12, 5)),
            "dev_cuts": str(_write_cuts(folder, "bdev", 4, 6)), "tokens": str(tokens)}


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory) -> Path:
    """A trained single-task CTC BLSTM's experiment directory (2 epochs, averaged.pt)."""
    exp = tmp_path_factory.mktemp("teacher")
    _trainer(_cfg(data, exp, "test.tiny_blstm", "spec_augment=false")).fit()
    return exp


def _two_tasks(data_b, weight_b: float = 1.0) -> list[dict]:
    return [{"name": "a", "weight": 1.0},
            {"name": "b", "weight": weight_b, "train_cuts": data_b["train_cuts"],
             "dev_cuts": data_b["dev_cuts"], "tokens": data_b["tokens"]}]


def _mt_cfg(data, exp, tasks: list[dict], *sets: str):
    cfg = _cfg(data, exp, "test.tiny_blstm", *sets)
    cfg.tasks = tasks
    return cfg


def _mt_trainer(cfg) -> Trainer:
    seed_everything(cfg.seed)
    model, loss, train_dl, dev_dl, table = build(cfg)
    assert table is None
    return Trainer(cfg, model, loss, train_dl, dev_dl, "cpu", targets=loss.batch_targets)


def _first_batches(loader) -> dict[str, dict]:
    loader.sampler.set_epoch(1)
    got: dict[str, dict] = {}
    for batch in loader:
        got.setdefault(batch["task"], batch)
        if len(got) == len(loader.loaders):
            break
    return got


# --------------------------------------------------------------------------- model


def test_two_ctc_tasks_share_the_encoder(data, data_b, tmp_path):
    model, loss, train_dl, dev_dl = build_multitask(
        _mt_cfg(data, tmp_path, _two_tasks(data_b)))
    keys = list(model.state_dict())
    assert all(k.startswith(("encoder.", "heads.")) for k in keys), keys
    assert {"heads.a.weight", "heads.b.weight"} <= set(keys)
    assert not any("output" in k for k in keys)
    batches = _first_batches(train_dl)
    for task, dim, other in (("a", 5, "b"), ("b", 6, "a")):
        model.zero_grad(set_to_none=True)
        model.set_task(task)
        loss.set_task(task)
        batch = batches[task]
        out, lens = model(batch["features"], batch["feature_lens"])
        assert out.shape[-1] == dim == model.num_classes
        value, info = loss(out, lens, loss.batch_targets(batch))
        assert info["num_utts"] == len(batch["feature_lens"])
        value.backward()
        enc = [p.grad for p in model.encoder.parameters()]
        assert all(g is not None for g in enc) and any(float(g.abs().sum()) > 0 for g in enc)
        assert all(float(p.grad.abs().sum()) > 0 for p in model.heads[task].parameters())
        assert all(p.grad is None for p in model.heads[other].parameters())
    assert sorted({b["task"] for b in dev_dl}) == ["a", "b"]


# --------------------------------------------------------------------------- schedule


class _Items:
    """A stand-in for a lhotse sampler: ``n`` items per epoch (None: endless)."""

    def __init__(self, n: int | None = None) -> None:
        self.n, self.i = n, 0

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        if not getattr(self, "_just_restored_state", False):
            self.i = 0
        return self

    def __next__(self) -> int:
        if self.n is not None and self.i >= self.n:
            raise StopIteration
        self.i += 1
        return self.i


def _draws(weights: dict[str, float], epoch: int, n: int, seed: int = 3) -> list[str]:
    ts = TaskSampler({k: _Items() for k in weights}, weights, seed)
    ts.set_epoch(epoch)
    return [name for name, _ in itertools.islice(iter(ts), n)]


def test_task_frequencies_follow_the_weights():
    weights = {"a": 1.0, "b": 2.0, "c": 5.0}
    n = 8000
    draws = _draws(weights, 1, n)
    counts = Counter(draws)
    total = sum(weights.values())
    chi2 = sum((counts[k] - n * w / total) ** 2 / (n * w / total) for k, w in weights.items())
    assert chi2 < 13.8, (counts, chi2)  # p = 0.001 at 2 degrees of freedom
    assert _draws(weights, 1, n) == draws  # deterministic by (seed, epoch)
    assert _draws(weights, 2, n) != draws
    assert _draws(weights, 1, n, seed=4) != draws


def test_epoch_ends_when_the_drawn_task_runs_out():
    ts = TaskSampler({"a": _Items(3), "b": _Items()}, {"a": 1.0, "b": 1.0}, 0)
    ts.set_epoch(1)
    draws = [name for name, _ in ts]
    rng = random.Random(0 * 1_000_003 + 1)  # the documented rule: the 4th 'a' ends it
    expect = []
    while expect.count("a") < 4:
        expect.append(rng.choices(["a", "b"], [1.0, 1.0])[0])
    assert draws == expect[:-1]


def test_same_task_sequence_on_every_rank(data, data_b, tmp_path):
    cfg = _mt_cfg(data, tmp_path, _two_tasks(data_b, 2.0))
    seqs, cuts = [], []
    for rank in (0, 1):
        train_dl = build_multitask(cfg, rank, 2)[2]
        train_dl.sampler.set_epoch(2)
        batches = list(train_dl)
        seqs.append([b["task"] for b in batches])
        cuts.append({c for b in batches for c in b["supervisions"]["cut_id"]})
    assert seqs[0] == seqs[1] and len(seqs[0]) >= 3
    assert cuts[0] != cuts[1]


def test_mid_epoch_resume_equals_uninterrupted(data, data_b, tmp_path):
    sets = ("save_every_n=2", "keep_last_n=0", "num_epochs=2")
    tasks = _two_tasks(data_b)
    full = _mt_trainer(_mt_cfg(data, tmp_path / "full", tasks, *sets))
    h_full = full.fit()
    steps = find_step_checkpoints(tmp_path / "full")
    assert len(steps) >= 4, [p.name for p in steps]
    for i, step in enumerate([steps[1], steps[-2]]):
        exp = tmp_path / f"part{i}"
        exp.mkdir()
        shutil.copy(step, exp / step.name)
        if load_checkpoint(step)["epoch"] > 1:
            shutil.copy(tmp_path / "full" / "epoch-1.pt", exp / "epoch-1.pt")
        second = _mt_trainer(_mt_cfg(data, exp, tasks, *sets))
        h_part = second.fit(resume=True)
        for k, v in full.raw_model.state_dict().items():
            assert torch.equal(v, second.raw_model.state_dict()[k]), (step, k)
        assert [h["train_loss"] for h in h_part] == [h["train_loss"] for h in h_full], step
        assert [h["dev_loss"] for h in h_part] == [h["dev_loss"] for h in h_full], step


# --------------------------------------------------------------------------- distillation


class _Fixed(nn.Module):
    """A teacher whose output is given."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.log_probs = log_probs
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, feats, lens):
        return self.log_probs, lens


def test_kl_loss_equals_reference():
    torch.manual_seed(0)
    B, T, V, temp = 3, 7, 5, 2.0
    student = torch.randn(B, T, V).log_softmax(-1)
    teacher = (2 * torch.randn(B, T, V)).log_softmax(-1)
    lens = torch.tensor([7, 4, 2])
    targets = types.SimpleNamespace(features=torch.zeros(B, T, 2), feature_lens=lens)
    ref = F.kl_div(F.log_softmax(student / temp, -1), F.log_softmax(teacher / temp, -1),
                   reduction="none", log_target=True).sum(-1)
    ref = sum(ref[b, :n].sum() for b, n in enumerate(lens.tolist())) * temp ** 2
    loss, info = DistillLoss(_Fixed(teacher), temp)(student, lens, targets)
    assert torch.allclose(loss, ref, atol=1e-5) and info["frames"] == 13
    same, _ = DistillLoss(_Fixed(student), temp)(student, lens, targets)
    assert abs(float(same)) < 1e-6

    def hard(out, out_lens, tg):
        return torch.tensor(10.0), {"num_excluded": 1}

    mixed, info = DistillLoss(_Fixed(teacher), temp, 0.25, hard)(student, lens, targets)
    assert torch.allclose(mixed, 0.25 * ref + 0.75 * 10.0, atol=1e-5)
    assert info["num_excluded"] == 1
    assert torch.allclose(frame_kl(student, teacher, lens, temp), ref, atol=1e-5)


@torch.no_grad()
def _dev_kl(model, teacher_model, dev_dl) -> float:
    """KL(teacher || student) per frame over the dev batches, both in eval mode."""
    model.eval()
    tot = frames = 0.0
    for batch in dev_dl:
        out, lens = model(batch["features"], batch["feature_lens"])
        t_out, _ = teacher_model(batch["features"], batch["feature_lens"])
        tot += float(frame_kl(out, t_out, lens))
        frames += float(lens.sum())
    return tot / frames


def test_student_approaches_its_teacher(data, teacher, tmp_path):
    tasks = [{"name": "kd", "teacher": str(teacher), "temperature": 2.0}]
    trainer = _mt_trainer(_mt_cfg(data, tmp_path, tasks, "num_epochs=5", "spec_augment=false",
                                  "average_last=0"))
    t_model = trainer.loss_fn.losses["kd"].teacher
    before = _dev_kl(trainer.raw_model, t_model, trainer.dev_dl)
    trainer.fit()
    after = _dev_kl(trainer.raw_model, t_model, trainer.dev_dl)
    assert after < 0.1 * before, (before, after)


def test_teacher_rules_copy_the_teacher(data, teacher, tmp_path):
    rules = [r"encoder\.(.*)->\1", r"heads\.kd\.(.*)->output.\1"]
    tasks = [{"name": "kd", "teacher": str(teacher / "epoch-2.pt"), "teacher_rules": rules}]
    model, loss, _, dev_dl = build_multitask(_mt_cfg(data, tmp_path, tasks))
    assert _dev_kl(model, loss.losses["kd"].teacher, dev_dl) < 1e-6


def test_teacher_with_another_vocabulary(data, data_b, teacher, tmp_path):
    tasks = [{"name": "kd", "teacher": str(teacher), "tokens": data_b["tokens"],
              "train_cuts": data_b["train_cuts"]}]
    with pytest.raises(ConfigError, match=r"task 'kd': the teacher .* has 5 outputs but the "
                                          r"task has 6: .*same vocabulary"):
        build_multitask(_mt_cfg(data, tmp_path, tasks))


# --------------------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize("tasks, match", [
    ([], "tasks must be a non-empty list"),
    ([{"name": "a"}, {"name": "a"}], "task 'a': the name is used twice"),
    ([{"name": "a b"}], r"tasks\[0\]: name must be"),
    ([{"name": "a", "colour": 1}], "task 'a': unknown key 'colour'"),
    ([{"name": "a", "weight": 0}], "task 'a': weight must be a number > 0"),
    ([{"name": "a", "weight": "x"}], "task 'a': weight must be"),
    ([{"name": "a", "loss": "transducer"}], "task 'a': loss 'transducer' is not supported"),
    ([{"name": "a", "temperature": 2.0}], "task 'a': temperature is for a distillation task"),
    ([{"name": "a", "train_cuts": ""}], "task 'a': train_cuts is not set"),
    ([{"name": "a", "head": {"depth": 2}}], "task 'a': head must be"),
    ([{"name": "a", "loss_kwargs": {"beam": 3}}], r"task 'a': unknown option\(s\) \['beam'\]"),
    ([{"name": "a", "teacher": "/no/such/exp"}], "task 'a': teacher: .*no such"),
])
def test_bad_task_configs_one_line(data, tmp_path, tasks, match):
    cfg = _mt_cfg(data, tmp_path, tasks)
    with pytest.raises(ConfigError, match=match) as e:
        task_specs(cfg) if "teacher" not in str(tasks) else build_multitask(cfg)
    assert "\n" not in str(e.value)


def test_task_overrides(data, tmp_path):
    cfg = _mt_cfg(data, tmp_path, [{"name": "a"}])
    rest = apply_task_overrides(cfg, ["lr=0.1", "tasks.a.weight=2.5", "tasks.a.head={hidden: 4}"])
    assert rest == ["lr=0.1"] and cfg.tasks == [{"name": "a", "weight": 2.5,
                                                 "head": {"hidden": 4}}]
    with pytest.raises(ValueError, match="no task 'z'"):
        apply_task_overrides(cfg, ["tasks.z.weight=1"])


def test_cli_trains_the_distillation_config(data, teacher, tmp_path):
    exp = tmp_path / "exp"
    args = _cli_args(data, exp, "--set", "num_epochs=1", "--set",
                     f"tasks.phones.teacher={teacher}", "--set", "tasks.phones.temperature=1.5")
    args[args.index("--config") + 1] = str(DISTILL_YAML)
    out = subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli", *args], check=False,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    state = load_checkpoint(exp / "epoch-1.pt")
    assert "heads.phones.weight" in state["model"]
    assert state["config"]["tasks"][0]["temperature"] == 1.5
    assert (exp / "averaged.pt").exists()
