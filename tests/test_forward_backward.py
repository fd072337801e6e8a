"""get_tot_scores / get_forward_scores / get_backward_scores / get_arc_post vs brute force.

Every expected value comes from tests/reference.py (path enumeration in float64), never from the
engine itself.
"""

from __future__ import annotations

import math

import pytest
import torch

try:
    from tests import reference as ref
except ImportError:  # pragma: no cover - run from inside tests/
    import reference as ref

from wfst_asr.fsa import Fsa, create_fsa_vec

INF = ref.INF
DTYPES = [torch.float32, torch.float64]
_tol = ref.tol


def _fb():
    from wfst_asr.fsa import get_arc_post, get_backward_scores, get_forward_scores, get_tot_scores
    return get_tot_scores, get_forward_scores, get_backward_scores, get_arc_post


def _empty_fsa(dtype=torch.float32):
    return Fsa(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=dtype), num_states=0,
               aux_labels=torch.zeros(0, dtype=torch.int32))


def _no_arc_fsa(dtype=torch.float32):
    """Two states (start, final) and no arcs: no path."""
    return Fsa(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=dtype), num_states=2,
               aux_labels=torch.zeros(0, dtype=torch.int32))


def _dead_arc_fsa(dtype=torch.float32):
    """A path 0->1->4, a dead end 0->2 (state 2 not co-accessible), an unreachable state 3."""
    rows = [(0, 1, 1, 0.25), (1, 4, -1, -0.5), (0, 2, 2, 1.5), (3, 4, -1, 0.75), (0, 1, 3, -1.0)]
    return Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
               torch.tensor([r[3] for r in rows], dtype=dtype), num_states=5,
               aux_labels=torch.tensor([1, -1, 2, -1, 3], dtype=torch.int32))


def _random_vec(seed: int, dtype, num: int = 7, with_empty: bool = True):
    """A mix: FSAs with paths, FSAs maybe without, non-top-sorted ones, an empty FSA."""
    gen = torch.Generator().manual_seed(seed)
    fsas = []
    for i in range(num):
        ns = ref._randint(gen, 2, 8)
        fsas.append(ref.random_acyclic_fsa(
            gen, num_states=ns, num_labels=4, arc_prob=ref._rand(gen) * 0.7 + 0.1,
            ensure_path=(i % 3 != 2), top_sorted=(i % 2 == 0), dtype=dtype))
    if with_empty:
        fsas.insert(2, _empty_fsa(dtype))
        fsas.insert(4, _no_arc_fsa(dtype))
        fsas.insert(5, _dead_arc_fsa(dtype))
    return create_fsa_vec(fsas)


def _to(fsa, device):
    return fsa.to(torch.device(device))


def _global(per_fsa_lists):
    return [x for xs in per_fsa_lists for x in xs]


# ----------------------------------------------------------------------------- reference sanity
def test_reference_forward_backward_consistent():
    """The enumerations agree with each other (alpha[final] = beta[0] = total)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        f = ref.random_acyclic_fsa(gen, num_states=ref._randint(gen, 2, 7),
                                   ensure_path=False, top_sorted=False)
        r = ref.as_ref(f)
        for log in (True, False):
            paths = ref.enumerate_paths(r)
            tot = ref.total(paths, log)
            a = ref.forward_scores(r, log)
            b = ref.backward_scores(r, log)
            for x in (a[-1], b[0]):
                assert (x == tot == -INF) or x == pytest.approx(tot, rel=1e-12, abs=1e-12)
            if log and paths:
                # sum of arc posteriors into the final state is 1
                post = ref.arc_log_posteriors(r, log)
                p_final = sum(math.exp(p) for p, arc in zip(post, r.arcs) if arc[2] == -1)
                assert p_final == pytest.approx(1.0, abs=1e-12)
                counts = ref.arc_expected_counts(paths, len(r.arcs), log)
                assert counts == pytest.approx([math.exp(p) for p in post], abs=1e-12)


# ----------------------------------------------------------------------------- totals
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_semiring", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tot_scores(device, dtype, log_semiring, seed):
    get_tot_scores, *_ = _fb()
    vec = _random_vec(seed, dtype)
    expected = [ref.total(ref.enumerate_paths(r), log_semiring) for r in ref.split_fsas(vec)]
    assert any(e == -INF for e in expected) and any(e != -INF for e in expected)
    tot = get_tot_scores(_to(vec, device), log_semiring=log_semiring,
                         use_double_scores=(dtype == torch.float64))
    assert tot.shape == (vec.num_fsas,)
    assert tot.dtype == dtype
    assert not torch.isnan(tot).any()
    torch.testing.assert_close(tot.cpu().double(), torch.tensor(expected, dtype=torch.float64),
                               **_tol(dtype))


@pytest.mark.parametrize("log_semiring", [True, False])
def test_tot_scores_single_fsa(device, log_semiring):
    get_tot_scores, *_ = _fb()
    gen = torch.Generator().manual_seed(5)
    f = ref.random_acyclic_fsa(gen, num_states=6, arc_prob=0.6, dtype=torch.float64)
    expected = ref.total(ref.enumerate_paths(f), log_semiring)
    tot = get_tot_scores(_to(f, device), log_semiring=log_semiring, use_double_scores=True)
    assert tot.numel() == 1
    assert float(tot.reshape(-1)[0]) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_tot_scores_empty_and_pathless(device):
    get_tot_scores, *_ = _fb()
    vec = create_fsa_vec([_empty_fsa(), _no_arc_fsa()])
    for log in (True, False):
        tot = get_tot_scores(_to(vec, device), log_semiring=log)
        assert tot.cpu().tolist() == [-INF, -INF]


def test_tot_scores_long_chain(device):
    """A long linear FSA (many levels) with parallel arcs: a closed form."""
    get_tot_scores, *_ = _fb()
    n = 200
    gen = torch.Generator().manual_seed(3)
    rows, expect_log, expect_max = [], 0.0, 0.0
    for s in range(n):
        lab = -1 if s == n - 1 else 1
        sc = [ref._randn(gen) for _ in range(2)]
        rows += [(s, s + 1, lab, x) for x in sc]
        expect_log += ref.logsumexp(sc)
        expect_max += max(sc)
    f = Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
            torch.tensor([r[3] for r in rows], dtype=torch.float64), num_states=n + 1)
    f = _to(f, device)
    t_log = get_tot_scores(f, log_semiring=True, use_double_scores=True)
    t_max = get_tot_scores(f, log_semiring=False, use_double_scores=True)
    assert float(t_log.reshape(-1)[0]) == pytest.approx(expect_log, rel=1e-10)
    assert float(t_max.reshape(-1)[0]) == pytest.approx(expect_max, rel=1e-10)


# ----------------------------------------------------------------------------- forward/backward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_semiring", [True, False])
@pytest.mark.parametrize("seed", [10, 11])
def test_forward_backward_scores(device, dtype, log_semiring, seed):
    _, get_forward_scores, get_backward_scores, _ = _fb()
    vec = _random_vec(seed, dtype)
    refs = ref.split_fsas(vec)
    exp_a = _global([ref.forward_scores(r, log_semiring) for r in refs])
    exp_b = _global([ref.backward_scores(r, log_semiring) for r in refs])
    assert len(exp_a) == vec.num_states
    dbl = dtype == torch.float64
    v = _to(vec, device)
    a = get_forward_scores(v, log_semiring=log_semiring, use_double_scores=dbl)
    b = get_backward_scores(v, log_semiring=log_semiring, use_double_scores=dbl)
    for got, exp in ((a, exp_a), (b, exp_b)):
        assert got.shape == (vec.num_states,)
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got.cpu().double(), torch.tensor(exp, dtype=torch.float64),
                                   **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_semiring", [True, False])
@pytest.mark.parametrize("seed", [20, 21])
def test_arc_post(device, dtype, log_semiring, seed):
    *_, get_arc_post = _fb()
    vec = _random_vec(seed, dtype)
    exp = _global([ref.arc_log_posteriors(r, log_semiring) for r in ref.split_fsas(vec)])
    assert any(e == -INF for e in exp)
    post = get_arc_post(_to(vec, device), log_semiring=log_semiring,
                        use_double_scores=(dtype == torch.float64))
    assert post.shape == (vec.num_arcs,)
    assert not torch.isnan(post).any(), "arc posteriors must never be NaN (-inf off all paths)"
    torch.testing.assert_close(post.cpu().double(), torch.tensor(exp, dtype=torch.float64),
                               **_tol(dtype))


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_semiring", [True, False])
@pytest.mark.parametrize("seed", [30, 31])
def test_tot_scores_grad(device, dtype, log_semiring, seed):
    """d(sum_i w_i tot_i)/d scores = w_i * posteriors (log) or best-path indicator (tropical);
    FSAs without a path (total -inf) contribute 0, never NaN."""
    get_tot_scores, *_ = _fb()
    vec = _to(_random_vec(seed, dtype), device)
    refs = ref.split_fsas(vec)
    w = torch.linspace(0.5, 2.0, vec.num_fsas, dtype=torch.float64)
    expected = []
    for wi, r in zip(w.tolist(), refs):
        counts = ref.arc_expected_counts(ref.enumerate_paths(r), len(r.arcs), log_semiring)
        expected += [wi * c for c in counts]
    vec.scores.requires_grad_(True)
    tot = get_tot_scores(vec, log_semiring=log_semiring,
                         use_double_scores=(dtype == torch.float64))
    (tot * w.to(tot.device, tot.dtype)).sum().backward()
    g = vec.scores.grad
    assert g is not None and g.dtype == dtype
    assert not torch.isnan(g).any()
    torch.testing.assert_close(g.cpu().double(), torch.tensor(expected, dtype=torch.float64),
                               **_tol(dtype))


def test_tot_scores_grad_pathless_is_zero(device):
    get_tot_scores, *_ = _fb()
    gen = torch.Generator().manual_seed(7)
    rows = [(0, 1, 1, 0.5), (1, 2, 2, -0.3), (0, 2, 3, 0.1)]  # state 3 (final) unreachable
    f = Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
            torch.tensor([r[3] for r in rows]), num_states=4)
    del gen
    for log in (True, False):
        f2 = _to(f, device).clone()
        f2.scores.requires_grad_(True)
        tot = get_tot_scores(f2, log_semiring=log)
        assert tot.cpu().tolist() == [-INF]
        tot.sum().backward()
        assert f2.scores.grad.cpu().tolist() == [0.0, 0.0, 0.0]


def _vec_from_scores(template, scores):
    return Fsa(template.arcs, scores, num_states=template.num_states_per_fsa,
               arc_splits=template.arc_splits)


def _connected_vec(seed, num=3):
    """FSAs whose every state lies on a complete path (a chain 0->1->...->final is added), so
    forward/backward scores and posteriors are all finite and differentiable."""
    gen = torch.Generator().manual_seed(seed)
    fsas = []
    for _ in range(num):
        ns = ref._randint(gen, 3, 7)
        f = ref.random_acyclic_fsa(gen, num_states=ns, arc_prob=0.5, ensure_path=False,
                                   dtype=torch.float64, with_aux=False, shuffle=False)
        rows = [(int(s), int(d), int(lab), float(x))
                for (s, d, lab), x in zip(f.arcs.tolist(), f.scores.tolist())]
        for s in range(ns - 1):
            rows.append((s, s + 1, -1 if s + 1 == ns - 1 else 1, ref._randn(gen)))
        fsas.append(Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
                        torch.tensor([r[3] for r in rows], dtype=torch.float64), num_states=ns))
    return create_fsa_vec(fsas)


@pytest.mark.parametrize("seed", [40, 41])
def test_gradcheck_tot_scores(device, seed):
    get_tot_scores, *_ = _fb()
    vec = _to(_connected_vec(seed), device)
    scores = vec.scores.detach().clone().requires_grad_(True)

    def fn(s):
        return get_tot_scores(_vec_from_scores(vec, s), log_semiring=True, use_double_scores=True)

    assert torch.autograd.gradcheck(fn, (scores,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_forward_backward_arc_post(device):
    _, get_forward_scores, get_backward_scores, get_arc_post = _fb()
    vec = _to(_connected_vec(42, num=2), device)
    scores = vec.scores.detach().clone().requires_grad_(True)
    for f in (get_forward_scores, get_backward_scores, get_arc_post):
        def fn(s, f=f):
            return f(_vec_from_scores(vec, s), log_semiring=True, use_double_scores=True)
        assert torch.autograd.gradcheck(fn, (scores,), eps=1e-6, atol=1e-7, rtol=1e-5), f


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", ["self_loop", "cycle"])
def test_cyclic_fsa_raises(device, kind):
    get_tot_scores, get_forward_scores, get_backward_scores, get_arc_post = _fb()
    if kind == "self_loop":
        rows = [(0, 1, 1), (1, 1, 2), (1, 2, -1)]
    else:
        rows = [(0, 1, 1), (1, 2, 2), (2, 1, 3), (2, 3, -1)]
    f = Fsa(torch.tensor(rows, dtype=torch.int32))
    other = ref.random_acyclic_fsa(torch.Generator().manual_seed(0), with_aux=False)
    vec = create_fsa_vec([other, f])
    for x in (f, vec):
        x = _to(x, device)
        for fn in (get_tot_scores, get_forward_scores, get_backward_scores, get_arc_post):
            with pytest.raises(ValueError):
                fn(x)
