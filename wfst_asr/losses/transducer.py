"""Transducer (RNN-T) losses as graph sums over their lattices: full, simple and pruned.

For an utterance with ``T`` frames and ``U`` labels ``y_1 .. y_U``, the RNN-T lattice has the
states ``(t, u)``, ``0 <= t < T``, ``0 <= u <= U`` (frame ``t``, ``u`` labels emitted so far),
start ``(0, 0)``, and the arcs

* blank ``(t, u) -> (t+1, u)`` for ``t < T-1``, scored ``log p(blank | t, u)``;
* label ``(t, u) -> (t, u+1)`` for ``u < U``, scored ``log p(y_{u+1} | t, u)``;
* final ``(T-1, U) -> final`` (label -1, as in k2), scored ``log p(blank | T-1, U)``.

The loss of the utterance is ``-log`` of the sum over all its paths,
``-get_tot_scores(lattice, log_semiring=True)`` of the ordinary acyclic FsaVec that
:func:`rnnt_lattice` (:func:`pruned_rnnt_lattice`) returns. The losses compute the same sum
and its arc posteriors without building that FsaVec: the lattice is a regular grid, so a
direct anti-diagonal DP over the blank and label score grids does it
(:mod:`wfst_asr.losses.transducer_dp`; the generic engine path stays behind the private
switch ``_USE_ENGINE``, for tests and benchmarks). The scores are gathered from the joiner's
output, so autograd carries the arc posteriors on into the network.

Three losses share one lattice builder (a "grid lattice", states ``(t, j)`` with label
position ``u = start[t] + j``):

* :func:`transducer_loss`: the full lattice (``start = 0``, ``j = u``) over the joiner's logits
  ``[B, T, U+1, V]``. The log-softmax is never materialised: the log-normaliser is computed in
  chunks of rows, only the two scores each state needs (blank, next label) are gathered, and the
  backward pass writes ``softmax * (-occupation) + posteriors`` straight into the gradient.
* :func:`simple_transducer_loss`: the same lattice for the cheap additive joiner
  ``logits[t, u] = am[t] + lm[u]`` (Kuang et al. 2022, "pruned RNN-T"); the normaliser
  ``logsumexp_v(am[t, v] + lm[u, v])`` is a max-shifted ``exp(am) @ exp(lm)^T``, so nothing of
  size ``T x U x V`` is built. With ``return_occupation=True`` it also gives the occupation
  ``[B, T, U+1]`` of each state, from which :func:`get_pruned_ranges` picks ``s_range`` label
  positions per frame.
* :func:`pruned_transducer_loss`: the lattice restricted to the states ``(t, u)`` with ``u`` in
  frame ``t``'s window ``ranges[b, t, :]`` (consecutive positions ``start[t] ..
  start[t] + s_range - 1``), scored by the full joiner on ``[B, T, s_range, V]`` only
  (:func:`do_rnnt_pruning` gathers its inputs): memory ``O(B T s_range V)``.

Semiring: log (sums over alignments); scores are natural-log probabilities. Token ids are
``0 .. V-1``; ``blank`` (default 0) must not occur in a transcript.

Utterances without any path (no frames; for the pruned loss also ``U > T * (s_range - 1)``,
since a window lets a frame emit at most ``s_range - 1`` labels) are left out before the loss
and reported; a total that still comes out non-finite is dropped the same way (see
:class:`~wfst_asr.losses.CtcLoss`). So is an utterance whose logits (or ``am``/``lm``) hold a
NaN, a +inf or a row that is -inf everywhere in its cells ``t < T_b``, ``u <= U_b``
(:func:`~wfst_asr.losses.common.isolate_nonfinite`): its gradient is exactly 0, the others'
are those of the batch without it, and such values outside every utterance's cells change
nothing. For the joiner's logits this costs no extra pass: a bad row is one whose gathered
log-softmax entries are all NaN or -inf, and only such rows are read again. Every function
returns ``(loss, info)`` with ``info`` as in CtcLoss: ``num_utts``, ``num_excluded``,
``excluded``, ``num_nonfinite``, ``nonfinite_input``, ``frames``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from wfst_asr.fsa import Fsa, get_tot_scores
from wfst_asr.fsa.dense import nonfinite_rows
from wfst_asr.losses.common import (
    drop_nonfinite,
    exclusion_info,
    frame_mask,
    isolate_nonfinite,
    reduce_loss,
)
from wfst_asr.losses.transducer_dp import LOG2E, grid_totals

__all__ = [
    "TransducerLoss",
    "do_rnnt_pruning",
    "get_pruned_ranges",
    "pruned_rnnt_lattice",
    "pruned_transducer_loss",
    "rnnt_lattice",
    "simple_transducer_loss",
    "transducer_loss",
]

log = logging.getLogger(__name__)

_REDUCTIONS = ("sum", "mean", "none")
# elements of [*, V] processed at once by the chunked log-softmax of the full joiner (~1 MB)
_CHUNK_ELEMS = 1 << 18
# True: the losses sum their lattices with the generic engine (an FsaVec from _grid_lattice and
# get_tot_scores), the path before the direct DP of transducer_dp; kept for tests and benchmarks
_USE_ENGINE = False


# ----------------------------------------------------------------------------- inputs
def _targets(targets, target_lens, B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded targets ``[B, U_max]`` (int64, padding 0) and lengths ``[B]`` (int64, CPU).

    ``targets``: a list of token-id lists (or 1-D tensors), or a padded ``[B, U_max]`` tensor
    with ``target_lens``.
    """
    if isinstance(targets, torch.Tensor) and targets.dim() == 2:
        if target_lens is None:
            raise ValueError("padded targets [B, U] need target_lens")
        lens = torch.as_tensor(target_lens).detach().to("cpu", torch.int64).reshape(-1)
        pad = targets.detach().to(device, torch.int64)
        if lens.numel() and int(lens.max()) > pad.shape[1]:
            raise ValueError(f"target_lens {lens.tolist()} exceed the padded width {pad.shape[1]}")
        mask = torch.arange(pad.shape[1]).unsqueeze(0) < lens.unsqueeze(1)
        pad = torch.where(mask.to(device), pad, torch.zeros_like(pad))
    else:
        seqs = [[int(x) for x in (s.tolist() if isinstance(s, torch.Tensor) else s)]
                for s in targets]
        lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        if target_lens is not None and not torch.equal(
                torch.as_tensor(target_lens).to("cpu", torch.int64).reshape(-1), lens):
            raise ValueError("target_lens disagree with the lengths of the target lists")
        width = int(lens.max()) if lens.numel() else 0
        pad = torch.zeros(len(seqs), width, dtype=torch.int64)
        for i, s in enumerate(seqs):
            pad[i, :len(s)] = torch.tensor(s, dtype=torch.int64)
        pad = pad.to(device)
    if pad.shape[0] != B or lens.numel() != B:
        raise ValueError(f"got {B} utterances but {pad.shape[0]} transcripts")
    return pad, lens


def _check_tokens(pad: torch.Tensor, lens: torch.Tensor, V: int, blank: int) -> None:
    if not 0 <= blank < V:
        raise ValueError(f"blank={blank} is not a token id in [0, {V})")
    mask = (torch.arange(pad.shape[1]).unsqueeze(0) < lens.unsqueeze(1)).to(pad.device)
    bad = mask & ((pad < 0) | (pad >= V) | (pad == blank))
    if bool(bad.any()):
        i = int(bad.any(1).nonzero()[0])
        raise ValueError(f"transcript {i}: token ids must be in [0, {V}) and not blank={blank}, "
                         f"got {pad[i, :int(lens[i])].tolist()}")


def _frame_lens(frame_lens, B: int, T: int) -> torch.Tensor:
    lens = torch.as_tensor(frame_lens).detach().to("cpu", torch.int64).reshape(-1)
    if lens.numel() != B:
        raise ValueError(f"got {lens.numel()} frame lengths for {B} utterances")
    if bool((lens < 0).any()) or bool((lens > T).any()):
        raise ValueError(f"frame_lens must lie in [0, T={T}], got {lens.tolist()}")
    return lens


def _next_tokens(pad: torch.Tensor, lens: torch.Tensor, blank: int) -> torch.Tensor:
    """``[B, U_max+1]``: the label ``y_{u+1}`` scored at position ``u`` (blank at and past
    ``U_b``, where no label arc leaves)."""
    B = pad.shape[0]
    nxt = torch.cat([pad, pad.new_full((B, 1), blank)], 1)
    pos = torch.arange(nxt.shape[1], device=pad.device).unsqueeze(0)
    return torch.where(pos < lens.to(pad.device).unsqueeze(1), nxt, torch.full_like(nxt, blank))


# ----------------------------------------------------------------------------- the lattice
def _grid_lattice(seq: torch.Tensor, T_b: torch.Tensor, W_b: torch.Tensor, U_b: torch.Tensor,
                  starts: torch.Tensor | None, next_tok: torch.Tensor, B: int, T: int, W: int,
                  blank: int) -> tuple[Fsa, torch.Tensor]:
    """The grid lattices of the utterances ``seq`` (all tensors on one device).

    Utterance ``seq[i]`` has ``T_b[i] >= 1`` frames, ``U_b[i]`` labels and states ``(t, j)``,
    ``j < W_b[i]``, at label position ``u = starts[seq[i], t] + j`` (``starts=None``: 0); state
    ``(t, j)`` is number ``t * W_b[i] + j``, the final state ``T_b[i] * W_b[i]``. Its scores
    sit at ``[seq[i], t, j]`` of ``[B, T, W]`` grids (one for blank, one for labels);
    ``next_tok [B, *]`` holds the label scored at each position (:func:`_next_tokens`).

    Returns the FsaVec (zero scores; arcs sorted by source; per-arc int64 attributes ``seq``,
    ``frame``, ``pos`` (u) and ``token``, the symbol whose log-prob scores the arc: blank on the
    final arc) and ``score_index [A]``: the position of each arc's score in
    ``torch.stack([blank_grid, label_grid]).reshape(-1)``.
    """
    device = T_b.device
    N = T_b.numel()
    ns = T_b * W_b
    tot = int(ns.sum())
    fsa_of = torch.repeat_interleave(torch.arange(N, device=device), ns, output_size=tot)

    def per_state(x: torch.Tensor) -> torch.Tensor:  # index_select: much faster than x[idx]
        return torch.index_select(x, 0, fsa_of)

    first = torch.cumsum(ns, 0) - ns
    local = torch.arange(tot, device=device) - per_state(first)
    Wf, Tf, Uf, b = per_state(W_b), per_state(T_b), per_state(U_b), per_state(seq)
    t = torch.div(local, Wf, rounding_mode="floor")
    j = local - t * Wf
    if starts is None:
        u, jn = j, j
    else:
        flat = starts.reshape(-1)
        u = torch.index_select(flat, 0, b * T + t) + j
        jn = u - torch.index_select(flat, 0, b * T + (t + 1).clamp(max=T - 1))
    blank_ok = (t + 1 < Tf) & (jn >= 0) & (jn < Wf) & (u <= Uf)
    final_ok = (t + 1 == Tf) & (u == Uf)
    label_ok = (j + 1 < Wf) & (u < Uf)
    width = next_tok.shape[1]
    tok = torch.index_select(next_tok.reshape(-1), 0, b * width + u.clamp(max=width - 1))
    keep = torch.stack([blank_ok | final_ok, label_ok], 1).reshape(-1).nonzero().squeeze(1)

    def both(first_arc: torch.Tensor, label_arc: torch.Tensor) -> torch.Tensor:
        """The values of each state's (blank or final, label) arcs, kept ones, src order."""
        return torch.index_select(torch.stack([first_arc, label_arc], 1).reshape(-1), 0, keep)

    grid = (b * T + t) * W + j
    score_index = both(grid, grid + B * T * W)
    dst = both(torch.where(final_ok, per_state(ns), (t + 1) * Wf + jn), local + 1)
    lab = both(torch.where(final_ok, -1, blank), tok)
    arcs = torch.stack([both(local, local), dst, lab], 1).to(torch.int32)
    counts = torch.bincount(both(fsa_of, fsa_of), minlength=N)
    splits = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    # an utterance without frames is an empty FSA (no states: total -inf), never a 1-state one
    num_states = torch.where(ns > 0, ns + 1, torch.zeros_like(ns))
    fsa = Fsa(arcs, torch.zeros(arcs.shape[0], device=device), num_states=num_states,
              arc_splits=splits, validate=False, seq=both(b, b), frame=both(t, t),
              pos=both(u, u), token=both(torch.full_like(tok, blank), tok))
    # every arc raises t + u by one: that is the longest-path level (final: T_b + U_b), so the
    # engine need not run Kahn's algorithm
    offsets = torch.cumsum(num_states, 0) - num_states
    levels = torch.zeros(int(num_states.sum()), dtype=torch.int64, device=device)
    levels.index_copy_(0, local + per_state(offsets), t + u)
    has = (ns > 0).nonzero().squeeze(1)
    levels.index_copy_(0, (offsets + ns).index_select(0, has), (T_b + U_b).index_select(0, has))
    fsa.set_state_levels(levels, check=False)
    return fsa, score_index


# ----------------------------------------------------------------------------- scores
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _JoinerLogProbs(torch.autograd.Function):
    """``(log p(blank | cell), log p(y_idx | cell))`` of every cell of ``logits [..., V]``.

    The log-softmax is computed a chunk of rows at a time (small enough to stay in cache) and
    never stored; the backward recomputes the softmax per chunk and writes it, scaled by
    ``-(g_blank + g_label)``, straight into the gradient, then adds the two gathered entries:
    one tensor the size of ``logits`` in all. Chunks whose cells get no gradient (padding)
    are zero-filled without computing anything.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, y_idx: torch.Tensor, blank: int):
        V = logits.shape[-1]
        x = logits.reshape(-1, V)
        N = x.shape[0]
        dt = _compute_dtype(logits.dtype)
        yi = y_idx.reshape(-1, 1)
        blank_lp = torch.empty(N, dtype=dt, device=x.device)
        label_lp = torch.empty(N, dtype=dt, device=x.device)
        rows = max(1, _CHUNK_ELEMS // max(V, 1))
        # one chunk buffer for all chunks: a fresh [rows, V] tensor per chunk costs page faults
        buf = torch.empty(min(rows, N), V, dtype=dt, device=x.device)
        for r0 in range(0, N, rows):
            r1 = min(r0 + rows, N)
            ls = buf[:r1 - r0]
            torch.log_softmax(x[r0:r1].to(dt), -1, out=ls)
            blank_lp[r0:r1] = ls[:, blank]
            torch.gather(ls, 1, yi[r0:r1], out=label_lp[r0:r1].unsqueeze(1))
        ctx.save_for_backward(logits, yi)
        ctx.blank = blank
        shape = logits.shape[:-1]
        return blank_lp.view(shape), label_lp.view(shape)

    @staticmethod
    def backward(ctx, g_blank: torch.Tensor | None, g_label: torch.Tensor | None):
        logits, yi = ctx.saved_tensors
        V = logits.shape[-1]
        x = logits.reshape(-1, V)
        N = x.shape[0]
        dt = _compute_dtype(logits.dtype)
        zero = torch.zeros(N, dtype=dt, device=x.device)
        gb = g_blank.reshape(-1).to(dt) if g_blank is not None else zero
        gl = g_label.reshape(-1).to(dt) if g_label is not None else zero
        neg_occ = -(gb + gl)
        grad = torch.empty_like(x)
        rows = max(1, _CHUNK_ELEMS // max(V, 1))
        # on CPU, skip the rows that get no gradient (checking costs a sync elsewhere)
        active = (neg_occ != 0).view(-1) if x.device.type == "cpu" else None
        for r0 in range(0, N, rows):
            r1 = min(r0 + rows, N)
            if active is not None and not bool(active[r0:r1].any()):
                grad[r0:r1].zero_()
            elif grad.dtype == dt:
                # softmax straight into the gradient, scaled there (no chunk temporaries)
                g = grad[r0:r1]
                torch.softmax(x[r0:r1], -1, out=g)
                g.mul_(neg_occ[r0:r1].unsqueeze(1))
            else:
                g = torch.softmax(x[r0:r1].to(dt), -1)
                grad[r0:r1] = g.mul_(neg_occ[r0:r1].unsqueeze(1))
        grad[:, ctx.blank] += gb.to(grad.dtype)
        grad.scatter_add_(1, yi, gl.to(grad.dtype).unsqueeze(1))
        return grad.view_as(logits), None, None


def _joiner_log_probs(logits: torch.Tensor, y_idx: torch.Tensor, blank: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blank and label log-probs ``[B, T, W]`` of logits ``[B, T, W, V]``; ``y_idx [B, T, W]``
    (or broadcastable to it) is the label scored in each cell."""
    y = y_idx.expand(logits.shape[:-1]).contiguous()
    return _JoinerLogProbs.apply(logits, y, blank)


def _joiner_bad_rows(logits: torch.Tensor, blank_lp: torch.Tensor, label_lp: torch.Tensor
                     ) -> torch.Tensor:
    """bool ``[B, T, W]``: the cells whose logits row is bad ("logits" kind: NaN, +inf, or -inf
    throughout), from the two log-softmax entries :func:`_joiner_log_probs` gathered.

    A bad row's log-softmax is NaN or -inf everywhere (its normaliser is NaN or +-inf), so
    both gathered entries are; only the rows where that holds (none, normally) are read
    again to tell them from clean rows that merely put -inf on both symbols."""
    neg = float("-inf")
    cand = ~(blank_lp.detach() > neg) & ~(label_lp.detach() > neg)
    if not bool(cand.any()):
        return cand
    idx = cand.reshape(-1).nonzero().squeeze(1)
    rows = nonfinite_rows(logits.detach().reshape(-1, logits.shape[-1]).index_select(0, idx),
                          "logits")
    out = torch.zeros_like(cand).reshape(-1)
    if rows is not None:
        out[idx] = rows
    return out.view_as(cand)


def _isolated_joiner(name: str, logits: torch.Tensor, y_idx: torch.Tensor, blank: int,
                     valid: torch.Tensor):
    """``(logits', blank_lp, label_lp, bad [B])``: :func:`_joiner_log_probs` of the logits
    with their bad rows masked (:func:`~wfst_asr.losses.common.isolate_nonfinite`); computed
    again on the masked logits only when some row is bad."""
    blank_lp, label_lp = _joiner_log_probs(logits, y_idx, blank)
    rows = _joiner_bad_rows(logits, blank_lp, label_lp)
    clean, bad = isolate_nonfinite(logits, valid, "logits", name, rows=rows)
    if clean is not logits:
        blank_lp, label_lp = _joiner_log_probs(clean, y_idx, blank)
    return clean, blank_lp, label_lp, bad


def _cells(flens: torch.Tensor, ulens: torch.Tensor, T: int, pos: torch.Tensor
           ) -> torch.Tensor:
    """bool ``[B, T, W]``: cell ``(t, w)`` of utterance ``b`` is in its lattice's range
    (``t < flens[b]`` and label position ``pos[b, t, w] <= ulens[b]``; ``pos`` broadcastable)."""
    dev = pos.device
    t = torch.arange(T, device=dev).view(1, T, 1) < flens.to(dev).view(-1, 1, 1)
    return t & (pos <= ulens.to(dev).view(-1, 1, 1))


def _simple_log_probs(am: torch.Tensor, lm: torch.Tensor, y_idx: torch.Tensor, blank: int,
                      lm_only_scale: float, am_only_scale: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blank and label log-probs ``[B, T, U+1]`` of the additive joiner
    ``logits[t, u] = am[t] + lm[u]`` (``am [B, T, V]``, ``lm [B, U+1, V]``, ``y_idx [B, U+1]``).

    ``logsumexp_v(am[t, v] + lm[u, v]) = log(exp(am[t] - ma[t]) @ exp(lm[u] - ml[u])) + ma[t]
    + ml[u]`` with the row maxima ``ma``, ``ml``: a batched matmul, never ``[B, T, U+1, V]``. The
    sum is floored at the smallest normal float (it underflows only when am and lm put all
    their mass on different tokens by more than ~87 nats).
    """
    dt = _compute_dtype(am.dtype)
    am, lm = am.to(dt), lm.to(dt)
    B, T, _ = am.shape
    U1 = lm.shape[1]
    am_max = am.detach().amax(-1, keepdim=True)
    lm_max = lm.detach().amax(-1, keepdim=True)
    norm = torch.bmm((am - am_max).exp(), (lm - lm_max).exp().transpose(1, 2))
    lse = norm.clamp_min(torch.finfo(dt).tiny).log() + am_max + lm_max.transpose(1, 2)
    y_t = y_idx.unsqueeze(1).expand(B, T, U1)
    y_u = y_idx.unsqueeze(2)
    blank_lp = am[..., blank].unsqueeze(2) + lm[..., blank].unsqueeze(1) - lse
    label_lp = am.gather(2, y_t) + lm.gather(2, y_u).transpose(1, 2) - lse
    if lm_only_scale or am_only_scale:
        joint = 1.0 - lm_only_scale - am_only_scale
        blank_lp, label_lp = blank_lp * joint, label_lp * joint
        if lm_only_scale:
            lm_lp = lm.log_softmax(-1)
            blank_lp = blank_lp + lm_only_scale * lm_lp[..., blank].unsqueeze(1)
            label_lp = label_lp + lm_only_scale * lm_lp.gather(2, y_u).transpose(1, 2)
        if am_only_scale:
            am_lp = am.log_softmax(-1)
            blank_lp = blank_lp + am_only_scale * am_lp[..., blank].unsqueeze(2)
            label_lp = label_lp + am_only_scale * am_lp.gather(2, y_t)
    return blank_lp, label_lp


class _SimpleLogProbs(torch.autograd.Function):
    """:func:`_simple_log_probs` as one autograd node (what the losses use; the function itself
    stays as the reference): the same values, with the backward written out,

    * ``d/d norm``: ``-(1 - l - a) (g_blank + g_label) / norm``, then ``d/d am = exp(am - ma) *
      (d/d norm @ exp(lm - ml))`` and ``d/d lm`` likewise (two batched matmuls);
    * the gathered entries (blank and ``y``, scale ``1 - l - a`` plus that of their own
      smoothing term) scattered back, the smoothing terms' softmax parts subtracted;

    so that neither pass keeps more than ``exp(am - ma)``, ``exp(lm - ml)`` and the normaliser
    ``[B, T, U+1]``, and the backward runs a dozen operations instead of autograd's chain.
    """

    @staticmethod
    def forward(ctx, am: torch.Tensor, lm: torch.Tensor, y_idx: torch.Tensor, blank: int,
                lm_only_scale: float, am_only_scale: float):
        dt = _compute_dtype(am.dtype)
        a, m = am.detach().to(dt), lm.detach().to(dt)
        B, T, _ = a.shape
        U1 = m.shape[1]
        ls, as_ = float(lm_only_scale), float(am_only_scale)
        joint = 1.0 - ls - as_
        ma = a.amax(-1, keepdim=True)
        ml = m.amax(-1, keepdim=True)
        # exp as exp2 (no slow path for entries far below the row maximum, see transducer_dp)
        ea = (a - ma).mul_(LOG2E).exp2_()
        el = (m - ml).mul_(LOG2E).exp2_()
        norm = torch.bmm(ea, el.transpose(1, 2))
        tiny = torch.finfo(dt).tiny
        clamped = norm < tiny
        clamped = clamped if bool(clamped.any()) else None
        norm.clamp_min_(tiny)
        lognorm = norm.log()
        # log-probs with the row maxima folded into the gathered entries:
        # am[b] - ma + lm[b] - ml - log(norm), am[y] - ma + lm[y] - ml - log(norm)
        ab = a[..., blank] - ma.squeeze(2)  # [B, T]
        lb = m[..., blank] - ml.squeeze(2)  # [B, U1]
        y_t = y_idx.unsqueeze(1).expand(B, T, U1)
        ay = a.gather(2, y_t).sub_(ma)  # [B, T, U1]
        ly = m.gather(2, y_idx.unsqueeze(2)).squeeze(2).sub_(ml.squeeze(2))  # [B, U1]
        blank_lp = torch.sub(ab.unsqueeze(2) + lb.unsqueeze(1), lognorm)
        label_lp = (ay + ly.unsqueeze(1)).sub_(lognorm)
        ea_sum = el_sum = None
        if ls or as_:
            blank_lp.mul_(joint)
            label_lp.mul_(joint)
            if ls:
                el_sum = el.sum(-1)  # lm's own log-softmax: lm[v] - ml - log(el_sum)
                lz = el_sum.log()
                blank_lp.add_((ls * (lb - lz)).unsqueeze(1))
                label_lp.add_((ls * (ly - lz)).unsqueeze(1))
            if as_:
                ea_sum = ea.sum(-1)
                az = ea_sum.log()
                blank_lp.add_((as_ * (ab - az)).unsqueeze(2))
                label_lp.add_(ay.sub_(az.unsqueeze(2)).mul_(as_))
        ctx.save_for_backward(ea, el, norm, y_idx, clamped, ea_sum, el_sum)
        ctx.scales = (blank, ls, as_, joint, am.dtype, lm.dtype)
        return blank_lp, label_lp

    @staticmethod
    def backward(ctx, g_blank: torch.Tensor | None, g_label: torch.Tensor | None):
        ea, el, norm, y_idx, clamped, ea_sum, el_sum = ctx.saved_tensors
        blank, ls, as_, joint, am_dt, lm_dt = ctx.scales
        B, T, U1 = norm.shape
        gb = g_blank.to(norm.dtype) if g_blank is not None else norm.new_zeros(B, T, U1)
        gl = g_label.to(norm.dtype) if g_label is not None else norm.new_zeros(B, T, U1)
        gs = gb + gl
        gn = gs.mul(-joint).div_(norm)
        if clamped is not None:
            gn.masked_fill_(clamped, 0.0)
        ga = torch.bmm(gn, el)  # d/d exp(am - ma)
        gm = torch.bmm(gn.transpose(1, 2), ea)
        if as_:
            ga.sub_((as_ * gs.sum(2) / ea_sum).unsqueeze(2))
        if ls:
            gm.sub_((ls * gs.sum(1) / el_sum).unsqueeze(2))
        ga.mul_(ea)
        gm.mul_(el)
        ca, cl = joint + as_, joint + ls
        ga[..., blank] += gb.sum(2).mul_(ca)
        ga.scatter_add_(2, y_idx.unsqueeze(1).expand(B, T, U1), gl * ca)
        gm[..., blank] += gb.sum(1).mul_(cl)
        gm.scatter_add_(2, y_idx.unsqueeze(2), gl.sum(1).mul_(cl).unsqueeze(2))
        return ga.to(am_dt), gm.to(lm_dt), None, None, None, None


# ----------------------------------------------------------------------------- totals -> loss
def _totals(lattice: Fsa, scores: torch.Tensor, use_double_scores: bool,
            want_occupation: bool, occ_size: int, score_index: torch.Tensor, grid_cells: int
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-semiring totals ``[N]`` of ``lattice`` with arc ``scores`` (differentiable), and with
    ``want_occupation`` the occupation of each grid cell ``[occ_size]`` (no grad)."""
    if not want_occupation:
        lattice.scores = scores
        return get_tot_scores(lattice, log_semiring=True,
                              use_double_scores=use_double_scores), None
    # One engine pass for both: arc posteriors w.r.t. a detached copy of the scores, then a
    # surrogate tot.detach() + sum(post * (scores - scores.detach())) carries the same
    # first-order gradient to the network.
    with torch.enable_grad():
        leaf = scores.detach().requires_grad_()
        lattice.scores = leaf
        tot = get_tot_scores(lattice, log_semiring=True, use_double_scores=use_double_scores)
        fin = torch.isfinite(tot)
        (post,) = torch.autograd.grad(torch.where(fin, tot, torch.zeros_like(tot)).sum(), leaf)
    post = post.detach()
    occ = post.new_zeros(occ_size).index_add_(0, score_index % grid_cells, post)
    surrogate = (post * (scores - scores.detach())).to(tot.dtype)
    tot = tot.detach() + tot.new_zeros(tot.shape).index_add(0, lattice.arc_fsa, surrogate)
    return tot, occ


def _dp_totals(blank_lp: torch.Tensor, label_lp: torch.Tensor, keep: torch.Tensor,
               T_n: torch.Tensor, U_n: torch.Tensor, use_double_scores: bool,
               want_occupation: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What :func:`_totals` gives for the grid lattices of ``keep`` (``T_n`` frames, ``U_n``
    labels; all on the grids' device), by the direct DP of :mod:`.transducer_dp`:
    ``blank_lp``, ``label_lp`` ``[B, T, W]`` score the blank (final) and label arcs leaving
    each cell ``(t, u)``. The occupation comes flat, ``[B * T * W]``, in the scores' dtype."""
    dt = blank_lp.dtype
    if use_double_scores:
        blank_lp, label_lp = blank_lp.to(torch.float64), label_lp.to(torch.float64)
    tot, occ = grid_totals(blank_lp, label_lp, keep, T_n, U_n, want_occupation)
    return tot, (occ.to(dt).reshape(-1) if occ is not None else None)


def _dense_window_scores(blank_lp: torch.Tensor, label_lp: torch.Tensor, pos: torch.Tensor,
                         width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned lattice's scores ``[B, T, S]`` (slot ``j`` of frame ``t`` at label position
    ``pos[b, t, j]``, consecutive) placed on the full grid ``[B, T, width]``, -inf outside the
    windows: the paths of the full grid lattice with these scores are those of the pruned
    lattice (a path entering a cell outside its frame's window ends there)."""
    B, T, _ = blank_lp.shape
    dt = blank_lp.dtype
    out = blank_lp.new_full((B, T, width), float("-inf"))
    return out.scatter(2, pos, blank_lp), out.scatter(2, pos, label_lp.to(dt))


def _finish(name: str, tot: torch.Tensor | None, keep: torch.Tensor, ok: torch.Tensor,
            flens: torch.Tensor, B: int, dtype: torch.dtype, reduction: str,
            bad_input: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Per-utterance losses from the totals of the kept utterances, exclusion, reduction.

    ``bad_input``: bool ``[B]``, the utterances excluded for non-finite inputs (already not
    ``ok``). ``inputs``: the differentiable (masked) inputs, to which the loss stays connected
    (a zero) when every utterance is excluded."""
    anchor = inputs[0]
    per_utt = anchor.new_zeros(B, dtype=dtype)
    num_nonfinite = 0
    if tot is not None and keep.numel():
        fin, num_nonfinite = drop_nonfinite(tot, keep, ok, name)
        nll = torch.where(fin, -tot, torch.zeros_like(tot))
        per_utt = per_utt.index_put((keep.to(anchor.device),), nll.to(dtype))
    frames = int(flens[ok].sum())
    info = exclusion_info(B, ok, frames, num_nonfinite, bad_input)
    if info["excluded"]:
        log.debug("%s: excluded %d/%d utterances: %s", name, info["num_excluded"], B,
                  info["excluded"])
    return reduce_loss(per_utt, frames, reduction, () if bool(ok.any()) else inputs), info


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")


def _prepare(B: int, T: int, U1: int, V: int, targets, target_lens, frame_lens, blank: int,
             device, check_width: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated ``(flens [B] CPU, ulens [B] CPU, next_tok [B, W] on device)``, ``W = U1``
    (``check_width``: every transcript must fit) or ``max(U1, U_max + 1)``."""
    pad, ulens = _targets(targets, target_lens, B, device)
    _check_tokens(pad, ulens, V, blank)
    flens = _frame_lens(frame_lens, B, T)
    if not check_width:
        U1 = max(U1, int(ulens.max()) + 1 if ulens.numel() else 1)
    elif ulens.numel() and int(ulens.max()) + 1 > U1:
        raise ValueError(f"transcripts of up to {int(ulens.max())} labels need U+1 >= "
                         f"{int(ulens.max()) + 1} label positions, got {U1}")
    nxt = _next_tokens(pad, ulens, blank)
    if nxt.shape[1] < U1:
        nxt = torch.cat([nxt, nxt.new_full((B, U1 - nxt.shape[1]), blank)], 1)
    return flens, ulens, nxt[:, :U1]


# ----------------------------------------------------------------------------- lattices
def rnnt_lattice(log_probs: torch.Tensor, targets, frame_lens, target_lens=None,
                 blank: int = 0) -> Fsa:
    """The RNN-T lattices of a batch as an FsaVec (one FSA per utterance, in batch order).

    Args:
      log_probs: ``[B, T, U+1, V]`` joiner log-probs (normalised; raw logits give the same
        lattice with unnormalised scores). Arc scores are gathered from it by index, so they
        are differentiable w.r.t. it.
      targets: token-id lists, or a padded ``[B, U_max]`` tensor with ``target_lens``.
      frame_lens: ``[B]`` frames of each utterance (``<= T``); 0 gives an empty FSA.

    State ``(t, u)`` of utterance ``b`` is number ``t * (U_b + 1) + u``, the final state
    ``T_b * (U_b + 1)``; arcs (sorted by source) as in the module doc, labels: blank, ``y_{u+1}``
    and -1. Per-arc attributes (int64): ``seq`` (b), ``frame`` (t), ``pos`` (u) and ``token``
    (the symbol scored, blank on the final arc): ``score = log_probs[seq, frame, pos, token]``.
    """
    B, T, U1, V = log_probs.shape
    flens, ulens, nxt = _prepare(B, T, U1, V, targets, target_lens, frame_lens, blank,
                                 log_probs.device)
    dev = log_probs.device
    fsa, _ = _grid_lattice(torch.arange(B, device=dev), flens.to(dev), ulens.to(dev) + 1,
                           ulens.to(dev), None, nxt, B, T, U1, blank)
    idx = ((fsa.seq * T + fsa.frame) * U1 + fsa.pos) * V + fsa.token
    fsa.scores = torch.index_select(log_probs.reshape(-1), 0, idx)
    return fsa


def pruned_rnnt_lattice(log_probs: torch.Tensor, targets, ranges: torch.Tensor, frame_lens,
                        target_lens=None, blank: int = 0) -> Fsa:
    """The pruned RNN-T lattices as an FsaVec: :func:`rnnt_lattice` restricted to the states
    ``(t, u)`` with ``u`` in ``ranges[b, t]`` (consecutive positions, see
    :func:`get_pruned_ranges`); ``log_probs [B, T, s_range, V]`` are scored per window slot:
    ``score = log_probs[seq, frame, pos - ranges[seq, frame, 0], token]``.

    State ``(t, j)`` (``u = ranges[b, t, 0] + j``) is number ``t * W_b + j`` with
    ``W_b = min(s_range, U_b + 1)``; blank arcs join ``(t, u)`` to ``(t+1, u)`` where ``u`` is
    in both windows.
    """
    B, T, S, V = log_probs.shape
    flens, ulens, nxt, starts = _prepare_pruned(B, T, S, V, targets, target_lens, ranges,
                                                frame_lens, blank, log_probs.device)
    dev = log_probs.device
    W_b = torch.clamp(ulens + 1, max=S).to(dev)
    fsa, _ = _grid_lattice(torch.arange(B, device=dev), flens.to(dev), W_b, ulens.to(dev),
                           starts, nxt, B, T, S, blank)
    j = fsa.pos - starts[fsa.seq, fsa.frame]
    idx = ((fsa.seq * T + fsa.frame) * S + j) * V + fsa.token
    fsa.scores = torch.index_select(log_probs.reshape(-1), 0, idx)
    return fsa


def _prepare_pruned(B, T, S, V, targets, target_lens, ranges, frame_lens, blank, device):
    if ranges.shape != (B, T, S):
        raise ValueError(f"ranges must be [B, T, s_range] = {(B, T, S)}, got "
                         f"{tuple(ranges.shape)}")
    ranges = ranges.to(device, torch.int64)
    step = torch.arange(S, device=device)
    if bool((ranges - ranges[..., :1] != step).any()) or bool((ranges[..., 0] < 0).any()):
        raise ValueError("ranges[b, t] must be consecutive label positions >= 0")
    flens, ulens, nxt = _prepare(B, T, int(ranges.max()) + 1 if ranges.numel() else 1, V,
                                 targets, target_lens, frame_lens, blank, device,
                                 check_width=False)
    return flens, ulens, nxt, ranges[..., 0].contiguous()


# ----------------------------------------------------------------------------- losses
def transducer_loss(logits: torch.Tensor, targets, frame_lens, target_lens=None,
                    blank: int = 0, reduction: str = "sum", use_double_scores: bool = False
                    ) -> tuple[torch.Tensor, dict]:
    """The RNN-T loss ``-log p(y | x)`` summed over all alignments.

    Args:
      logits: ``[B, T, U+1, V]`` joiner outputs before log-softmax (``U+1 >=`` longest
        transcript + 1); the log-softmax over V is part of the loss.
      targets: one token-id list per utterance, or a padded ``[B, U_max]`` tensor with
        ``target_lens [B]``. Ids in ``[0, V)``, never ``blank``.
      frame_lens: ``[B]`` valid frames of each utterance (``<= T``).
      reduction: ``"sum"`` over kept utterances, ``"mean"``: that sum divided by their frames
        (``info["frames"]``), ``"none"``: ``[B]`` (0 where excluded).
      use_double_scores: run the forward-backward in float64 (always for float64 logits).

    Returns ``(loss, info)`` (module doc). Utterances with no frames are excluded. Memory: the
    gradient (size of ``logits``) plus ``O(B T U)``; the log-softmax is not stored.
    """
    _check_reduction(reduction)
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, T, U+1, V], got {tuple(logits.shape)}")
    B, T, U1, V = logits.shape
    dev = logits.device
    flens, ulens, nxt = _prepare(B, T, U1, V, targets, target_lens, frame_lens, blank, dev)
    ok = flens >= 1
    keep = ok.nonzero().squeeze(1)
    double = use_double_scores or logits.dtype == torch.float64
    dtype = torch.float64 if double else _compute_dtype(logits.dtype)
    tot = None
    bad_input = torch.zeros(B, dtype=torch.bool)
    if keep.numel():
        logits, blank_lp, label_lp, bad_input = _isolated_joiner(
            "transducer_loss", logits, nxt.unsqueeze(1), blank,
            _cells(flens, ulens, T, torch.arange(U1, device=dev).view(1, 1, U1)))
        ok &= ~bad_input
        keep = ok.nonzero().squeeze(1)
    if keep.numel():
        kd = keep.to(dev)
        if _USE_ENGINE:
            lattice, sidx = _grid_lattice(kd, flens[keep].to(dev), ulens[keep].to(dev) + 1,
                                          ulens[keep].to(dev), None, nxt, B, T, U1, blank)
            scores = torch.stack([blank_lp, label_lp]).reshape(-1).index_select(0, sidx)
            tot, _ = _totals(lattice, scores, double, False, 0, sidx, B * T * U1)
        else:
            tot, _ = _dp_totals(blank_lp, label_lp, kd, flens[keep].to(dev),
                                ulens[keep].to(dev), double, False)
    return _finish("transducer_loss", tot, keep, ok, flens, B, dtype, reduction, bad_input,
                   logits)


def simple_transducer_loss(am: torch.Tensor, lm: torch.Tensor, targets, frame_lens,
                           target_lens=None, blank: int = 0, reduction: str = "sum",
                           lm_only_scale: float = 0.0, am_only_scale: float = 0.0,
                           return_occupation: bool = False, use_double_scores: bool = False
                           ) -> tuple[torch.Tensor, dict]:
    """The RNN-T loss of the additive ("simple") joiner ``logits[t, u] = am[t] + lm[u]``.

    Args:
      am: ``[B, T, V]`` encoder side (projected to the vocabulary).
      lm: ``[B, U+1, V]`` prediction-network side (position ``u``: after ``u`` labels).
      lm_only_scale, am_only_scale: smoothing as in Kuang et al. (2022): each log-prob is
        ``(1 - l - a) * log p_joint + l * log_softmax(lm[u]) + a * log_softmax(am[t])`` (for
        the same token); 0 and 0 (default) is the plain simple loss.
      return_occupation: also return ``info["occupation"]``, ``[B, T, U+1]`` float (no grad):
        the posterior probability that the alignment passes through state ``(t, u)`` (sum of
        the posteriors of its blank and label arcs; 0 outside each utterance and for excluded
        ones), what :func:`get_pruned_ranges` needs. One DP pass gives both.
      Other arguments as :func:`transducer_loss`.

    Memory ``O(B T U + B (T + U) V)``: the normaliser is a matmul (see
    :func:`_simple_log_probs`).
    """
    _check_reduction(reduction)
    if am.dim() != 3 or lm.dim() != 3 or am.shape[0] != lm.shape[0] or am.shape[2] != lm.shape[2]:
        raise ValueError(f"am must be [B, T, V] and lm [B, U+1, V], got {tuple(am.shape)} and "
                         f"{tuple(lm.shape)}")
    B, T, V = am.shape
    U1 = lm.shape[1]
    dev = am.device
    flens, ulens, nxt = _prepare(B, T, U1, V, targets, target_lens, frame_lens, blank, dev)
    name = "simple_transducer_loss"
    am, bad_am = isolate_nonfinite(am, frame_mask(flens, T, dev), "logits", name)
    lm, bad_lm = isolate_nonfinite(lm, frame_mask(ulens + 1, U1, dev), "logits", name)
    bad_input = bad_am | bad_lm
    ok = (flens >= 1) & ~bad_input
    keep = ok.nonzero().squeeze(1)
    double = use_double_scores or am.dtype == torch.float64
    dtype = torch.float64 if double else _compute_dtype(am.dtype)
    tot, occ = None, None
    if keep.numel():
        log_probs = _simple_log_probs if _USE_ENGINE else _SimpleLogProbs.apply
        blank_lp, label_lp = log_probs(am, lm, nxt, blank, lm_only_scale, am_only_scale)
        kd = keep.to(dev)
        if _USE_ENGINE:
            lattice, sidx = _grid_lattice(kd, flens[keep].to(dev), ulens[keep].to(dev) + 1,
                                          ulens[keep].to(dev), None, nxt, B, T, U1, blank)
            scores = torch.stack([blank_lp, label_lp]).reshape(-1).index_select(0, sidx)
            tot, occ = _totals(lattice, scores, double, return_occupation, B * T * U1, sidx,
                               B * T * U1)
        else:
            tot, occ = _dp_totals(blank_lp, label_lp, kd, flens[keep].to(dev),
                                  ulens[keep].to(dev), double, return_occupation)
    loss, info = _finish(name, tot, keep, ok, flens, B, dtype, reduction, bad_input, am, lm)
    if return_occupation:
        if occ is None:
            occ = torch.zeros(B * T * U1, dtype=dtype, device=dev)
        occ = occ.view(B, T, U1)
        if info["excluded"]:
            occ[torch.tensor(info["excluded"], device=dev)] = 0.0
        info["occupation"] = occ
    return loss, info


def pruned_transducer_loss(logits: torch.Tensor, targets, ranges: torch.Tensor, frame_lens,
                           target_lens=None, blank: int = 0, reduction: str = "sum",
                           use_double_scores: bool = False) -> tuple[torch.Tensor, dict]:
    """The RNN-T loss over the pruned lattice (:func:`pruned_rnnt_lattice`).

    Args:
      logits: ``[B, T, s_range, V]``: the full joiner on the pruned inputs of
        :func:`do_rnnt_pruning`; slot ``j`` of frame ``t`` is label position
        ``ranges[b, t, j]``.
      ranges: ``[B, T, s_range]`` int (:func:`get_pruned_ranges`): consecutive positions.
      Other arguments as :func:`transducer_loss`.

    With ``s_range >= U + 1`` and ``ranges[b, t] = 0 .. s_range-1`` this is exactly
    :func:`transducer_loss`. Utterances with no frames or more labels than the windows allow
    (``U_b > T_b * (s_range - 1)``) are excluded; so is any whose total is -inf because its
    ``ranges`` leave no path. Memory ``O(B T s_range V)``.
    """
    _check_reduction(reduction)
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, T, s_range, V], got {tuple(logits.shape)}")
    B, T, S, V = logits.shape
    dev = logits.device
    flens, ulens, nxt, starts = _prepare_pruned(B, T, S, V, targets, target_lens, ranges,
                                                frame_lens, blank, dev)
    ok = (flens >= 1) & (ulens <= flens * (S - 1))
    keep = ok.nonzero().squeeze(1)
    double = use_double_scores or logits.dtype == torch.float64
    dtype = torch.float64 if double else _compute_dtype(logits.dtype)
    tot = None
    bad_input = torch.zeros(B, dtype=torch.bool)
    if keep.numel():
        # the label scored in slot j of frame t: y_{u+1}, u = ranges[b, t, j]
        pos = ranges.to(dev, torch.int64)
        y = nxt.gather(1, pos.reshape(B, -1).clamp(max=nxt.shape[1] - 1)).view(B, T, S)
        logits, blank_lp, label_lp, bad_input = _isolated_joiner(
            "pruned_transducer_loss", logits, y, blank, _cells(flens, ulens, T, pos))
        ok &= ~bad_input
        keep = ok.nonzero().squeeze(1)
    if keep.numel():
        kd = keep.to(dev)
        # the DP's lattices start at (0, 0): a kept utterance whose first window starts later
        # (not from get_pruned_ranges) keeps the engine's lattice, which starts at (0, s_0)
        if _USE_ENGINE or bool((starts.index_select(0, kd)[:, 0] != 0).any()):
            W_b = torch.clamp(ulens[keep] + 1, max=S).to(dev)
            lattice, sidx = _grid_lattice(kd, flens[keep].to(dev), W_b, ulens[keep].to(dev),
                                          starts, nxt, B, T, S, blank)
            scores = torch.stack([blank_lp, label_lp]).reshape(-1).index_select(0, sidx)
            tot, _ = _totals(lattice, scores, double, False, 0, sidx, B * T * S)
        else:
            dense_b, dense_l = _dense_window_scores(blank_lp, label_lp, pos, nxt.shape[1])
            tot, _ = _dp_totals(dense_b, dense_l, kd, flens[keep].to(dev),
                                ulens[keep].to(dev), double, False)
    return _finish("pruned_transducer_loss", tot, keep, ok, flens, B, dtype, reduction,
                   bad_input, logits)


# ----------------------------------------------------------------------------- pruning
def get_pruned_ranges(occupation: torch.Tensor, frame_lens, target_lens, s_range: int
                      ) -> torch.Tensor:
    """Per frame, the ``s_range`` consecutive label positions to keep: ``[B, T, s_range]`` int64.

    ``occupation [B, T, U+1]`` (``info["occupation"]`` of :func:`simple_transducer_loss`) is
    summed over each window of ``s_range`` positions, and frame ``t`` first takes the start
    ``s_t`` of its best window, clamped to ``[0, U_b + 1 - s_range]`` (0 when ``s_range > U_b``).
    The starts are then made to admit a path: ``s_0 = 0``, ``s_{T-1} = max(U_b+1-s_range, 0)``
    (the final state is in the last window), non-decreasing, and ``s_{t+1} - s_t <= s_range - 1``
    (a blank arc joins consecutive windows). Done in closed form: ``s_t <= t (s_range-1)``
    first, then a running max forward and the smallest raise backward
    (``s_t = max(s_t, max_{t' > t} s_{t'} - (t' - t)(s_range-1))``). No path exists when
    ``U_b > T_b (s_range - 1)``; such utterances are excluded by
    :func:`pruned_transducer_loss` (their ranges are still well formed). Frames past
    ``frame_lens[b]`` repeat the last valid start.
    """
    if s_range < 2:
        raise ValueError(f"s_range must be >= 2 (a window of 1 cannot emit labels), got {s_range}")
    occ = occupation.detach()
    B, T, U1 = occ.shape
    dev = occ.device
    flens = _frame_lens(frame_lens, B, T).to(dev)
    ulens = torch.as_tensor(target_lens).detach().to(dev, torch.int64).reshape(-1)
    k = s_range - 1
    umax = (ulens + 1 - s_range).clamp(min=0)  # [B] latest window start
    n_win = max(U1 - s_range + 1, 1)
    if U1 >= s_range:
        cs = torch.nn.functional.pad(occ.to(torch.float64).cumsum(-1), (1, 0))
        win = cs[..., s_range:] - cs[..., :n_win]  # [B, T, n_win]
    else:
        win = occ.new_zeros(B, T, 1, dtype=torch.float64)
    pos = torch.arange(n_win, device=dev)
    win = win.masked_fill(pos.view(1, 1, -1) > umax.view(B, 1, 1), float("-inf"))
    s = win.argmax(-1)  # [B, T]
    t = torch.arange(T, device=dev).unsqueeze(0)
    s = torch.minimum(s, torch.minimum(t * k, umax.unsqueeze(1)))
    s = torch.cummax(s, 1).values
    last = (flens - 1).clamp(min=0).unsqueeze(1)
    valid = t < flens.unsqueeze(1)
    target_last = torch.minimum(umax, last.squeeze(1) * k)  # == umax when feasible
    s = torch.where(t == last, target_last.unsqueeze(1), s)
    big = (T + U1 + 1) * (k + 1)
    v = torch.where(valid, s - t * k, torch.full_like(s, -big))
    back = torch.flip(torch.cummax(torch.flip(v, [1]), 1).values, [1]) + t * k
    s = torch.where(valid, torch.maximum(s, back), target_last.unsqueeze(1))
    return s.unsqueeze(2) + torch.arange(s_range, device=dev)


def do_rnnt_pruning(am: torch.Tensor, lm: torch.Tensor, ranges: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The joiner inputs at the kept positions: ``(am [B, T, s_range, D], lm [B, T, s_range,
    D])`` from ``am [B, T, D]`` (encoder side) and ``lm [B, U+1, D]`` (decoder side).

    ``am`` is expanded (a view, no copy); ``lm[b, ranges[b, t, j]]`` is gathered (positions past
    ``U`` read position ``U``: such slots are never scored). Typically
    ``joiner(*do_rnnt_pruning(joiner.encoder_proj(enc), joiner.decoder_proj(dec), ranges),
    project_input=False)``.
    """
    B, T, S = ranges.shape
    U1, D = lm.shape[1], lm.shape[-1]
    idx = ranges.to(lm.device, torch.int64).clamp(max=U1 - 1)
    rows = (idx + (torch.arange(B, device=lm.device) * U1).view(B, 1, 1)).reshape(-1)
    lm_p = torch.index_select(lm.reshape(B * U1, D), 0, rows).view(B, T, S, D)  # row copies
    return am.unsqueeze(2).expand(B, T, S, am.shape[-1]), lm_p


# ----------------------------------------------------------------------------- module
class TransducerLoss(nn.Module):
    """RNN-T training loss, full or pruned (Kuang et al. 2022), as icefall's stateless recipes.

    Args:
      blank: blank token id.
      pruned: ``False``: the full loss on ``joiner(enc[:, :, None], dec[:, None])``
        (``[B, T, U+1, V]`` logits); ``True``: ``simple_loss_scale * simple + pruned``.
      s_range: label positions kept per frame by the pruned loss.
      simple_loss_scale: weight of the simple loss in the pruned mode's total.
      lm_only_scale, am_only_scale: smoothing of the simple loss
        (:func:`simple_transducer_loss`).
      reduction: ``"sum"`` or ``"mean"`` (per output frame of the kept utterances; each part is
        divided by its own count) or ``"none"``.
      use_double_scores: float64 forward-backward.

    ``forward(encoder_out [B, T, C], encoder_lens [B], decoder_out [B, U+1, C'], targets,
    joiner, simple_am=None, simple_lm=None, target_lens=None)`` returns ``(loss, info)``:

    * ``joiner(enc, dec, project_input=True)`` maps broadcastable ``[..., C]`` / ``[..., C']`` to
      logits ``[..., V]``, with ``joiner.encoder_proj`` / ``joiner.decoder_proj`` its input
      projections (:class:`wfst_asr.models.Joiner`);
    * ``decoder_out``: the prediction network on ``[blank] + y`` (position ``u`` has seen ``u``
      labels), :class:`wfst_asr.models.StatelessDecoder`;
    * ``simple_am [B, T, V]``, ``simple_lm [B, U+1, V]``: the simple joiner's inputs (linear
      projections of ``encoder_out`` and ``decoder_out``), needed when ``pruned``;
    * ``info``: that of the (pruned or full) loss, with the union of the excluded utterances,
      plus ``simple_loss`` and ``transducer_loss`` (floats, the two parts before scaling) and,
      when pruned, ``simple_info``.
    """

    def __init__(self, blank: int = 0, pruned: bool = True, s_range: int = 5,
                 simple_loss_scale: float = 0.5, lm_only_scale: float = 0.25,
                 am_only_scale: float = 0.0, reduction: str = "sum",
                 use_double_scores: bool = False) -> None:
        super().__init__()
        _check_reduction(reduction)
        if pruned and s_range < 2:
            raise ValueError(f"s_range must be >= 2, got {s_range}")
        self.blank = int(blank)
        self.pruned = bool(pruned)
        self.s_range = int(s_range)
        self.simple_loss_scale = float(simple_loss_scale)
        self.lm_only_scale = float(lm_only_scale)
        self.am_only_scale = float(am_only_scale)
        self.reduction = reduction
        self.use_double_scores = bool(use_double_scores)

    def extra_repr(self) -> str:
        return (f"blank={self.blank}, pruned={self.pruned}, s_range={self.s_range}, "
                f"simple_loss_scale={self.simple_loss_scale}, reduction={self.reduction!r}")

    def forward(self, encoder_out: torch.Tensor, encoder_lens, decoder_out: torch.Tensor,
                targets, joiner, simple_am: torch.Tensor | None = None,
                simple_lm: torch.Tensor | None = None, target_lens=None
                ) -> tuple[torch.Tensor, dict]:
        common = {"target_lens": target_lens, "blank": self.blank, "reduction": self.reduction,
                  "use_double_scores": self.use_double_scores}
        if not self.pruned:
            logits = joiner(encoder_out.unsqueeze(2), decoder_out.unsqueeze(1))
            loss, info = transducer_loss(logits, targets, encoder_lens, **common)
            info["transducer_loss"] = float(loss.detach().sum())
            return loss, info
        if simple_am is None or simple_lm is None:
            raise ValueError("the pruned loss needs simple_am [B, T, V] and simple_lm [B, U+1, V]")
        simple, sinfo = simple_transducer_loss(
            simple_am, simple_lm, targets, encoder_lens, lm_only_scale=self.lm_only_scale,
            am_only_scale=self.am_only_scale, return_occupation=True, **common)
        if isinstance(targets, torch.Tensor) and targets.dim() == 2:
            ulens = torch.as_tensor(target_lens)
        else:
            ulens = torch.tensor([len(s) for s in targets])
        ranges = get_pruned_ranges(sinfo.pop("occupation"), encoder_lens, ulens, self.s_range)
        am_p, lm_p = do_rnnt_pruning(joiner.encoder_proj(encoder_out),
                                     joiner.decoder_proj(decoder_out), ranges)
        logits = joiner(am_p, lm_p, project_input=False)
        pruned, info = pruned_transducer_loss(logits, targets, ranges, encoder_lens, **common)
        excluded = sorted(set(info["excluded"]) | set(sinfo["excluded"]))
        bad = sorted(set(info["nonfinite_input"]) | set(sinfo["nonfinite_input"]))
        info.update(excluded=excluded, num_excluded=len(excluded), nonfinite_input=bad,
                    simple_info=sinfo,
                    simple_loss=float(simple.detach().sum()),
                    transducer_loss=float(pruned.detach().sum()))
        return self.simple_loss_scale * simple.to(pruned.dtype) + pruned, info
