"""Lattices (wfst_asr.decode.lattice): construction with separate acoustic / LM scores,
rescaling, pruning, word-level determinization, posteriors, word times and CTM.

Expected values come from path enumeration (tests/lattice_reference.py, tests/reference.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tests import lattice_reference as lref
from tests import reference as ref
from wfst_asr.decode.lattice import (
    WordSpan,
    best_word_sequences,
    ctm_lines,
    determinize_words,
    frame_word_posteriors,
    get_lattice,
    is_empty,
    lattice_to_ctm,
    num_frames,
    prune,
    rescale,
    word_alignment,
    word_confidences,
    word_posteriors,
)
from wfst_asr.decode.lattice_io import LatticeError  # noqa: F401  (import check)
from wfst_asr.fsa import DenseFsaVec, intersect_dense_pruned, linear_fsa, ops
from wfst_asr.graphs import ctc_topo

BIG = 1.0e4


def make_case(seed: int, T: int = 5, V: int = 3, lm_scale: float = 0.7, wp: float = 0.3,
              lens=None):
    gen = torch.Generator().manual_seed(seed)
    rows = lref.bigram_g_rows(V, gen)
    G = lref.g_from_rows(rows, V)
    graph = ops.connect(ops.compose(ctc_topo(V), G))
    lens = [T, T - 1] if lens is None else lens
    lp = torch.randn(len(lens), T, V + 1, generator=gen).log_softmax(-1)
    lat = get_lattice(graph, lp, lens, search_beam=BIG, output_beam=BIG, lm_scale=lm_scale,
                      word_penalty=wp)
    return {"rows": rows, "G": G, "graph": graph, "lp": lp, "lens": lens, "lat": lat,
            "lm_scale": lm_scale, "wp": wp, "V": V}


@pytest.fixture(scope="module")
def case():
    return make_case(0)


def test_attributes_and_scores_split(case):
    lat, lp, graph = case["lat"], case["lp"], case["graph"]
    s, wp = case["lm_scale"], case["wp"]
    assert lat.num_fsas == 2
    for k in ("aux_labels", "am_scores", "lm_scores", "frame_idx"):
        assert lat.has_attr(k)
    assert lat.lm_scale == s and lat.word_penalty == wp
    assert num_frames(lat).tolist() == case["lens"]
    # the lattice's scores are bitwise those of the search with the scaled graph
    g = graph.detach()
    g.scores = g.scores * s - wp * (g.aux_labels > 0).float()
    segs = torch.tensor([[b, 0, n] for b, n in enumerate(case["lens"])], dtype=torch.int32)
    direct = intersect_dense_pruned(g, DenseFsaVec(lp, segs), BIG, BIG, 30, 10000)
    assert torch.equal(direct.scores, lat.scores)
    for b in range(2):
        one = lat[b]
        paths = lref.lattice_paths(one)
        T = case["lens"][b]
        # every path consumes T frames in order, then the final arc at frame T
        for p in paths:
            assert p["frames"] == list(range(T)) + [T]
            am = sum(float(lp[b, t, lab]) for t, lab in zip(p["frames"], p["labels"][:-1]))
            assert p["am"] == pytest.approx(am, abs=1e-5)
        # (token sequence, LM score) of the lattice's paths = the graph's T-frame paths
        got = sorted((tuple(p["labels"][:-1]), round(p["lm"], 4)) for p in paths)
        want = sorted((labs, round(sc, 4)) for labs, sc in ref.graph_paths(graph, T))
        assert got == want
        # scores = lm_scale * lm - wp * words + am, per path
        sc = one.scores.double().tolist()
        for p in paths:
            assert sum(sc[a] for a in p["arcs"]) == pytest.approx(
                lref.total(p, s, wp), abs=1e-4)


def test_rescale(case):
    lat = case["lat"]
    r = rescale(lat, 1.3, -0.5)
    want = lat.am_scores + (lat.lm_scores * 1.3 + 0.5 * (lat.aux_labels > 0).float())
    assert torch.allclose(r.scores, want, atol=1e-6)
    assert r.lm_scale == 1.3 and r.word_penalty == -0.5
    assert lat.lm_scale == case["lm_scale"]  # the input is unchanged
    back = rescale(r, case["lm_scale"], case["wp"])
    assert torch.equal(back.scores, lat.scores)


def _path_keys(one, scale, wp):
    """Paths as (tuple of (label, aux, frame, am, lm) per arc, arc indices, total)."""
    lab, aux = one.labels.tolist(), one.aux_labels.tolist()
    frm, am, lm = one.frame_idx.tolist(), one.am_scores.tolist(), one.lm_scores.tolist()
    return [(tuple((lab[a], aux[a], frm[a], am[a], lm[a]) for a in p["arcs"]), p["arcs"],
             lref.total(p, scale, wp)) for p in lref.lattice_paths(one)]


@pytest.mark.parametrize("beam", [0.0, 1.0, 3.0])
def test_prune_against_enumeration(case, beam):
    lat = case["lat"]
    pr = prune(lat, beam)
    for b in range(2):
        full = _path_keys(lat[b], case["lm_scale"], case["wp"])
        best = max(t for _, _, t in full)
        # arcs whose best path is within the beam; a path survives iff all its arcs do
        arc_best: dict[int, float] = {}
        for _, arcs, tot in full:
            for a in arcs:
                arc_best[a] = max(arc_best.get(a, -math.inf), tot)
        want = sorted(k for k, arcs, _ in full
                      if all(arc_best[a] >= best - beam - 1e-5 for a in arcs))
        got = sorted(k for k, _, _ in _path_keys(pr[b], case["lm_scale"], case["wp"]))
        assert got == want
        # no dead ends: every state is on a complete path
        one = pr[b]
        used = set(one.arcs[:, 0].tolist()) | set(one.arcs[:, 1].tolist())
        assert used == set(range(one.num_states))
    assert best_word_sequences(pr) == best_word_sequences(lat)


def test_determinize_words(case):
    lat = case["lat"]
    det = determinize_words(lat)
    for b in range(2):
        paths = lref.lattice_paths(lat[b])
        want: dict[tuple, float] = {}
        for p in paths:
            w = tuple(p["words"])
            want[w] = max(want.get(w, -math.inf), lref.total(p, case["lm_scale"], case["wp"]))
        got: dict[tuple, float] = {}
        for arcs, score in ref.enumerate_paths(det[b]):
            words = tuple(ref.path_labels(det[b], arcs)[:-1])
            assert words not in got  # deterministic: one path per word sequence
            got[words] = score
        assert set(got) == set(want)
        for w, score in want.items():
            assert got[w] == pytest.approx(score, abs=1e-3)


def test_frame_word_posteriors_against_enumeration(case):
    scale = 0.5
    for b in range(2):
        one = case["lat"][b]
        paths = lref.lattice_paths(one)
        lref.add_word_frames(one, paths)
        scores = [scale * lref.total(p, case["lm_scale"], case["wp"]) for p in paths]
        T = case["lens"][b]
        want = lref.frame_word_posteriors(paths, T, scores)
        got = frame_word_posteriors(one, scale)
        assert len(got) == T
        for t in range(T):
            keys = {k for k, v in want[t].items() if v > 1e-12} | set(got[t])
            for k in keys:
                assert got[t].get(k, 0.0) == pytest.approx(want[t].get(k, 0.0), abs=1e-6)
            assert sum(got[t].values()) == pytest.approx(1.0, abs=1e-9)


def test_word_posteriors_against_enumeration(case):
    one = case["lat"][0]
    paths = lref.lattice_paths(one)
    lref.add_word_frames(one, paths)
    scores = [lref.total(p, case["lm_scale"], case["wp"]) for p in paths]
    z = lref.logsumexp(scores)
    want: dict[tuple[int, int], float] = {}
    for p, s in zip(paths, scores):
        for f, w in set(p["word_frames"]):
            want[(w, f)] = want.get((w, f), 0.0) + math.exp(s - z)
    got = {(w, t): p for w, t, p in word_posteriors(one)}
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6)


def test_word_alignment_and_ctm():
    labels = [0, 3, 3, 0, 2, 0, -1]
    aux = [0, 5, 0, 0, 7, 0, -1]
    frames = [0, 1, 2, 3, 4, 5, 6]
    spans = word_alignment(labels, aux, frames, 6)
    assert spans == [WordSpan(5, 1, 3), WordSpan(7, 4, 5)]
    assert word_alignment(labels, aux, frames, 6, trim_blank=False) == [
        WordSpan(5, 1, 4), WordSpan(7, 4, 6)]
    posts = [{0: 1.0}, {5: 0.9, 6: 0.1}, {5: 0.95, 6: 0.05}, {5: 1.0}, {7: 0.4, 5: 0.6},
             {7: 0.5}]
    conf = word_confidences(spans, posts)
    assert conf == [0.95, 0.4]
    from wfst_asr.fsa import SymbolTable
    table = SymbolTable.from_str("<eps> 0\nfive 5\nseven 7\n")
    lines = ctm_lines("utt1", spans, conf, frame_shift=0.01, subsampling=3, words=table)
    assert lines == ["utt1 1 0.03 0.06 five 0.95", "utt1 1 0.12 0.03 seven 0.40"]
    assert ctm_lines("u", spans)[0] == "u 1 0.01 0.02 5"


def test_lattice_to_ctm(case):
    for b in range(2):
        one = case["lat"][b]
        lines = lattice_to_ctm(one, f"u{b}", frame_shift=0.01, subsampling=1)
        words = [int(x.split()[4]) for x in lines]
        assert words == best_word_sequences(one)[0]
        starts = [float(x.split()[2]) for x in lines]
        assert starts == sorted(starts)
        for x in lines:
            assert 0.0 <= float(x.split()[5]) <= 1.0
            assert float(x.split()[3]) > 0


def test_empty_lattice():
    # a graph whose only word sequence needs two frames, decoded with one frame
    G = linear_fsa([1, 2])
    graph = ops.connect(ops.compose(ctc_topo(2), G))
    lp = torch.randn(2, 3, 3).log_softmax(-1)
    lat = get_lattice(graph, lp, [3, 1], search_beam=BIG, output_beam=BIG)
    assert is_empty(lat).tolist() == [False, True]
    assert num_frames(lat).tolist() == [3, 0]
    assert best_word_sequences(lat) == [[1, 2], []]
    assert prune(lat, 1.0).num_states_per_fsa.tolist()[1] == 0
    assert determinize_words(lat)[1].num_states == 0
    assert lattice_to_ctm(lat[1], "u") == []
    assert frame_word_posteriors(lat[1]) == []
    assert word_posteriors(lat[1]) == []


def test_graph_needs_aux_labels():
    with pytest.raises(ValueError, match="aux_labels"):
        get_lattice(linear_fsa([1, 2]), torch.zeros(1, 2, 3), [2])


def test_determinize_words_with_beam(case):
    lat = case["lat"]
    for beam in (0.0, 2.0):
        det = determinize_words(lat, beam=beam)
        pr = prune(lat, beam)
        for b in range(2):
            want = {tuple(p["words"]) for p in lref.lattice_paths(pr[b])}
            got = {tuple(ref.path_labels(det[b], arcs)[:-1])
                   for arcs, _ in ref.enumerate_paths(det[b])}
            assert got == want
    with pytest.raises(RuntimeError, match="max_states"):
        determinize_words(lat, max_states=2)


@pytest.mark.parametrize("seed", [0, 3])
def test_frame_levels_are_the_longest_path_depths(seed):
    """The frame layering of a lattice equals Kahn's longest-path levels (computed on a copy
    without cached levels), and a layering that does not fit the arcs is refused."""
    from wfst_asr.decode.lattice import frame_levels, with_frame_levels

    lat = make_case(seed)["lat"]
    want = lat.clone().state_levels()  # a clone has no cached levels: Kahn's algorithm
    got = frame_levels(lat)
    assert got is not None and torch.equal(got, want)
    one = lat[0]
    assert torch.equal(with_frame_levels(one.clone()).state_levels(), one.clone().state_levels())
    bad = lat.clone()
    bad.frame_idx = torch.zeros_like(bad.frame_idx)
    assert frame_levels(bad) is None
