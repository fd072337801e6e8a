"""CTC prefix scores (decode.ctc_prefix) vs torch's ctc_loss and brute-force path enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from wfst_asr.decode.ctc_prefix import (
    CtcPrefixScorer,
    ctc_prefix_log_prob,
    ctc_seq_log_prob,
)


def _log_probs(T: int, V: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, V, generator=g, dtype=torch.float64).mul(1.5).log_softmax(-1)


def _collapse(path) -> tuple[int, ...]:
    out, prev = [], None
    for s in path:
        if s != prev and s != 0:
            out.append(s)
        prev = s
    return tuple(out)


def _brute(log_probs: torch.Tensor, prefix, exact: bool) -> float:
    """Sum of path probs whose collapsed output starts with (exact: equals) ``prefix``."""
    T, V = log_probs.shape
    p = log_probs.exp().tolist()
    prefix, total = tuple(prefix), 0.0
    for path in itertools.product(range(V), repeat=T):
        out = _collapse(path)
        if (out == prefix) if exact else (out[:len(prefix)] == prefix):
            total += math.prod(p[t][s] for t, s in enumerate(path))
    return math.log(total) if total > 0 else -math.inf


def _ctc_loss_ref(log_probs: torch.Tensor, seq) -> float:
    T = log_probs.shape[0]
    loss = F.ctc_loss(log_probs[:, None], torch.tensor([seq], dtype=torch.long).reshape(1, -1),
                      torch.tensor([T]), torch.tensor([len(seq)]), blank=0, reduction="none")
    return -float(loss[0])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("seq", [[], [1], [1, 1], [2, 3, 2], [4, 4, 1], [1, 2, 3]])
def test_eos_score_equals_ctc_loss(seed, seq):
    lp = _log_probs(7, 5, seed)
    ref = _ctc_loss_ref(lp, seq)
    assert ctc_seq_log_prob(lp, seq) == pytest.approx(ref, rel=1e-10, abs=1e-10)
    scorer = CtcPrefixScorer(lp)
    psi, _ = scorer.score(scorer.prefix_state(seq))
    assert float(psi[0]) == pytest.approx(ref, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("T", [4, 5])
@pytest.mark.parametrize("seed", range(2))
def test_prefix_scores_brute_force(T, seed):
    lp = _log_probs(T, 3, seed)
    scorer = CtcPrefixScorer(lp)
    for prefix in [[], [1], [2], [1, 1], [1, 2], [2, 2, 1], [1, 1, 1], [1, 2, 1, 2, 1]]:
        psi = ctc_prefix_log_prob(lp, prefix)
        assert psi == pytest.approx(_brute(lp, prefix, exact=False), rel=1e-9, abs=1e-12)
        # all one-token extensions at once; entry 0 = the prefix as a whole sequence
        ext, _ = scorer.score(scorer.prefix_state(prefix))
        assert not torch.isnan(ext).any()
        for c in range(3):
            ref = _brute(lp, prefix, exact=True) if c == 0 else _brute(lp, prefix + [c], False)
            if ref == -math.inf:
                assert float(ext[c]) < -1e30 or float(ext[c]) == -math.inf
            else:
                assert float(ext[c]) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_impossible_prefix_is_minus_inf_no_nan():
    lp = _log_probs(4, 3, 0)
    scorer = CtcPrefixScorer(lp)
    state = scorer.prefix_state([1, 1, 1])  # needs 5 frames
    assert state.psi == -math.inf and state.log_prob == -math.inf
    psi, scores = scorer.score(state)
    assert not torch.isnan(psi).any() and (psi == -math.inf).all()
    assert not torch.isnan(scores.r_n).any() and not torch.isnan(scores.r_b).any()
    deeper = scores.state(0, 2)
    assert deeper.psi == -math.inf and not torch.isnan(scorer.score(deeper)[0]).any()
    # a log-prob of exactly -inf in the input (a token never emitted): floored at -1e4, so the
    # extension by it scores below -1e4 (probability 0 in float64), never NaN
    lp2 = lp.clone()
    lp2[:, 2] = -math.inf
    s2 = CtcPrefixScorer(lp2)
    psi2, _ = s2.score(s2.prefix_state([1]))
    assert not torch.isnan(psi2).any() and psi2[2] < -1e4 + 10 and psi2[1] > -20


def test_batch_equals_single_and_extend():
    lp = _log_probs(9, 6, 3)
    scorer = CtcPrefixScorer(lp)
    prefixes = [[], [1], [3, 3], [2, 5, 1], [4, 1, 4, 2]]
    states = [scorer.prefix_state(p) for p in prefixes]
    batch = scorer.score_batch(states)
    assert batch.psi.shape == (5, 6) and batch.r_n.shape == (5, 6, 9)
    for k, st in enumerate(states):
        psi, single = scorer.score(st)
        torch.testing.assert_close(batch.psi[k], psi, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batch.r_n[k], single.r_n[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batch.r_b[k], single.r_b[0], rtol=1e-12, atol=1e-12)
        for c in range(1, 6):
            new = batch.state(k, c)
            assert new.psi == pytest.approx(ctc_prefix_log_prob(lp, prefixes[k] + [c]), rel=1e-12)
            one = scorer.extend(st, c)
            torch.testing.assert_close(one.r_n, new.r_n)
            torch.testing.assert_close(one.r_b, new.r_b)
    # a subset of ids, shared [C] or per state [K, C]
    ids = torch.tensor([[0, 2], [5, 1], [3, 4], [1, 0], [2, 3]])
    sub = scorer.score_batch(states, ids)
    torch.testing.assert_close(sub.psi, batch.psi.gather(1, ids))
    shared = scorer.score_batch(states, torch.tensor([4, 0]))
    torch.testing.assert_close(shared.psi, batch.psi[:, [4, 0]])


def test_length_equals_truncation():
    lp = _log_probs(10, 4, 5)
    a, b = CtcPrefixScorer(lp, length=6), CtcPrefixScorer(lp[:6])
    for prefix in [[], [1], [2, 2], [3, 1, 2]]:
        sa, sb = a.prefix_state(prefix), b.prefix_state(prefix)
        assert sa.psi == sb.psi and sa.log_prob == sb.log_prob
        torch.testing.assert_close(a.score(sa)[0], b.score(sb)[0], rtol=0, atol=0)
        assert sa.log_prob == pytest.approx(_ctc_loss_ref(lp[:6], prefix), rel=1e-10)


def test_float32_follows_input():
    lp = _log_probs(7, 5, 1).float()
    scorer = CtcPrefixScorer(lp)
    psi, scores = scorer.score(scorer.prefix_state([2, 2]))
    assert psi.dtype == torch.float32 and scores.r_n.dtype == torch.float32
    assert float(psi[0]) == pytest.approx(_ctc_loss_ref(lp, [2, 2]), rel=1e-5)
