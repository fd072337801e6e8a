"""Differentiable beam-search decoding (``wfst_asr.losses.dbd``) and the sequence restriction it
rests on (``wfst_asr.fsa.sequences``), against brute-force enumeration of every path of a tiny
cyclic graph over every frame, finite differences in float64, and the exact full-sum value.
"""

from __future__ import annotations

import math

import pytest
import torch

from wfst_asr.fsa import DenseFsaVec, Fsa, get_tot_scores, intersect_dense
from wfst_asr.fsa.sequences import intersect_sequences
from wfst_asr.losses.dbd import dbd_totals

V = 3  # network outputs (0 = blank)


def _graph(seed: int, dtype=torch.float64) -> Fsa:
    """A small cyclic graph: 4 states + final, labels 0..V-1 consume a frame, words 0..2 on
    ``aux_labels`` (0: none), random scores; final arcs from states 2 and 3."""
    g = torch.Generator().manual_seed(seed)
    arcs = [(0, 0, 0, 0), (0, 1, 1, 1), (0, 2, 2, 2), (1, 1, 1, 0), (1, 2, 0, 0),
            (1, 3, 2, 1), (2, 2, 0, 0), (2, 0, 1, 2), (2, 3, 1, 0), (3, 3, 2, 0),
            (3, 1, 1, 2), (2, 4, -1, -1), (3, 4, -1, -1)]
    t = torch.tensor(arcs)
    scores = (torch.randn(len(arcs), generator=g) * 0.5).to(dtype)
    return Fsa(t[:, :3].to(torch.int32), scores, aux_labels=t[:, 3].to(torch.int32))


def _dense(T: list[int], seed: int, dtype=torch.float64) -> DenseFsaVec:
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(len(T), max(T), V, generator=g) * 1.5).to(dtype).log_softmax(-1)
    seg = torch.tensor([[b, 0, t] for b, t in enumerate(T)], dtype=torch.int32)
    return DenseFsaVec(lp, seg)


def _paths(graph: Fsa, T: int | None = None):
    """Every path of exactly ``T`` frame arcs then a final arc (any length for ``T=None``:
    an acyclic FSA): (arc list, words)."""
    arcs = graph.arcs.long().tolist()
    out = {}
    for a, (s, _d, _l) in enumerate(arcs):
        out.setdefault(s, []).append(a)

    def walk(state, t, acc):
        for a in out.get(state, []):
            _s, d, lab = arcs[a]
            if lab == -1:
                if T is None or t == T:
                    yield acc + [a]
            elif T is None or t < T:
                yield from walk(d, t + 1, acc + [a])

    aux = graph.aux_labels.long().tolist()
    for p in walk(0, 0, []):
        yield p, tuple(aux[a] for a in p[:-1] if aux[a] != 0)


def _brute(graph: Fsa, lp: torch.Tensor, T: int, words=None) -> float:
    """log-sum over the paths of ``graph`` on ``lp[:T]`` (those spelling ``words`` if given)."""
    labels = graph.labels.long().tolist()
    vals = [sum(float(graph.scores[a]) for a in p)
            + sum(float(lp[t, labels[a]]) for t, a in enumerate(p[:-1]))
            for p, w in _paths(graph, T) if words is None or w == tuple(words)]
    return torch.logsumexp(torch.tensor(vals, dtype=torch.float64), 0).item() if vals \
        else -math.inf


REFS = [[1], [1, 2], [2, 1], [2, 2, 1], [], [1, 1]]


@pytest.mark.parametrize("seed", [0, 1])
def test_intersect_sequences_matches_enumeration(seed):
    """``intersect_sequences`` of a cyclic graph, intersected with the frames: the total of
    every reference equals the log-sum over the enumerated paths spelling it (a reference no
    path spells gives an empty FSA, total -inf); every arc carries its source arc's label,
    score and attributes through ``arc_map``."""
    graph = _graph(seed)
    T = [5, 4, 6, 5, 3, 4]
    dense = _dense(T, seed)
    restricted = intersect_sequences(graph, REFS)
    assert restricted.num_fsas == len(REFS)
    src = restricted.arc_map
    assert torch.equal(restricted.labels, graph.labels[src])
    assert torch.equal(restricted.aux_labels, graph.aux_labels[src])
    assert torch.equal(restricted.scores, graph.scores[src])
    got = get_tot_scores(intersect_dense(restricted, dense), log_semiring=True,
                         use_double_scores=True)
    for i, (ref, t) in enumerate(zip(REFS, T)):
        want = _brute(graph, dense.log_probs[i], t, ref)
        assert (got[i].item() == want == -math.inf) or got[i].item() == pytest.approx(want,
                                                                                       abs=1e-9)
    assert any(math.isfinite(v) for v in got.tolist())


def test_intersect_sequences_on_a_lattice_and_errors():
    """On an acyclic lattice (one per sequence) the restriction keeps exactly the lattice
    paths that spell the sequence (enumerated here); bad arguments are refused."""
    graph = _graph(3)
    dense = _dense([5, 5, 5], 3)
    lat = intersect_dense(graph, dense, output_beam=1e9)  # a materialised, unpruned lattice
    refs = [[1, 2], [2], [1]]
    got = get_tot_scores(intersect_sequences(lat, refs), log_semiring=True,
                         use_double_scores=True)
    for i, ref in enumerate(refs):
        one = lat[i]
        vals = []
        for p, w in _paths(one):
            if w == tuple(ref):
                vals.append(sum(float(one.scores[a]) for a in p))
        want = torch.logsumexp(torch.tensor(vals, dtype=torch.float64), 0).item() \
            if vals else -math.inf
        assert got[i].item() == pytest.approx(want, abs=1e-9)
    with pytest.raises(ValueError, match="2 FSAs for 3 sequences"):
        intersect_sequences(_two(lat), refs)
    with pytest.raises(ValueError, match="no per-arc attribute 'words'"):
        intersect_sequences(graph, refs, attr="words")
    with pytest.raises(ValueError, match=">= 1"):
        intersect_sequences(graph, [[0]])


def _two(lat: Fsa) -> Fsa:
    from wfst_asr.fsa import create_fsa_vec
    return create_fsa_vec([lat[0], lat[1]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dbd_with_infinite_beams_is_the_exact_full_sum(seed):
    """Beams that keep every path: the loss is ``log sum_graph - log sum_{graph o ref}``
    computed by enumeration; every reference is inside the beam."""
    graph = _graph(seed)
    T = [5, 4, 6, 5]
    refs = [[1], [1, 2], [2, 1], [2, 2, 1]]
    dense = _dense(T, seed + 10)
    tot = dbd_totals(graph, dense, refs, search_beam=1e9, output_beam=1e9,
                     max_active_states=1000)
    for i, (ref, t) in enumerate(zip(refs, T)):
        den = _brute(graph, dense.log_probs[i], t)
        num = _brute(graph, dense.log_probs[i], t, ref)
        if not math.isfinite(num):
            continue
        assert tot.loss[i].item() == pytest.approx(den - num, abs=1e-9)
        assert tot.beam[i].item() == pytest.approx(den, abs=1e-9)
        assert tot.in_beam[i].item() == pytest.approx(num, abs=1e-9)
    # search_beam = inf: no search, the exact sum (intersect_dense), same values
    exact = dbd_totals(graph, dense, refs, search_beam=math.inf, output_beam=0.0)
    fin = torch.isfinite(tot.num)
    torch.testing.assert_close(exact.loss[fin], tot.loss[fin], rtol=0, atol=1e-9)


def test_dbd_union_and_monotone_convergence():
    """As the search beam grows, the union's total and the loss rise monotonically to the
    exact values; a narrow beam that misses the reference still counts all its paths (the
    forced reference), so ``den >= num`` and ``loss >= 0`` always."""
    graph = _graph(4)
    T = [8, 7]
    refs = [[2, 1, 2], [1, 2]]
    dense = _dense(T, 14)
    exact = [(_brute(graph, dense.log_probs[i], t) - _brute(graph, dense.log_probs[i], t, r))
             for i, (r, t) in enumerate(zip(refs, T))]
    prev = None
    losses = []
    for beam in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 1e9):
        tot = dbd_totals(graph, dense, refs, search_beam=beam, output_beam=beam,
                         max_active_states=1000)
        loss = tot.loss
        assert bool((loss >= -1e-9).all()) and bool((tot.den >= tot.num - 1e-9).all())
        if prev is not None:
            assert bool((loss >= prev - 1e-9).all()), (beam, loss, prev)
        prev = loss
        losses.append(loss)
    assert losses[-1].tolist() == pytest.approx(exact, abs=1e-9)
    assert bool((losses[0] < losses[-1] - 1e-3).any())  # the narrow beam did prune


def test_dbd_gradients_finite_differences_and_zero_outside():
    """float64 finite differences w.r.t. the log-probs and the graph scores at a finite beam
    (the pruning decisions do not move under the perturbation); graph arcs on no path of the
    lattice and of the reference graph get exactly zero gradient."""
    graph = _graph(5)
    T = [6, 5]
    refs = [[1, 2], [1, 1]]
    dense = _dense(T, 15)
    lp0 = dense.log_probs.detach().clone()
    sc0 = graph.scores.detach().clone()
    # at this beam the first reference is entirely out of the beam, the second partly in
    tot = dbd_totals(graph, dense, refs, search_beam=2.0, output_beam=2.0,
                     max_active_states=1000)
    assert tot.in_beam[0].item() == -math.inf and math.isfinite(tot.num[0].item())
    assert -math.inf < tot.in_beam[1].item() < tot.num[1].item() - 0.1

    def f(lp, sc):
        g = Fsa(graph.arcs, sc, aux_labels=graph.aux_labels)
        d = DenseFsaVec(lp, dense.segments)
        return dbd_totals(g, d, refs, search_beam=2.0, output_beam=2.0,
                          max_active_states=1000).loss.sum()

    lp = lp0.clone().requires_grad_(True)
    sc = sc0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (lp, sc), eps=1e-6, atol=1e-6)
    # a detour the search prunes: 0 -> 5 (word 3, score -30), a loop on 5, 5 -> 2; the final
    # state becomes 6. Reachable, on no reference path, outside the beam: zero gradient (with
    # beams that keep everything its gradient is tiny but not zero)
    arcs = graph.arcs.clone()
    arcs[:, 1] = torch.where(arcs[:, 1] == 4, 6, arcs[:, 1])
    arcs = torch.cat([arcs, torch.tensor([[0, 5, 1], [5, 5, 0], [5, 2, 2]], dtype=torch.int32)])
    aux = torch.cat([graph.aux_labels, torch.tensor([3, 0, 0], dtype=torch.int32)])
    extra = torch.tensor([-30.0, 0.0, 0.0], dtype=torch.float64)
    for beam, zero in ((2.0, True), (1e9, False)):
        scx = torch.cat([sc0, extra]).requires_grad_(True)
        gx = Fsa(arcs, scx, aux_labels=aux)
        lpx = lp0.clone().requires_grad_(True)
        loss = dbd_totals(gx, DenseFsaVec(lpx, dense.segments), refs, search_beam=beam,
                          output_beam=beam, max_active_states=1000).loss.sum()
        loss.backward()
        grad = scx.grad
        assert bool(torch.isfinite(grad).all()) and bool(torch.isfinite(lpx.grad).all())
        assert (grad[-3:].abs().max().item() == 0.0) == zero, (beam, grad[-3:])
        assert grad[:-3].abs().max().item() > 0.0


def test_dbd_empty_beam_and_infeasible():
    """A segment too short for any path gives an empty lattice and a -inf reference total;
    a reference no path spells: -inf numerator (the caller drops it); the other segment's
    loss is untouched by either."""
    graph = _graph(6)
    T = [1, 5]
    dense = _dense(T, 16)
    tot = dbd_totals(graph, dense, [[1, 2, 1, 2, 1], [1, 2]], search_beam=1e9,
                     output_beam=1e9)
    assert tot.num[0].item() == -math.inf
    alone = dbd_totals(graph, DenseFsaVec(dense.log_probs[1:], torch.tensor(
        [[0, 0, 5]], dtype=torch.int32)), [[1, 2]], search_beam=1e9, output_beam=1e9)
    assert tot.loss[1].item() == pytest.approx(alone.loss[0].item(), abs=1e-12)


def _token_lm():
    from wfst_asr.graphs.lm import make_token_lm
    texts = [[1, 2, 3], [1, 2], [2, 3, 3], [3, 1], [1, 1, 2]]
    return make_token_lm(texts, order=2, vocab=["1", "2", "3"])


def test_trainable_ngram_terms_and_graph():
    """``ngram_acceptor(terms=True)``: each arc's ``lm_terms`` sum (NgramScores) to its score,
    a back-off weight is one shared parameter (several arcs index it); the CTC graph over the
    token bigram keeps, on every arc that holds a G score, that arc's terms, so
    ``TrainableGraph`` reproduces the graph's scores at the start."""
    from wfst_asr.graphs.lm import ngram_acceptor
    from wfst_asr.graphs.trainable import NgramScores, TrainableGraph, ctc_lm_graph
    model = _token_lm()
    table = {"1": 1, "2": 2, "3": 3}
    G = ngram_acceptor(model, table, terms=True)
    lm = NgramScores(model, dtype=torch.float64)
    assert torch.allclose(lm(G.lm_terms).float(), G.scores, atol=1e-5)
    _, bow_first = model.param_offsets()
    uses = torch.bincount(G.lm_terms[G.lm_terms >= 0].flatten(), minlength=lm.weight.numel())
    assert int(uses[bow_first[0]:].max()) > 1  # a unigram history's back-off weight, shared
    H = ctc_lm_graph(G)
    tg = TrainableGraph(H, lm)
    assert torch.allclose(tg().scores.float(), H.scores, atol=1e-6)
    # lm_scale weights the LM part only: arcs without terms keep their scores
    has = H.lm_terms[:, 0] >= 0
    scaled = TrainableGraph(H, lm, lm_scale=0.3)().scores.detach()
    want = H.scores.double() - 0.7 * lm(H.lm_terms).detach()
    assert torch.allclose(scaled, want.to(scaled.dtype), atol=1e-5)
    assert torch.equal(scaled[~has].float(), H.scores[~has]) and bool(has.any())
    assert torch.equal(H.aux_labels[H.lm_terms[:, 0] >= 0] > 0,
                       H.labels[H.lm_terms[:, 0] >= 0] > 0)  # token-starting arcs
    with pytest.raises(ValueError, match="lm_terms"):
        TrainableGraph(ngram_acceptor(model, table), lm)
    with pytest.raises(ValueError, match="not in the symbol table"):
        ngram_acceptor(model, {"1": 1, "2": 2}, terms=True)


def test_dbd_lm_parameters_gradients():
    """The criterion on ``H o G`` with trainable bigram weights: exact at infinite beams
    (enumeration over the graph), and float64 finite differences w.r.t. the LM parameters
    and the log-probs at a finite beam; LM parameters that no arc of the lattice or of the
    reference graph uses get zero gradient."""
    from wfst_asr.graphs.lm import ngram_acceptor
    from wfst_asr.graphs.trainable import NgramScores, TrainableGraph, ctc_lm_graph
    model = _token_lm()
    G = ngram_acceptor(model, {"1": 1, "2": 2, "3": 3}, terms=True)
    lm = NgramScores(model, dtype=torch.float64)
    tg = TrainableGraph(ctc_lm_graph(G), lm, lm_scale=0.7)
    g = torch.Generator().manual_seed(7)
    T = [5, 6]
    lp0 = (torch.randn(2, 6, 4, generator=g, dtype=torch.float64) * 2).log_softmax(-1)
    seg = torch.tensor([[0, 0, 5], [1, 0, 6]], dtype=torch.int32)
    refs = [[1, 2], [2, 3, 1]]
    graph = tg()
    tot = dbd_totals(graph, DenseFsaVec(lp0, seg), refs, search_beam=1e9, output_beam=1e9)
    for i, (ref, t) in enumerate(zip(refs, T)):
        den = _brute(graph.detach(), lp0[i], t)
        num = _brute(graph.detach(), lp0[i], t, ref)
        assert tot.loss[i].item() == pytest.approx(den - num, abs=1e-9)

    def f(weight, lp):
        with torch.no_grad():
            lm.weight.copy_(weight)
        lm.weight.grad = None
        return dbd_totals(tg(), DenseFsaVec(lp, seg), refs, search_beam=2.0,
                          output_beam=2.0).loss.sum()

    w0 = lm.weight.detach().clone()
    lp = lp0.clone().requires_grad_(True)
    loss = f(w0, lp)
    loss.backward()
    grad = lm.weight.grad.clone()
    eps = 1e-6
    for k in range(w0.numel()):
        e = torch.zeros_like(w0)
        e[k] = eps
        with torch.no_grad():
            fd = (f(w0 + e, lp0) - f(w0 - e, lp0)).item() / (2 * eps)
        assert grad[k].item() == pytest.approx(fd, abs=1e-6), k
    with torch.no_grad():
        lm.weight.copy_(w0)
    assert torch.autograd.gradcheck(lambda x: f(w0, x), (lp0.clone().requires_grad_(True),),
                                    eps=1e-6, atol=1e-6)
    # parameters on no arc at all (the back-off weights of histories with none) stay at zero
    used = torch.zeros(w0.numel(), dtype=torch.bool)
    used[G.lm_terms[G.lm_terms >= 0]] = True
    assert bool((grad[~used] == 0).all()) and bool((grad[used] != 0).any())


def test_dbd_loss_module_excludes_bad_utterances():
    """``DbdLoss``: a NaN in one utterance's frames and a reference no path spells exclude
    those two (counted, zero gradient), the others' losses are those of ``dbd_totals`` on
    them alone; the LM parameters of a ``TrainableGraph`` are the module's parameters and get
    a gradient; the forced references are counted."""
    from wfst_asr.graphs.lm import ngram_acceptor
    from wfst_asr.graphs.trainable import NgramScores, TrainableGraph, ctc_lm_graph
    from wfst_asr.losses.dbd import DbdLoss
    model = _token_lm()
    G = ngram_acceptor(model, {"1": 1, "2": 2, "3": 3}, terms=True)
    tg = TrainableGraph(ctc_lm_graph(G), NgramScores(model, dtype=torch.float64))
    crit = DbdLoss(tg, search_beam=1.0, output_beam=1.0, reduction="none")
    assert [n for n, _ in crit.named_parameters()] == ["graph.lm.weight"]
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 6, 4, generator=g, dtype=torch.float64) * 2).log_softmax(-1)
    x[1, 2, 1] = float("nan")
    x.requires_grad_(True)
    lens = torch.tensor([6, 6, 2, 5])
    refs = [[1, 2], [2], [1, 2, 3, 1], [3, 1]]  # utterance 2: 4 tokens in 2 frames
    loss, info = crit(x, lens, refs)
    assert info["excluded"] == [1, 2] and info["nonfinite_input"] == [1]
    assert info["num_nonfinite"] == 1
    alone = dbd_totals(tg(), DenseFsaVec(x.detach()[[0, 3]], torch.tensor(
        [[0, 0, 6], [1, 0, 5]], dtype=torch.int32)), [refs[0], refs[3]], search_beam=1.0,
        output_beam=1.0)
    assert loss[[0, 3]].tolist() == pytest.approx(alone.loss.tolist(), abs=1e-12)
    assert loss[1].item() == 0.0 and loss[2].item() == 0.0
    assert info["out_of_beam"] + info["partial"] >= 1  # the narrow beam missed a reference
    loss.sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    assert x.grad[1].abs().max().item() == 0.0 and x.grad[2].abs().max().item() == 0.0
    assert tg.lm.weight.grad is not None and tg.lm.weight.grad.abs().max().item() > 0
    with pytest.raises(ValueError, match="outputs"):
        crit(torch.zeros(1, 3, 5).log_softmax(-1), torch.tensor([3]), [[1]])


_ARPA3 = """\\data\\
ngram 1=5
ngram 2=5
ngram 3=2

\\1-grams:
-99 <s> -0.3
-0.5 a -0.2
-0.6 b -0.25
-0.8 c
-0.7 </s>

\\2-grams:
-0.1 <s> a -0.15
-0.35 <s> b
-0.2 a b -0.05
-0.4 b a
-0.3 b </s>

\\3-grams:
-0.05 <s> a b
-0.12 a b </s>

\\end\\
"""


def _backoff_arc_total(arpa: str, sentence: list[str], pron_mass: dict[str, float]) -> float:
    """ln of the summed probability of every path of G with back-off arcs (Kaldi's G, log
    semiring) spelling ``sentence </s>``: at each word, the direct n-gram of the history and
    of each suffix reached through back-off weights; ``</s>`` with the ARPA rule. The ARPA
    is read here, line by line; each word's pronunciation weights multiply in."""
    prob, bow, n = {}, {}, 0
    for line in arpa.splitlines():
        f = line.split()
        if line.endswith("-grams:"):
            n = int(line[1])
        elif n and f and not line.startswith("\\"):
            gram = tuple(f[1:1 + n])
            prob[gram] = 10 ** float(f[0])
            if len(f) == n + 2:
                bow[gram] = 10 ** float(f[-1])
    order = n
    contexts = {()} | {g[:k] for g in prob for k in range(1, len(g))} | set(bow)

    def context(h):
        h = h[len(h) - (order - 1):]
        while h not in contexts:
            h = h[1:]
        return h

    def p_end(h):  # the ARPA back-off rule
        w = 1.0
        while h + ("</s>",) not in prob:
            w *= bow.get(h, 1.0)
            h = h[1:]
        return w * prob[h + ("</s>",)]

    def total(h, i):
        if i == len(sentence):
            return p_end(h)
        w, out, b, cur = sentence[i], 0.0, 1.0, h
        while True:
            if cur + (w,) in prob:
                out += b * prob[cur + (w,)] * pron_mass[w] * total(context(cur + (w,)), i + 1)
            if not cur:
                return out
            b *= bow.get(cur, 1.0)
            cur = context(cur[1:])
    return math.log(total(context(("<s>",)), 0))


def test_lexicon_lm_graph_against_backoff_paths(tmp_path):
    """``lexicon_lm_graph`` on a 3-gram with two-level back-off and a lexicon whose
    pronunciations share prefixes: the total over the paths spelling each sentence is the sum
    over G's back-off paths (worked out by the enumeration above from the ARPA text), times
    each word's summed pronunciation weights; the trainable scores reproduce the graph's; an
    LM word without pronunciation or outside the word table is refused at build time."""
    from wfst_asr.graphs.ngram import read_arpa
    from wfst_asr.graphs.trainable import (
        NgramScores,
        TrainableGraph,
        ctc_lm_graph,
        lexicon_lm_graph,
    )
    (tmp_path / "lm.arpa").write_text(_ARPA3)
    model = read_arpa(tmp_path / "lm.arpa")
    words = {"a": 1, "b": 2, "c": 3}
    lex = [(1, [1, 2], math.log(0.5)), (1, [1, 3], math.log(0.25)), (2, [1], 0.0),
           (3, [2, 3], math.log(0.9))]
    LG = lexicon_lm_graph(model, words, lex)
    mass = {"a": 0.75, "b": 1.0, "c": 0.9}
    sentences = [["a", "b"], ["b", "a"], ["a", "b", "c"], ["c"], ["c", "c", "b"], [],
                 ["b", "a", "b", "a"], ["a", "c", "a", "b"]]
    got = get_tot_scores(intersect_sequences(LG, [[words[w] for w in s] for s in sentences]),
                         log_semiring=True, use_double_scores=True)
    for i, sent in enumerate(sentences):
        want = _backoff_arc_total(_ARPA3, sent, mass)
        assert got[i].item() == pytest.approx(want, abs=1e-5), sent
    # one tree per context: the root <s> has one arc per first token of its words, plus the
    # copies of the unigram tree's first arcs (tokens 1 and 2), and the final arc
    start_arcs = LG.arcs[LG.arcs[:, 0] == 0]
    assert int((start_arcs[:, 2] == 1).sum()) == 2 + 2  # <s> a/b share "1", plus copies
    H = ctc_lm_graph(LG)
    tg = TrainableGraph(H, NgramScores(model, dtype=torch.float64))
    assert torch.allclose(tg().scores.float(), H.scores, atol=1e-6)
    assert int((H.lm_terms[:, 0] >= 0).sum()) > 0
    with pytest.raises(ValueError, match="no pronunciation"):
        lexicon_lm_graph(model, words, lex[:3])
    with pytest.raises(ValueError, match="not in the word table"):
        lexicon_lm_graph(model, {"a": 1, "b": 2}, lex)
