"""shortest_path and intersect_dense_pruned vs brute-force best paths (tests/reference.py).

Scores are random continuous numbers, so best paths are unique (no ties).
"""

from __future__ import annotations

import pytest
import torch

try:
    from tests import reference as ref
except ImportError:  # pragma: no cover - run from inside tests/
    import reference as ref

from wfst_asr.fsa import DenseFsaVec, Fsa, create_fsa_vec
from wfst_asr.graphs import ctc_topo

INF = float("inf")


def _shortest_path():
    from wfst_asr.fsa import shortest_path
    return shortest_path


def _dense_api():
    from wfst_asr.fsa import intersect_dense, intersect_dense_pruned
    return intersect_dense, intersect_dense_pruned


def _check_linear(p: ref.RefFsa):
    """A linear FSA: states 0..k, arc j goes j -> j+1 (arcs in order)."""
    assert p.num_states == len(p.arcs) + 1
    for j, (s, d, _, _) in enumerate(p.arcs):
        assert (s, d) == (j, j + 1)


def _random_vec(seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    fsas = []
    for i in range(8):
        fsas.append(ref.random_acyclic_fsa(
            gen, num_states=ref._randint(gen, 2, 9), arc_prob=0.2 + 0.6 * ref._rand(gen),
            ensure_path=(i % 4 != 3), top_sorted=(i % 2 == 0), dtype=dtype))
    empty = Fsa(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=dtype), num_states=0,
                aux_labels=torch.zeros(0, dtype=torch.int32))
    no_arcs = Fsa(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=dtype),
                  num_states=3, aux_labels=torch.zeros(0, dtype=torch.int32))
    fsas[1:1] = [empty]
    fsas[5:5] = [no_arcs]
    return create_fsa_vec(fsas)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shortest_path_random_acyclic(device, dtype, seed):
    shortest_path = _shortest_path()
    vec = _random_vec(seed, dtype)
    refs = ref.split_fsas(vec, attrs=["aux_labels"])
    assert any(not ref.enumerate_paths(r) for r in refs)
    vec = vec.to(device)
    vec.scores.requires_grad_(True)
    best = shortest_path(vec)
    assert best.is_vec and best.num_fsas == vec.num_fsas
    assert best.has_attr("aux_labels")
    got = ref.split_fsas(best, attrs=["aux_labels"])
    exp_grad = [0.0] * vec.num_arcs
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for i, (r, p) in enumerate(zip(refs, got)):
        bp = ref.best_path(ref.enumerate_paths(r))
        if bp is None:
            assert p.num_states == 0 and len(p.arcs) == 0, f"FSA {i}: no path -> empty FSA"
            continue
        arcs, score = bp
        _check_linear(p)
        assert [a[2] for a in p.arcs] == [r.arcs[a][2] for a in arcs], f"FSA {i}: labels"
        assert [a[3] for a in p.arcs] == pytest.approx([r.arcs[a][3] for a in arcs], abs=tol)
        assert sum(a[3] for a in p.arcs) == pytest.approx(score, abs=tol)
        assert p.attrs["aux_labels"] == [r.attrs["aux_labels"][a] for a in arcs]
        for a in arcs:
            exp_grad[r.offset + a] += 1.0
    # the best paths' scores are differentiable w.r.t. the input scores (arc selection)
    best.scores.sum().backward()
    assert vec.scores.grad is not None
    assert vec.scores.grad.cpu().double().tolist() == pytest.approx(exp_grad, abs=1e-12)


def test_shortest_path_single_fsa(device):
    shortest_path = _shortest_path()
    gen = torch.Generator().manual_seed(3)
    f = ref.random_acyclic_fsa(gen, num_states=7, arc_prob=0.7)
    arcs, score = ref.best_path(ref.enumerate_paths(f))
    best = shortest_path(f.to(device))
    got = ref.split_fsas(best)
    assert len(got) == 1
    _check_linear(got[0])
    assert [a[2] for a in got[0].arcs] == ref.path_labels(f, arcs)
    assert sum(a[3] for a in got[0].arcs) == pytest.approx(score, abs=1e-4)


def _dense_case(seed, V=3, T=5, B=2, num_segments=4, graph_states=5):
    gen = torch.Generator().manual_seed(seed)
    lp = ref.random_log_probs(gen, B, T, V, torch.float32)
    segs = []
    for i in range(num_segments):
        n = ref._randint(gen, 2, T + 1)
        segs.append((i % B, ref._randint(gen, 0, T - n + 1), n))
    graph = ref.random_dense_graph(gen, num_states=graph_states, num_labels=V, arc_prob=0.5,
                                   final_prob=0.7)
    return lp, torch.tensor(segs, dtype=torch.int32), graph


@pytest.mark.parametrize("seed", [10, 12, 13])
def test_shortest_path_of_lattice(device, seed):
    """The best path of an intersect_dense lattice is the best path of the intersection: the
    same graph arcs (graph_arc_idx), frames 0..n, labels, aux_labels, score."""
    intersect_dense, _ = _dense_api()
    shortest_path = _shortest_path()
    lp, segs, graph = _dense_case(seed)
    g = ref.as_ref(graph)
    g.attrs["aux_labels"] = graph.aux_labels.tolist()
    lat = intersect_dense(graph.to(device), DenseFsaVec(lp.to(device), segs))
    best = shortest_path(lat)
    got = ref.split_fsas(best, attrs=["graph_arc_idx", "frame_idx", "aux_labels"])
    assert len(got) == len(segs)
    for i, (p, (seq, start, n)) in enumerate(zip(got, segs.tolist())):
        bp = ref.best_path(ref.enumerate_dense_paths(g, lp[seq, start:start + n]))
        if bp is None:
            assert p.num_states == 0
            continue
        arcs, score = bp
        _check_linear(p)
        assert p.attrs["graph_arc_idx"] == arcs, f"segment {i}"
        assert p.attrs["frame_idx"] == list(range(n + 1))
        assert [a[2] for a in p.arcs] == [g.arcs[a][2] for a in arcs]
        assert p.attrs["aux_labels"] == [g.attrs["aux_labels"][a] for a in arcs]
        assert sum(a[3] for a in p.arcs) == pytest.approx(score, abs=1e-4)


def test_ctc_topo_best_path_is_greedy_decoding(device):
    """With the standard CTC topology the best path takes the argmax label of every frame, and
    its non-zero aux_labels are the collapsed greedy CTC output."""
    intersect_dense, _ = _dense_api()
    shortest_path = _shortest_path()
    gen = torch.Generator().manual_seed(13)
    V, T = 5, 25
    lp = ref.random_log_probs(gen, 2, T, V)
    lp[0, 3:6] = torch.tensor([-5.0, -0.01, -5.0, -5.0, -6.0]).log_softmax(-1)  # a run of 1s
    segs = torch.tensor([[0, 0, T], [1, 4, 17]], dtype=torch.int32)
    lat = intersect_dense(ctc_topo(V - 1, device=device), DenseFsaVec(lp.to(device), segs))
    got = ref.split_fsas(shortest_path(lat), attrs=["aux_labels"])
    for p, (seq, start, n) in zip(got, segs.tolist()):
        am = lp[seq, start:start + n].argmax(-1).tolist()
        collapsed = [x for j, x in enumerate(am) if x != 0 and (j == 0 or am[j - 1] != x)]
        assert [a[2] for a in p.arcs] == am + [-1]
        assert [x for x in p.attrs["aux_labels"] if x > 0] == collapsed
        assert sum(a[3] for a in p.arcs) == pytest.approx(
            lp[seq, start:start + n].max(-1).values.sum().item(), abs=1e-4)


# ----------------------------------------------------------------------------- pruned decoding
@pytest.mark.parametrize("seed", [17, 21, 24])
def test_intersect_dense_pruned_wide_beams(device, seed):
    """With huge beams the pruned search finds the exact best path (labels and score) of
    every segment, i.e. that of shortest_path(intersect_dense(...))."""
    _, intersect_dense_pruned = _dense_api()
    shortest_path = _shortest_path()
    lp, segs, graph = _dense_case(seed)
    lat = intersect_dense_pruned(graph.to(device), DenseFsaVec(lp.to(device), segs),
                                 search_beam=1e3, output_beam=1e3, min_active_states=1,
                                 max_active_states=10 ** 6)
    assert lat.num_fsas == len(segs)
    got = ref.split_fsas(shortest_path(lat))
    for i, (p, (seq, start, n)) in enumerate(zip(got, segs.tolist())):
        bp = ref.best_path(ref.enumerate_dense_paths(graph, lp[seq, start:start + n]))
        assert bp is not None
        arcs, score = bp
        _check_linear(p)
        assert [a[2] for a in p.arcs] == ref.path_labels(graph, arcs), f"segment {i}"
        assert sum(a[3] for a in p.arcs) == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("beams", [(0.5, 0.2, 1, 2), (2.0, 1.0, 1, 3), (4.0, 0.0, 2, 4)])
def test_intersect_dense_pruned_narrow_beams(device, beams):
    """Narrow beams / few active states: the best path found is a real path of the
    intersection, so its score is <= the exact best score."""
    _, intersect_dense_pruned = _dense_api()
    shortest_path = _shortest_path()
    search_beam, output_beam, min_active, max_active = beams
    lp, segs, graph = _dense_case(23, graph_states=5)
    lat = intersect_dense_pruned(graph.to(device), DenseFsaVec(lp.to(device), segs),
                                 search_beam=search_beam, output_beam=output_beam,
                                 min_active_states=min_active, max_active_states=max_active)
    assert lat.num_fsas == len(segs)
    got = ref.split_fsas(shortest_path(lat))
    for p, (seq, start, n) in zip(got, segs.tolist()):
        paths = ref.enumerate_dense_paths(graph, lp[seq, start:start + n])
        if p.num_states == 0:
            continue
        _check_linear(p)
        labels = [a[2] for a in p.arcs]
        score = sum(a[3] for a in p.arcs)
        exact = ref.total(paths, log_semiring=False)
        assert score <= exact + 1e-4
        # some path of the intersection has these labels and this score
        same = [sc for arcs, sc in paths if ref.path_labels(graph, arcs) == labels]
        assert any(abs(sc - score) < 1e-4 for sc in same), "not a path of the intersection"


@pytest.mark.parametrize("beams", [(3.0, 2.0, 1, 100), (4.0, 0.0, 2, 4), (1.0, 1.0, 1, 2)])
def test_intersect_dense_pruned_lattice_paths_are_real(device, beams):
    """Every path of a pruned lattice is a complete path of the intersection (frames 0..n) with
    the same score (through graph_arc_idx when the attribute is there, else by labels)."""
    _, intersect_dense_pruned = _dense_api()
    search_beam, output_beam, min_active, max_active = beams
    lp, segs, graph = _dense_case(23, graph_states=5)
    lat = intersect_dense_pruned(graph.to(device), DenseFsaVec(lp.to(device), segs),
                                 search_beam=search_beam, output_beam=output_beam,
                                 min_active_states=min_active, max_active_states=max_active)
    has_idx = lat.has_attr("graph_arc_idx")
    has_frame = lat.has_attr("frame_idx")
    attrs = [x for x, h in (("graph_arc_idx", has_idx), ("frame_idx", has_frame)) if h]
    lat_refs = ref.split_fsas(lat, attrs=attrs)
    for i, (lr, (seq, start, n)) in enumerate(zip(lat_refs, segs.tolist())):
        paths = ref.enumerate_dense_paths(graph, lp[seq, start:start + n])
        by_arcs = {tuple(a): sc for a, sc in paths}
        for arcs, score in ref.enumerate_paths(lr):
            assert len(arcs) == n + 1, f"segment {i}: a lattice path of {len(arcs)} arcs"
            if has_frame:
                assert [lr.attrs["frame_idx"][a] for a in arcs] == list(range(n + 1))
            if has_idx:
                key = tuple(lr.attrs["graph_arc_idx"][a] for a in arcs)
                assert key in by_arcs, f"segment {i}: {key} is not a path of the intersection"
                assert by_arcs[key] == pytest.approx(score, abs=1e-4)
            else:
                labels = [lr.arcs[a][2] for a in arcs]
                assert any(ref.path_labels(graph, pa) == labels and abs(sc - score) < 1e-4
                           for pa, sc in paths)


@pytest.mark.parametrize("log_semiring", [True, False])
def test_intersect_dense_pruned_wide_beams_totals_and_grad(device, log_semiring):
    """With huge beams nothing is pruned: totals and gradients w.r.t. the log-probs are those
    of the full intersection (as in k2, where the pruned lattice is differentiable)."""
    _, intersect_dense_pruned = _dense_api()
    from wfst_asr.fsa import get_tot_scores
    lp0, segs, graph = _dense_case(22)
    lp = lp0.clone().to(device).requires_grad_(True)
    lat = intersect_dense_pruned(graph.to(device), DenseFsaVec(lp, segs), search_beam=1e3,
                                 output_beam=1e3, min_active_states=1, max_active_states=10 ** 6)
    tot = get_tot_scores(lat, log_semiring=log_semiring)
    B, T, V = lp0.shape
    exp_tot, exp_grad = [], torch.zeros(B, T, V, dtype=torch.float64)
    for seq, start, n in segs.tolist():
        paths = ref.enumerate_dense_paths(graph, lp0[seq, start:start + n])
        exp_tot.append(ref.total(paths, log_semiring))
        exp_grad[seq, start:start + n] += torch.tensor(
            ref.dense_frame_posteriors(graph, paths, n, V, log_semiring), dtype=torch.float64)
    assert all(x > -INF for x in exp_tot)
    torch.testing.assert_close(tot.detach().cpu().double(),
                               torch.tensor(exp_tot, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    tot.sum().backward()
    torch.testing.assert_close(lp.grad.cpu().double(), exp_grad, rtol=1e-4, atol=1e-4)
