"""Training graphs (wfst_asr.graphs.training) against independent references.

* CTC graphs: the sets of accepted input strings (length <= 6, tiny vocabulary) equal those of
  the OpenFst composition ``ctc_topo o linear(seq)`` made with kaldifst directly;
* word-level CTC graphs: a word with two pronunciations accepts exactly both token strings;
  totals equal a log-sum over the distinct token strings;
* LF-MMI: every numerator path (T <= 4) is a denominator path with the same score; num totals
  equal CTC totals plus the transcript's P score walked by hand; den total >= num total;
* HMM graphs: totals equal a brute-force sum over HMM state sequences, and gradcheck passes.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

try:
    from tests import reference as ref
except ImportError:  # pragma: no cover - run from inside tests/
    import reference as ref

from wfst_asr import _kaldi
from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    create_fsa_vec,
    from_kaldifst,
    get_tot_scores,
    intersect_dense,
    linear_fsa,
    to_kaldifst,
)
from wfst_asr.graphs import ctc_graph, ctc_topo, hmm_output_id, hmm_topo
from wfst_asr.graphs.training import (
    CtcTrainingGraphCompiler,
    HmmTrainingGraphCompiler,
    MmiTrainingGraphCompiler,
    compose_linear,
    ctc_graph_from_acceptors,
)

MAX_LEN = 6


# ---------------------------------------------------------------------------- helpers
def accepted(fsa: Fsa, max_len: int = MAX_LEN) -> set[tuple[int, ...]]:
    """Input strings of length <= max_len accepted by one FSA (subset simulation, plain Python).

    Every arc with a label >= 0 consumes one symbol; a string is accepted when a -1 arc leaves
    one of the states reached."""
    arcs = fsa.arcs.tolist()
    out: dict[int, list[tuple[int, int]]] = {}
    for s, d, lab in arcs:
        out.setdefault(s, []).append((lab, d))
    result: set[tuple[int, ...]] = set()
    frontier = {(): frozenset([0])}
    for _ in range(max_len + 1):
        nxt: dict[tuple[int, ...], set[int]] = {}
        for string, states in frontier.items():
            if any(lab == -1 for s in states for lab, _ in out.get(s, [])):
                result.add(string)
            for s in states:
                for lab, d in out.get(s, []):
                    if lab >= 0:
                        nxt.setdefault(string + (lab,), set()).add(d)
        frontier = {k: frozenset(v) for k, v in nxt.items()}
    return result


def kaldifst_ctc_composition(seq: list[int], max_token: int, modified: bool) -> Fsa:
    """ctc_topo (aux as output) o linear acceptor of seq, composed by kaldifst directly and
    projected on the input (as an acceptor)."""
    kfst = _kaldi.kaldifst()
    topo = to_kaldifst(ctc_topo(max_token, modified=modified), attach_symbols=False)
    lin = to_kaldifst(linear_fsa(seq), attach_symbols=False)
    kfst.arcsort(topo, sort_type="olabel")
    kfst.arcsort(lin, sort_type="ilabel")
    composed = kfst.compose(topo, lin)
    return from_kaldifst(composed, acceptor=False)


def dense(log_probs: torch.Tensor) -> DenseFsaVec:
    B, T, _ = log_probs.shape
    seg = torch.tensor([[i, 0, T] for i in range(B)], dtype=torch.int32)
    return DenseFsaVec(log_probs, seg)


def tot(graphs: Fsa, log_probs: torch.Tensor) -> torch.Tensor:
    double = log_probs.dtype == torch.float64
    return get_tot_scores(intersect_dense(graphs, dense(log_probs)), log_semiring=True,
                          use_double_scores=double)


SEQS = [[1, 2], [1, 1], [2, 1, 2], [1], []]


# ---------------------------------------------------------------------------- CTC
@pytest.mark.parametrize("modified", [False, True])
def test_ctc_graphs_equal_kaldifst_composition(modified):
    graphs = ctc_graph(SEQS, modified=modified)
    composed = compose_linear(ctc_topo(2, modified=modified), SEQS)
    via_acc = ctc_graph_from_acceptors(create_fsa_vec([linear_fsa(s) for s in SEQS]), modified)
    for i, seq in enumerate(SEQS):
        want = accepted(kaldifst_ctc_composition(seq, 2, modified))
        assert want, seq
        assert accepted(graphs[i]) == want
        assert accepted(composed[i]) == want
        assert accepted(via_acc[i]) == want
    if not modified:  # a repeat needs a blank: (1, 1) alone is not an alignment of [1, 1]
        assert (1, 1) not in accepted(graphs[1]) and (1, 0, 1) in accepted(graphs[1])


@pytest.mark.parametrize("modified", [False, True])
def test_ctc_graph_variants_same_totals(modified):
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(len(SEQS), 7, 3, generator=gen, dtype=torch.float64).log_softmax(-1)
    a = tot(ctc_graph(SEQS, modified=modified), lp)
    b = tot(compose_linear(ctc_topo(2, modified=modified), SEQS), lp)
    c = tot(ctc_graph_from_acceptors(create_fsa_vec([linear_fsa(s) for s in SEQS]), modified),
            lp)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("modified", [False, True])
def test_ctc_graph_shared_token_states_same_paths(modified):
    """``share_token_states``: one token state per (destination, token) keeps every path of
    the per-arc construction with its labels, words and score (enumerated over 5 frames, on a
    cyclic acceptor whose states are entered by several arcs with the same token, parallel
    arcs included), with fewer states."""
    rows = [(0, 1, 1, 7), (0, 1, 1, 8), (2, 1, 1, 0), (0, 2, 2, 9), (1, 2, 2, 0),
            (2, 2, 1, 9), (1, 0, 2, 7), (1, 3, -1, -1), (2, 3, -1, -1)]
    t = torch.tensor(rows, dtype=torch.int32)
    scores = torch.tensor([-0.1, -0.7, -0.2, -0.3, -0.4, -0.5, -0.6, -0.8, -0.9])
    G = Fsa(t[:, :3].contiguous(), scores, aux_labels=t[:, 3].contiguous()).as_vec()
    lp = torch.randn(5, 3, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64).log_softmax(-1)

    def paths(g):
        out = []
        for arcs, score in ref.enumerate_dense_paths(g, lp):
            out.append((tuple(int(g.labels[a]) for a in arcs),
                        tuple(int(g.aux_labels[a]) for a in arcs), round(score, 9)))
        return sorted(out)

    a = ctc_graph_from_acceptors(G, modified)
    b = ctc_graph_from_acceptors(G, modified, share_token_states=True)
    assert b.num_states < a.num_states
    assert paths(b[0]) == paths(a[0]) != []
    torch.testing.assert_close(tot(b, lp[None]), tot(a, lp[None]))


def test_ctc_compiler_single_pronunciation_words():
    lexicon = {1: [1, 2], 2: [[3]], 3: [2, 2]}
    comp = CtcTrainingGraphCompiler(lexicon)
    words = [[1, 2], [3], [2, 3, 1]]
    graphs = comp.compile(words)
    tokens = [[1, 2, 3], [2, 2], [3, 2, 2, 1, 2]]
    ref_graphs = ctc_graph(tokens)
    assert torch.equal(graphs.arcs, ref_graphs.arcs)
    assert torch.equal(graphs.aux_labels, ref_graphs.aux_labels)
    assert torch.equal(comp.compile(tokens, unit="tokens").arcs, ref_graphs.arcs)
    # aux="words": the words appear once each, in order, along every path
    wg = CtcTrainingGraphCompiler(lexicon, aux="words").compile(words)
    assert torch.equal(wg.arcs, ref_graphs.arcs)
    for i, w in enumerate(words):
        for arcs, _ in ref.enumerate_dense_paths(wg[i], torch.zeros(7, 4)):
            aux = [int(wg[i].aux_labels[a]) for a in arcs]
            assert [x for x in aux if x > 0] == w


def _two_pron_L() -> Fsa:
    """L by hand: word 1 -> [1 2] | [3], word 2 -> [2]; loop state 0 (tokens:words)."""
    rows = [(0, 1, 1, 1), (1, 0, 2, 0), (0, 0, 3, 1), (0, 0, 2, 2), (0, 2, -1, -1)]
    t = torch.tensor(rows, dtype=torch.int32)
    return Fsa(t[:, :3], num_states=3, aux_labels=t[:, 3])


@pytest.mark.parametrize("source", ["mapping", "L"])
@pytest.mark.parametrize("modified", [False, True])
def test_ctc_compiler_two_pronunciations(source, modified):
    lexicon = {1: [[1, 2], [3]], 2: [[2]]} if source == "mapping" else _two_pron_L()
    comp = CtcTrainingGraphCompiler(lexicon, modified=modified)
    graphs = comp.compile([[1, 2], [2, 1]])
    for i, alts in enumerate([[[1, 2, 2], [3, 2]], [[2, 1, 2], [2, 3]]]):
        want = set().union(*(accepted(ctc_graph([a], modified=modified)[0]) for a in alts))
        assert accepted(graphs[i]) == want


@pytest.mark.parametrize("aux", ["tokens", "words"])
def test_ctc_compiler_ambiguous_segmentation_counted_once(aux):
    # w1 = [1] | [1 2], w2 = [2 3] | [3]: "1 2 3" has two segmentations
    lexicon = {1: [[1], [1, 2]], 2: [[2, 3], [3]]}
    graphs = CtcTrainingGraphCompiler(lexicon, aux=aux).compile([[1, 2]])
    lp = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(5),
                     dtype=torch.float64).log_softmax(-1)
    strings = [[1, 2, 3], [1, 3], [1, 2, 2, 3]] + ([[1, 2, 3]] if aux == "words" else [])
    want = torch.logsumexp(torch.cat([tot(ctc_graph([s]), lp) for s in strings]), 0)
    torch.testing.assert_close(tot(graphs, lp)[0], want)
    if aux == "words":
        for arcs, _ in ref.enumerate_dense_paths(graphs[0], torch.zeros(5, 4)):
            assert [w for w in (int(graphs[0].aux_labels[a]) for a in arcs) if w > 0] == [1, 2]


def test_ctc_compiler_unknown_word():
    with pytest.raises(KeyError):
        CtcTrainingGraphCompiler({1: [1]}).compile([[1, 5]])


# ---------------------------------------------------------------------------- LF-MMI
def _tiny_P(seed: int) -> Fsa:
    """A deterministic bigram-like acceptor over tokens 1..2 with random scores."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for s in range(3):  # state = last token (0: start)
        for t in (1, 2):
            rows.append((s, t, t))
        rows.append((s, 3, -1))
    sc = torch.randn(len(rows), generator=gen) - 1.0
    return Fsa(torch.tensor(rows, dtype=torch.int32), sc, num_states=4)


def _walk_score(P: Fsa, seq: list[int]) -> float:
    arcs, sc = P.arcs.tolist(), P.scores.tolist()
    s, total = 0, 0.0
    for t in seq:
        (d, w), = [(a[1], x) for a, x in zip(arcs, sc) if a[0] == s and a[2] == t]
        s, total = d, total + w
    (w,), = [[x] for a, x in zip(arcs, sc) if a[0] == s and a[2] == -1]
    return total + w


def _paths_by_labels(graph: Fsa, T: int, V: int) -> dict[tuple[int, ...], list[float]]:
    out: dict[tuple[int, ...], list[float]] = {}
    for arcs, score in ref.enumerate_dense_paths(graph, torch.zeros(T, V)):
        out.setdefault(tuple(ref.path_labels(graph, arcs)), []).append(score)
    return out


@pytest.mark.parametrize("topo", ["ctc", "hmm"])
def test_mmi_num_paths_are_den_paths(topo):
    P = _tiny_P(1)
    H = "ctc" if topo == "ctc" else hmm_topo(2, 2)
    V = 3 if topo == "ctc" else 5
    comp = MmiTrainingGraphCompiler(P, topo=H, lm_scale=0.5)
    texts = [[1, 2], [2, 2], [1]]
    nums, den = comp.compile(texts)
    for T in range(1, 5):
        den_paths = _paths_by_labels(den, T, V)
        for i in range(len(texts)):
            for labels, scores in _paths_by_labels(nums[i], T, V).items():
                for s in scores:
                    assert any(abs(s - d) < 1e-5 for d in den_paths.get(labels, [])), labels
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(len(texts), 6, V, generator=gen).log_softmax(-1)
    num_tot = tot(nums, lp)
    den_tot = get_tot_scores(intersect_dense(den, dense(lp)), log_semiring=True)
    assert torch.isfinite(num_tot).all()
    assert (den_tot >= num_tot - 1e-5).all()
    if topo == "ctc":  # P o transcript is linear: num = CTC total + 0.5 * P(transcript)
        want = tot(ctc_graph(texts), lp) + torch.tensor(
            [0.5 * _walk_score(P, t) for t in texts])
        torch.testing.assert_close(num_tot, want)


def test_mmi_with_backoff_epsilon():
    # P with a back-off epsilon arc: made deterministic for both graphs
    rows = [(0, 1, 1, -0.5), (0, 2, 0, -1.0), (1, 1, 1, -0.7), (1, 2, 0, -0.3),
            (2, 1, 1, -1.2), (2, 2, 2, -0.9), (1, 3, -1, -0.1), (2, 3, -1, -0.4)]
    t = torch.tensor([r[:3] for r in rows], dtype=torch.int32)
    P = Fsa(t, torch.tensor([r[3] for r in rows]), num_states=4)
    nums, den = MmiTrainingGraphCompiler(P).compile([[1, 2], [2, 1, 1]])
    lp = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(6)).log_softmax(-1)
    num_tot = tot(nums, lp)
    den_tot = get_tot_scores(intersect_dense(den, dense(lp)), log_semiring=True)
    assert torch.isfinite(num_tot).all() and (den_tot >= num_tot - 1e-5).all()
    with pytest.raises(ValueError):
        MmiTrainingGraphCompiler(_tiny_P(0)).compile([[3]])


# ---------------------------------------------------------------------------- HMM
def test_hmm_topo_structure():
    H = hmm_topo(3, 2, math.log(0.25))
    assert H.num_states == 1 + 3 * 2 + 1
    labels = set(H.labels.tolist()) - {-1}
    assert labels == {hmm_output_id(t, j, 2) for t in (1, 2, 3) for j in (0, 1)}
    assert hmm_topo(4, 1).labels.max() == 4  # one state: output id = token


def brute_force_hmm_total(lp: torch.Tensor, seq: list[int], n: int, p: float) -> float:
    """Sum over HMM state sequences (k, j) per frame; lp [T, V] float64."""
    T = lp.shape[0]
    lstay, lfwd = math.log(p), math.log(1 - p)
    totals = []
    for states in itertools.product(range(len(seq) * n), repeat=T):
        if states[0] != 0 or states[-1] != len(seq) * n - 1:
            continue
        score = 0.0
        ok = True
        for a, b in itertools.pairwise(states):
            if b == a:
                score += lstay
            elif b == a + 1:
                score += lfwd
            else:
                ok = False
                break
        if not ok:
            continue
        score += lfwd  # the last state leaves to the final state
        for t, s in enumerate(states):
            score += float(lp[t, hmm_output_id(seq[s // n], s % n, n)])
        totals.append(score)
    return ref.logsumexp(totals)


@pytest.mark.parametrize("n", [1, 2])
def test_hmm_graph_totals_brute_force(n):
    p = 0.3
    H = hmm_topo(2, n, math.log(p))
    texts = [[1, 2], [2, 2], [1]]
    graphs = HmmTrainingGraphCompiler(H).compile(texts)
    gen = torch.Generator().manual_seed(n)
    V = 2 * n + 1
    for T in (4, 5):
        lp = torch.randn(len(texts), T, V, generator=gen, dtype=torch.float64).log_softmax(-1)
        got = tot(graphs, lp)
        want = [brute_force_hmm_total(lp[i], s, n, p) for i, s in enumerate(texts)]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_hmm_graph_gradcheck():
    H = hmm_topo(2, 2, math.log(0.4))
    graphs = HmmTrainingGraphCompiler(H).compile([[1, 2], [2]])
    gen = torch.Generator().manual_seed(3)
    lp = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: tot(graphs, x), (lp,))


@pytest.mark.parametrize("n", [1, 2])
def test_hmm_word_graphs_through_lexicon(n):
    """Word transcripts: one pronunciation per word gives exactly the token-transcript graph;
    a word with two pronunciations gives the log-sum of the brute-force totals of both token
    sequences (they are different strings, so no path is shared)."""
    p = 0.3
    H = hmm_topo(3, n, math.log(p))
    lexicon = {1: [1, 2], 2: [[3], [2, 3]], 3: [2]}
    comp = HmmTrainingGraphCompiler(H, lexicon=lexicon)
    gen = torch.Generator().manual_seed(10 + n)
    V = 3 * n + 1
    single = comp.compile([[1, 3]])
    assert torch.equal(single.arcs, HmmTrainingGraphCompiler(H).compile([[1, 2, 2]]).arcs)
    multi = comp.compile([[1, 2], [2]])
    for T in (4, 5):
        lp = torch.randn(2, T, V, generator=gen, dtype=torch.float64).log_softmax(-1)
        got = tot(multi, lp)
        want = [ref.logsumexp([brute_force_hmm_total(lp[0], [1, 2, 3], n, p),
                               brute_force_hmm_total(lp[0], [1, 2, 2, 3], n, p)]),
                ref.logsumexp([brute_force_hmm_total(lp[1], [3], n, p),
                               brute_force_hmm_total(lp[1], [2, 3], n, p)])]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    with pytest.raises(KeyError, match="not in the lexicon"):
        comp.compile([[7]])
