"""N-best lists (wfst_asr.decode.nbest) against exhaustive enumeration of tiny lattices."""

from __future__ import annotations

import pytest
import torch

from tests import lattice_reference as lref
from tests.test_lattice import make_case
from wfst_asr.decode.lattice import best_paths, best_word_sequences, rescale
from wfst_asr.decode.nbest import (
    Nbest,
    add_flat_scores,
    constrained_best_paths,
    flatten,
    nbest,
    nbest_one,
)


@pytest.fixture(scope="module", params=[3, 4])
def case(request):
    return make_case(request.param, T=5)


@pytest.mark.parametrize("k", [1, 4, 1000])
def test_nbest_against_enumeration(case, k):
    lat = case["lat"]
    s, wp = case["lm_scale"], case["wp"]
    lists = nbest(lat, k)
    assert len(lists) == lat.num_fsas
    for b, nb in enumerate(lists):
        want = lref.best_per_word_sequence(lref.lattice_paths(lat[b]), s, wp)[:k]
        assert len(nb) == min(k, len(want))
        # distinct, sorted, top = the 1-best
        assert len({tuple(w) for w in nb.word_seqs}) == len(nb)
        tot = nb.total_scores()
        assert all(tot[i] >= tot[i + 1] for i in range(len(nb) - 1))
        assert nb.word_seqs[0] == best_word_sequences(lat[b])[0]
        path = best_paths(lat[b])
        assert float(tot[0]) == pytest.approx(float(path.scores.double().sum()), abs=1e-4)
        # the same sequences and score parts as the enumeration
        assert [tuple(w) for w in nb.word_seqs] == [w for w, _ in want]
        for i, (_, p) in enumerate(want):
            assert float(nb.am_scores[i]) == pytest.approx(p["am"], abs=1e-5)
            assert float(nb.lm_scores[i]) == pytest.approx(p["lm"], abs=1e-5)
            # the entry's path is a path of the lattice with those words and scores
            al = nb.alignment(lat[b], i)
            assert [w for w, lab in zip(al["aux_labels"], al["labels"]) if w > 0 and lab >= 0] \
                == nb.word_seqs[i]
            assert al["frame_idx"] == list(range(case["lens"][b] + 1))


def test_nbest_follows_rescaling(case):
    lat = rescale(case["lat"], 2.0, 1.0)
    nb = nbest_one(lat[0], 5)
    assert nb.lm_scale == 2.0 and nb.word_penalty == 1.0
    want = lref.best_per_word_sequence(lref.lattice_paths(lat[0]), 2.0, 1.0)[:5]
    assert [tuple(w) for w in nb.word_seqs] == [w for w, _ in want]


def test_constrained_best_paths(case):
    one = case["lat"][0]
    nb = nbest_one(one, 3)
    got = constrained_best_paths(one, nb.word_seqs + [[1, 1, 1, 1, 1, 1, 1]])
    assert got[:3] == nb.arc_paths
    assert got[3] is None  # 7 words cannot fit into 5 frames


def test_nbest_scores_for_a_language_model(case):
    lists = nbest(case["lat"], 3)
    seqs, offsets = flatten(lists)
    assert offsets == [0, len(lists[0]), len(lists[0]) + len(lists[1])]
    assert seqs == lists[0].word_seqs + lists[1].word_seqs
    fake = [-float(len(w)) for w in seqs]  # an "LM" that likes short sequences
    add_flat_scores(lists, "nnlm", fake, offsets)
    nb = lists[0]
    assert nb.extra_scores["nnlm"].tolist() == fake[:offsets[1]]
    base = nb.total_scores()
    with_lm = nb.total_scores(weights={"nnlm": 0.5})
    assert torch.allclose(with_lm, base + 0.5 * nb.extra_scores["nnlm"])
    heavy = nb.reranked(weights={"nnlm": 100.0})
    assert len(heavy.word_seqs[0]) == min(len(w) for w in nb.word_seqs)
    assert heavy.best(weights={"nnlm": 100.0}) == heavy.word_seqs[0]
    with pytest.raises(KeyError):
        nb.total_scores(weights={"missing": 1.0})
    with pytest.raises(ValueError):
        nb.add_scores("x", [1.0] * (len(nb) + 1))


def test_empty():
    from tests.test_lattice import BIG
    from wfst_asr.decode.lattice import get_lattice
    from wfst_asr.fsa import linear_fsa, ops
    from wfst_asr.graphs import ctc_topo

    graph = ops.connect(ops.compose(ctc_topo(2), linear_fsa([1, 2])))
    lat = get_lattice(graph, torch.randn(1, 3, 3).log_softmax(-1), [1], search_beam=BIG,
                      output_beam=BIG)
    nb = nbest_one(lat[0], 5)
    assert isinstance(nb, Nbest) and len(nb) == 0 and nb.best() == []


@pytest.mark.parametrize("beam", [0.0, 0.5, None])
def test_nbest_beam_widening_is_exact(case, beam):
    """Whatever the first pruning beam, the list is the exhaustive k-best (widened until
    proven)."""
    lat = case["lat"]
    for b in range(lat.num_fsas):
        nb = nbest_one(lat[b], 6, beam=beam)
        assert nb.exact
        want = lref.best_per_word_sequence(lref.lattice_paths(lat[b]), case["lm_scale"],
                                           case["wp"])[:6]
        assert [tuple(w) for w in nb.word_seqs] == [w for w, _ in want]


def test_nbest_max_states(case):
    from wfst_asr.decode.lattice import determinize_words

    one = case["lat"][0]
    with pytest.raises(RuntimeError, match="max_states"):
        nbest_one(one, 5, beam=10.0, max_states=2)
    # a first beam small enough to determinize, then too many states: not proven exact
    small = determinize_words(one, beam=0.0)[0].num_states
    nb = nbest_one(one, 1000, beam=0.0, max_states=small + 1)
    assert not nb.exact and len(nb) >= 1
    # every entry still has its true best-path scores
    want = dict(lref.best_per_word_sequence(lref.lattice_paths(one), case["lm_scale"],
                                            case["wp"]))
    for i, w in enumerate(nb.word_seqs):
        assert float(nb.am_scores[i]) == pytest.approx(want[tuple(w)]["am"], abs=1e-5)
