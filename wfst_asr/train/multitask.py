"""Multi-task training: tasks sharing one encoder, sampled by weight; frame-level distillation.

In the spirit of Lingvo's ``MultiTaskModel`` and its task schedule. A configuration with
``tasks`` (:class:`~wfst_asr.train.config.ExperimentConfig`, e.g. the registered base
``multitask_ctc_blstm``) names several tasks::

    base: multitask_ctc_blstm
    train_cuts: data/cuts_train.jsonl.gz      # the tasks' defaults
    token_field: phones
    tasks:
      - {name: phones, weight: 2.0, tokens: data/lang/tokens.txt}
      - {name: other, weight: 1.0, train_cuts: data/other_train.jsonl.gz,
         tokens: data/other/tokens.txt, loss: ctc, head: {hidden: 128}}
      - {name: kd, teacher: exp/big_ctc, temperature: 2.0, distill_weight: 0.5,
         tokens: data/lang/tokens.txt}

A task's own keys are ``name`` (letters, digits, ``_``), ``weight`` (its sampling weight,
default 1), ``head`` (``{hidden: H}``: a hidden ReLU layer of H units before the output
layer; default none), and for a distillation task ``teacher`` (an experiment directory, whose
``averaged.pt`` / ``best.pt`` is used, or a checkpoint file), ``teacher_rules``, ``temperature``
(default 1) and ``distill_weight`` (default 1). Its data and loss keys (:data:`INHERITED`:
``train_cuts``, ``dev_cuts``, ``token_field``, ``tokens``, ``lang_dir``, ``loss``,
``loss_kwargs``, ...) default to the top-level values; ``loss_kwargs`` is merged into the
top-level one when the task keeps the top-level loss. A bad entry is a one-line
:class:`~wfst_asr.train.config.ConfigError` naming the task and the key. ``--set
tasks.NAME.KEY=VALUE`` sets a task's key from the command line (:func:`apply_task_overrides`).

* Model (:class:`SharedEncoderModel`): the top-level ``model`` is the shared encoder; its final
  ``output`` Linear is replaced by one head per task (a Linear to the task's outputs);
  ``set_task(name)`` picks the head ``forward`` uses. Its state_dict is plain
  (``encoder.*``, ``heads.NAME.*``): averaging, ``init_from`` and resume work as for one task.
  Tasks whose criterion calls a model's own decoder (transducer, attention, segmental) are not
  supported yet: a task loss must be one of :data:`SUPPORTED_LOSSES` (log-probs in, loss out).
* Criterion (:class:`MultiTaskLoss`): one registered loss per task (``build_loss``),
  ``set_task(name)`` dispatches; :meth:`MultiTaskLoss.batch_targets` maps a batch through its
  task's ``token_field`` and token table (pass it to the Trainer as ``targets``).
* Data (:class:`MultiTaskLoader`): one lhotse sampler per task (``make_loader``), and a
  schedule (:class:`TaskSampler`): at each step a task is drawn with probability proportional
  to its weight from an RNG seeded by ``(seed, epoch)`` alone, so every rank draws the same
  task at the same step, and its sampler gives the batch (``batch["task"]`` names it).
  **Epoch rule**: the epoch ends at the first step whose drawn task has no batch left (lhotse
  gives every rank the same number of batches, so all ranks end together); the other tasks'
  samplers start over, reshuffled, at the next epoch. A mid-epoch resume replays the draws
  and the samplers without reading features (the trainer's fast-forward), so it continues as
  an uninterrupted run. The dev set is every task's ``dev_cuts`` in turn.
* Distillation (:class:`DistillLoss`): a task with a ``teacher`` is trained on the frame-level
  ``KL(teacher || student)`` of the output distributions at temperature T, times T^2, mixed with
  its hard-label loss: ``distill_weight * KL + (1 - distill_weight) * loss``. The teacher (a
  single-task model, :func:`~wfst_asr.train.inference.load_model`) is frozen, in eval mode, and
  sees the student's input features; it must have the student's output frame rate and
  vocabulary. ``teacher_rules`` (``"REGEX->TEMPLATE"``, as ``init_from_rules``) also initialise
  the student from the teacher's checkpoint, e.g. ``["encoder\\.(.*)->\\1",
  "heads\\.kd\\.(.*)->output.\\1"]`` copies a BLSTM teacher entirely into task ``kd``.

The BERT distillation of the attention decoder (:mod:`wfst_asr.train.distill`) is sequence-level
and offline: its teacher's soft labels are a file, given to the ``attention`` loss
(``loss.soft_labels``, ``loss.distill_weight``), e.g. ``base: attention_blstm`` with
``loss_kwargs: {soft_labels: exp/bert/soft_labels.pt, distill_weight: 0.5}``; ``distill_weight``
has the same meaning here. An attention task inside ``tasks`` is not supported yet (above).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from wfst_asr.train.build import (
    build_model_from_config,
    data_feature_dim,
    make_loader,
    token_table,
)
from wfst_asr.train.checkpoint import CheckpointError, init_model_from, sampler_state
from wfst_asr.train.config import ConfigError, ExperimentConfig, parse_value
from wfst_asr.train.criteria import build_loss, get_loss, num_outputs, target_table
from wfst_asr.train.trainer import TokenSeqs, batch_targets

__all__ = ["INHERITED", "SUPPORTED_LOSSES", "DistillLoss", "MultiTaskLoader", "MultiTaskLoss",
           "SharedEncoderModel", "TaskSampler", "TaskSpec", "apply_task_overrides",
           "build_multitask", "frame_kl", "load_teacher", "task_specs"]

log = logging.getLogger(__name__)

#: the losses a task may have: they score the network's output alone
SUPPORTED_LOSSES = ("ctc", "hmm", "mmi", "dbd")
#: task keys that default to the top-level configuration's
INHERITED = ("train_cuts", "dev_cuts", "token_field", "tokens", "lang_dir", "loss", "loss_kwargs",
             "num_classes", "cmvn", "max_duration", "max_cuts", "spec_augment")
_OWN = ("name", "weight", "head", "teacher", "teacher_rules", "temperature", "distill_weight")
_DISTILL_ONLY = ("teacher_rules", "temperature", "distill_weight")
_NAME = re.compile(r"[A-Za-z0-9_]+")


# --------------------------------------------------------------------------- configuration


@dataclass
class TaskSpec:
    """One validated task: its own keys and ``cfg``, the top-level configuration with the
    task's data and loss keys (``tasks`` emptied): what ``make_loader`` / ``build_loss`` take."""

    name: str
    weight: float
    cfg: ExperimentConfig
    head: dict[str, Any] = field(default_factory=dict)
    teacher: str = ""
    teacher_rules: list[str] = field(default_factory=list)
    temperature: float = 1.0
    distill_weight: float = 1.0


def _number(task: str, key: str, value: Any, low: float, high: float | None = None,
            low_ok: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        value >= low if low_ok else value > low) and (high is None or value <= high)
    if not ok:
        bound = f"in [{low}, {high}]" if high is not None else f"{'>=' if low_ok else '>'} {low}"
        raise ConfigError(f"task {task!r}: {key} must be a number {bound}, got {value!r}")
    return float(value)


def task_specs(cfg: ExperimentConfig) -> list[TaskSpec]:
    """The validated tasks of ``cfg`` (a :class:`ConfigError`, one line naming the task and
    the key, for a bad entry)."""
    if not isinstance(cfg.tasks, list) or not cfg.tasks:
        raise ConfigError(f"config {cfg.name!r}: tasks must be a non-empty list of mappings")
    hints = typing.get_type_hints(ExperimentConfig)
    specs: list[TaskSpec] = []
    for i, entry in enumerate(cfg.tasks):
        if not isinstance(entry, dict):
            raise ConfigError(f"tasks[{i}]: expected a mapping of keys, got {entry!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"tasks[{i}]: name must be letters, digits or '_', got {name!r}")
        if name in (s.name for s in specs):
            raise ConfigError(f"task {name!r}: the name is used twice")
        bad = sorted(set(entry) - set(_OWN) - set(INHERITED))
        if bad:
            raise ConfigError(f"task {name!r}: unknown key {bad[0]!r}; valid: "
                              f"{', '.join(_OWN + INHERITED)}")
        teacher = entry.get("teacher") or ""
        stray = [k for k in _DISTILL_ONLY if k in entry and not teacher]
        if stray:
            raise ConfigError(f"task {name!r}: {stray[0]} is for a distillation task (set "
                              "teacher)")
        spec = TaskSpec(name, _number(name, "weight", entry.get("weight", 1.0), 0.0),
                        _task_config(cfg, name, entry, hints), teacher=str(teacher),
                        temperature=_number(name, "temperature", entry.get("temperature", 1.0),
                                            0.0),
                        distill_weight=_number(name, "distill_weight",
                                               entry.get("distill_weight", 1.0), 0.0, 1.0, True))
        spec.head = _head_spec(name, entry.get("head") or {})
        rules = entry.get("teacher_rules", [])
        if not (isinstance(rules, list) and all(isinstance(r, str) for r in rules)):
            raise ConfigError(f"task {name!r}: teacher_rules must be a list of "
                              f"'REGEX->TEMPLATE' strings, got {rules!r}")
        spec.teacher_rules = list(rules)
        specs.append(spec)
    return specs


def _head_spec(task: str, head: Any) -> dict[str, Any]:
    if not isinstance(head, dict) or set(head) - {"hidden"}:
        raise ConfigError(f"task {task!r}: head must be a mapping with key 'hidden', got {head!r}")
    hidden = head.get("hidden", 0)
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
        raise ConfigError(f"task {task!r}: head.hidden must be an int >= 0, got {hidden!r}")
    return {"hidden": hidden}


def _task_config(cfg: ExperimentConfig, name: str, entry: dict[str, Any],
                 hints: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with the task's :data:`INHERITED` keys (``loss_kwargs`` merged when the task
    keeps the top-level loss)."""
    changes: dict[str, Any] = {}
    for key in INHERITED:
        if key not in entry or key == "loss_kwargs":
            continue
        try:
            changes[key] = parse_value(str(entry[key]), hints[key]) if entry[key] is not None \
                else parse_value("none", hints[key])
        except ValueError as e:
            raise ConfigError(f"task {name!r}: {key}: {e}") from None
    loss = changes.get("loss", cfg.loss)
    kwargs = entry.get("loss_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"task {name!r}: loss_kwargs must be a mapping, got {kwargs!r}")
    base = dict(cfg.loss_kwargs) if loss == cfg.loss else {}
    tc = dataclasses.replace(cfg, name=f"{cfg.name}.{name}", tasks=[],
                             loss_kwargs={**base, **kwargs}, **changes)
    if loss not in SUPPORTED_LOSSES:
        raise ConfigError(f"task {name!r}: loss {loss!r} is not supported in a multi-task "
                          f"config yet (supported: {', '.join(SUPPORTED_LOSSES)})")
    try:
        get_loss(loss)
        target_table(tc)  # unknown loss options, a missing words.txt
    except (ValueError, OSError) as e:
        raise ConfigError(f"task {name!r}: {e}") from None
    for key in ("train_cuts", "token_field"):
        if not getattr(tc, key):
            raise ConfigError(f"task {name!r}: {key} is not set (set it in the task or at the "
                              "top level)")
    return tc


def apply_task_overrides(cfg: ExperimentConfig, overrides: list[str] | tuple[str, ...]
                         ) -> list[str]:
    """Apply the ``tasks.NAME.KEY=VALUE`` overrides to ``cfg.tasks`` in place (the value is
    read as YAML: numbers, booleans, lists); return the other overrides. ValueError for an
    unknown task or a malformed key."""
    rest = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not (sep and key.strip().startswith("tasks.")):
            rest.append(item)
            continue
        parts = key.strip().split(".")
        if len(parts) != 3:
            raise ValueError(f"override {key!r}: expected tasks.NAME.KEY=VALUE")
        task = next((t for t in cfg.tasks if isinstance(t, dict) and t.get("name") == parts[1]),
                    None)
        if task is None:
            names = [t.get("name") for t in cfg.tasks if isinstance(t, dict)]
            raise ValueError(f"override {key!r}: no task {parts[1]!r} (tasks: {names})")
        try:
            task[parts[2]] = yaml.safe_load(text)
        except yaml.YAMLError:
            task[parts[2]] = text
    return rest


# --------------------------------------------------------------------------- model


class _HeadTap(nn.Module):
    """Stands in for the encoder's ``output`` layer: the selected task's head of the owner
    (held by reference: no parameters of its own)."""

    def __init__(self, owner: SharedEncoderModel) -> None:
        super().__init__()
        self.__dict__["_owner"] = owner

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        owner = self.__dict__["_owner"]
        y = owner.heads[owner.task](h)
        if self.training and dist.is_available() and dist.is_initialized():
            # DDP needs a gradient for every parameter: zeros for the other tasks' heads
            y = y + 0.0 * sum(p.sum() for n, head in owner.heads.items() if n != owner.task
                              for p in head.parameters())
        return y


class SharedEncoderModel(nn.Module):
    """A shared encoder with one output head per task.

    ``forward(feats [B, T, F], lens [B]) -> (log-probs [B, T', V_task], out_lens [B])``: the
    encoder's own forward, its final ``output`` Linear replaced by the head of the task
    :meth:`set_task` selected (a Linear ``[D] -> [V_task]``, or Linear-ReLU-Linear with
    ``hidden``). Parameters: ``encoder.*`` and ``heads.NAME.*``.
    """

    def __init__(self, encoder: nn.Module, outputs: dict[str, int],
                 heads: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        out = getattr(encoder, "output", None)
        if not isinstance(out, nn.Linear):
            raise ConfigError(f"multi-task: the model {type(encoder).__name__} has no final "
                              "Linear 'output' layer to replace by the task heads (use an "
                              "encoder such as blstm or tdnn_lstm)")
        dim = out.in_features
        del encoder.output
        encoder.output = _HeadTap(self)
        self.encoder = encoder
        self.heads = nn.ModuleDict({n: _head(dim, v, **(heads or {}).get(n, {}))
                                    for n, v in outputs.items()})
        self.task = next(iter(outputs))

    def set_task(self, name: str) -> None:
        if name not in self.heads:
            raise ValueError(f"unknown task {name!r}; tasks: {list(self.heads)}")
        self.task = name

    @property
    def num_classes(self) -> int:
        """The output dimension of the selected task's head."""
        last = self.heads[self.task]
        return (last[-1] if isinstance(last, nn.Sequential) else last).out_features

    @property
    def num_features(self) -> int:
        return self.encoder.num_features

    @property
    def subsampling_factor(self) -> int:
        return self.encoder.subsampling_factor

    @property
    def subsampling_mode(self) -> str:
        return self.encoder.subsampling_mode

    def output_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        return self.encoder.output_lengths(lens)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(feats, lens)


def _head(dim: int, outputs: int, hidden: int = 0) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(dim, outputs)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


# --------------------------------------------------------------------------- criteria


def frame_kl(student: torch.Tensor, teacher: torch.Tensor, lens: torch.Tensor,
             temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * sum_b sum_{t < lens[b]} KL(p_teacher || p_student)`` of scores ``[B, T, V]``
    (log-probs or logits), each distribution a softmax of the scores divided by T."""
    s = (student / temperature).log_softmax(-1)
    t = (teacher / temperature).log_softmax(-1)
    kl = (t.exp() * (t - s)).sum(-1)  # [B, T]
    valid = torch.arange(kl.shape[1], device=kl.device)[None] < lens.to(kl.device)[:, None]
    return kl.masked_fill(~valid, 0.0).sum() * temperature ** 2


class DistillLoss(nn.Module):
    """``loss_fn(log_probs [B, T', V], out_lens [B], targets) -> (loss, info)`` of a
    distillation task: ``distill_weight * frame_kl(student, teacher, T)`` plus ``(1 -
    distill_weight)`` times the ``hard`` loss on the targets (not computed at weight 1).

    The teacher (``teacher(feats, lens) -> (log-probs [B, T', V], lens)``) runs, without
    gradients, on the batch's features, which :meth:`MultiTaskLoss.batch_targets` attaches to
    the targets (``targets.features``, ``targets.feature_lens``); it is referenced, not
    registered (frozen, in eval mode, not saved). Reduction ``sum`` over the valid frames."""

    reduction = "sum"

    def __init__(self, teacher: nn.Module, temperature: float = 1.0,
                 distill_weight: float = 1.0, hard: nn.Module | None = None) -> None:
        super().__init__()
        self.temperature, self.distill_weight, self.hard = temperature, distill_weight, hard
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)

    def forward(self, log_probs: torch.Tensor, out_lens: torch.Tensor, targets
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        feats = getattr(targets, "features", None)
        info: dict[str, Any] = {"num_utts": log_probs.shape[0], "num_excluded": 0,
                                "frames": int(out_lens.sum())}
        if feats is None:  # a zero-weight dummy batch (DDP)
            return log_probs.sum() * 0.0, dict(info, frames=0)
        teacher = self.__dict__["teacher"]
        if next(teacher.parameters()).device != log_probs.device:
            teacher.to(log_probs.device)
        with torch.no_grad():
            t_out, t_lens = teacher(feats.to(log_probs.device),
                                    targets.feature_lens.to(log_probs.device))
        if t_out.shape != log_probs.shape or not torch.equal(t_lens.cpu(), out_lens.cpu()):
            raise ValueError(f"distillation: the teacher's output {tuple(t_out.shape)} does not "
                             f"match the student's {tuple(log_probs.shape)} (same frame rate and "
                             "vocabulary needed)")
        w = self.distill_weight
        loss = w * frame_kl(log_probs.float(), t_out.float(), out_lens, self.temperature)
        if w < 1 and self.hard is not None:
            hard, hard_info = self.hard(log_probs, out_lens, targets)
            loss = loss + (1 - w) * hard
            info["num_excluded"] = hard_info.get("num_excluded", 0)
        return loss, info


class MultiTaskLoss(nn.Module):
    """The criterion of a multi-task model: ``set_task(name)`` picks the task's loss, which
    ``forward(out, out_lens, targets)`` calls. ``batch_targets(batch)`` gives the trainer the
    targets of a batch through its task's ``(token_field, table)``; a distillation task's carry
    the batch's features for the teacher."""

    def __init__(self, losses: dict[str, nn.Module],
                 fields: dict[str, tuple[str, dict[str, int] | None]]) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.fields = fields
        self.task = next(iter(losses))

    def set_task(self, name: str) -> None:
        if name not in self.losses:
            raise ValueError(f"unknown task {name!r}; tasks: {list(self.losses)}")
        self.task = name

    @property
    def reduction(self) -> str:
        return getattr(self.losses[self.task], "reduction", "sum")

    def forward(self, out: torch.Tensor, out_lens: torch.Tensor, targets):
        return self.losses[self.task](out, out_lens, targets)

    def batch_targets(self, batch: dict) -> TokenSeqs:
        name = batch.get("task", self.task)
        token_field, table = self.fields[name]
        seqs = batch_targets(batch, token_field, table)
        if isinstance(self.losses[name], DistillLoss):
            seqs.features, seqs.feature_lens = batch["features"], batch["feature_lens"]
        return seqs


def load_teacher(spec: TaskSpec) -> tuple[nn.Module, Path]:
    """``(frozen teacher in eval mode on the CPU, its checkpoint)`` of a distillation task:
    ``spec.teacher`` is an experiment directory or one of its checkpoints."""
    from wfst_asr.train.inference import load_model

    path = Path(spec.teacher)
    try:
        if path.is_dir():
            model, _, ckpt = load_model(path)
        elif path.is_file():
            model, _, ckpt = load_model(path.parent, checkpoint=path)
        else:
            raise FileNotFoundError(f"{path}: no such experiment directory or checkpoint")
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        raise ConfigError(f"task {spec.name!r}: teacher: {e}") from None
    return model.requires_grad_(False).eval(), ckpt


def _check_teacher(spec: TaskSpec, teacher: nn.Module, student: SharedEncoderModel) -> None:
    tv, sv = int(getattr(teacher, "num_classes", -1)), student.num_classes
    if tv != sv:
        raise ConfigError(f"task {spec.name!r}: the teacher {spec.teacher} has {tv} outputs but "
                          f"the task has {sv}: teacher and student need the same vocabulary")
    rate = (getattr(teacher, "subsampling_factor", 1), getattr(teacher, "subsampling_mode", ""))
    own = (student.subsampling_factor, student.subsampling_mode)
    if rate != own:
        raise ConfigError(f"task {spec.name!r}: the teacher {spec.teacher} subsamples by "
                          f"{rate} (factor, mode), the student by {own}: they need the same "
                          "output frame rate")


# --------------------------------------------------------------------------- data


class TaskSampler:
    """The schedule of a :class:`MultiTaskLoader` over the tasks' lhotse ``samplers`` (its
    ``.sampler``): at each step the task drawn with probability ``weights[name] / sum`` from an
    RNG seeded by ``(seed, epoch)``; the epoch ends when the drawn task has no batch left.

    Iterating it yields ``(task, CutSet)`` without reading features: the trainer's mid-epoch
    fast-forward (``set_epoch``, k draws, ``_just_restored_state = True``), after which the
    loader continues from there."""

    def __init__(self, samplers: dict[str, Any], weights: dict[str, float], seed: int) -> None:
        self.samplers, self.seed = samplers, seed
        self.names = list(samplers)
        self.weights = [float(weights[n]) for n in self.names]
        self.epoch, self.steps = 0, 0
        self._just_restored_state = False
        self._restart()

    def _restart(self) -> None:
        self._rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.steps = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for s in self.samplers.values():
            s.set_epoch(epoch)
        self._restart()

    def next_task(self) -> str:
        return self._rng.choices(self.names, self.weights)[0]

    def schedule(self, sources: dict[str, Iterator]) -> Iterator[tuple[str, Any]]:
        """``(task, next item of sources[task])`` per step, until the drawn task's is done."""
        while True:
            name = self.next_task()
            try:
                item = next(sources[name])
            except StopIteration:
                return
            self.steps += 1
            yield name, item

    def start(self) -> bool:
        """Before a pass: True to continue a restored position (the task samplers are told to
        continue), else the epoch starts over. Clears the restored flag."""
        restored, self._just_restored_state = self._just_restored_state, False
        for s in self.samplers.values():
            s._just_restored_state = restored  # lhotse: iter() then continues
        if not restored:
            self._restart()
        return restored

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        self.start()
        return self.schedule({n: iter(s) for n, s in self.samplers.items()})

    def state_dict(self) -> dict[str, Any]:
        first = sampler_state(self.samplers[self.names[0]]) or {}
        return {k: first.get(k) for k in ("world_size", "shuffle")} | {
            "seed": self.seed, "epoch": self.epoch, "steps": self.steps,
            "weights": dict(zip(self.names, self.weights)),
            "tasks": {n: sampler_state(s) for n, s in self.samplers.items()}}


class MultiTaskLoader:
    """Training batches of several tasks, one task per batch (``batch["task"]``), in the order
    of :class:`TaskSampler` (``.sampler``) over the tasks' ``DataLoader`` s."""

    def __init__(self, loaders: dict[str, Any], weights: dict[str, float], seed: int) -> None:
        self.loaders = loaders
        self.sampler = TaskSampler({n: dl.sampler for n, dl in loaders.items()}, weights, seed)

    def __iter__(self) -> Iterator[dict]:
        # the tasks' iterators now, as iter(DataLoader) does (it draws from torch's RNG): a
        # mid-epoch resume restores the RNG state after this call
        self.sampler.start()
        sources = {n: iter(dl) for n, dl in self.loaders.items()}
        return self._tagged(sources)

    def _tagged(self, sources: dict[str, Iterator]) -> Iterator[dict]:
        for name, batch in self.sampler.schedule(sources):
            batch["task"] = name
            yield batch


class DevLoader:
    """Every task's dev batches in turn, each with ``batch["task"]``."""

    def __init__(self, loaders: dict[str, Any]) -> None:
        self.loaders = loaders

    def __iter__(self) -> Iterator[dict]:
        for name, dl in self.loaders.items():
            for batch in dl:
                batch["task"] = name
                yield batch


# --------------------------------------------------------------------------- build


def _outputs(spec: TaskSpec) -> int:
    """The task's network outputs (its ``num_classes``, the loss topology's, or blank + the
    tokens)."""
    tc = spec.cfg
    try:
        fixed = num_outputs(tc)
        if tc.num_classes > 0:
            return tc.num_classes
        if fixed is not None:
            return fixed
        if tc.tokens:
            return max(token_table(tc.tokens).values()) + 1
    except (ValueError, OSError) as e:
        raise ConfigError(f"task {spec.name!r}: {e}") from None
    raise ConfigError(f"task {spec.name!r}: set tokens (or num_classes)")


def _num_features(cfg: ExperimentConfig, specs: list[TaskSpec]) -> int:
    dims = {}
    for spec in specs:
        try:
            dims[spec.name] = data_feature_dim(spec.cfg.train_cuts)
        except ValueError as e:
            raise ConfigError(f"task {spec.name!r}: {e}") from None
    if len(set(dims.values())) > 1:
        raise ConfigError(f"the tasks' features differ in dimension ({dims}): the encoder is "
                          "shared")
    dim = next(iter(dims.values()))
    if cfg.num_features > 0 and cfg.num_features != dim:
        raise ConfigError(f"num_features is {cfg.num_features} but the tasks' features have "
                          f"{dim} dimensions")
    return dim


def build_multitask(cfg: ExperimentConfig, rank: int = 0, world: int = 1
                    ) -> tuple[SharedEncoderModel, MultiTaskLoss, MultiTaskLoader,
                               DevLoader | None]:
    """``(model, criterion, train loader, dev loader or None)`` of a configuration with
    ``tasks``; give the trainer ``targets=criterion.batch_targets``."""
    specs = task_specs(cfg)
    cfg.num_features = _num_features(cfg, specs)
    outputs = {s.name: _outputs(s) for s in specs}
    for s in specs:
        s.cfg.num_features, s.cfg.num_classes = cfg.num_features, outputs[s.name]
    encoder = build_model_from_config(cfg.to_dict() | {"num_classes": outputs[specs[0].name]})
    model = SharedEncoderModel(encoder, outputs, {s.name: s.head for s in specs})
    losses: dict[str, nn.Module] = {}
    for s in specs:
        model.set_task(s.name)
        try:
            hard = build_loss(s.cfg, model) if not s.teacher or s.distill_weight < 1 else None
        except (ValueError, OSError) as e:
            raise ConfigError(f"task {s.name!r}: {e}") from None
        losses[s.name] = hard
        if s.teacher:
            teacher, ckpt = load_teacher(s)
            _check_teacher(s, teacher, model)
            losses[s.name] = DistillLoss(teacher, s.temperature, s.distill_weight, hard)
            if s.teacher_rules:
                copied, kept = init_model_from(model, ckpt, s.teacher_rules)
                log.info("task %s: %d tensors initialised from the teacher %s, %d kept", s.name,
                         len(copied), ckpt, len(kept))
    model.set_task(specs[0].name)
    loss = MultiTaskLoss(losses, {s.name: (s.cfg.token_field, target_table(s.cfg))
                                  for s in specs})
    train = MultiTaskLoader({s.name: make_loader(s.cfg, s.cfg.train_cuts, True, rank, world)
                             for s in specs}, {s.name: s.weight for s in specs}, cfg.seed)
    dev = {s.name: make_loader(s.cfg, s.cfg.dev_cuts, False, rank, world)
           for s in specs if s.cfg.dev_cuts}
    return model, loss, train, DevLoader(dev) if dev else None
