"""CtcLoss (wfst_asr.losses) vs torch.nn.functional.ctc_loss; infeasible utterances; nan_guard.

Gradients are compared at the logits (the input of log_softmax), where the engine's true
gradient and torch's (which assumes normalised log-probs) agree: softmax minus posterior.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wfst_asr.losses import CtcLoss, ctc_min_frames, nan_guard

V = 6


def _torch_ctc(logits, lens, targets):
    """torch's per-utterance CTC loss [B] (reduction='none', inf where infeasible)."""
    lp = logits.log_softmax(-1).transpose(0, 1)
    flat = torch.tensor([t for s in targets for t in s], dtype=torch.long)
    return F.ctc_loss(lp, flat, torch.as_tensor(lens), torch.tensor([len(s) for s in targets]),
                      blank=0, reduction="none", zero_infinity=False)


def _data(seed=0, lens=(12, 7, 10, 3, 9)):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lens), max(lens) + 2
    logits = torch.randn(B, T, V, generator=g) * 2
    targets = []
    for n in lens:
        U = int(torch.randint(0, max(1, n // 2) + 1, (1,), generator=g))
        targets.append(torch.randint(1, V, (U,), generator=g).tolist())
    targets[0] = [2, 2, 3][: lens[0] // 2]  # a repeat (needs a blank between)
    return logits, torch.tensor(lens), targets


def _both(reduction, logits, lens, targets):
    """(engine loss, engine logits grad, torch loss, torch logits grad, info)."""
    a = logits.clone().requires_grad_()
    loss, info = CtcLoss(reduction=reduction)(a.log_softmax(-1), lens, targets)
    loss.sum().backward()
    b = logits.clone().requires_grad_()
    ref = _torch_ctc(b, lens, targets)
    if reduction == "sum":
        ref = ref.sum()
    elif reduction == "mean":
        ref = ref.sum() / lens.sum()
    ref.sum().backward()
    return loss, a.grad, ref, b.grad, info


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torch(reduction, seed):
    logits, lens, targets = _data(seed)
    loss, g, ref, g_ref, info = _both(reduction, logits, lens, targets)
    assert info["num_excluded"] == 0 and info["frames"] == int(lens.sum())
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-4)


def test_weighted_grad_none():
    logits, lens, targets = _data(3)
    w = torch.rand(len(targets))
    a = logits.clone().requires_grad_()
    loss, _ = CtcLoss(reduction="none")(a.log_softmax(-1), lens, targets)
    (loss * w).sum().backward()
    b = logits.clone().requires_grad_()
    (_torch_ctc(b, lens, targets) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-4)


def test_min_frames():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([1, 1, 2, 2, 2]) == 8
    assert ctc_min_frames([1, 1, 2, 2, 2], modified=True) == 5


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_infeasible_excluded(reduction):
    logits, lens, targets = _data(5, lens=(10, 4, 8, 3, 6))
    targets[1] = [1, 2, 3, 4, 5]        # U = 5 > T = 4
    targets[3] = [2, 2]                 # needs 3 frames: feasible at T = 3 exactly
    targets[4] = [3, 3, 3, 1]           # needs 6 frames: feasible exactly
    targets[2] = [4, 4, 4, 4, 1, 2]     # needs 9 frames > 8
    logits.requires_grad_()
    loss, info = CtcLoss(reduction=reduction)(logits.log_softmax(-1), lens, targets)
    assert info["num_utts"] == 5
    assert info["num_excluded"] == 2 and info["excluded"] == [1, 2]
    assert info["num_nonfinite"] == 0
    kept = [0, 3, 4]
    assert info["frames"] == int(lens[kept].sum())
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[[1, 2]].abs().sum() == 0
    # the kept ones equal torch's CTC on the kept sub-batch
    sub = logits.detach()[kept].clone().requires_grad_()
    ref = _torch_ctc(sub, lens[kept], [targets[i] for i in kept])
    if reduction == "none":
        torch.testing.assert_close(loss[kept], ref, rtol=1e-5, atol=1e-4)
        assert loss[[1, 2]].abs().sum() == 0
        ref = ref.sum()
    elif reduction == "sum":
        ref = ref.sum()
    else:
        ref = ref.sum() / lens[kept].sum()
    if reduction != "none":
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    ref.backward()
    torch.testing.assert_close(logits.grad[kept], sub.grad, rtol=0, atol=1e-4)


def test_modified_feasibility():
    logits, lens, targets = _data(2, lens=(3, 5))
    targets = [[2, 2, 2], [1]]
    loss, info = CtcLoss(modified=True)(logits.log_softmax(-1), lens, targets)
    assert info["num_excluded"] == 0 and torch.isfinite(loss)
    _, info = CtcLoss(modified=False)(logits.log_softmax(-1), lens, targets)
    assert info["excluded"] == [0]


def test_all_excluded_and_empty():
    logits = torch.randn(2, 3, V, requires_grad=True)
    loss, info = CtcLoss(reduction="mean")(logits.log_softmax(-1), torch.tensor([3, 1]),
                                           [[1, 2, 3, 4], [1, 2]])
    assert info["num_excluded"] == 2 and info["frames"] == 0
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad.abs().sum() == 0
    # empty transcripts and zero-length outputs are feasible
    loss, info = CtcLoss(reduction="none")(logits.log_softmax(-1), torch.tensor([3, 0]),
                                           [[], []])
    assert info["num_excluded"] == 0
    ref = -logits.log_softmax(-1)[0, :, 0].sum()
    torch.testing.assert_close(loss, torch.stack([ref, ref.new_zeros(())]))


def test_nonfinite_total_excluded():
    lp = torch.randn(2, 4, V).log_softmax(-1)
    lp[0, :, 0] = float("-inf")  # no blank anywhere: [1, 1] has no path
    lp.requires_grad_()
    loss, info = CtcLoss()(lp, torch.tensor([4, 4]), [[1, 1], [2]])
    assert info["excluded"] == [0] and info["num_nonfinite"] == 1
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(lp.grad).all() and lp.grad[0].abs().sum() == 0


def test_bad_inputs():
    lp = torch.randn(2, 4, V).log_softmax(-1)
    with pytest.raises(ValueError, match="token ids"):
        CtcLoss()(lp, torch.tensor([4, 4]), [[V], [1]])
    with pytest.raises(ValueError, match="out_lens"):
        CtcLoss()(lp, torch.tensor([5, 4]), [[1], [1]])
    with pytest.raises(ValueError, match="transcripts"):
        CtcLoss()(lp, torch.tensor([4, 4]), [[1]])
    with pytest.raises(ValueError, match="reduction"):
        CtcLoss(reduction="avg")


def test_nan_guard():
    p = torch.nn.Parameter(torch.ones(3))
    (p * 2).sum().backward()
    assert nan_guard(torch.tensor(1.0), [p]) and p.grad is not None
    assert not nan_guard(torch.tensor(float("nan")), [p]) and p.grad is None
    (p * float("inf")).sum().backward()
    assert not nan_guard(torch.tensor(1.0), [p]) and p.grad is None


def test_with_model_end_to_end():
    from wfst_asr.models import build_model
    torch.manual_seed(0)
    model = build_model("blstm", 4, V, num_tokens=V, hidden=6, num_layers=2, subsampling=2)
    x, lens = torch.randn(3, 11, 4), torch.tensor([11, 8, 5])
    lp, out_lens = model(x, lens)
    loss, info = CtcLoss(reduction="mean")(lp, out_lens, [[1, 2], [3, 3], [1, 2, 3, 4]])
    assert info["excluded"] == [2]  # 5 frames -> 2 output frames < 4 tokens
    loss.backward()
    assert nan_guard(loss, model.parameters())


# --------------------------------------------------------------------------- word transcripts
def test_word_transcripts_with_several_pronunciations():
    """CtcLoss(compiler=...) on word ids = -log sum over the distinct token strings of the
    words' pronunciations of exp(-torch ctc_loss), enumerated here; an utterance too short for
    every pronunciation is excluded, one that fits only the short one is kept."""
    import itertools

    from wfst_asr.graphs import CtcTrainingGraphCompiler

    lexicon = {1: [[1, 2], [3]], 2: [[4]], 3: [[2, 2], [5, 1, 5]], 4: [[3], [3]]}
    words = [[1, 2], [3, 1], [2, 4, 1], [3], [3, 3]]
    lens = torch.tensor([9, 10, 8, 3, 2])
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(len(words), 11, V, generator=g)
    loss = CtcLoss(reduction="none", compiler=CtcTrainingGraphCompiler(lexicon))
    got, info = loss(logits.log_softmax(-1), lens, words)
    for b, ws in enumerate(words):
        strings = {tuple(t for p in combo for t in p)
                   for combo in itertools.product(*(lexicon[w] for w in ws))}
        nll = torch.stack([_torch_ctc(logits[b:b + 1], lens[b:b + 1], [list(s)])[0]
                           for s in sorted(strings)])
        want = -torch.logsumexp(-nll, 0)
        if torch.isinf(want):
            assert b in info["excluded"] and got[b] == 0
        else:
            assert b not in info["excluded"]
            torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-4)
    assert info["excluded"] == [4]  # [3, 3]: at least 2 + 1 + 2 frames, it has 2
    with pytest.raises(ValueError, match="not in the lexicon"):
        loss(logits.log_softmax(-1), lens, [[9]] * len(words))
