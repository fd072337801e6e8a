"""intersect_dense (+ get_tot_scores) vs brute-force enumeration of the intersection's paths.

Graphs have cycles, self-loops and parallel arcs; every arc with label >= 0 consumes one frame
(label 0 = blank), the -1 arc one virtual frame after the segment. Expected values come from
tests/reference.py only.
"""

from __future__ import annotations

import pytest
import torch

try:
    from tests import reference as ref
except ImportError:  # pragma: no cover - run from inside tests/
    import reference as ref

from wfst_asr.fsa import DenseFsaVec, Fsa, create_fsa_vec

INF = ref.INF
DTYPES = [torch.float32, torch.float64]
_tol = ref.tol


def _api():
    from wfst_asr.fsa import get_tot_scores, intersect_dense
    return intersect_dense, get_tot_scores


class Case:
    """A random problem: log_probs [B, T, V], segments, graphs (shared or one per segment)."""

    def __init__(self, seed: int, shared: bool, dtype=torch.float32, B: int = 2, T: int = 5,
                 V: int = 3, num_segments: int = 4, graph_states: int = 4,
                 normalized: bool = True, all_feasible: bool = True):
        gen = torch.Generator().manual_seed(seed)
        self.dtype, self.shared, self.V = dtype, shared, V
        self.log_probs = ref.random_log_probs(gen, B, T, V, dtype, normalized=normalized)
        segs = []
        for i in range(num_segments):
            seq = i % B
            n = ref._randint(gen, 1, T + 1)
            start = ref._randint(gen, 0, T - n + 1)
            segs.append((seq, start, n))
        self.segments = torch.tensor(segs, dtype=torch.int32)
        # all_feasible: draw each graph again (up to 50 times) until every segment using it
        # has a path; otherwise some segments may be infeasible (total -inf)
        owners = [list(range(num_segments))] if shared else [[i] for i in range(num_segments)]
        self.graph_list = []
        for segs_of_graph in owners:
            for _ in range(50):
                g = ref.random_dense_graph(gen, num_states=ref._randint(gen, 3, graph_states + 1),
                                           num_labels=V, arc_prob=0.7, dtype=dtype)
                if not all_feasible or all(
                        ref.enumerate_dense_paths(g, self._lp(i)) for i in segs_of_graph):
                    break
            self.graph_list.append(g)
        self.graphs = self.graph_list[0] if shared else create_fsa_vec(self.graph_list)
        self.graph_refs = ref.split_fsas(self.graphs, attrs=["aux_labels"])
        feasible = [bool(self.paths(i)) for i in range(num_segments)]
        assert any(feasible), "degenerate case: no segment has a path"
        assert not all_feasible or all(feasible)

    def _lp(self, i: int) -> torch.Tensor:
        seq, start, n = self.segments[i].tolist()
        return self.log_probs[seq, start:start + n].detach()

    def graph_of(self, i: int) -> ref.RefFsa:
        return self.graph_refs[0 if self.shared else i]

    def paths(self, i: int):
        return ref.enumerate_dense_paths(self.graph_of(i), self._lp(i))

    def dense(self, device, log_probs=None):
        lp = self.log_probs if log_probs is None else log_probs
        return DenseFsaVec(lp.to(device), self.segments)


def _lattice_paths(lat_ref: ref.RefFsa):
    """Paths of one lattice FSA as {graph-arc tuple: (score, frames, labels, aux)}."""
    out = {}
    for arcs, score in ref.enumerate_paths(lat_ref):
        gidx = tuple(int(lat_ref.attrs["graph_arc_idx"][a]) for a in arcs)
        frames = [int(lat_ref.attrs["frame_idx"][a]) for a in arcs]
        labels = [lat_ref.arcs[a][2] for a in arcs]
        aux = [int(lat_ref.attrs["aux_labels"][a]) for a in arcs]
        assert gidx not in out, f"two lattice paths for the graph path {gidx}"
        out[gidx] = (score, frames, labels, aux)
    return out


# ----------------------------------------------------------------------------- reference sanity
def test_reference_dense_enumeration_vs_linear_graph():
    """A linear graph a b -1 has one path through 2 frames: an explicit sum."""
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]], dtype=torch.float64)
    g = Fsa(torch.tensor([[0, 1, 2], [1, 2, 1], [2, 3, -1]], dtype=torch.int32),
            torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    paths = ref.enumerate_dense_paths(g, lp)
    assert len(paths) == 1
    assert paths[0][1] == pytest.approx(0.1 + 0.2 + 0.3 - 3.0 - 1.5)
    assert ref.enumerate_dense_paths(g, lp[:1]) == []


def test_reference_dense_self_loop_closed_form():
    """One state with self-loops on every label and a -1 arc: total = sum_t logsumexp(lp[t] +
    loop scores) + final score."""
    gen = torch.Generator().manual_seed(1)
    V, n = 3, 4
    loop = [ref._randn(gen) for _ in range(V)]
    rows = [(0, 0, v, loop[v]) for v in range(V)] + [(0, 1, -1, 0.7)]
    g = Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
            torch.tensor([r[3] for r in rows], dtype=torch.float64))
    lp = ref.random_log_probs(gen, 1, n, V, torch.float64)[0]
    paths = ref.enumerate_dense_paths(g, lp)
    assert len(paths) == V ** n
    expect = 0.7 + sum(ref.logsumexp([lp[t, v].item() + loop[v] for v in range(V)])
                       for t in range(n))
    assert ref.total(paths) == pytest.approx(expect, abs=1e-12)
    post = ref.dense_frame_posteriors(g, paths, n, V)
    for t in range(n):
        assert sum(post[t]) == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- totals
def _materialize(lat):
    """Touch the lattice's arcs (a lazily built lattice must then give the same results)."""
    assert lat.arcs.shape[1] == 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_semiring", [True, False])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tot_scores(device, dtype, log_semiring, shared, seed):
    intersect_dense, get_tot_scores = _api()
    c = Case(seed, shared, dtype, all_feasible=(shared or seed != 0))
    expected = [ref.total(c.paths(i), log_semiring) for i in range(len(c.segments))]
    lat = intersect_dense(c.graphs.to(device), c.dense(device))
    if seed == 1:
        _materialize(lat)
    assert lat.num_fsas == len(c.segments)
    tot = get_tot_scores(lat, log_semiring=log_semiring,
                         use_double_scores=(dtype == torch.float64))
    assert not torch.isnan(tot).any()
    torch.testing.assert_close(tot.cpu().double(), torch.tensor(expected, dtype=torch.float64),
                               **_tol(dtype))


def test_shared_graph_as_fsavec_of_one(device):
    intersect_dense, get_tot_scores = _api()
    c = Case(3, shared=True)
    expected = [ref.total(c.paths(i)) for i in range(len(c.segments))]
    lat = intersect_dense(create_fsa_vec([c.graphs]).to(device), c.dense(device))
    tot = get_tot_scores(lat)
    torch.testing.assert_close(tot.cpu().double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-4, atol=1e-4)


def test_unnormalized_scores_and_longer_segments(device):
    """Scores that are not log-probabilities, T=7, a bigger graph."""
    intersect_dense, get_tot_scores = _api()
    c = Case(4, shared=False, dtype=torch.float64, T=7, V=4, num_segments=3, graph_states=4,
             normalized=False)
    expected = [ref.total(c.paths(i)) for i in range(len(c.segments))]
    lat = intersect_dense(c.graphs.to(device), c.dense(device))
    tot = get_tot_scores(lat, use_double_scores=True)
    torch.testing.assert_close(tot.cpu(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_semiring", [True, False])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("seed", [10, 11])
@pytest.mark.parametrize("materialize", [False, True])
def test_gradients(device, dtype, log_semiring, shared, seed, materialize):
    """d(sum_i w_i tot_i) w.r.t. log_probs and graph scores = weighted expected counts (log) or
    best-path indicators (tropical)."""
    intersect_dense, get_tot_scores = _api()
    c = Case(seed, shared, dtype, all_feasible=(shared or seed != 10))
    N = len(c.segments)
    w = [0.5 + 0.25 * i for i in range(N)]
    B, T, V = c.log_probs.shape
    exp_lp = torch.zeros(B, T, V, dtype=torch.float64)
    exp_g = [0.0] * c.graphs.num_arcs
    for i in range(N):
        seq, start, n = c.segments[i].tolist()
        g = c.graph_of(i)
        paths = c.paths(i)
        post = ref.dense_frame_posteriors(g, paths, n, V, log_semiring)
        exp_lp[seq, start:start + n] += w[i] * torch.tensor(post, dtype=torch.float64)
        for a, cnt in enumerate(ref.arc_expected_counts(paths, len(g.arcs), log_semiring)):
            exp_g[g.offset + a] += w[i] * cnt
    lp = c.log_probs.to(device).requires_grad_(True)
    graphs = c.graphs.to(device).clone()
    graphs.scores.requires_grad_(True)
    lat = intersect_dense(graphs, DenseFsaVec(lp, c.segments))
    if materialize:
        _materialize(lat)
    tot = get_tot_scores(lat, log_semiring=log_semiring,
                         use_double_scores=(dtype == torch.float64))
    (tot * torch.tensor(w, dtype=tot.dtype, device=tot.device)).sum().backward()
    assert lp.grad is not None and graphs.scores.grad is not None
    assert not torch.isnan(lp.grad).any() and not torch.isnan(graphs.scores.grad).any()
    torch.testing.assert_close(lp.grad.cpu().double(), exp_lp, **_tol(dtype))
    torch.testing.assert_close(graphs.scores.grad.cpu().double(),
                               torch.tensor(exp_g, dtype=torch.float64), **_tol(dtype))


@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck(device, shared):
    intersect_dense, get_tot_scores = _api()
    # all segments feasible (a -inf total has no finite differences)
    c = Case(20, shared, torch.float64, B=2, T=3, V=3, num_segments=3, graph_states=3)
    segs = c.segments
    graphs = c.graphs.to(device)
    lp = c.log_probs.to(device).clone().requires_grad_(True)
    gs = graphs.scores.detach().clone().requires_grad_(True)

    def fn(lp_, gs_):
        if shared:
            g = Fsa(graphs.arcs, gs_, num_states=int(graphs.num_states_per_fsa[0]))
        else:
            g = Fsa(graphs.arcs, gs_, num_states=graphs.num_states_per_fsa,
                    arc_splits=graphs.arc_splits)
        return get_tot_scores(intersect_dense(g, DenseFsaVec(lp_, segs)), use_double_scores=True)

    assert torch.autograd.gradcheck(fn, (lp, gs), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_infeasible_segment(device):
    """A segment too short for the graph: total -inf, gradient exactly 0, never NaN; the other
    segments are unaffected."""
    intersect_dense, get_tot_scores = _api()
    # graph needs >= 3 frames: 0 -1-> 1 -2-> 2 (-0-> 2)* -1-> 3 ... and -1 into final 4
    rows = [(0, 1, 1, 0.1), (1, 2, 2, 0.2), (2, 2, 0, -0.3), (2, 3, 1, 0.4), (3, 4, -1, 0.0)]
    g = Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
            torch.tensor([r[3] for r in rows]), aux_labels=torch.tensor([1, 2, 0, 1, -1]))
    gen = torch.Generator().manual_seed(0)
    lp0 = ref.random_log_probs(gen, 1, 5, 3)
    segs = torch.tensor([[0, 0, 2], [0, 0, 4], [0, 3, 1]], dtype=torch.int32)
    for log in (True, False):
        lp = lp0.clone().to(device).requires_grad_(True)
        gd = g.to(device).clone()
        gd.scores.requires_grad_(True)
        tot = get_tot_scores(intersect_dense(gd, DenseFsaVec(lp, segs)), log_semiring=log)
        t = tot.cpu().tolist()
        assert t[0] == -INF and t[2] == -INF
        paths = ref.enumerate_dense_paths(g, lp0[0, 0:4])
        assert t[1] == pytest.approx(ref.total(paths, log), abs=1e-4)
        tot.sum().backward()  # loss is -inf; gradients must still be finite
        assert torch.isfinite(lp.grad).all() and torch.isfinite(gd.scores.grad).all()
        post = torch.tensor(ref.dense_frame_posteriors(g, paths, 4, 3, log), dtype=torch.float64)
        exp = torch.zeros(1, 5, 3, dtype=torch.float64)
        exp[0, 0:4] = post
        torch.testing.assert_close(lp.grad.cpu().double(), exp, rtol=1e-4, atol=1e-4)
        # only the infeasible segments: all-zero gradient
        lp.grad = None
        gd.scores.grad = None
        tot2 = get_tot_scores(intersect_dense(gd, DenseFsaVec(lp, segs[[0, 2]])),
                              log_semiring=log)
        assert tot2.cpu().tolist() == [-INF, -INF]
        if tot2.requires_grad:  # (a total that depends on nothing may not require grad)
            tot2.sum().backward()
        for grad in (lp.grad, gd.scores.grad):
            assert grad is None or (grad == 0).all()


def test_empty_graphs_in_batch(device):
    """A graph with no states, and one with no arcs, among normal ones: their segments get
    total -inf, an empty lattice FSA, and no gradient; the others are unaffected."""
    intersect_dense, get_tot_scores = _api()
    c = Case(5, False, torch.float64, num_segments=4)
    empty = Fsa(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=torch.float64),
                num_states=0, aux_labels=torch.zeros(0, dtype=torch.int32))
    no_arcs = Fsa(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=torch.float64),
                  num_states=2, aux_labels=torch.zeros(0, dtype=torch.int32))
    glist = [c.graph_list[0], empty, c.graph_list[2], no_arcs]
    graphs = create_fsa_vec(glist).to(device)
    graphs.scores.requires_grad_(True)
    lp = c.log_probs.clone().to(device).requires_grad_(True)
    lat = intersect_dense(graphs, DenseFsaVec(lp, c.segments))
    tot = get_tot_scores(lat, use_double_scores=True)
    exp_lp = torch.zeros_like(c.log_probs)
    expected = []
    for i, g in enumerate(glist):
        seq, start, n = c.segments[i].tolist()
        paths = ref.enumerate_dense_paths(g, c.log_probs[seq, start:start + n])
        expected.append(ref.total(paths))
        exp_lp[seq, start:start + n] += torch.tensor(
            ref.dense_frame_posteriors(g, paths, n, c.V), dtype=torch.float64)
    assert expected[0] > -INF and expected[2] > -INF
    torch.testing.assert_close(tot.detach().cpu(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)
    tot[[0, 2]].sum().backward()
    torch.testing.assert_close(lp.grad.cpu(), exp_lp, rtol=1e-9, atol=1e-9)
    lat2 = intersect_dense(graphs.detach(), DenseFsaVec(c.log_probs.to(device), c.segments))
    nstates = lat2.num_states_per_fsa.cpu().tolist()
    assert lat2.num_fsas == 4 and nstates[1] == 0 and nstates[3] == 0


# ----------------------------------------------------------------------------- the lattice
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("seed", [30, 31, 32])
def test_lattice_paths(device, shared, seed):
    """The lattice's paths are exactly the intersection's paths: same graph-arc sequences
    (through graph_arc_idx), frames 0..n, labels, aux_labels and scores; no dead arcs."""
    intersect_dense, _ = _api()
    c = Case(seed, shared, torch.float64, all_feasible=(shared or seed != 30))
    lat = intersect_dense(c.graphs.to(device), c.dense(device))
    assert lat.num_fsas == len(c.segments)
    for name in ("graph_arc_idx", "frame_idx", "aux_labels"):
        assert lat.has_attr(name), name
    assert lat.graph_arc_idx.dtype == torch.int64
    lat_refs = ref.split_fsas(lat, attrs=["graph_arc_idx", "frame_idx", "aux_labels"])
    for i, lr in enumerate(lat_refs):
        g = c.graph_of(i)
        n = int(c.segments[i, 2])
        exp = {tuple(g.offset + a for a in arcs): sc for arcs, sc in c.paths(i)}
        got = _lattice_paths(lr)
        assert set(got) == set(exp), f"segment {i}: lattice paths differ from the intersection"
        for key, (score, frames, labels, aux) in got.items():
            assert score == pytest.approx(exp[key], abs=1e-9)
            assert frames == list(range(n + 1))
            local = [k - g.offset for k in key]
            assert labels == [g.arcs[a][2] for a in local]
            assert aux == [g.attrs["aux_labels"][a] for a in local]
        # no dead arcs: every lattice arc is on some complete path (k2's intersect_dense
        # connects its output)
        used = {a for arcs, _ in ref.enumerate_paths(lr) for a in arcs}
        assert used == set(range(len(lr.arcs))), f"segment {i}: lattice has dead arcs"


@pytest.mark.parametrize("beam", [0.5, 1.5, 3.0])
@pytest.mark.parametrize("seed", [40, 41])
def test_output_beam(device, beam, seed):
    """output_beam keeps exactly the (graph arc, frame) pairs whose best path is within
    ``beam`` of the best path (Viterbi pruning as in k2), so the best path survives and every
    path within the beam survives."""
    intersect_dense, get_tot_scores = _api()
    c = Case(seed, True, torch.float64, T=5, V=3, num_segments=3, graph_states=4)
    full = intersect_dense(c.graphs.to(device), c.dense(device))
    lat = intersect_dense(c.graphs.to(device), c.dense(device), output_beam=beam)
    lat_refs = ref.split_fsas(lat, attrs=["graph_arc_idx", "frame_idx", "aux_labels"])
    pruned_something = False
    for i, lr in enumerate(lat_refs):
        paths = c.paths(i)
        if not paths:
            assert ref.enumerate_paths(lr) == []
            continue
        best = ref.best_path(paths)[1]
        # best path score through each (graph arc, frame)
        through = {}
        for arcs, sc in paths:
            for t, a in enumerate(arcs):
                through[(a, t)] = max(through.get((a, t), -INF), sc)
        must = {k for k, v in through.items() if v >= best - beam + 1e-6}
        may = {k for k, v in through.items() if v >= best - beam - 1e-6}
        got = {(int(lr.attrs["graph_arc_idx"][a]), int(lr.attrs["frame_idx"][a]))
               for a in range(len(lr.arcs))}
        assert must <= got <= may, f"segment {i}"
        pruned_something |= len(must) < len(through)
        lpaths = _lattice_paths(lr)
        exp = {tuple(arcs): sc for arcs, sc in paths}
        assert set(lpaths) <= set(exp)
        assert max(v[0] for v in lpaths.values()) == pytest.approx(best, abs=1e-9)
        for arcs, sc in paths:
            if sc >= best - beam + 1e-6:
                assert tuple(arcs) in lpaths
    assert pruned_something, "test case too easy: nothing to prune"
    # the tropical total is unchanged by pruning
    t_full = get_tot_scores(full, log_semiring=False, use_double_scores=True)
    t_pruned = get_tot_scores(lat, log_semiring=False, use_double_scores=True)
    torch.testing.assert_close(t_pruned, t_full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_beam_zero(device, dtype):
    """output_beam=0 keeps the best path only: the lattice is not empty for a feasible segment
    and every path it has is a complete path of the intersection with the best score (no
    fragments of pruned paths)."""
    intersect_dense, _ = _api()
    c = Case(42, False, dtype, T=5, V=3, num_segments=4, graph_states=5)
    lat = intersect_dense(c.graphs.to(device), c.dense(device), output_beam=0.0)
    lat_refs = ref.split_fsas(lat, attrs=["graph_arc_idx", "frame_idx", "aux_labels"])
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for i, lr in enumerate(lat_refs):
        paths = c.paths(i)
        best = ref.best_path(paths)[1]
        exp = {tuple(c.graph_of(i).offset + a for a in arcs): sc for arcs, sc in paths}
        got = _lattice_paths(lr)
        assert got, f"segment {i}: the best path was pruned"
        assert set(got) <= set(exp), f"segment {i}: lattice paths that are not real paths"
        for score, frames, _, _ in got.values():
            assert score == pytest.approx(best, abs=tol)
            assert frames == list(range(len(frames)))
        used = {a for arcs, _ in ref.enumerate_paths(lr) for a in arcs}
        assert used == set(range(len(lr.arcs))), f"segment {i}: lattice has dead arcs"


@pytest.mark.parametrize("materialize", [False, True])
def test_output_beam_log_total(device, materialize):
    """As in k2, the log-semiring total of a lattice built with a finite output_beam is the
    total over the kept paths (the paths whose every (graph arc, frame) has a best path within
    the beam), whether or not the lattice was looked at before get_tot_scores."""
    intersect_dense, get_tot_scores = _api()
    beam = 1.0
    c = Case(40, True, torch.float64, T=5, V=3, num_segments=3, graph_states=4)
    expected = []
    for i in range(len(c.segments)):
        paths = c.paths(i)
        best = ref.best_path(paths)[1]
        through = {}
        for arcs, sc in paths:
            for t, a in enumerate(arcs):
                through[(a, t)] = max(through.get((a, t), -INF), sc)
        assert all(abs(v - (best - beam)) > 1e-6 for v in through.values())  # no borderline
        kept = [(arcs, sc) for arcs, sc in paths
                if all(through[(a, t)] >= best - beam for t, a in enumerate(arcs))]
        assert len(kept) < len(paths)
        expected.append(ref.total(kept))
    lat = intersect_dense(c.graphs.to(device), c.dense(device), output_beam=beam)
    if materialize:
        _materialize(lat)
    tot = get_tot_scores(lat, use_double_scores=True)
    torch.testing.assert_close(tot.cpu(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("log_semiring", [True, False])
def test_lattice_arc_post(device, log_semiring):
    """get_arc_post on a lattice: the posterior of each (graph arc, frame) from enumeration."""
    intersect_dense, _ = _api()
    from wfst_asr.fsa import get_arc_post
    c = Case(33, False, torch.float64)
    lat = intersect_dense(c.graphs.to(device), c.dense(device))
    post = get_arc_post(lat, log_semiring=log_semiring, use_double_scores=True).cpu()
    gidx = lat.graph_arc_idx.cpu().tolist()
    fidx = lat.frame_idx.cpu().tolist()
    arc_fsa = lat.arc_fsa.cpu().tolist()
    expected = []
    per_seg = {}
    for i in range(len(c.segments)):
        paths = c.paths(i)
        tot = ref.total(paths, log_semiring)
        through = {}
        for arcs, sc in paths:
            for t, a in enumerate(arcs):
                through.setdefault((c.graph_of(i).offset + a, t), []).append(sc)
        per_seg[i] = {k: (ref.logsumexp(v) if log_semiring else max(v)) - tot
                      for k, v in through.items()}
    for a in range(lat.num_arcs):
        expected.append(per_seg[arc_fsa[a]].get((gidx[a], fidx[a]), -INF))
    torch.testing.assert_close(post, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- bad input
def _simple_graph(label=1, validate=True):
    arcs = torch.tensor([[0, 0, 0], [0, 1, label], [1, 1, 0], [1, 2, -1]], dtype=torch.int32)
    return Fsa(arcs, torch.zeros(4), num_states=3, validate=validate)


def _dense3(device, V=3, N=2):
    lp = torch.zeros(1, 4, V).log_softmax(-1).to(device).requires_grad_(True)
    segs = torch.tensor([[0, 0, 3]] * N, dtype=torch.int32)
    return lp, DenseFsaVec(lp, segs)


def test_bad_label_too_large(device):
    intersect_dense, _ = _api()
    lp, d = _dense3(device, V=3)
    with pytest.raises(ValueError):
        intersect_dense(_simple_graph(label=3).to(device), d)
    assert lp.grad is None


def test_bad_negative_label(device):
    intersect_dense, _ = _api()
    _lp, d = _dense3(device)
    g = _simple_graph(label=-2, validate=False)
    with pytest.raises(ValueError):
        intersect_dense(g.to(device), d)


def test_bad_number_of_graphs(device):
    intersect_dense, _ = _api()
    _lp, d = _dense3(device, N=3)
    g = _simple_graph()
    with pytest.raises(ValueError):
        intersect_dense(create_fsa_vec([g, g]).to(device), d)
    with pytest.raises(ValueError):
        intersect_dense(create_fsa_vec([g, g, g, g]).to(device), d)


def test_posteriors_sum_to_one_per_frame(device):
    """With a graph accepting every label sequence of every length (self-loops on all labels),
    each frame's gradient w.r.t. log_probs sums to 1 -- an enumeration-free check at T=30."""
    intersect_dense, get_tot_scores = _api()
    V, T = 4, 30
    rows = [(0, 0, v) for v in range(V)] + [(0, 1, 1), (1, 1, 2), (1, 0, 0), (1, 2, -1),
                                            (0, 2, -1)]
    g = Fsa(torch.tensor(rows, dtype=torch.int32))
    gen = torch.Generator().manual_seed(0)
    lp = ref.random_log_probs(gen, 2, T, V, torch.float64).to(device).requires_grad_(True)
    segs = torch.tensor([[0, 0, T], [1, 2, T - 5]], dtype=torch.int32)
    tot = get_tot_scores(intersect_dense(g.to(device), DenseFsaVec(lp, segs)),
                         use_double_scores=True)
    assert torch.isfinite(tot).all()
    tot.sum().backward()
    per_frame = lp.grad.sum(-1).cpu()
    exp = torch.zeros(2, T, dtype=torch.float64)
    exp[0, :] = 1
    exp[1, 2:T - 3] = 1
    torch.testing.assert_close(per_frame, exp, rtol=1e-9, atol=1e-9)
