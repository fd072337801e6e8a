"""Beam-pruned Viterbi search with back-pointers: the best path without building a lattice.

The same frame-synchronous search as :func:`~wfst_asr.fsa.intersect_dense_pruned` (same
tokens, same pruning by ``search_beam`` / ``min_active_states`` / ``max_active_states`` per
segment, tropical semiring), but each new token keeps only its best incoming arc and the index
of the token it came from, as Kaldi's decoders do. The best path of each segment is then read
back through these pointers, so no lattice is assembled, pruned or searched again: this is what
1-best decoding needs (:func:`wfst_asr.decode.one_best`).

The graph's arcs are grouped by source state once per graph (:func:`search_plan`, cached on the
graph); a frame costs a fixed number of tensor operations over the expanded arcs, none of which
loops in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dense import DenseFsaVec
from .dense_plan import _check_graphs, build_layout
from .fsa import Fsa

NEG_INF = float("-inf")
#: segment x state key spaces up to this size use a dense table per frame instead of a sort
DENSE_KEYS = 1 << 20
#: graphs with at least this many emitting arcs are searched one segment at a time
SPLIT_ARCS = 50_000


@dataclass
class SearchPlan:
    """The arcs of a graph (FsaVec) arranged for expansion; see :func:`search_plan`.

    ``first [S]`` / ``count [S]`` (int32): the emitting (label >= 0) arcs leaving each global
    state are ``arc[first[s] : first[s] + count[s]]`` (graph arc indices, in arc order), with
    their labels ``label`` (int32), global source and destination states ``src`` / ``dst``;
    ``is_final [A]`` marks the -1 arcs, and ``final_first`` / ``final_count`` / ``final_arc``
    group them by source state the same way. ``max_in``: the largest in-degree over the
    emitting arcs. Which -1 arc of a state is best depends on the scores, so that is computed
    per score vector (:class:`_Search`).
    """

    first: torch.Tensor
    count: torch.Tensor
    arc: torch.Tensor
    label: torch.Tensor
    dst: torch.Tensor
    src: torch.Tensor
    is_final: torch.Tensor
    #: the -1 arcs leaving each state: ``final_arc[final_first[s] : + final_count[s]]``
    final_first: torch.Tensor
    final_count: torch.Tensor
    final_arc: torch.Tensor
    max_in: int


def search_plan(graphs: Fsa) -> SearchPlan:
    """The :class:`SearchPlan` of ``graphs`` (an FsaVec; arcs sorted by source state), cached
    on the FsaVec while its ``arcs`` tensor is unchanged (same tensor, same version)."""
    cached = graphs._cache.get("search_plan")
    arcs = graphs.arcs
    if cached is not None and cached[0] is arcs and cached[1] == arcs._version:
        return cached[2]
    lab = graphs.labels.long()
    emit = lab >= 0
    arc = torch.nonzero(emit).squeeze(1)
    src = graphs.src_global[arc]
    states = torch.arange(graphs.num_states, device=lab.device)
    # int32 where the per-frame expansion gathers and repeats (less memory traffic)
    first = torch.searchsorted(src, states, out_int32=True)
    count = torch.searchsorted(src, states, right=True, out_int32=True) - first
    farc = torch.nonzero(~emit).squeeze(1)
    fsrc = graphs.src_global[farc]
    ffirst = torch.searchsorted(fsrc, states)
    fcount = torch.searchsorted(fsrc, states, right=True) - ffirst
    dst = graphs.dst_global[arc]
    max_in = int(torch.bincount(dst, minlength=graphs.num_states).max()) if dst.numel() else 0
    plan = SearchPlan(first, count, arc, lab[arc].to(torch.int32), dst, src, ~emit, ffirst,
                      fcount, farc, max_in)
    graphs._cache["search_plan"] = (arcs, arcs._version, plan)
    return plan


def _final_arcs(graphs: Fsa, plan: SearchPlan, scores: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score [S], arc [S])``: the best -1 arc leaving each state (ties: the lowest arc
    index), ``-inf`` / -1 where there is none."""
    S = graphs.num_states
    device = scores.device
    fin = torch.nonzero(plan.is_final).squeeze(1)
    src = graphs.src_global[fin]
    sc = scores[fin]
    best = torch.full((S,), NEG_INF, dtype=scores.dtype, device=device)
    best.scatter_reduce_(0, src, sc, "amax", include_self=True)
    win = sc == best[src]
    arc = torch.full((S,), fin.numel(), dtype=torch.int64, device=device)
    pos = torch.arange(fin.numel(), device=device)
    arc.scatter_reduce_(0, src[win], pos[win], "amin", include_self=True)
    has = arc < fin.numel()
    arc = torch.where(has, fin[arc.clamp(max=max(fin.numel() - 1, 0))] if fin.numel() else arc,
                      torch.full_like(arc, -1))
    return best, arc


class _Search:
    """What both searches (:func:`best_path_arcs`, :func:`~wfst_asr.fsa.intersect_dense_pruned`)
    share: the inputs laid out for expansion, the start tokens and the frame-by-frame
    expansion of the tokens along their emitting arcs.

    Tokens are ``(seg [K], state [K] (global), score [K] float32)``, sorted by (segment, state);
    a token's key is ``seg * S + state`` (``state`` alone when there is one segment).
    """

    def __init__(self, graph: Fsa, dense: DenseFsaVec, scores: torch.Tensor | None) -> None:
        self.graphs = graphs = _check_graphs(graph, dense)
        self.dense, bad = dense.finite()
        self.device = device = self.dense.device
        self.N = N = dense.num_segments
        self.S = S = graphs.num_states
        self.plan = plan = search_plan(graph)
        src_scores = graphs.scores if scores is None else scores
        self.gsc = src_scores.detach().to(torch.float32)
        # the per-score-vector arrays, cached on the plan for the last score vector seen
        # (kept alive by the cache, so identity and version identify its values)
        cached = plan.__dict__.get("_scored")
        if cached is not None and cached[0] is src_scores and cached[1] == src_scores._version:
            self.fin_score, self.fin_arc, self.e_score = cached[2:]
        else:
            self.fin_score, self.fin_arc = _final_arcs(graphs, plan, self.gsc)
            self.e_score = self.gsc.index_select(0, plan.arc)
            plan.__dict__["_scored"] = (src_scores, src_scores._version, self.fin_score,
                                        self.fin_arc, self.e_score)
        seg_cpu = self.dense.segments.to("cpu", torch.int64)
        self.lens = seg_cpu[:, 2]
        lp = self.dense.log_probs.detach()
        _B, T, self.V = lp.shape
        # frame t of segment n is row (seq * T + start + t) of lp_rows
        self.lp_rows = lp.reshape(-1, self.V).to(torch.float32)
        self.lp_flat = self.lp_rows.view(-1)
        self.row0_cpu = seg_cpu[:, 0] * T + seg_cpu[:, 1]
        self.row0 = self.row0_cpu.to(device)
        gi = torch.zeros(N, dtype=torch.int64, device=device) if graphs.num_fsas == 1 else \
            torch.arange(N, device=device)
        self.start = graphs.start_states[gi]
        ok = (self.start >= 0).cpu()
        if bad is not None:
            ok &= ~bad
        self.ok = ok
        self.single = N == 1
        self.K = S if self.single else N * S
        self.use_table = self.K <= DENSE_KEYS
        #: segments by the frame they end at (those that can have a path)
        self.ends: dict[int, list[int]] = {}
        for n in range(N):
            if bool(ok[n]):
                self.ends.setdefault(int(self.lens[n]), []).append(n)
        self.T_max = max(self.ends) if self.ends else 0
        self._aranges = torch.arange(max(1, int(plan.count.max()) if S else 1), device=device)
        self._aranges32 = self._aranges.to(torch.int32)

    def start_tokens(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ok = self.ok.to(self.device)
        seg = torch.arange(self.N, device=self.device)[ok]
        return seg, self.start[ok], torch.zeros(seg.numel(), dtype=torch.float32,
                                                device=self.device)

    def arange(self, n: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """``arange(n)`` from a cached buffer (int64, or int32)."""
        if n > self._aranges.numel():
            self._aranges = torch.arange(2 * n, device=self.device)
            self._aranges32 = self._aranges.to(torch.int32)
        return (self._aranges if dtype == torch.int64 else self._aranges32)[:n]

    def expand(self, t: int, tok_seg: torch.Tensor, tok_state: torch.Tensor,
               tok_score: torch.Tensor):
        """All emitting arcs leaving the tokens at frame ``t``: ``(ti [E] token, e [E] plan
        position, cand [E] score through the arc, key [E] new token, ac [E] the arcs'
        log-probs)``, or None when there is none. ``cand = score + graph score + log-prob``,
        in this order."""
        plan = self.plan
        cnt = plan.count.index_select(0, tok_state)  # int32, as ti and e below
        csum = torch.cumsum(cnt, 0, dtype=torch.int32)
        E = int(csum[-1]) if csum.numel() else 0
        if E == 0:
            return None
        base = plan.first.index_select(0, tok_state) - (csum - cnt)
        ti = torch.repeat_interleave(cnt, output_size=E)  # the token of each expanded arc
        e = base.index_select(0, ti)
        e += self.arange(E, torch.int32)
        cand = tok_score.index_select(0, ti)
        cand += self.e_score.index_select(0, e)
        lab = plan.label.index_select(0, e)
        key = plan.dst.index_select(0, e)
        if self.single:
            ac = self.lp_rows[int(self.row0_cpu[0]) + t].index_select(0, lab)
        else:
            lab = lab.long()
            lab += ((self.row0.index_select(0, tok_seg) + t) * self.V).index_select(0, ti)
            ac = self.lp_flat.index_select(0, lab)
            key += (tok_seg * self.S).index_select(0, ti)
        cand += ac
        return ti, e, cand, key, ac

    def split_key(self, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(seg, state)`` of token keys."""
        if self.single:
            return torch.zeros_like(key), key
        seg = torch.div(key, self.S, rounding_mode="floor")
        return seg, key - seg * self.S

    def prune(self, seg: torch.Tensor, score: torch.Tensor, beam: float, min_active: int,
              max_active: int) -> torch.Tensor | None:
        """Indices of the new tokens to keep (None: all); see :func:`_prune`."""
        keep = _prune(seg, score, self.N, beam, min_active, max_active, self.single)
        return None if keep is None else torch.nonzero(keep).squeeze(1)


def best_path_arcs(graph: Fsa, dense: DenseFsaVec, search_beam: float,
                   min_active_states: int, max_active_states: int,
                   scores: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The best path of each segment of ``graph x dense`` under beam pruning.

    Args:
      graph: a graph shared by all segments, or one per segment (as
        :func:`~wfst_asr.fsa.intersect_dense_pruned`). Arcs with labels >= 0 consume a frame
        (0 = blank); -1 arcs end a path.
      dense: network output.
      search_beam, min_active_states, max_active_states: the search's pruning, exactly as
        :func:`~wfst_asr.fsa.intersect_dense_pruned`.
      scores: ``[A]`` arc scores to search with instead of the graph's (e.g. scaled by an LM
        weight), so the graph's cached plan serves every scale.

    Returns:
      Per segment, int64 graph arc indices of its best path in path order (the last is the -1
      arc), or an empty tensor where the search found no complete path (and for segments
      with a NaN or +inf log-prob, :meth:`DenseFsaVec.finite`). Ties between equal totals go
      to the lowest (source token, arc) pair.
    """
    sr = _Search(graph, dense, scores)
    if sr.N and sr.graphs.num_fsas == 1 and _use_dense(sr.plan, sr.S, sr.N):
        return _dense_search(sr, search_beam, min_active_states, max_active_states)
    if sr.N > 1 and sr.graphs.num_fsas == 1 and sr.plan.arc.numel() >= SPLIT_ARCS:
        # a large graph: one segment at a time saves the batch's per-arc index arithmetic,
        # worth more than the per-frame overhead it adds (the beams are per segment anyway)
        out = []
        for n in range(sr.N):
            seg = DenseFsaVec(sr.dense.log_probs, sr.dense.segments[n:n + 1])
            ok = bool(sr.ok[n])
            out += best_path_arcs(graph, seg, search_beam, min_active_states,
                                  max_active_states, scores) if ok else [sr.fin_arc[:0]]
        return out
    tok_seg, tok_state, tok_score = sr.start_tokens()
    S = sr.S
    tok_key = tok_seg * S + tok_state
    slot = torch.zeros(sr.K, dtype=torch.int64, device=sr.device)  # key -> token index
    bp_prev: list[torch.Tensor] = []  # [t]: for each token of frame t+1, its token at frame t
    bp_arc: list[torch.Tensor] = []   # [t]: the arc it took (consuming frame t)
    finish: dict[int, tuple[int, int, int]] = {}  # see _end_segments
    fin_arc_of: dict[int, int] = {}
    for t in range(sr.T_max + 1):
        if t in sr.ends:
            keep_tok = _end_segments(t, sr.ends[t], tok_seg, tok_state, tok_score,
                                     sr.fin_score, sr.fin_arc, bp_prev, bp_arc, finish,
                                     fin_arc_of)
            tok_seg, tok_state, tok_score, tok_key = (x[keep_tok] for x in
                                                      (tok_seg, tok_state, tok_score, tok_key))
        if t == sr.T_max or tok_seg.numel() == 0:
            break
        ex = sr.expand(t, tok_seg, tok_state, tok_score)
        if ex is None:
            break
        _ti, e, cand, key, _ac = ex
        ukey, best, win = _best_per_key(key, cand, sr.K, sr.use_table)
        new_seg, new_state = sr.split_key(ukey)
        keep = sr.prune(new_seg, best, search_beam, min_active_states, max_active_states)
        if keep is not None:
            ukey, best, win, new_seg, new_state = (x.index_select(0, keep) for x in
                                                   (ukey, best, win, new_seg, new_state))
        e_win = e.index_select(0, win)
        # the token each winner came from: its (segment, source state) key's slot
        slot.index_copy_(0, tok_key, sr.arange(tok_key.numel()))
        src_key = sr.plan.src.index_select(0, e_win)
        if not sr.single:
            src_key += new_seg * S
        bp_prev.append(slot.index_select(0, src_key))
        bp_arc.append(sr.plan.arc.index_select(0, e_win))
        tok_seg, tok_state, tok_key, tok_score = new_seg, new_state, ukey, best
    return _trace(sr.N, finish, fin_arc_of, bp_prev, bp_arc, sr.device)


def _max_per_key(key: torch.Tensor, cand: torch.Tensor, num_keys: int, table: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The new tokens of a frame: ``(ukey [K] ascending, best [K], best_of [E], inv)``, the
    keys reached with a score above ``-inf``, their best score, each expanded arc's key's best,
    and each arc's position in ``ukey`` (None on the table path). Small key spaces use a dense
    table (no sort); large ones ``torch.unique`` (whose ``ukey`` may hold ``-inf`` keys)."""
    if table:
        tab = torch.full((num_keys,), NEG_INF, dtype=cand.dtype, device=cand.device)
        tab.scatter_reduce_(0, key, cand, "amax", include_self=True)
        ukey = torch.nonzero(tab > NEG_INF).squeeze(1)
        return ukey, tab.index_select(0, ukey), tab.index_select(0, key), None
    ukey, inv = torch.unique(key, return_inverse=True)
    best = torch.full((ukey.numel(),), NEG_INF, dtype=cand.dtype, device=cand.device)
    best.scatter_reduce_(0, inv, cand, "amax", include_self=True)
    return ukey, best, best.index_select(0, inv), inv


def _best_per_key(key: torch.Tensor, cand: torch.Tensor, num_keys: int, table: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ukey [K] ascending, best [K], win [K])``: :func:`_max_per_key`'s new tokens and the
    expanded arc (lowest index among equal scores) that gave each its best."""
    E = cand.numel()
    ukey, best, best_of, inv = _max_per_key(key, cand, num_keys, table)
    won = torch.nonzero(cand == best_of).squeeze(1)
    if inv is None:
        arg = torch.full((num_keys,), E, dtype=torch.int64, device=cand.device)
        arg.scatter_reduce_(0, key.index_select(0, won), won, "amin", include_self=True)
        return ukey, best, arg.index_select(0, ukey)
    arg = torch.full((ukey.numel(),), E, dtype=torch.int64, device=cand.device)
    arg.scatter_reduce_(0, inv.index_select(0, won), won, "amin", include_self=True)
    return ukey, best, arg


def _prune(seg: torch.Tensor, score: torch.Tensor, N: int, beam: float, min_active: int,
           max_active: int, single: bool) -> torch.Tensor | None:
    """Mask of the new tokens to keep (None: all), as
    :func:`~wfst_asr.fsa.pruned.intersect_dense_pruned` prunes: within ``beam`` of their
    segment's best and among its ``max_active`` best, or among its ``min_active`` best;
    never a ``-inf`` one."""
    if single:
        n_all = score.numel()
        in_beam = (score >= score.max() - beam) & torch.isfinite(score)
        n_beam = int(in_beam.sum())
        if n_beam == n_all and n_all <= max_active:
            return None
        if n_beam <= max_active and (n_beam >= min_active or n_beam == n_all):
            return in_beam
        keep = _top(score, min_active)
        keep |= in_beam & _top(score, max_active)
        return keep & torch.isfinite(score)
    return _prune_ranked(seg, score, N, beam, min_active, max_active)


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` best of ``score`` (``[K]``), ties to the lower index: the tokens of
    rank < k in a stable descending sort, found by selection (no sort)."""
    n = score.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=score.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=score.device)
    v = torch.kthvalue(score, n - k + 1).values  # the k-th largest
    mask = score > v
    need = k - int(mask.sum())
    mask[torch.nonzero(score == v).squeeze(1)[:need]] = True
    return mask


def _prune_ranked(seg: torch.Tensor, score: torch.Tensor, N: int, beam: float,
                  min_active: int, max_active: int) -> torch.Tensor:
    """Mask of tokens to keep: within ``beam`` of their segment's best and among its
    ``max_active`` best, or among its ``min_active`` best (ranks: score descending, then
    token order). ``seg`` must be sorted (tokens in (segment, state) order), so that each
    segment's tokens are a slice; only the segments where a bound binds are ranked."""
    best = torch.full((N,), NEG_INF, dtype=score.dtype, device=score.device)
    best = best.scatter_reduce(0, seg, score, "amax", include_self=True)
    fin = torch.isfinite(score)
    in_beam = (score >= best.index_select(0, seg) - beam) & fin
    n_beam = torch.bincount(seg[in_beam], minlength=N)
    n_all = torch.bincount(seg, minlength=N)
    ok = (n_beam <= max_active) & ((n_beam >= min_active) | (n_beam == n_all))
    if bool(ok.all()):
        return in_beam  # no segment needs ranks: the beam alone decides
    keep = in_beam.clone()
    ends = torch.cumsum(n_all, 0).tolist()
    counts = n_all.tolist()
    for n in torch.nonzero(~ok).squeeze(1).tolist():
        a, b = ends[n] - counts[n], ends[n]
        sc = score[a:b]
        k = _top(sc, min_active)
        k |= in_beam[a:b] & _top(sc, max_active)
        keep[a:b] = k & fin[a:b]
    return keep


def _end_segments(t: int, segs: list[int], tok_seg, tok_state, tok_score, fin_score, fin_arc,
                  bp_prev: list, bp_arc: list, finish: dict, fin_arc_of: dict):
    """Pick the best final token of each segment ending at frame ``t`` and drop their tokens
    (and their back-pointers) from the search.

    ``finish[n] = (t_last, prev, arc)``: the arc the chosen token took at frame ``t - 1`` and
    the index of the token it came from in frame ``t - 1``'s list (``t_last = t - 1``), or
    ``(-1, -1, -1)`` for a path of no frame. ``fin_arc_of[n]``: its -1 arc.
    """
    ending = torch.zeros_like(tok_seg, dtype=torch.bool)
    tot = tok_score + fin_score[tok_state]
    for n in segs:
        mine = tok_seg == n
        ending |= mine
        if not bool(mine.any()):
            continue
        tn = torch.where(mine, tot, torch.full_like(tot, NEG_INF))
        j = int(torch.argmax(tn))  # the first of equal maxima
        if not bool(torch.isfinite(tn[j])):
            continue
        fin_arc_of[n] = int(fin_arc[tok_state[j]])
        finish[n] = (-1, -1, -1) if t == 0 else (t - 1, int(bp_prev[t - 1][j]),
                                                 int(bp_arc[t - 1][j]))
    keep = ~ending
    if t > 0:
        bp_prev[t - 1] = bp_prev[t - 1][keep]
        bp_arc[t - 1] = bp_arc[t - 1][keep]
    return keep


def _trace(N: int, finish: dict, fin_arc_of: dict, bp_prev: list, bp_arc: list,
           device: torch.device) -> list[torch.Tensor]:
    """Follow the back-pointers of every finished segment to the start, all segments at once
    (one gather per frame)."""
    done = sorted(finish, key=lambda n: -finish[n][0])  # latest end first: a prefix is active
    t_last = [finish[n][0] for n in done]
    L = t_last[0] + 1 if done else 0
    mat = torch.full((len(done), L), -1, dtype=torch.int64, device=device)
    if L > 0:
        cur = torch.tensor([finish[n][1] for n in done], dtype=torch.int64, device=device)
        first = torch.tensor([finish[n][2] for n in done], dtype=torch.int64, device=device)
        k_gt = 0  # segments [0, k_gt) have t_last > t; [k_gt, k_ge) have t_last == t
        k_ge = 0
        for t in range(L - 1, -1, -1):
            while k_ge < len(done) and t_last[k_ge] >= t:
                k_ge += 1
            if k_gt:
                c = cur[:k_gt]
                mat[:k_gt, t] = bp_arc[t][c]
                cur[:k_gt] = bp_prev[t][c]
            mat[k_gt:k_ge, t] = first[k_gt:k_ge]
            k_gt = k_ge
    mat = mat.cpu()
    out = [torch.zeros(0, dtype=torch.int64) for _ in range(N)]
    for i, n in enumerate(done):
        out[n] = torch.cat([mat[i, :t_last[i] + 1], torch.tensor([fin_arc_of[n]])])
    return [o.to(device) for o in out]


# ------------------------------------------------------------------ small graphs: all states
#: the all-states search is used when N x S x max-in-degree is at most this
DENSE_CELLS = 1 << 21


def _use_dense(plan: SearchPlan, S: int, N: int) -> bool:
    """All-states search for graphs whose padded in-arc (1-best, lattice) and out-arc
    (lattice) tables are small and not much larger than the arcs themselves (e.g. a phone HLG,
    a small HCLG)."""
    if S == 0 or plan.arc.numel() == 0:
        return False
    cells = S * max(plan.max_in, int(plan.count.max()))
    return cells <= 4 * plan.arc.numel() and N * cells <= DENSE_CELLS


class PaddedArcs:
    """The emitting arcs of one shared graph grouped by destination (``by_dst``: the forward
    search) or by source state (the backward pass of the lattice), in padded buckets of states
    of similar degree (:func:`~wfst_asr.fsa.dense_plan.build_layout`, sized for ``N`` rows).

    Flat tables over the slots of all buckets (``[L]``): plan position ``pos`` (``A`` on
    padding), the arc's other end ``other`` (source when grouped by destination; 0 on
    padding), graph score ``w`` (``-inf`` on padding), label ``lab`` (0 on padding) and the
    grouped state ``state``. ``blocks``: per bucket ``(slot offset, K, n)``, slots
    ``[offset, offset + K * n)`` holding, row ``k``, the k-th arc (in arc order) of each of its
    ``n`` states. :meth:`reduce` takes a ``[N, L]`` table to each state's max ``[N, S]``.
    """

    def __init__(self, sr: _Search, by_dst: bool) -> None:
        plan, S, N = sr.plan, sr.S, sr.N
        key = ("padded_arcs", by_dst, N)
        cached = plan.__dict__.get(key)
        if cached is None:
            target = plan.dst if by_dst else plan.src
            lay = build_layout(target, S, rows=N)
            pads = [pad for (_, _, _, pad) in lay.buckets]
            pos = torch.cat(pads) if pads else target.new_zeros(0)
            at = torch.empty_like(lay.pos)  # layout position -> state
            at[lay.pos] = torch.arange(S, device=at.device)
            blocks, states, o = [], [], 0
            for (off, n, K, _pad) in lay.buckets:
                blocks.append((o, K, n))
                states.append(at[off:off + n].repeat(K))
                o += K * n
            A = plan.arc.numel()
            valid = pos < A
            safe = pos.clamp(max=max(A - 1, 0))
            other = (plan.src if by_dst else plan.dst).index_select(0, safe) * valid
            lab = plan.label.index_select(0, safe) * valid
            state = torch.cat(states) if states else pos
            # natural state -> column of the reduced table ([N, num_rows] + -inf columns)
            cached = (pos, valid, safe, other, lab, state, blocks, lay.pos, lay.num_rows)
            plan.__dict__[key] = cached
        (self.pos, self.valid, safe, self.other, self.lab, self.state, self.blocks,
         self.col, self.num_rows) = cached
        self.w = torch.where(self.valid, sr.e_score.index_select(0, safe),
                             torch.full_like(self.valid, NEG_INF, dtype=torch.float32))
        self.N, self.S = N, S
        # one bucket of every state in natural order: the slots are a [K, S] table
        self.K_one = self.blocks[0][1] if len(self.blocks) == 1 and self.blocks[0][2] == S \
            and bool((self.col == torch.arange(S, device=self.col.device)).all()) else 0

    def reduce(self, x: torch.Tensor, out: torch.Tensor, arg: torch.Tensor | None = None
               ) -> None:
        """``x [N, L]`` -> ``out [N, S]``: each state's max over its slots (``-inf`` for states
        without arcs) and, given ``arg [N, S]`` (int64), the rank of the arc that gave it (the
        first of equal maxima)."""
        N = self.N
        if self.K_one:
            xb = x.view(N, self.K_one, self.S)
            if arg is not None:
                torch.max(xb, dim=1, out=(out, arg))
            else:
                torch.amax(xb, dim=1, out=out)
            return
        vals, args = [], []
        for (o, K, n) in self.blocks:
            xb = x[:, o:o + K * n].view(N, K, n)
            if arg is not None:
                v, k = xb.max(dim=1)
                args.append(k)
            else:
                v = xb.amax(dim=1)
            vals.append(v)
        pad = self.S - self.num_rows
        if pad:
            vals.append(x.new_full((N, pad), NEG_INF))
            if arg is not None:
                args.append(torch.zeros((N, pad), dtype=torch.int64, device=x.device))
        torch.index_select(torch.cat(vals, 1), 1, self.col, out=out)
        if arg is not None:
            torch.index_select(torch.cat(args, 1), 1, self.col, out=arg)

    def ge(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` mask of ``x [N, L] >= y [N, S]`` at each slot's state."""
        if self.K_one:
            return (x.view(self.N, self.K_one, self.S) >= y.unsqueeze(1)).view(self.N, -1)
        return x >= y.index_select(1, self.state)

    def slot_of(self) -> torch.Tensor:
        """int64 ``[S, K_max]``: the slot of the k-th arc of each state (-1: none; padding
        slots of its bucket where it has fewer arcs)."""
        K_max = max((K for (_o, K, _n) in self.blocks), default=1)
        table = torch.full((self.S, K_max), -1, dtype=torch.int64, device=self.pos.device)
        for (o, K, n) in self.blocks:
            slots = torch.arange(o, o + K * n, device=self.pos.device).view(K, n)
            states = self.state[o:o + n]  # (row 0's slots: every state of the bucket once)
            table[states, :K] = slots.t()
        return table


class _AllStates:
    """What the all-states search needs of one shared graph: its in-arcs in padded buckets
    (:class:`PaddedArcs`) and the rows of the log-probs each segment reads."""

    def __init__(self, sr: _Search) -> None:
        self.sr = sr
        self.arcs = PaddedArcs(sr, by_dst=True)
        # frame t of segment n reads row rows[t, n] (its last frame once it has ended)
        lens, row0 = sr.lens, sr.row0_cpu
        tt = torch.arange(max(sr.T_max, 1)).unsqueeze(1)
        self.rows = torch.minimum(row0 + tt, row0 + (lens - 1).clamp(min=0)).to(sr.device)
        self.acoustic = PaddedLogProbs(sr, self.rows, self.arcs.lab)

    def start_scores(self) -> torch.Tensor:
        sr = self.sr
        score = torch.full((sr.N, sr.S), NEG_INF, dtype=torch.float32, device=sr.device)
        start = int(sr.graphs.start_states[0])
        if start >= 0:
            score[sr.ok.to(sr.device), start] = 0.0
        return score


class PaddedLogProbs:
    """The log-probs of a padded arc table's labels, frame by frame: ``self(t)`` is
    ``[N, L]`` (``lab [L]``; segment ``n`` reads row ``rows[t, n]`` of the log-probs), plus
    ``add [L]`` when given; gathered for several frames at a time."""

    def __init__(self, sr: _Search, rows: torch.Tensor, lab: torch.Tensor,
                 add: torch.Tensor | None = None) -> None:
        self.sr, self.rows, self.lab, self.add = sr, rows, lab, add
        self.chunk = max(1, min(64, (1 << 20) // max(1, sr.N * lab.numel())))
        self._ac = sr.lp_rows.new_empty(0)
        self._t0 = -1

    def __call__(self, t: int) -> torch.Tensor:
        t0 = t - t % self.chunk
        if t0 != self._t0:
            sr = self.sr
            r = self.rows[t0:t0 + self.chunk].reshape(-1)
            self._ac = sr.lp_rows.index_select(0, r).index_select(1, self.lab) \
                .view(-1, sr.N, self.lab.numel())
            if self.add is not None:
                self._ac += self.add
            self._t0 = t0
        return self._ac[t - t0]


def _dense_search(sr: _Search, beam: float, min_active: int, max_active: int
                  ) -> list[torch.Tensor]:
    """The search of :func:`best_path_arcs` over all states of one shared graph at once
    (:func:`dense_forward`), read back through each state's best in-arc per frame."""
    al = _AllStates(sr)
    tokens, steps = dense_forward(sr, al, beam, min_active, max_active, with_arg=True)
    result: dict[int, int] = {}  # segment -> its best final state at its last frame
    for t, segs in sr.ends.items():
        for n in segs:
            tot = tokens[t][n] + sr.fin_score
            j = int(torch.argmax(tot))  # the first of equal maxima
            if bool(torch.isfinite(tot[j])):
                result[n] = j
    return _dense_trace(sr, result, steps, al.arcs)


def dense_forward(sr: _Search, al: _AllStates, beam: float, min_active: int, max_active: int,
                  with_arg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The frame-synchronous search over all states of one shared graph: scores ``[N, S]``
    (``-inf``: no token), each state's best incoming arc by a max over its padded in-arcs. The
    tokens, pruning and tie-breaking are those of the sparse search.

    Returns ``(tokens, steps)``: ``tokens [T_max + 1, N, S]`` the float32 scores of the tokens
    of each frame after pruning (rows of segments that ended before the frame: ``-inf``);
    ``steps [T_max, N, S]`` (``with_arg``, else None) the rank of each state's best in-arc
    consuming the frame among its in-arcs.
    """
    N, S, arcs, device = sr.N, sr.S, al.arcs, sr.device
    other, w, ends, T_max = arcs.other, arcs.w, sr.ends, sr.T_max
    tokens = torch.empty((T_max + 1, N, S), dtype=torch.float32, device=device)
    tokens[0] = al.start_scores()
    steps = torch.empty((T_max, N, S), dtype=torch.int64, device=device) if with_arg else None
    cand = torch.empty((N, other.numel()), dtype=torch.float32, device=device)
    one = N == 1 and S <= max_active  # then pruning is one threshold in the common case
    # per-frame views made once, and the one-bucket reduction inlined: on a small graph a
    # frame's few tensor operations cost about what Python spends around them
    tok_v = tokens.unbind(0)
    step_v = steps.unbind(0) if with_arg else None
    acoustic = al.acoustic
    cand_k = cand.view(N, arcs.K_one, S) if arcs.K_one else None
    for t in range(T_max):
        score = tok_v[t]
        if t in ends:
            score = score.clone()
            score[ends[t]] = NEG_INF
        # (token + graph) + acoustic: the sparse search's order of float32 additions
        torch.index_select(score, 1, other, out=cand)
        cand += w
        cand += acoustic(t)
        best = tok_v[t + 1]
        if cand_k is None:
            arcs.reduce(cand, best, step_v[t] if with_arg else None)
        elif with_arg:
            torch.max(cand_k, dim=1, out=(best, step_v[t]))
        else:
            torch.amax(cand_k, dim=1, out=best)
        if one:
            thr = float(best.max()) - beam
            out = best < thr
            if S - int(out.sum()) >= min_active or thr == NEG_INF:
                best.masked_fill_(out, NEG_INF)
                continue
        _dense_prune(best, beam, min_active, max_active)
    return tokens, steps


def _dense_prune(score: torch.Tensor, beam: float, min_active: int, max_active: int
                 ) -> torch.Tensor:
    """``score [N, S]`` with the pruned tokens set to ``-inf`` (in place): :func:`_prune`'s
    rule per row of an all-states score table."""
    thr = score.max(dim=1, keepdim=True).values - beam
    out = score < thr
    n_beam = out.shape[1] - out.sum(1)  # in beam (a row without tokens: all of it, all -inf)
    if out.shape[1] <= max_active:
        fast = int(n_beam.min()) >= min_active
    else:
        lo, hi = torch.aminmax(n_beam)
        fast = int(lo) >= min_active and int(hi) <= max_active
    if fast:
        return score.masked_fill_(out, NEG_INF)
    fin = torch.isfinite(score)
    in_beam = ~out & fin
    n_beam = in_beam.sum(1)
    if bool(((n_beam <= max_active) & ((n_beam >= min_active) | (n_beam == fin.sum(1)))).all()):
        return score.masked_fill_(~in_beam, NEG_INF)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    keep = ((in_beam & (rank < max_active)) | (rank < min_active)) & fin
    return score.masked_fill_(~keep, NEG_INF)


def _dense_trace(sr: _Search, result: dict, steps: torch.Tensor, arcs: PaddedArcs
                 ) -> list[torch.Tensor]:
    """Read each segment's best path back through the per-frame in-arc choices (on the CPU:
    one copy of the choices, then a scalar walk per frame)."""
    N, lens, device, plan, fin_arc = sr.N, sr.lens, sr.device, sr.plan, sr.fin_arc
    out = [torch.zeros(0, dtype=torch.int64, device=device) for _ in range(N)]
    if not result:
        return out
    T = int(max(int(lens[n]) for n in result))
    choice = steps[:T].cpu().numpy() if T else None  # [T, N, S]
    slot_np = arcs.slot_of().cpu().numpy()
    pos_np = arcs.pos.cpu().numpy()
    arc_np = plan.arc.cpu().numpy()
    src_np = plan.src.cpu().numpy()
    fin_np = fin_arc.cpu().numpy()
    for n, s in result.items():
        path = [int(fin_np[s])]
        for t in range(int(lens[n]) - 1, -1, -1):
            e = pos_np[slot_np[s, choice[t, n, s]]]
            path.append(int(arc_np[e]))
            s = src_np[e]
        out[n] = torch.tensor(path[::-1], dtype=torch.int64, device=device)
    return out
