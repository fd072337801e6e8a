"""Index layout for frame-synchronous sweeps of graphs over a DenseFsaVec.

The graph of every segment (its own graph, or one shared graph) is copied into one flat state
space of ``S`` states. Graph arcs with a label >= 0 consume one frame each ("frame arcs"), arcs
with label -1 consume the virtual frame after the last one ("final arcs").

For the recursion ``alpha_{t+1}[d] = (+)_{a: s->d} alpha_t[s] + score_t[a]`` the entering arcs of
each state are laid out as padded ``[K, S_b]`` blocks ("buckets" of states with similar
in-degree), so one frame costs a gather, an add and a K-way semiring reduction per bucket,
instead of scatter operations. The backward recursion uses the same layout built on leaving
arcs. Each layout numbers the states in its own order (``pos``). Score rows have ``S + 1``
entries: the last is a sink that stays -inf and absorbs the padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .dense import DenseFsaVec
from .fsa import Fsa

# A bucket of padded arcs costs about this many elements' worth of work in fixed overhead;
# used to decide when splitting states by degree pays off.
_BUCKET_OVERHEAD = 16384


@dataclass
class Layout:
    """Padded arc layout over states grouped by degree.

    Attributes:
      pos: int64 ``[S]`` position of each state in this layout's order.
      buckets: ``(offset, num_states, K, pad_arc [K * num_states])`` per bucket: the states at
        positions ``offset .. offset+num_states-1`` and, row k, the k-th arc of each
        (``A`` = the dummy arc, score -inf); K is the largest degree in the bucket.
      num_rows: number of states that have at least one arc (the rest stay -inf).
    """

    pos: torch.Tensor
    buckets: list[tuple[int, int, int, torch.Tensor]]
    num_rows: int


# Degree classes for the bucket choice: exact degrees up to this many distinct values, else
# a geometric grid (ratio 1.25) of them.
_MAX_CLASSES = 64


def _choose_caps(deg: torch.Tensor, rows: int = 1) -> list[int]:
    """Bucket caps (the K of each bucket, increasing) for states of degrees ``deg`` (> 0): the
    partition of the degree classes into contiguous ranges that minimises the padded work,
    ``sum over buckets of (_BUCKET_OVERHEAD + rows * K * states)`` (dynamic programming;
    ``rows``: how many score rows each padded slot is computed for)."""
    vals, cnts = torch.unique(deg, return_counts=True)
    if vals.numel() > _MAX_CLASSES:  # round degrees up to a geometric grid
        k = torch.ceil(torch.log(vals.double()) / math.log(1.25))
        grid = torch.maximum(torch.ceil(1.25 ** k), vals.double()).long()
        grid = torch.minimum(grid, vals.max())
        vals, inv = torch.unique(grid, return_inverse=True)
        cnts = torch.zeros(vals.numel(), dtype=torch.int64).index_add_(0, inv, cnts)
    v, c = vals.tolist(), cnts.tolist()
    D = len(v)
    best = [0.0] + [math.inf] * D  # best[j]: cost of classes 0..j-1
    arg = [0] * (D + 1)
    for j in range(1, D + 1):
        n = 0
        for i in range(j, 0, -1):  # last bucket: classes i-1 .. j-1, cap v[j-1]
            n += c[i - 1]
            cost = best[i - 1] + _BUCKET_OVERHEAD + rows * v[j - 1] * n
            if cost < best[j]:
                best[j], arg[j] = cost, i - 1
    caps, j = [], D
    while j > 0:
        caps.append(v[j - 1])
        j = arg[j]
    return caps[::-1]


def build_layout(target: torch.Tensor, num_states: int, rows: int = 1) -> Layout:
    """Layout of arcs grouped by ``target`` state (dst for forward, src for backward); ``rows``
    as :func:`_choose_caps`."""
    device = target.device
    A = target.numel()
    deg = torch.bincount(target, minlength=num_states)
    pos_deg = deg[deg > 0]
    caps = _choose_caps(pos_deg.cpu(), rows) if pos_deg.numel() else []
    # bucket index of each state: first cap >= deg
    caps_t = torch.tensor(caps, dtype=torch.int64, device=device)
    bucket = torch.searchsorted(caps_t, deg) if caps else torch.zeros_like(deg)
    # States without arcs normally sit after the buckets (never computed, stay -inf); when they
    # are few, they join the last bucket as all-padding columns instead, which keeps a single
    # bucket in natural state order (the same in both directions, so no re-ordering later).
    n_zero = int((deg == 0).sum())
    absorb = bool(caps) and n_zero * caps[-1] <= max(64, A // 20)
    bucket = torch.where(deg > 0, bucket,
                         torch.full_like(bucket, len(caps) - 1 if absorb else len(caps)))
    order = torch.argsort(bucket, stable=True)
    pos = torch.empty_like(order)
    pos[order] = torch.arange(num_states, device=device)
    sizes = torch.bincount(bucket, minlength=len(caps) + 1).tolist()
    # rank of each arc among the arcs of its target state
    arc_order = torch.argsort(pos[target], stable=True)
    tsorted = pos[target][arc_order]
    first = torch.searchsorted(tsorted, tsorted)
    k_of = torch.empty(A, dtype=torch.int64, device=device)
    k_of[arc_order] = torch.arange(A, device=device) - first
    buckets = []
    off = 0
    for b, K in enumerate(caps):
        n = sizes[b]
        in_b = (pos[target] >= off) & (pos[target] < off + n)
        arcs_b = in_b.nonzero().squeeze(1)
        K = max(1, int(deg[order[off:off + n]].max()))
        pad = torch.full((K, n), A, dtype=torch.int64, device=device)
        pad[k_of[arcs_b], pos[target[arcs_b]] - off] = arcs_b
        buckets.append((off, n, K, pad.reshape(-1)))
        off += n
    return Layout(pos, buckets, off)


@dataclass
class Sweep:
    """One direction of the recursion: a layout plus, per bucket, what a frame needs.

    ``other[b]``: ``[K*n]`` positions (in the *other end's* order) of each padded arc's source
    (forward) or destination (backward); ``lp_base[b]``: ``[K*n]`` flat log-prob index of each
    padded arc at frame 0 (add ``t * V``); ``garc[b]``: ``[K*n]`` index into the frame-arc graph
    scores extended by one -inf entry for padding.
    """

    layout: Layout
    other: list[torch.Tensor]
    lp_base: list[torch.Tensor]
    garc: list[torch.Tensor]
    s_base: torch.Tensor = None  # [S+1] in this order: flat log-prob index of the state's label


@dataclass
class DensePlan:
    """Everything a sweep needs about (graphs x segments); built once per call.

    Frame arcs (label >= 0), flat over segments: ``f_src``, ``f_dst`` (flat states), ``f_label``,
    ``f_seg``, ``f_garc`` (graph arc index), ``f_base`` (flat index of (seq, start, label) into
    ``log_probs.view(-1)``), ``f_len`` (frames of the arc's segment).
    Final arcs (label -1): ``e_src``, ``e_seg``, ``e_garc``.
    """

    num_segments: int
    num_states: int
    T_max: int
    T: int
    V: int
    lens: torch.Tensor  # [N] int64, on device
    seg_start_state: torch.Tensor  # [N] flat index of each segment's start state, -1 if empty
    f_src: torch.Tensor
    f_dst: torch.Tensor
    f_label: torch.Tensor
    f_seg: torch.Tensor
    f_garc: torch.Tensor
    f_base: torch.Tensor
    f_len: torch.Tensor
    f_seq: torch.Tensor
    f_start: torch.Tensor
    e_src: torch.Tensor
    e_seg: torch.Tensor
    e_garc: torch.Tensor
    fwd: Sweep
    bwd: Sweep
    end_groups: list[tuple[int, torch.Tensor]]  # (t, bwd positions of states of segments ending)
    lp_pad: int  # zeros to append to the flat log-probs so every index is in range
    # State-level view, used when all frame arcs entering a state share one label (CTC, HMM):
    # then frame posteriors per state give the log-prob gradient with [T, S] work, not [T, A].
    state_label_ok: bool
    b2f: torch.Tensor | None  # [S] fwd position of the state at each bwd position (None: same)
    s_base: torch.Tensor  # [S] (bwd order) flat log-prob index of (seq, start, label); label
    # 0 for a state without entering frame arcs
    s_len: torch.Tensor  # [S] (bwd order) frames of the state's segment; 0 if no entering arc
    state_seg_bwd: torch.Tensor  # [S] (bwd order) segment of each state
    cache: dict = field(default_factory=dict)  # derived index tensors, built on first use
    seg_num_states: torch.Tensor | None = None  # [N] states of each segment's graph copy


def _check_graphs(graphs: Fsa, dense: DenseFsaVec) -> Fsa:
    if not isinstance(graphs, Fsa):
        raise TypeError(f"graphs must be an Fsa/FsaVec, got {type(graphs).__name__}")
    graphs = graphs.as_vec()
    N = dense.num_segments
    if graphs.num_fsas not in (1, N):
        raise ValueError(f"got {graphs.num_fsas} graphs for {N} supervision segments; give one "
                         f"graph per segment or a single shared graph")
    if graphs.device != dense.device:
        raise ValueError(f"graphs are on {graphs.device} but log_probs on {dense.device}")
    if graphs.num_arcs:
        lab = graphs.labels
        V = dense.num_labels
        bad = (lab >= V) | (lab < -1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            f = int(graphs.arc_fsa[i])
            raise ValueError(f"graph {f}, arc {i - int(graphs.arc_splits[f])}: label "
                             f"{int(lab[i])} is outside the network output range [0, {V}) "
                             f"(and is not -1)")
    return graphs


def build_plan(graphs: Fsa, dense: DenseFsaVec, seg_ids: torch.Tensor | None = None
               ) -> tuple[DensePlan, Fsa]:
    """Flatten ``graphs`` over the segments of ``dense`` (see module doc).

    With ``seg_ids``, only those segments (renumbered 0..len-1 in the plan); graph arc indices
    still refer to the whole ``graphs``.
    """
    graphs = _check_graphs(graphs, dense)
    device = dense.device
    all_n = dense.num_segments
    if seg_ids is None:
        seg_ids = torch.arange(all_n)
    seg = dense.segments[seg_ids].to(device)
    N = seg.shape[0]
    B, T, V = dense.log_probs.shape
    shared = graphs.num_fsas == 1 and all_n != 1
    gi = torch.zeros(N, dtype=torch.int64, device=device) if shared else seg_ids.to(device)
    ns = graphs.num_states_per_fsa[gi]
    st_off = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), ns.cumsum(0)])
    S = int(st_off[-1])
    na = (graphs.arc_splits[1:] - graphs.arc_splits[:-1])[gi]
    A_all = int(na.sum())
    arc_seg = torch.repeat_interleave(torch.arange(N, device=device), na, output_size=A_all)
    first = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), na.cumsum(0)])[:-1]
    garc = graphs.arc_splits[gi][arc_seg] + torch.arange(A_all, device=device) - first[arc_seg]
    g_arcs = graphs.arcs[garc].long()
    src = g_arcs[:, 0] + st_off[arc_seg]
    dst = g_arcs[:, 1] + st_off[arc_seg]
    lab = g_arcs[:, 2]
    is_f = lab >= 0
    fi = is_f.nonzero().squeeze(1)
    ei = (~is_f).nonzero().squeeze(1)
    f_seg = arc_seg[fi]
    seq, start, lens = seg[:, 0], seg[:, 1], seg[:, 2]
    f_src, f_dst, f_lab = src[fi], dst[fi], lab[fi]
    seg_base = (seq * T + start) * V  # flat index of (seq, start, label 0) of each segment
    f_base = seg_base[f_seg] + f_lab
    state_seg = torch.repeat_interleave(torch.arange(N, device=device), ns, output_size=S)
    # Every log-prob a sweep reads belongs to the segment of the state it is read for: the
    # padding of a state's arcs and a state without entering arcs read (at -inf) label 0 of
    # their own segment's frames, never another sequence's (a NaN there would reach them all).
    state_base = seg_base[state_seg]
    fwd = _sweep(build_layout(f_dst, S), f_base, state_base)
    fwd_l = fwd.layout
    bwd = _sweep(build_layout(f_src, S), f_base, state_base)
    _fix_other(fwd, f_src, fwd_l.pos)
    _fix_other(bwd, f_dst, bwd.layout.pos)
    lens_list = lens.tolist()
    T_max = max(lens_list) if lens_list else 0
    end_groups = []
    for t in sorted(set(lens_list)):
        mask = (lens == t)[state_seg]
        end_groups.append((t, bwd.layout.pos[mask.nonzero().squeeze(1)]))
    top = (max(int(f_base.max()) if fi.numel() else 0, int(seg_base.max()) if N else 0)
           + (T_max - 1) * V + 1 if T_max else 0)
    # state-level labels
    s_lab = torch.full((S,), -1, dtype=torch.int64, device=device)
    s_lab[f_dst] = f_lab
    ok = bool((s_lab[f_dst] == f_lab).all())
    s_seg = state_seg
    has_in = s_lab >= 0
    s_base = state_base + s_lab.clamp(min=0)
    s_len = torch.where(has_in, lens[s_seg], torch.zeros_like(s_lab))
    bwd_order = torch.empty_like(bwd.layout.pos)
    bwd_order[bwd.layout.pos] = torch.arange(S, device=device)
    fwd_order = torch.empty_like(fwd_l.pos)
    fwd_order[fwd_l.pos] = torch.arange(S, device=device)
    zero = torch.zeros(1, dtype=torch.int64, device=device)  # the sink column
    fwd.s_base = torch.cat([s_base[fwd_order], zero])  # the sink's entry is zeroed per chunk
    bwd.s_base = torch.cat([s_base[bwd_order], zero])
    plan = DensePlan(
        num_segments=N, num_states=S, T_max=T_max, T=T, V=V, lens=lens,
        seg_start_state=torch.where(ns > 0, st_off[:-1], torch.full_like(ns, -1)),
        f_src=f_src, f_dst=f_dst, f_label=f_lab, f_seg=f_seg, f_garc=garc[fi], f_base=f_base,
        f_len=lens[f_seg], f_seq=seq[f_seg], f_start=start[f_seg], e_src=src[ei],
        e_seg=arc_seg[ei], e_garc=garc[ei], fwd=fwd, bwd=bwd, end_groups=end_groups,
        lp_pad=max(0, top - B * T * V), state_label_ok=ok,
        b2f=None if torch.equal(fwd_l.pos, bwd.layout.pos) else fwd_l.pos[bwd_order],
        s_base=s_base[bwd_order], s_len=s_len[bwd_order], state_seg_bwd=state_seg[bwd_order],
        seg_num_states=ns)
    return plan, graphs


def _sweep(layout: Layout, f_base: torch.Tensor, state_base: torch.Tensor) -> Sweep:
    """Per-bucket index tensors of a layout (``other`` is filled by :func:`_fix_other`).

    A padding slot reads label 0 of its state's own segment (``state_base``, per state)."""
    A = f_base.numel()
    base_ext = torch.cat([f_base, f_base.new_zeros(1)])
    by_pos = torch.empty_like(state_base)
    by_pos[layout.pos] = state_base
    garc = [pad for (_, _, _, pad) in layout.buckets]
    lp_base = [torch.where(pad == A, by_pos[off:off + n].repeat(K), base_ext[pad])
               for (off, n, K, pad) in layout.buckets]
    return Sweep(layout, [], lp_base, garc)


def _fix_other(sw: Sweep, other_end: torch.Tensor, pos_other: torch.Tensor) -> None:
    """Fill ``sw.other``: position of each padded arc's other end, in ``pos_other``'s order.

    Padding points at position ``S``, a "sink" column of the score rows that is always -inf,
    so padding needs no score of its own.
    """
    sink = torch.full((1,), pos_other.numel(), dtype=torch.int64, device=other_end.device)
    ext = torch.cat([pos_other[other_end], sink])
    sw.other = [ext[pad] for pad in sw.garc]


@dataclass
class LeakLayout:
    """Index tensors of the leaky-HMM step (:mod:`._frames`) of a plan.

    ``f_idx [N, M]``: fwd positions of each segment's states but its final one (padding: the
    sink ``S``); ``f_start``, ``b_start`` ``[N]``: fwd / bwd position of each segment's start
    state (the sink for an empty graph); ``b_seg [S+1]``: segment of the state at each bwd
    position, ``N`` for final states and the sink (they get no leaky term, as in
    ``add_leaky_arcs``); ``b_start_ok``: the segments with a start state.
    """

    f_idx: torch.Tensor
    f_start: torch.Tensor
    b_start: torch.Tensor
    b_seg: torch.Tensor
    b_start_ok: torch.Tensor


def leak_layout(plan: DensePlan) -> LeakLayout:
    """The :class:`LeakLayout` of ``plan``, cached in ``plan.cache``."""
    if "leak" in plan.cache:
        return plan.cache["leak"]
    S, N = plan.num_states, plan.num_segments
    ns = plan.seg_num_states
    dev = plan.lens.device
    off = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), ns.cumsum(0)])[:-1]
    fpos = torch.cat([plan.fwd.layout.pos, torch.full((1,), S, dtype=torch.int64, device=dev)])
    bpos = torch.cat([plan.bwd.layout.pos, torch.full((1,), S, dtype=torch.int64, device=dev)])
    M = max(1, int(ns.max()) - 1) if N else 1
    j = torch.arange(M, device=dev)
    flat = torch.where(j.unsqueeze(0) < (ns - 1).unsqueeze(1), off.unsqueeze(1) + j, S)
    ok = ns > 0
    start = torch.where(ok, off, torch.full_like(off, S))
    state_seg = torch.repeat_interleave(torch.arange(N, device=dev), ns, output_size=S)
    nonfinal = torch.ones(S, dtype=torch.bool, device=dev)
    nonfinal[(off + ns - 1)[ok]] = False
    b_seg = torch.full((S + 1,), N, dtype=torch.int64, device=dev)
    b_seg[plan.bwd.layout.pos[nonfinal]] = state_seg[nonfinal]
    lk = LeakLayout(fpos[flat], fpos[start], bpos[start], b_seg, ok)
    plan.cache["leak"] = lk
    return lk


def chunk_frames(plan: DensePlan, budget: int = 1 << 20) -> int:
    """Frames per chunk so that a chunk's ``[C, A]`` score block stays near ``budget`` items."""
    A = max(1, plan.f_src.numel())
    return max(1, min(max(1, plan.T_max), budget // A))


def frame_arc_index(plan: DensePlan, t0: int, t1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into the (padded) flat log-probs for frames ``t0..t1-1`` of every frame arc.

    Returns ``(idx [C, A], valid [C, A])``; ``valid`` is False for frames past a segment's end
    (their index points at some other, unused, value).
    """
    t = torch.arange(t0, t1, device=plan.f_src.device).unsqueeze(1)
    valid = t < plan.f_len.unsqueeze(0)
    idx = plan.f_base.unsqueeze(0) + t * plan.V
    return idx, valid
