"""Whole-lattice rescoring with an n-gram queried on demand (wfst_asr.decode.ondemand): the
same rescored lattices as the acceptor-based path (rescore_lattice with ngram_acceptor), path
by path equal to the LM's sentence scores, and fast on a 10k-word LM."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tests import lattice_reference as lref
from tests.test_lattice import make_case
from wfst_asr.decode.lattice import best_paths, best_word_sequences
from wfst_asr.decode.ondemand import (
    OnDemandNgram,
    acceptor_arcs_bound,
    load_rescoring_lm,
    rescore_lattice_ngram,
)
from wfst_asr.decode.pipeline import rescore_lattices
from wfst_asr.decode.rescore import rescore_lattice
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.graphs.lm import ngram_acceptor
from wfst_asr.graphs.ngram import NgramModel, estimate_ngram

V = 3  # words of make_case's lattices: ids 1..3
WORDS = SymbolTable.from_str("<eps> 0\na 1\nb 2\nc 3\n#0 4\n<s> 5\n</s> 6\n")
LN10 = math.log(10.0)


def _model(seed: int, order: int = 3, letters: str = "abc") -> NgramModel:
    gen = torch.Generator().manual_seed(seed)
    sents = []
    for _ in range(25):
        n = int(torch.randint(1, 6, (1,), generator=gen))
        sents.append([letters[int(i)] for i in torch.randint(0, len(letters), (n,),
                                                               generator=gen)])
    return estimate_ngram(sents, order, vocab=list(letters))


def _path_table(one) -> list[tuple[tuple[int, ...], float, float]]:
    """Sorted (words, am, lm) of every path of ONE lattice."""
    return sorted((tuple(p["words"]), round(p["am"], 3), round(p["lm"], 3))
                  for p in lref.lattice_paths(one))


@pytest.mark.parametrize("seed", [5, 6, 7])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_equals_the_acceptor_based_rescoring(seed, order):
    c = make_case(seed, T=7)
    m = _model(seed, order)
    want = rescore_lattice(c["lat"], ngram_acceptor(m, WORDS), lm_scale=0.8, word_penalty=0.2)
    got = rescore_lattice_ngram(c["lat"], OnDemandNgram(m, WORDS), lm_scale=0.8,
                                word_penalty=0.2)
    assert (got.lm_scale, got.word_penalty) == (0.8, 0.2)
    assert got.num_arcs == want.num_arcs
    assert got.num_states_per_fsa.tolist() == want.num_states_per_fsa.tolist()
    assert best_word_sequences(got) == best_word_sequences(want)
    bg, bw = best_paths(got), best_paths(want)
    for b in range(c["lat"].num_fsas):
        assert bg[b].labels.tolist() == bw[b].labels.tolist()
        assert bg[b].frame_idx.tolist() == bw[b].frame_idx.tolist()
        assert float(bg[b].scores.double().sum()) == pytest.approx(
            float(bw[b].scores.double().sum()), abs=1e-4)
        assert _path_table(got[b]) == _path_table(want[b])
    got.state_levels()  # acyclic


@pytest.mark.parametrize("seed", [5, 8])
def test_every_path_scores_its_sentence(seed):
    c = make_case(seed, T=6)
    m = _model(seed + 1, order=3)
    res = rescore_lattice_ngram(c["lat"], OnDemandNgram(m, WORDS))
    for b in range(c["lat"].num_fsas):
        paths = lref.lattice_paths(res[b])
        old = lref.lattice_paths(c["lat"][b])
        assert len(paths) == len(old)
        assert sorted((tuple(p["words"]), round(p["am"], 4)) for p in paths) == \
            sorted((tuple(p["words"]), round(p["am"], 4)) for p in old)
        for p in paths:
            want = LN10 * m.sentence_log10_prob(["abc"[w - 1] for w in p["words"]])
            assert p["lm"] == pytest.approx(want, abs=1e-4)


def test_words_outside_the_lm_remove_their_paths():
    c = make_case(6, T=6)
    m = _model(3, order=2, letters="ab")  # no "c" (id 3)
    lm = OnDemandNgram(m, WORDS)
    res = rescore_lattice_ngram(c["lat"], lm)
    for b in range(c["lat"].num_fsas):
        kept = {tuple(p["words"]) for p in lref.lattice_paths(res[b])}
        old = {tuple(p["words"]) for p in lref.lattice_paths(c["lat"][b])}
        assert kept == {w for w in old if 3 not in w}
    # an LM of "a" alone: lattices without an all-"a" path are skipped and counted
    lat = c["lat"]
    lats = {f"u{b}": lat[b] for b in range(lat.num_fsas)}
    out, bad = rescore_lattices(lats, OnDemandNgram(_model(3, 2, "a"), WORDS),
                                      on_skip=None)
    n_empty = sum(1 for b in range(lat.num_fsas)
                  if not any(set(p["words"]) <= {1} for p in lref.lattice_paths(lat[b])))
    assert len(out) + bad["no-path-in-G"] == lat.num_fsas
    assert bad["no-path-in-G"] == n_empty


def _random_lattice(num_words: int, T: int = 100, K: int = 6, fanout: int = 3,
                    seed: int = 0) -> Fsa:
    """A frame-synchronous lattice: K states per frame, ``fanout`` arcs from each to the next
    frame, random words (a third epsilon), final arcs from the last frame."""
    gen = torch.Generator().manual_seed(seed)
    rows, aux, frm = [], [], []
    state = lambda t, k: 0 if t == 0 else 1 + (t - 1) * K + k
    for t in range(T):
        for k in range(1 if t == 0 else K):
            for d in torch.randint(0, K, (fanout,), generator=gen).tolist():
                w = int(torch.randint(1, num_words + 1, (1,), generator=gen))
                rows.append((state(t, k), state(t + 1, d), 1 + (w % 5)))
                aux.append(0 if w % 3 == 0 else w)
                frm.append(t)
    final = 1 + T * K
    for k in range(K):
        rows.append((state(T, k), final, -1))
        aux.append(-1)
        frm.append(T)
    rows_t = torch.tensor(rows, dtype=torch.int32)
    order = torch.argsort(rows_t[:, 0].long(), stable=True)
    n = len(rows)
    am = torch.randn(n, generator=gen)
    am[rows_t[:, 2] == -1] = 0.0
    lat = Fsa(rows_t[order], am[order].clone(), num_states=final + 1,
              aux_labels=torch.tensor(aux, dtype=torch.int32)[order],
              am_scores=am[order].clone(), lm_scores=torch.zeros(n),
              frame_idx=torch.tensor(frm, dtype=torch.int32)[order])
    return lat


def test_large_vocabulary_is_fast_and_dispatched_on_demand(tmp_path):
    nw = 10_000
    gen = torch.Generator().manual_seed(1)
    vocab = [f"w{i}" for i in range(1, nw + 1)]
    toks = torch.randint(0, nw, (40_000,), generator=gen).tolist()
    sents = [[vocab[i] for i in toks[k:k + 20]] for k in range(0, len(toks), 20)]
    m = estimate_ngram(sents, 3, vocab=vocab)
    assert acceptor_arcs_bound(m) > 2_000_000
    arpa = tmp_path / "lm.arpa"
    m.write_arpa(arpa)
    table = SymbolTable.from_str("".join(f"{w} {i}\n" for i, w in enumerate(["<eps>", *vocab])))
    t0 = time.perf_counter()
    lm = load_rescoring_lm(arpa, table)
    assert isinstance(lm, OnDemandNgram)
    lat = _random_lattice(nw)
    assert 1500 <= lat.num_arcs <= 2500
    res = rescore_lattice_ngram(lat, lm)
    elapsed = time.perf_counter() - t0
    assert elapsed < 15.0, elapsed
    assert res.num_arcs >= lat.num_arcs
    # the best path's LM score is its sentence's (ARPA values read back: 7 digits)
    words = best_word_sequences(res)[0]
    lm_sum = float(best_paths(res)[0].lm_scores.double().sum())
    assert lm_sum == pytest.approx(
        LN10 * lm.model.sentence_log10_prob([f"w{w}" for w in words]), abs=1e-3)
    # a small ARPA LM keeps the acceptor path (G)
    small = tmp_path / "small.arpa"
    _model(0, 2).write_arpa(small)
    assert isinstance(load_rescoring_lm(small, WORDS), Fsa)
