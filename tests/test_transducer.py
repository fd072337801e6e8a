"""Transducer losses (full, simple, pruned) and search vs references written here.

Every expected value comes from code in this file: an explicit alpha recursion over (t, u)
(float64 torch scalars, so autograd gives the reference gradient), brute-force enumeration of
alignments, a restricted recursion for the pruned lattice, and plain per-utterance loops for
search. Nothing is compared with the library's own output except where two of its functions
must agree by definition (pruned with full windows vs full).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from wfst_asr.decode.transducer import beam_search, greedy_search
from wfst_asr.fsa import get_tot_scores
from wfst_asr.losses import (
    TransducerLoss,
    do_rnnt_pruning,
    get_pruned_ranges,
    pruned_rnnt_lattice,
    pruned_transducer_loss,
    rnnt_lattice,
    simple_transducer_loss,
    transducer_loss,
)
from wfst_asr.models import Joiner, StatelessDecoder, Transducer, add_sos

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- references
def _lse(xs):
    xs = [x for x in xs if not (isinstance(x, float) and x == NEG_INF)]
    if not xs:
        return torch.tensor(NEG_INF, dtype=torch.float64)
    return torch.logsumexp(torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in xs]), 0)


def ref_total(lp, y, T, window=None):
    """log sum over RNN-T alignments by the alpha recursion; ``lp [T', U'+1, V]`` log-probs
    indexed ``lp[t, u]`` (or, with ``window``, ``lp[t, u - window[t]]``, a window of
    ``lp.shape[1]`` positions per frame; states outside the windows do not exist)."""
    U = len(y)
    W = lp.shape[1]

    def inside(t, u):
        return window is None or window[t] <= u < window[t] + W

    def at(t, u, k):
        return lp[t, u - (0 if window is None else window[t]), k]

    alpha = {}
    for t in range(T):
        for u in range(U + 1):
            if not inside(t, u):
                continue
            if t == 0 and u == 0:
                alpha[t, u] = torch.tensor(0.0, dtype=torch.float64)
                continue
            terms = []
            if t > 0 and (t - 1, u) in alpha:
                terms.append(alpha[t - 1, u] + at(t - 1, u, 0))
            if u > 0 and (t, u - 1) in alpha:
                terms.append(alpha[t, u - 1] + at(t, u - 1, y[u - 1]))
            alpha[t, u] = _lse(terms)
    if (T - 1, U) not in alpha:
        return torch.tensor(NEG_INF, dtype=torch.float64)
    return alpha[T - 1, U] + at(T - 1, U, 0)


def ref_occupation(lp, y, T):
    """``[T, U+1]`` posterior of visiting each state (alpha + beta - total), float64."""
    U = len(y)
    a = torch.full((T, U + 1), NEG_INF, dtype=torch.float64)
    b = torch.full((T, U + 1), NEG_INF, dtype=torch.float64)
    for t in range(T):
        for u in range(U + 1):
            if t == 0 and u == 0:
                a[t, u] = 0.0
                continue
            terms = []
            if t > 0:
                terms.append(a[t - 1, u] + lp[t - 1, u, 0])
            if u > 0:
                terms.append(a[t, u - 1] + lp[t, u - 1, y[u - 1]])
            a[t, u] = _lse(terms)
    for t in range(T - 1, -1, -1):
        for u in range(U, -1, -1):
            if t == T - 1 and u == U:
                b[t, u] = lp[t, u, 0]
                continue
            terms = []
            if t < T - 1:
                terms.append(b[t + 1, u] + lp[t, u, 0])
            if u < U:
                terms.append(b[t, u + 1] + lp[t, u, y[u]])
            b[t, u] = _lse(terms)
    return torch.exp(a + b - b[0, 0])


def brute_total(lp, y, T):
    """Sum over every alignment: T blanks and U labels, the last move a blank."""
    U = len(y)
    scores = []
    for label_slots in itertools.combinations(range(T + U - 1), U):
        t = u = 0
        s = 0.0
        for i in range(T + U):
            if i in label_slots:
                s += float(lp[t, u, y[u]])
                u += 1
            else:
                s += float(lp[t, u, 0])
                t += 1
        assert t == T and u == U
        scores.append(s)
    m = max(scores)
    return m + math.log(sum(math.exp(x - m) for x in scores))


def _case(seed, B, T, U, V, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    flens = [int(x) for x in torch.randint(1, T + 1, (B,), generator=g)]
    flens[0] = T
    ulens = [int(x) for x in torch.randint(0, U + 1, (B,), generator=g)]
    ulens[-1] = U
    ys = [torch.randint(1, V, (n,), generator=g).tolist() for n in ulens]
    logits = torch.randn(B, T, U + 1, V, generator=g, dtype=dtype) * scale
    return logits, ys, flens


# ----------------------------------------------------------------------------- full loss
@pytest.mark.parametrize("seed,B,T,U,V", [(0, 1, 4, 3, 5), (1, 3, 6, 4, 6), (2, 4, 5, 6, 3),
                                          (3, 2, 1, 2, 4), (4, 5, 7, 1, 8)])
def test_full_loss_matches_dp(seed, B, T, U, V):
    logits, ys, flens = _case(seed, B, T, U, V)
    x = logits.clone().requires_grad_()
    loss, info = transducer_loss(x, ys, flens, reduction="none")
    assert info["num_excluded"] == 0 and info["frames"] == sum(flens)
    xr = logits.clone().requires_grad_()
    lp = xr.log_softmax(-1)
    ref = torch.stack([-ref_total(lp[b], ys[b], flens[b]) for b in range(B)])
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-10)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-10)


def test_full_loss_float32_and_reductions():
    logits, ys, flens = _case(5, 3, 6, 4, 7, dtype=torch.float32, scale=2.0)
    lp = logits.double().log_softmax(-1)
    ref = torch.stack([-ref_total(lp[b], ys[b], flens[b]) for b in range(3)])
    none, _ = transducer_loss(logits, ys, flens, reduction="none")
    assert none.dtype == torch.float32
    torch.testing.assert_close(none.double(), ref, rtol=1e-5, atol=1e-4)
    s, _ = transducer_loss(logits, ys, flens, reduction="sum")
    m, _ = transducer_loss(logits, ys, flens, reduction="mean")
    torch.testing.assert_close(s.double(), ref.sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(m.double(), ref.sum() / sum(flens), rtol=1e-5, atol=1e-4)
    # padded targets + lengths give the same
    pad = torch.zeros(3, 4, dtype=torch.long)
    for i, y in enumerate(ys):
        pad[i, :len(y)] = torch.tensor(y, dtype=torch.long)
    p, _ = transducer_loss(logits, pad, torch.tensor(flens), target_lens=[len(y) for y in ys],
                           reduction="none")
    torch.testing.assert_close(p, none)


@pytest.mark.parametrize("T,U", [(1, 0), (1, 2), (3, 2), (4, 3), (2, 4)])
def test_full_loss_matches_brute_force(T, U):
    g = torch.Generator().manual_seed(10 * T + U)
    V = 4
    y = torch.randint(1, V, (U,), generator=g).tolist()
    logits = torch.randn(1, T, U + 1, V, generator=g, dtype=torch.float64)
    loss, _ = transducer_loss(logits, [y], [T])
    assert float(-loss) == pytest.approx(brute_total(logits[0].log_softmax(-1), y, T), abs=1e-10)


def test_rnnt_lattice_structure_and_total():
    logits, ys, flens = _case(6, 3, 5, 3, 6)
    lp = logits.log_softmax(-1)
    lat = rnnt_lattice(lp, ys, flens)
    assert lat.num_fsas == 3
    for b in range(3):
        T, U = flens[b], len(ys[b])
        assert int(lat.num_states_per_fsa[b]) == T * (U + 1) + 1
        assert int(lat.arc_splits[b + 1] - lat.arc_splits[b]) == (T - 1) * (U + 1) + 1 + T * U
    # scores are gathered by the documented attributes
    torch.testing.assert_close(lat.scores, lp[lat.seq, lat.frame, lat.pos, lat.token])
    lab = lat.labels.long()
    assert bool(((lab == -1) | (lab == 0) | (lab == lat.token)).all())
    tot = get_tot_scores(lat, log_semiring=True, use_double_scores=True)
    ref = torch.stack([ref_total(lp[b], ys[b], flens[b]) for b in range(3)])
    torch.testing.assert_close(tot, ref)


def test_full_loss_gradcheck():
    logits, ys, flens = _case(7, 2, 3, 2, 4)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: transducer_loss(z, ys, flens, reduction="none")[0], (x,), fast_mode=True)
    tiny = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: transducer_loss(z, [[2]], [2])[0], (tiny,))


# ----------------------------------------------------------------------------- exclusion
def test_excluded_utterances_give_no_nan():
    logits, ys, flens = _case(8, 4, 5, 3, 5, dtype=torch.float32)
    flens[1] = 0
    x = logits.clone().requires_grad_()
    loss, info = transducer_loss(x, ys, flens, reduction="none")
    assert info["excluded"] == [1] and info["num_excluded"] == 1
    assert float(loss[1].detach()) == 0.0 and bool(torch.isfinite(loss).all())
    loss.sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad[1].abs().sum()) == 0.0
    assert info["frames"] == sum(flens)
    # everything excluded: a zero that still backpropagates
    x2 = logits.clone().requires_grad_()
    loss2, info2 = transducer_loss(x2, ys, [0, 0, 0, 0])
    assert info2["num_excluded"] == 4 and float(loss2.detach()) == 0.0
    loss2.backward()
    assert float(x2.grad.abs().sum()) == 0.0


def test_nonfinite_total_is_excluded():
    logits, ys, flens = _case(9, 3, 4, 2, 5)
    logits[2, :, :, 0] = NEG_INF  # blank impossible for utterance 2: no path
    x = logits.clone().requires_grad_()
    loss, info = transducer_loss(x, ys, flens, reduction="none")
    assert info["excluded"] == [2] and info["num_nonfinite"] == 1
    loss.sum().backward()
    assert bool(torch.isfinite(loss).all()) and not bool(torch.isnan(x.grad).any())


def test_bad_inputs_raise():
    logits = torch.randn(2, 3, 3, 4)
    with pytest.raises(ValueError):
        transducer_loss(logits, [[1, 0], [2]], [3, 3])  # blank in a transcript
    with pytest.raises(ValueError):
        transducer_loss(logits, [[1, 2, 3], [2]], [3, 3])  # U + 1 > 3 positions
    with pytest.raises(ValueError):
        transducer_loss(logits, [[1], [2]], [4, 3])  # frames > T
    with pytest.raises(ValueError):
        transducer_loss(logits, [[1], [2]], [3, 3], reduction="avg")


# ----------------------------------------------------------------------------- simple loss
@pytest.mark.parametrize("seed,B,T,U,V", [(0, 2, 5, 3, 6), (1, 3, 4, 5, 4), (2, 1, 1, 0, 3)])
def test_simple_loss_equals_full_on_additive_logits(seed, B, T, U, V):
    g = torch.Generator().manual_seed(seed)
    am = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    lm = torch.randn(B, U + 1, V, generator=g, dtype=torch.float64) * 3
    _, ys, flens = _case(seed, B, T, U, V)
    a, m = am.clone().requires_grad_(), lm.clone().requires_grad_()
    loss, info = simple_transducer_loss(a, m, ys, flens, reduction="none",
                                        return_occupation=True)
    a2, m2 = am.clone().requires_grad_(), lm.clone().requires_grad_()
    lp = (a2.unsqueeze(2) + m2.unsqueeze(1)).log_softmax(-1)
    ref = torch.stack([-ref_total(lp[b], ys[b], flens[b]) for b in range(B)])
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-10)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(m.grad, m2.grad, rtol=1e-8, atol=1e-10)
    occ = info["occupation"]
    assert occ.shape == (B, T, U + 1)
    for b in range(B):
        Tb, Ub = flens[b], len(ys[b])
        exp = torch.zeros(T, U + 1, dtype=torch.float64)
        exp[:Tb, :Ub + 1] = ref_occupation(lp[b].detach(), ys[b], Tb)
        torch.testing.assert_close(occ[b], exp, rtol=1e-8, atol=1e-10)


def test_simple_loss_smoothing_and_float32():
    g = torch.Generator().manual_seed(3)
    B, T, U, V = 2, 5, 3, 7
    am = torch.randn(B, T, V, generator=g) * 2
    lm = torch.randn(B, U + 1, V, generator=g) * 2
    _, ys, flens = _case(3, B, T, U, V)
    lms, ams = 0.25, 0.1
    loss, _ = simple_transducer_loss(am, lm, ys, flens, reduction="none",
                                     lm_only_scale=lms, am_only_scale=ams)
    a, m = am.double(), lm.double()
    lp = ((1 - lms - ams) * (a.unsqueeze(2) + m.unsqueeze(1)).log_softmax(-1)
          + lms * m.log_softmax(-1).unsqueeze(1) + ams * a.log_softmax(-1).unsqueeze(2))
    ref = torch.stack([-ref_total(lp[b], ys[b], flens[b]) for b in range(B)])
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-4)


def test_simple_loss_gradcheck():
    g = torch.Generator().manual_seed(4)
    am = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    lm = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ys, flens = [[1, 3], [2]], [3, 2]
    assert torch.autograd.gradcheck(
        lambda a, m: simple_transducer_loss(a, m, ys, flens, reduction="none",
                                            lm_only_scale=0.2)[0], (am, lm), fast_mode=True)
    # the occupation path (one engine pass, surrogate gradient) has the same gradient
    assert torch.autograd.gradcheck(
        lambda a, m: simple_transducer_loss(a, m, ys, flens, reduction="none",
                                            return_occupation=True)[0], (am, lm), fast_mode=True)


# ----------------------------------------------------------------------------- pruning
def _full_ranges(B, T, S):
    return torch.arange(S).expand(B, T, S).clone()


@pytest.mark.parametrize("extra", [0, 2])
def test_pruned_equals_full_with_full_windows(extra):
    logits, ys, flens = _case(11, 3, 5, 3, 6)
    B, T, U1, V = logits.shape
    S = U1 + extra
    ranges = _full_ranges(B, T, S)
    idx = ranges.clamp(max=U1 - 1)
    plog = logits.gather(2, idx.unsqueeze(-1).expand(B, T, S, V))
    full, _ = transducer_loss(logits, ys, flens, reduction="none")
    pruned, info = pruned_transducer_loss(plog, ys, ranges, flens, reduction="none")
    assert info["num_excluded"] == 0
    torch.testing.assert_close(pruned, full, rtol=1e-10, atol=1e-10)


def test_pruned_matches_window_dp_and_gradcheck():
    g = torch.Generator().manual_seed(12)
    B, T, S, V = 2, 5, 3, 5
    ys = [[1, 2, 3, 4], [2, 1]]
    flens = [5, 4]
    # hand-made valid windows: s_0 = 0, steps <= S-1, last window holds U
    starts = torch.tensor([[0, 1, 1, 2, 2], [0, 0, 0, 0, 0]])
    ranges = starts.unsqueeze(-1) + torch.arange(S)
    logits = torch.randn(B, T, S, V, generator=g, dtype=torch.float64)
    x = logits.clone().requires_grad_()
    loss, info = pruned_transducer_loss(x, ys, ranges, flens, reduction="none")
    assert info["num_excluded"] == 0
    xr = logits.clone().requires_grad_()
    lp = xr.log_softmax(-1)
    ref = torch.stack([-ref_total(lp[b], ys[b], flens[b], window=starts[b].tolist())
                       for b in range(B)])
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-10)
    loss.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-10)
    lat = pruned_rnnt_lattice(lp.detach(), ys, ranges, flens)
    torch.testing.assert_close(get_tot_scores(lat, use_double_scores=True), -ref.detach())
    tiny = logits[:1, :2, :2, :3].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: pruned_transducer_loss(z, [[1, 2]], ranges[:1, :2, :2], [2])[0], (tiny,))
    small = logits[:, :4, :, :4].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: pruned_transducer_loss(z, [[1, 2, 3], [2]], ranges[:, :4], [4, 3],
                                         reduction="none")[0], (small,), fast_mode=True)


def test_pruned_ranges_are_valid_and_follow_occupation():
    g = torch.Generator().manual_seed(13)
    B, T, U, S = 4, 12, 9, 4
    occ = torch.rand(B, T, U + 1, generator=g)
    flens = torch.tensor([12, 7, 3, 1])
    ulens = torch.tensor([9, 9, 2, 0])
    ranges = get_pruned_ranges(occ, flens, ulens, S)
    assert ranges.shape == (B, T, S)
    assert bool((ranges - ranges[..., :1] == torch.arange(S)).all())
    for b in range(B):
        Tb, Ub = int(flens[b]), int(ulens[b])
        s = ranges[b, :Tb, 0].tolist()
        hi = max(Ub + 1 - S, 0)
        assert s[0] == 0 and all(0 <= x <= hi for x in s)
        assert all(0 <= s[i + 1] - s[i] <= S - 1 for i in range(Tb - 1))
        if Ub <= Tb * (S - 1):
            assert s[-1] == hi
    # a sharply peaked occupation along a diagonal path is kept inside the windows
    T, U = 10, 8
    path = [min(U, (t * U) // (T - 1)) for t in range(T)]
    peak = torch.zeros(1, T, U + 1)
    for t, u in enumerate(path):
        peak[0, t, u] = 1.0
    r = get_pruned_ranges(peak, [T], [U], 3)
    for t, u in enumerate(path):
        assert int(r[0, t, 0]) <= u <= int(r[0, t, -1])


def test_pruned_infeasible_is_excluded():
    B, T, S, V = 2, 2, 2, 4
    ys = [[1, 2, 3], [1]]  # utterance 0: 3 labels > T * (S - 1) = 2
    ranges = get_pruned_ranges(torch.rand(B, T, 4), [2, 2], [3, 1], S)
    x = torch.randn(B, T, S, V, requires_grad=True)
    loss, info = pruned_transducer_loss(x, ys, ranges, [2, 2], reduction="none")
    assert info["excluded"] == [0] and float(loss[0].detach()) == 0.0
    loss.sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad[0].abs().sum()) == 0.0


def test_do_rnnt_pruning_gathers_positions():
    am = torch.randn(2, 3, 5)
    lm = torch.randn(2, 4, 5)
    ranges = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4]]).expand(2, 3, 3)
    a, m = do_rnnt_pruning(am, lm, ranges)
    assert a.shape == m.shape == (2, 3, 3, 5)
    for b, t, j in itertools.product(range(2), range(3), range(3)):
        torch.testing.assert_close(a[b, t, j], am[b, t])
        torch.testing.assert_close(m[b, t, j], lm[b, min(int(ranges[b, t, j]), 3)])


# ----------------------------------------------------------------------------- module + models
def _model(V=6, enc_dim=5, seed=0):
    torch.manual_seed(seed)
    return Transducer(enc_dim, V, decoder_dim=8, joiner_dim=7, context_size=2).double()


def test_transducer_loss_module_full_and_pruned():
    V, B, T = 6, 3, 7
    model = _model(V)
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(B, T, 5, generator=g, dtype=torch.float64)
    lens = torch.tensor([7, 5, 6])
    ys = [[1, 2, 3], [4, 5], [1]]
    full_loss = TransducerLoss(pruned=False)
    dec, no_am, no_lm = model(enc, ys, simple=False)
    assert no_am is None and no_lm is None
    torch.testing.assert_close(dec, model.decoder(add_sos(ys)))
    loss, _ = full_loss(enc, lens, dec, ys, model.joiner)
    # reference: the DP over the model's own full logits
    lp = model.joiner(enc.unsqueeze(2), dec.unsqueeze(1)).log_softmax(-1)
    ref = sum(-ref_total(lp[b], ys[b], int(lens[b])) for b in range(B))
    torch.testing.assert_close(loss, ref.detach())
    # pruned with s_range >= U+1: the pruned part equals the full loss
    pl = TransducerLoss(pruned=True, s_range=4, simple_loss_scale=0.5, lm_only_scale=0.0)
    model.zero_grad()
    dec2, am2, lm2 = model(enc, ys)
    loss2, info2 = pl(enc, lens, dec2, ys, model.joiner, am2, lm2)
    assert info2["transducer_loss"] == pytest.approx(float(ref.detach()), rel=1e-9)
    simple_ref = simple_transducer_loss(model.simple_am_proj(enc),
                                        model.simple_lm_proj(dec), ys, lens)[0]
    torch.testing.assert_close(loss2, 0.5 * simple_ref.detach() + ref.detach())
    loss2.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(gr).all()) for gr in grads)
    # narrow windows still train (finite loss and gradients)
    model.zero_grad()
    dec3, am3, lm3 = model(enc, ys)
    loss3, info3 = TransducerLoss(pruned=True, s_range=2)(enc, lens, dec3, ys, model.joiner,
                                                          am3, lm3)
    loss3.backward()
    assert info3["num_excluded"] == 0 and bool(torch.isfinite(loss3))


def test_stateless_decoder_context():
    dec = StatelessDecoder(6, 4, blank=0, context_size=2)
    y = torch.tensor([[0, 3, 2, 5]])
    out = dec(y)
    assert out.shape == (1, 4, 4)
    for u in range(4):  # position u depends on tokens u-1 and u only
        ctx = torch.tensor([[y[0, u - 1] if u > 0 else 0, y[0, u]]])
        torch.testing.assert_close(dec(ctx, need_pad=False)[0, -1], out[0, u])


def _ref_greedy(decoder, joiner, enc, T, max_sym):
    """One utterance, one step at a time."""
    hyp, ctx = [], [0] * decoder.context_size
    for t in range(T):
        for _ in range(max_sym):
            d = decoder(torch.tensor([ctx[-decoder.context_size:]]), need_pad=False)[0, -1]
            v = int(joiner(enc[t], d).argmax())
            if v == 0:
                break
            hyp.append(v)
            ctx.append(v)
    return hyp


def test_greedy_search_peaky_and_reference():
    V = 5
    joiner = Joiner(V, 3, V, V)
    decoder = StatelessDecoder(V, 3)
    with torch.no_grad():  # logits = 10 * tanh(enc): the decoder is ignored
        joiner.encoder_proj.weight.copy_(torch.eye(V))
        joiner.encoder_proj.bias.zero_()
        joiner.decoder_proj.weight.zero_()
        joiner.decoder_proj.bias.zero_()
        joiner.output_linear.weight.copy_(10 * torch.eye(V))
        joiner.output_linear.bias.zero_()
    want = [[3, 0, 1, 1, 0, 4], [2, 2, 0, 0, 0, 0]]
    enc = torch.stack([torch.eye(V)[w] for w in want]) * 3
    hyps = greedy_search(decoder, joiner, enc, torch.tensor([6, 3]))
    assert hyps == [[3, 1, 1, 4], [2, 2]]
    # random model: batched greedy == the one-at-a-time reference, several max_sym
    torch.manual_seed(0)
    decoder, joiner = StatelessDecoder(V, 4), Joiner(6, 4, 8, V)
    with torch.no_grad():
        joiner.output_linear.bias[0] = -1.0  # fewer blanks: several labels per frame
    enc = torch.randn(3, 8, 6) * 2
    lens = [8, 5, 2]
    for max_sym in (1, 3):
        hyps = greedy_search(decoder, joiner, enc, lens, max_sym_per_frame=max_sym)
        with torch.no_grad():
            refs = [_ref_greedy(decoder, joiner, enc[b], lens[b], max_sym) for b in range(3)]
        assert hyps == refs
    assert any(len(h) > max(lens[b] for b in range(3)) // 2 for h in hyps)


def test_beam_search_beam1_is_greedy_and_wide_beam_is_exact():
    V = 3
    torch.manual_seed(1)
    decoder, joiner = StatelessDecoder(V, 4), Joiner(5, 4, 6, V)
    enc = torch.randn(4, 6, 5)
    lens = [6, 4, 3, 1]
    assert beam_search(decoder, joiner, enc, lens, beam=1) == greedy_search(
        decoder, joiner, enc, lens, max_sym_per_frame=1)
    # enumerate every one-label-per-frame alignment of short utterances
    T = 4
    best = beam_search(decoder, joiner, enc[:2, :T], [T, T], beam=V ** T)
    with torch.no_grad():
        for b in range(2):
            totals: dict[tuple, list[float]] = {}
            for outs in itertools.product(range(V), repeat=T):
                seq, score = [], 0.0
                for t, v in enumerate(outs):
                    ctx = ([0] * decoder.context_size + seq)[-decoder.context_size:]
                    d = decoder(torch.tensor([ctx]), need_pad=False)[0, -1]
                    score += float(joiner(enc[b, t], d).log_softmax(-1)[v])
                    if v:
                        seq.append(v)
                totals.setdefault(tuple(seq), []).append(score)
            agg = {k: math.log(sum(math.exp(x) for x in v)) for k, v in totals.items()}
            assert tuple(best[b]) == max(agg, key=agg.get)
