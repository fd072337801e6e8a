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
  :func:`alignments_from_transition_ids`) or forced alignments of the current model made by
  :func:`viterbi_align` (the engine's best path).

Topologies: :func:`wfst_asr.graphs.training.hmm_topo` (1 or ``n`` states per token, output id
:func:`~wfst_asr.graphs.training.hmm_output_id`), or a Kaldi topology from
:func:`wfst_asr.graphs.topo.make_topology` (``hmm-1state``, ``hmm-3state``, ``chain``) turned
into a frame-synchronous H over pdfs by :func:`pdf_topo` (output id = pdf id + 1).

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
subsampling, :func:`feasible`) are found before the loss, left out, and counted
(``info["excluded"]``); a total that still comes out non-finite is dropped the same way, so the
loss and its gradient are never inf/NaN for finite inputs.

Alignments from a GMM system: :mod:`wfst_asr.gmm` trains a monophone GMM-HMM with
kaldi-hmm-gmm (aligned with :func:`viterbi_align` on the :func:`pdf_topo` training graphs);
:class:`AlignmentCeLoss` trains a hybrid with frame cross-entropy on such alignments, given per
input frame and brought to the network's output rate by :func:`subsample_alignments` (the
middle input frame of each output frame, pdfs mapped to the network's topology by
:func:`pdf_map`); :func:`alignment_prior` gives the state prior of their counts for decoding.
Kaldi alignments made elsewhere (transition-ids per frame, same topology) become targets with
:func:`alignments_from_transition_ids`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wfst_asr.fsa import DenseFsaVec, Fsa, get_tot_scores, intersect_dense
from wfst_asr.graphs.topo import Topology
from wfst_asr.graphs.training import HmmTrainingGraphCompiler

__all__ = ["AlignmentCeLoss", "HmmLoss", "alignment_prior", "alignments_from_transition_ids",
           "feasible", "frame_ce_loss", "min_frames", "pdf_map", "pdf_topo",
           "subsample_alignments", "viterbi_align"]

log = logging.getLogger(__name__)

_MODES = ("forward", "viterbi", "ce")
_REDUCTIONS = ("sum", "mean", "none")


# ---------------------------------------------------------------------------- topologies
def pdf_topo(topology: Topology) -> Fsa:
    """A Kaldi HMM topology's ``H`` as a frame-synchronous transducer over pdfs.

    :func:`~wfst_asr.graphs.topo.make_topology` gives ``H`` with transition-id labels and
    epsilon arcs (``0:0``, back to the central state 0 after each phone); the engine needs
    every arc to consume a frame. Here each epsilon arc ``q -> r`` (score ``w``) is replaced by
    copies of the arcs leaving ``r`` (``q -> x``, score ``w +`` theirs; repeated while epsilon
    arcs remain), which keeps every path and its score, and each transition-id label ``t``
    becomes ``tid2pdf[t] + 1``: the network then has ``num_pdfs + 1`` outputs, column 0 unused
    (the convention of :func:`~wfst_asr.graphs.training.hmm_output_id`). ``aux_labels`` stay
    the phones, so the result works with :class:`~wfst_asr.graphs.training.
    HmmTrainingGraphCompiler` and :class:`~wfst_asr.graphs.training.MmiTrainingGraphCompiler`.
    """
    if topology.is_ctc or topology.tid2pdf is None:
        raise ValueError(f"pdf_topo needs an HMM topology, got {topology.name!r} (a CTC "
                         "topology is frame-synchronous already: use topology.H)")
    H = topology.H.to("cpu").detach()
    a = H.arcs.long()
    src, dst, lab = a[:, 0].tolist(), a[:, 1].tolist(), a[:, 2].tolist()
    aux, sc = H.aux_labels.tolist(), H.scores.tolist()
    arcs = list(zip(src, dst, lab, aux, sc))
    for _ in range(H.num_states + 1):
        eps = [x for x in arcs if x[2] == 0]
        if not eps:
            break
        leaving: dict[int, list[tuple]] = {}
        for x in arcs:
            leaving.setdefault(x[0], []).append(x)
        new = [x for x in arcs if x[2] != 0]
        for q, r, _lab, eaux, w in eps:
            if eaux != 0:
                raise ValueError("pdf_topo: an epsilon arc with an output token")
            new += [(q, d, lb, ax, w + s) for _, d, lb, ax, s in leaving.get(r, [])]
        arcs = new
    else:
        raise ValueError("pdf_topo: H has an epsilon cycle")
    t = torch.tensor([x[:4] for x in arcs], dtype=torch.int64)
    pdf = topology.tid2pdf.to(torch.int64)
    labels = torch.where(t[:, 2] > 0, pdf[t[:, 2].clamp(min=0)] + 1, t[:, 2])
    out = torch.stack([t[:, 0], t[:, 1], labels], 1).to(torch.int32)
    return Fsa(out, torch.tensor([x[4] for x in arcs], dtype=torch.float32),
               num_states=H.num_states, aux_labels=t[:, 3].to(torch.int32))


def alignments_from_transition_ids(tids: torch.Tensor | Sequence[Sequence[int]],
                                   topology: Topology, subsampling: int = 1) -> torch.Tensor:
    """Kaldi alignments (transition-ids per frame, one list per utterance) -> CE targets
    ``[B, T]`` int64: output id ``pdf + 1`` (as :func:`pdf_topo`), -1 as padding.

    ``subsampling``: keep every ``subsampling``-th frame (frame ``k * subsampling``), for a
    network whose output rate is lower than the alignment's.
    """
    if topology.tid2pdf is None:
        raise ValueError(f"{topology.name!r} has no transition-ids (not an HMM topology)")
    rows = [torch.as_tensor(list(r) if not isinstance(r, torch.Tensor) else r,
                            dtype=torch.int64)[::subsampling] for r in tids]
    T = max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), T), -1, dtype=torch.int64)
    pdf = topology.tid2pdf.to(torch.int64)
    for i, r in enumerate(rows):
        if r.numel() and (int(r.min()) < 1 or int(r.max()) >= pdf.numel()):
            raise ValueError(f"utterance {i}: transition-ids must be in [1, {pdf.numel() - 1}]")
        out[i, :r.numel()] = pdf[r] + 1
    return out


# ---------------------------------------------------------------------------- graph helpers
_BIG = 1 << 40


def _frame_distances(g: Fsa, reverse: bool) -> torch.Tensor:
    """Fewest frames ``[S]`` from the start state to each state (``reverse``: from each state
    to the final state) of an FsaVec (CPU); ``_BIG`` where unreachable.

    Unweighted shortest distances (an arc with a label >= 0 costs one frame, the final -1 arc
    none) by relaxation rounds over all arcs of all graphs at once, as many rounds as the
    longest of the shortest paths."""
    S = g.num_states
    dist = torch.full((S,), _BIG, dtype=torch.int64)
    ends = g.final_states if reverse else g.start_states
    dist[ends[ends >= 0]] = 0
    cost = (g.labels >= 0).to(torch.int64)
    frm, to = (g.dst_global, g.src_global) if reverse else (g.src_global, g.dst_global)
    for _ in range(S + 1):
        new = dist.scatter_reduce(0, to, dist[frm] + cost, "amin", include_self=True)
        if torch.equal(new, dist):
            break
        dist = new
    return dist


def min_frames(graphs: Fsa) -> torch.Tensor:
    """int64 ``[N]`` (CPU): the fewest frames a complete path of each graph consumes (every
    arc with a label >= 0 consumes one frame, the final -1 arc none); -1 for a graph with no
    complete path."""
    g = graphs.as_vec().to("cpu")
    dist = _frame_distances(g, reverse=False)
    fin = g.final_states
    out = torch.full((g.num_fsas,), -1, dtype=torch.int64)
    has = fin >= 0
    d = dist[fin[has]]
    out[has] = torch.where(d >= _BIG, torch.full_like(d, -1), d)
    return out


def feasible(graphs: Fsa, lens: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ok [N] bool, need [N] int64)`` (CPU): can graph ``i`` consume exactly ``lens[i]``
    frames? ``need`` = :func:`min_frames`.

    ``ok`` is ``lens == need``, or ``lens >= `` the fewest frames of a complete path through a
    state with a frame self-loop (which can then absorb any number of extra frames). Exact
    for graphs whose only cycles are self-loops, such as the training graphs of HMM and CTC
    topologies (an empty transcript with an HMM topology fits 0 frames only; with CTC, any
    number through blank). For other graphs a length the test accepts may still have no path:
    the losses drop such a non-finite total afterwards.
    """
    g = graphs.as_vec().to("cpu")
    lens = torch.as_tensor(lens, dtype=torch.int64).reshape(-1)
    need = min_frames(g)
    d0 = _frame_distances(g, reverse=False)
    d1 = _frame_distances(g, reverse=True)
    a = g.arcs.long()
    loop = ((a[:, 0] == a[:, 1]) & (a[:, 2] >= 0)).nonzero().squeeze(1)
    q = g.src_global[loop]
    through = (d0[q] + d1[q]).clamp(max=_BIG)
    loop_need = torch.full((g.num_fsas,), _BIG, dtype=torch.int64)
    loop_need = loop_need.scatter_reduce(0, g.arc_fsa[loop], through, "amin", include_self=True)
    ok = (need >= 0) & (lens >= need) & ((lens == need) | (lens >= loop_need))
    return ok, need


def select_fsas(graphs: Fsa, idx: torch.Tensor) -> Fsa:
    """The FsaVec of ``graphs[idx]`` (in that order), attributes kept, in one gather."""
    g = graphs.as_vec()
    idx = torch.as_tensor(idx, dtype=torch.int64, device=g.device).reshape(-1)
    counts = (g.arc_splits[1:] - g.arc_splits[:-1])[idx]
    splits = torch.zeros(idx.numel() + 1, dtype=torch.int64, device=g.device)
    splits[1:] = counts.cumsum(0)
    total = int(splits[-1])
    run = torch.repeat_interleave(torch.arange(idx.numel(), device=g.device), counts,
                                  output_size=total)
    arc_map = g.arc_splits[idx][run] + torch.arange(total, device=g.device) - splits[run]
    return g.index_arcs(arc_map, g.arcs[arc_map], splits, g.num_states_per_fsa[idx])


def check_batch(log_probs: torch.Tensor, out_lens, num_texts: int | None) -> torch.Tensor:
    """Validate ``log_probs [B, T, V]`` and ``out_lens [B]``; return the lengths (CPU int64)."""
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [B, T, V], got {tuple(log_probs.shape)}")
    B, T, _ = log_probs.shape
    lens = torch.as_tensor(out_lens).detach().to("cpu", torch.int64).reshape(-1)
    if lens.numel() != B or (num_texts is not None and num_texts != B):
        raise ValueError(f"got {B} sequences of log-probs, {lens.numel()} lengths and "
                         f"{num_texts} transcripts")
    if bool((lens < 0).any()) or bool((lens > T).any()):
        raise ValueError(f"out_lens must lie in [0, T={T}], got {lens.tolist()}")
    return lens


def num_outputs(topo: Fsa) -> int:
    """The network output dimension a topology expects: its largest label + 1."""
    return int(topo.labels.max()) + 1 if topo.num_arcs else 0


def check_outputs(V: int, expected: int, what: str) -> None:
    if V != expected:
        raise ValueError(f"the network has {V} outputs per frame but {what} has labels "
                         f"0..{expected - 1} (expects {expected} outputs): the output layer "
                         f"and the topology do not match")


def segments(keep: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """int32 ``[K, 3]`` supervision segments ``(b, 0, lens[b])`` of the utterances ``keep``."""
    return torch.stack([keep, torch.zeros_like(keep), lens[keep]], 1).to(torch.int32)


def _as_token_lists(token_seqs) -> list[list[int]]:
    if isinstance(token_seqs, torch.Tensor):
        token_seqs = token_seqs.tolist()
    return [[int(t) for t in (s.tolist() if isinstance(s, torch.Tensor) else s)]
            for s in token_seqs]


# ---------------------------------------------------------------------------- alignments
def _best_path_labels(graphs: Fsa, log_probs: torch.Tensor, segs: torch.Tensor
                      ) -> torch.Tensor:
    """Per-frame labels ``[B, T]`` of the engine's best path of every segment (-1 elsewhere).

    The gradient of a tropical total w.r.t. the log-probs is the indicator of one best path
    (``get_tot_scores``): one 1 per frame of the segment, at the label of the path's arc, and
    0 for a segment without a path. So the alignment is streamed like the totals, without
    building the lattice.
    """
    x = log_probs.detach().requires_grad_(True)
    with torch.enable_grad():
        tot = get_tot_scores(intersect_dense(graphs, DenseFsaVec(x, segs)), log_semiring=False)
        fin = torch.isfinite(tot)
        if not bool(fin.any()):
            return torch.full(x.shape[:2], -1, dtype=torch.int64, device=x.device)
        (grad,) = torch.autograd.grad(tot[fin].sum(), x)
    ali = grad.argmax(-1)
    return torch.where(grad.sum(-1) > 0.5, ali, torch.full_like(ali, -1))


def viterbi_align(graphs: Fsa, log_probs: torch.Tensor,
                  lens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Forced alignments: the output id (pdf + 1 for :func:`pdf_topo`) of every frame on the
    best path of each utterance's graph (tropical semiring, the engine's Viterbi).

    Args:
      graphs: FsaVec with one graph per utterance (e.g. from
        :class:`~wfst_asr.graphs.training.HmmTrainingGraphCompiler`), or one shared graph.
      log_probs: ``[B, T, V]`` scores (no gradient is taken).
      lens: ``[B]`` frames of each utterance.

    Returns:
      int64 ``[B, T]`` on ``log_probs``'s device: output ids on frames ``0 .. lens[b]-1``, -1
      after them and on every frame of an utterance whose graph has no path of that length.
      Ties between equally good paths are broken by the engine (one path is chosen).
    """
    lens = check_batch(log_probs, lens, None)
    B = log_probs.shape[0]
    g = graphs.as_vec().to(log_probs.device)
    if g.num_fsas not in (1, B):
        raise ValueError(f"got {g.num_fsas} graphs for {B} utterances")
    return _best_path_labels(g, log_probs, segments(torch.arange(B), lens))


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
        an epsilon-free ``H`` Fsa (e.g. :func:`~wfst_asr.graphs.training.hmm_topo`) or a Kaldi
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
    ``num_utts``, ``num_excluded``/``excluded`` (transcript longer than the frames allow, or a
    non-finite total), ``num_nonfinite``, ``frames`` (output frames of the kept utterances)
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
        if alignments is not None:
            if self.mode != "ce":
                raise ValueError("alignments are only used with mode='ce'")
            return self._ce_given(log_probs, lens, alignments, dtype)
        if seqs is None:
            raise ValueError("token_seqs are needed (or alignments with mode='ce')")
        graphs = self.graphs(seqs)
        scores = self._corrected(log_probs, lens)
        ok, _ = feasible(graphs, lens)
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
        info = self._info(B, ok, lens, num_nonfinite)
        if self.mode == "ce":
            info["aligned_frames"] = aligned
        return self._reduce(per_utt, info, log_probs, keep.numel() > 0), info

    def _ce_given(self, log_probs, lens, alignments, dtype) -> tuple[torch.Tensor, dict]:
        B = log_probs.shape[0]
        ali = torch.as_tensor(alignments).to(log_probs.device, torch.int64)
        per_utt = frame_ce_loss(log_probs.to(dtype), ali, lens, reduction="none")
        T = log_probs.shape[1]
        if ali.shape[1] < T:
            ali = F.pad(ali, (0, T - ali.shape[1]), value=-1)
        t = torch.arange(T, device=ali.device)
        valid = (ali >= 0) & (t < lens.to(ali.device).unsqueeze(1))
        ok = valid.any(1).cpu() | (lens == 0)
        info = self._info(B, ok, lens, 0)
        info["aligned_frames"] = int(valid.sum())
        return self._reduce(per_utt, info, log_probs, bool(ok.any())), info

    @staticmethod
    def _info(B: int, ok: torch.Tensor, lens: torch.Tensor, num_nonfinite: int) -> dict:
        excluded = (~ok).nonzero().squeeze(1).tolist()
        if excluded:
            log.debug("HmmLoss: excluded %d/%d utterances: %s", len(excluded), B, excluded)
        return {"num_utts": B, "num_excluded": len(excluded), "excluded": excluded,
                "num_nonfinite": num_nonfinite, "frames": int(lens[ok].sum())}

    def _reduce(self, per_utt: torch.Tensor, info: dict, log_probs: torch.Tensor,
                any_kept: bool) -> torch.Tensor:
        if not any_kept:  # nothing to train on: a zero still connected to the input
            per_utt = per_utt + 0.0 * log_probs.sum().to(per_utt.dtype)
        if self.reduction == "none":
            return per_utt
        loss = per_utt.sum()
        if self.reduction == "mean":
            loss = loss / max(info["frames"], 1)
        return loss


# ---------------------------------------------------------------------------- given alignments
def pdf_map(src: Topology, dst: Topology) -> torch.Tensor:
    """int64 ``[src.num_pdfs]``: the ``dst`` output id (``pdf + 1``, as :func:`pdf_topo`) of
    each ``src`` pdf: the same phone, HMM state ``min(k, n_dst - 1)`` for ``src``'s state ``k``
    (``hmm-3state`` -> ``hmm-1state``: every state of a phone -> the phone's pdf; the same
    topology: the identity plus one). Monophone topologies with one pdf per HMM state."""
    from wfst_asr.gmm.mono import phone_pdfs

    s, d = phone_pdfs(src), phone_pdfs(dst)
    out = torch.full((src.num_pdfs,), -1, dtype=torch.int64)
    for phone, pdfs in s.items():
        if phone not in d:
            raise ValueError(f"phone {phone} of {src.name!r} is not in {dst.name!r}")
        for k, p in enumerate(pdfs):
            out[p] = d[phone][min(k, len(d[phone]) - 1)] + 1
    return out


def subsample_alignments(alis: Sequence[Sequence[int]] | Sequence[torch.Tensor],
                         subsampling: int, mapping: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Per-input-frame alignments (one sequence per utterance) -> targets ``[B, T_out]`` int64
    at the network's output rate, -1 as padding.

    Output frame ``k`` of a network that stacks ``subsampling`` input frames (floor mode)
    covers input frames ``k s .. k s + s - 1``; it gets the label of the middle one,
    ``k s + s // 2``, mapped through ``mapping`` (e.g. :func:`pdf_map`) when given. Raises
    ValueError naming the utterance for a label outside ``mapping``.
    """
    if subsampling < 1:
        raise ValueError(f"subsampling must be >= 1, got {subsampling}")
    rows = [torch.as_tensor(r if isinstance(r, torch.Tensor) else list(r), dtype=torch.int64)
            for r in alis]
    rows = [r[subsampling // 2::subsampling][:r.numel() // subsampling] for r in rows]
    T = max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), T), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        if mapping is not None and r.numel():
            if int(r.min()) < 0 or int(r.max()) >= mapping.numel():
                raise ValueError(f"utterance {i} of the batch: alignment labels must lie in "
                                 f"[0, {mapping.numel() - 1}], got {int(r.min())}.."
                                 f"{int(r.max())}")
            r = mapping[r]
        out[i, :r.numel()] = r
    return out


def alignment_prior(targets: torch.Tensor, num_outputs: int, floor: float = 1.0
                    ) -> torch.Tensor:
    """float64 ``[num_outputs]``: relative frequencies of the targets ``>= 0`` (counts plus
    ``floor`` for every column but 0, which stays 0): the state prior ``p(s)`` of hybrid
    decoding, ``log p(s|x) - alpha log p(s)``."""
    t = targets[targets >= 0].reshape(-1)
    counts = torch.bincount(t, minlength=num_outputs).to(torch.float64)[:num_outputs]
    counts[1:] += floor
    counts[0] = 0.0
    return counts / counts.sum().clamp(min=1e-20)


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
