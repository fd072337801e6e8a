"""Tasks of a multi-task configuration and the shared-encoder model they train
(:mod:`wfst_asr.train.multitask` trains them; :func:`inference_model` rebuilds the network of a
saved configuration for decoding, evaluation and export).

A configuration with ``tasks`` (:class:`~wfst_asr.train.config.ExperimentConfig`, e.g. the
registered base ``multitask_ctc_blstm``) names several tasks::

    base: multitask_ctc_blstm
    train_cuts: data/cuts_train.jsonl.gz      # the tasks' defaults
    token_field: phones
    tasks:
      - {name: phones, weight: 2.0, tokens: data/lang/tokens.txt}
      - {name: other, weight: 1.0, train_cuts: data/other_train.jsonl.gz,
         tokens: data/other/tokens.txt, loss: ctc, head: {hidden: 128}}
      - {name: kd, teacher: exp/big_ctc, temperature: 2.0, distill_weight: 0.5,
         tokens: data/lang/tokens.txt}
      - {name: rnnt, loss: transducer, tokens: data/lang/tokens.txt,
         head: {kind: transducer, decoder_dim: 256, joiner_dim: 256}}
      - {name: las, loss: attention, loss_kwargs: {ctc_weight: 0.3},
         tokens: data/lang/tokens.txt, head: {kind: attention, nhead: 4}}

A task's own keys are ``name`` (letters, digits, ``_``), ``weight`` (its sampling weight,
default 1), ``head`` (``{hidden: H}``: a hidden ReLU layer of H units before the output
layer; default none; or a decoder head, ``{kind: transducer | attention, ...}``, below), and
for a distillation task ``teacher`` (an experiment directory, whose
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
* Decoder heads (:data:`HEAD_KINDS`): a task with loss ``transducer`` has ``head: {kind:
  transducer, ...}`` (:class:`TransducerHead`, keys: ``encoder_dim``, ``decoder_dim``,
  ``joiner_dim``, ``context_size``, ``aux_ctc``), one with loss ``attention`` ``head: {kind:
  attention, ...}`` (:class:`AttentionHead`, keys: ``d_model``, ``nhead``, ``decoder_layers``,
  ``dim_feedforward``, ``decoder_dropout``): the modules of ``blstm_transducer`` /
  ``blstm_attention`` (their defaults; ``encoder_dim`` / ``d_model`` 0: the shared encoder's
  hidden size D), after a ``proj`` Linear of the encoder's hidden states (the single-task
  model's ``encoder.output``). Such a task's forward gives ``proj(h)`` (no softmax), and its
  head is the model its loss is built on (``heads.NAME.proj.*``, ``heads.NAME.head.*``, ...);
  the head kind and the loss must agree (a one-line ConfigError otherwise), and a distillation
  task needs a plain head. With the task selected, :class:`SharedEncoderModel` shows the head's
  ``decoder``, ``joiner``, ... (:func:`inference_model`), so ``wfst-asr decode --task`` and
  ``wfst-asr eval --task`` work as on the single-task model; ``export`` handles CTC tasks only.
  Losses that call other model parts (``segmental``) are not supported: a task loss must be one
  of :data:`SUPPORTED_LOSSES`.
* DDP: the selected head's forward adds a zero term of every other task's head parameters
  (decoder heads included), the task's criterion one of its own unused ones, so that every
  parameter gets a gradient at every step.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from wfst_asr.models import AttentionDecoder, BlstmAttention, BlstmTransducer, Transducer
from wfst_asr.train.build import (
    build_model_from_config,
    token_table,
)
from wfst_asr.train.config import ConfigError, ExperimentConfig, parse_value
from wfst_asr.train.criteria import get_loss, num_outputs, target_table

__all__ = ["HEAD_KINDS", "INHERITED", "SUPPORTED_LOSSES", "AttentionHead", "SharedEncoderModel",
           "TaskSpec", "TransducerHead", "apply_task_overrides", "inference_model",
           "task_outputs", "task_specs"]

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

#: the losses a task may have: those that score the network's output alone, and those that need
#: the head of their kind (:data:`HEAD_KINDS`: ``head: {kind: transducer, ...}``)
SUPPORTED_LOSSES = ("ctc", "hmm", "mmi", "dbd", "transducer", "attention")
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
        spec.head = _head_spec(name, entry.get("head") or {}, spec.cfg.loss, spec.teacher)
        rules = entry.get("teacher_rules", [])
        if not (isinstance(rules, list) and all(isinstance(r, str) for r in rules)):
            raise ConfigError(f"task {name!r}: teacher_rules must be a list of "
                              f"'REGEX->TEMPLATE' strings, got {rules!r}")
        spec.teacher_rules = list(rules)
        specs.append(spec)
    return specs


def _head_spec(task: str, head: Any, loss: str = "ctc", teacher: str = "") -> dict[str, Any]:
    """The validated ``head`` of a task: ``{"hidden": H}`` (a plain head), or ``{"kind": K,
    ...}`` with K in :data:`HEAD_KINDS` and its class's arguments; K must be the task's loss
    (and a loss of :data:`HEAD_KINDS` needs its kind of head)."""
    kind = head.get("kind", "linear") if isinstance(head, dict) else None
    cls = HEAD_KINDS.get(kind) if isinstance(kind, str) else None
    if kind == "linear" or cls is None:
        if not isinstance(head, dict) or set(head) - {"hidden", "kind"} or kind != "linear":
            raise ConfigError(f"task {task!r}: head must be a mapping with key 'hidden' or "
                              f"'kind' (one of {', '.join(HEAD_KINDS)}), got {head!r}")
        hidden = head.get("hidden", 0)
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
            raise ConfigError(f"task {task!r}: head.hidden must be an int >= 0, got {hidden!r}")
        if loss in HEAD_KINDS:
            raise ConfigError(f"task {task!r}: loss {loss!r} needs head {{kind: {loss}, ...}} "
                              "(a plain head has no decoder)")
        return {"hidden": hidden}
    if loss != kind:
        raise ConfigError(f"task {task!r}: head kind {kind!r} needs loss {kind!r}, got {loss!r}")
    if teacher:
        raise ConfigError(f"task {task!r}: a distillation task (teacher) needs a plain head, "
                          f"got kind {kind!r}")
    params = {k: p.default for k, p in inspect.signature(cls).parameters.items()
              if k not in ("dim", "num_classes")}
    out: dict[str, Any] = {"kind": kind}
    for key, value in head.items():
        if key == "kind":
            continue
        if key not in params:
            raise ConfigError(f"task {task!r}: unknown key head.{key} of kind {kind!r}; valid: "
                              f"{', '.join(params)}")
        want = type(params[key])
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool)) or (
            want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (want is not bool and value < 0):
            raise ConfigError(f"task {task!r}: head.{key} must be {want.__name__} >= 0, got "
                              f"{value!r}")
        out[key] = value
    return out


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
            # (decoder heads included; the task's own decoder head is its criterion's)
            y = y + 0.0 * sum(p.sum() for n, head in owner.heads.items() if n != owner.task
                              for p in head.parameters())
        owner.__dict__["_tapped"] = y  # a decoder head's encoder output, before any softmax
        return y


class TransducerHead(nn.Module):
    """The head of a transducer task (``head: {kind: transducer, ...}``), and the model its
    ``transducer`` loss takes (:class:`~wfst_asr.train.criteria.TransducerCriterion`): those of
    :class:`~wfst_asr.models.BlstmTransducer` on the shared encoder's hidden states ``[B, T,
    D]``: ``proj`` (``Linear(D, encoder_dim)``, the single-task model's ``encoder.output``; the
    task's encoder output), ``head`` (:class:`~wfst_asr.models.Transducer`: prediction network,
    joiner), ``ctc_output`` (``aux_ctc``). ``encoder_dim`` 0: D."""

    kind = "transducer"
    decoder = BlstmTransducer.decoder
    joiner = BlstmTransducer.joiner
    ctc_log_probs = BlstmTransducer.ctc_log_probs

    def __init__(self, dim: int, num_classes: int, encoder_dim: int = 0, decoder_dim: int = 256,
                 joiner_dim: int = 256, context_size: int = 2, aux_ctc: bool = False) -> None:
        super().__init__()
        self.num_classes, self.encoder_dim = int(num_classes), int(encoder_dim or dim)
        self.proj = nn.Linear(dim, self.encoder_dim)
        self.head = Transducer(self.encoder_dim, num_classes, decoder_dim=decoder_dim,
                               joiner_dim=joiner_dim, context_size=context_size, blank=0)
        self.ctc_output = nn.Linear(self.encoder_dim, num_classes) if aux_ctc else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


class AttentionHead(nn.Module):
    """The head of an attention task (``head: {kind: attention, ...}``), and the model its
    ``attention`` loss takes (:class:`~wfst_asr.train.criteria.AttentionCriterion`): those of
    :class:`~wfst_asr.models.BlstmAttention` on the shared encoder's hidden states ``[B, T,
    D]``: ``proj`` (``Linear(D, d_model)``: the memory), ``decoder``
    (:class:`~wfst_asr.models.AttentionDecoder`), ``ctc_output``. ``d_model`` 0: D."""

    kind = "attention"
    ctc_log_probs = BlstmAttention.ctc_log_probs

    def __init__(self, dim: int, num_classes: int, d_model: int = 0, nhead: int = 4,
                 decoder_layers: int = 2, dim_feedforward: int = 1024,
                 decoder_dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes, self.d_model = int(num_classes), int(d_model or dim)
        self.proj = nn.Linear(dim, self.d_model)
        self.decoder = AttentionDecoder(num_classes, self.d_model, nhead, decoder_layers,
                                        dim_feedforward, decoder_dropout)
        self.ctc_output = nn.Linear(self.d_model, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


#: ``head.kind`` -> the head class; the kind is also the task's loss
HEAD_KINDS: dict[str, type[nn.Module]] = {"transducer": TransducerHead,
                                          "attention": AttentionHead}
#: what a model with a decoder head shows of it (:meth:`SharedEncoderModel.__getattr__`)
_VIEW = ("head", "decoder", "joiner", "ctc_output", "ctc_log_probs")


class SharedEncoderModel(nn.Module):
    """A shared encoder with one output head per task.

    ``forward(feats [B, T, F], lens [B]) -> (log-probs [B, T', V_task], out_lens [B])``: the
    encoder's own forward, its final ``output`` Linear replaced by the head of the task
    :meth:`set_task` selected (a Linear ``[D] -> [V_task]``, or Linear-ReLU-Linear with
    ``hidden``). Parameters: ``encoder.*`` and ``heads.NAME.*``.

    A decoder head (:data:`HEAD_KINDS`) selected, ``forward`` gives its encoder output
    ``proj(h)`` (no softmax: as ``blstm_transducer`` / ``blstm_attention`` do), and the model
    shows the head's ``head``, ``decoder``, ``joiner``, ``ctc_output``, ``ctc_log_probs``, so
    that it decodes (and builds the task's loss) as the single-task model would.
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
        self.heads = nn.ModuleDict()
        for n, v in outputs.items():
            try:
                self.heads[n] = _head(dim, v, **(heads or {}).get(n, {}))
            except (ValueError, AssertionError, RuntimeError) as e:  # e.g. d_model % nhead
                raise ConfigError(f"task {n!r}: head: {str(e).splitlines()[0]}") from None
        self.task = next(iter(outputs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            heads = self.__dict__.get("_modules", {}).get("heads") if name in _VIEW else None
            head = heads[self.__dict__["task"]] if heads is not None else None
            if getattr(head, "kind", None) in HEAD_KINDS and hasattr(head, name):
                return getattr(head, name)
            raise

    def set_task(self, name: str) -> None:
        if name not in self.heads:
            raise ValueError(f"unknown task {name!r}; tasks: {list(self.heads)}")
        self.task = name

    @property
    def num_classes(self) -> int:
        """The output dimension of the selected task's head."""
        last = self.heads[self.task]
        if isinstance(last, tuple(HEAD_KINDS.values())):
            return last.num_classes
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
        out, out_lens = self.encoder(feats, lens)
        tapped = self.__dict__.pop("_tapped", None)
        if getattr(self.heads[self.task], "kind", None) in HEAD_KINDS:
            return tapped, out_lens
        return out, out_lens


def _head(dim: int, outputs: int, hidden: int = 0, kind: str = "linear", **kwargs: Any
          ) -> nn.Module:
    if kind in HEAD_KINDS:
        return HEAD_KINDS[kind](dim, outputs, **kwargs)
    if hidden <= 0:
        return nn.Linear(dim, outputs)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, outputs))



# --------------------------------------------------------------------------- outputs


def task_outputs(spec: TaskSpec) -> int:
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



# --------------------------------------------------------------------------- inference


def inference_model(cfg: dict[str, Any], task: str | None = None
                    ) -> tuple[SharedEncoderModel, dict[str, Any]]:
    """The (untrained) network of a saved multi-task configuration (``config.json``'s dict),
    every head built, ``task`` selected (default: the first task), and that task's own
    configuration as a dict: its ``token_field``, ``tokens``, ``loss``, ``num_classes``, ...,
    what single-task decoding and evaluation read. ValueError naming the tasks for an unknown
    ``task``."""
    c = ExperimentConfig.from_dict(cfg)
    specs = task_specs(c)
    outputs = {s.name: task_outputs(s) for s in specs}
    encoder = build_model_from_config(c.to_dict() | {"num_classes": outputs[specs[0].name]})
    model = SharedEncoderModel(encoder, outputs, {s.name: s.head for s in specs})
    name = task or specs[0].name
    spec = next((s for s in specs if s.name == name), None)
    if spec is None:
        raise ValueError(f"no task {name!r} in the configuration (tasks: "
                         f"{', '.join(s.name for s in specs)})")
    model.set_task(name)
    spec.cfg.num_classes = outputs[name]
    return model, spec.cfg.to_dict() | {"task": name}
