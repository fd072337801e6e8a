"""The loss registry: ``cfg.loss`` name -> the criterion the trainer calls.

Each entry is a :class:`LossSpec` built once, at registration, from the loss class's
constructor signature: its parameters (less the ones the builder supplies, such as a topology
or a graph compiler) plus a few declared extras are the valid ``loss.KEY`` overrides
(``cfg.loss_kwargs``), with their defaults and types. Nothing repeats a constructor's argument
list by hand.

The criterion is called by :class:`~wfst_asr.train.Trainer` as
``loss_fn(model_output [B, T, V], out_lens [B], targets) -> (loss, info)``.

=============  =======================================  ==================================
name           class (``loss.KEY`` = its arguments)     extras
=============  =======================================  ==================================
``ctc``        :class:`~wfst_asr.losses.CtcLoss`        lexicon
``hmm``        :class:`~wfst_asr.losses.HmmLoss`        topology, transition_scale,
                                                        self_loop_scale, ali_topology
``mmi``        :class:`~wfst_asr.losses.MmiLoss`        topology, den_lm_scale, phone_lm,
                                                        transition_scale, self_loop_scale
``transducer`` :class:`~wfst_asr.losses.TransducerLoss` ctc_scale
``segmental``  :class:`~wfst_asr.losses.segmental.       frame_ce, freeze_encoder
               SegmentalLoss`
``attention``  :class:`~wfst_asr.losses.attention.
               AttentionLoss`
``dbd``        :class:`~wfst_asr.losses.dbd.DbdLoss`    lm, lm_scale, train_lm, lexicon
=============  =======================================  ==================================

``reduction`` defaults to ``"sum"`` for every loss (the trainer divides by frames).

``loss.lexicon`` (ctc): a Kaldi ``lexicon.txt`` (relative to ``lang_dir``, or a path): the
transcripts (``cfg.token_field``) are then words, mapped through ``<lang_dir>/words.txt``, and
each utterance's CTC graph allows every pronunciation of its words (:func:`target_table` gives
the trainer the word table).

hmm / mmi read their tokens from ``cfg.tokens`` (else ``<lang_dir>/tokens.txt``: transcripts are
token ids, no lexicon needed) and LF-MMI its phone LM P from ``<lang_dir>/<phone_lm>`` (ARPA).
The network must have the outputs the topology labels: ``num_pdfs + 1`` for a Kaldi HMM
topology (column 0 unused, :func:`wfst_asr.graphs.topo.pdf_topo`), blank + tokens for a CTC
one; ``num_classes = 0`` takes that number (:func:`num_outputs`), another value is checked at
build time (one line saying what to set).

Every function here takes the configuration as an :class:`~wfst_asr.train.ExperimentConfig`
or as the ``dict`` saved in ``config.json`` (decoding rebuilds the matching graphs from it).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wfst_asr.fsa import SymbolTable
from wfst_asr.graphs.lang import read_lexicon, read_token_list
from wfst_asr.graphs.lm import ngram_acceptor
from wfst_asr.graphs.topo import TOPOLOGIES, Topology, make_topology, pdf_map, pdf_topo
from wfst_asr.graphs.training import CtcTrainingGraphCompiler, MmiTrainingGraphCompiler
from wfst_asr.losses import CtcLoss, HmmLoss, MmiLoss, TransducerLoss
from wfst_asr.losses.attention import AttentionLoss
from wfst_asr.losses.dbd import DbdLoss
from wfst_asr.losses.hmm import AlignmentCeLoss
from wfst_asr.losses.segmental import SegmentalLoss
from wfst_asr.models import check_output_dim

__all__ = ["LOSSES", "AttentionCriterion", "LossSpec", "SegmentalCriterion", "TransducerCriterion",
           "alignment_criterion", "build_loss", "get_loss", "loss_options", "loss_topology",
           "num_outputs", "register_loss", "target_table"]

Builder = Callable[[dict[str, Any], nn.Module, dict[str, Any]], nn.Module]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
      name: the ``cfg.loss`` value.
      cls: the loss class whose constructor gives the options.
      options: ``{key: inspect.Parameter}``, the valid ``loss.KEY`` with their defaults.
      build: ``build(cfg_dict, model, options) -> criterion``.
      topologies: the ``loss.topology`` values allowed (empty: the loss has none).
    """

    name: str
    cls: type
    options: dict[str, inspect.Parameter]
    build: Builder
    topologies: tuple[str, ...] = field(default=())


#: ``cfg.loss`` -> :class:`LossSpec`.
LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, cls: type, *, supplied: tuple[str, ...] = (),
                  extra: dict[str, Any] | None = None, topologies: tuple[str, ...] = ()
                  ) -> Callable[[Builder], Builder]:
    """Decorator: register ``build(cfg_dict, model, options)`` as loss ``name``.

    The options are ``cls``'s constructor parameters except ``supplied`` (those the builder
    passes itself), plus ``extra`` (``{key: default}``); ``reduction`` defaults to ``"sum"``.
    """
    def add(build: Builder) -> Builder:
        opts: dict[str, inspect.Parameter] = {}
        for key, p in inspect.signature(cls).parameters.items():
            if key in supplied or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            default = "sum" if key == "reduction" else p.default
            opts[key] = p.replace(kind=p.KEYWORD_ONLY, default=default)
        for key, default in (extra or {}).items():
            opts[key] = inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default)
        LOSSES[name] = LossSpec(name, cls, opts, build, tuple(topologies))
        return build
    return add


def _cfg_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def get_loss(name: str) -> LossSpec:
    """The :class:`LossSpec` of ``name``; ValueError listing the registered ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; registered: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def loss_options(cfg: Any) -> dict[str, Any]:
    """The options of ``cfg``'s loss: the defaults updated with ``loss_kwargs`` (ValueError
    naming the valid keys for an unknown one, or the valid topologies for a bad one)."""
    c = _cfg_dict(cfg)
    spec = get_loss(c["loss"])
    kwargs = dict(c.get("loss_kwargs") or {})
    bad = sorted(set(kwargs) - set(spec.options))
    if bad:
        raise ValueError(f"unknown option(s) {bad} of loss {spec.name!r}; valid: "
                         f"{[f'loss.{k}' for k in spec.options]}")
    missing = [k for k, p in spec.options.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise ValueError(f"loss {spec.name!r} needs {[f'loss.{k}' for k in missing]}")
    opts = {k: kwargs.get(k, p.default) for k, p in spec.options.items()}
    if spec.topologies and opts["topology"] not in spec.topologies:
        raise ValueError(f"loss {spec.name!r}: topology must be one of {list(spec.topologies)}, "
                         f"got {opts['topology']!r}")
    return opts


def _tokens_file(c: dict[str, Any]) -> Path:
    if c.get("tokens"):
        return Path(c["tokens"])
    if c.get("lang_dir"):
        return Path(c["lang_dir"]) / "tokens.txt"
    raise ValueError(f"loss {c['loss']!r} needs the tokens: set tokens or lang_dir")


def loss_topology(cfg: Any) -> Topology:
    """The :class:`~wfst_asr.graphs.topo.Topology` of ``cfg``'s hmm / mmi loss over its
    tokens (decoding builds the matching graph from it)."""
    c = _cfg_dict(cfg)
    opts = loss_options(c)
    if "topology" not in opts:
        raise ValueError(f"loss {c['loss']!r} has no topology option")
    num_tokens = len(read_token_list(_tokens_file(c)))
    return make_topology(opts["topology"], num_tokens, transition_scale=opts["transition_scale"],
                         self_loop_scale=opts["self_loop_scale"])


def num_outputs(cfg: Any) -> int | None:
    """The network outputs that ``cfg``'s loss topology fixes (hmm, mmi: ``num_pdfs + 1`` or
    blank + tokens), None for a loss without a topology (ctc, transducer: blank + tokens of
    the token table)."""
    c = _cfg_dict(cfg)
    if not get_loss(c["loss"]).topologies:
        return None
    topo = loss_topology(c)
    return topo.num_tokens + 1 if topo.is_ctc else topo.num_pdfs + 1


def check_num_classes(c: dict[str, Any], model: nn.Module, expected: int, what: str) -> None:
    """ValueError in one line when the model's output size is not ``expected``."""
    try:
        if int(c["num_classes"]) != expected:
            raise ValueError(f"num_classes is {c['num_classes']}")
        check_output_dim(model, expected)
    except ValueError as e:
        raise ValueError(f"loss {c['loss']!r}: {what} needs {expected} network outputs, but "
                         f"the model has another number ({e}): set num_classes={expected} "
                         f"(--set num_classes={expected})") from None


def build_loss(cfg: Any, model: nn.Module) -> nn.Module:
    """The criterion of ``cfg`` for ``model`` (``cfg.num_classes`` must be set)."""
    c = _cfg_dict(cfg)
    return get_loss(c["loss"]).build(c, model, loss_options(c))


def _topology_what(topo: Topology) -> str:
    if topo.is_ctc:
        return f"topology {topo.name} over {topo.num_tokens} tokens (blank + tokens)"
    return (f"topology {topo.name} over {topo.num_tokens} tokens ({topo.num_pdfs} pdfs + the "
            "unused column 0)")


def _in_lang_dir(c: dict[str, Any], name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or not c.get("lang_dir") else Path(c["lang_dir"]) / p


def _word_table(c: dict[str, Any]) -> dict[str, int]:
    if not c.get("lang_dir"):
        raise ValueError("loss.lexicon needs lang_dir (its words.txt maps the word transcripts)")
    words = SymbolTable.from_file(Path(c["lang_dir"]) / "words.txt")
    return {str(s): int(i) for s, i in words.items()}


def on_words(cfg: Any) -> bool:
    """The loss takes word transcripts through a lexicon (``ctc`` / ``dbd`` with
    ``loss.lexicon``): they map through the lang dir's ``words.txt``."""
    c = _cfg_dict(cfg)
    return c["loss"] in ("ctc", "dbd") and bool(loss_options(c)["lexicon"])


def target_table(cfg: Any) -> dict[str, int] | None:
    """``{symbol: id}`` that maps the transcripts (``cfg.token_field``) to the ids the loss
    takes: the word table of the lang dir for words (:func:`on_words`), else the token table
    (``cfg.tokens``, ids from 1), or None."""
    c = _cfg_dict(cfg)
    if on_words(c):
        return _word_table(c)
    if c.get("tokens"):
        return {t: i for i, t in enumerate(read_token_list(c["tokens"]), start=1)}
    return None


# --------------------------------------------------------------------------- ctc
@register_loss("ctc", CtcLoss, supplied=("compiler",), extra={"lexicon": ""})
def _build_ctc(c: dict[str, Any], model: nn.Module, opts: dict[str, Any]) -> nn.Module:
    opts = dict(opts)
    lexicon = opts.pop("lexicon")
    if not lexicon:
        return CtcLoss(**opts)
    prons: dict[int, list[list[int]]] = {}
    for word, toks, _logp in _lexicon_ids(c, lexicon):
        prons.setdefault(word, []).append(toks)
    compiler = CtcTrainingGraphCompiler(prons, modified=opts["modified"])
    return CtcLoss(**opts, compiler=compiler)


def _lexicon_ids(c: dict[str, Any], lexicon: str) -> list[tuple[int, list[int], float]]:
    """``(word id, token ids, log-probability)`` per entry of the lexicon file ``lexicon``
    (relative to ``lang_dir``), through ``words.txt`` and the token table; a word or token
    outside them is a ValueError naming the file and the word."""
    path = _in_lang_dir(c, lexicon)
    tokens = {t: i for i, t in enumerate(read_token_list(_tokens_file(c)), start=1)}
    words = _word_table(c)
    out = []
    for word, prob, toks in read_lexicon(path):
        if word not in words:
            raise ValueError(f"{path}: word {word!r} is not in {c['lang_dir']}/words.txt")
        missing = [t for t in toks if t not in tokens]
        if missing:
            raise ValueError(f"{path}: word {word!r}: tokens {missing} are not in the token "
                             "table")
        out.append((words[word], [tokens[t] for t in toks],
                    math.log(prob) if prob is not None else 0.0))
    return out


# --------------------------------------------------------------------------- hmm
@register_loss("hmm", HmmLoss, supplied=("topo", "lexicon"),
               extra={"topology": "hmm-1state", "transition_scale": 1.0,
                      "self_loop_scale": 1.0, "ali_topology": ""},
               topologies=tuple(t for t in TOPOLOGIES if not t.startswith("ctc")))
def _build_hmm(c: dict[str, Any], model: nn.Module, opts: dict[str, Any]) -> nn.Module:
    """``loss.mode``: ``forward`` (full sum), ``viterbi`` or ``ce`` (frame cross-entropy on
    the current model's forced alignments). ``loss.ali_topology`` non-empty (mode ``ce``
    only): the targets (``cfg.token_field``) are given alignments, one pdf of that Kaldi
    topology per input frame (e.g. a monophone GMM's), trained with :class:`AlignmentCeLoss`
    at the model's output rate; ``prior_scale`` is then only the decoding prior's scale."""
    topo = loss_topology(c)
    loss = HmmLoss(topo, mode=opts["mode"], reduction=opts["reduction"],
                   use_double_scores=opts["use_double_scores"],
                   prior_scale=opts["prior_scale"], prior_momentum=opts["prior_momentum"])
    check_num_classes(c, model, loss.num_outputs, _topology_what(topo))
    if opts["ali_topology"]:
        return alignment_criterion(c, loss, topo, model)
    return loss


def alignment_criterion(cfg: Any, loss: nn.Module, topo: Topology,
                        model: nn.Module | None = None) -> nn.Module:
    """The :class:`~wfst_asr.losses.hmm.AlignmentCeLoss` of ``cfg`` (``loss.ali_topology``
    set, ``loss.mode=ce``) around ``loss``; the subsampling is the model's (else ``cfg``'s)."""
    c = _cfg_dict(cfg)
    opts = loss_options(c)
    if opts["mode"] != "ce":
        raise ValueError(f"loss.ali_topology={opts['ali_topology']!r} needs loss.mode=ce, got "
                         f"{opts['mode']!r}")
    src = make_topology(opts["ali_topology"], topo.num_tokens)
    sub = getattr(model, "subsampling_factor", None) or int(c.get("subsampling", 1))
    return AlignmentCeLoss(loss, pdf_map(src, topo), subsampling=int(sub))


# --------------------------------------------------------------------------- mmi
@register_loss("mmi", MmiLoss, supplied=("compiler",),
               extra={"topology": "ctc", "den_lm_scale": 1.0, "phone_lm": "lm.arpa",
                      "transition_scale": 1.0, "self_loop_scale": 1.0},
               topologies=TOPOLOGIES)
def _build_mmi(c: dict[str, Any], model: nn.Module, opts: dict[str, Any]) -> nn.Module:
    """LF-MMI. ``loss.topology``: ``ctc`` (blank + tokens: decoded with the CTC HLG),
    ``ctc-modified`` or a Kaldi HMM topology (``num_pdfs + 1`` outputs, decoded with the
    HCLG). ``den_lm_scale``: P's scores are multiplied by it (numerators and denominator).
    ``phone_lm``: the ARPA file of P, relative to ``lang_dir`` (made deterministic and
    epsilon-free by :func:`~wfst_asr.graphs.lm.ngram_acceptor`).

    The encoders output ``log_softmax`` where Kaldi's chain models feed raw outputs; LF-MMI
    does not see the difference (a per-frame constant cancels between numerator and
    denominator, and the gradient ``den - num`` sums to 0 per frame), except for
    ``l2_regularize``, which on log-probs penalises small probabilities: hence 0 by default."""
    if not c.get("lang_dir"):
        raise ValueError(f"loss 'mmi' needs lang_dir (the phone LM P is <lang_dir>/"
                         f"{opts['phone_lm']})")
    arpa = Path(c["lang_dir"]) / opts["phone_lm"]
    if not arpa.is_file():
        raise FileNotFoundError(f"loss 'mmi': the phone LM {arpa} is not there (an ARPA file, "
                                "e.g. `wfst-asr estimate-lm` on the training transcripts)")
    topo = loss_topology(c)
    P = ngram_acceptor(arpa, _tokens_file(c))
    H = topo.H if topo.is_ctc else pdf_topo(topo)
    compiler = MmiTrainingGraphCompiler(P, topo=H, lm_scale=opts["den_lm_scale"])
    loss = MmiLoss(compiler, **{k: opts[k] for k in LOSSES["mmi"].options
                                if k in inspect.signature(MmiLoss).parameters})
    check_num_classes(c, model, loss.num_outputs, _topology_what(topo))
    return loss


# --------------------------------------------------------------------------- transducer
class TransducerCriterion(nn.Module):
    """``loss_fn(encoder_out, out_lens, token_seqs) -> (loss, info)`` of the trainer for a
    transducer model: the head's decoder output and simple projections
    (``model.head(encoder_out, token_seqs)``) and its joiner go to a
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
        seqs = [list(s.tolist() if isinstance(s, torch.Tensor) else s) for s in token_seqs]
        dec, simple_am, simple_lm = model.head(encoder_out, seqs, simple=self.loss.pruned)
        loss, info = self.loss(encoder_out, out_lens, dec, seqs, model.joiner, simple_am,
                               simple_lm)
        if self.ctc is not None:
            ctc, ctc_info = self.ctc(model.ctc_log_probs(encoder_out), out_lens, token_seqs)
            loss = loss + self.ctc_scale * ctc.to(loss.dtype)
            info["ctc_loss"] = float(ctc.detach().sum())
            info["ctc_excluded"] = ctc_info["num_excluded"]
        unused = self.__dict__["_unused"]
        if unused:
            loss = loss + 0.0 * sum(p.sum() for p in unused).to(loss.dtype)
        return loss, info


@register_loss("transducer", TransducerLoss, extra={"ctc_scale": 0.0})
def _build_transducer(c: dict[str, Any], model: nn.Module, opts: dict[str, Any]) -> nn.Module:
    kwargs = dict(opts)
    ctc_scale = kwargs.pop("ctc_scale")
    return TransducerCriterion(model, TransducerLoss(**kwargs), ctc_scale=ctc_scale)


# --------------------------------------------------------------------------- segmental
class SegmentalCriterion(nn.Module):
    """``loss_fn(k, out_lens, targets) -> (loss, info)`` of the trainer for a segmental model
    (``blstm_segmental``): ``model.segment_scores(k, out_lens)`` scored by a
    :class:`~wfst_asr.losses.segmental.SegmentalLoss` (``loss.kind``: hinge, log,
    latent_hinge, marginal_log).

    The training modes of Tang et al. (2016) are options:

    * ``frame_ce``: the first stage of two-stage training: frame cross-entropy of the encoder's
      ``k`` (log-softmax; label ``y`` is column ``y + 1``) on the reference frame labels
      (``frame_targets``); the scorer's parameters get a zero gradient;
    * ``freeze_encoder``: the second stage: only the scorer's ``theta`` trains (the encoder's
      parameters stop requiring gradients; start it from the first stage with ``init_from``);
    * neither: end to end (from scratch, or fine-tuning a two-stage model via ``init_from``).

    The model is referenced, not registered (``parameters()`` is empty, as for CTC)."""

    def __init__(self, model: nn.Module, loss: nn.Module, frame_ce: bool = False,
                 freeze_encoder: bool = False) -> None:
        super().__init__()
        if not hasattr(model, "segment_scores"):
            raise ValueError(f"loss 'segmental' needs a segmental model (model: "
                             f"blstm_segmental), got {type(model).__name__}")
        if frame_ce and not loss.frame_targets:
            raise ValueError("loss.frame_ce=true needs frame labels: loss.frame_targets=true")
        if frame_ce and freeze_encoder:
            raise ValueError("loss.frame_ce and loss.freeze_encoder exclude each other (the "
                             "first and the second stage of two-stage training)")
        self.loss, self.frame_ce = loss, bool(frame_ce)
        self.__dict__["_model"] = model  # not a submodule
        if freeze_encoder:
            for p in model.encoder.parameters():
                p.requires_grad_(False)

    @property
    def reduction(self) -> str:
        return self.loss.reduction

    def forward(self, k: torch.Tensor, out_lens: torch.Tensor, targets):
        model = self.__dict__["_model"]
        if self.frame_ce:
            return self._frame_ce(model, k, out_lens, targets)
        return self.loss(model.segment_scores(k, out_lens), out_lens, targets)

    def _frame_ce(self, model: nn.Module, k: torch.Tensor, out_lens: torch.Tensor, targets):
        from wfst_asr.losses.common import exclusion_info

        T = k.shape[1]
        segs, _ = self.loss.gold(targets, out_lens.cpu())
        lab = torch.full((k.shape[0], T), -1, dtype=torch.int64)
        for b, sg in enumerate(segs):
            for s, t, y in sg:
                lab[b, s:t] = y + 1
        lab = lab.to(k.device)
        valid = lab >= 0
        nll = -k.gather(2, lab.clamp(min=0).unsqueeze(2)).squeeze(2)
        per_utt = torch.where(valid, nll, torch.zeros_like(nll)).sum(1)
        ok = valid.any(1).cpu()
        scorer_zero = sum(p.sum() for p in model.scorer.parameters()) * 0.0
        loss = per_utt.sum() + scorer_zero
        info = exclusion_info(k.shape[0], ok, int(valid.sum()), 0,
                              torch.zeros(k.shape[0], dtype=torch.bool))
        if self.reduction == "mean":
            loss = loss / max(info["frames"], 1)
        return (per_utt if self.reduction == "none" else loss), info


@register_loss("segmental", SegmentalLoss, supplied=("subsampling",),
               extra={"frame_ce": False, "freeze_encoder": False})
def _build_segmental(c: dict[str, Any], model: nn.Module, opts: dict[str, Any]) -> nn.Module:
    """Tang et al. (2016)'s segmental losses; ``loss.kind``, ``loss.frame_targets`` and the
    training-mode switches of :class:`SegmentalCriterion`."""
    kwargs = dict(opts)
    frame_ce, freeze = kwargs.pop("frame_ce"), kwargs.pop("freeze_encoder")
    sub = getattr(model, "subsampling_factor", None) or int(c.get("subsampling", 1))
    return SegmentalCriterion(model, SegmentalLoss(**kwargs, subsampling=int(sub)),
                              frame_ce=frame_ce, freeze_encoder=freeze)


# --------------------------------------------------------------------------- attention
class AttentionCriterion(nn.Module):
    """``loss_fn(memory, out_lens, token_seqs) -> (loss, info)`` of the trainer for an
    attention encoder-decoder (``blstm_attention``): the model's decoder on ``<sos>`` + tokens
    (teacher forcing) and its CTC output, scored by
    :class:`~wfst_asr.losses.attention.AttentionLoss`. The model is referenced, not
    registered.

    With ``soft_labels`` (:class:`~wfst_asr.train.distill.SoftLabels`), each sequence's
    teacher top-``distill_k`` comes from the file by its cut id (``token_seqs.cut_ids``, which
    :func:`~wfst_asr.train.trainer.batch_targets` sets); ``<eos>`` and the sequences the file
    does not have (e.g. dev) get the one-hot teacher of their target (``info["no_teacher"]``
    counts the latter)."""

    def __init__(self, model: nn.Module, loss: nn.Module, soft_labels=None,
                 distill_k: int | None = None) -> None:
        super().__init__()
        if not hasattr(model, "decoder") or not hasattr(model, "ctc_log_probs"):
            raise ValueError(f"loss 'attention' needs an attention model (model: "
                             f"blstm_attention), got {type(model).__name__}")
        self.loss, self.soft_labels, self.distill_k = loss, soft_labels, distill_k
        self.__dict__["_model"] = model

    @property
    def reduction(self) -> str:
        return self.loss.reduction

    def teacher(self, seqs: list[list[int]], cut_ids, L: int, device
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(ids [B, L, k], probs [B, L, k], sequences without soft labels)``."""
        k = self.distill_k or self.soft_labels.k
        ids = torch.zeros(len(seqs), L, k, dtype=torch.int64)
        probs = torch.zeros(len(seqs), L, k)
        missing = 0
        for b, s in enumerate(seqs):
            got = self.soft_labels.lookup(cut_ids[b], s, k) if cut_ids is not None else None
            if got is None:
                missing += 1
                ids[b, :len(s), 0] = torch.as_tensor(s, dtype=torch.int64)
                probs[b, :len(s), 0] = 1.0
            else:
                ids[b, :len(s)], probs[b, :len(s)] = got
            probs[b, len(s), 0] = 1.0  # <eos> (id 0)
        return ids.to(device), probs.to(device), missing

    def forward(self, memory: torch.Tensor, out_lens: torch.Tensor, token_seqs):
        from wfst_asr.models.attention import decoder_io

        model = self.__dict__["_model"]
        seqs = [list(s.tolist() if isinstance(s, torch.Tensor) else s) for s in token_seqs]
        ys_in, ys_out = decoder_io(seqs, memory.device)
        logits = model.decoder(memory, out_lens, ys_in)
        if self.soft_labels is None or self.loss.distill_weight == 0:
            return self.loss(logits, ys_out, model.ctc_log_probs(memory), out_lens, seqs)
        t_ids, t_probs, missing = self.teacher(seqs, getattr(token_seqs, "cut_ids", None),
                                               ys_out.shape[1], memory.device)
        loss, info = self.loss(logits, ys_out, model.ctc_log_probs(memory), out_lens, seqs,
                               t_ids, t_probs)
        return loss, dict(info, no_teacher=missing)


@register_loss("attention", AttentionLoss, extra={"soft_labels": None, "distill_k": None})
def _build_attention(c: dict[str, Any], model: nn.Module, opts: dict[str, Any]) -> nn.Module:
    """Joint CTC / attention training (``loss.ctc_weight``, ``loss.label_smoothing``), with
    distillation from the soft labels of ``loss.soft_labels`` (``wfst-asr soft-labels``) at
    weight ``loss.distill_weight`` keeping the top ``loss.distill_k`` (default: all kept)."""
    from wfst_asr.data.soft_labels import SoftLabels

    kwargs = dict(opts)
    path, k = kwargs.pop("soft_labels"), kwargs.pop("distill_k")
    labels = None
    if kwargs.get("distill_weight", 0.0) > 0:
        if not path:
            raise ValueError("loss.distill_weight > 0 needs loss.soft_labels (a file of "
                             "wfst-asr soft-labels)")
        labels = SoftLabels(path)
        labels.check_vocab(int(c["num_classes"]))
        if k is not None and not 1 <= int(k) <= labels.k:
            raise ValueError(f"loss.distill_k must be in 1..{labels.k} (kept in {path}), "
                             f"got {k}")
    return AttentionCriterion(model, AttentionLoss(**kwargs), labels,
                              int(k) if k is not None else None)


# --------------------------------------------------------------------------- dbd
@register_loss("dbd", DbdLoss, supplied=("graph",),
               extra={"lm": "lm.arpa", "lm_scale": 1.0, "train_lm": True, "lexicon": ""})
def _build_dbd(c: dict[str, Any], model: nn.Module, opts: dict[str, Any]) -> nn.Module:
    """Differentiable beam-search decoding (Collobert et al. 2019) over ``H o G`` (CTC
    topology): G is the ARPA n-gram ``loss.lm`` (relative to ``lang_dir``) with exact back-off,
    over the tokens, or with ``loss.lexicon`` over words (``L o G`` through that lexicon; the
    transcripts are then words). ``loss.lm_scale`` weights G; with ``loss.train_lm`` its
    log-weights (n-gram probabilities and back-off weights) train with the network and are
    saved as the criterion's parameters. ``search_beam`` / ``output_beam`` /
    ``max_active_states``: the beam search."""
    from wfst_asr.graphs.lm import ngram_acceptor
    from wfst_asr.graphs.ngram import read_arpa
    from wfst_asr.graphs.trainable import (
        NgramScores,
        TrainableGraph,
        ctc_lm_graph,
        lexicon_lm_graph,
    )

    kwargs = dict(opts)
    lm_name, lm_scale = kwargs.pop("lm"), kwargs.pop("lm_scale")
    train_lm, lexicon = kwargs.pop("train_lm"), kwargs.pop("lexicon")
    arpa = _in_lang_dir(c, lm_name)
    if not arpa.is_file():
        raise FileNotFoundError(f"loss 'dbd': the LM {arpa} is not there (loss.lm: an ARPA "
                                "file, relative to lang_dir)")
    ngram = read_arpa(arpa)
    if lexicon:
        G = lexicon_lm_graph(ngram, _word_table(c), _lexicon_ids(c, lexicon))
    else:
        G = ngram_acceptor(ngram, _tokens_file(c), terms=True)
    lm = NgramScores(ngram)
    lm.weight.requires_grad_(bool(train_lm))
    loss = DbdLoss(TrainableGraph(ctc_lm_graph(G), lm, lm_scale), **kwargs)
    check_num_classes(c, model, loss.num_outputs, "the CTC decoding graph (blank + tokens)")
    return loss
