"""The back-pointer search (wfst_asr.fsa.viterbi) against the lattice route it replaces.

Reference: ``shortest_path(intersect_dense_pruned(graph, dense, beam, 0, ...))``, the route of
``one_best`` before the back-pointer search, which is itself tested against brute force and
Kaldi's decoders. On random graphs and random (untied) scores both must give the same arcs;
both the sparse (active tokens) and the all-states search are run on every case.
"""

from __future__ import annotations

import pytest
import torch

from tests.pruned_reference import intersect_dense_pruned as reference_pruned
from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    create_fsa_vec,
    dense_plan,
    intersect,
    shortest_path,
    viterbi,
)


def _random_graph(num_states: int, num_arcs: int, V: int, gen: torch.Generator) -> Fsa:
    """A random graph: emitting arcs among states 0..S-2 (labels 0..V-1), -1 arcs from a few
    states into the final state S-1, random scores and aux_labels."""
    S = num_states
    src = torch.randint(0, S - 1, (num_arcs,), generator=gen)
    dst = torch.randint(0, S - 1, (num_arcs,), generator=gen)
    lab = torch.randint(0, V, (num_arcs,), generator=gen)
    nf = max(1, (S - 1) // 3)
    fsrc = torch.randperm(S - 1, generator=gen)[:nf]
    src = torch.cat([src, fsrc])
    dst = torch.cat([dst, torch.full((nf,), S - 1)])
    lab = torch.cat([lab, torch.full((nf,), -1)])
    order = torch.argsort(src * 10 * (num_arcs + nf) + torch.arange(src.numel()), stable=True)
    arcs = torch.stack([src, dst, lab], 1)[order].to(torch.int32)
    scores = torch.randn(arcs.shape[0], generator=gen)
    aux = torch.where(arcs[:, 2] >= 0, torch.randint(0, 5, (arcs.shape[0],), generator=gen),
                      torch.full((arcs.shape[0],), -1))
    return Fsa(arcs, scores, num_states=S, aux_labels=aux.to(torch.int32))


def _reference(graph: Fsa, dense: DenseFsaVec, beam: float, lo: int, hi: int
               ) -> list[list[int]]:
    best = shortest_path(reference_pruned(graph, dense, beam, 0.0, lo, hi))
    arc_map = best.graph_arc_idx if best.has_attr("graph_arc_idx") else None
    splits = best.arc_splits.tolist()
    assert arc_map is not None
    return [arc_map[splits[i]:splits[i + 1]].tolist() for i in range(best.num_fsas)]


def _set_mode(mode: str, monkeypatch) -> None:
    """``mode``: dense (all states, one padded bucket of arcs), buckets (all states, one bucket
    per degree), sparse (active tokens, the batch at once) or split (active tokens, one
    segment at a time; lattice states numbered by a sort of their keys instead of a table)."""
    monkeypatch.setattr(viterbi, "_use_dense", lambda *a: mode in ("dense", "buckets"))
    monkeypatch.setattr(viterbi, "SPLIT_ARCS", 1 if mode == "split" else 1 << 40)
    monkeypatch.setattr(dense_plan, "_BUCKET_OVERHEAD", 0 if mode == "buckets" else 1 << 30)
    monkeypatch.setattr(intersect, "KEY_TABLE", 0 if mode == "split" else 1 << 22)


def _search(graph, dense, beam, lo, hi, mode: str, monkeypatch) -> list[list[int]]:
    _set_mode(mode, monkeypatch)
    return [p.tolist() for p in viterbi.best_path_arcs(graph, dense, beam, lo, hi)]


def _dense(B: int, T: int, V: int, lens: list[int], gen: torch.Generator) -> DenseFsaVec:
    lp = torch.randn(B, T, V, generator=gen).mul(3).log_softmax(-1)
    segs = torch.tensor([[i, 0, n] for i, n in enumerate(lens)], dtype=torch.int32)
    return DenseFsaVec(lp, segs)


@pytest.mark.parametrize("mode", ["sparse", "dense", "buckets", "split"])
@pytest.mark.parametrize("seed", range(6))
def test_same_paths_as_the_lattice_route(seed: int, mode: str, monkeypatch) -> None:
    gen = torch.Generator().manual_seed(seed)
    V = 6
    graph = _random_graph(int(torch.randint(3, 12, (1,), generator=gen)),
                          int(torch.randint(10, 60, (1,), generator=gen)), V, gen)
    B = 1 + seed % 4
    lens = torch.randint(0, 9, (B,), generator=gen).tolist()
    dense = _dense(B, max(lens + [1]), V, lens, gen)
    # beams: wide; narrow (min_active binds); max_active binds
    for beam, lo, hi in [(30.0, 1, 1000), (0.5, 3, 1000), (30.0, 1, 2), (2.0, 2, 3)]:
        ref = _reference(graph, dense, beam, lo, hi)
        got = _search(graph, dense, beam, lo, hi, mode, monkeypatch)
        assert got == ref, (beam, lo, hi)


@pytest.mark.parametrize("mode", ["sparse", "dense", "buckets", "split"])
def test_segments_of_one_sequence_and_bad_frames(mode: str, monkeypatch) -> None:
    """Several segments of the same sequences at offsets, a segment with a NaN frame (empty),
    -inf log-probs (paths cut), and per-segment graphs (sparse search only)."""
    gen = torch.Generator().manual_seed(11)
    V = 5
    graph = _random_graph(8, 50, V, gen)
    lp = torch.randn(2, 12, V, generator=gen).log_softmax(-1)
    lp[0, 3, 2] = float("-inf")
    lp[1, 10, 0] = float("nan")
    segs = torch.tensor([[0, 0, 12], [0, 4, 5], [1, 2, 6], [1, 8, 4], [1, 0, 0]],
                        dtype=torch.int32)
    dense = DenseFsaVec(lp, segs)
    ref = _reference(graph, dense, 8.0, 2, 100)
    got = _search(graph, dense, 8.0, 2, 100, mode, monkeypatch)
    assert got == ref
    assert got[3] == []  # the NaN frame
    graphs = create_fsa_vec([_random_graph(6, 30, V, gen) for _ in range(segs.shape[0])])
    assert _search(graphs, dense, 8.0, 2, 100, "sparse", monkeypatch) == \
        _reference(graphs, dense, 8.0, 2, 100)


def test_no_complete_path(monkeypatch) -> None:
    """A graph whose final arcs are unreachable gives empty paths in both searches."""
    arcs = torch.tensor([[0, 1, 1], [1, 1, 0], [2, 3, -1]], dtype=torch.int32)
    graph = Fsa(arcs, torch.zeros(3), num_states=4, aux_labels=torch.tensor([1, 0, -1]))
    dense = _dense(2, 4, 3, [4, 2], torch.Generator().manual_seed(0))
    for mode in ("sparse", "dense", "buckets", "split"):
        assert _search(graph, dense, 10.0, 1, 10, mode, monkeypatch) == [[], []]


def test_choice_of_search() -> None:
    """The all-states search serves small, well-filled graphs; the sparse one large ones."""
    gen = torch.Generator().manual_seed(0)
    small = viterbi.search_plan(_random_graph(10, 200, 4, gen))
    assert viterbi._use_dense(small, 10, 8)
    big = _random_graph(3000, 6000, 4, gen)
    assert not viterbi._use_dense(viterbi.search_plan(big), 3000, 8)


def _lattice_arcs(lat: Fsa) -> list[tuple]:
    """A lattice as comparable rows: per arc (fsa, src, dst, label, graph arc, frame, score)."""
    return list(zip(lat.arc_fsa.tolist(), lat.arcs[:, 0].tolist(), lat.arcs[:, 1].tolist(),
                    lat.arcs[:, 2].tolist(), lat.graph_arc_idx.tolist(),
                    lat.frame_idx.tolist(), lat.scores.tolist()))


@pytest.mark.parametrize("mode", ["sparse", "split", "dense", "buckets"])
@pytest.mark.parametrize("seed", range(6))
def test_lattices_equal_the_previous_search(seed: int, mode: str, monkeypatch) -> None:
    """intersect_dense_pruned (per-frame records, forward-backward over them) gives the same
    lattice, arc for arc and in the same order, as the previous implementation (whole raw
    lattice assembled, then the engine's forward-backward), at several beams; also with
    per-segment graphs and a segment with a NaN frame; the batch at once, one segment at a
    time (``split``) or all states at once with candidates from a float32 backward pass
    (``dense``, ``buckets``; shared graphs only)."""
    from wfst_asr.fsa import intersect_dense_pruned
    _set_mode(mode, monkeypatch)
    gen = torch.Generator().manual_seed(100 + seed)
    V = 5
    S = int(torch.randint(3, 10, (1,), generator=gen))
    graph = _random_graph(S, int(torch.randint(10, 50, (1,), generator=gen)), V, gen)
    B = 1 + seed % 3
    lens = torch.randint(0, 8, (B,), generator=gen).tolist()
    dense = _dense(B, max(lens + [1]), V, lens, gen)
    if seed == 5:
        dense.log_probs[0, 0, 1] = float("nan")
    if seed == 4:
        graph = create_fsa_vec([_random_graph(6, 25, V, gen) for _ in range(B)])
    inf = float("inf")
    for beam, ob, lo, hi in [(30.0, 8.0, 1, 1000), (30.0, 0.0, 1, 1000), (1.0, 2.0, 2, 1000),
                             (30.0, 30.0, 1, 2), (inf, inf, 1, 1000)]:
        ref = reference_pruned(graph, dense, beam, ob, lo, hi)
        got = intersect_dense_pruned(graph, dense, beam, ob, lo, hi)
        assert got.num_states_per_fsa.tolist() == ref.num_states_per_fsa.tolist()
        assert _lattice_arcs(got) == _lattice_arcs(ref), (beam, ob, lo, hi)
        assert torch.equal(got.aux_labels, ref.aux_labels)


def test_top_k_equals_stable_ranks() -> None:
    """The selection used for one segment's max_active / min_active equals rank < k of a
    stable descending sort, ties (and -inf) included."""
    gen = torch.Generator().manual_seed(3)
    for n in (1, 5, 40):
        score = torch.randint(0, 4, (n,), generator=gen).float()
        score[torch.rand(n, generator=gen) < 0.2] = float("-inf")
        order = torch.sort(score, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n)
        for k in (0, 1, 3, n - 1, n, n + 2):
            assert torch.equal(viterbi._top(score, k), rank < k), (n, k)


def test_caches_follow_the_graph(monkeypatch) -> None:
    """The plan and scaled scores cached on a graph are rebuilt when its labels or scores
    change in place (one_best decodes with the changed graph)."""
    from wfst_asr.decode import one_best
    gen = torch.Generator().manual_seed(5)
    graph = _random_graph(7, 40, 4, gen)
    dense = _dense(1, 6, 4, [6], gen)
    lp, lens = dense.log_probs, torch.tensor([6])
    first = one_best(graph, lp, lens, lm_scale=0.5)
    assert first == one_best(graph, lp, lens, lm_scale=0.5)  # cached path
    seen = [first]
    for change in ("scores", "labels"):
        if change == "scores":
            graph.scores.mul_(-3.0)
        else:  # in place, through the labels view of the arcs
            lab = graph.labels
            lab.copy_(torch.where(lab >= 0, (lab + 1) % 4, lab))
        fresh = Fsa(graph.arcs.clone(), graph.scores.clone(), num_states=graph.num_states,
                    aux_labels=graph.aux_labels.clone())
        now = one_best(graph, lp, lens, lm_scale=0.5)
        assert now == one_best(fresh, lp, lens, lm_scale=0.5)
        assert now != seen[-1], change  # the change matters to the 1-best
        seen.append(now)
