"""Lattice-free MMI (Povey et al., Interspeech 2016) as two graph intersections.

For each utterance ``b`` with outputs ``x_b [T_b, V]`` (free scores: LF-MMI usually feeds the
raw network outputs, no log-softmax):

* numerator ``num_b = log sum over the paths of H o (P o transcript_b)`` of
  ``(graph scores + sum_t x_b[t, label_t])``, log semiring;
* denominator ``den_b``: the same sum over the paths of the one shared graph ``H o P`` (every
  phone sequence, weighted by the phone LM ``P``);
* ``loss_b = -(num_b - den_b) = den_b - num_b >= 0`` (every numerator path is a denominator
  path with the same score: :class:`~wfst_asr.graphs.training.MmiTrainingGraphCompiler`).

The denominator of the whole batch is one ``intersect_dense`` of the shared graph with one
:class:`~wfst_asr.fsa.DenseFsaVec` (a segment per utterance), streamed frame by frame by
``get_tot_scores``; so is the numerator, with one graph per utterance. The gradient w.r.t.
``x`` is ``den posteriors - num posteriors``: per frame both sum to 1, so it sums to 0.

Extras, as in Kaldi's chain training:

* leaky HMM (``leaky_hmm_coefficient``, denominator only): Kaldi adds, between frames,
  ``leaky * (total forward mass) * init(j)`` to every state ``j``. Here ``init`` is the start
  state (all its mass): before every frame, the start state of each utterance gets
  ``leaky`` times the utterance's total forward mass (over the graph's states but the final
  one). This runs inside the streamed intersection
  (:func:`wfst_asr.fsa.intersect.leaky_hmm_tot_scores`: a logsumexp over the states and a
  ``logaddexp`` per utterance and frame, the transposed step in the backward sweep), so the
  graph keeps its arcs; it costs 3-16% of the denominator's time (``tools/bench/bench_mmi.py``).
  It equals, up to rounding, the graph of :func:`add_leaky_arcs`: from every non-final state
  ``s``, a copy of every arc leaving the start state, its score plus ``log(leaky)`` ("jump to
  the start, then take that arc", without an epsilon, which the frame-synchronous engine has
  not), which doubles the arcs of a phone-bigram ``H o P`` and costs 40-65% more time than no
  leaky HMM. Every state can restart the phone LM at any frame, so the denominator has
  paths of every length and no state sequence is ruled out by the graph's structure alone
  (e.g. chunks cut mid-phone). Not applied after the last frame (the final arcs are the
  graph's). 0 disables it.
* output L2 regularisation: ``l2_regularize * sum of x^2`` over the frames of the kept
  utterances (Kaldi's ``--l2-regularize`` adds ``0.5 * l2 * sum x^2``: use half its value).
* an auxiliary term mixed in with ``ctc_weight`` (``loss = (1 - w) * mmi + w * aux + l2``):
  ``"ctc"``: the CTC loss of ``log_softmax(x)`` (CTC topologies only); ``"ce"``: Kaldi's
  cross-entropy regularisation, ``-sum_t sum_o post_num(t, o) * log_softmax(x)[t, o]`` with
  the numerator's (constant) occupation probabilities as soft targets. ``"auto"`` picks
  ``"ctc"`` for a CTC topology (one with blank, label 0) and ``"ce"`` otherwise.

Infeasible utterances (numerator needs more frames than the utterance has, or a transcript the
phone LM ``P`` rejects) are excluded before the loss and counted; a non-finite total is dropped
the same way. An utterance with non-finite outputs in its frames (NaN or +inf; -inf too when
the L2 term or the auxiliary term reads the outputs) is excluded before the numerator and the
shared denominator are computed (``info["nonfinite_input"]``,
:func:`~wfst_asr.losses.common.isolate_nonfinite`): the other utterances' terms and gradients
are those of the batch without it, and its gradient is exactly 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from wfst_asr.fsa import DenseFsaVec, Fsa, get_tot_scores, intersect_dense
from wfst_asr.fsa.intersect import leaky_hmm_tot_scores
from wfst_asr.graphs.training import MmiTrainingGraphCompiler
from wfst_asr.losses.common import (
    _as_token_lists,
    check_batch,
    check_outputs,
    drop_nonfinite,
    exclusion_info,
    feasible,
    frame_mask,
    isolate_nonfinite,
    num_outputs,
    reduce_loss,
    segments,
    select_fsas,
)
from wfst_asr.losses.ctc import CtcLoss

__all__ = ["MmiLoss", "add_leaky_arcs"]

log = logging.getLogger(__name__)

_REDUCTIONS = ("sum", "mean", "none")
_AUX = ("auto", "ctc", "ce")


def add_leaky_arcs(den: Fsa, coefficient: float) -> Fsa:
    """``den`` plus the leaky-HMM arcs (module docstring): for every non-final state ``s`` and
    every frame arc ``0 -> d`` (label ``l``, score ``w``) of the start state, an arc
    ``s -> d`` with label ``l`` and score ``w + log(coefficient)``. A single Fsa in, a single
    Fsa out (arcs sorted by source); other attributes are dropped (0 on the new arcs would be
    wrong for aux_labels). :class:`MmiLoss` no longer uses it: the same leaky step runs inside
    the intersection (:func:`wfst_asr.fsa.intersect.leaky_hmm_tot_scores`)."""
    if den.is_vec and den.num_fsas != 1:
        raise ValueError("add_leaky_arcs takes one (shared) graph")
    if not coefficient > 0:
        return den
    g = den[0] if den.is_vec else den
    arcs, sc = g.arcs.long(), g.scores.detach()
    S = g.num_states
    start = (arcs[:, 0] == 0) & (arcs[:, 2] >= 0)
    s_arcs = arcs[start]
    s_sc = sc[start]
    src = torch.arange(S - 1, device=arcs.device)  # every state but the final one
    K = s_arcs.shape[0]
    new_src = src.repeat_interleave(K)
    new_dst = s_arcs[:, 1].repeat(S - 1)
    new_lab = s_arcs[:, 2].repeat(S - 1)
    new_sc = s_sc.repeat(S - 1) + math.log(coefficient)
    all_arcs = torch.cat([arcs, torch.stack([new_src, new_dst, new_lab], 1)])
    return Fsa(all_arcs.to(torch.int32), torch.cat([sc, new_sc.to(sc.dtype)]), num_states=S)


def _is_ctc_topo(H: Fsa) -> bool:
    return bool((H.labels == 0).any())


class MmiLoss(nn.Module):
    """LF-MMI loss ``-(num - den)`` with leaky HMM, output L2 and an optional CTC/CE term.

    Args:
      compiler: a :class:`~wfst_asr.graphs.training.MmiTrainingGraphCompiler` (phone LM ``P``
        and topology ``H``: ``"ctc"``, :func:`~wfst_asr.graphs.topo.hmm_topo` or
        :func:`wfst_asr.graphs.topo.pdf_topo` of a Kaldi topology such as ``chain``).
      leaky_hmm_coefficient: leaky-HMM probability (module docstring); 0 disables it. Kaldi's
        default is 1e-5 (its recipes use 0.1).
      l2_regularize: weight of the sum of squared outputs (frames of kept utterances).
      ctc_weight: ``w`` in ``(1 - w) * mmi + w * aux``, in ``[0, 1]``.
      aux_loss: ``"auto"``, ``"ctc"`` or ``"ce"`` (module docstring).
      reduction: ``"sum"`` over kept utterances; ``"mean"``: divided by their output frames
        (``info["frames"]``); ``"none"``: ``[B]`` (0 for excluded utterances).
      use_double_scores: float64 totals.

    ``forward(x [B, T, V], out_lens [B], token_seqs, num_graphs=None)`` returns
    ``(loss, info)``; ``token_seqs`` are token ids >= 1 (one list per utterance). ``V`` must be
    the topology's largest output id + 1 (ValueError otherwise). ``num_graphs`` (an FsaVec of B
    graphs) replaces the compiled numerators (e.g. numerator lattices). ``info``: ``num_utts``,
    ``num_excluded``/``excluded``, ``num_rejected`` (transcripts P does not accept),
    ``num_nonfinite``, ``nonfinite_input`` (utterances with non-finite outputs, see the module
    doc), ``frames``, and the detached sums over the kept utterances ``num``,
    ``den``, ``mmi`` (= den - num), ``l2``, ``aux``.
    """

    def __init__(self, compiler: MmiTrainingGraphCompiler, leaky_hmm_coefficient: float = 1e-5,
                 l2_regularize: float = 0.0, ctc_weight: float = 0.0, aux_loss: str = "auto",
                 reduction: str = "sum", use_double_scores: bool = False) -> None:
        super().__init__()
        if not isinstance(compiler, MmiTrainingGraphCompiler):
            raise TypeError("compiler must be an MmiTrainingGraphCompiler")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if aux_loss not in _AUX:
            raise ValueError(f"aux_loss must be one of {_AUX}, got {aux_loss!r}")
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        if not 0.0 <= leaky_hmm_coefficient < 1.0 or l2_regularize < 0:
            raise ValueError("leaky_hmm_coefficient must be in [0, 1), l2_regularize >= 0")
        self.compiler = compiler
        self.num_outputs = num_outputs(compiler.H)
        self.leaky = float(leaky_hmm_coefficient)
        self.l2 = float(l2_regularize)
        self.ctc_weight = float(ctc_weight)
        is_ctc = _is_ctc_topo(compiler.H)
        self.aux_loss = ("ctc" if is_ctc else "ce") if aux_loss == "auto" else aux_loss
        if self.aux_loss == "ctc" and self.ctc_weight > 0 and not is_ctc:
            raise ValueError("aux_loss='ctc' needs a CTC topology (outputs: blank + tokens)")
        self.reduction = reduction
        self.use_double_scores = bool(use_double_scores)
        self._ctc = CtcLoss(modified=False, reduction="none",
                            use_double_scores=use_double_scores)
        self._den: dict[torch.device, Fsa] = {}
        self._den_plain: dict[torch.device, Fsa] = {}

    def extra_repr(self) -> str:
        return (f"num_outputs={self.num_outputs}, leaky_hmm_coefficient={self.leaky}, "
                f"l2_regularize={self.l2}, ctc_weight={self.ctc_weight}, "
                f"aux_loss={self.aux_loss!r}, reduction={self.reduction!r}")

    def den_graph(self, device: torch.device | str = "cpu") -> Fsa:
        """The shared denominator graph (leaky arcs included), cached per device.

        The loss itself intersects the graph without leaky arcs and applies the leaky step
        inside the intersection (module docstring); this graph gives the same totals."""
        device = torch.device(device)
        if device not in self._den:
            den = self.compiler.den.to("cpu").detach()
            self._den[device] = add_leaky_arcs(den, self.leaky).to(device)
        return self._den[device]

    def _den_graph_plain(self, device: torch.device) -> Fsa:
        """The shared denominator graph ``H o P`` (no leaky arcs), cached per device."""
        if device not in self._den_plain:
            self._den_plain[device] = self.compiler.den.to("cpu").detach().to(device)
        return self._den_plain[device]

    def _accepted(self, seqs: list[list[int]]) -> torch.Tensor:
        ok = torch.ones(len(seqs), dtype=torch.bool)
        for i, s in enumerate(seqs):
            try:
                self.compiler.walk(s)
            except ValueError:
                ok[i] = False
        return ok

    def forward(self, x: torch.Tensor, out_lens: torch.Tensor, token_seqs=None,
                num_graphs: Fsa | None = None) -> tuple[torch.Tensor, dict]:
        seqs = _as_token_lists(token_seqs) if token_seqs is not None else None
        lens = check_batch(x, out_lens, len(seqs) if seqs is not None else None)
        B, T, V = x.shape
        check_outputs(V, self.num_outputs, "the LF-MMI topology")
        # -inf is a zero probability for the graphs, but not for x^2 or the auxiliary term
        kind = "finite" if self.l2 > 0 or self.ctc_weight > 0 else "log_probs"
        x, bad_input = isolate_nonfinite(x, frame_mask(lens, T), kind, "MmiLoss")
        dev = x.device
        dtype = torch.float64 if self.use_double_scores else x.dtype
        if num_graphs is not None:
            nums = num_graphs.as_vec()
            if nums.num_fsas != B:
                raise ValueError(f"got {nums.num_fsas} numerator graphs for {B} utterances")
            accepted = torch.ones(B, dtype=torch.bool)
        else:
            if seqs is None:
                raise ValueError("token_seqs (or num_graphs) are needed")
            accepted = self._accepted(seqs)
            acc_idx = accepted.nonzero().squeeze(1)
            nums = (self.compiler.compile([seqs[i] for i in acc_idx.tolist()])[0]
                    if acc_idx.numel() else None)
        num_rejected = int((~accepted).sum())
        if num_rejected:
            log.warning("MmiLoss: %d transcript(s) not accepted by P; excluded: %s",
                        num_rejected, (~accepted).nonzero().squeeze(1).tolist())
        ok = accepted.clone()
        if nums is not None:
            ok[accepted] = feasible(nums, lens[accepted])[0]
        ok &= ~bad_input
        keep = ok.nonzero().squeeze(1)
        # numerator graph of each kept utterance: its rank among the accepted ones
        rank = torch.cumsum(accepted.to(torch.int64), 0) - 1
        zero = x.new_zeros(B, dtype=dtype)
        parts = {k: zero for k in ("num", "den", "mmi", "l2", "aux")}
        num_nonfinite = 0
        if keep.numel():
            segs = segments(keep, lens)
            dense = DenseFsaVec(x, segs)
            num_g = select_fsas(nums, rank[keep]).to(dev)
            num = get_tot_scores(intersect_dense(num_g, dense), log_semiring=True,
                                 use_double_scores=self.use_double_scores)
            den = leaky_hmm_tot_scores(self._den_graph_plain(dev), dense, self.leaky,
                                       use_double_scores=self.use_double_scores)
            fin, num_nonfinite = drop_nonfinite(num + den, keep, ok, "MmiLoss")
            kd = keep.to(dev)

            def put(v: torch.Tensor) -> torch.Tensor:
                v = torch.where(fin, v, torch.zeros_like(v)).to(dtype)
                return zero.index_put((kd,), v)

            parts["num"], parts["den"] = put(num), put(den)
            parts["mmi"] = put(den - num)
            mask = (torch.arange(T, device=dev) < lens.to(dev).unsqueeze(1)) & ok.to(dev)[:, None]
            if self.l2 > 0:
                sq = x.to(dtype).pow(2).sum(-1)
                parts["l2"] = self.l2 * torch.where(mask, sq, torch.zeros_like(sq)).sum(1)
            if self.ctc_weight > 0:
                parts["aux"] = self._aux(x, lens, seqs, num_g, segs, fin, ok, dtype)
        per_utt = ((1.0 - self.ctc_weight) * parts["mmi"] + self.ctc_weight * parts["aux"]
                   + parts["l2"])
        info = exclusion_info(B, ok, int(lens[ok].sum()), num_nonfinite, bad_input)
        info["num_rejected"] = num_rejected
        info.update({k: float(v.detach().sum()) for k, v in parts.items()})
        if info["excluded"]:
            log.debug("MmiLoss: excluded %d/%d utterances: %s", info["num_excluded"], B,
                      info["excluded"])
        return reduce_loss(per_utt, info["frames"], self.reduction,
                           () if bool(ok.any()) else (x,)), info

    def _aux(self, x: torch.Tensor, lens: torch.Tensor, seqs: Sequence[Sequence[int]] | None,
             num_g: Fsa, segs: torch.Tensor, fin: torch.Tensor, ok: torch.Tensor,
             dtype: torch.dtype) -> torch.Tensor:
        """Per-utterance auxiliary loss ``[B]`` (0 where not ``ok``)."""
        lp = x.log_softmax(-1)
        okd = ok.to(x.device)
        if self.aux_loss == "ctc":
            if seqs is None:
                raise ValueError("the CTC term needs token_seqs")
            ctc, _ = self._ctc(lp, lens, seqs)
            return torch.where(okd, ctc.to(dtype), torch.zeros_like(ctc, dtype=dtype))
        # Kaldi's xent regularisation: numerator occupation probabilities as soft targets
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            num = get_tot_scores(intersect_dense(num_g, DenseFsaVec(xd, segs)),
                                 log_semiring=True, use_double_scores=self.use_double_scores)
            (post,) = torch.autograd.grad(torch.where(fin, num, torch.zeros_like(num)).sum(), xd)
        ce = -(post * lp).sum((1, 2)).to(dtype)
        return torch.where(okd, ce, torch.zeros_like(ce))
