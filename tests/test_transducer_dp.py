"""The transducer losses' direct anti-diagonal DP (wfst_asr.losses.transducer_dp) against the
generic engine path it replaced (``transducer._USE_ENGINE = True``: the grid lattice as an
FsaVec summed by get_tot_scores, and the simple loss's log-probs by autograd): totals,
occupations and gradients of the full, simple (with and without smoothing) and pruned losses
on random batches (random frame and label lengths per utterance, excluded utterances, U = 0,
T = 1, several s_range), plus gradcheck of the DP itself."""

from __future__ import annotations

import pytest
import torch

from wfst_asr.losses import (
    get_pruned_ranges,
    pruned_transducer_loss,
    simple_transducer_loss,
    transducer_loss,
)
from wfst_asr.losses import transducer as tr
from wfst_asr.losses.transducer_dp import grid_totals


def _both(monkeypatch, fn, *inputs):
    """``fn(*inputs)`` (returns ``(loss [B], extra)``) by the DP and by the engine: per path the
    loss, the extra tensor (or None) and the gradients of ``sum(loss * weights)``."""
    out = []
    for engine in (False, True):
        monkeypatch.setattr(tr, "_USE_ENGINE", engine)
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        loss, extra = fn(*xs)
        w = torch.arange(1, loss.numel() + 1, dtype=loss.dtype)
        (loss * w).sum().backward()
        out.append((loss.detach(), extra, [x.grad for x in xs]))
    return out


def _close(dp, eng, dtype):
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-11}
    torch.testing.assert_close(dp[0], eng[0], **tol)
    if dp[1] is not None:
        torch.testing.assert_close(dp[1], eng[1], **tol)
    for a, b in zip(dp[2], eng[2]):
        torch.testing.assert_close(a, b, **tol)


def _batch(g, T_max, U_max, B):
    flens = torch.randint(0, T_max + 1, (B,), generator=g)
    flens[0] = T_max  # the grid's longest utterance
    ulens = torch.randint(0, U_max + 1, (B,), generator=g)
    ys = [torch.randint(1, 6, (int(n),), generator=g).tolist() for n in ulens]
    return flens, ulens, ys


CASES = [(0, 5, 3, 3), (1, 1, 4, 2), (2, 6, 0, 3), (3, 7, 5, 4), (4, 1, 0, 2), (5, 4, 6, 3)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed, T, U, B", CASES)
def test_full_and_simple_match_engine(monkeypatch, seed, T, U, B, dtype):
    g = torch.Generator().manual_seed(seed)
    V = 6
    flens, _, ys = _batch(g, T, U, B)
    logits = torch.randn(B, T, U + 1, V, generator=g, dtype=dtype) * 2
    dp, eng = _both(monkeypatch, lambda x: (transducer_loss(x, ys, flens, reduction="none")[0],
                                            None), logits)
    _close(dp, eng, dtype)
    am = torch.randn(B, T, V, generator=g, dtype=dtype)
    lm = torch.randn(B, U + 1, V, generator=g, dtype=dtype)

    for lms, ams in ((0.0, 0.0), (0.25, 0.1)):
        def simple(a, m, lms=lms, ams=ams):
            loss, info = simple_transducer_loss(a, m, ys, flens, reduction="none",
                                                lm_only_scale=lms, am_only_scale=ams,
                                                return_occupation=True)
            return loss, info["occupation"]
        dp, eng = _both(monkeypatch, simple, am, lm)
        _close(dp, eng, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed, T, U, B", CASES)
def test_pruned_matches_engine(monkeypatch, seed, T, U, B, dtype):
    g = torch.Generator().manual_seed(100 + seed)
    V = 6
    flens, ulens, ys = _batch(g, T, U, B)
    for S in (2, 3, U + 2):
        occ = torch.rand(B, T, U + 1, generator=g)
        ranges = get_pruned_ranges(occ, flens, ulens, S)
        logits = torch.randn(B, T, S, V, generator=g, dtype=dtype) * 2
        dp, eng = _both(monkeypatch, lambda x, r=ranges: (
            pruned_transducer_loss(x, ys, r, flens, reduction="none")[0], None), logits)
        _close(dp, eng, dtype)


def test_pruned_windows_without_path_and_late_start(monkeypatch):
    """Windows that leave no path (excluded, zero gradient) and a first window that starts
    past position 0 (the engine's lattice, which starts there, is kept)."""
    g = torch.Generator().manual_seed(7)
    B, T, S, V = 3, 4, 2, 5
    ys = [[1, 2], [3, 1, 2], [2]]
    starts = torch.tensor([[0, 1, 1, 1], [0, 0, 3, 3], [0, 0, 1, 1]])  # utt 1: a gap
    ranges = starts.unsqueeze(-1) + torch.arange(S)
    logits = torch.randn(B, T, S, V, generator=g, dtype=torch.float64)
    dp, eng = _both(monkeypatch, lambda x: (
        pruned_transducer_loss(x, ys, ranges, [4, 4, 3], reduction="none")[0], None), logits)
    _close(dp, eng, torch.float64)
    assert float(dp[0][1]) == 0.0 and float(dp[2][0][1].abs().sum()) == 0.0
    late = ranges.clone()
    late[2] += 1  # starts at u = 1: the engine path for the batch
    dp, eng = _both(monkeypatch, lambda x: (
        pruned_transducer_loss(x, ys, late, [4, 4, 3], reduction="none")[0], None), logits)
    _close(dp, eng, torch.float64)


def test_grid_totals_gradcheck():
    g = torch.Generator().manual_seed(3)
    B, T, W = 3, 3, 3
    blank = torch.randn(B, T, W, generator=g, dtype=torch.float64, requires_grad=True)
    label = torch.randn(B, T, W, generator=g, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([0, 2])
    T_n, U_n = torch.tensor([3, 1]), torch.tensor([2, 1])
    for occ in (False, True):
        assert torch.autograd.gradcheck(
            lambda b, lab, o=occ: grid_totals(b, lab, keep, T_n, U_n, o)[0], (blank, label))
