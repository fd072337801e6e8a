"""Experiment configurations: typed, named, inheritable dataclasses in a registry.

In the spirit of Lingvo's ``Params`` + model registry: an experiment is a subclass of
:class:`ExperimentConfig` that overrides field defaults, registered under a dotted name::

    @register("timit.ctc_blstm")
    class TimitCtcBlstm(ExperimentConfig):
        model: str = "blstm"
        model_kwargs: dict = field(default_factory=lambda: {"hidden": 256})

    @register("timit.ctc_tdnn_lstm")
    class TimitCtcTdnnLstm(TimitCtcBlstm):      # inherits everything else
        model: str = "tdnn_lstm"

    cfg = get_config("timit.ctc_blstm")
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
import inspect
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from wfst_asr.atomic import atomic_write_text

__all__ = [
    "CONFIGS",
    "ExperimentConfig",
    "apply_overrides",
    "get_config",
    "list_configs",
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
    num_features: int = 80
    num_classes: int = 0         # 0: max token id + 1 from `tokens`
    max_duration: float = 200.0
    max_cuts: int | None = None
    bucketing: bool = True
    num_buckets: int = 10
    num_workers: int = 0
    spec_augment: bool = False
    spec_augment_kwargs: dict[str, Any] = field(default_factory=dict)  # lhotse SpecAugment args
    # -- model and loss --
    model: str = "blstm"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    subsampling: int = 1
    loss: str = "ctc"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
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
    num_epochs: int = 20
    seed: int = 42
    average_last: int = 5        # checkpoints averaged into averaged.pt at the end
    # -- output --
    exp_dir: str = "exp"
    tensorboard: bool = True
    log_every: int = 50          # batches between TensorBoard points

    def __post_init__(self) -> None:
        if self.name == "base":
            self.name = getattr(type(self), "_registered_name", "base")

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


def get_config(name: str) -> ExperimentConfig:
    """A fresh instance of the configuration registered as ``name``."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; registered: {list_configs()}")
    return CONFIGS[name]()


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
    if group == "model":
        from wfst_asr.models import MODELS
        factory = MODELS.get(cfg.model)
        skip = {"self", "num_features", "num_classes"}
    elif group == "specaug":
        from wfst_asr.data.dataset import SpecAugment, TimeFreqMask
        factory = SpecAugment if SpecAugment is not None else TimeFreqMask
        skip = {"self"}
    else:
        from wfst_asr.train.build import LOSSES
        factory = LOSSES[cfg.loss][1]() if cfg.loss in LOSSES else None
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


# --------------------------------------------------------------------------- recipes


@register("timit.ctc_blstm")
class TimitCtcBlstm(ExperimentConfig):
    """TIMIT phone recognition: CTC over 48 phones (+ blank), 80-dim fbank, 3x256 BLSTM.

    Tang et al. (2016)'s 3-layer, 256-cell bidirectional LSTM, with the input frames stacked
    by 3 (30 ms output frames: TIMIT's phones last 80 ms on average), dropout 0.3 and a mild
    SpecAugment (no time warping; 2 frequency bands of <= 15 bins, 2 time masks of <= 20 frames).
    Tuned on the NLTK TIMIT sample (120 training utterances, about 6 minutes of speech), where
    small batches (30 s, 16 steps per epoch) and 30 epochs fit the 20-minute budget of the
    recipe on 2 CPU cores; with the full corpus, raise ``max_duration`` (e.g. 200).
    """

    train_cuts: str = "data/fbank/timit_cuts_train.jsonl.gz"
    dev_cuts: str = "data/fbank/timit_cuts_dev.jsonl.gz"
    tokens: str = "data/lang_phone/tokens.txt"
    token_field: str = "phones_48"
    cmvn: str = "data/fbank/cmvn.pt"
    model: str = "blstm"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 256, "num_layers": 3, "dropout": 0.3,
                                 "subsample_after": 0})
    subsampling: int = 3
    spec_augment: bool = True
    spec_augment_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"time_warp_factor": 0, "num_feature_masks": 2,
                                 "features_mask_size": 15, "num_frame_masks": 2,
                                 "frames_mask_size": 20})
    lr: float = 2e-3
    schedule: str = "plateau"
    num_epochs: int = 30
    max_duration: float = 30.0
    num_buckets: int = 4
    average_last: int = 5
    exp_dir: str = "exp/ctc_blstm"


@register("timit.ctc_tdnn_lstm")
class TimitCtcTdnnLstm(TimitCtcBlstm):
    """As :class:`TimitCtcBlstm` with a TDNN-LSTM encoder (4 TDNN layers, the last one strided
    by 3, then a 2-layer BLSTM) and the Noam schedule (warm-up over the first 10 epochs of the
    sample's 16 steps each)."""

    model: str = "tdnn_lstm"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"tdnn_dim": 256, "dilations": (1, 1, 2, 3),
                                 "lstm_hidden": 256, "lstm_layers": 2, "bidirectional": True,
                                 "dropout": 0.3})
    schedule: str = "noam"
    lr: float = 2e-3
    warmup_steps: int = 160
    exp_dir: str = "exp/ctc_tdnn_lstm"


# --------------------------------------------------------------------------- timit: hmm / mmi


@register("timit.hmm_blstm")
class TimitHmmBlstm(TimitCtcBlstm):
    """The classic hybrid: as :class:`TimitCtcBlstm` (same encoder, input stacking, SpecAugment,
    schedule), with 49 outputs over the pdfs of Kaldi's 1-state phone topology (48 pdfs, column 0
    unused, :func:`wfst_asr.losses.hmm.pdf_topo`), trained with frame cross-entropy against the
    alignments of a monophone GMM-HMM (``egs/timit/local/train_mono.py``, Kaldi's
    ``train_mono.sh`` on MFCC + deltas, 3-state topology, 10 ms frames; stage 3 of
    ``egs/timit/run.sh --loss hmm``): the cuts ``<gmm dir>/cuts_{train,dev}.jsonl.gz`` carry them
    in the supervision field ``gmm_ali``; each 30 ms output frame takes the label of its middle
    10 ms frame, its 3-state pdf folded to the phone's 1-state pdf (``loss.ali_topology``,
    :class:`wfst_asr.losses.hmm.AlignmentCeLoss`). Decoded with the 1-state HCLG on the scaled
    likelihoods ``log p(s|x) - prior_scale * log p(s)``, ``p(s)`` from the alignment counts
    (``egs/timit/local/decode_hmm.py``). Tuned on dev (docs/results.md): dropout 0.4 (HCLG dev
    PER 39.1-39.7% against 40.0-41.8% with 0.3: within noise on 20 utterances) and
    ``prior_scale`` 0.3 (of 0, 0.3, 0.5, 0.8, 1)."""

    lang_dir: str = "data/lang_phone"
    train_cuts: str = "exp/mono/cuts_train.jsonl.gz"
    dev_cuts: str = "exp/mono/cuts_dev.jsonl.gz"
    token_field: str = "gmm_ali"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 256, "num_layers": 3, "dropout": 0.4,
                                 "subsample_after": 0})
    num_classes: int = 0         # from the topology: num_pdfs + 1
    loss: str = "hmm"
    loss_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"topology": "hmm-1state", "mode": "ce",
                                 "ali_topology": "hmm-3state", "prior_scale": 0.3})
    exp_dir: str = "exp/hmm_blstm"


@register("timit.hmm_fullsum_blstm")
class TimitHmmFullsumBlstm(TimitCtcBlstm):
    """As :class:`TimitHmmBlstm`, but trained from scratch with the HMM full-sum (forward)
    criterion on the transcripts (no alignments; ``token_field`` ``phones_48``), one 30 ms
    output frame at least per phone; ``hmm-3state`` needs ``subsampling=1`` (3 frames per phone
    do not fit 30 ms frames).

    Tuned on dev (the sample's 120 training utterances): from scratch, the posterior HMM
    collapses onto its most frequent states (Viterbi alignments of training utterances give
    every phone 1 frame and one silence or closure 30+ frames; dev PER 74.6% with the CTC
    settings), hence the prior correction (``prior_scale`` 0.3, :mod:`wfst_asr.losses.hmm`)
    and an epoch-wise exponential learning-rate decay instead of the dev-loss plateau (the
    corrected loss moves with the prior, and the plateau rule halved the rate from epoch 5):
    dev PER 71.2%. Far from CTC and LF-MMI (about 41-43%) and from the GMM-aligned hybrid
    (:class:`TimitHmmBlstm`): the BLSTM fits whatever segmentation the full sum settles on, and
    nothing pulls it back to the acoustic one."""

    lang_dir: str = "data/lang_phone"
    num_classes: int = 0
    loss: str = "hmm"
    loss_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"topology": "hmm-1state", "mode": "forward",
                                 "prior_scale": 0.3})
    schedule: str = "exponential"
    decay: float = 0.9
    exp_dir: str = "exp/hmm_fullsum_blstm"


@register("timit.mmi_blstm")
class TimitMmiBlstm(TimitCtcBlstm):
    """As :class:`TimitCtcBlstm`, trained with LF-MMI on the CTC topology (blank + 48 phones,
    49 outputs; decoded with the CTC HLG): the denominator is ``ctc_topo o P`` with P the lang
    dir's train-only phone bigram (``lm.arpa``), leaky HMM 1e-5, no output L2 (the outputs
    are log-softmax, see :func:`wfst_asr.train.build._mmi_options`), no CTC term. On the
    sample's dev set: 40.7% PER with the HLG (CTC: 42.0%), and the same with
    ``loss.topology=hmm-1state`` and its HCLG. Greedy CTC decoding of these outputs means little
    (over 90% PER, mostly insertions): LF-MMI does not make blank the dominant output."""

    lang_dir: str = "data/lang_phone"
    num_classes: int = 0         # from the topology: blank + tokens
    loss: str = "mmi"
    loss_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"topology": "ctc", "leaky_hmm_coefficient": 1e-5,
                                 "ctc_weight": 0.0})
    exp_dir: str = "exp/mmi_blstm"


# --------------------------------------------------------------------------- timit: transducer


@register("timit.transducer_blstm")
class TimitTransducerBlstm(TimitCtcBlstm):
    """As :class:`TimitCtcBlstm` (same 3x256 BLSTM encoder on frames stacked by 3, dropout 0.3,
    SpecAugment, batches, plateau schedule), as a transducer (``blstm_transducer``): the
    encoder projects to 256, a stateless prediction network (bigram context, 256) and a
    256-unit joiner over blank + 48 phones, trained with the pruned RNN-T loss (``s_range`` 5,
    ``simple_loss_scale`` 0.5, the simple loss smoothed with ``lm_only_scale`` 0.25, as
    icefall's stateless transducers) plus 0.3 x an auxiliary CTC loss on the encoder output
    (``model.aux_ctc``, ``loss.ctc_scale``; icefall's ``--use-ctc``), with Adam at 4e-3.
    Tuned on the dev set of the NLTK sample (docs/results.md): the CTC recipe's 2e-3 left the
    transducer underfitted after 30 epochs (greedy dev PER 68%: mostly deletions); 4e-3 and the
    CTC loss each helped (57%, 60%), together 50%; 6e-3, a CTC weight of 0.6 and dropout 0.2
    did not. Decoded greedily, with modified beam search and with fast beam search in the
    trivial graph and in the phone LG (``egs/timit/local/decode_transducer.py``)."""

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
    lr: float = 4e-3
    exp_dir: str = "exp/transducer_blstm"
