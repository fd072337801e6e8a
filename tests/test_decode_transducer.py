"""Transducer search in a graph (wfst_asr.decode.transducer) against references written here.

The reference enumerates every one-label-per-frame alignment of a short utterance, scores it
with the model one step at a time (the decoder on the last ``context_size`` labels), and
scores its label sequence in the graph by a Viterbi pass over the graph's arcs written with
plain dicts; the best (alignment, graph path) is what fast beam search must find when nothing
is pruned. Graphs: the trivial graph, random non-deterministic epsilon-free graphs, a graph
without some label, and a hand-made bigram.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from wfst_asr.decode.transducer import (
    fast_beam_search,
    fast_beam_search_one_best,
    greedy_search,
)
from wfst_asr.fsa import Fsa, get_tot_scores, shortest_path
from wfst_asr.graphs import trivial_graph
from wfst_asr.models import Joiner, StatelessDecoder

NEG_INF = float("-inf")
WIDE = {"beam": 1e6, "max_states": 10 ** 6, "max_contexts": 10 ** 6}


def _model(V: int, seed: int, blank_bias: float = 0.0, bias: dict[int, float] | None = None):
    torch.manual_seed(seed)
    decoder, joiner = StatelessDecoder(V, 4), Joiner(5, 4, 6, V)
    with torch.no_grad():
        joiner.output_linear.bias[0] += blank_bias
        for k, v in (bias or {}).items():
            joiner.output_linear.bias[k] += v
    return decoder.eval(), joiner.eval()


def _graph_arcs(graph: Fsa):
    """``([(src, dst, label, score, aux)], {state: final score})`` of a single FSA."""
    arcs, final = [], {}
    aux = graph.aux_labels.tolist() if graph.has_attr("aux_labels") else graph.labels.tolist()
    for (s, d, lab), sc, a in zip(graph.arcs.tolist(), graph.scores.tolist(), aux):
        if lab == -1:
            final[s] = max(final.get(s, NEG_INF), sc)
        else:
            arcs.append((s, d, lab, sc, a))
    return arcs, final


def _graph_best(arcs, final, seq):
    """Best graph score of the label sequence ``seq`` (and its outputs), or -inf."""
    cur = {0: (0.0, ())}
    for v in seq:
        nxt: dict[int, tuple[float, tuple]] = {}
        for s, d, lab, sc, a in arcs:
            if lab == v and s in cur:
                cand = (cur[s][0] + sc, cur[s][1] + ((a,) if a else ()))
                if d not in nxt or cand[0] > nxt[d][0]:
                    nxt[d] = cand
        cur = nxt
    best = (NEG_INF, ())
    for s, (sc, out) in cur.items():
        if s in final and sc + final[s] > best[0]:
            best = (sc + final[s], out)
    return best


@torch.no_grad()
def ref_search(decoder, joiner, enc, T, graph):
    """(best total, labels, graph outputs) over every alignment of ``enc[:T]`` in ``graph``."""
    V = joiner.output_linear.out_features
    C = decoder.context_size
    arcs, final = _graph_arcs(graph)
    cache: dict[tuple, list[float]] = {}

    def lp(t, ctx):
        if (t, ctx) not in cache:
            d = decoder(torch.tensor([list(ctx)]), need_pad=False)[0, -1]
            cache[(t, ctx)] = joiner(enc[t], d).log_softmax(-1).double().tolist()
        return cache[(t, ctx)]

    best = (NEG_INF, None, None)
    for outs in itertools.product(range(V), repeat=T):
        seq, am = [], 0.0
        for t, v in enumerate(outs):
            am += lp(t, tuple(([0] * C + seq)[-C:]))[v]
            if v:
                seq.append(v)
        g, out = _graph_best(arcs, final, seq)
        if am + g > best[0]:
            best = (am + g, seq, list(out))
    return best


def _random_graph(gen: torch.Generator, V: int, num_states: int = 3, num_arcs: int = 9,
                  forbid: int | None = None) -> Fsa:
    """A random epsilon-free graph over labels 1..V-1 (minus ``forbid``), with cycles, random
    scores, outputs ``label + 10`` and some final states (state 0 always)."""
    labels = [v for v in range(1, V) if v != forbid]
    rows = []
    for _ in range(num_arcs):
        s = int(torch.randint(num_states, (1,), generator=gen))
        d = int(torch.randint(num_states, (1,), generator=gen))
        v = labels[int(torch.randint(len(labels), (1,), generator=gen))]
        rows.append((s, d, v, float(torch.randn(1, generator=gen))))
    for s in range(num_states):
        if s == 0 or bool(torch.rand(1, generator=gen) < 0.5):
            rows.append((s, num_states, -1, float(torch.randn(1, generator=gen))))
    arcs = torch.tensor([r[:3] for r in rows], dtype=torch.int32)
    lab = arcs[:, 2].clone()
    return Fsa(arcs, torch.tensor([r[3] for r in rows]), num_states=num_states + 1,
               aux_labels=torch.where(lab > 0, lab + 10, lab))


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trivial_graph_wide_beam_is_exhaustive(seed):
    V, T = 3, 4
    decoder, joiner = _model(V, seed)
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(2, T + 1, 5, generator=g) * 3
    lens = [T, T - 1]
    graph = trivial_graph(V)
    lat = fast_beam_search(decoder, joiner, enc, lens, graph, **WIDE)
    best = shortest_path(lat)
    totals = get_tot_scores(best, log_semiring=False).tolist()
    hyps = fast_beam_search_one_best(decoder, joiner, enc, lens, graph, **WIDE)
    for b in range(2):
        score, seq, _ = ref_search(decoder, joiner, enc[b], lens[b], graph)
        assert hyps[b] == seq
        assert totals[b] == pytest.approx(score, abs=1e-4)
    # the default graph is the trivial one
    assert fast_beam_search_one_best(decoder, joiner, enc, lens, **WIDE) == hyps


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_graph_wide_beam_is_exhaustive(seed):
    V, T = 4, 4
    decoder, joiner = _model(V, seed)
    g = torch.Generator().manual_seed(100 + seed)
    graph = _random_graph(g, V, num_arcs=12)
    enc = torch.randn(3, T, 5, generator=g) * 3
    lens = [T, 3, 2]
    lat = fast_beam_search(decoder, joiner, enc, lens, graph, **WIDE)
    totals = get_tot_scores(shortest_path(lat), log_semiring=False).tolist()
    toks = fast_beam_search_one_best(decoder, joiner, enc, lens, graph, **WIDE)
    outs = fast_beam_search_one_best(decoder, joiner, enc, lens, graph, output="aux_labels",
                                     **WIDE)
    for b in range(3):
        score, seq, out = ref_search(decoder, joiner, enc[b], lens[b], graph)
        if score == NEG_INF:  # no label sequence of <= T labels reaches a final state
            assert toks[b] == [] and math.isinf(totals[b])
            continue
        assert toks[b] == seq
        assert outs[b] == out == [v + 10 for v in seq]
        assert totals[b] == pytest.approx(score, abs=1e-4)


def test_forbidden_label_never_appears():
    V, T = 5, 12
    decoder, joiner = _model(V, 7, blank_bias=-1.0, bias={2: 3.0})  # the model loves label 2
    g = torch.Generator().manual_seed(5)
    enc = torch.randn(3, T, 5, generator=g)
    lens = [T, 9, 5]
    free = fast_beam_search_one_best(decoder, joiner, enc, lens, trivial_graph(V))
    assert all(2 in h for h in free)
    graph = _random_graph(g, V, num_states=3, num_arcs=12, forbid=2)
    for kw in ({}, {"beam": 2.0, "max_states": 2, "max_contexts": 1}, WIDE):
        hyps = fast_beam_search_one_best(decoder, joiner, enc, lens, graph, **kw)
        assert all(2 not in h for h in hyps)
        assert any(h for h in hyps)


def test_bigram_graph_scores_are_added():
    """A one-state-per-last-label bigram in which 1 -> 1 costs a lot: with a large graph
    weight the repeat disappears from the best path, and the lattice total is exactly the
    acoustic score of its alignment plus the graph scores of its labels."""
    V, T = 3, 6
    decoder, joiner = _model(V, 3, blank_bias=-2.0, bias={1: 2.0})
    g = torch.Generator().manual_seed(3)
    enc = torch.randn(1, T, 5, generator=g)
    # states: 0 = start, 1 = after label 1, 2 = after label 2; final from every state
    rows = [(0, 1, 1, 0.0), (0, 2, 2, 0.0), (1, 1, 1, -50.0), (1, 2, 2, 0.0), (2, 1, 1, 0.0),
            (2, 2, 2, 0.0), (0, 3, -1, 0.0), (1, 3, -1, 0.0), (2, 3, -1, 0.0)]
    graph = Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
                torch.tensor([r[3] for r in rows]), num_states=4)
    free = fast_beam_search_one_best(decoder, joiner, enc, [T], trivial_graph(V), **WIDE)[0]
    assert any(a == b == 1 for a, b in itertools.pairwise(free))
    hyp = fast_beam_search_one_best(decoder, joiner, enc, [T], graph, **WIDE)[0]
    assert not any(a == b == 1 for a, b in itertools.pairwise(hyp))
    score, seq, _ = ref_search(decoder, joiner, enc[0], T, graph)
    assert hyp == seq
    lat = fast_beam_search(decoder, joiner, enc, [T], graph, **WIDE)
    assert get_tot_scores(shortest_path(lat), log_semiring=False).item() == pytest.approx(
        score, abs=1e-4)


def test_one_state_is_greedy():
    """``max_states=1`` keeps one hypothesis per frame: greedy search, one label per frame."""
    V = 5
    decoder, joiner = _model(V, 11, blank_bias=-1.0)
    g = torch.Generator().manual_seed(11)
    enc = torch.randn(4, 15, 5, generator=g) * 2
    lens = [15, 11, 4, 1]
    got = fast_beam_search_one_best(decoder, joiner, enc, lens, max_states=1, max_contexts=1)
    assert got == greedy_search(decoder, joiner, enc, lens, max_sym_per_frame=1)
    assert any(got)


def test_lattice_structure():
    V = 4
    decoder, joiner = _model(V, 2, blank_bias=-1.0)
    g = torch.Generator().manual_seed(2)
    enc = torch.randn(3, 7, 5, generator=g)
    lens = [7, 0, 4]
    lat = fast_beam_search(decoder, joiner, enc, lens, beam=3.0, max_states=4, max_contexts=2)
    assert lat.num_fsas == 3
    lat.set_state_levels(lat.state_levels(), check=True)  # the levels it set go up every arc
    splits = lat.arc_splits.tolist()
    for b in range(3):
        arcs = lat.arcs[splits[b]:splits[b + 1]]
        n = int(lat.num_states_per_fsa[b])
        assert int((arcs[:, 2] == -1).sum()) >= 1
        assert bool((arcs[arcs[:, 2] == -1][:, 1] == n - 1).all())
        assert bool((arcs[:, 0] < arcs[:, 1]).all())
        # at most max_states states per frame: n - 2 <= 4 * T
        assert n - 2 <= 4 * lens[b]
    aux = lat.aux_labels
    assert bool(((aux == lat.labels) | (lat.labels == 0)).all())
    # an utterance without frames: the start state, final at once
    assert fast_beam_search_one_best(decoder, joiner, enc, lens)[1] == []
    assert int(lat.num_states_per_fsa[1]) == 2


def test_bad_graphs_raise():
    decoder, joiner = _model(3, 0)
    enc = torch.randn(1, 3, 5)
    eps = Fsa(torch.tensor([[0, 0, 0], [0, 1, -1]], dtype=torch.int32), num_states=2)
    with pytest.raises(ValueError, match="epsilon"):
        fast_beam_search(decoder, joiner, enc, [3], eps)
    with pytest.raises(ValueError, match="disambiguation"):
        fast_beam_search(decoder, joiner, enc, [3], trivial_graph(4))
    with pytest.raises(ValueError, match="beam"):
        fast_beam_search(decoder, joiner, enc, [3], beam=0.0)
    with pytest.raises(ValueError, match="encoder_lens"):
        fast_beam_search(decoder, joiner, enc, [4])
    with pytest.raises(ValueError, match="output"):
        fast_beam_search_one_best(decoder, joiner, enc, [3], output="words")


def test_unique_rows_matches_torch_unique():
    from wfst_asr.decode.transducer import _unique_rows

    g = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randint(0, r, (200,), generator=g) for r in (3, 7, 5, 5)], 1)
    for radix in ([3, 7, 5, 5], [3, 7, 2 ** 40, 2 ** 40]):  # packed keys; the fallback
        got_rows, got_inv = _unique_rows(rows, radix)
        want_rows, want_inv = torch.unique(rows, dim=0, return_inverse=True)
        assert torch.equal(got_rows, want_rows) and torch.equal(got_inv, want_inv)
