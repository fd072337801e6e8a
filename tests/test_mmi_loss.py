"""MmiLoss (LF-MMI) against references written here.

* ``forward_ref``: a plain-Python forward recursion over a graph's arcs, frame by frame, with
  Kaldi's leaky-HMM step ``alpha[start] += leaky * sum(alpha)`` before each frame (the initial
  distribution is the start state); with ``leaky = 0`` it is the log-sum over the graph's paths,
  which ``graph_paths`` (depth-first enumeration) checks on one case;
* the CTC term against ``torch.nn.functional.ctc_loss``; the cross-entropy term against
  numerator posteriors from enumerated paths;
* properties: den >= num (loss >= 0), the gradient w.r.t. the outputs sums to 0 on every
  frame, numerator graph = denominator graph gives loss 0.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.reference import graph_paths
from wfst_asr.fsa import Fsa, create_fsa_vec
from wfst_asr.graphs import MmiTrainingGraphCompiler, hmm_topo, make_topology, pdf_topo
from wfst_asr.losses import MmiLoss

f64 = torch.float64


# ---------------------------------------------------------------------------- helpers
def bigram_P(seed: int, K: int = 2, missing: tuple[int, int] | None = None) -> Fsa:
    """A deterministic bigram-like acceptor over tokens 1..K (state = last token, 0 = start),
    random scores; ``missing = (state, token)`` leaves that arc out."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in range(K + 1):
        rows += [(s, t, t) for t in range(1, K + 1) if (s, t) != missing]
        rows.append((s, K + 1, -1))
    sc = (torch.randn(len(rows), generator=g) - 1.0).tolist()
    return Fsa(torch.tensor(rows, dtype=torch.int32), torch.tensor(sc), num_states=K + 2)


def make_compiler(kind: str, P: Fsa) -> MmiTrainingGraphCompiler:
    K = int(P.labels.max())
    topo = {"ctc": lambda: "ctc", "hmm": lambda: hmm_topo(K, 2, math.log(0.4)),
            "chain": lambda: pdf_topo(make_topology("chain", K))}[kind]()
    return MmiTrainingGraphCompiler(P, topo=topo)


def logsumexp(xs: list[float]) -> float:
    xs = [x for x in xs if x != -math.inf]
    if not xs:
        return -math.inf
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def forward_ref(graph: Fsa, x: torch.Tensor, leaky: float = 0.0) -> float:
    """log-sum over paths of one graph through the T frames of ``x [T, V]``, with Kaldi's
    leaky-HMM step before each frame (start state = initial distribution)."""
    arcs, sc = graph.arcs.tolist(), graph.scores.tolist()
    S = graph.num_states
    alpha = [-math.inf] * S
    alpha[0] = 0.0
    for t in range(x.shape[0]):
        if leaky > 0:
            alpha[0] = logsumexp([alpha[0], math.log(leaky) + logsumexp(alpha)])
        new = [[] for _ in range(S)]
        for (s, d, lab), w in zip(arcs, sc):
            if lab >= 0 and alpha[s] > -math.inf:
                new[d].append(alpha[s] + w + float(x[t, lab]))
        alpha = [logsumexp(v) for v in new]
    return logsumexp([alpha[s] + w for (s, _, lab), w in zip(arcs, sc) if lab == -1])




def batch(V: int, lens: list[int], seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(len(lens), max(lens), V, generator=g, dtype=dtype) * 2).requires_grad_()
    return x, torch.tensor(lens)


TEXTS = [[1, 2], [2, 2, 1], [1], [2, 1]]
LENS = [7, 9, 4, 6]


# ---------------------------------------------------------------------------- totals
@pytest.mark.parametrize("kind", ["ctc", "hmm", "chain"])
@pytest.mark.parametrize("leaky", [0.0, 0.1])
def test_num_den_totals_equal_reference(kind, leaky):
    comp = make_compiler(kind, bigram_P(1))
    loss = MmiLoss(comp, leaky_hmm_coefficient=leaky, reduction="none", use_double_scores=True)
    x, lens = batch(loss.num_outputs, LENS, seed=2, dtype=f64)
    per_utt, info = loss(x, lens, TEXTS)
    nums, den = comp.compile(TEXTS)
    want_num = [forward_ref(nums[i], x[i, :n].detach()) for i, n in enumerate(LENS)]
    want_den = [forward_ref(den, x[i, :n].detach(), leaky) for i, n in enumerate(LENS)]
    assert info["num"] == pytest.approx(sum(want_num), abs=1e-6)
    assert info["den"] == pytest.approx(sum(want_den), abs=1e-6)
    want = torch.tensor(want_den, dtype=f64) - torch.tensor(want_num, dtype=f64)
    torch.testing.assert_close(per_utt.detach(), want, atol=1e-6, rtol=1e-6)


def test_forward_ref_is_the_path_sum():
    """The reference recursion itself, against explicit enumeration of the den graph's paths."""
    comp = make_compiler("ctc", bigram_P(3))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=f64)
    paths = graph_paths(comp.den, 4)
    enum = logsumexp([w + sum(float(x[t, o]) for t, o in enumerate(labs)) for labs, w in paths])
    assert forward_ref(comp.den, x) == pytest.approx(enum, abs=1e-9)


# ---------------------------------------------------------------------------- properties
@pytest.mark.parametrize("kind", ["ctc", "hmm", "chain"])
def test_loss_nonnegative_and_gradient_sums_to_zero(kind):
    for seed in range(3):
        comp = make_compiler(kind, bigram_P(seed))
        for leaky in (0.0, 0.1):
            loss = MmiLoss(comp, leaky_hmm_coefficient=leaky, reduction="none",
                           use_double_scores=True)
            x, lens = batch(loss.num_outputs, LENS, seed=10 + seed, dtype=f64)
            per_utt, info = loss(x, lens, TEXTS)
            assert info["num_excluded"] == 0
            assert bool((per_utt >= -1e-9).all()), per_utt
            per_utt.sum().backward()
            g = x.grad.sum(-1)
            for i, n in enumerate(LENS):
                torch.testing.assert_close(g[i, :n], torch.zeros(n, dtype=f64), atol=1e-9,
                                           rtol=0)
                assert bool((x.grad[i, n:] == 0).all())
                assert float(x.grad[i, :n].abs().sum()) > 1e-3  # num and den differ


def test_numerator_equal_to_denominator_gives_zero():
    # (a) P accepts one token sequence only: H o P is the numerator of that transcript
    rows = [(0, 1, 1, -0.3), (1, 2, 2, -0.7), (2, 3, -1, -0.2)]
    P = Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
            torch.tensor([r[3] for r in rows]), num_states=4)
    for kind in ("ctc", "hmm"):
        loss = MmiLoss(make_compiler(kind, P), leaky_hmm_coefficient=0.0, reduction="none")
        x, lens = batch(loss.num_outputs, [6, 8], seed=5)
        per_utt, info = loss(x, lens, [[1, 2], [1, 2]])
        assert info["num_excluded"] == 0
        torch.testing.assert_close(per_utt.detach(), torch.zeros(2), atol=1e-4, rtol=0)
    # (b) numerator graphs given: the denominator itself
    comp = make_compiler("hmm", bigram_P(6))
    loss = MmiLoss(comp, leaky_hmm_coefficient=0.0, reduction="none")
    x, lens = batch(loss.num_outputs, [5, 7, 3], seed=6)
    per_utt, _ = loss(x, lens, num_graphs=create_fsa_vec([comp.den] * 3))
    torch.testing.assert_close(per_utt.detach(), torch.zeros(3), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- extras
def test_l2_and_ctc_term():
    comp = make_compiler("ctc", bigram_P(7))
    x, lens = batch(3, LENS, seed=8, dtype=f64)
    plain, _ = MmiLoss(comp, use_double_scores=True)(x, lens, TEXTS)
    l2, info = MmiLoss(comp, l2_regularize=0.01, use_double_scores=True)(x, lens, TEXTS)
    sq = sum(float((x[i, :n].detach() ** 2).sum()) for i, n in enumerate(LENS))
    assert float((l2 - plain).detach()) == pytest.approx(0.01 * sq, rel=1e-9)
    assert info["l2"] == pytest.approx(0.01 * sq, rel=1e-9)
    mixed, info = MmiLoss(comp, ctc_weight=0.3, use_double_scores=True)(x, lens, TEXTS)
    flat = torch.tensor([t for s in TEXTS for t in s])
    ctc = F.ctc_loss(x.log_softmax(-1).transpose(0, 1), flat, lens,
                     torch.tensor([len(s) for s in TEXTS]), reduction="sum")
    assert float(mixed.detach()) == pytest.approx(0.7 * float(plain.detach())
                                                  + 0.3 * float(ctc.detach()), rel=1e-9)
    assert info["aux"] == pytest.approx(float(ctc.detach()), rel=1e-9)


def test_cross_entropy_term_uses_numerator_posteriors():
    comp = make_compiler("hmm", bigram_P(9))
    lens = [4, 3]
    texts = [[1, 2], [2]]
    loss = MmiLoss(comp, leaky_hmm_coefficient=0.0, ctc_weight=0.5, use_double_scores=True)
    assert loss.aux_loss == "ce"
    x, lens_t = batch(loss.num_outputs, lens, seed=10, dtype=f64)
    _, info = loss(x, lens_t, texts)
    nums, _ = comp.compile(texts)
    lp = x.detach().log_softmax(-1)
    want = 0.0
    for i, T in enumerate(lens):
        paths = [(labs, w + sum(float(x[i, t, o].detach()) for t, o in enumerate(labs)))
                 for labs, w in graph_paths(nums[i], T)]
        tot = logsumexp([s for _, s in paths])
        for labs, s in paths:
            want -= math.exp(s - tot) * sum(float(lp[i, t, o]) for t, o in enumerate(labs))
    assert info["aux"] == pytest.approx(want, rel=1e-9)


def test_gradcheck():
    comp = make_compiler("ctc", bigram_P(11))
    loss = MmiLoss(comp, leaky_hmm_coefficient=0.1, l2_regularize=0.01, ctc_weight=0.2,
                   use_double_scores=True)
    x, lens = batch(3, [5, 3], seed=12, dtype=f64)
    assert torch.autograd.gradcheck(lambda y: loss(y, lens, [[1, 2], [2]])[0], (x,))


# ---------------------------------------------------------------------------- exclusions
def test_infeasible_and_rejected_utterances_excluded():
    comp = make_compiler("hmm", bigram_P(13, missing=(2, 2)))  # no "2 2" in P
    loss = MmiLoss(comp, reduction="none", l2_regularize=0.01)
    texts = [[1, 2], [2, 2], [1, 2, 1], [2]]
    lens = [6, 6, 5, 2]  # 2 states per token: needs 4, -, 6, 2
    x, lens_t = batch(loss.num_outputs, lens, seed=14)
    per_utt, info = loss(x, lens_t, texts)
    assert info["excluded"] == [1, 2] and info["num_rejected"] == 1
    assert info["num_nonfinite"] == 0 and info["frames"] == 6 + 2
    assert bool((per_utt[1:3] == 0).all()) and bool(torch.isfinite(per_utt).all())
    per_utt.sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and bool((x.grad[1:3] == 0).all())
    # nothing left: a zero loss that still backpropagates
    y, lens_y = batch(loss.num_outputs, [1], seed=15)
    total, info = MmiLoss(comp)(y, lens_y, [[1, 2]])
    assert float(total.detach()) == 0 and info["num_excluded"] == 1
    total.backward()
    assert bool((y.grad == 0).all())


def test_nonfinite_total_dropped():
    comp = make_compiler("ctc", bigram_P(17))
    x, lens = batch(3, [5, 4], seed=18)
    y = torch.cat([x[:1], x[1:].index_fill(-1, torch.tensor([1]), -math.inf)])
    loss, info = MmiLoss(comp)(y, lens, [[1, 2], [1]])
    assert info["excluded"] == [1] and info["num_nonfinite"] == 1
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    assert bool(torch.isfinite(x.grad).all()) and bool((x.grad[1] == 0).all())


def test_errors():
    comp = make_compiler("hmm", bigram_P(16))
    loss = MmiLoss(comp)
    with pytest.raises(ValueError, match="outputs"):
        loss(torch.zeros(1, 5, loss.num_outputs + 1), torch.tensor([5]), [[1]])
    with pytest.raises(ValueError, match="CTC topology"):
        MmiLoss(comp, ctc_weight=0.5, aux_loss="ctc")
    with pytest.raises(ValueError, match="ctc_weight"):
        MmiLoss(comp, ctc_weight=1.5)


def test_on_device(device):
    """Same loss and gradient on every available device (CUDA when present)."""
    loss = MmiLoss(make_compiler("chain", bigram_P(19)), l2_regularize=0.01, ctc_weight=0.1,
                   reduction="none")
    x, lens = batch(loss.num_outputs, LENS, seed=20)
    want, _ = loss(x, lens, TEXTS)
    want.sum().backward()
    y = x.detach().to(device).requires_grad_()
    got, _ = loss(y, lens, TEXTS)
    got.sum().backward()
    torch.testing.assert_close(got.detach().cpu(), want.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(y.grad.cpu(), x.grad, atol=1e-5, rtol=1e-4)
