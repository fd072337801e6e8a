"""Experiment configurations: typed, named, inheritable dataclasses in a registry.

In the spirit of Lingvo's ``Params`` + model registry: an experiment is a subclass of
:class:`ExperimentConfig` that overrides field defaults, registered under a name::

    @register("ctc_blstm")
    class CtcBlstm(ExperimentConfig):
        model: str = "blstm"
        model_kwargs: dict = field(default_factory=lambda: {"hidden": 256})

    @register("tdnn_lstm")
    class TdnnLstm(CtcBlstm):                   # inherits everything else
        model: str = "tdnn_lstm"

The library registers only corpus-free bases (:data:`BASES`: ``ctc_blstm``, ``tdnn_lstm``,
``hmm_blstm``, ``mmi_blstm``, ``transducer_blstm``, ``segmental_blstm``, ``attention_blstm``,
``dbd_blstm``); their data paths and token field are
required keys (:meth:`ExperimentConfig.check_required`). Recipes own their settings as config
files (``egs/<corpus>/conf/*.yaml``) that name a base and override it::

    # egs/timit/conf/ctc_blstm.yaml
    base: ctc_blstm                 # a registered name, or another file (relative path)
    name: timit.ctc_blstm
    train_cuts: data/fbank/timit_cuts_train.jsonl.gz
    token_field: phones_48
    model_kwargs: {dropout: 0.3}    # dict fields are merged into the base's, key by key

    cfg = load_config("egs/timit/conf/ctc_blstm.yaml")     # or load_config("ctc_blstm")
    apply_overrides(cfg, ["lr=1e-3", "model.hidden=128", "spec_augment=false"])
    cfg.save(exp_dir / "config.json"); cfg.log()

Override keys are field names; ``model.KEY`` / ``loss.KEY`` / ``specaug.KEY`` set an entry of
``model_kwargs`` / ``loss_kwargs`` / ``spec_augment_kwargs`` (typed from the current value, else
from the default of the registered model's / loss's / lhotse ``SpecAugment``'s constructor). Values are parsed to the field's type (int, float, bool,
str, tuple/list, ``None`` for optional fields); an unknown key raises ``ValueError`` listing the
valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wfst_asr.atomic import atomic_write_text
from wfst_asr.data.dataset import SpecAugment, TimeFreqMask
from wfst_asr.models import MODELS
from wfst_asr.train.criteria import LOSSES

__all__ = [
    "BASES",
    "CONFIGS",
    "ConfigError",
    "ExperimentConfig",
    "apply_overrides",
    "get_config",
    "list_configs",
    "load_config",
    "register",
]

log = logging.getLogger(__name__)

#: name -> ExperimentConfig subclass.
CONFIGS: dict[str, type[ExperimentConfig]] = {}


@dataclass
class ExperimentConfig:
    """Every hyper-parameter of a training run (see the module doc for overrides)."""

    name: str = "base"
    # -- data (lhotse cuts with precomputed features) --
    train_cuts: str = ""
    dev_cuts: str = ""
    tokens: str = ""            # tokens.txt ("sym id"; blank = 0; '#N' ignored) or ""
    lang_dir: str = ""           # lang dir with the graphs a loss needs (P, topology, lexicon)
    token_field: str = "tokens"  # supervision.custom key: list of ids, or symbols (str/list)
    cmvn: str = ""               # .pt from wfst_asr.data.save_cmvn, or "" for none
    num_features: int = 0        # 0: from the training cuts' features (else checked against them)
    num_classes: int = 0         # 0: from the loss topology, else max token id + 1 of `tokens`
    max_duration: float = 200.0
    max_cuts: int | None = None
    bucketing: bool = True
    num_buckets: int = 10
    num_workers: int = 0
    bucket_buffer_size: int = 20000  # cuts the bucketing sampler holds (its shuffle window);
    #   lower it for Shar data whose audio/features ride in memory with the cuts
    spec_augment: bool = False
    spec_augment_kwargs: dict[str, Any] = field(default_factory=dict)  # lhotse SpecAugment args
    # -- model and loss --
    model: str = "blstm"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    subsampling: int = 1
    loss: str = "ctc"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)  # multi-task: shared encoder, a
    #   head + loss + data per task, sampling weights, distillation (wfst_asr.train.multitask)
    # -- optimisation --
    optimizer: str = "adam"      # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 5.0       # max gradient norm; 0 = none
    schedule: str = "none"       # none | noam | plateau | exponential
    warmup_steps: int = 1000     # noam
    decay: float = 0.5           # plateau factor / exponential gamma
    patience: int = 1            # plateau
    accum_grad: int = 1          # batches whose gradients are summed into one optimizer step
    amp: str = "none"            # none | bf16 | fp16: autocast of the network (losses in fp32)
    num_epochs: int = 20
    early_stop: int = 0          # stop after N epochs without a dev-loss improvement; 0: never
    seed: int = 42
    init_from: str = ""          # a checkpoint whose matching parameters start a fresh run
    init_from_rules: list[str] = field(default_factory=list)  # "REGEX->TEMPLATE" renames
    average_last: int = 5        # checkpoints averaged into averaged.pt at the end
    save_every_n: int = 0        # batches between mid-epoch checkpoints step-G.pt; 0: none
    keep_last_n: int = 3         # mid-epoch checkpoints kept (older ones removed); 0: all
    # -- output --
    exp_dir: str = "exp"
    tensorboard: bool = True
    log_every: int = 50          # batches between TensorBoard points

    #: keys that must be set (non-empty) before training: the data the config cannot know.
    REQUIRED: typing.ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.name == "base":
            self.name = getattr(type(self), "_registered_name", "base")

    def check_required(self) -> None:
        """:class:`ConfigError` naming the first required key left empty."""
        for key in self.REQUIRED:
            if getattr(self, key) in ("", None, []):
                raise ConfigError(f"config {self.name!r}: required key {key!r} is not set (set "
                                  f"it in the config file or with --set {key}=...)")

    # ------------------------------------------------------------------ dict / json / log

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration as JSON, atomically."""
        atomic_write_text(path, self.to_json() + "\n")

    def log(self, logger: logging.Logger | None = None) -> None:
        """Log every hyper-parameter, one per line."""
        logger = logger or log
        logger.info("experiment %s (%s)", self.name, type(self).__name__)
        for key, value in sorted(self.to_dict().items()):
            logger.info("  %s = %r", key, value)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict` (unknown keys: ``ValueError``)."""
        cfg = cls()
        bad = sorted(set(d) - set(_field_types(cls)))
        if bad:
            raise ValueError(f"unknown config keys {bad}; valid keys: {sorted(_field_types(cls))}")
        for k, v in d.items():
            setattr(cfg, k, v)
        return cfg


def register(name: str):
    """Class decorator: register an :class:`ExperimentConfig` subclass under ``name``; its
    ``name`` field defaults to ``name``."""
    def add(cls: type[ExperimentConfig]) -> type[ExperimentConfig]:
        if not (isinstance(cls, type) and issubclass(cls, ExperimentConfig)):
            raise TypeError(f"@register({name!r}) needs an ExperimentConfig subclass")
        if name in CONFIGS and CONFIGS[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"config {name!r} is already registered")
        cls._registered_name = name
        cls = dataclass(cls)
        CONFIGS[name] = cls
        return cls
    return add


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line naming the key or file."""


def _unknown(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, list_configs(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config {name!r}{hint} (registered: {', '.join(list_configs())}; "
                       "or give a .yaml/.json config file)")


def get_config(name: str) -> ExperimentConfig:
    """A fresh instance of the configuration registered as ``name`` (:class:`ConfigError` with
    a close-match suggestion for an unknown name)."""
    if name not in CONFIGS:
        raise _unknown(name)
    return CONFIGS[name]()


_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_config(name_or_file: str | os.PathLike) -> ExperimentConfig:
    """A registered configuration (by name) or a config file (``.yaml``/``.yml``/``.json``).

    A file holds a mapping: ``base`` (a registered name, or another config file relative to
    this one; default: the plain :class:`ExperimentConfig`), ``include`` (files of plain keys,
    relative to this one, applied in order after the base: settings several configs of a
    recipe share) and any fields, which override the base's; the ``*_kwargs`` dict fields are
    merged into the base's key by key. Values are checked against the fields' types. Errors
    are :class:`ConfigError` naming the file."""
    text = os.fspath(name_or_file)
    if text in CONFIGS:
        return get_config(text)
    path = Path(text)
    if path.suffix not in _CONFIG_SUFFIXES:
        raise _unknown(text)
    return _load_file(path, set())


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid config file: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys to values")
    return data


def _load_file(path: Path, seen: set[Path]) -> ExperimentConfig:
    real = path.resolve()
    if real in seen:
        raise ConfigError(f"{path}: config files inherit from each other in a circle")
    data = _read_mapping(path)
    base = data.pop("base", None)
    includes = data.pop("include", [])
    if base is None:
        cfg = ExperimentConfig()
    elif not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a config name or file, got {base!r}")
    elif base in CONFIGS:
        cfg = get_config(base)
    elif Path(base).suffix in _CONFIG_SUFFIXES:
        cfg = _load_file(path.parent / base, seen | {real})
    else:
        raise ConfigError(f"{path}: base: {_unknown(base)}") from None
    for inc in [includes] if isinstance(includes, str) else includes:
        inc_path = path.parent / str(inc)
        inc_data = _read_mapping(inc_path)
        if {"base", "include"} & set(inc_data):
            raise ConfigError(f"{inc_path}: an included file holds plain keys (no base/include)")
        _apply(cfg, inc_data, inc_path)
    _apply(cfg, data, path)
    return cfg


def _apply(cfg: ExperimentConfig, data: dict[str, Any], path: Path) -> None:
    """Set the keys of a config file on ``cfg`` (the ``*_kwargs`` dicts are merged)."""
    known = _field_types(type(cfg))
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        try:
            if key in KWARG_GROUPS.values():
                if not isinstance(value, dict):
                    raise ValueError(f"expected a mapping, got {value!r}")
                getattr(cfg, key).update(value)
            else:
                setattr(cfg, key, _typed(value, known[key]))
        except ValueError as e:
            raise ConfigError(f"{path}: {key}: {e}") from None


def _typed(value: Any, typ: Any) -> Any:
    """``value`` from a config file as type ``typ`` (YAML reads ``2e-3`` as a string)."""
    if value is None:
        return parse_value("none", typ)
    if typ == list[dict[str, Any]]:  # ``tasks``: a list of mappings, kept as they are
        if not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise ValueError(f"expected a list of mappings, got {value!r}")
        return [dict(v) for v in value]
    if isinstance(value, (list, tuple)):
        return parse_value(",".join(str(v) for v in value), typ)
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ in (int, bool, str) and isinstance(value, typ) and not (
            typ is int and isinstance(value, bool)):
        return value
    return parse_value(str(value), typ)


def list_configs() -> list[str]:
    return sorted(CONFIGS)


# --------------------------------------------------------------------------- overrides


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false/1/0/yes/no), got {text!r}")


def _parse_seq(text: str, item_type: Any) -> list:
    t = text.strip()
    if t[:1] in "([" and t[-1:] in ")]":
        t = t[1:-1]
    return [parse_value(x, item_type) for x in t.split(",") if x.strip()]


def _guess(text: str) -> Any:
    """Best-effort value for an untyped entry: bool, int, float, sequence, None, else str."""
    t = text.strip()
    if t.lower() in ("none", "null"):
        return None
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t[:1] in "([" or "," in t:
        return tuple(_guess(x) for x in _parse_seq(t, str))
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_value(text: str, typ: Any) -> Any:
    """Parse ``text`` as a value of type ``typ`` (a type hint)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return parse_value(text, rest[0]) if len(rest) == 1 else _guess(text)
    if typ is bool:
        return _parse_bool(text)
    if typ in (int, float, str):
        return typ(text.strip()) if typ is not str else text
    if origin in (tuple, list) or typ in (tuple, list):
        item = args[0] if args else Any
        seq = _parse_seq(text, item)
        return tuple(seq) if (origin or typ) is tuple else seq
    return _guess(text)


#: override prefix -> the dict field it sets (``model.hidden=128``, ``specaug.p=0.5``)
KWARG_GROUPS = {"model": "model_kwargs", "loss": "loss_kwargs", "specaug": "spec_augment_kwargs"}


def _kwarg_type(cfg: ExperimentConfig, group: str, key: str) -> Any:
    """Type of ``model.KEY`` / ``loss.KEY`` / ``specaug.KEY``: from its current value, else
    from the constructor's default."""
    current = getattr(cfg, KWARG_GROUPS[group])
    if key in current and current[key] is not None:
        return type(current[key])
    params = _constructor_params(cfg, group)
    if params is None:
        return Any
    if key not in params:
        owner = {"model": cfg.model, "loss": cfg.loss}.get(group, "SpecAugment")
        raise ValueError(f"unknown key {group}.{key} for {group} {owner!r}; "
                         f"valid: {sorted(f'{group}.{p}' for p in params)}")
    default = params[key].default
    if default is inspect.Parameter.empty or default is None:
        return Any
    return type(default)


def _constructor_params(cfg: ExperimentConfig, group: str) -> dict | None:
    if group == "loss":
        return dict(LOSSES[cfg.loss].options) if cfg.loss in LOSSES else None
    if group == "model":
        factory = MODELS.get(cfg.model)
        skip = {"self", "num_features", "num_classes"}
    else:
        factory = SpecAugment if SpecAugment is not None else TimeFreqMask
        skip = {"self"}
    if factory is None:
        return None
    sig = inspect.signature(factory)
    return {k: p for k, p in sig.parameters.items()
            if k not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _parse_kwarg(text: str, typ: Any) -> Any:
    if typ in (tuple, list):
        return typ(_guess(x) for x in _parse_seq(text, str))
    return _guess(text) if typ is Any else parse_value(text, typ)


def apply_overrides(cfg: ExperimentConfig, overrides: list[str] | tuple[str, ...]
                    ) -> ExperimentConfig:
    """Apply ``key=value`` strings to ``cfg`` in place (and return it); see the module doc."""
    known = _field_types(type(cfg))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = (s.strip() for s in item.split("=", 1))
        group, _, sub = key.partition(".")
        if sub and group in KWARG_GROUPS:
            getattr(cfg, KWARG_GROUPS[group])[sub] = _parse_kwarg(text,
                                                                  _kwarg_type(cfg, group, sub))
        elif key in known and not sub:
            try:
                setattr(cfg, key, parse_value(text, known[key]))
            except ValueError as e:
                raise ValueError(f"override {key}={text!r}: {e}") from e
        else:
            raise ValueError(f"unknown config key {key!r}; valid keys: {sorted(known)} "
                             f"(and model.<arg>, loss.<arg>, specaug.<arg>)")
    return cfg


# --------------------------------------------------------------------------- corpus-free bases
# A recipe names one of these as ``base`` in its config file and sets the data keys. The
# architecture defaults are those tuned on TIMIT (docs/results.md), a reasonable start for
# another corpus; the recipe's file overrides whatever its data needs.

_DATA_KEYS = ("train_cuts", "token_field")


@register("ctc_blstm")
class CtcBlstm(ExperimentConfig):
    """CTC over the tokens of ``tokens`` (+ blank): a 3x256 BLSTM on input frames stacked by 3,
    dropout 0.3, Adam with the dev-loss plateau schedule. Required: ``train_cuts``,
    ``token_field``, ``tokens``."""

    REQUIRED = (*_DATA_KEYS, "tokens")
    token_field: str = ""
    model: str = "blstm"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 256, "num_layers": 3, "dropout": 0.3,
                                 "subsample_after": 0})
    subsampling: int = 3
    schedule: str = "plateau"
    exp_dir: str = "exp/ctc_blstm"


@register("tdnn_lstm")
class TdnnLstmCtc(CtcBlstm):
    """As :class:`CtcBlstm` with a TDNN-LSTM encoder (4 TDNN layers, the last one strided by
    3, then a 2-layer BLSTM) and the Noam schedule."""

    model: str = "tdnn_lstm"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"tdnn_dim": 256, "dilations": (1, 1, 2, 3),
                                 "lstm_hidden": 256, "lstm_layers": 2, "bidirectional": True,
                                 "dropout": 0.3})
    schedule: str = "noam"
    exp_dir: str = "exp/tdnn_lstm"


@register("hmm_blstm")
class HmmBlstm(CtcBlstm):
    """A hybrid: the :class:`CtcBlstm` encoder over the pdfs of a Kaldi HMM topology (1-state
    by default; ``num_pdfs + 1`` outputs, column 0 unused), full-sum (``loss.mode=forward``),
    Viterbi or frame-CE training (``loss.mode=ce``; with ``loss.ali_topology`` on given
    alignments, e.g. a monophone GMM's from ``wfst-asr train-mono``). Decoded with the HCLG.
    Required: ``train_cuts``, ``token_field``, ``lang_dir``."""

    REQUIRED = (*_DATA_KEYS, "lang_dir")
    loss: str = "hmm"
    loss_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"topology": "hmm-1state", "mode": "forward"})
    exp_dir: str = "exp/hmm_blstm"


@register("mmi_blstm")
class MmiBlstm(CtcBlstm):
    """LF-MMI on the CTC topology (blank + tokens; decoded with the CTC HLG): the denominator
    is ``ctc_topo o P``, P the lang dir's phone LM (``<lang_dir>/lm.arpa``), leaky HMM 1e-5.
    Required: ``train_cuts``, ``token_field``, ``lang_dir``."""

    REQUIRED = (*_DATA_KEYS, "lang_dir")
    loss: str = "mmi"
    loss_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"topology": "ctc", "leaky_hmm_coefficient": 1e-5,
                                 "ctc_weight": 0.0})
    exp_dir: str = "exp/mmi_blstm"


@register("transducer_blstm")
class TransducerBlstm(CtcBlstm):
    """A transducer (``blstm_transducer``): the :class:`CtcBlstm` encoder projected to 256, a
    stateless prediction network (bigram context) and a 256-unit joiner, trained with the
    pruned RNN-T loss (``s_range`` 5, icefall's simple-loss scales) plus 0.3 x an auxiliary CTC
    loss on the encoder. Required: ``train_cuts``, ``token_field``, ``tokens``."""

    model: str = "blstm_transducer"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 256, "num_layers": 3, "dropout": 0.3,
                                 "subsample_after": 0, "encoder_dim": 256, "decoder_dim": 256,
                                 "joiner_dim": 256, "context_size": 2, "aux_ctc": True})
    loss: str = "transducer"
    loss_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"pruned": True, "s_range": 5, "simple_loss_scale": 0.5,
                                 "lm_only_scale": 0.25, "am_only_scale": 0.0,
                                 "ctc_scale": 0.3})
    exp_dir: str = "exp/transducer_blstm"


@register("segmental_blstm")
class SegmentalBlstm(CtcBlstm):
    """A discriminative segmental model (Tang et al. 2016; ``blstm_segmental``): the
    :class:`CtcBlstm` encoder giving log-softmax frame vectors over blank + the tokens, and a
    segment scorer over the tokens (segments up to ``max_duration`` = 30 output frames),
    trained end to end with the marginal log loss (needs only the transcripts). Other losses
    and the two-stage modes are ``loss.*`` overrides (:class:`~wfst_asr.train.criteria.
    SegmentalCriterion`). Required: ``train_cuts``, ``token_field``, ``tokens``."""

    model: str = "blstm_segmental"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 256, "num_layers": 3, "dropout": 0.3,
                                 "subsample_after": 0, "max_duration": 30,
                                 "input_dropout": 0.0, "output_dropout": 0.0})
    loss: str = "segmental"
    loss_kwargs: dict[str, Any] = field(default_factory=lambda: {"kind": "marginal_log"})
    exp_dir: str = "exp/segmental_blstm"


@register("attention_blstm")
class AttentionBlstm(CtcBlstm):
    """An attention encoder-decoder (``blstm_attention``): the :class:`CtcBlstm` encoder
    projected to 256, a 2-layer Transformer decoder (4 heads), trained with 0.7 x label-smoothed
    (0.1) cross-entropy + 0.3 x CTC on the encoder. Required: ``train_cuts``, ``token_field``,
    ``tokens``."""

    model: str = "blstm_attention"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 256, "num_layers": 3, "dropout": 0.3,
                                 "subsample_after": 0, "d_model": 256, "nhead": 4,
                                 "decoder_layers": 2, "dim_feedforward": 1024,
                                 "decoder_dropout": 0.1})
    loss: str = "attention"
    loss_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"ctc_weight": 0.3, "label_smoothing": 0.1})
    exp_dir: str = "exp/attention_blstm"


@register("dbd_blstm")
class DbdBlstm(CtcBlstm):
    """Differentiable beam-search decoding (Collobert et al. 2019) over ``H o G``, G the lang
    dir's n-gram (``loss.lm``, default ``lm.arpa``) with trainable log-weights, search beam 8,
    lattice beam 6, at most 1000 active states; meant to fine-tune a CTC model (``init_from``)
    at a lower learning rate. Required: ``train_cuts``, ``token_field``, ``lang_dir``."""

    REQUIRED = (*_DATA_KEYS, "lang_dir")
    loss: str = "dbd"
    loss_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"lm": "lm.arpa", "lm_scale": 1.0, "search_beam": 8.0,
                                 "output_beam": 6.0, "max_active_states": 1000})
    lr: float = 1e-4
    exp_dir: str = "exp/dbd_blstm"


@register("multitask_ctc_blstm")
class MultitaskCtcBlstm(CtcBlstm):
    """Several tasks sharing the :class:`CtcBlstm` encoder, each with its own output head,
    loss and data, sampled by weight; a task with a ``teacher`` is a distillation task
    (:mod:`wfst_asr.train.multitask`). The top-level data keys are the tasks' defaults.
    Required: ``tasks``."""

    REQUIRED = ("tasks",)
    exp_dir: str = "exp/multitask_ctc_blstm"


#: The corpus-free bases the library registers.
BASES = ("ctc_blstm", "tdnn_lstm", "hmm_blstm", "mmi_blstm", "transducer_blstm",
         "segmental_blstm", "attention_blstm", "dbd_blstm", "multitask_ctc_blstm")
