"""The decoder job: decode data sets with what a trainer left in an experiment directory
(``wfst-asr decode``; Lingvo's "decoder" reading the trainer's checkpoint dir).

* The model: ``<exp_dir>/config.json`` + ``averaged.pt`` / ``best.pt``
  (:func:`~wfst_asr.train.inference.load_model`), or a monophone GMM dir (``gmm.pt``: the
  ``params``, ``topology``, ``self_loop_scale``, ``num_tokens`` and ``options`` of
  :class:`~wfst_asr.gmm.MonoGmm`, on MFCC + deltas + per-speaker CMN computed from the cuts'
  audio, :func:`wfst_asr.gmm.features.cut_features`).
* It runs ONCE over each set; every method decodes those outputs:

  =============  ==========================================================================
  loss           methods (default: all that apply)
  =============  ==========================================================================
  ctc            ``greedy``, ``hlg`` (engine ``one_best`` in the lang dir's HLG), ``kaldi``
  hmm, mmi       ``greedy`` (HMM: per-frame argmax, runs merged), ``hclg`` (the topology's
                 HCLG relabelled to pdf columns; a CTC topology: ``hlg``), ``kaldi``
  segmental      ``greedy`` (per-frame argmax of the encoder, runs merged), ``best_path`` (the
                 best segmentation of the segment lattice), ``best_path_lm`` (composed with
                 the lang dir's label bigram ``lm.arpa``, tuned like the graph methods)
  attention      ``greedy``, ``beam`` (length-normalised beam search), ``beam_ctc`` (joint
                 CTC prefix scoring, ``ctc_weight``), ``aux_ctc`` (greedy CTC on the encoder's
                 CTC output); with ``text_lm``: ``fusion`` (shallow fusion) and ``rescore_lm``
                 (n-best of ``beam`` + LM), with ``mlm``: ``rescore_mlm`` (+ the MLM's
                 pseudo-log-likelihood); these three are tuned: lm_scale = the LM's weight,
                 word_penalty = a penalty per token
  dbd            ``greedy``, ``hlg``, ``kaldi`` (as ctc: the lang dir's HLG) and ``dbd``: the
                 best path in the criterion's own graph with its trained LM weights
                 (the checkpoint's ``criterion`` entry) and the beams of training, untuned;
                 ``dbd_K`` (``dbd_max_active``): the same at most K active states
  ctc + a DBD    ``dbd`` / ``dbd_K`` for a CTC model: the graph and beams of that DBD
  config         config (``dbd_config``) with the ARPA's LM weights
  transducer     ``greedy``, ``beam`` (modified beam search), ``fast_beam`` (trivial graph),
                 ``fast_beam_lg`` (the lang dir's LG), ``aux_ctc`` (greedy on the auxiliary
                 CTC output, when the model has one)
  GMM dir        ``hclg``, ``kaldi``
  =============  ==========================================================================

  Graph methods (``hlg``, ``hclg``, ``fast_beam_lg``) choose ``lm_scale`` x word insertion
  penalty on the tune set (``dev``) with :func:`~wfst_asr.decode.grid.grid_search`, scored by
  :func:`wfst_asr.scoring.score_texts` (the function ``wfst-asr score`` uses), and decode the
  other sets once at that setting; ``kaldi`` (kaldi-decoder's FasterDecoder) decodes in the
  same graph at the engine method's setting (tuned itself when that method did not run).
  Graphs come from :func:`~wfst_asr.graphs.compile.compile_graph` (cached in the lang dir;
  ``<lang_dir>/<topology>/`` for HMM topologies) or a given file.
* HMM models with ``loss.prior_scale`` alpha > 0 (or ``prior_scale`` given) are decoded with
  ``log p(s|x) - alpha log p(s)``: p(s) from the alignment counts of the training cuts for a
  hybrid trained on alignments (``loss.ali_topology``, :func:`~wfst_asr.losses.align.
  alignment_prior`; its references then come from ``ref_field``), else the mean posterior of
  the model over the training cuts (:meth:`~wfst_asr.losses.HmmLoss.estimate_prior`).
* Everything goes to a decode directory (:mod:`wfst_asr.scoring.decode_dir`): references,
  1-best hypotheses in the output symbols (tokens, or the lang dir's words for graph methods),
  the sweep tables and ``settings.json``; :func:`~wfst_asr.scoring.score_decode_dir` scores it.

Errors a user can fix (a missing exp dir, a lang dir whose tokens are not the model's, an
unknown method, ...) are :class:`DecodeError`, one line.

::

    dec = Decoder("exp/ctc_blstm", lang_dir="data/lang_phone",
                  options=DecodeOptions(metric="PER", fold=Fold.load(MAP, "48", "39")))
    dec.run({"dev": "data/fbank/cuts_dev.jsonl.gz", "test": "data/fbank/cuts_test.jsonl.gz"},
            "exp/ctc_blstm/decode")
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wfst_asr.atomic import atomic_write_text
from wfst_asr.decode import greedy_ctc, kaldi_ctc_graph, kaldi_one_best, one_best, scale_graph
from wfst_asr.decode.attention import attention_beam_search, attention_greedy
from wfst_asr.decode.grid import GridResult, grid_search
from wfst_asr.decode.hmm import greedy_hmm, pdf_to_token
from wfst_asr.decode.transducer import beam_search, fast_beam_search_one_best, greedy_search
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.fsa.segment import best_segmentation
from wfst_asr.graphs.bpe import is_piece_table, pieces_to_words
from wfst_asr.graphs.compile import compile_graph, remove_input_epsilons
from wfst_asr.graphs.lang import is_disambig_symbol, read_token_list
from wfst_asr.graphs.topo import Topology, make_topology, pdf_output_graph, trivial_graph
from wfst_asr.scoring import Fold, ScoreReport, score_texts, write_text, write_utt2spk
from wfst_asr.scoring.decode_dir import (
    SETTINGS,
    hyp_path,
    ref_path,
    utt2spk_path,
    write_settings,
)
from wfst_asr.train.checkpoint import CheckpointError, load_checkpoint
from wfst_asr.train.config import load_config
from wfst_asr.train.criteria import (
    alignment_criterion,
    build_loss,
    loss_options,
    loss_topology,
)
from wfst_asr.train.inference import CHECKPOINT_NAMES, ModelOutputs, load_model, run_model

__all__ = ["GRAPH_METHODS", "DecodeError", "DecodeOptions", "Decoder", "Method"]

PathLike = str | os.PathLike
BatchFn = Callable[[torch.Tensor, torch.Tensor], list[list[int]]]

#: The methods tuned on the tune set (their graphs carry LM scores).
GRAPH_METHODS = ("hlg", "hclg", "fast_beam_lg")
#: Methods whose outputs are tokens (not the lang dir's words).
TOKEN_METHODS = ("greedy", "beam", "fast_beam", "aux_ctc", "beam_ctc", "fusion", "rescore_lm",
                 "rescore_mlm")
#: Tuned methods that need no graph (their weights are a text LM's).
TEXT_LM_METHODS = ("fusion", "rescore_lm", "rescore_mlm")


class DecodeError(ValueError):
    """A decoding run that cannot go on for a reason the user can fix (one line)."""


@dataclass
class DecodeOptions:
    """How :class:`Decoder` decodes (the ``wfst-asr decode`` options)."""

    methods: Sequence[str] | None = None
    """Methods to run (None: all that apply to the model, see the module doc)."""
    lm_scales: Sequence[float] = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    word_penalties: Sequence[float] = (-2.0, -1.0, 0.0, 1.0)
    search_beam: float = 20.0
    max_active: int = 10000
    """Active states per utterance and frame (engine ``max_active_states``, Kaldi's
    ``max_active``): bounds the search in a large graph."""
    max_duration: float = 200.0
    beam_size: int = 4
    """Modified beam search (transducer ``beam``)."""
    max_states: int = 64
    """Fast beam search (transducer ``fast_beam``, ``fast_beam_lg``)."""
    max_contexts: int = 8
    metric: str = "WER"
    fold: Fold | None = None
    """Applied to references and hypotheses before scoring (e.g. TIMIT's 48 -> 39)."""
    tune_set: str = "dev"
    ref_field: str | None = None
    """Supervision field of the references (``text``: the supervision text); default: the
    model's ``token_field`` (``text`` for a word-level lang dir)."""
    prior_scale: float | None = None
    """alpha of HMM models (default: the model's ``loss.prior_scale``)."""
    acoustic_scale: float | None = None
    """GMM likelihood scale (default: the GMM's training option)."""
    device: str | None = None
    text_lm: str | None = None
    """A left-to-right LM over the model's tokens (``wfst-asr train-mlm --objective causal``'s
    ``textlm.pt``): attention methods ``fusion`` and ``rescore_lm``."""
    mlm: str | None = None
    """A masked LM over the model's tokens (``textlm.pt`` of ``wfst-asr train-mlm``): attention
    method ``rescore_mlm`` (pseudo-log-likelihood)."""
    ctc_weight: float = 0.3
    """Attention method ``beam_ctc``: weight of the CTC prefix score."""
    max_len_ratio: float = 1.0
    """Attention methods: at most this many tokens per encoder frame (a hypothesis without
    ``<eos>`` is cut there)."""
    forced_best: bool = False
    """After the engine's graph method: score each wrong utterance's reference and hypothesis
    in the graph (:mod:`wfst_asr.decode.forced`) and count search and model errors."""
    dbd_config: str | None = None
    """Method ``dbd`` for a model of another loss (CTC): the decoding graph and beams of this
    config of loss ``dbd`` (its LM with the ARPA's weights; over the decoder's lang dir when
    one is given)."""
    dbd_max_active: Sequence[int] = ()
    """Method ``dbd`` also with at most K active states, for each K here (methods ``dbd_K``,
    the search beam unchanged): error rate against the beam."""
    task: str | None = None
    """A multi-task experiment: the task whose head decodes (default: its first task)."""
    checkpoint: str | None = None
    """The weights to decode with (an ``epoch-N.pt`` / ``step-G.pt`` of the experiment, e.g.
    from ``wfst-asr decode --watch``) instead of ``averaged.pt`` / ``best.pt``."""


@dataclass
class Method:
    """One decoding method: ``at(lm_scale, word_penalty)`` gives the batch decoder
    ``fn(outputs [B, T, V], lens [B]) -> ids per utterance`` (untuned methods ignore the
    setting), ``symbols`` turns ids into output symbols."""

    name: str
    at: Callable[[float, float], BatchFn]
    symbols: Callable[[list[int]], list[str]]
    how: str
    tuned: bool = False
    follows: str | None = None
    """Decode at this method's chosen setting when it ran (else tune on the tune set)."""
    info: dict[str, Any] = field(default_factory=dict)


def _first_diff(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b), start=1):
        if x != y:
            return f"token {i} is {x!r} there, {y!r} in the model's"
    return f"{len(a)} tokens there, {len(b)} in the model's"


def _batches_by_duration(ids: list[str], seconds: dict[str, float], max_duration: float
                         ) -> list[list[str]]:
    out: list[list[str]] = [[]]
    total = 0.0
    for u in ids:
        if out[-1] and total + seconds[u] > max_duration:
            out.append([])
            total = 0.0
        out[-1].append(u)
        total += seconds[u]
    return [b for b in out if b]


class Decoder:
    """The model of ``exp_dir`` with its decoding methods (see the module doc).

    Args:
      exp_dir: a trainer's experiment directory, or a GMM dir with ``gmm.pt``.
      lang_dir: the lang dir of the graphs (``tokens.txt`` must be the model's tokens).
      graph: a compiled graph file (``.pt`` of :func:`wfst_asr.fsa.save` or OpenFst ``.fst``)
        for the graph methods instead of the lang dir's: an HLG, an HCLG over transition-ids
        (as :func:`~wfst_asr.graphs.compile.compile_graph` writes it) or an LG; its output
        symbols are the lang dir's ``words.txt``, else the graph's own table.
      options: :class:`DecodeOptions`.
      log: progress lines (default ``print``).
    """

    def __init__(self, exp_dir: PathLike, lang_dir: PathLike | None = None,
                 graph: PathLike | None = None, options: DecodeOptions | None = None,
                 log: Callable[[str], None] | None = print) -> None:
        self.exp_dir = Path(exp_dir)
        self.lang_dir = Path(lang_dir) if lang_dir is not None else None
        self.graph_file = Path(graph) if graph is not None else None
        self.opts = options or DecodeOptions()
        self.log = log or (lambda _msg: None)
        self.device = torch.device(self.opts.device or
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.opts.metric.upper() not in ("WER", "PER", "CER"):
            raise DecodeError(f"unknown metric {self.opts.metric!r} (WER, PER or CER)")
        if not self.exp_dir.is_dir():
            raise DecodeError(f"{self.exp_dir}: no such experiment directory")
        if self.lang_dir is not None and not self.lang_dir.is_dir():
            raise DecodeError(f"{self.lang_dir}: no such lang directory")
        if self.graph_file is not None and not self.graph_file.is_file():
            raise DecodeError(f"{self.graph_file}: no such graph file")
        self.prior_note = ""
        self._prior: torch.Tensor | None = None
        has_ckpt = self.opts.checkpoint is not None or any(
            (self.exp_dir / n).is_file() for n in CHECKPOINT_NAMES)
        if not has_ckpt and (self.exp_dir / "gmm.pt").is_file():
            self._init_gmm()
        else:
            self._init_nnet()
        self.words = self._word_table()
        self._check_lang()
        self.word_level = self._is_word_level()
        #: word pieces (sentencepiece): token outputs read back as words
        self.pieces = self.tokens is not None and is_piece_table(self.tokens)
        self.ref_field = self._ref_field()
        self.methods = self._select_methods()

    # ------------------------------------------------------------------ model
    def _init_nnet(self) -> None:
        try:
            self.model, self.cfg, self.checkpoint = load_model(self.exp_dir, self.device,
                                                               self.opts.checkpoint,
                                                               self.opts.task)
        except (OSError, ValueError, CheckpointError) as e:
            raise DecodeError(str(e)) from e
        self.kind = "nnet"
        self.loss = str(self.cfg.get("loss", "ctc"))
        if self.loss not in ("ctc", "hmm", "mmi", "transducer", "segmental", "attention",
                             "dbd"):
            raise DecodeError(f"{self.exp_dir}: no decoding methods for loss {self.loss!r}")
        tokens_file = self.cfg.get("tokens") or (
            Path(self.cfg["lang_dir"]) / "tokens.txt" if self.cfg.get("lang_dir") else None)
        self.tokens_file = str(tokens_file) if tokens_file else None
        try:
            self.tokens = read_token_list(tokens_file) if tokens_file else None
        except (OSError, ValueError) as e:
            raise DecodeError(f"cannot read the model's tokens {tokens_file}: {e}") from e
        self.num_outputs = int(self.cfg["num_classes"])
        self.topo: Topology | None = None
        try:
            self.loss_opts = loss_options(self.cfg)
            if self.loss in ("hmm", "mmi"):
                self.topo = loss_topology(self.cfg)
        except (OSError, ValueError) as e:
            raise DecodeError(f"{self.exp_dir}/config.json: {e}") from e
        if self.loss == "transducer" and not hasattr(self.model, "head"):
            raise DecodeError(f"{self.cfg['model']} is no transducer model (no .head)")
        topo = f", topology {self.topo.name}" if self.topo is not None else ""
        self.describe = f"{self.cfg['model']}, loss {self.loss}{topo}"
        self.log(f"model {self.describe} from {self.checkpoint} on {self.device}")

    def _init_gmm(self) -> None:
        from wfst_asr.gmm import MonoGmm, MonoOptions

        self.kind, self.loss, self.cfg = "gmm", "gmm", {}
        self.checkpoint = self.exp_dir / "gmm.pt"
        try:
            saved = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            self.topo = make_topology(saved["topology"], int(saved["num_tokens"]),
                                      self_loop_scale=float(saved["self_loop_scale"]))
            self.model = MonoGmm.from_params(self.topo, saved["params"])
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            raise DecodeError(f"cannot load the GMM of {self.checkpoint}: "
                              f"{type(e).__name__}: {e}") from e
        self.gmm_saved = saved
        self.tokens, self.tokens_file = None, None
        self.num_outputs = self.topo.num_pdfs + 1
        self.loss_opts = {}
        scale = self.opts.acoustic_scale
        if scale is None:
            scale = (saved.get("options") or {}).get("acoustic_scale",
                                                     MonoOptions().acoustic_scale)
        self.acoustic_scale = float(scale)
        self.describe = (f"monophone GMM ({self.topo.name}, {self.model.num_gauss} Gaussians), "
                         f"acoustic scale {self.acoustic_scale:g}")
        self.log(f"model {self.describe} from {self.checkpoint}")

    # ------------------------------------------------------------------ lang dir / symbols
    def _word_table(self) -> SymbolTable | None:
        if self.lang_dir is not None:
            return SymbolTable.from_file(self.lang_dir / "words.txt")
        return None

    def _check_lang(self) -> None:
        """The lang dir's tokens must be the model's (same symbols, same ids)."""
        if self.lang_dir is None:
            return
        path = self.lang_dir / "tokens.txt"
        if not path.is_file():
            raise DecodeError(f"{path}: no such file (not a lang dir?)")
        lang_tokens = read_token_list(path)
        if self.tokens is not None and lang_tokens != self.tokens:
            raise DecodeError(f"the tokens of {path} are not the model's ({self.tokens_file}): "
                              f"{_first_diff(lang_tokens, self.tokens)}")
        n_model = self.topo.num_tokens if self.topo is not None else self.num_outputs - 1
        if len(lang_tokens) != n_model:
            raise DecodeError(f"{path} has {len(lang_tokens)} tokens but the model's outputs "
                              f"are over {n_model} tokens ({self.num_outputs} outputs)")

    def _is_word_level(self) -> bool:
        """True when the lang dir's words are not tokens (a lexicon of real words)."""
        if self.words is None or self.tokens is None:
            return False
        special = {"<eps>", "<s>", "</s>"}
        words = {str(w) for w, i in self.words.items()
                 if int(i) > 0 and str(w) not in special and not is_disambig_symbol(str(w))}
        return not words <= set(self.tokens)

    def _ref_field(self) -> str:
        if self.opts.ref_field:
            return self.opts.ref_field
        if self.kind == "gmm":
            field_ = self.gmm_saved.get("token_field")
            if not field_:
                raise DecodeError(f"{self.checkpoint} does not say which supervision field "
                                  "holds the references: give --ref-field")
            return str(field_)
        if self.loss_opts.get("ali_topology"):
            raise DecodeError(f"the model's token_field {self.cfg.get('token_field')!r} holds "
                              "alignments (loss.ali_topology): give --ref-field (the "
                              "supervision field of the references)")
        if self.word_level and not self.loss_opts.get("lexicon"):
            return "text"
        return str(self.cfg.get("token_field") or "text")

    def token_str(self, ids: list[int]) -> list[str]:
        if self.tokens is None:
            return [str(i) for i in ids]
        return [self.tokens[i - 1] for i in ids]

    def token_symbols(self, ids: list[int]) -> list[str]:
        """The output symbols of a token-level method: the tokens, or for word pieces the
        words they spell (so greedy BPE-CTC is scored on words)."""
        toks = self.token_str(ids)
        return pieces_to_words(toks) if self.pieces else toks

    def word_str(self, ids: list[int]) -> list[str]:
        assert self._words is not None
        return [str(self._words.get(i)) for i in ids]

    # ------------------------------------------------------------------ graphs
    def _load_graph_file(self) -> Fsa:
        from wfst_asr.fsa import load, read_fst

        p = self.graph_file
        assert p is not None
        try:
            g = load(p) if p.suffix == ".pt" else read_fst(p, acceptor=False)
        except (OSError, ValueError, RuntimeError) as e:
            raise DecodeError(f"cannot read the graph {p}: {e}") from e
        if not g.has_attr("aux_labels"):
            raise DecodeError(f"{p}: the graph has no output labels (aux_labels)")
        return g

    @functools.cached_property
    def _words(self) -> SymbolTable | None:
        if self.words is not None:
            return self.words
        g = self._graph_raw
        table = getattr(g, "aux_labels_sym", None) if g.has_attr("aux_labels_sym") else None
        if not isinstance(table, SymbolTable):
            raise DecodeError(f"no words for the outputs of {self.graph_file}: give --lang-dir")
        return table

    @functools.cached_property
    def _graph_raw(self) -> Fsa:
        """The graph of the graph methods as compiled / read (HCLG: transition-ids)."""
        if self.graph_file is not None:
            return self._load_graph_file()
        if self.lang_dir is None:
            raise DecodeError("the graph methods need --lang-dir or --graph")
        t0 = time.perf_counter()
        kind, topo, out, extra = self._graph_spec()
        try:
            g, stats = compile_graph(self.lang_dir, kind=kind, topo=topo, out_dir=out, **extra)
        except (OSError, ValueError) as e:
            raise DecodeError(f"cannot compile the {kind} of {self.lang_dir}: {e}") from e
        self.log(f"{kind} ({topo or 'no topology'}) of {self.lang_dir}: {g.num_states} states, "
                 f"{g.num_arcs} arcs{' (cached)' if stats.get('cached') else ''} "
                 f"({time.perf_counter() - t0:.1f} s)")
        return g

    def _graph_spec(self) -> tuple[str, str, Path | None, dict[str, Any]]:
        """``(kind, topology, out dir, options)`` of compile_graph for this model."""
        assert self.lang_dir is not None
        if self.loss == "transducer":
            return "LG", "ctc", None, {}
        topo = self.topo
        if topo is None or topo.is_ctc:
            name = topo.name if topo is not None else "ctc"
            return "HLG", name, (None if name == "ctc" else self.lang_dir / name), {}
        if self.kind == "gmm":
            opts = {"transition_scale": 1.0,
                    "self_loop_scale": float(self.gmm_saved["self_loop_scale"])}
        else:
            opts = {"transition_scale": self.loss_opts["transition_scale"],
                    "self_loop_scale": self.loss_opts["self_loop_scale"]}
        return "HCLG", topo.name, self.lang_dir / topo.name, opts

    @functools.cached_property
    def graph(self) -> Fsa:
        """The graph the graph methods search: labels = network output columns (HCLG
        relabelled to ``pdf + 1``), or the LG of a transducer without input epsilons."""
        g = self._graph_raw
        if self.loss == "transducer":
            if bool((g.labels == 0).any()):
                g = remove_input_epsilons(g)
        elif self.topo is not None and not self.topo.is_ctc:
            try:
                g = pdf_output_graph(g, self.topo.tid2pdf)
            except ValueError as e:
                raise DecodeError(f"the HCLG does not fit topology {self.topo.name}: {e}") from e
        top = int(g.labels.max()) if g.num_arcs else 0
        if top >= self.num_outputs:
            raise DecodeError(f"the graph has input label {top}, but the model has only "
                              f"{self.num_outputs} outputs: it was built for other tokens")
        return g

    @functools.cached_property
    def _graph_name(self) -> str:
        if self.loss == "transducer":
            return "LG"
        return "HCLG" if self.topo is not None and not self.topo.is_ctc else "HLG"

    # ------------------------------------------------------------------ methods
    def available_methods(self) -> dict[str, Method]:
        """Every method that applies to the model, in the default order."""
        o = self.opts
        beam, max_active = o.search_beam, o.max_active
        out: dict[str, Method] = {}

        def fixed(fn: BatchFn) -> Callable[[float, float], BatchFn]:
            return lambda _s, _wp: fn

        graph_method = self._graph_name.lower()
        if self.loss == "segmental":
            model, dev = self.model, self.device

            def best(k: torch.Tensor, n: torch.Tensor) -> list[list[int]]:
                with torch.no_grad():
                    scores = model.segment_scores(k.to(dev), n.to(dev))
                return [[y + 1 for _s, _t, y in segs]
                        for segs in best_segmentation(scores, n.to(dev))]

            identity = torch.arange(self.num_outputs)
            out["greedy"] = Method("greedy", fixed(
                lambda k, n: greedy_hmm(k, n, identity)), self.token_symbols,
                "per-frame argmax of the encoder's frame vectors, runs merged (the encoder "
                "alone: a frame-CE first stage is decoded by it)")
            out["best_path"] = Method("best_path", fixed(best), self.token_symbols,
                                      "best path of the segment lattice (tropical)")
            arpa = self.lang_dir / "lm.arpa" if self.lang_dir is not None else None
            if arpa is not None and arpa.is_file() and not self.word_level:
                out["best_path_lm"] = Method(
                    "best_path_lm", self._segmental_lm_at(arpa), self.token_symbols,
                    f"best path of the segment lattice composed with the label bigram of "
                    f"{arpa} (lm_scale x LM - penalty per segment)", True)
            return out
        if self.loss == "attention":
            model, dev = self.model, self.device
            out["greedy"] = Method("greedy", fixed(
                lambda e, n: attention_greedy(model.decoder, e.to(dev), n.to(dev),
                                              max_len_ratio=o.max_len_ratio)),
                self.token_symbols, "attention decoder, greedy (one token per step)")
            out["beam"] = Method("beam", fixed(
                lambda e, n: attention_beam_search(model.decoder, e.to(dev), n.to(dev),
                                                   beam=o.beam_size,
                                                   max_len_ratio=o.max_len_ratio)),
                self.token_symbols,
                f"attention decoder, beam search (beam {o.beam_size}, length-normalised)")
            cw = float(o.ctc_weight)
            out["beam_ctc"] = Method("beam_ctc", fixed(
                lambda e, n: attention_beam_search(
                    model.decoder, e.to(dev), n.to(dev), beam=o.beam_size,
                    ctc_log_probs=model.ctc_log_probs(e.to(dev)), ctc_weight=cw,
                    max_len_ratio=o.max_len_ratio)),
                self.token_symbols, f"attention decoder, beam search (beam {o.beam_size}, "
                f"length-normalised) with CTC prefix scores (weight {cw:g})")
            out["aux_ctc"] = Method("aux_ctc", fixed(
                lambda e, n: greedy_ctc(model.ctc_log_probs(e.to(dev)), n)),
                self.token_symbols, "greedy CTC on the CTC output of the encoder")
            out.update(self._attention_lm_methods())
            return out
        if self.loss == "transducer":
            model, dev = self.model, self.device
            dec, joiner = model.decoder, model.joiner
            fast = {"beam": beam, "max_states": o.max_states, "max_contexts": o.max_contexts}
            out["greedy"] = Method("greedy", fixed(
                lambda e, n: greedy_search(dec, joiner, e.to(dev), n)), self.token_symbols,
                "greedy search (one label per frame)")
            out["beam"] = Method("beam", fixed(
                lambda e, n: beam_search(dec, joiner, e.to(dev), n, beam=o.beam_size)),
                self.token_symbols, f"modified beam search (beam {o.beam_size})")
            trivial = trivial_graph(self.num_outputs, device=dev)
            out["fast_beam"] = Method("fast_beam", fixed(
                lambda e, n: fast_beam_search_one_best(dec, joiner, e.to(dev), n, trivial,
                                                       **fast)), self.token_symbols,
                f"fast beam search in the trivial graph (beam {beam:g}, max_states "
                f"{o.max_states}, max_contexts {o.max_contexts})")

            def lg_at(s: float, wp: float) -> BatchFn:
                g = scale_graph(self.graph, s, wp).to(dev)
                return lambda e, n: fast_beam_search_one_best(
                    dec, joiner, e.to(dev), n, g, output="aux_labels", **fast)

            out["fast_beam_lg"] = Method("fast_beam_lg", lg_at, self.word_str,
                                         "fast beam search in the LG (same options)", True)
            if getattr(model, "ctc_output", None) is not None:
                out["aux_ctc"] = Method("aux_ctc", fixed(
                    lambda e, n: greedy_ctc(model.ctc_log_probs(e.to(dev)), n)),
                    self.token_symbols, "greedy CTC on the auxiliary CTC output")
            return out
        if self.kind != "gmm":
            if self.topo is None or self.topo.is_ctc:
                out["greedy"] = Method("greedy", fixed(greedy_ctc), self.token_symbols,
                                       "greedy CTC (argmax per frame, repeats merged, blanks "
                                       "dropped)")
            else:
                token_of = pdf_to_token(self.topo)
                out["greedy"] = Method("greedy", fixed(
                    lambda lp, n: greedy_hmm(lp, n, token_of)), self.token_symbols,
                    "per-frame argmax over the pdfs, pdf -> token, runs merged")

        def engine_at(s: float, wp: float) -> BatchFn:
            g = self.graph
            return lambda lp, n: one_best(g, lp, n, search_beam=beam, lm_scale=s,
                                          word_penalty=wp, max_active_states=max_active)

        @functools.lru_cache(maxsize=4)
        def kaldi_at(s: float, wp: float) -> BatchFn:
            kg = kaldi_ctc_graph(self.graph, lm_scale=s, word_penalty=wp)
            return lambda lp, n: kaldi_one_best(kg, lp, n, beam=beam, max_active=max_active)

        if self.loss == "dbd" or self.opts.dbd_config:
            out.update(self._dbd_methods())
        out[graph_method] = Method(graph_method, engine_at, self.word_str,
                                   f"engine one_best in the {self._graph_name} (search beam "
                                   f"{beam:g}, max active {max_active})", True)
        out["kaldi"] = Method("kaldi", kaldi_at, self.word_str,
                              f"kaldi-decoder FasterDecoder in the {self._graph_name} (beam "
                              f"{beam:g}, max active {max_active})", True, follows=graph_method,
                              info={"compare_with": graph_method})
        return out

    def _dbd_methods(self) -> dict[str, Method]:
        """``dbd`` (and ``dbd_K``): the criterion's graph, its LM weights as trained, the
        beams of training (or of ``dbd_config``, with the ARPA's weights)."""
        try:
            if self.opts.dbd_config:
                cfg = load_config(self.opts.dbd_config)
                if cfg.loss != "dbd":
                    raise ValueError(f"{self.opts.dbd_config} is a config of loss "
                                     f"{cfg.loss!r}, not 'dbd'")
                if self.lang_dir is not None:  # the graph over --lang-dir
                    cfg.lang_dir = str(self.lang_dir)
                    cfg.tokens = str(Path(self.lang_dir) / "tokens.txt")
                cfg.num_classes = int(self.cfg["num_classes"])  # the model's
                crit, state = build_loss(cfg, self.model), {}
            else:
                cfg = self.cfg
                crit, state = build_loss(cfg, self.model), load_checkpoint(self.checkpoint)
                if "criterion" in state:
                    crit.load_state_dict(state["criterion"])
        except (OSError, ValueError, RuntimeError, CheckpointError) as e:
            raise DecodeError(f"the dbd graph of {self.opts.dbd_config or self.exp_dir}: "
                              f"{e}") from e
        with torch.no_grad():
            g = crit.decoding_graph().detach()
        trained = "trained" if "criterion" in state else "fixed"
        beam, low = crit.search_beam, crit.min_active
        words = bool(loss_options(cfg).get("lexicon"))
        symbols = self.word_str if words else self.token_symbols

        def method(name: str, act: int) -> Method:
            def fn(lp: torch.Tensor, n: torch.Tensor) -> list[list[int]]:
                return one_best(g, lp, n, search_beam=beam, min_active_states=min(low, act),
                                max_active_states=act)

            return Method(name, lambda _s, _wp: fn, symbols,
                          f"engine one_best in the criterion's graph ({trained} LM weights, "
                          f"search beam {beam:g}, active states {min(low, act)}..{act})")

        out = {"dbd": method("dbd", crit.max_active)}
        for k in self.opts.dbd_max_active:
            out[f"dbd_{int(k)}"] = method(f"dbd_{int(k)}", int(k))
        return out

    def _text_lm(self, path: str, kind: str):
        from wfst_asr.train.textlm import load_text_lm

        try:
            lm = load_text_lm(path, self.device)
        except (OSError, CheckpointError) as e:
            raise DecodeError(str(e)) from e
        want = "causal" if kind == "text_lm" else "mlm"
        got = "causal" if lm.causal else "mlm"
        if got != want:
            raise DecodeError(f"--{kind.replace('_', '-')} {path} is a {got} model, not a "
                              f"{want} one")
        if lm.vocab_size != self.num_outputs:
            raise DecodeError(f"the LM {path} has {lm.vocab_size} classes, the model "
                              f"{self.num_outputs}")
        return lm

    def _attention_lm_methods(self) -> dict[str, Method]:
        """``fusion``, ``rescore_lm`` (``text_lm``) and ``rescore_mlm`` (``mlm``)."""
        from wfst_asr.decode.attention import attention_nbest

        o, model, dev = self.opts, self.model, self.device
        out: dict[str, Method] = {}
        cache: dict[tuple, list] = {}

        def nbest(e: torch.Tensor, n: torch.Tensor) -> list:
            key = (e.data_ptr(), tuple(e.shape), tuple(n.tolist()))
            if key not in cache:
                cache[key] = attention_nbest(model.decoder, e.to(dev), n.to(dev),
                                             beam=o.beam_size, max_len_ratio=o.max_len_ratio)
            return cache[key]

        def rescorer(name: str, scores: Callable[[list[list[int]]], torch.Tensor]):
            done: dict[int, dict[tuple, float]] = {}

            def at(s: float, wp: float) -> BatchFn:
                def fn(e: torch.Tensor, n: torch.Tensor) -> list[list[int]]:
                    lists = nbest(e, n)
                    key = id(lists)
                    if key not in done:
                        seqs = list({tuple(h.tokens) for hs in lists for h in hs})
                        done[key] = dict(zip(seqs, scores([list(x) for x in seqs]).tolist()))
                    extra = done[key]
                    return [max(hs, key=lambda h: (h.score + s * extra[tuple(h.tokens)]
                                                   - wp * len(h.tokens))
                                / (len(h.tokens) + 1)).tokens if hs else [] for hs in lists]
                return fn
            return at

        if o.text_lm:
            lm = self._text_lm(o.text_lm, "text_lm")

            def fusion_at(s: float, wp: float) -> BatchFn:
                return lambda e, n: attention_beam_search(
                    model.decoder, e.to(dev), n.to(dev), beam=o.beam_size, lm=lm,
                    lm_weight=s, length_bonus=-wp, max_len_ratio=o.max_len_ratio)

            out["fusion"] = Method("fusion", fusion_at, self.token_symbols,
                                   f"beam search (beam {o.beam_size}) with shallow fusion of "
                                   f"the LM {o.text_lm}", True)
            out["rescore_lm"] = Method(
                "rescore_lm", rescorer("lm", lambda seqs: lm.score(seqs)), self.token_symbols,
                f"the n-best of beam search (beam {o.beam_size}) rescored with the LM "
                f"{o.text_lm}", True)
        if o.mlm:
            mlm = self._text_lm(o.mlm, "mlm")
            out["rescore_mlm"] = Method(
                "rescore_mlm", rescorer("mlm", lambda seqs: mlm.pseudo_log_likelihood(seqs)),
                self.token_symbols, f"the n-best of beam search (beam {o.beam_size}) "
                f"rescored with the MLM's pseudo-log-likelihood ({o.mlm})", True)
        return out

    def _segmental_lm_at(self, arpa: Path) -> Callable[[float, float], BatchFn]:
        """``at(lm_scale, penalty)`` of a segmental model's ``best_path_lm`` method."""
        from wfst_asr.decode.segmental import best_segmentation_lm, bigram_matrix
        from wfst_asr.graphs.ngram import read_arpa

        assert self.tokens is not None
        big = bigram_matrix(read_arpa(arpa), list(self.tokens))
        model, dev = self.model, self.device

        def at(s: float, wp: float) -> BatchFn:
            def fn(k: torch.Tensor, n: torch.Tensor) -> list[list[int]]:
                with torch.no_grad():
                    scores = model.segment_scores(k.to(dev), n.to(dev))
                return [[y + 1 for _s, _t, y in segs]
                        for segs in best_segmentation_lm(scores, n.to(dev), big, s, wp)]
            return fn
        return at

    def _select_methods(self) -> dict[str, Method]:
        avail = self.available_methods()
        if self.opts.methods is None:
            names = list(avail)
            if self.word_level and not self.pieces:  # tokens cannot be scored against words
                names = [n for n in names if n not in TOKEN_METHODS]
            if self.lang_dir is None and self.graph_file is None:
                names = [n for n in names if not avail[n].tuned or n in TEXT_LM_METHODS]
        else:
            names = list(dict.fromkeys(self.opts.methods))
            if "dbd" in names:  # and its beam sweep
                names += [n for n in avail if n.startswith("dbd_") and n not in names]
            bad = [n for n in names if n not in avail]
            if bad:
                raise DecodeError(f"method(s) {', '.join(bad)} do not apply to this model "
                                  f"({self.describe}); its methods: {', '.join(avail)}")
        if not names:
            raise DecodeError("no method to run (give --lang-dir for the graph methods)")
        graphed = [n for n in names if avail[n].tuned and n not in TEXT_LM_METHODS]
        if graphed and self.lang_dir is None and self.graph_file is None:
            raise DecodeError(f"{', '.join(graphed)} need --lang-dir or --graph")
        return {n: avail[n] for n in names}

    # ------------------------------------------------------------------ model outputs
    def _nnet_outputs(self, path: PathLike) -> list[ModelOutputs]:
        try:
            return run_model(self.model, path, self.cfg, self.device, self.opts.max_duration,
                             token_field=self.ref_field)
        except (OSError, ValueError) as e:
            raise DecodeError(str(e)) from e

    def _gmm_outputs(self, path: PathLike) -> list[ModelOutputs]:
        from lhotse import CutSet

        from wfst_asr.gmm.features import cut_features

        try:
            cuts = CutSet.from_file(path)
        except (OSError, ValueError) as e:
            raise DecodeError(f"cannot read {path}: {e}") from e
        cf = cut_features(cuts)
        if cf.skipped:
            self.log(f"{path}: {len(cf.skipped)} cuts without audio left out: "
                     + "; ".join(cf.skipped[:3]))
        by_id = {c.id: c for c in cuts}
        refs: dict[str, list[str]] = {}
        for u in cf.feats:
            sup = by_id[u].supervisions[0]
            ref = sup.text if self.ref_field == "text" else (sup.custom or {}).get(self.ref_field)
            if ref is None:
                raise DecodeError(f"{path}: supervision {sup.id} has no {self.ref_field!r} field")
            refs[u] = ref.split() if isinstance(ref, str) else list(ref)
        ids = sorted(cf.feats)
        seconds = {u: float(by_id[u].duration) for u in ids}
        out = []
        for chunk in _batches_by_duration(ids, seconds, self.opts.max_duration):
            lens = torch.tensor([cf.feats[u].shape[0] for u in chunk])
            lp = torch.zeros(len(chunk), int(lens.max()), self.num_outputs)
            for i, u in enumerate(chunk):
                ll = self.model.log_likelihoods(cf.feats[u])
                lp[i, :lens[i], 1:] = (self.acoustic_scale * ll).float()
            out.append(ModelOutputs(chunk, [cf.speakers[u] for u in chunk],
                                    [refs[u] for u in chunk], lp, lens))
        return out

    def outputs(self, path: PathLike) -> list[ModelOutputs]:
        """The model's outputs over the cuts of ``path``, batch by batch (prior-corrected for
        HMM models with a prior scale)."""
        batches = self._gmm_outputs(path) if self.kind == "gmm" else self._nnet_outputs(path)
        shift = self.prior_shift()
        if shift is not None:
            batches = [b._replace(log_probs=b.log_probs - shift) for b in batches]
        return batches

    def prior_shift(self) -> torch.Tensor | None:
        """float32 ``[V]``: ``alpha * log p(s)`` (column 0: 0) for an HMM model with a prior
        scale, else None (computed once)."""
        if self.kind == "gmm" or self.topo is None or self.topo.is_ctc:
            return None
        alpha = self.opts.prior_scale
        if alpha is None:
            alpha = float(self.loss_opts.get("prior_scale", 0.0))
        if not alpha:
            return None
        if self._prior is None:
            aligned = bool(self.loss_opts.get("ali_topology"))
            prior = self._counts_prior() if aligned else self._train_prior()
            shift = (alpha * prior.clamp(min=1e-20).log()).float()
            shift[0] = 0.0
            self._prior = shift
            self.prior_note = (f"scaled likelihoods: log p(s|x) - {alpha:g} * log p(s), prior "
                               f"{'of the alignment counts' if aligned else 'of the mean posteriors'}"
                               f" over {self.cfg['train_cuts']}")
            self.log(self.prior_note)
        return self._prior

    def _train_prior(self) -> torch.Tensor:
        """float64 ``[V]``: the mean softmax output over the frames of the training cuts."""
        from wfst_asr.losses import HmmLoss

        total, frames = None, 0
        for b in self._nnet_outputs(self.cfg["train_cuts"]):
            n = int(b.lens.sum())
            part = HmmLoss.estimate_prior(b.log_probs, b.lens) * n
            total = part if total is None else total + part
            frames += n
        if total is None:
            raise DecodeError(f"no frames in {self.cfg['train_cuts']} (the prior's data)")
        return total / max(frames, 1)

    def _counts_prior(self) -> torch.Tensor:
        """float64 ``[V]``: the prior of the training targets of a hybrid trained on
        alignments (``token_field`` of the training cuts, at the model's output rate)."""
        from lhotse import CutSet

        from wfst_asr.losses import HmmLoss, alignment_prior

        assert self.topo is not None
        crit = alignment_criterion(self.cfg, HmmLoss(self.topo, mode="ce"), self.topo)
        fld = self.cfg["token_field"]
        alis = [s.custom[fld] for c in CutSet.from_file(self.cfg["train_cuts"])
                for s in c.supervisions if s.custom and fld in s.custom]
        if not alis:
            raise DecodeError(f"no {fld!r} alignments in {self.cfg['train_cuts']} (the prior)")
        targets = crit.targets([a.split() if isinstance(a, str) else a for a in alis])
        return alignment_prior(targets, crit.num_outputs)

    # ------------------------------------------------------------------ decoding
    @staticmethod
    def _decode(batches: list[ModelOutputs], fn: BatchFn) -> dict[str, list[int]]:
        hyps: dict[str, list[int]] = {}
        for b in batches:
            for uid, h in zip(b.ids, fn(b.log_probs, b.lens)):
                hyps[uid] = h
        return hyps

    def run(self, sets: dict[str, PathLike], out_dir: PathLike) -> dict[str, Any]:
        """Decode every set (``{name: cuts path}``) with every method, write the decode
        directory ``out_dir`` and return its settings (also ``settings.json``)."""
        o = self.opts
        out = Path(out_dir)
        metric = o.metric.upper()
        if not sets:
            raise DecodeError("no cuts to decode (give --dev-cuts / --test-cuts / --cuts)")
        scales, penalties = [float(x) for x in o.lm_scales], [float(x) for x in o.word_penalties]
        if not scales or not penalties:
            raise DecodeError("empty --lm-scales or --word-penalties")
        needs_tuning = any(m.tuned for m in self.methods.values()) and \
            len(scales) * len(penalties) > 1
        if needs_tuning and o.tune_set not in sets:
            raise DecodeError(f"the graph methods choose among {len(scales) * len(penalties)} "
                              f"settings on the tune set {o.tune_set!r}, which is not given "
                              "(--dev-cuts, or --cuts NAME=PATH and --tune-set NAME)")
        for name, path in sets.items():
            if not Path(path).is_file():
                raise DecodeError(f"{path}: no such cuts file ({name})")
        if any(m.tuned and m.name in (*GRAPH_METHODS, "kaldi") for m in self.methods.values()):
            _ = self.graph  # compile / check the graph before the model runs
        (out / SETTINGS).unlink(missing_ok=True)  # a dir without it is being written
        data: dict[str, list[ModelOutputs]] = {}
        refs: dict[str, dict[str, list[str]]] = {}
        spk: dict[str, dict[str, str]] = {}
        for name, path in sets.items():
            t0 = time.perf_counter()
            data[name] = self.outputs(path)
            refs[name] = {u: [self.tokens[r - 1] if isinstance(r, int) and self.tokens else
                              str(r) for r in ref]
                          for b in data[name] for u, ref in zip(b.ids, b.refs)}
            spk[name] = {u: str(s) for b in data[name] for u, s in zip(b.ids, b.speakers)
                         if s is not None}
            self.log(f"{name}: {len(refs[name])} utterances through the model "
                     f"({time.perf_counter() - t0:.1f} s)")
            ref_path(out, name).parent.mkdir(parents=True, exist_ok=True)
            write_text(ref_path(out, name), refs[name])
            write_utt2spk(utt2spk_path(out, name), spk[name])

        def report(name: str, hyps: dict[str, list[str]]) -> ScoreReport:
            return score_texts(refs[name], hyps, spk[name], metric, o.fold)

        settings_m: dict[str, dict[str, Any]] = {}
        chosen: dict[str, tuple[float, float]] = {}
        all_hyps: dict[str, dict[str, dict[str, list[str]]]] = {}
        for mname, m in self.methods.items():
            t0 = time.perf_counter()
            hyps: dict[str, dict[str, list[str]]] = {}
            info: dict[str, Any] = {"how": m.how, **m.info, "setting": None}
            if m.tuned:
                if m.follows in chosen:
                    s, wp = chosen[m.follows]
                    info["how"] += f", at {m.follows}'s setting"
                elif len(scales) * len(penalties) == 1:
                    s, wp = scales[0], penalties[0]
                else:
                    res, tune_hyps = self._tune(m, data[o.tune_set], report, scales, penalties)
                    s, wp = res.lm_scale, res.word_penalty
                    hyps[o.tune_set] = tune_hyps
                    info["tune_error"] = res.error
                    info["how"] += (f", tuned on {o.tune_set} over lm_scale {scales} x "
                                    f"word_penalty {penalties}: {res.describe()} "
                                    f"({o.tune_set} {metric} {res.error:.2f}%)")
                    p = out / mname / f"sweep_{o.tune_set}.txt"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(p, res.format_table())
                chosen[mname] = (s, wp)
                info["setting"] = {"lm_scale": s, "word_penalty": wp}
            else:
                s, wp = 0.0, 0.0
            todo = [n for n in sets if n not in hyps]
            if todo:
                fn = m.at(s, wp)
                per_utt = info.setdefault("seconds_per_utt", {})
                for name in todo:
                    t1 = time.perf_counter()
                    hyps[name] = {u: m.symbols(h) for u, h in self._decode(data[name], fn).items()}
                    per_utt[name] = round((time.perf_counter() - t1) / max(len(hyps[name]), 1), 4)
            for name in sets:
                p = hyp_path(out, mname, name)
                p.parent.mkdir(parents=True, exist_ok=True)
                write_text(p, hyps[name])
                rep = report(name, hyps[name])
                self.log(f"{mname:12s} {name:5s} {metric} {rep.rate:6.2f}%  ({rep.summary()})")
            info["seconds"] = round(time.perf_counter() - t0, 2)
            if o.forced_best and m.tuned and m.follows is None and self.loss != "transducer":
                info["forced_best"] = self._forced_best(mname, data, refs, hyps, s, wp, out)
            all_hyps[mname] = hyps
            if m.tuned and m.follows in all_hyps:  # e.g. Kaldi's decoder against the engine's
                ref_h = all_hyps[m.follows]
                same = {n: [sum(hyps[n].get(u) == h for u, h in ref_h[n].items()), len(ref_h[n])]
                        for n in sets}
                info["same_1best_as"] = {m.follows: same}
                self.log(f"{mname}: the same 1-best as {m.follows} on " + ", ".join(
                    f"{a} of {b} {n} utterances" for n, (a, b) in same.items()))
            settings_m[mname] = info
        model_info = {"exp_dir": str(self.exp_dir), "checkpoint": str(self.checkpoint),
                      "kind": self.kind, "loss": self.loss, "describe": self.describe,
                      "topology": self.topo.name if self.topo is not None else None,
                      "ref_field": self.ref_field}
        if self.prior_note:
            model_info["prior"] = self.prior_note
        settings = {"sets": list(sets), "cuts": {n: str(p) for n, p in sets.items()},
                    "tune_set": o.tune_set if needs_tuning else None, "metric": metric,
                    "map": o.fold.as_dict() if o.fold is not None else None,
                    "lang_dir": str(self.lang_dir) if self.lang_dir is not None else None,
                    "graph": str(self.graph_file) if self.graph_file is not None else None,
                    "grid": {"lm_scales": scales, "word_penalties": penalties},
                    "model": model_info, "methods": settings_m}
        write_settings(out, settings)
        return settings

    def _forced_best(self, mname: str, data: dict[str, list[ModelOutputs]],
                     refs: dict[str, dict[str, list[str]]],
                     hyps: dict[str, dict[str, list[str]]], lm_scale: float,
                     word_penalty: float, out: Path) -> dict[str, dict[str, int]]:
        """Forced-best check of a graph method at its setting: per set, how many wrong
        utterances are search errors (the reference scores higher than the hypothesis in the
        graph), model errors or unreachable references; per utterance in
        ``<out>/<method>/forced_best_<set>.tsv``."""
        from collections import Counter

        from wfst_asr.decode.forced import ForcedBest, compare

        words = self._words
        assert words is not None
        t0 = time.perf_counter()
        fb = ForcedBest(self.graph, lm_scale, word_penalty)

        def ids(ws: list[str]) -> list[int] | None:
            got = [words.get(w) if w in words else None for w in ws]
            return None if any(i is None for i in got) else [int(i) for i in got]

        summary: dict[str, dict[str, int]] = {}
        for name, batches in data.items():
            counts: Counter[str] = Counter()
            lines = ["utt\tkind\tref_score\thyp_score"]
            for b in batches:
                r = [ids(refs[name][u]) for u in b.ids]
                h = [ids(hyps[name].get(u, [])) or [] for u in b.ids]
                for u, (kind, rs, hs) in zip(b.ids, compare(fb, b.log_probs, b.lens, r, h)):
                    counts[kind] += 1
                    lines.append(f"{u}\t{kind}\t{rs:.3f}\t{hs:.3f}")
            atomic_write_text(out / mname / f"forced_best_{name}.tsv", "\n".join(lines) + "\n")
            summary[name] = {k: counts[k] for k in ("correct", "search", "model", "unreachable")}
            self.log(f"{mname} forced-best {name}: " + ", ".join(
                f"{v} {k}" for k, v in summary[name].items()) + " (search: the reference "
                "scores higher than the 1-best; model: lower; unreachable: not in the graph)")
        self.log(f"{mname}: forced-best check {time.perf_counter() - t0:.1f} s")
        return summary

    def _tune(self, m: Method, batches: list[ModelOutputs],
              report: Callable[[str, dict[str, list[str]]], ScoreReport],
              scales: list[float], penalties: list[float]
              ) -> tuple[GridResult, dict[str, list[str]]]:
        """grid_search of ``m`` on the tune set; ``(result, the chosen setting's hyps)``."""
        o = self.opts
        metric = o.metric.upper()
        seen: dict[tuple[float, float], dict[str, list[str]]] = {}

        def evaluate(lm_scale: float, word_penalty: float) -> float:
            fn = m.at(lm_scale, word_penalty)
            hyps = {u: m.symbols(h) for u, h in self._decode(batches, fn).items()}
            seen[lm_scale, word_penalty] = hyps
            rep = report(o.tune_set, hyps)
            self.log(f"  {m.name} {o.tune_set} lm_scale={lm_scale:<4g} "
                     f"word_penalty={word_penalty:<5g} {metric} {rep.rate:.2f}%  "
                     f"({rep.summary()})")
            return rep.rate

        res = grid_search(evaluate, scales, penalties, metric=metric)
        self.log(f"{m.name}: chosen {res.describe()} ({o.tune_set} {metric} {res.error:.2f}%)")
        return res, seen[res.lm_scale, res.word_penalty]
