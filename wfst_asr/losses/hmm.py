"""HMM-style training criteria of a hybrid model, as graph intersections with the FSA engine.

The network scores HMM emission units per frame: ``log_probs [B, T, V]`` where column ``o >= 1``
is an output id of the topology (a pdf of an HMM state; column 0 is unused by HMM topologies).
Each transcript becomes a graph ``H o transcript`` (:class:`~wfst_asr.graphs.training.
HmmTrainingGraphCompiler`): its paths are the HMM state sequences of the transcript, one arc
per frame, with H's transition log-probabilities as arc scores (self-loops included).

* ``HmmLoss(mode="forward")``: ``-log sum_paths exp(transitions + emissions)`` (log semiring,
  the full-sum / Baum-Welch criterion), streamed frame by frame by ``get_tot_scores``;
* ``HmmLoss(mode="viterbi")``: minus the best path's score (tropical semiring): Viterbi
  training; its gradient is the indicator of one best path;
* ``HmmLoss(mode="ce")`` / :func:`frame_ce_loss`: frame-level cross-entropy against per-frame
  pdf targets: given alignments (e.g. from a GMM system, see
  :func:`wfst_asr.losses.align.alignments_from_transition_ids`) or forced alignments of the
  current model made by :func:`wfst_asr.losses.align.viterbi_align` (the engine's best path).

Topologies (all in :mod:`wfst_asr.graphs.topo`): :func:`~wfst_asr.graphs.topo.hmm_topo` (1 or
``n`` states per token, output id :func:`~wfst_asr.graphs.topo.hmm_output_id`), or a Kaldi topology from
:func:`wfst_asr.graphs.topo.make_topology` (``hmm-1state``, ``hmm-3state``, ``chain``) turned
into a frame-synchronous H over pdfs by :func:`~wfst_asr.graphs.topo.pdf_topo` (output id = pdf id + 1).

Prior correction (``HmmLoss(prior_scale=alpha)``): with a softmax network the full-sum
criterion trained from scratch tends to a degenerate optimum where the most frequent states
(TIMIT: silence and closures) take almost every frame: the network learns the state prior.
As in RWTH's full-sum training from scratch (Raissi et al., "HMM vs. CTC for automatic speech
recognition: comparison based on full-sum training from scratch", SLT 2022), the emissions in
the graph are then the "scaled likelihoods" ``log p(s|x) - alpha * log p(s)``, with the prior
``p(s)`` estimated online: an exponential moving average (``prior_momentum``) of the mean
softmax output over the valid frames of each training batch (updated only in training mode
with gradients enabled, i.e. not by a ``no_grad`` dev pass; kept in the buffer ``log_prior``,
uniform at the start). Decode with the same correction
(:meth:`HmmLoss.estimate_prior`).

Infeasible utterances (a transcript that needs more frames than the utterance has after
subsampling, :func:`wfst_asr.losses.common.feasible`) are found before the loss, left out, and counted
(``info["excluded"]``); a total that still comes out non-finite is dropped the same way, and an
utterance with NaN or +inf log-probs in its frames is left out before anything is computed
(``info["nonfinite_input"]``; it does not reach the prior either), so the loss and its gradient
are never inf/NaN.

Alignments from a GMM system: :mod:`wfst_asr.gmm` trains a monophone GMM-HMM with
kaldi-hmm-gmm; :class:`AlignmentCeLoss` trains a hybrid with frame cross-entropy on such
alignments, given per input frame and brought to the network's output rate (the middle input
frame of each output frame, pdfs mapped to the network's topology by
:func:`~wfst_asr.graphs.topo.pdf_map`). Alignment itself (Viterbi forced alignment, equal
alignment, subsampling, the prior of the counts) lives in :mod:`wfst_asr.losses.align`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wfst_asr.fsa import DenseFsaVec, Fsa, get_tot_scores, intersect_dense
from wfst_asr.graphs.topo import Topology, pdf_topo
from wfst_asr.graphs.training import HmmTrainingGraphCompiler
from wfst_asr.losses.align import _best_path_labels, subsample_alignments
from wfst_asr.losses.common import (
    _as_token_lists,
    check_batch,
    check_outputs,
    exclusion_info,
    feasible,
    frame_mask,
    isolate_nonfinite,
    num_outputs,
    reduce_loss,
    segments,
    select_fsas,
)

__all__ = ["AlignmentCeLoss", "HmmLoss", "frame_ce_loss"]

log = logging.getLogger(__name__)

_MODES = ("forward", "viterbi", "ce")
_REDUCTIONS = ("sum", "mean", "none")


def frame_ce_loss(log_probs: torch.Tensor, alignments: torch.Tensor,
                  lens: torch.Tensor | Sequence[int] | None = None,
                  reduction: str = "sum") -> torch.Tensor:
    """Frame-level cross-entropy ``-sum_t log_probs[b, t, alignments[b, t]]``.

    Args:
      log_probs: ``[B, T, V]`` (log-softmax outputs for a proper cross-entropy).
      alignments: int ``[B, T_a]`` targets (output ids), ``T_a <= T``; -1 = no target.
      lens: optional ``[B]``: frames at or after ``lens[b]`` are ignored too.
      reduction: ``"sum"``; ``"mean"`` (per aligned frame); ``"none"``: ``[B]`` sums.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    B, T, V = log_probs.shape
    ali = torch.as_tensor(alignments).to(log_probs.device, torch.int64)
    if ali.dim() != 2 or ali.shape[0] != B or ali.shape[1] > T:
        raise ValueError(f"alignments must be [B={B}, T_a <= {T}], got {tuple(ali.shape)}")
    if ali.shape[1] < T:
        ali = F.pad(ali, (0, T - ali.shape[1]), value=-1)
    if lens is not None:
        t = torch.arange(T, device=ali.device)
        lens_d = torch.as_tensor(lens).to(ali.device).reshape(-1, 1)
        ali = torch.where(t < lens_d, ali, torch.full_like(ali, -1))
    if bool((ali >= V).any()):
        raise ValueError(f"alignment targets must be < V={V}, got {int(ali.max())}")
    mask = ali >= 0
    nll = -log_probs.gather(-1, ali.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nll = torch.where(mask, nll, torch.zeros_like(nll))
    per_utt = nll.sum(1)
    if reduction == "none":
        return per_utt
    if reduction == "mean":
        return per_utt.sum() / max(int(mask.sum()), 1)
    return per_utt.sum()


# ---------------------------------------------------------------------------- the loss
class HmmLoss(nn.Module):
    """HMM training criterion of a hybrid model: full-sum, Viterbi or frame cross-entropy.

    Args:
      topo: an :class:`~wfst_asr.graphs.training.HmmTrainingGraphCompiler`, or its topology:
        an epsilon-free ``H`` Fsa (e.g. :func:`~wfst_asr.graphs.topo.hmm_topo`) or a Kaldi
        :class:`~wfst_asr.graphs.topo.Topology` (converted with :func:`pdf_topo`).
      mode: ``"forward"`` (log semiring: ``-log`` of the sum over all state sequences),
        ``"viterbi"`` (tropical: minus the best state sequence's score) or ``"ce"``
        (frame cross-entropy against alignments; without given alignments, forced
        alignments of the current outputs by :func:`viterbi_align`).
      reduction: ``"sum"`` over kept utterances; ``"mean"``: that sum over the number of
        output frames of the kept utterances (``info["frames"]``); ``"none"``: ``[B]``, 0 for
        excluded utterances.
      use_double_scores: float64 totals (the loss is then float64).
      lexicon: passed to the compiler when ``topo`` is a topology (word transcripts).
      prior_scale: ``alpha`` of the prior correction (module docstring): the graph sees
        ``log_probs - alpha * log_prior``; 0 (default) disables it. The loss value is then
        that of the corrected scores (for ``"ce"``, the alignment uses them, the cross-entropy
        the plain log-probs).
      prior_momentum: the moving average's weight of the old prior, per training batch.

    ``forward(log_probs [B, T, V], out_lens [B], token_seqs, alignments=None)`` returns
    ``(loss, info)``: ``token_seqs`` are token (phone) ids >= 1 (word ids with a lexicon),
    ``alignments`` (mode ``"ce"`` only, optional) int ``[B, T_a]`` output ids with -1 as
    padding; ``V`` must equal the topology's largest output id + 1. ``info`` has
    ``num_utts``, ``num_excluded``/``excluded`` (transcript longer than the frames allow,
    NaN/+inf log-probs, or a non-finite total), ``num_nonfinite``, ``nonfinite_input`` (the
    utterances with NaN/+inf log-probs), ``frames`` (output frames of the kept utterances)
    and, for ``"ce"``, ``aligned_frames``.

    Semirings: ``"forward"`` is the log semiring (gradient w.r.t. the log-probs = minus the
    state occupation posteriors, -1 per frame in total), ``"viterbi"`` the tropical one
    (minus the indicator of one best path). ``"ce"`` with self-alignment takes the Viterbi
    path's labels as fixed targets, so its gradient w.r.t. the log-probs is the Viterbi one;
    its value lacks the path's transition scores.
    """

    def __init__(self, topo: HmmTrainingGraphCompiler | Fsa | Topology, mode: str = "forward",
                 reduction: str = "sum", use_double_scores: bool = False,
                 lexicon=None, prior_scale: float = 0.0, prior_momentum: float = 0.99) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if prior_scale < 0 or not 0.0 <= prior_momentum < 1.0:
            raise ValueError("prior_scale must be >= 0 and prior_momentum in [0, 1)")
        if isinstance(topo, Topology):
            topo = pdf_topo(topo)
        if isinstance(topo, Fsa):
            topo = HmmTrainingGraphCompiler(topo, lexicon=lexicon)
        if not isinstance(topo, HmmTrainingGraphCompiler):
            raise TypeError("topo must be an HmmTrainingGraphCompiler, an H Fsa or a Topology")
        self.compiler = topo
        self.num_outputs = num_outputs(topo.topo)
        self.mode, self.reduction = mode, reduction
        self.use_double_scores = bool(use_double_scores)
        self.prior_scale, self.prior_momentum = float(prior_scale), float(prior_momentum)
        V = self.num_outputs
        init = torch.full((V,), -math.log(max(V - 1, 1)), dtype=torch.float64)
        init[0] = 0.0  # column 0: no arc reads it
        self.register_buffer("log_prior", init)

    def extra_repr(self) -> str:
        extra = f", prior_scale={self.prior_scale}" if self.prior_scale else ""
        return (f"mode={self.mode!r}, reduction={self.reduction!r}, "
                f"num_outputs={self.num_outputs}{extra}")

    @staticmethod
    def estimate_prior(log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int]
                       ) -> torch.Tensor:
        """float64 ``[V]``: the mean of ``exp(log_probs)`` over the valid frames (the state
        prior a softmax network implies on that data; column 0 included)."""
        lens = torch.as_tensor(lens).to(log_probs.device).reshape(-1, 1)
        mask = torch.arange(log_probs.shape[1], device=log_probs.device) < lens
        post = log_probs.detach().to(torch.float64).exp() * mask.unsqueeze(-1)
        return post.sum((0, 1)) / mask.sum().clamp(min=1)

    def _corrected(self, log_probs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """The emissions the graph sees: ``log_probs - alpha * log_prior`` with the prior
        before this batch; then (training, gradients on) the prior's moving average moves."""
        if not self.prior_scale:
            return log_probs
        out = log_probs - self.prior_scale * self.log_prior.to(log_probs)
        if self.training and torch.is_grad_enabled() and int(lens.sum()) > 0:
            prior = self.estimate_prior(log_probs, lens).to(self.log_prior.device)
            m = self.prior_momentum
            new = m * self.log_prior.exp() + (1.0 - m) * prior
            self.log_prior.copy_(new.clamp(min=1e-20).log())
        return out

    def graphs(self, token_seqs) -> Fsa:
        """The training graphs (CPU FsaVec) of a batch of transcripts."""
        return self.compiler.compile(_as_token_lists(token_seqs))

    def forward(self, log_probs: torch.Tensor, out_lens: torch.Tensor, token_seqs=None,
                alignments: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        seqs = _as_token_lists(token_seqs) if token_seqs is not None else None
        lens = check_batch(log_probs, out_lens, len(seqs) if seqs is not None else None)
        B = log_probs.shape[0]
        check_outputs(log_probs.shape[2], self.num_outputs, "the HMM topology")
        dev = log_probs.device
        dtype = torch.float64 if self.use_double_scores else log_probs.dtype
        if alignments is not None and self.mode != "ce":
            raise ValueError("alignments are only used with mode='ce'")
        if alignments is None and seqs is None:
            raise ValueError("token_seqs are needed (or alignments with mode='ce')")
        log_probs, bad_input = isolate_nonfinite(
            log_probs, frame_mask(lens, log_probs.shape[1]), "log_probs", "HmmLoss")
        if alignments is not None:
            return self._ce_given(log_probs, lens, alignments, dtype, bad_input)
        graphs = self.graphs(seqs)
        # the prior's moving average sees the frames of the clean utterances only
        scores = self._corrected(log_probs, lens.masked_fill(bad_input, 0))
        ok, _ = feasible(graphs, lens)
        ok &= ~bad_input
        keep = ok.nonzero().squeeze(1)
        per_utt = log_probs.new_zeros(B, dtype=dtype)
        num_nonfinite, aligned = 0, 0
        if keep.numel():
            g = select_fsas(graphs, keep).to(dev)
            segs = segments(keep, lens)
            if self.mode == "ce":
                # forced alignment with the current outputs (no gradient), then frame CE;
                # utterances not in segs get no alignment (-1 rows)
                ali = _best_path_labels(g, scores, segs)
                got = (ali >= 0).sum(1).cpu()
                bad = keep[got[keep] != lens[keep]]  # no path after all
                ali[bad.to(dev)] = -1
                aligned = int(got.sum()) - int(got[bad].sum())
                per_utt = frame_ce_loss(log_probs.to(dtype), ali, reduction="none")
            else:
                tot = get_tot_scores(intersect_dense(g, DenseFsaVec(scores, segs)),
                                     log_semiring=self.mode == "forward",
                                     use_double_scores=self.use_double_scores)
                fin = torch.isfinite(tot).detach()
                bad = keep[(~fin).nonzero().squeeze(1).cpu()]
                # where(): the gradient of a dropped (non-finite) total is exactly 0
                nll = torch.where(fin, -tot, torch.zeros_like(tot))
                per_utt = per_utt.index_put((keep.to(dev),), nll.to(dtype))
            if bad.numel():
                num_nonfinite = bad.numel()
                ok[bad] = False
                log.warning("HmmLoss: %d feasible utterance(s) have no path (non-finite "
                            "total); excluded: %s", num_nonfinite, bad.tolist())
        info = self._info(B, ok, lens, num_nonfinite, bad_input)
        if self.mode == "ce":
            info["aligned_frames"] = aligned
        return self._reduce(per_utt, info, log_probs, keep.numel() > 0), info

    def _ce_given(self, log_probs, lens, alignments, dtype, bad_input
                  ) -> tuple[torch.Tensor, dict]:
        B = log_probs.shape[0]
        ali = torch.as_tensor(alignments).to(log_probs.device, torch.int64)
        ce_lens = lens.masked_fill(bad_input, 0)  # no frame of an excluded utterance counts
        per_utt = frame_ce_loss(log_probs.to(dtype), ali, ce_lens, reduction="none")
        T = log_probs.shape[1]
        if ali.shape[1] < T:
            ali = F.pad(ali, (0, T - ali.shape[1]), value=-1)
        t = torch.arange(T, device=ali.device)
        valid = (ali >= 0) & (t < ce_lens.to(ali.device).unsqueeze(1))
        ok = (valid.any(1).cpu() | (lens == 0)) & ~bad_input
        info = self._info(B, ok, lens, 0, bad_input)
        info["aligned_frames"] = int(valid.sum())
        return self._reduce(per_utt, info, log_probs, bool(ok.any())), info

    @staticmethod
    def _info(B: int, ok: torch.Tensor, lens: torch.Tensor, num_nonfinite: int,
              bad_input: torch.Tensor) -> dict:
        info = exclusion_info(B, ok, int(lens[ok].sum()), num_nonfinite, bad_input)
        if info["excluded"]:
            log.debug("HmmLoss: excluded %d/%d utterances: %s", info["num_excluded"], B,
                      info["excluded"])
        return info

    def _reduce(self, per_utt: torch.Tensor, info: dict, log_probs: torch.Tensor,
                any_kept: bool) -> torch.Tensor:
        return reduce_loss(per_utt, info["frames"], self.reduction,
                           () if any_kept else (log_probs,))


# ---------------------------------------------------------------------------- given alignments
class AlignmentCeLoss(nn.Module):
    """Frame cross-entropy of a hybrid model against given alignments (e.g. a GMM system's).

    The trainer passes each utterance's alignment where it passes transcripts for the other
    criteria (the supervision field named by ``cfg.token_field``): one label (a pdf of the
    aligning system's topology) per input frame. :func:`subsample_alignments` brings them to
    the output rate, through ``mapping`` (:func:`pdf_map`: the aligner's pdfs -> this model's
    output ids), and ``loss`` (an :class:`HmmLoss` with ``mode="ce"``) computes the
    cross-entropy ``-sum_t log_probs[b, t, target[b, t]]`` (frames without a target ignored;
    an utterance without any is excluded and counted in ``info``).

    ``forward(log_probs [B, T, V], out_lens [B], alignments)`` -> ``(loss, info)``.
    """

    def __init__(self, loss: HmmLoss, mapping: torch.Tensor, subsampling: int = 1) -> None:
        super().__init__()
        if loss.mode != "ce":
            raise ValueError(f"AlignmentCeLoss needs an HmmLoss with mode='ce', got {loss.mode!r}")
        if int(mapping.max()) >= loss.num_outputs:
            raise ValueError(f"mapping targets up to {int(mapping.max())}, but the topology has "
                             f"{loss.num_outputs} outputs")
        self.loss = loss
        self.register_buffer("mapping", mapping.to(torch.int64), persistent=False)
        self.subsampling = int(subsampling)

    @property
    def reduction(self) -> str:
        return self.loss.reduction

    @property
    def num_outputs(self) -> int:
        return self.loss.num_outputs

    def targets(self, alignments) -> torch.Tensor:
        """int64 ``[B, T_out]`` output ids (-1 = none) of a batch of input-rate alignments."""
        return subsample_alignments(_as_token_lists(alignments), self.subsampling,
                                    self.mapping.cpu())

    def forward(self, log_probs: torch.Tensor, out_lens: torch.Tensor, alignments
                ) -> tuple[torch.Tensor, dict]:
        ali = self.targets(alignments)
        T = log_probs.shape[1]
        if ali.shape[1] > T:
            ali = ali[:, :T]
        return self.loss(log_probs, out_lens, alignments=ali.to(log_probs.device))
