"""CTC through the FSA engine vs torch.nn.functional.ctc_loss and an explicit float64 CTC DP.

``-get_tot_scores(intersect_dense(ctc_graph(targets), DenseFsaVec(log_softmax(logits), segs)))``
is the CTC loss. Gradients are compared at the logits (the input of log_softmax), where both
sides equal softmax minus the posterior; against the explicit DP (tests/reference.py) they are
also compared at the log-probs (the true gradient = expected label counts).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

try:
    from tests import reference as ref
except ImportError:  # pragma: no cover - run from inside tests/
    import reference as ref

from wfst_asr.fsa import DenseFsaVec, Fsa, create_fsa_vec
from wfst_asr.graphs import ctc_graph, ctc_topo

INF = float("inf")


def _tol(dtype):
    if dtype == torch.float64:
        return {"rtol": 1e-8, "atol": 1e-8}
    return {"rtol": 1e-4, "atol": 1e-4}


def _api():
    from wfst_asr.fsa import get_tot_scores, intersect_dense
    return intersect_dense, get_tot_scores


def _torch_ctc(logits, targets, lengths, zero_infinity=False):
    """torch's CTC loss per sequence (reduction='none') for logits [B, T, V]."""
    lp = logits.log_softmax(-1).transpose(0, 1)  # [T, B, V]
    flat = torch.tensor([x for t in targets for x in t], dtype=torch.long)
    return F.ctc_loss(lp, flat, torch.tensor(lengths), torch.tensor([len(t) for t in targets]),
                      blank=0, reduction="none", zero_infinity=zero_infinity)


def _engine_ctc(logits, targets, segments, device, modified=False, log_semiring=True):
    intersect_dense, get_tot_scores = _api()
    lp = logits.log_softmax(-1)
    graphs = ctc_graph(targets, modified=modified, device=device)
    lat = intersect_dense(graphs, DenseFsaVec(lp, segments))
    return -get_tot_scores(lat, log_semiring=log_semiring,
                           use_double_scores=(logits.dtype == torch.float64))


# a batch mixing T, U, repeats, a minimal-length sequence ([3, 3, 3] needs 5 frames)
TARGETS = [[3, 3, 3], [1, 2, 2, 1], [4], [2, 3, 1, 4, 2], [], [1, 1]]
LENGTHS = [5, 9, 3, 12, 4, 3]


# ----------------------------------------------------------------------------- reference sanity
def test_reference_dp_matches_torch_ctc():
    """The explicit DP vs torch's ctc_loss: losses and gradients at the logits (float64)."""
    gen = torch.Generator().manual_seed(0)
    V = 5
    logits0 = torch.randn(len(TARGETS), max(LENGTHS), V, generator=gen, dtype=torch.float64)
    logits_t = logits0.clone().requires_grad_(True)
    expected = _torch_ctc(logits_t, TARGETS, LENGTHS)
    expected.sum().backward()
    logits = logits0.clone().requires_grad_(True)
    lp = logits.log_softmax(-1)
    got = torch.stack([-ref.ctc_forward_dp(lp[b, :LENGTHS[b]], TARGETS[b])
                       for b in range(len(TARGETS))])
    got.sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits.grad, logits_t.grad, rtol=1e-10, atol=1e-10)
    # infeasible: T shorter than U + repeats; -inf and a zero (not NaN) gradient
    lp2 = logits0[0, :4].clone().requires_grad_(True)
    r = ref.ctc_forward_dp(lp2, [3, 3, 3])
    assert r.item() == -INF
    r.backward()
    assert (lp2.grad == 0).all()
    assert ref.ctc_min_frames([3, 3, 3]) == 5 and ref.ctc_min_frames([1, 2, 2, 1]) == 5


def _ref_ctc_graph(targets, modified=False):
    """The CTC graph written out independently of wfst_asr.graphs.training.ctc_graph (same state layout is
    not required; blank states 2k, token states 2k+1, final 2U+1)."""
    U = len(targets)
    rows = []
    for k in range(U + 1):
        rows.append((2 * k, 2 * k, 0))
        if k < U:
            rows.append((2 * k, 2 * k + 1, targets[k]))
            rows.append((2 * k + 1, 2 * k + 1, targets[k]))
            rows.append((2 * k + 1, 2 * k + 2, 0))
            if k + 1 < U and (modified or targets[k + 1] != targets[k]):
                rows.append((2 * k + 1, 2 * k + 3, targets[k + 1]))
    rows.append((2 * U, 2 * U + 1, -1))
    if U:
        rows.append((2 * U - 1, 2 * U + 1, -1))
    return Fsa(torch.tensor(rows, dtype=torch.int32), num_states=2 * U + 2)


@pytest.mark.parametrize("modified", [False, True])
def test_reference_dense_enumeration_vs_dp(modified):
    """Dense path enumeration over an independently built CTC graph == the explicit DP; also the
    enumeration over wfst_asr's ctc_graph (a check of ctc_graph itself)."""
    gen = torch.Generator().manual_seed(1)
    for targets in ([1], [2, 2], [1, 2, 1], [3, 3, 3], [1, 2]):
        for T in range(max(len(targets), 1), 6):
            lp = ref.random_log_probs(gen, 1, T, 4, torch.float64)[0]
            dp = ref.ctc_forward_dp(lp, targets, modified=modified).item()
            for g in (_ref_ctc_graph(targets, modified), ctc_graph([targets], modified=modified)):
                enum = ref.total(ref.enumerate_dense_paths(g, lp))
                assert (enum == dp == -INF) or enum == pytest.approx(dp, abs=1e-12), (targets, T)


# ----------------------------------------------------------------------------- vs torch
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ctc_loss_matches_torch(device, dtype):
    gen = torch.Generator().manual_seed(2)
    V = 5
    logits0 = torch.randn(len(TARGETS), max(LENGTHS), V, generator=gen, dtype=dtype)
    segs = torch.tensor([[b, 0, n] for b, n in enumerate(LENGTHS)], dtype=torch.int32)

    logits_t = logits0.clone().requires_grad_(True)
    loss_t = _torch_ctc(logits_t, TARGETS, LENGTHS)
    loss_t.sum().backward()

    logits_e = logits0.clone().to(device).requires_grad_(True)
    loss_e = _engine_ctc(logits_e, TARGETS, segs, device)
    assert loss_e.shape == (len(TARGETS),)
    loss_e.sum().backward()
    torch.testing.assert_close(loss_e.detach().cpu(), loss_t.detach(), **_tol(dtype))
    torch.testing.assert_close(logits_e.grad.cpu(), logits_t.grad, **_tol(dtype))


@pytest.mark.parametrize("split", [False, True])
def test_ctc_segments_with_offsets(device, monkeypatch, split):
    """Several segments per sequence, starting anywhere (overlapping too); torch's CTC on the
    sliced frames. ``split``: the segments run as two groups on two threads (by sequence)."""
    import wfst_asr.fsa.intersect as idense
    monkeypatch.setattr(idense, "PARALLEL_MIN_WORK", 0 if split else float("inf"))
    gen = torch.Generator().manual_seed(3)
    V = 6
    logits0 = torch.randn(2, 14, V, generator=gen, dtype=torch.float64)
    segs = [(0, 0, 6), (0, 6, 8), (1, 3, 10), (1, 0, 3), (0, 2, 5)]
    targets = [[1, 2], [5, 5, 4], [3, 1, 1, 2], [2], [4, 4]]

    logits_e = logits0.clone().to(device).requires_grad_(True)
    loss_e = _engine_ctc(logits_e, targets, torch.tensor(segs, dtype=torch.int32), device)
    loss_e.sum().backward()

    logits_t = logits0.clone().requires_grad_(True)
    loss_t = []
    for (b, s, n), tg in zip(segs, targets):
        loss_t.append(_torch_ctc(logits_t[b:b + 1, s:s + n], [tg], [n])[0])
    loss_t = torch.stack(loss_t)
    loss_t.sum().backward()
    torch.testing.assert_close(loss_e.detach().cpu(), loss_t.detach(), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(logits_e.grad.cpu(), logits_t.grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("log_semiring", [True, False])
def test_ctc_infeasible(device, log_semiring):
    """T < U + repeats: loss +inf, zero gradient for that segment, never NaN; the others as in
    torch's ctc_loss(zero_infinity=True)."""
    gen = torch.Generator().manual_seed(4)
    V = 4
    targets = [[3, 3, 3], [1, 2], [2, 2]]
    lengths = [4, 3, 2]  # first and third infeasible (need 5 and 3 frames)
    logits0 = torch.randn(3, 4, V, generator=gen, dtype=torch.float64)
    segs = torch.tensor([[b, 0, n] for b, n in enumerate(lengths)], dtype=torch.int32)
    logits_e = logits0.clone().to(device).requires_grad_(True)
    loss_e = _engine_ctc(logits_e, targets, segs, device, log_semiring=log_semiring)
    assert loss_e[0].item() == INF and loss_e[2].item() == INF
    loss_e.sum().backward()
    assert not torch.isnan(logits_e.grad).any()
    assert (logits_e.grad[0] == 0).all() and (logits_e.grad[2] == 0).all()
    if log_semiring:
        logits_t = logits0.clone().requires_grad_(True)
        loss_t = _torch_ctc(logits_t, targets, lengths, zero_infinity=True)
        loss_t.sum().backward()
        assert loss_e[1].item() == pytest.approx(loss_t[1].item(), abs=1e-8)
        torch.testing.assert_close(logits_e.grad.cpu(), logits_t.grad, rtol=1e-8, atol=1e-8)


# ----------------------------------------------------------------------------- vs the explicit DP
@pytest.mark.parametrize("modified", [False, True])
def test_ctc_long_sequences_vs_dp(device, modified):
    """T up to 150, U up to 40 with repeats: totals and gradients w.r.t. the log-probs (the
    true gradient, expected label counts) vs the explicit float64 DP."""
    gen = torch.Generator().manual_seed(5)
    V = 8
    lengths = [150, 97, 120]
    targets = []
    for U in (40, 25, 33):
        t = [ref._randint(gen, 1, V) for _ in range(U)]
        t[3] = t[4] = t[5]  # a triple repeat
        targets.append(t)
    lp0 = ref.random_log_probs(gen, 3, max(lengths), V, torch.float64)
    lp_ref = lp0.clone().requires_grad_(True)
    dp = torch.stack([ref.ctc_forward_dp(lp_ref[b, :n], targets[b], modified=modified)
                      for b, n in enumerate(lengths)])
    dp.sum().backward()
    intersect_dense, get_tot_scores = _api()
    lp = lp0.clone().to(device).requires_grad_(True)
    segs = torch.tensor([[b, 0, n] for b, n in enumerate(lengths)], dtype=torch.int32)
    lat = intersect_dense(ctc_graph(targets, modified=modified, device=device),
                          DenseFsaVec(lp, segs))
    tot = get_tot_scores(lat, use_double_scores=True)
    tot.sum().backward()
    torch.testing.assert_close(tot.detach().cpu(), dp.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lp.grad.cpu(), lp_ref.grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_modified_ctc_graph_vs_dp(device, dtype):
    """Modified CTC graph: repeats need no blank (T = U suffices); vs the modified DP."""
    gen = torch.Generator().manual_seed(6)
    V = 4
    targets = [[2, 2, 2], [1, 3, 3, 1], [3], [1, 1]]
    lengths = [3, 7, 1, 2]  # minimal for the modified topology where len == U
    lp0 = ref.random_log_probs(gen, 4, 7, V, torch.float64)
    lp_ref = lp0.clone().requires_grad_(True)
    dp = torch.stack([ref.ctc_forward_dp(lp_ref[b, :n], targets[b], modified=True)
                      for b, n in enumerate(lengths)])
    assert torch.isfinite(dp).all()
    dp.sum().backward()
    intersect_dense, get_tot_scores = _api()
    lp = lp0.to(dtype).to(device).requires_grad_(True)
    segs = torch.tensor([[b, 0, n] for b, n in enumerate(lengths)], dtype=torch.int32)
    lat = intersect_dense(ctc_graph(targets, modified=True, device=device), DenseFsaVec(lp, segs))
    tot = get_tot_scores(lat, use_double_scores=(dtype == torch.float64))
    tot.sum().backward()
    torch.testing.assert_close(tot.detach().cpu().double(), dp.detach(), **_tol(dtype))
    torch.testing.assert_close(lp.grad.cpu().double(), lp_ref.grad, **_tol(dtype))


# ----------------------------------------------------------------------------- CTC topology
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ctc_topo_total_is_zero(device, dtype):
    """The standard topology maps each frame-label sequence to exactly one path, so with
    log_softmax inputs every segment's total is log(1) = 0 and the gradient w.r.t. the logits
    is 0."""
    intersect_dense, get_tot_scores = _api()
    gen = torch.Generator().manual_seed(7)
    V = 6
    logits = torch.randn(2, 20, V, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    segs = torch.tensor([[0, 0, 20], [1, 3, 11], [0, 5, 1]], dtype=torch.int32)
    lat = intersect_dense(ctc_topo(V - 1, device=device), DenseFsaVec(logits.log_softmax(-1),
                                                                     segs))
    tot = get_tot_scores(lat, use_double_scores=(dtype == torch.float64))
    torch.testing.assert_close(tot.detach().cpu().double(), torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-9)
    tot.sum().backward()
    torch.testing.assert_close(logits.grad.cpu(), torch.zeros_like(logits.grad.cpu()),
                               rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("modified", [False, True])
def test_ctc_topo_vs_enumeration(device, modified):
    """Both topologies (the modified one is ambiguous, so its total is not 0) on small cases;
    the tropical total too."""
    intersect_dense, get_tot_scores = _api()
    gen = torch.Generator().manual_seed(8)
    V = 3
    topo = ctc_topo(V - 1, modified=modified)
    lp = ref.random_log_probs(gen, 2, 4, V, torch.float64, normalized=False)
    segs = torch.tensor([[0, 0, 4], [1, 1, 3], [1, 0, 1]], dtype=torch.int32)
    for log in (True, False):
        exp = [ref.total(ref.enumerate_dense_paths(topo, lp[s, st:st + n]), log)
               for s, st, n in segs.tolist()]
        lat = intersect_dense(topo.to(device), DenseFsaVec(lp.to(device), segs))
        tot = get_tot_scores(lat, log_semiring=log, use_double_scores=True)
        torch.testing.assert_close(tot.cpu(), torch.tensor(exp, dtype=torch.float64),
                                   rtol=1e-9, atol=1e-9)


def test_ctc_graph_batch_of_vec_and_single(device):
    """ctc_graph of a single list and of a list of lists, combined with create_fsa_vec."""
    intersect_dense, get_tot_scores = _api()
    gen = torch.Generator().manual_seed(9)
    lp = ref.random_log_probs(gen, 1, 6, 4, torch.float64)
    g = create_fsa_vec([ctc_graph([1, 2]), ctc_graph([[3, 3]])]).to(device)
    segs = torch.tensor([[0, 0, 6], [0, 1, 5]], dtype=torch.int32)
    tot = get_tot_scores(intersect_dense(g, DenseFsaVec(lp.to(device), segs)),
                         use_double_scores=True)
    exp = torch.stack([ref.ctc_forward_dp(lp[0, 0:6], [1, 2]),
                       ref.ctc_forward_dp(lp[0, 1:6], [3, 3])])
    torch.testing.assert_close(tot.cpu(), exp, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("log_semiring", [True, False])
def test_ctc_split_over_threads(device, monkeypatch, log_semiring):
    """Large batches are split into two groups of segments run on two threads; the totals and
    gradients must not change (log: vs torch's ctc_loss; tropical: vs the unsplit run)."""
    import wfst_asr.fsa.intersect as idense
    gen = torch.Generator().manual_seed(7)
    targets = [[int(x) for x in torch.randint(1, 6, (u,), generator=gen)] for u in (3, 7, 1, 5, 4)]
    lengths = [12, 20, 4, 16, 9]
    logits0 = torch.randn(len(targets), max(lengths), 6, generator=gen)
    segs = torch.tensor([[b, 0, n] for b, n in enumerate(lengths)], dtype=torch.int32)

    def engine(min_work):
        monkeypatch.setattr(idense, "PARALLEL_MIN_WORK", min_work)
        logits = logits0.clone().to(device).requires_grad_(True)
        loss = _engine_ctc(logits, targets, segs, device, log_semiring=log_semiring)
        loss.sum().backward()
        return loss.detach().cpu(), logits.grad.cpu()

    if device == "cpu" and torch.get_num_threads() >= 2:
        assert len(idense._split_segments(ctc_graph(targets), DenseFsaVec(logits0, segs))) == 1
        monkeypatch.setattr(idense, "PARALLEL_MIN_WORK", 0)
        assert len(idense._split_segments(ctc_graph(targets), DenseFsaVec(logits0, segs))) == 2
    loss_s, grad_s = engine(0)
    if log_semiring:
        logits_t = logits0.clone().requires_grad_(True)
        loss_t = _torch_ctc(logits_t, targets, lengths)
        loss_t.sum().backward()
        ref_loss, ref_grad = loss_t.detach(), logits_t.grad
    else:
        ref_loss, ref_grad = engine(float("inf"))
    torch.testing.assert_close(loss_s, ref_loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_s, ref_grad, rtol=1e-4, atol=1e-4)
