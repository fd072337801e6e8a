"""The streamed intersection's leaky HMM and fast paths against the plain ones.

* ``leaky_hmm_tot_scores`` (Kaldi's leaky-HMM step inside the intersection) against
  ``dense_tot_scores`` on the graph with the leaky-HMM arcs of ``add_leaky_arcs`` (every state
  given a copy of the start state's arcs, score + log(leaky)): totals, gradients w.r.t. the
  outputs and the graph scores, CTC / HMM / chain denominators, several batch shapes, a
  gradcheck; ``MmiLoss`` uses it.
* the arc posteriors computed inside the backward sweep (``FUSED_POSTERIORS``) against the
  separate posterior pass; the exp2-based logsumexp of the frame loops against
  ``torch.logsumexp``.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_mmi_loss import bigram_P, make_compiler
from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    _frames,
    create_fsa_vec,
    get_tot_scores,
    intersect_dense,
)
from wfst_asr.fsa import intersect as isect
from wfst_asr.fsa.intersect import dense_tot_scores, leaky_hmm_tot_scores
from wfst_asr.losses import MmiLoss, add_leaky_arcs

f64 = torch.float64


def doubled(g: Fsa, scores: torch.Tensor, c: float) -> Fsa:
    """The graph of ``add_leaky_arcs(g, c)``, its scores computed from ``scores``
    (differentiable)."""
    arcs = g.arcs.long()
    start = (arcs[:, 0] == 0) & (arcs[:, 2] >= 0)
    S, K = g.num_states, int(start.sum())
    new = torch.stack([torch.arange(S - 1).repeat_interleave(K),
                       arcs[start, 1].repeat(S - 1), arcs[start, 2].repeat(S - 1)], 1)
    d = Fsa(torch.cat([arcs, new]).int(),
            torch.cat([scores, scores[start].repeat(S - 1) + math.log(c)]), num_states=S)
    ref = add_leaky_arcs(g, c)
    assert torch.equal(d.arcs, ref.arcs) and torch.allclose(d.scores.detach(), ref.scores)
    return d


def den64(kind: str, seed: int) -> Fsa:
    den = make_compiler(kind, bigram_P(seed, K=3)).den
    return Fsa(den.arcs, den.scores.to(f64), num_states=den.num_states)


def batch(V: int, lens: list[int], seed: int, dtype=f64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(len(lens), max(lens) + 1, V, generator=g, dtype=dtype) * 2)
    segs = torch.tensor([[i, i % 2, n] for i, n in enumerate(lens)], dtype=torch.int32)
    return x.requires_grad_(), segs


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    assert bool((a.isfinite() == b.isfinite()).all())
    fin = a.isfinite()
    torch.testing.assert_close(a[fin], b[fin], atol=tol, rtol=tol)


def random_graph(gen: torch.Generator, S: int, A: int, V: int, per_state: bool,
                 dtype) -> Fsa:
    src = torch.cat([torch.arange(S), torch.randint(0, S, (A - S,), generator=gen)])
    dst = torch.randint(0, S, (A,), generator=gen)
    lab = (torch.randint(0, V, (S,), generator=gen)[dst] if per_state
           else torch.randint(0, V, (A,), generator=gen))
    fs = torch.arange(S)
    arcs = torch.stack([torch.cat([src, fs]), torch.cat([dst, torch.full_like(fs, S)]),
                        torch.cat([lab, torch.full_like(fs, -1)])], 1).to(torch.int32)
    sc = torch.cat([torch.randn(A, generator=gen, dtype=dtype) * 3,
                    torch.randn(S, generator=gen, dtype=dtype)])
    return Fsa(arcs, sc, num_states=S + 1)


# ---------------------------------------------------------------------------- leaky HMM
@pytest.mark.parametrize("kind", ["ctc", "chain", "hmm", "random"])
@pytest.mark.parametrize("lens", [[7, 9, 4, 6], [5], [3, 3, 8, 1, 12, 2]])
def test_leaky_equals_doubled_arcs(kind, lens, monkeypatch):
    """CTC / HMM / chain denominators (one label per state: state occupancies) and a random
    graph (arc posteriors, from the backward sweep and from the separate pass)."""
    if kind == "random":
        den = random_graph(torch.Generator().manual_seed(len(lens)), 10, 60, 5, False, f64)
    else:
        den = den64(kind, seed=len(lens))
    V = int(den.labels.max()) + 1
    for c, seed, fused in ((0.1, 0, True), (1e-5, 1, True), (0.3, 2, False)):
        monkeypatch.setattr(isect, "FUSED_POSTERIORS", fused)
        x, segs = batch(V, lens, seed)
        go = torch.randn(len(lens), generator=torch.Generator().manual_seed(seed), dtype=f64)
        new = leaky_hmm_tot_scores(den, DenseFsaVec(x, segs), c, use_double_scores=True)
        (g_new,) = torch.autograd.grad((new * go).sum(), x)
        old = get_tot_scores(intersect_dense(add_leaky_arcs(den, c), DenseFsaVec(x, segs)),
                             log_semiring=True, use_double_scores=True)
        (g_old,) = torch.autograd.grad((old * go).sum(), x)
        close(new.detach(), old.detach(), 1e-10)
        torch.testing.assert_close(g_new, g_old, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shared", [True, False])
def test_leaky_graph_score_gradients_and_float32(shared):
    """Gradients w.r.t. the graph scores (a start arc's includes its leaky copies), per-segment
    graphs, float32, and the two-thread split of a batch."""
    lens = [6, 4, 7, 5]
    c = 0.2
    graphs = [den64(k, s) for k, s in (("ctc", 1), ("ctc", 2), ("ctc", 3), ("ctc", 4))]
    V = max(int(g.labels.max()) for g in graphs) + 1
    x, segs = batch(V, lens, 3)
    sc = [g.scores.clone().requires_grad_() for g in graphs]
    if shared:
        new_g, old_g = Fsa(graphs[0].arcs, sc[0], num_states=graphs[0].num_states), \
            doubled(graphs[0], sc[0], c)
        params = [sc[0]]
    else:
        new_g = create_fsa_vec([Fsa(g.arcs, s, num_states=g.num_states)
                                for g, s in zip(graphs, sc)])
        old_g = create_fsa_vec([doubled(g, s, c) for g, s in zip(graphs, sc)])
        params = sc
    new = leaky_hmm_tot_scores(new_g, DenseFsaVec(x, segs), c, use_double_scores=True)
    g_new = torch.autograd.grad(new.sum(), [x] + params)
    old = dense_tot_scores(old_g, DenseFsaVec(x, segs), True, True)
    g_old = torch.autograd.grad(old.sum(), [x] + params)
    close(new.detach(), old.detach(), 1e-10)
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # float32, and the batch split over two threads (as for large CPU batches)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        isect.PARALLEL_MIN_WORK, saved = 0, isect.PARALLEL_MIN_WORK
        x32 = x.detach().float().requires_grad_()
        new32 = leaky_hmm_tot_scores(new_g, DenseFsaVec(x32, segs), c)
        (g32,) = torch.autograd.grad(new32.sum(), x32)
    finally:
        isect.PARALLEL_MIN_WORK = saved
        torch.set_num_threads(threads)
    close(new32.detach().double(), old.detach(), 1e-4)
    torch.testing.assert_close(g32.double(), g_old[0], atol=1e-4, rtol=1e-4)


def test_leaky_gradcheck():
    den = den64("ctc", 5)
    x, segs = batch(int(den.labels.max()) + 1, [3, 2], 4)
    sc = den.scores.clone().requires_grad_()

    def f(x, sc):
        g = Fsa(den.arcs, sc, num_states=den.num_states)
        return leaky_hmm_tot_scores(g, DenseFsaVec(x, segs), 0.3, use_double_scores=True)

    assert torch.autograd.gradcheck(f, (x, sc), eps=1e-6, atol=1e-7)


def test_mmi_loss_uses_in_intersection_leaky():
    comp = make_compiler("chain", bigram_P(2))
    loss = MmiLoss(comp, leaky_hmm_coefficient=0.1, reduction="none", use_double_scores=True)
    g = torch.Generator().manual_seed(6)
    lens = torch.tensor([7, 9, 5])
    x = torch.randn(3, 9, loss.num_outputs, generator=g, dtype=f64, requires_grad=True)
    _, info = loss(x, lens, [[1, 2], [2, 2, 1], [1]])
    assert not loss._den  # no leaky-arc graph was built
    segs = torch.stack([torch.arange(3), torch.zeros(3, dtype=torch.int64), lens], 1)
    old = get_tot_scores(intersect_dense(loss.den_graph(), DenseFsaVec(x, segs.int())),
                         log_semiring=True, use_double_scores=True)
    # the leaky-arc graph has float32 scores: rounding of log(leaky) + score
    assert info["den"] == pytest.approx(float(old.detach().sum()), abs=1e-4)


# ---------------------------------------------------------------------------- fast paths
@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize("per_state", [False, True])
def test_fused_posteriors_equal_separate_pass(dtype, per_state, monkeypatch):
    gen = torch.Generator().manual_seed(7)
    V, lens = 6, [9, 3, 12, 7, 1]
    for shared in (True, False):
        graphs = [random_graph(gen, 12, 90, V, per_state, dtype) for _ in range(len(lens))]
        graph = graphs[0] if shared else create_fsa_vec(graphs)
        x = torch.randn(len(lens), 13, V, generator=gen, dtype=dtype) * 4
        segs = torch.tensor([[i, 0, n] for i, n in enumerate(lens)], dtype=torch.int32)
        go = torch.randn(len(lens), generator=gen, dtype=dtype)  # mixed signs
        res = []
        for fused in (True, False):
            monkeypatch.setattr(isect, "FUSED_POSTERIORS", fused)
            xs = x.clone().requires_grad_()
            sc = graph.scores.clone().requires_grad_()
            g = Fsa(graph.arcs, sc, num_states=graph.num_states_per_fsa,
                    arc_splits=graph.arc_splits) if not shared else \
                Fsa(graph.arcs, sc, num_states=graph.num_states)
            tot = dense_tot_scores(g, DenseFsaVec(xs, segs), True, dtype == f64)
            res.append([tot.detach(), *torch.autograd.grad((tot * go).sum(), [xs, sc])])
        tol = 1e-10 if dtype == f64 else 2e-5
        for a, b in zip(*res):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_exp2_logsumexp_equals_torch(dtype):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(9, 500, generator=gen, dtype=dtype) * torch.tensor([1.0, 30.0, 300.0],
                                                                      dtype=dtype).repeat(167)[:500]
    x[torch.rand(9, 500, generator=gen) < 0.4] = float("-inf")
    x[:, :7] = float("-inf")  # columns with no finite entry
    x[:, 7] = 1e4  # large values
    for dim in (0, 1):
        out = torch.empty(x.shape[1 - dim], dtype=dtype)
        m = _frames._lse_(x.clone(), dim, out)
        want = torch.logsumexp(x, dim)
        assert bool((out.isinf() == want.isinf()).all())
        fin = want.isfinite()
        torch.testing.assert_close(out[fin], want[fin], rtol=4 * torch.finfo(dtype).eps,
                                   atol=4 * torch.finfo(dtype).eps)
        torch.testing.assert_close(m.squeeze(dim), x.amax(dim))
