"""Multi-task training: tasks sharing one encoder (:mod:`wfst_asr.train.tasks`: the
configuration, the model and its heads), sampled by weight; frame-level distillation.

In the spirit of Lingvo's ``MultiTaskModel`` and its task schedule.

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
has the same meaning here. An attention task inside ``tasks`` takes the same ``loss_kwargs``.
"""


from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wfst_asr.train.build import (
    build_model_from_config,
    data_feature_dim,
    make_loader,
)
from wfst_asr.train.checkpoint import CheckpointError, init_model_from, sampler_state
from wfst_asr.train.config import ConfigError, ExperimentConfig
from wfst_asr.train.criteria import build_loss, target_table
from wfst_asr.train.tasks import (
    HEAD_KINDS,
    INHERITED,
    SUPPORTED_LOSSES,
    AttentionHead,
    SharedEncoderModel,
    TaskSpec,
    TransducerHead,
    apply_task_overrides,
    inference_model,
    task_outputs,
    task_specs,
)
from wfst_asr.train.trainer import TokenSeqs, batch_targets

__all__ = ["HEAD_KINDS", "INHERITED", "SUPPORTED_LOSSES", "AttentionHead", "DistillLoss",
           "MultiTaskLoader", "MultiTaskLoss", "SharedEncoderModel", "TaskSampler", "TaskSpec",
           "TransducerHead", "apply_task_overrides",
           "build_multitask", "frame_kl", "inference_model", "load_teacher", "task_specs"]

log = logging.getLogger(__name__)


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
    outputs = {s.name: task_outputs(s) for s in specs}
    for s in specs:
        s.cfg.num_features, s.cfg.num_classes = cfg.num_features, outputs[s.name]
    encoder = build_model_from_config(cfg.to_dict() | {"num_classes": outputs[specs[0].name]})
    model = SharedEncoderModel(encoder, outputs, {s.name: s.head for s in specs})
    losses: dict[str, nn.Module] = {}
    for s in specs:
        model.set_task(s.name)
        head = model.heads[s.name]  # a decoder head is its loss's model
        try:
            hard = (build_loss(s.cfg, head if s.cfg.loss in HEAD_KINDS else model)
                    if not s.teacher or s.distill_weight < 1 else None)
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
