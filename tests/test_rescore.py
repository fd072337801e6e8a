"""Whole-lattice rescoring and oracle error rates (wfst_asr.decode.rescore), against
exhaustive search over the paths of tiny lattices."""

from __future__ import annotations

import math

import pytest
import torch

from tests import lattice_reference as lref
from tests.test_lattice import make_case
from wfst_asr.decode.lattice import best_paths, best_word_sequences, get_lattice
from wfst_asr.decode.rescore import load_g, oracle, prepare_g, rescore_lattice
from wfst_asr.fsa import SymbolTable, ops, save
from wfst_asr.graphs import ctc_topo


def _exhaustive_best(lat_one, rows, lm_scale, wp):
    """(words, total) of the best lattice path under G's scores (G as rows)."""
    best = None
    for p in lref.lattice_paths(lat_one):
        g = lref.g_score(rows, p["words"])
        if g == -math.inf:
            continue
        tot = p["am"] + lm_scale * g - wp * p["nwords"]
        if best is None or tot > best[1]:
            best = (p["words"], tot)
    return best


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_same_g_gives_the_original_best_path(seed):
    c = make_case(seed)
    lat, G = c["lat"], c["G"]
    res = rescore_lattice(lat, G)
    assert res.lm_scale == c["lm_scale"] and res.word_penalty == c["wp"]
    old, new = best_paths(lat), best_paths(res)
    assert best_word_sequences(res) == best_word_sequences(lat)
    for b in range(lat.num_fsas):
        o, n = old[b], new[b]
        assert n.labels.tolist() == o.labels.tolist()
        assert n.frame_idx.tolist() == o.frame_idx.tolist()
        assert torch.equal(n.am_scores, o.am_scores)
        # graph = ctc_topo o G: the graph scores of a path are G's
        assert float(n.lm_scores.double().sum()) == pytest.approx(
            float(o.lm_scores.double().sum()), abs=1e-5)
        assert float(n.scores.double().sum()) == pytest.approx(
            float(o.scores.double().sum()), abs=1e-4)


@pytest.mark.parametrize("seed", [5, 6, 7, 8])
def test_g_forbidding_the_best_path(seed):
    c = make_case(seed)
    lat, rows, V = c["lat"], c["rows"], c["V"]
    s, wp = c["lm_scale"], c["wp"]
    for b in range(lat.num_fsas):
        words = best_word_sequences(lat[b])[0]
        # forbid the best path's first bigram (or its first word, or the empty sentence)
        if len(words) >= 2:
            drop = (words[0], words[1])
        elif words:
            drop = (0, words[0])
        else:
            drop = (0, -1)
        rows2 = [r for r in rows if (r[0], r[2]) != drop]
        G2 = lref.g_from_rows(rows2, V)
        res = rescore_lattice(lat[b], G2)
        assert lref.g_score(rows2, words) == -math.inf
        want = _exhaustive_best(lat[b], rows2, s, wp)
        got = best_word_sequences(res)[0]
        assert got != words
        assert got == want[0]
        assert float(best_paths(res).scores.double().sum()) == pytest.approx(want[1], abs=1e-4)


def test_new_g_and_scales_against_exhaustive_search():
    c = make_case(9)
    gen = torch.Generator().manual_seed(99)
    rows = lref.bigram_g_rows(c["V"], gen)
    G = lref.g_from_rows(rows, c["V"])
    for s, wp in ((1.0, 0.0), (0.3, -1.0)):
        res = rescore_lattice(c["lat"], G, lm_scale=s, word_penalty=wp)
        for b in range(2):
            want = _exhaustive_best(c["lat"][b], rows, s, wp)
            assert best_word_sequences(res)[b] == want[0]
            assert float(best_paths(res)[b].scores.double().sum()) == pytest.approx(
                want[1], abs=1e-4)


def test_g_accepting_nothing_of_the_lattice_gives_an_empty_lattice():
    from wfst_asr.fsa import linear_fsa

    c = make_case(10)
    res = rescore_lattice(c["lat"], linear_fsa([1] * 7))  # 7 words do not fit into 5 frames
    assert res.num_states_per_fsa.tolist() == [0, 0]


ARPA = """\\data\\
ngram 1=5
ngram 2=3

\\1-grams:
-0.5 </s>
-99 <s> -0.3
-0.7 a -0.2
-0.6 b -0.1
-0.9 c -0.4

\\2-grams:
-0.2 <s> a
-0.4 a b
-0.3 b </s>

\\end\\
"""


def test_load_g_from_arpa_pt_and_kaldilm(tmp_path):
    words = SymbolTable.from_str("<eps> 0\na 1\nb 2\nc 3\n#0 4\n<s> 5\n</s> 6\n")
    (tmp_path / "lm.arpa").write_text(ARPA)
    words.to_file(tmp_path / "words.txt")
    g_arpa = load_g(tmp_path / "lm.arpa", words=words)
    assert not bool((g_arpa.labels == 0).any())
    from wfst_asr.graphs.lm import arpa_to_fst
    g_k = arpa_to_fst(tmp_path / "lm.arpa", tmp_path / "words.txt", tmp_path / "G.fst")
    g_prep = prepare_g(g_k)
    assert not bool((g_prep.labels == 0).any()) and not g_prep.has_attr("aux_labels")
    assert g_prep.labels_sym == words
    g_pt = load_g(tmp_path / "G.pt")
    assert g_pt.labels_sym == words
    # decode with ctc_topo o G (arpa), rescore with the kaldilm G: words a/b/c only
    graph = ops.connect(ops.compose(ctc_topo(3), g_arpa))
    lp = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    lat = get_lattice(graph, lp, [6], search_beam=1e4, output_beam=1e4)
    for g in (g_arpa, g_pt):
        res = rescore_lattice(lat, g, prepared=True, words=words)
        assert res.num_arcs > 0
    other = SymbolTable.from_str("<eps> 0\nx 1\nb 2\nc 3\n#0 4\n<s> 5\n</s> 6\n")
    with pytest.raises(ValueError, match="word table differs"):
        rescore_lattice(lat, g_pt, prepared=True, words=other)
    with pytest.raises(ValueError, match="words.txt"):
        load_g(tmp_path / "lm.arpa")
    save(g_arpa, tmp_path / "g2.pt")
    assert load_g(tmp_path / "g2.pt").num_arcs == g_arpa.num_arcs


@pytest.mark.parametrize("seed", [11, 12])
def test_oracle(seed):
    c = make_case(seed, T=6)
    lat = c["lat"]
    gen = torch.Generator().manual_seed(seed)
    for b in range(lat.num_fsas):
        paths = lref.lattice_paths(lat[b])
        seqs = {tuple(p["words"]) for p in paths}
        one_best = best_word_sequences(lat[b])[0]
        for _ in range(4):
            n = int(torch.randint(0, 5, (1,), generator=gen))
            ref = torch.randint(1, c["V"] + 2, (n,), generator=gen).tolist()  # V+1: unseen word
            want = min(lref.edit_distance(ref, list(s)) for s in seqs)
            e1, h1 = oracle(lat[b], ref, method="exhaustive")
            e2, h2 = oracle(lat[b], ref, method="compose")
            e3, h3 = oracle(lat[b], ref, method="dp")
            assert e1 == e2 == e3 == want
            assert tuple(h1) in seqs and tuple(h2) in seqs and tuple(h3) in seqs
            for h in (h1, h2, h3):
                assert lref.edit_distance(ref, h) == want
            assert want <= lref.edit_distance(ref, one_best)
    # word_map: map word 1 to 2 and delete word 3
    for method in ("compose", "dp"):
        e, h = oracle(lat[0], [2, 2], method=method, word_map={1: 2, 3: 0})
        assert set(h) <= {2} and e == lref.edit_distance([2, 2], h)


def test_oracle_empty_lattice():
    from tests.test_lattice import BIG
    from wfst_asr.fsa import linear_fsa

    graph = ops.connect(ops.compose(ctc_topo(2), linear_fsa([1, 2])))
    lat = get_lattice(graph, torch.randn(1, 3, 3).log_softmax(-1), [1], search_beam=BIG,
                      output_beam=BIG)
    assert oracle(lat[0], [1, 2, 1]) == (3, [])
    assert oracle(lat[0], [1, 2, 1], method="dp") == (3, [])


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_oracle_dp_on_larger_lattices(seed):
    """The DP against brute force on lattices with more paths than the default max_paths
    (auto picks the DP there), with word maps and references of every length up to 6."""
    c = make_case(seed, T=9)
    lat = c["lat"]
    gen = torch.Generator().manual_seed(seed)
    for b in range(lat.num_fsas):
        paths = lref.lattice_paths(lat[b])
        wmap = {1: 2} if b % 2 else None
        seqs = {tuple(wmap.get(w, w) if wmap else w for w in p["words"]) for p in paths}
        for n in range(7):
            ref = torch.randint(1, c["V"] + 2, (n,), generator=gen).tolist()
            want = min(lref.edit_distance(ref, list(s)) for s in seqs)
            e, h = oracle(lat[b], ref, method="auto" if len(paths) > 1000 else "dp",
                          word_map=wmap)
            assert e == want and tuple(h) in seqs and lref.edit_distance(ref, h) == want
