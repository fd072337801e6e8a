"""Forced-best scores (wfst_asr.decode.forced) against brute-force path enumeration."""

from __future__ import annotations

import math

import pytest
import torch
from reference import random_dense_graph, random_log_probs

from wfst_asr.decode import one_best, scale_graph
from wfst_asr.decode.forced import ForcedBest, classify_error


def _graph(seed: int):
    gen = torch.Generator().manual_seed(seed)
    g = random_dense_graph(gen, num_states=4, num_labels=3, arc_prob=0.6)
    aux = g.aux_labels.clone()
    aux[aux > 0] = aux[aux > 0] % 3  # words 1, 2 and many epsilons (0)
    g.aux_labels = aux
    return g, gen


def _brute_force(g, lp, n, lm_scale, wp):
    """{word tuple: best total} over every path of n frame arcs and a final arc, by
    enumeration (a path's words: its non-zero aux labels)."""
    arcs = g.arcs.tolist()
    sc = (g.scores.double() * lm_scale).tolist()
    aux = g.aux_labels.tolist()
    best: dict[tuple[int, ...], float] = {}

    def walk(state, t, words, total):
        for a, (s, d, lab) in enumerate(arcs):
            if s != state:
                continue
            w = words + ((aux[a],) if aux[a] > 0 else ())
            tot = total + sc[a] - wp * (aux[a] > 0)
            if lab == -1:
                if t == n:
                    best[w] = max(best.get(w, -math.inf), tot)
            elif t < n:
                walk(d, t + 1, w, tot + float(lp[t, lab]))

    walk(0, 0, (), 0.0)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_forced_best_equals_brute_force(seed):
    g, gen = _graph(seed)
    lm_scale, wp = 0.7, 0.5
    T = 4
    lp = random_log_probs(gen, 2, T, 3)
    lens = [T, T - 1]
    fb = ForcedBest(g, lm_scale=lm_scale, word_penalty=wp)
    for b in range(2):
        ref = _brute_force(g, lp[b].double(), lens[b], lm_scale, wp)
        # every sequence with a path, and a few without
        cands = list(ref) + [(1, 1, 1, 1, 1, 1), (2, 1, 2, 1, 2, 1, 2)]
        for ws in cands:
            got = fb.scores(lp[b:b + 1], [lens[b]], [list(ws)])[0].item()
            want = ref.get(ws, -math.inf)
            if want == -math.inf:
                assert got == -math.inf, (ws, got)
            else:
                assert got == pytest.approx(want, abs=1e-4), ws


def test_forced_best_of_exact_one_best_is_the_best_total():
    for seed in range(4):
        g, gen = _graph(seed)
        lp = random_log_probs(gen, 3, 5, 3)
        lens = [5, 5, 4]
        hyps = one_best(g, lp, lens, search_beam=1e9, lm_scale=1.3, word_penalty=-0.2,
                        max_active_states=10**6)
        fb = ForcedBest(g, lm_scale=1.3, word_penalty=-0.2)
        got = fb.scores(lp, lens, hyps)
        for b in range(3):
            ref = _brute_force(g, lp[b].double(), lens[b], 1.3, -0.2)
            if not ref:
                continue
            assert got[b].item() == pytest.approx(max(ref.values()), abs=1e-4)
            # no other word sequence scores higher than the exact search's
            other = fb.scores(lp[b:b + 1], [lens[b]], [list(max(ref, key=ref.get))])[0]
            assert other.item() <= got[b].item() + 1e-4


def test_forced_best_batched_rows_are_independent():
    g, gen = _graph(1)
    lp = random_log_probs(gen, 3, 5, 3)
    fb = ForcedBest(g, lm_scale=1.0)
    seqs = [[1], [2, 1], [1, 2]]
    batch = fb.scores(lp, [5, 4, 3], seqs)
    for b in range(3):
        one = fb.scores(lp[b:b + 1], [[5, 4, 3][b]], [seqs[b]])
        assert torch.equal(batch[b:b + 1], one) or (batch[b].isinf() and one[0].isinf())


def test_restrict_keeps_only_the_words():
    g, _ = _graph(2)
    fb = ForcedBest(g)
    r = fb.restrict([1, 2])
    if r is not None:
        words = r.aux_labels[r.aux_labels > 0].tolist()
        assert set(words) <= {1, 2}
    assert scale_graph(g, 1.0).num_arcs == g.num_arcs


def test_classify_error():
    assert classify_error([1, 2], [1, 2], -5.0, -5.0) == "correct"
    assert classify_error([1, 2], [1], -math.inf, -3.0) == "unreachable"
    assert classify_error([1, 2], [1], -2.0, -3.0) == "search"
    assert classify_error([1, 2], [1], -3.0, -2.0) == "model"
    assert classify_error([1, 2], [1], -3.0, -3.0) == "model"  # a tie is not a search error
