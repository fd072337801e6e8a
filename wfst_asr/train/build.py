"""Everything an experiment configuration builds: token table, model, loss, data loaders.

One place for the rules, used by ``wfst-asr train``, the recipes' decoding scripts and the
benchmarks:

* :func:`token_table`: ``tokens.txt`` -> ``{symbol: id}`` (ids from 1; 0 is the blank);
* :func:`build_model_and_loss`: the network and the criterion of a configuration (sets
  ``cfg.num_classes`` from the token table when it is 0);
* :func:`build_model_from_config`: the network alone, from a config object or the ``dict``
  saved in ``config.json`` (decoding);
* :func:`make_loader`: a lhotse-sampled ``DataLoader`` over a cuts file, as training uses it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from wfst_asr.train.config import ExperimentConfig

__all__ = ["LOSSES", "build_model_and_loss", "build_model_from_config", "make_loader",
           "register_loss", "token_table"]

#: loss name (``cfg.loss``) -> ``(builder, signature source)``. ``builder(cfg, model) ->
#: nn.Module`` is the criterion the :class:`~wfst_asr.train.Trainer` calls as
#: ``loss_fn(model_output, out_lens, token_seqs) -> (loss, info)``; the signature source is a
#: zero-argument function returning the class or function whose parameters are the valid
#: ``loss.KEY`` overrides (``cfg.loss_kwargs``; lazy, so that no loss module is imported early).
LOSSES: dict[str, tuple[Callable[[ExperimentConfig, nn.Module], nn.Module], Callable]] = {}


def register_loss(name: str, signature: Callable):
    """Decorator: register ``builder(cfg, model) -> criterion`` as the loss ``name``; the
    parameters of ``signature()`` are its ``loss.KEY`` overrides (see :data:`LOSSES`)."""
    def add(builder: Callable[[ExperimentConfig, nn.Module], nn.Module]):
        LOSSES[name] = (builder, signature)
        return builder
    return add


def _ctc_class():
    from wfst_asr.losses import CtcLoss

    return CtcLoss


def _build_ctc(cfg: ExperimentConfig, model: nn.Module) -> nn.Module:
    return _ctc_class()(**{"reduction": "sum", **cfg.loss_kwargs})


register_loss("ctc", _ctc_class)(_build_ctc)


def token_table(path: str) -> dict[str, int]:
    """``{symbol: id}`` of the tokens in ``path`` (``tokens.txt``; ids from 1, blank = 0)."""
    from wfst_asr.graphs.lang import read_token_list

    return {tok: i for i, tok in enumerate(read_token_list(path), start=1)}


def build_model_from_config(cfg: ExperimentConfig | dict[str, Any]) -> nn.Module:
    """The network of ``cfg`` (an :class:`ExperimentConfig` or its ``to_dict()``), untrained.

    ``cfg.num_classes`` must be set (> 0); the configuration's ``subsampling`` is passed to the
    model unless ``model_kwargs`` sets it.
    """
    from wfst_asr.models import build_model

    c = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    if int(c["num_classes"]) <= 0:
        raise ValueError("num_classes is not set in the configuration (set it or `tokens`)")
    kwargs = dict(c.get("model_kwargs") or {})
    kwargs.setdefault("subsampling", c.get("subsampling", 1))
    return build_model(c["model"], c["num_features"], c["num_classes"],
                       num_tokens=c["num_classes"], **kwargs)


def build_model_and_loss(cfg: ExperimentConfig
                         ) -> tuple[nn.Module, nn.Module, dict[str, int] | None]:
    """``(model, loss, token table or None)`` of ``cfg``: the loss registered as ``cfg.loss``
    (:data:`LOSSES`); CTC sums over utterances (``reduction="sum"``, the trainer divides by
    frames) unless ``loss_kwargs`` says else."""
    table = token_table(cfg.tokens) if cfg.tokens else None
    if cfg.num_classes <= 0 and cfg.loss in _NUM_OUTPUTS:  # hmm / mmi: from the topology
        cfg.num_classes = _NUM_OUTPUTS[cfg.loss](cfg)
    if cfg.num_classes <= 0:
        if table is None:
            raise ValueError("set num_classes or tokens")
        cfg.num_classes = max(table.values()) + 1
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; registered: {sorted(LOSSES)}")
    model = build_model_from_config(cfg)
    if table is not None and cfg.loss not in _NUM_OUTPUTS:  # ctc, transducer: blank + tokens
        top = max(table.values())
        _check_num_classes(cfg, model, top + 1,
                           f"the token table {cfg.tokens} (blank 0 + ids up to {top})")
    loss = LOSSES[cfg.loss][0](cfg, model)
    return model, loss, table


def _spec_augment(cfg: ExperimentConfig):
    """``None``, ``True`` (defaults) or the augmenter built from ``spec_augment_kwargs``."""
    if not cfg.spec_augment:
        return None
    if not cfg.spec_augment_kwargs:
        return True
    from wfst_asr.data.dataset import SpecAugment, TimeFreqMask

    factory = SpecAugment if SpecAugment is not None else TimeFreqMask
    return factory(**cfg.spec_augment_kwargs)


def make_loader(cfg: ExperimentConfig, cuts_path: str, train: bool, rank: int = 0,
                world: int = 1):
    """A ``DataLoader`` over ``cuts_path`` with the configuration's batching (bucketing,
    ``max_duration``, shuffling and SpecAugment only when ``train``; one shard per rank)."""
    from lhotse import CutSet

    from wfst_asr.data import AsrDataset, make_dataloader, make_sampler

    cuts = CutSet.from_file(cuts_path)
    sampler = make_sampler(cuts, cfg.max_duration, shuffle=train, bucketing=cfg.bucketing,
                           num_buckets=cfg.num_buckets, seed=cfg.seed, world_size=world,
                           rank=rank, max_cuts=cfg.max_cuts)
    dataset = AsrDataset(cmvn=cfg.cmvn or None, spec_augment=_spec_augment(cfg) if train else None)
    return make_dataloader(dataset, sampler, num_workers=cfg.num_workers)


# --------------------------------------------------------------------------- hmm / mmi losses
# Both read what they need from the configuration: the tokens (``cfg.tokens``, else
# ``<lang_dir>/tokens.txt``: transcripts are token ids, so no lexicon is needed) and, for
# LF-MMI, the phone LM P (``<lang_dir>/<phone_lm>``, an ARPA file: the lang dir's train-only
# phone bigram ``lm.arpa``). The network must have the outputs the topology labels: ``num_pdfs +
# 1`` for a Kaldi HMM topology (column 0 unused, :func:`wfst_asr.losses.hmm.pdf_topo`), blank +
# tokens for a CTC one: ``num_classes = 0`` takes that number (:func:`build_model_and_loss`),
# another value is checked at build time (ValueError saying what to set).


def _hmm_options(topology: str = "hmm-1state", mode: str = "forward",
                 transition_scale: float = 1.0, self_loop_scale: float = 1.0,
                 prior_scale: float = 0.0, prior_momentum: float = 0.99,
                 reduction: str = "sum", use_double_scores: bool = False,
                 ali_topology: str = "") -> dict[str, Any]:
    """``loss.KEY`` options of the ``hmm`` loss (:class:`~wfst_asr.losses.HmmLoss`).

    topology: a Kaldi HMM topology of :func:`~wfst_asr.graphs.topo.make_topology`
    (``hmm-1state``: 1 pdf per token, ``hmm-3state``: 3, ``chain``: 2); the network has
    ``num_pdfs + 1`` outputs. mode: ``forward`` (full sum), ``viterbi`` or ``ce`` (frame
    cross-entropy against the current model's forced alignments). transition_scale,
    self_loop_scale: scales of H's transition log-probabilities (training and the decoding
    HCLG). prior_scale, prior_momentum: the prior correction of full-sum training from scratch
    (:mod:`wfst_asr.losses.hmm`; decoding subtracts the same ``prior_scale * log prior``).
    ali_topology: non-empty (mode ``ce`` only): the targets (``cfg.token_field``) are given
    alignments, one pdf of this Kaldi topology per input frame (e.g. a monophone GMM's,
    ``egs/timit/local/train_mono.py``), trained with :class:`~wfst_asr.losses.hmm.
    AlignmentCeLoss` at the model's output rate; ``prior_scale`` is then only the decoding
    prior's scale (the prior of the alignment counts)."""
    return dict(locals())


def _mmi_options(topology: str = "ctc", leaky_hmm_coefficient: float = 1e-5,
                 l2_regularize: float = 0.0, ctc_weight: float = 0.0, aux_loss: str = "auto",
                 den_lm_scale: float = 1.0, phone_lm: str = "lm.arpa",
                 transition_scale: float = 1.0, self_loop_scale: float = 1.0,
                 reduction: str = "sum", use_double_scores: bool = False) -> dict[str, Any]:
    """``loss.KEY`` options of the ``mmi`` loss (:class:`~wfst_asr.losses.MmiLoss`).

    topology: ``ctc`` (blank + tokens: decoded with the CTC HLG), ``ctc-modified`` or a Kaldi
    HMM topology (``chain``, ...: ``num_pdfs + 1`` outputs, decoded with the HCLG).
    leaky_hmm_coefficient, l2_regularize, ctc_weight, aux_loss: as :class:`MmiLoss`.
    den_lm_scale: P's scores are multiplied by it (numerators and denominator). phone_lm: the
    ARPA file of P, relative to ``lang_dir`` (made deterministic and epsilon-free with
    :func:`~wfst_asr.graphs.lm.ngram_acceptor`).

    The encoders output ``log_softmax``, where Kaldi's chain models feed raw outputs. LF-MMI
    does not see the difference: adding any per-frame constant to every output adds the same
    amount to the numerator and the denominator totals, so the loss and its gradient w.r.t.
    the raw outputs are unchanged (the gradient ``den - num`` posteriors sums to 0 per frame,
    which log_softmax's Jacobian passes through as is). Only ``l2_regularize`` differs: on
    log-probs it penalises small probabilities, not large outputs, hence 0 by default; the
    CTC / CE terms take ``log_softmax`` of the outputs anyway."""
    return dict(locals())


_LOSS_OPTIONS = {"hmm": _hmm_options, "mmi": _mmi_options}


def _cfg_dict(cfg: ExperimentConfig | dict[str, Any]) -> dict[str, Any]:
    return cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg


def loss_options(cfg: ExperimentConfig | dict[str, Any]) -> dict[str, Any]:
    """The options of ``cfg``'s hmm / mmi loss: the defaults updated with ``loss_kwargs``
    (ValueError naming the valid keys for an unknown one, or for a bad topology)."""
    from wfst_asr.graphs.topo import TOPOLOGIES

    c = _cfg_dict(cfg)
    fn = _LOSS_OPTIONS.get(c["loss"])
    if fn is None:
        raise ValueError(f"loss {c['loss']!r} has no topology options (hmm, mmi)")
    kwargs = dict(c.get("loss_kwargs") or {})
    valid = list(inspect.signature(fn).parameters)
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ValueError(f"unknown option(s) {bad} of loss {c['loss']!r}; valid: "
                         f"{[f'loss.{k}' for k in valid]}")
    opts = fn(**kwargs)
    allowed = [t for t in TOPOLOGIES if c["loss"] == "mmi" or not t.startswith("ctc")]
    if opts["topology"] not in allowed:
        raise ValueError(f"loss {c['loss']!r}: topology must be one of {allowed}, got "
                         f"{opts['topology']!r}")
    return opts


def _tokens_file(c: dict[str, Any]) -> Path:
    if c.get("tokens"):
        return Path(c["tokens"])
    if c.get("lang_dir"):
        return Path(c["lang_dir"]) / "tokens.txt"
    raise ValueError(f"loss {c['loss']!r} needs the tokens: set tokens or lang_dir")


def loss_topology(cfg: ExperimentConfig | dict[str, Any]):
    """The :class:`~wfst_asr.graphs.topo.Topology` of ``cfg``'s hmm / mmi loss over its tokens
    (``cfg`` may be the ``dict`` of ``config.json``: decoding builds the matching graph)."""
    from wfst_asr.graphs.topo import make_topology

    c = _cfg_dict(cfg)
    opts = loss_options(c)
    num_tokens = len(token_table(str(_tokens_file(c))))
    return make_topology(opts["topology"], num_tokens, transition_scale=opts["transition_scale"],
                         self_loop_scale=opts["self_loop_scale"])


def _check_num_classes(cfg: ExperimentConfig, model: nn.Module, expected: int, what: str
                       ) -> None:
    from wfst_asr.models import check_output_dim

    try:
        if cfg.num_classes != expected:
            raise ValueError(f"num_classes is {cfg.num_classes}")
        check_output_dim(model, expected)
    except ValueError as e:
        raise ValueError(f"loss {cfg.loss!r}: {what} needs {expected} network outputs, but "
                         f"the model has another number ({e}): set num_classes={expected} "
                         f"(--set num_classes={expected})") from None


def _build_hmm(cfg: ExperimentConfig, model: nn.Module) -> nn.Module:
    from wfst_asr.losses import HmmLoss

    opts = loss_options(cfg)
    topo = loss_topology(cfg)
    loss = HmmLoss(topo, mode=opts["mode"], reduction=opts["reduction"],
                   use_double_scores=opts["use_double_scores"],
                   prior_scale=opts["prior_scale"], prior_momentum=opts["prior_momentum"])
    _check_num_classes(cfg, model, loss.num_outputs,
                       f"topology {topo.name} over {topo.num_tokens} tokens ({topo.num_pdfs} "
                       "pdfs + the unused column 0)")
    if opts["ali_topology"]:
        return alignment_criterion(cfg, loss, topo, model)
    return loss


def alignment_criterion(cfg: ExperimentConfig | dict[str, Any], loss: nn.Module, topo,
                        model: nn.Module | None = None) -> nn.Module:
    """The :class:`~wfst_asr.losses.hmm.AlignmentCeLoss` of ``cfg`` (``loss.ali_topology``
    set, ``loss.mode=ce``) around ``loss``; the subsampling is the model's (else ``cfg``'s)."""
    from wfst_asr.graphs.topo import make_topology
    from wfst_asr.losses.hmm import AlignmentCeLoss, pdf_map

    c = _cfg_dict(cfg)
    opts = loss_options(c)
    if opts["mode"] != "ce":
        raise ValueError(f"loss.ali_topology={opts['ali_topology']!r} needs loss.mode=ce, got "
                         f"{opts['mode']!r}")
    src = make_topology(opts["ali_topology"], topo.num_tokens)
    sub = getattr(model, "subsampling_factor", None) or int(c.get("subsampling", 1))
    return AlignmentCeLoss(loss, pdf_map(src, topo), subsampling=int(sub))


def _build_mmi(cfg: ExperimentConfig, model: nn.Module) -> nn.Module:
    from wfst_asr.graphs.lm import ngram_acceptor
    from wfst_asr.graphs.training import MmiTrainingGraphCompiler
    from wfst_asr.losses import MmiLoss, pdf_topo

    opts = loss_options(cfg)
    if not cfg.lang_dir:
        raise ValueError("loss 'mmi' needs lang_dir (the phone LM P is <lang_dir>/"
                         f"{opts['phone_lm']})")
    arpa = Path(cfg.lang_dir) / opts["phone_lm"]
    if not arpa.is_file():
        raise FileNotFoundError(f"loss 'mmi': the phone LM {arpa} is not there (an ARPA file; "
                                "the TIMIT recipe writes it in stage 2)")
    topo = loss_topology(cfg)
    P = ngram_acceptor(arpa, _tokens_file(cfg.to_dict()))
    H = topo.H if topo.is_ctc else pdf_topo(topo)
    compiler = MmiTrainingGraphCompiler(P, topo=H, lm_scale=opts["den_lm_scale"])
    loss = MmiLoss(compiler, leaky_hmm_coefficient=opts["leaky_hmm_coefficient"],
                   l2_regularize=opts["l2_regularize"], ctc_weight=opts["ctc_weight"],
                   aux_loss=opts["aux_loss"], reduction=opts["reduction"],
                   use_double_scores=opts["use_double_scores"])
    what = (f"topology {topo.name} over {topo.num_tokens} tokens (blank + tokens)" if topo.is_ctc
            else f"topology {topo.name} over {topo.num_tokens} tokens ({topo.num_pdfs} pdfs + "
                 "the unused column 0)")
    _check_num_classes(cfg, model, loss.num_outputs, what)
    return loss


def _num_outputs(cfg: ExperimentConfig) -> int:
    """The network outputs of ``cfg``'s hmm / mmi topology (``num_classes`` when it is 0)."""
    topo = loss_topology(cfg)
    return topo.num_tokens + 1 if topo.is_ctc else topo.num_pdfs + 1


#: loss -> function(cfg) giving the network output dimension its topology needs, used by
#: :func:`build_model_and_loss` when ``cfg.num_classes`` is 0.
_NUM_OUTPUTS = {"hmm": _num_outputs, "mmi": _num_outputs}
register_loss("hmm", lambda: _hmm_options)(_build_hmm)
register_loss("mmi", lambda: _mmi_options)(_build_mmi)


# --------------------------------------------------------------------------- transducer loss
# The model computes the encoder output (``forward(feats, lens) -> (encoder_out, out_lens)``,
# e.g. ``blstm_transducer``); the criterion runs the model's transducer head on it
# (``model.head``: prediction network, joiner, simple projections; submodules of the model, so
# the trainer's optimizer and DDP cover them). ``loss.KEY``: the arguments of TransducerLoss
# and ``ctc_scale`` (an auxiliary CTC loss on the model's ``ctc_output``, model.aux_ctc=true).


def _transducer_options():
    """A callable whose signature is the ``loss.KEY`` options of the ``transducer`` loss:
    :class:`~wfst_asr.losses.TransducerLoss`'s arguments plus ``ctc_scale`` (default 0)."""
    import inspect

    from wfst_asr.losses import TransducerLoss

    def options(**kwargs):
        return kwargs

    params = [p for n, p in inspect.signature(TransducerLoss).parameters.items()
              if n != "self"]
    params.append(inspect.Parameter("ctc_scale", inspect.Parameter.KEYWORD_ONLY, default=0.0))
    options.__signature__ = inspect.Signature(params)
    return options


class TransducerCriterion(nn.Module):
    """``loss_fn(encoder_out, out_lens, token_seqs) -> (loss, info)`` of the trainer for a
    transducer model: ``model.head(encoder_out, out_lens, token_seqs, loss)`` with a
    :class:`~wfst_asr.losses.TransducerLoss` (pruned: ``simple_loss_scale * simple + pruned``,
    as icefall trains), plus ``ctc_scale`` times the CTC loss of ``model.ctc_log_probs`` (an
    auxiliary CTC output on the encoder, icefall's ``--use-ctc``) when ``ctc_scale > 0``
    (``info["ctc_loss"]``).

    The model is referenced, not registered (``parameters()`` is empty, as for CTC). Parameters
    the configured loss does not use (the simple projections of the full loss, a CTC output
    with ``ctc_scale`` 0) are added with weight 0, so that every parameter gets a gradient
    (DDP needs one for each)."""

    def __init__(self, model: nn.Module, loss: nn.Module, ctc_scale: float = 0.0) -> None:
        super().__init__()
        head = getattr(model, "head", None)
        if head is None:
            raise ValueError(f"loss 'transducer' needs a transducer model (with a .head, e.g. "
                             f"blstm_transducer), got {type(model).__name__}")
        ctc_out = getattr(model, "ctc_output", None)
        if ctc_scale < 0 or (ctc_scale > 0 and ctc_out is None):
            raise ValueError(f"loss.ctc_scale={ctc_scale} needs ctc_scale >= 0 and, when > 0, a "
                             f"model with a CTC output (model.aux_ctc=true)")
        self.loss = loss
        self.ctc_scale = float(ctc_scale)
        self.ctc = None
        if self.ctc_scale > 0:
            from wfst_asr.losses import CtcLoss

            self.ctc = CtcLoss(reduction=loss.reduction,
                               use_double_scores=getattr(loss, "use_double_scores", False))
        unused = [] if loss.pruned else [head.simple_am_proj, head.simple_lm_proj]
        if ctc_out is not None and self.ctc is None:
            unused.append(ctc_out)
        self.__dict__["_model"] = model  # not a submodule
        self.__dict__["_unused"] = [p for m in unused for p in m.parameters()]

    @property
    def reduction(self) -> str:
        return self.loss.reduction

    def forward(self, encoder_out, out_lens, token_seqs):
        model = self.__dict__["_model"]
        loss, info = model.head(encoder_out, out_lens, token_seqs, self.loss)
        if self.ctc is not None:
            ctc, ctc_info = self.ctc(model.ctc_log_probs(encoder_out), out_lens, token_seqs)
            loss = loss + self.ctc_scale * ctc.to(loss.dtype)
            info["ctc_loss"] = float(ctc.detach().sum())
            info["ctc_excluded"] = ctc_info["num_excluded"]
        unused = self.__dict__["_unused"]
        if unused:
            loss = loss + 0.0 * sum(p.sum() for p in unused).to(loss.dtype)
        return loss, info


def _build_transducer(cfg: ExperimentConfig, model: nn.Module) -> nn.Module:
    from wfst_asr.losses import TransducerLoss

    kwargs = {"reduction": "sum", **cfg.loss_kwargs}
    ctc_scale = kwargs.pop("ctc_scale", 0.0)
    return TransducerCriterion(model, TransducerLoss(**kwargs), ctc_scale=ctc_scale)


register_loss("transducer", _transducer_options)(_build_transducer)
