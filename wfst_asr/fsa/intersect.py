"""Intersection of graphs with network output (:class:`DenseFsaVec`), as in k2's intersect_dense.

Each path of the result is a graph path of exactly ``n`` arcs with labels >= 0, one per frame of
the segment, followed by one arc with label -1; its score is the sum of the graph arc scores
plus ``log_probs[seq, start + t, label_t]``. Label 0 is blank here, not epsilon.

:func:`intersect_dense` returns a :class:`DenseLattice`: an FsaVec whose arcs are built only when
something asks for them. :func:`get_tot_scores` on a lattice that was never materialised runs a
streaming forward-backward, frame by frame over the graph's arc tensors, that never builds the
``T x arcs`` lattice; its gradient (arc and frame posteriors) comes from an explicit backward
recursion. This is how CTC, HMM and LF-MMI losses are computed; :func:`leaky_hmm_tot_scores`
adds Kaldi's leaky-HMM step between frames (the LF-MMI denominator).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from ._frames import LOG2E, backward_frames_jit, forward_frames_jit
from .dense import DenseFsaVec
from .dense_plan import (
    DensePlan,
    Sweep,
    build_plan,
    chunk_frames,
    frame_arc_index,
    leak_layout,
)
from .fsa import Fsa
from .semiring import scatter_reduce_semiring

NEG_INF = float("-inf")
#: arc-level posteriors computed inside the backward sweep, from the terms of its reduction
#: (:func:`._frames._one_frame_post`); False: the separate posterior pass (tests compare both)
FUSED_POSTERIORS = True


def _exp_(x: torch.Tensor) -> torch.Tensor:
    """``x.exp_()`` as ``exp2(x * log2 e)``: see :mod:`._frames` (fast whatever the input)."""
    return x.mul_(LOG2E).exp2_()


def _prep(plan: DensePlan, log_probs: torch.Tensor, gscores: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat log-probs, frame-arc graph scores ``[A]`` and final-arc graph scores ``[E]``.

    The flat log-probs get ``plan.lp_pad`` zeros appended so that frames past a segment's end
    (never used) still index inside the tensor.
    """
    lp_flat = log_probs.reshape(-1)
    if plan.lp_pad:
        lp_flat = torch.cat([lp_flat, lp_flat.new_zeros(plan.lp_pad)])
    return lp_flat, gscores[plan.f_garc], gscores[plan.e_garc]


def _chunk_scores(plan: DensePlan, lp_flat: torch.Tensor, gf: torch.Tensor, t0: int, t1: int):
    """Scores ``[C, A]`` of all frame arcs at frames t0..t1-1, their indices and validity."""
    idx, valid = frame_arc_index(plan, t0, t1)
    sc = torch.take(lp_flat, idx)
    sc += gf.unsqueeze(0)
    return sc, idx, valid


def _ext(gf: torch.Tensor) -> torch.Tensor:
    return torch.cat([gf, gf.new_full((1,), NEG_INF)])


class _Frames:
    """Per-frame arc scores of one sweep direction, computed a chunk at a time, in the form
    the frame loops of :mod:`._frames` take.

    In state mode (every state's entering arcs share one label) the log-prob term is kept per
    state, ``[C, S+1]``, and the per-arc term is the constant graph score, or nothing when all
    graph scores are 0; otherwise the per-arc terms are ``[C, K*n]`` blocks, views of one
    ``[C, P]`` tensor over all ``P`` padded arc slots (bucket b at ``p_offs[b]``).
    """

    def __init__(self, plan: DensePlan, sw: Sweep, lp_flat: torch.Tensor, gf: torch.Tensor):
        self.plan, self.sw, self.lp_flat = plan, sw, lp_flat
        self.state_mode = plan.state_label_ok
        self.gf_ext = _ext(gf)
        buckets = sw.layout.buckets
        self.offs = [off for off, _, _, _ in buckets]
        self.ns = [n for _, n, _, _ in buckets]
        self.Ks = [K for _, _, K, _ in buckets]
        self.p_offs, p = [], 0
        for n, K in zip(self.ns, self.Ks):
            self.p_offs.append(p)
            p += K * n
        self.P = p
        # [P] flat log-prob index at frame 0 and frame arc (padding: A) of each slot
        long0 = torch.zeros(0, dtype=torch.int64, device=gf.device)
        self.lp_base = torch.cat(sw.lp_base) if buckets else long0
        self.garc = torch.cat(sw.garc) if buckets else long0
        self._slot_idx: torch.Tensor | None = None
        self.lp_states: torch.Tensor | None = None
        empty = gf.new_zeros(0)
        if self.state_mode:
            zero_g = bool((gf == 0).all())
            self.kinds = [0 if zero_g else 1] * len(buckets)
            self.terms = [empty if zero_g else self.gf_ext[garc] for garc in sw.garc]
        else:
            self.kinds = [2] * len(buckets)
            self.terms = [empty] * len(buckets)
            self.g_slots = self.gf_ext[self.garc]

    def slot_index(self, t0: int, t1: int) -> torch.Tensor:
        """``[C, P]`` flat log-prob index of every padded arc slot at frames 0..C-1 (padding
        reads label 0 of its state's own segment), built once per sweep: add ``t0 * V`` by
        viewing the flat tensor from there, as for :func:`_state_index`."""
        if self._slot_idx is None:
            c = torch.arange(chunk_frames(self.plan), device=self.lp_base.device).unsqueeze(1)
            self._slot_idx = self.lp_base.unsqueeze(0) + c * self.plan.V
        return self._slot_idx[:t1 - t0]

    def chunk(self, t0: int, t1: int) -> None:
        if self.state_mode:
            self.lp_states = _gather(self.lp_flat[t0 * self.plan.V:],
                                     _state_index(self.plan, self.sw.s_base, t1 - t0))
            self.lp_states[:, -1] = 0.0  # the sink reads no log-prob: it stays -inf
        else:
            blk = _gather(self.lp_flat[t0 * self.plan.V:], self.slot_index(t0, t1))
            blk += self.g_slots
            self.terms = [blk[:, p:p + K * n] for p, n, K in zip(self.p_offs, self.ns, self.Ks)]

    def loop_args(self) -> tuple:
        return (self.sw.other, self.offs, self.ns, self.Ks, self.kinds, self.terms,
                self.lp_states)


def _gather(flat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``torch.take(flat, idx)`` for a 1-D ``flat``, as an ``index_select`` (faster on CPU)."""
    return torch.index_select(flat, 0, idx.reshape(-1)).view(idx.shape)


def _state_index(plan: DensePlan, s_base: torch.Tensor, C: int) -> torch.Tensor:
    """``[C, len(s_base)]`` flat log-prob indices of frames 0..C-1 for each state's label
    (``s_base + c * V``), cached per plan; add ``t0 * V`` by viewing the flat tensor from there."""
    key = ("state_index", s_base.data_ptr(), s_base.numel())
    cache = plan.cache
    if key not in cache or cache[key].shape[0] < C:
        c = torch.arange(chunk_frames(plan), device=s_base.device).unsqueeze(1)
        cache[key] = s_base.unsqueeze(0) + c * plan.V
    return cache[key][:C]


def forward_sweep(plan: DensePlan, lp_flat: torch.Tensor, gf: torch.Tensor, ge: torch.Tensor,
                  log_semiring: bool, want_bp: bool = False):
    """Forward scores of every frame: ``alpha [T_max+1, S+1]`` (fwd layout order; the last
    column is the -inf sink), and totals ``[N]``.

    With ``want_bp`` (tropical only) also the best entering pad slot of each state per frame.
    """
    alpha, tot, bp, _ = _forward_sweep(plan, lp_flat, gf, ge, log_semiring, want_bp)
    return alpha, tot, bp


def _forward_sweep(plan: DensePlan, lp_flat: torch.Tensor, gf: torch.Tensor, ge: torch.Tensor,
                   log_semiring: bool, want_bp: bool = False, leak_log: float | None = None):
    """:func:`forward_sweep`, plus, with ``leak_log = log(leaky)`` (log semiring), the leaky-HMM
    step before every frame of a segment (:mod:`._frames`). ``alpha[t]`` then holds the scores
    after the step (what frame t's arcs leave from); the 4th result, ``[T_max+1, N]``, holds
    each segment's start-state score before it (None without leak)."""
    S, Tm = plan.num_states, plan.T_max
    alpha = torch.full((Tm + 1, S + 1), NEG_INF, dtype=gf.dtype, device=gf.device)
    ok = plan.seg_start_state >= 0
    alpha[0, plan.fwd.layout.pos[plan.seg_start_state[ok]]] = 0.0
    bp = torch.zeros((Tm + 1, S + 1), dtype=torch.int64, device=gf.device) if want_bp else None
    leak, pre = None, None
    if leak_log is not None:
        lk = leak_layout(plan)
        pre = torch.full((Tm + 1, plan.num_segments), NEG_INF, dtype=gf.dtype, device=gf.device)
        t = torch.arange(Tm, device=gf.device).unsqueeze(1)
        add = torch.full((Tm, plan.num_segments), leak_log, dtype=gf.dtype, device=gf.device)
        add.masked_fill_(t >= plan.lens.unsqueeze(0), NEG_INF)
        leak = [lk.f_idx.reshape(-1), lk.f_start, add, pre]
    C = chunk_frames(plan)
    frames = _Frames(plan, plan.fwd, lp_flat, gf)
    for t0 in range(0, Tm, C):
        t1 = min(Tm, t0 + C)
        frames.chunk(t0, t1)
        # the loop indexes alpha by absolute frame, the chunk tensors by t - t0
        forward_frames_jit(alpha, t0, t1, *frames.loop_args(), log_semiring, bp, leak)
    if pre is not None:
        pre[Tm] = alpha[Tm, lk.f_start]
    tot = _totals(plan, alpha, ge, log_semiring)
    return alpha, tot, bp, pre


def _final_scores(plan: DensePlan, alpha: torch.Tensor, ge: torch.Tensor) -> torch.Tensor:
    """``alpha_{T_n}[src] + score`` of every final arc ``[E]``."""
    return alpha[plan.lens[plan.e_seg], plan.fwd.layout.pos[plan.e_src]] + ge


def _totals(plan: DensePlan, alpha: torch.Tensor, ge: torch.Tensor, log_semiring: bool
            ) -> torch.Tensor:
    tot, _ = scatter_reduce_semiring(_final_scores(plan, alpha, ge), plan.e_seg,
                                     plan.num_segments, log_semiring)
    return tot


def backward_chunks(plan: DensePlan, lp_flat: torch.Tensor, gf: torch.Tensor, ge: torch.Tensor,
                    log_semiring: bool, final_offset: torch.Tensor | None = None
                    ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Backward recursion, chunk by chunk from the last frame.

    Yields ``(t0, t1, beta [C+1, S+1])`` where ``beta[c]`` holds the backward scores of frame
    ``t0 + c`` in the bwd layout order. With ``final_offset [N]``, each segment's scores are
    computed minus its offset (it is subtracted from the final weights; in both semirings this
    shifts every backward score of the segment by the same amount).
    """
    for t0, t1, beta, _ in _backward_chunks(plan, lp_flat, gf, ge, log_semiring, final_offset):
        yield t0, t1, beta


def _backward_chunks(plan: DensePlan, lp_flat: torch.Tensor, gf: torch.Tensor,
                     ge: torch.Tensor, log_semiring: bool,
                     final_offset: torch.Tensor | None = None, leak_log: float | None = None,
                     alpha: torch.Tensor | None = None):
    """:func:`backward_chunks` yielding ``(t0, t1, beta, extra)``. With ``leak_log``, the
    transposed leaky-HMM step follows every frame (:mod:`._frames`). With ``alpha`` (log
    semiring; forward scores, fwd order), ``extra`` is ``(post [C, P], frames)``: the posterior
    of every padded arc slot of the chunk's frames (:func:`._frames._one_frame_post`; a buffer
    reused by the next chunk) and the :class:`_Frames` that lays them out; else None."""
    S, Tm = plan.num_states, plan.T_max
    dev, dt = gf.device, gf.dtype
    beta_final, _ = scatter_reduce_semiring(ge, plan.bwd.layout.pos[plan.e_src], S, log_semiring)
    if final_offset is not None:
        beta_final = beta_final - final_offset[plan.state_seg_bwd]
    ends: dict[int, torch.Tensor] = dict(plan.end_groups)
    nxt = torch.full((S + 1,), NEG_INF, dtype=dt, device=dev)
    if Tm in ends:
        nxt[ends[Tm]] = beta_final[ends[Tm]]
    if Tm == 0:
        yield 0, 0, nxt.unsqueeze(0), None
        return
    C = chunk_frames(plan)
    frames = _Frames(plan, plan.bwd, lp_flat, gf)
    end_ts = [t for t, _ in plan.end_groups]
    end_states = [st for _, st in plan.end_groups]
    leak = None
    if leak_log is not None:
        lk = leak_layout(plan)
        leak = [lk.b_start, lk.b_seg]
    post_buf = b2f = None
    if alpha is not None:
        post_buf = torch.empty((C, frames.P), dtype=dt, device=dev)
        if plan.b2f is not None:
            b2f = torch.cat([plan.b2f, plan.b2f.new_full((1,), S)])
    for t0 in reversed(range(0, Tm, C)):
        t1 = min(Tm, t0 + C)
        frames.chunk(t0, t1)
        beta = torch.full((t1 - t0 + 1, S + 1), NEG_INF, dtype=dt, device=dev)
        beta[t1 - t0] = nxt
        a_c = post = None
        if post_buf is not None:
            a_c = alpha[t0:t1] if b2f is None else alpha[t0:t1].index_select(1, b2f)
            post = post_buf[:t1 - t0]
        backward_frames_jit(beta, t0, t1, *frames.loop_args(), log_semiring, end_ts,
                            end_states, beta_final, leak, float(leak_log or 0.0), a_c, post,
                            frames.p_offs)
        yield t0, t1, beta, (None if post is None else (post, frames))
        nxt = beta[0]


def _log_grads(plan: DensePlan, lp_flat: torch.Tensor, gf: torch.Tensor, ge: torch.Tensor,
               alpha: torch.Tensor, tot: torch.Tensor, go: torch.Tensor, need_graph: bool,
               grad_lp: torch.Tensor | None = None, leak_log: float | None = None,
               leak_pre: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior-weighted gradients ``(d lp_flat, d frame-arc score, d final-arc score)``.

    Arc posteriors at frame t: ``exp(alpha_t[src] + score_t + beta_{t+1}[dst] - tot)``. When the
    graph scores need no gradient and every state's entering arcs share one label, the
    log-prob gradient comes from state occupancies ``exp(alpha_{t+1} + beta_{t+1} - tot)``;
    otherwise the backward sweep computes the arc posteriors as it goes
    (:data:`FUSED_POSTERIORS`). With the leaky HMM (``leak_log``, ``leak_pre`` from
    :func:`_forward_sweep`), alpha holds the scores after the leaky step, and the occupancy of
    a start state uses its score before it (``leak_pre``).
    """
    if grad_lp is None:
        grad_lp = torch.zeros_like(lp_flat)
    grad_f = torch.zeros_like(gf)
    by_state = plan.state_label_ok and not need_graph
    fused = not by_state and FUSED_POSTERIORS
    # Backward scores are computed minus (tot - log|go|), so exp(alpha + beta) is already the
    # posterior times |go|; the sign of go is applied by index_add_ when it is the same for all
    # segments. Beta is -inf after a segment's end, so frames past it get zero posteriors
    # without masks; segments without paths or with go = 0 get an offset of +inf (all zero).
    # Both need log-probs without NaN / +inf, which DenseFsaVec.finite guarantees.
    ok = torch.isfinite(tot) & (go != 0)
    offset = torch.where(ok, tot - torch.log(go.abs()), torch.full_like(tot, float("inf")))
    sign = 1.0 if bool((go >= 0).all()) else -1.0 if bool((go <= 0).all()) else 0.0
    s = sign if sign != 0.0 else 1.0
    if sign == 0.0:  # mixed signs: multiply explicitly
        sgn = torch.sign(go)
        sgn_state, sgn_arc = sgn[plan.state_seg_bwd], sgn[plan.f_seg]
    if by_state and leak_log is not None:
        lk = leak_layout(plan)
        start_cols, start_pre = lk.b_start[lk.b_start_ok], leak_pre[:, lk.b_start_ok]
    if not by_state and not fused:
        a_src = plan.fwd.layout.pos[plan.f_src]
        b_dst = plan.bwd.layout.pos[plan.f_dst]
    sgn_slot = grad_f_ext = None
    V = plan.V
    for t0, t1, beta, extra in _backward_chunks(plan, lp_flat, gf, ge, True, offset, leak_log,
                                                alpha if fused else None):
        if t1 == t0:
            continue
        if by_state:
            al = alpha[t0 + 1:t1 + 1]
            post = (al[:, :-1] if plan.b2f is None else al[:, plan.b2f]) + beta[1:, :-1]
            if leak_log is not None:
                post[:, start_cols] = start_pre[t0 + 1:t1 + 1] + beta[1:, start_cols]
            _exp_(post)
            if sign == 0.0:
                post *= sgn_state
            idx = _state_index(plan, plan.bwd.s_base[:-1], t1 - t0)
            grad_lp[t0 * V:].index_add_(0, idx.reshape(-1), post.reshape(-1), alpha=s)
        elif fused:
            post, frames = extra
            if sign == 0.0:
                if sgn_slot is None:
                    sgn_slot = torch.cat([sgn_state[off:off + n].repeat(K) for off, n, K in
                                          zip(frames.offs, frames.ns, frames.Ks)])
                post *= sgn_slot
            idx = frames.slot_index(t0, t1)
            grad_lp[t0 * V:].index_add_(0, idx.reshape(-1), post.reshape(-1), alpha=s)
            if need_graph:
                if grad_f_ext is None:
                    grad_f_ext = gf.new_zeros(gf.numel() + 1)
                grad_f_ext.index_add_(0, frames.garc, post.sum(0), alpha=s)
        else:
            sc, idx, _ = _chunk_scores(plan, lp_flat, gf, t0, t1)
            post = alpha[t0:t1][:, a_src] + sc + beta[1:][:, b_dst]
            _exp_(post)
            if sign == 0.0:
                post *= sgn_arc
            grad_f.add_(post.sum(0), alpha=s)
            grad_lp.index_add_(0, idx.reshape(-1), post.reshape(-1), alpha=s)
    if grad_f_ext is not None:
        grad_f = grad_f_ext[:-1]
    tot = torch.where(torch.isfinite(tot), tot, torch.zeros_like(tot))
    xe = _final_scores(plan, alpha, ge) - tot[plan.e_seg]
    ge_grad = torch.where(torch.isfinite(xe), _exp_(xe.clone()), torch.zeros_like(xe))
    return grad_lp, grad_f, ge_grad * go[plan.e_seg]


def _viterbi_grads(plan: DensePlan, lp_flat: torch.Tensor, gf: torch.Tensor, ge: torch.Tensor,
                   alpha: torch.Tensor, bp: torch.Tensor, tot: torch.Tensor, go: torch.Tensor,
                   grad_lp: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of tropical totals: 1 (times the output gradient) along one best path."""
    arcs, frames, segs, best_e = best_paths(plan, alpha, bp, ge, tot)
    if grad_lp is None:
        grad_lp = torch.zeros_like(lp_flat)
    grad_f = torch.zeros_like(gf)
    w = go[segs]
    idx = (plan.f_seq[arcs] * plan.T + plan.f_start[arcs] + frames) * plan.V + plan.f_label[arcs]
    grad_lp.index_add_(0, idx, w)
    grad_f.index_add_(0, arcs, w)
    ge_grad = torch.zeros_like(ge)
    ok = best_e >= 0
    ge_grad.index_add_(0, best_e[ok], go[ok])
    return grad_lp, grad_f, ge_grad


def _pad_table(plan: DensePlan) -> torch.Tensor:
    """``[K_max, S]`` frame arc of pad slot k of each state (fwd order); A where none."""
    A = plan.f_src.numel()
    kmax = max([K for (_, _, K, _) in plan.fwd.layout.buckets], default=1)
    table = torch.full((kmax, plan.num_states), A, dtype=torch.int64, device=plan.f_src.device)
    for off, n, K, pad in plan.fwd.layout.buckets:
        table[:K, off:off + n] = pad.view(K, n)
    return table


def best_paths(plan: DensePlan, alpha: torch.Tensor, bp: torch.Tensor, ge: torch.Tensor,
               tot: torch.Tensor):
    """Trace one best path per segment from tropical forward scores and back-pointers.

    Returns ``(frame arcs [P], their frames [P], their segments [P], best final arc [N] or -1)``.
    """
    dev = ge.device
    N = plan.num_segments
    fin = _final_scores(plan, alpha, ge)
    _, arg = scatter_reduce_semiring(fin, plan.e_seg, N, False, want_arg=True)
    ok = torch.isfinite(tot) & (arg >= 0)
    best_e = torch.where(ok, arg, torch.full_like(arg, -1))
    table = _pad_table(plan)
    state = torch.zeros(N, dtype=torch.int64, device=dev)
    state[ok] = plan.fwd.layout.pos[plan.e_src[best_e[ok]]]
    out_a, out_t, out_s = [], [], []
    seg_ids = torch.arange(N, device=dev)
    for t in range(plan.T_max, 0, -1):
        act = ok & (plan.lens >= t)
        if not bool(act.any()):
            continue
        s = state[act]
        k = bp[t, s].long()
        arc = table[k, s]
        out_a.append(arc)
        out_t.append(torch.full_like(arc, t - 1))
        out_s.append(seg_ids[act])
        state[act] = plan.fwd.layout.pos[plan.f_src[arc]]
    if out_a:
        return torch.cat(out_a), torch.cat(out_t), torch.cat(out_s), best_e
    e = torch.zeros(0, dtype=torch.int64, device=dev)
    return e, e, e, best_e


_POOL: ThreadPoolExecutor | None = None
#: below this much work (states x frames) the segments are not split over two threads
PARALLEL_MIN_WORK = 2e5


def _map(fn, items: list) -> list:
    """``[fn(x) for x in items]``, on two threads when there are two parts (CPU only).

    The per-frame operations are small, so one Python thread cannot keep two cores busy; two
    threads over disjoint groups of segments can, because PyTorch releases the GIL inside its
    kernels.
    """
    global _POOL
    if len(items) < 2:
        return [fn(x) for x in items]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wfst_asr")

    def no_grad_fn(x):  # grad mode is thread-local: the pool's threads start with it on
        with torch.no_grad():
            return fn(x)
    return list(_POOL.map(no_grad_fn, items))


def _split_segments(graphs: Fsa, dense: DenseFsaVec) -> list[torch.Tensor]:
    """Segment groups to process in parallel: two halves of about equal work on a multi-core
    CPU with enough work, else one group with all segments."""
    N = dense.num_segments
    if dense.device.type != "cpu" or torch.get_num_threads() < 2 or N < 2:
        return [torch.arange(N)]
    g = graphs.as_vec()
    ns = g.num_states_per_fsa.cpu()
    work = (ns if g.num_fsas == N else ns.expand(N)).double() * dense.duration.double()
    if float(work.sum()) < PARALLEL_MIN_WORK:  # too little work to pay for the threads
        return [torch.arange(N)]
    # whole sequences go to one part, so the parts write disjoint parts of the gradient
    seq = dense.segments[:, 0]
    seq_work = torch.zeros(int(seq.max()) + 1, dtype=torch.float64).index_add_(0, seq, work)
    if int((seq_work > 0).sum()) < 2:
        return [torch.arange(N)]
    side = [0] * seq_work.numel()
    load = [0.0, 0.0]
    for i in torch.argsort(seq_work, descending=True).tolist():  # greedy balance
        j = 0 if load[0] <= load[1] else 1
        side[i] = j
        load[j] += float(seq_work[i])
    which = torch.tensor(side)[seq]
    return [(which == j).nonzero().squeeze(1) for j in (0, 1)]


class _DenseTotScores(torch.autograd.Function):
    """Totals of (graphs x dense) with explicit posterior-based backward.

    ``parts`` is a list of ``(segment ids, plan)``; parts run on separate threads.
    ``leak_log``: log of the leaky-HMM coefficient (log semiring), or None.
    """

    @staticmethod
    def forward(ctx, log_probs: torch.Tensor, gscores: torch.Tensor, parts: list,
                log_semiring: bool, leak_log: float | None = None) -> torch.Tensor:
        def run(part):
            _, plan = part
            lp_flat, gf, ge = _prep(plan, log_probs, gscores)
            return _forward_sweep(plan, lp_flat, gf, ge, log_semiring,
                                  want_bp=not log_semiring, leak_log=leak_log)

        outs = _map(run, parts)
        N = sum(ids.numel() for ids, _ in parts)
        tot = torch.empty(N, dtype=log_probs.dtype, device=log_probs.device)
        for (ids, _), (_, t, _, _) in zip(parts, outs):
            tot[ids.to(tot.device)] = t
        ctx.parts, ctx.log_semiring, ctx.leak_log = parts, log_semiring, leak_log
        ctx.lp_shape, ctx.g_size = log_probs.shape, gscores.shape[0]
        ctx.outs = [(alpha, bp, pre) for alpha, _, bp, pre in outs]
        ctx.save_for_backward(log_probs, gscores, tot)
        return tot

    @staticmethod
    def backward(ctx, go: torch.Tensor):
        log_probs, gscores, tot = ctx.saved_tensors
        go = torch.where(torch.isfinite(tot), go, torch.zeros_like(go))
        need_lp, need_g = ctx.needs_input_grad[0], ctx.needs_input_grad[1]

        # one gradient buffer: the parts cover disjoint sequences (see _split_segments)
        pad = max(plan.lp_pad for _, plan in ctx.parts)
        glp = log_probs.new_zeros(log_probs.numel() + pad)

        def run(i):
            (ids, plan), (alpha, bp, pre) = ctx.parts[i], ctx.outs[i]
            ids = ids.to(tot.device)
            lp_flat, gf, ge = _prep(plan, log_probs, gscores)
            if ctx.log_semiring:
                _, gfa, gea = _log_grads(plan, lp_flat, gf, ge, alpha, tot[ids], go[ids],
                                         need_g, glp, ctx.leak_log, pre)
            else:
                _, gfa, gea = _viterbi_grads(plan, lp_flat, gf, ge, alpha, bp, tot[ids],
                                             go[ids], glp)
            return gfa, gea

        outs = _map(run, list(range(len(ctx.parts))))
        glp = glp[:log_probs.numel()]
        gg = torch.zeros(ctx.g_size, dtype=gscores.dtype, device=gscores.device)
        for (_, plan), (gfa, gea) in zip(ctx.parts, outs):
            gg.index_add_(0, plan.f_garc, gfa).index_add_(0, plan.e_garc, gea)
        return (glp.view(ctx.lp_shape) if need_lp else None, gg if need_g else None, None, None,
                None)


def dense_tot_scores(graphs: Fsa, dense: DenseFsaVec, log_semiring: bool = True,
                     use_double_scores: bool = False) -> torch.Tensor:
    """Total score ``[N]`` of each segment's intersection, streamed frame by frame.

    Equal to ``get_tot_scores(intersect_dense(graphs, dense, inf))`` without building the lattice.
    Differentiable w.r.t. ``dense.log_probs`` and ``graphs.scores``; -inf (with zero gradient)
    for a segment that has no path, e.g. when it is too short for its labels; NaN (with zero
    gradient) for a segment with a NaN or +inf log-prob in its frames
    (:meth:`DenseFsaVec.finite`). Every other segment's total and gradient are computed
    exactly as if its frames were clean (so, up to rounding where the batch's arc layout
    differs, as without it in the batch).
    """
    return _streamed_tot_scores(graphs, dense, log_semiring, use_double_scores)


def leaky_hmm_tot_scores(graphs: Fsa, dense: DenseFsaVec, leaky_hmm_coefficient: float,
                         use_double_scores: bool = False) -> torch.Tensor:
    """Log-semiring totals ``[N]`` of (graphs x dense) with Kaldi's leaky HMM, streamed.

    Between frames (before every frame of a segment, not after its last), the start state of
    every segment gets ``leaky_hmm_coefficient`` times the segment's total forward mass (over
    its graph's states but the final one): the same totals and gradients as
    :func:`dense_tot_scores` on :func:`wfst_asr.losses.add_leaky_arcs` of the graph (every
    state given a copy of the start state's arcs, score + log(leaky)), up to rounding, without
    doubling the arcs. ``graphs``: one graph per segment or one shared graph, as for
    :func:`intersect_dense`; differentiable w.r.t. ``dense.log_probs`` and the graph scores
    (the derivative w.r.t. a start arc's score includes its leaky use). A coefficient of 0 is
    :func:`dense_tot_scores`. Non-finite log-probs as in :func:`dense_tot_scores`.
    """
    if not 0.0 <= leaky_hmm_coefficient < 1.0:
        raise ValueError(f"leaky_hmm_coefficient must be in [0, 1), got {leaky_hmm_coefficient}")
    from .dense_plan import _check_graphs
    _check_graphs(graphs, dense)
    leak = math.log(leaky_hmm_coefficient) if leaky_hmm_coefficient > 0 else None
    return _streamed_tot_scores(graphs, dense, True, use_double_scores, leak)


def _streamed_tot_scores(graphs: Fsa, dense: DenseFsaVec, log_semiring: bool,
                         use_double_scores: bool, leak_log: float | None = None
                         ) -> torch.Tensor:
    graphs = graphs.as_vec()
    dense, bad = dense.finite()
    parts = []
    for ids in _split_segments(graphs, dense):
        plan, _ = build_plan(graphs, dense, ids)
        parts.append((ids, plan))
    dt = torch.float64 if use_double_scores else torch.float32
    tot = _DenseTotScores.apply(dense.log_probs.to(dt), graphs.scores.to(dt), parts, log_semiring,
                                leak_log)
    if bad is not None and bool(bad.any()):
        tot = torch.where(bad.to(tot.device), tot.new_full((), float("nan")), tot)
    return tot


def _viterbi_alpha_beta(plan: DensePlan, lp_flat: torch.Tensor, gf: torch.Tensor,
                        ge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tropical ``alpha [T+1, S]`` (fwd order), ``beta [T+1, S]`` (bwd order), best totals."""
    alpha, tot, _ = forward_sweep(plan, lp_flat, gf, ge, False)
    beta = torch.empty_like(alpha)
    for t0, t1, b in backward_chunks(plan, lp_flat, gf, ge, False):
        beta[t0:t1 + 1] = b
    return alpha, beta, tot


def build_lattice(graphs: Fsa, dense: DenseFsaVec, output_beam: float) -> Fsa:
    """The lattice FsaVec of ``graphs x dense``: states are (frame, graph state) pairs.

    Keeps the arcs whose best path is within ``output_beam`` of the segment's best path (all
    arcs on some complete path when the beam is infinite). Arc scores are
    ``graph score + log_probs[seq, start + t, label]`` gathered with autograd, so gradients of
    anything computed on the lattice reach both inputs. Attributes: the graph's per-arc
    attributes, ``graph_arc_idx`` (int64, arc in ``graphs``) and ``frame_idx`` (int32, frame
    within the segment; the -1 arc has the segment length). A segment with a NaN or +inf
    log-prob in its frames gets an empty lattice (:meth:`DenseFsaVec.finite`).
    """
    dense, bad = dense.finite()
    plan, graphs = build_plan(graphs, dense)
    with torch.no_grad():
        lp_d = dense.log_probs.detach().to(torch.float32)
        lp_flat, gf, ge = _prep(plan, lp_d, graphs.scores.detach().to(torch.float32))
        alpha, beta, best = _viterbi_alpha_beta(plan, lp_flat, gf, ge)
        if bad is not None:  # a segment with NaN/+inf log-probs keeps no arc (NaN threshold)
            best = torch.where(bad.to(best.device), best.new_full((), float("nan")), best)
        # a small tolerance keeps best-path arcs whose through-score rounds below the best
        thr = best - output_beam - 1e-5 * (1.0 + best.abs())
        a_src, b_dst = plan.fwd.layout.pos[plan.f_src], plan.bwd.layout.pos[plan.f_dst]
        keep_t, keep_a = [], []
        C = chunk_frames(plan)
        for t0 in range(0, plan.T_max, C):
            t1 = min(plan.T_max, t0 + C)
            sc, _, valid = _chunk_scores(plan, lp_flat, gf, t0, t1)
            through = alpha[t0:t1][:, a_src] + sc + beta[t0 + 1:t1 + 1][:, b_dst]
            keep = valid & torch.isfinite(through) & (through >= thr[plan.f_seg])
            tt, aa = keep.nonzero(as_tuple=True)
            keep_t.append(tt + t0)
            keep_a.append(aa)
        fin = _final_scores(plan, alpha, ge)
        keep_e = (torch.isfinite(fin) & (fin >= thr[plan.e_seg])).nonzero().squeeze(1)
    dev = alpha.device
    ft = torch.cat(keep_t) if keep_t else torch.zeros(0, dtype=torch.int64, device=dev)
    fa = torch.cat(keep_a) if keep_a else torch.zeros(0, dtype=torch.int64, device=dev)
    return _assemble(plan, graphs, dense, ft, fa, keep_e)


def _assemble(plan: DensePlan, graphs: Fsa, dense: DenseFsaVec, ft: torch.Tensor,
              fa: torch.Tensor, ke: torch.Tensor) -> Fsa:
    """Lattice from kept frame arcs ``(ft, fa)`` and final arcs ``ke`` of a plan."""
    return assemble_lattice(graphs, dense, plan.num_states, plan.seg_start_state,
                            plan.f_seg[fa], ft, plan.f_src[fa], plan.f_dst[fa], plan.f_garc[fa],
                            plan.e_seg[ke], plan.e_src[ke], plan.e_garc[ke])


#: lattices whose (segment, frame, state) key space is at most this number their states through
#: a table instead of a sort
KEY_TABLE = 1 << 22


def assemble_lattice(graphs: Fsa, dense: DenseFsaVec, num_keys: int, start: torch.Tensor,
                     f_seg: torch.Tensor, ft: torch.Tensor, f_src: torch.Tensor,
                     f_dst: torch.Tensor, f_garc: torch.Tensor, e_seg: torch.Tensor,
                     e_src: torch.Tensor, e_garc: torch.Tensor) -> Fsa:
    """Build a lattice FsaVec from its arcs, numbering states by (segment, frame, state).

    Frame arcs go from ``(f_seg, ft, f_src)`` to ``(f_seg, ft + 1, f_dst)`` (state ids below
    ``num_keys``); final arcs from ``(e_seg, len, e_src)`` to each segment's final state.
    ``start [N]`` is each segment's start state id; state ``(seg, 0, start)`` becomes lattice
    state 0 of every segment that has arcs. Arcs that are on no complete path may remain (as
    unreachable or dead-end parts); they never create a path.
    """
    dev = ft.device
    N = dense.num_segments
    lens = dense.segments[:, 2].to(dev)
    T_max = int(lens.max()) if N else 0
    span = (T_max + 2) * num_keys
    dt = torch.int32 if N * span < 2 ** 31 else torch.int64  # keys and state numbers
    lens_k = lens.to(dt)
    base = f_seg.to(dt) * span + ft.to(dt) * num_keys
    src_key = base + f_src.to(dt)
    base += num_keys
    dst_key = base.add_(f_dst.to(dt))
    e_seg_k = e_seg.to(dt)
    e_key = e_seg_k * span + lens_k.index_select(0, e_seg) * num_keys + e_src.to(dt)
    used = torch.zeros(N, dtype=torch.bool, device=dev)
    used[f_seg] = True
    used[e_seg] = True
    used &= start >= 0
    segs_used = used.nonzero().squeeze(1)
    s_key = (segs_used * span + start.index_select(0, segs_used)).to(dt)
    every = torch.cat([src_key, dst_key, e_key, s_key])
    nf, ne = f_seg.numel(), e_seg.numel()
    if N * span <= KEY_TABLE:  # number the keys through a table: no sort
        mark = torch.zeros(N * span, dtype=torch.bool, device=dev)
        mark.index_fill_(0, every.long(), True)
        num = torch.cumsum(mark, 0, dtype=dt)  # 1 + the state's number over all segments
        ends = num[span - 1::span]
        counts = torch.diff(ends, prepend=ends.new_zeros(1))  # states per segment
        local = (num.view(N, span) - (ends - counts + 1).unsqueeze(1)).view(-1)
        src_l = local.index_select(0, src_key)
        dst_l = local.index_select(0, dst_key)
        e_l = local.index_select(0, e_key)
    else:
        keys, inv = torch.unique(every, return_inverse=True)
        counts = torch.bincount(keys // span, minlength=N).to(dt)
        first = torch.cumsum(counts, 0) - counts
        inv = inv.to(dt) - first.index_select(0, torch.cat([f_seg, f_seg, e_seg, segs_used]))
        src_l, dst_l, e_l = inv[:nf], inv[nf:2 * nf], inv[2 * nf:2 * nf + ne]
    # arcs by (segment, source state), stably: the order of their source keys
    order = torch.argsort(torch.cat([src_key, e_key]), stable=True)
    src = torch.cat([src_l, e_l]).index_select(0, order)
    dst = torch.cat([dst_l, counts.index_select(0, e_seg)]).index_select(0, order)
    seg = torch.cat([f_seg, e_seg]).index_select(0, order)
    garc = torch.cat([f_garc, e_garc]).index_select(0, order)
    frame = torch.cat([ft.to(dt), lens_k.index_select(0, e_seg)]).index_select(0, order)
    lab = graphs.labels.index_select(0, garc)
    splits = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev),
                        torch.bincount(seg, minlength=N).cumsum(0)])
    num_states = torch.where(counts > 0, counts + 1, counts).long()
    arcs = torch.stack([src.to(torch.int32), dst.to(torch.int32), lab.to(torch.int32)], dim=1)
    lp = dense.log_probs
    _B, T, V = lp.shape
    it = torch.int32 if lp.numel() < 2 ** 31 else torch.int64
    segs = dense.segments.to(dev).to(it)
    row = (segs[:, 0] * T + segs[:, 1]).index_select(0, seg)
    row += frame.clamp(max=T - 1).to(it)
    row *= V
    row += lab.clamp(min=0).to(it)
    lp_term = torch.where(lab >= 0, lp.reshape(-1).index_select(0, row.clamp_(max=lp.numel() - 1)),
                          torch.zeros((), dtype=lp.dtype, device=dev))
    scores = graphs.scores.index_select(0, garc) + lp_term
    lat = graphs.index_arcs(garc, arcs, splits, num_states, scores=scores)
    lat.graph_arc_idx = garc
    lat.frame_idx = frame.to(torch.int32)
    return lat


class DenseLattice(Fsa):
    """The result of :func:`intersect_dense`: an FsaVec built on first use.

    Until one of its arcs, scores or attributes is asked for, it only remembers its inputs.
    With ``output_beam=inf`` (the default), :func:`get_tot_scores` on it runs the streaming
    forward-backward and never builds the ``T x arcs`` lattice. Any other use materialises it
    (beam-pruned with ``output_beam``) and it behaves as a plain :class:`Fsa`, so the totals of
    a pruned lattice are over its kept paths, as in k2.
    """

    def __init__(self, graphs: Fsa, dense: DenseFsaVec, output_beam: float) -> None:
        object.__setattr__(self, "_lazy", (graphs, dense, output_beam))

    @property
    def is_materialized(self) -> bool:
        return self.__dict__.get("_lazy") is None

    def _materialize(self) -> None:
        lazy = self.__dict__.get("_lazy")
        if lazy is None:
            return
        lat = build_lattice(*lazy)
        self.__dict__.update(lat.__dict__)
        object.__setattr__(self, "_lazy", None)

    def __getattr__(self, name: str):
        if name.startswith("__") or self.__dict__.get("_lazy") is None:
            return Fsa.__getattr__(self, name)
        self._materialize()
        return getattr(self, name)

    def _tot_scores(self, log_semiring: bool, use_double_scores: bool):
        lazy = self.__dict__.get("_lazy")
        if lazy is None:
            return None
        graphs, dense, beam = lazy
        if beam != float("inf"):
            return None  # a pruned lattice: its totals are over the kept paths, as in k2
        return dense_tot_scores(graphs, dense, log_semiring, use_double_scores)

    def __repr__(self) -> str:
        if not self.is_materialized:
            _graphs, dense, beam = self._lazy
            return f"DenseLattice(not materialised, {dense!r}, output_beam={beam})"
        return Fsa.__repr__(self)


def intersect_dense(graphs: Fsa, dense: DenseFsaVec, output_beam: float = float("inf")
                    ) -> DenseLattice:
    """Intersect graphs with network output (k2's ``intersect_dense``).

    Args:
      graphs: an FsaVec with one graph per supervision segment, or a single graph (an Fsa or an
        FsaVec of one) shared by all segments. Every arc with a label >= 0 consumes one frame
        (label 0 is blank); arcs with label -1 end a path after the last frame.
      dense: the network output.
      output_beam: keep arcs whose best path is within this of the segment's best path. Leave
        it at ``inf`` for training: totals and gradients are then streamed frame by frame
        without building the lattice (a finite beam builds and prunes it first, as k2 does).

    Returns:
      A :class:`DenseLattice`: an FsaVec with one lattice per segment, with the graphs'
      per-arc attributes plus ``graph_arc_idx`` and ``frame_idx``. Use
      ``get_tot_scores(lattice, log_semiring=True)`` for training losses.

    Non-finite log-probs: a segment with a NaN or +inf log-prob in its frames is excluded
    (total NaN with zero gradient; empty lattice with a finite beam); the other segments'
    totals, gradients and lattices are those of the batch without it (up to rounding where the
    batch's arc layout differs), and NaN/+inf outside every segment's frames changes nothing
    (:meth:`DenseFsaVec.finite`).

    Raises:
      ValueError: a graph label >= V or < -1, or a number of graphs that is neither 1 nor the
        number of segments (checked before any computation).
    """
    from .dense_plan import _check_graphs
    _check_graphs(graphs, dense)
    return DenseLattice(graphs, dense, output_beam)
