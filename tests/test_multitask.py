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
import re
import shutil
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
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
from test_train import F as F_DIM
from torch import nn

from wfst_asr.bin.train_cmd import build
from wfst_asr.models import BlstmAttention, BlstmTransducer
from wfst_asr.train import ConfigError, Trainer, load_checkpoint, seed_everything
from wfst_asr.train.checkpoint import find_step_checkpoints
from wfst_asr.train.criteria import AttentionCriterion, TransducerCriterion, build_loss
from wfst_asr.train.decoder import DecodeOptions, Decoder
from wfst_asr.train.inference import load_model
from wfst_asr.train.jobs import Evaler
from wfst_asr.train.multitask import (
    HEAD_KINDS,
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


#: a transducer task and an attention task on the top-level data, with tiny decoder heads
TRANSDUCER = {"name": "t", "loss": "transducer", "loss_kwargs": {"s_range": 3},
              "head": {"kind": "transducer", "encoder_dim": 12, "decoder_dim": 8,
                       "joiner_dim": 8}}
ATTENTION = {"name": "att", "loss": "attention",
             "head": {"kind": "attention", "d_model": 16, "nhead": 2, "decoder_layers": 1,
                      "dim_feedforward": 32}}


def _single_model(model, name: str) -> nn.Module:
    """The single-task model (``blstm_transducer`` / ``blstm_attention``) of task ``name`` of
    the multi-task ``model``: the shared encoder and that task's head copied into it (the
    head's ``proj`` is the single-task encoder's ``output``)."""
    head = model.heads[name]
    kw = {"hidden": 16, "num_layers": 1}
    if head.kind == "transducer":
        single = BlstmTransducer(F_DIM, head.num_classes, **kw, encoder_dim=12, decoder_dim=8,
                                 joiner_dim=8)
    else:
        single = BlstmAttention(F_DIM, head.num_classes, **kw, d_model=16, nhead=2,
                                decoder_layers=1, dim_feedforward=32)
    state = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    for k, v in head.state_dict().items():
        state[re.sub(r"^proj\.", "encoder.output.", k)] = v
    single.load_state_dict(state)  # strict: every tensor copied
    return single


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


@pytest.mark.parametrize("kind", [TRANSDUCER, ATTENTION], ids=["transducer", "attention"])
def test_decoder_task_shares_the_encoder(data, tmp_path, kind):
    cfg = _mt_cfg(data, tmp_path, [{"name": "a"}, kind])
    model, loss, train_dl, _ = build_multitask(cfg)
    name = kind["name"]
    assert isinstance(model.heads[name], HEAD_KINDS[kind["loss"]])
    assert isinstance(loss.losses[name], (TransducerCriterion, AttentionCriterion))
    batches = _first_batches(train_dl)
    for task, other in (("a", name), (name, "a")):
        model.zero_grad(set_to_none=True)
        model.set_task(task)
        loss.set_task(task)
        out, lens = model(batches[task]["features"], batches[task]["feature_lens"])
        value, _ = loss(out, lens, loss.batch_targets(batches[task]))
        value.backward()
        enc = [p.grad for p in model.encoder.parameters()]
        assert all(g is not None for g in enc) and any(float(g.abs().sum()) > 0 for g in enc)
        own = list(model.heads[task].parameters())
        assert all(p.grad is not None for p in own), task
        assert all(float(p.grad.abs().sum()) > 0 for p in own if p.dim() > 1), task
        assert all(p.grad is None for p in model.heads[other].parameters()), task
    # the loss equals the single-task criterion's on the single-task model of the same weights
    model.eval()
    single = _single_model(model, name).eval()
    spec = next(sp for sp in task_specs(cfg) if sp.name == name)
    spec.cfg.num_classes = single.num_classes
    crit = build_loss(spec.cfg, single)
    assert type(crit) is type(loss.losses[name])
    batch = batches[name]
    model.set_task(name)
    loss.set_task(name)
    with torch.no_grad():
        out, lens = model(batch["features"], batch["feature_lens"])
        want_out, want_lens = single(batch["features"], batch["feature_lens"])
        assert torch.equal(out, want_out) and torch.equal(lens, want_lens)
        got, _ = loss(out, lens, loss.batch_targets(batch))
        want, _ = crit(want_out, want_lens, loss.batch_targets(batch))
    assert torch.equal(got, want), (got, want)


def test_bad_decoder_head_one_line(data, tmp_path):
    bad = dict(ATTENTION, head=dict(ATTENTION["head"], nhead=3))  # 16 % 3
    with pytest.raises(ConfigError, match="task 'att': head: .*divisible") as e:
        build_multitask(_mt_cfg(data, tmp_path, [{"name": "a"}, bad]))
    assert "\n" not in str(e.value)


def test_every_parameter_gets_a_gradient_under_ddp(data, tmp_path):
    """DDP (a 1-process gloo group): each task's step gives every parameter a gradient, zero
    for the other tasks' heads, decoder heads included."""
    model, loss, train_dl, _ = build_multitask(
        _mt_cfg(data, tmp_path, [{"name": "a"}, TRANSDUCER, ATTENTION]))
    batches = _first_batches(train_dl)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        for task in ("a", "t", "att"):
            model.zero_grad(set_to_none=True)
            model.set_task(task)
            loss.set_task(task)
            out, lens = model(batches[task]["features"], batches[task]["feature_lens"])
            loss(out, lens, loss.batch_targets(batches[task]))[0].backward()
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            assert not missing, (task, missing)
            others = [p for n, h in model.heads.items() if n != task for p in h.parameters()]
            assert all(float(p.grad.abs().sum()) == 0 for p in others), task
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def _task_dev_losses(model, crit, dev_dl) -> dict[str, float]:
    """Each task's loss per output frame on its dev batches, in eval mode."""
    model.eval()
    tot: Counter = Counter()
    frames: Counter = Counter()
    for batch in dev_dl:
        name = batch["task"]
        model.set_task(name)
        crit.set_task(name)
        out, lens = model(batch["features"], batch["feature_lens"])
        tot[name] += float(crit(out, lens, crit.batch_targets(batch))[0])
        frames[name] += int(lens.sum())
    return {k: tot[k] / frames[k] for k in tot}


def test_ctc_transducer_attention_tasks_train(data, tmp_path):
    cfg = _mt_cfg(data, tmp_path, [{"name": "a"}, TRANSDUCER, ATTENTION], "spec_augment=false",
                  "average_last=0")
    trainer = _mt_trainer(cfg)
    before = _task_dev_losses(trainer.raw_model, trainer.loss_fn, trainer.dev_dl)
    trainer.fit()
    after = _task_dev_losses(trainer.raw_model, trainer.loss_fn, trainer.dev_dl)
    assert set(before) == {"a", "t", "att"}
    assert all(after[k] < before[k] for k in before), (before, after)
    # load_model(task=...) builds the same heads: the trained network, with the decoder's pieces
    batch = next(iter(trainer.dev_dl))
    for task in ("a", "t", "att"):
        model, tcfg, _ = load_model(tmp_path, "cpu", checkpoint=tmp_path / "epoch-2.pt",
                                    task=task)
        trainer.raw_model.set_task(task)
        with torch.no_grad():
            got = model(batch["features"], batch["feature_lens"])[0]
            want = trainer.raw_model(batch["features"], batch["feature_lens"])[0]
        assert torch.equal(got, want) and tcfg["loss"] == {"a": "ctc", "t": "transducer",
                                                      "att": "attention"}[task]
        assert hasattr(model, "decoder") == (task != "a")
        assert hasattr(model, "joiner") == (task == "t")
    # the evaler gives a task's loss per frame (its own criterion on the trained weights)
    for task in ("t", "att"):
        evaler = Evaler(tmp_path, data["dev_cuts"], "cpu", task=task)
        assert evaler(tmp_path / "epoch-2.pt")["loss"] == pytest.approx(after[task], rel=1e-4)
    # and the decoder decodes each task with its own methods
    for task in ("t", "att"):
        opts = DecodeOptions(methods=["greedy"], task=task, metric="PER", max_duration=100.0)
        Decoder(tmp_path, options=opts, log=None).run({"dev": data["dev_cuts"]},
                                                      tmp_path / f"dec_{task}")
        hyps = (tmp_path / f"dec_{task}" / "greedy" / "dev.hyp").read_text().splitlines()
        assert len(hyps) == 6 and all(set(h.split()[1:]) <= set("abcd") for h in hyps), hyps


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


@pytest.mark.parametrize("kinds", ["ctc", "decoders"])
def test_mid_epoch_resume_equals_uninterrupted(data, data_b, tmp_path, kinds):
    sets = ("save_every_n=2", "keep_last_n=0", "num_epochs=2")
    tasks = _two_tasks(data_b) if kinds == "ctc" else [{"name": "a"}, TRANSDUCER, ATTENTION]
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
    ([{"name": "a", "loss": "segmental"}], "task 'a': loss 'segmental' is not supported"),
    ([{"name": "a", "loss": "transducer"}],
     r"task 'a': loss 'transducer' needs head \{kind: transducer"),
    ([{"name": "a", "loss": "attention", "head": {"hidden": 4}}],
     r"task 'a': loss 'attention' needs head \{kind: attention"),
    ([{"name": "a", "head": {"kind": "transducer"}}],
     "task 'a': head kind 'transducer' needs loss 'transducer', got 'ctc'"),
    ([{"name": "a", "loss": "attention", "head": {"kind": "transducer"}}],
     "task 'a': head kind 'transducer' needs loss 'transducer', got 'attention'"),
    ([{"name": "a", "loss": "attention", "head": {"kind": "attention", "hidden": 4}}],
     "task 'a': unknown key head.hidden of kind 'attention'"),
    ([{"name": "a", "loss": "attention", "head": {"kind": "attention", "nhead": "x"}}],
     "task 'a': head.nhead must be int >= 0"),
    ([{"name": "a", "head": {"kind": "rnn"}}], "task 'a': head must be a mapping with key"),
    ([{"name": "a", "loss": "transducer", "head": {"kind": "transducer"}, "teacher": "x"}],
     "task 'a': a distillation task .* needs a plain head"),
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
