"""One bad frame never poisons a batch (issue 12): a NaN / +inf in one utterance's network
output excludes that utterance (counted in ``info``, gradient exactly 0) and changes nothing
else; a NaN outside every utterance's frames changes nothing at all.

Every expectation is the same computation on the clean sub-batch (the batch without the bad
utterance), compared exactly where the arithmetic is the same (the engine's per-segment
totals and gradients) and with ``allclose`` where a batch-level reduction or a shared
normaliser makes the summation order differ.
"""

from __future__ import annotations

import math

import pytest
import torch

import wfst_asr.fsa.intersect as intersect_mod
from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    create_fsa_vec,
    get_arc_post,
    get_tot_scores,
    intersect_dense,
    intersect_dense_pruned,
    shortest_path,
)
from wfst_asr.graphs import MmiTrainingGraphCompiler, ctc_graph, ctc_topo, hmm_topo
from wfst_asr.losses import (
    CtcLoss,
    HmmLoss,
    MmiLoss,
    TransducerLoss,
    get_pruned_ranges,
    pruned_transducer_loss,
    simple_transducer_loss,
    transducer_loss,
)
from wfst_asr.losses.common import isolate_nonfinite
from wfst_asr.models import Transducer

NAN, INF = float("nan"), float("inf")


def _no_nan(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


# ----------------------------------------------------------------------------- the repros
def _repro(where, value=NAN, lens=(50, 50, 50, 50)):
    torch.manual_seed(0)
    lp = torch.randn(4, 50, 10).log_softmax(-1)
    clean = lp.clone()
    lp[where] = value
    lp.requires_grad_()
    loss, info = CtcLoss()(lp, torch.tensor(lens), [[3, 1, 4]] * 4)
    loss.backward()
    return clean, lp, loss, info


def _ctc_sub(clean, keep, lens=(50, 50, 50, 50), reduction="sum"):
    x = clean[keep].clone().requires_grad_()
    loss, info = CtcLoss(reduction=reduction)(x, torch.tensor([lens[i] for i in keep]),
                                              [[3, 1, 4]] * len(keep))
    loss.sum().backward()
    return x, loss, info


@pytest.mark.parametrize("where", [(0, 5, 0), (0, 5, 3), (0, 5, 7), (2, 49, 4)],
                         ids=["blank", "label-in-graph", "label-not-in-graph", "last-frame"])
@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "+inf"])
def test_ctc_repro_bad_frame_excludes_only_its_utterance(where, value):
    clean, lp, loss, info = _repro(where, value)
    b = where[0]
    keep = [i for i in range(4) if i != b]
    assert info["excluded"] == [b] and info["nonfinite_input"] == [b]
    assert info["num_excluded"] == 1 and info["num_nonfinite"] == 0 and info["frames"] == 150
    assert _no_nan(lp.grad) and bool((lp.grad[b] == 0).all())
    x, ref, _ = _ctc_sub(clean, keep)
    torch.testing.assert_close(loss, ref)
    assert torch.equal(lp.grad[keep], x.grad)  # the same arithmetic per utterance


def test_ctc_per_utterance_losses_are_exactly_those_of_the_clean_sub_batch():
    torch.manual_seed(0)
    lp = torch.randn(4, 50, 10).log_softmax(-1)
    clean = lp.clone()
    lp[0, 5, 0] = NAN
    lp.requires_grad_()
    per, _ = CtcLoss(reduction="none")(lp, torch.tensor([50] * 4), [[3, 1, 4]] * 4)
    per.sum().backward()
    x, ref, _ = _ctc_sub(clean, [1, 2, 3], reduction="none")
    assert float(per[0].detach()) == 0 and torch.equal(per[1:], ref)
    assert torch.equal(lp.grad[1:], x.grad) and bool((lp.grad[0] == 0).all())


def test_ctc_nan_outside_every_utterance_does_not_matter():
    lens = (40, 50, 50, 50)
    clean, lp, loss, info = _repro((0, 45, 2), NAN, lens)
    assert info["num_excluded"] == 0 and info["nonfinite_input"] == []
    x, ref, _ = _ctc_sub(clean, [0, 1, 2, 3], lens)
    assert torch.equal(loss, ref) and _no_nan(lp.grad)
    assert torch.equal(lp.grad, x.grad)  # including exact zeros on the unused frames


def test_ctc_every_utterance_bad_gives_a_zero_loss_and_zero_gradient():
    lp = torch.randn(2, 6, 5).log_softmax(-1)
    lp[:, 2, 1] = NAN
    lp.requires_grad_()
    loss, info = CtcLoss()(lp, torch.tensor([6, 6]), [[1], [2]])
    assert float(loss.detach()) == 0 and info["excluded"] == [0, 1] and info["nonfinite_input"] == [0, 1]
    loss.backward()
    assert bool((lp.grad == 0).all())


def test_ctc_minus_inf_matters_only_where_it_leaves_no_path():
    torch.manual_seed(1)
    lp = torch.randn(3, 12, 6).log_softmax(-1)
    clean = lp.clone()
    lp[1, 4, :] = -INF  # a frame where nothing is possible: utterance 1 has no path
    lp[2, 4, 5] = -INF  # a zero probability of a label it never uses: no effect
    lp.requires_grad_()
    loss, info = CtcLoss(reduction="none")(lp, torch.tensor([12] * 3), [[1, 2]] * 3)
    assert info["excluded"] == [1] and info["num_nonfinite"] == 1
    assert info["nonfinite_input"] == []
    loss.sum().backward()
    assert _no_nan(lp.grad) and bool((lp.grad[1] == 0).all())
    x = clean[[0, 2]].clone().requires_grad_()
    ref, _ = CtcLoss(reduction="none")(x, torch.tensor([12] * 2), [[1, 2]] * 2)
    ref.sum().backward()
    torch.testing.assert_close(loss[[0, 2]], ref)
    torch.testing.assert_close(lp.grad[[0, 2]], x.grad)


def test_isolate_nonfinite_masks_through_where():
    x = torch.randn(3, 4, 5)
    x[0, 1, 2] = NAN
    x[1, 3, 0] = INF  # outside utterance 1's 3 frames
    x[2, 0, :] = -INF  # a -inf row: bad for a log-softmax input only
    x.requires_grad_()
    valid = torch.arange(4) < torch.tensor([4, 3, 4]).unsqueeze(1)
    y, bad = isolate_nonfinite(x, valid, "log_probs")
    assert bad.tolist() == [True, False, False] and y is not x
    assert not bool(torch.isnan(y).any()) and bool((y < INF).all())  # -inf stays
    assert bool((y[2, 0] == -INF).all())
    y.sum().backward()
    assert x.grad[0, 1].abs().sum() == 0 and x.grad[1, 3].abs().sum() == 0
    assert _no_nan(x.grad)
    _, bad = isolate_nonfinite(x, valid, "logits")
    assert bad.tolist() == [True, False, True]
    clean = torch.randn(2, 3, 4)
    same, bad = isolate_nonfinite(clean, torch.ones(2, 3, dtype=torch.bool))
    assert same is clean and not bool(bad.any())


# ----------------------------------------------------------------------------- every loss
def _check_loss(run, x_clean, poison, bad: int, exact: bool = False, **tol):
    """``run(x, idx) -> (per-utterance losses [len(idx)], info)`` on the utterances ``idx``.

    The batch with ``poison`` applied to utterance ``bad`` vs the clean sub-batch without it:
    equal losses and gradients for the others, exactly zero gradient for ``bad``, no NaN."""
    B = x_clean.shape[0]
    x = x_clean.detach().clone()
    poison(x)
    x.requires_grad_()
    per, info = run(x, list(range(B)))
    assert info["nonfinite_input"] == [bad] and bad in info["excluded"], info
    per.sum().backward()
    assert _no_nan(per) and float(per[bad].detach()) == 0
    assert _no_nan(x.grad) and bool((x.grad[bad] == 0).all())
    keep = [i for i in range(B) if i != bad]
    xr = x_clean.detach()[keep].clone().requires_grad_()
    ref, rinfo = run(xr, keep)
    ref.sum().backward()
    assert info["num_excluded"] == rinfo["num_excluded"] + 1
    if exact:
        assert torch.equal(per[keep], ref) and torch.equal(x.grad[keep], xr.grad)
    else:
        torch.testing.assert_close(per[keep], ref, **tol)
        torch.testing.assert_close(x.grad[keep], xr.grad, **tol)
    return info


def _nan_at(*idx):
    def poison(x):
        x[idx] = NAN
    return poison


HMM_TEXTS = [[1, 2], [2, 2], [1], [2, 1]]
HMM_LENS = torch.tensor([9, 7, 8, 9])


@pytest.mark.parametrize("mode", ["forward", "viterbi", "ce"])
def test_hmm_loss(mode):
    H = hmm_topo(2, 2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, 5, generator=g).log_softmax(-1)
    loss = HmmLoss(H, mode=mode, reduction="none")

    def run(x, idx):
        return loss(x, HMM_LENS[idx], [HMM_TEXTS[i] for i in idx])
    _check_loss(run, x, _nan_at(1, 3, 2), 1, exact=mode != "ce")
    # a NaN after the utterance's last frame (8 of 9) changes nothing
    y = x.clone()
    y[2, 8, 1] = NAN
    y.requires_grad_()
    per, info = run(y, [0, 1, 2, 3])
    per.sum().backward()
    assert info["nonfinite_input"] == [] and _no_nan(y.grad)


def test_hmm_loss_given_alignments_and_prior():
    H = hmm_topo(2, 1)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 6, 3, generator=g).log_softmax(-1)
    ali = torch.randint(1, 3, (3, 6), generator=g)
    ce = HmmLoss(H, mode="ce", reduction="none")

    def run(x, idx):
        return ce(x, torch.tensor([6, 5, 6])[idx], alignments=ali[idx])
    info = _check_loss(run, x, _nan_at(2, 0, 1), 2, exact=True)
    assert info["aligned_frames"] == 11
    # the prior's moving average sees the clean utterances only
    losses = [HmmLoss(H, prior_scale=0.5, reduction="none").train() for _ in range(2)]
    y = x.clone()
    y[0, 2, 2] = INF
    losses[0](y, torch.tensor([6, 5, 6]), [[1], [2], [1, 2]])
    losses[1](x[1:], torch.tensor([5, 6]), [[2], [1, 2]])
    assert torch.equal(losses[0].log_prior, losses[1].log_prior)
    assert bool(torch.isfinite(losses[0].log_prior).all())


MMI_TEXTS = [[1, 2], [2, 2, 1], [1], [2, 1]]
MMI_LENS = torch.tensor([7, 9, 4, 6])


def _mmi_compiler() -> MmiTrainingGraphCompiler:
    rows = [(s, t, t) for s in range(3) for t in (1, 2)] + [(s, 3, -1) for s in range(3)]
    sc = (torch.randn(len(rows), generator=torch.Generator().manual_seed(5)) - 1.0).tolist()
    P = Fsa(torch.tensor(rows, dtype=torch.int32), torch.tensor(sc), num_states=4)
    return MmiTrainingGraphCompiler(P, topo="ctc")


@pytest.mark.parametrize("extra", [{}, {"l2_regularize": 0.01, "ctc_weight": 0.3},
                                   {"ctc_weight": 0.5, "aux_loss": "ce"}],
                         ids=["plain", "l2+ctc", "ce"])
def test_mmi_loss_shared_denominator(extra):
    comp = _mmi_compiler()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 9, 3, generator=g) * 2
    loss = MmiLoss(comp, reduction="none", **extra)

    def run(x, idx):
        return loss(x, MMI_LENS[idx], [MMI_TEXTS[i] for i in idx])
    _check_loss(run, x, _nan_at(0, 2, 1), 0, exact=not extra)
    if extra.get("l2_regularize"):  # -inf in the frames is non-finite for x^2
        _check_loss(run, x, _set(3, 1, 0, -INF), 3)


def _set(b, t, v, value):
    def poison(x):
        x[b, t, v] = value
    return poison


def _rnnt_case(B=3, T=6, U=3, V=5, seed=7):
    g = torch.Generator().manual_seed(seed)
    ys = [[1, 2, 3], [4, 1], [2]]
    flens = torch.tensor([6, 4, 5])
    return g, ys, flens


def test_transducer_full_loss():
    g, ys, flens = _rnnt_case()
    logits = torch.randn(3, 6, 4, 5, generator=g)

    def run(x, idx):
        return transducer_loss(x, [ys[i] for i in idx], flens[idx], reduction="none")
    _check_loss(run, logits, _nan_at(1, 2, 1, 3), 1, exact=True)
    _check_loss(run, logits, _set(0, 5, 3, INF), 0, exact=True)
    _check_loss(run, logits, lambda x: x[2, 0, 0].fill_(-INF), 2, exact=True)
    # NaN in cells outside every lattice (t >= T_b, u > U_b) changes nothing
    y = logits.clone()
    y[1, 5, 0, :] = NAN  # frame 5 of a 4-frame utterance
    y[2, 0, 3, 1] = INF  # position 3 of a 1-label transcript
    y.requires_grad_()
    per, info = run(y, [0, 1, 2])
    xr = logits.clone().requires_grad_()
    ref, _ = run(xr, [0, 1, 2])
    per.sum().backward()
    ref.sum().backward()
    assert info["num_excluded"] == 0 and torch.equal(per, ref)
    assert _no_nan(y.grad) and torch.equal(y.grad, xr.grad)


def test_transducer_joiner_rows_that_merely_put_minus_inf_on_both_symbols_are_kept():
    g, ys, flens = _rnnt_case()
    logits = torch.randn(3, 6, 4, 5, generator=g)
    logits[0, 1, 1, 0] = -INF  # blank and the next label (ys[0][1] = 2) impossible here
    logits[0, 1, 1, 2] = -INF
    per, info = transducer_loss(logits.requires_grad_(), ys, flens, reduction="none")
    assert info["num_excluded"] == 0 and _no_nan(per)


def test_simple_and_pruned_transducer_losses():
    g, ys, flens = _rnnt_case()
    am = torch.randn(3, 6, 5, generator=g)
    lm = torch.randn(3, 4, 5, generator=g)

    def run_am(x, idx):
        return simple_transducer_loss(x, lm[idx], [ys[i] for i in idx], flens[idx],
                                      reduction="none", lm_only_scale=0.25)
    _check_loss(run_am, am, _nan_at(2, 1, 4), 2)

    def run_lm(x, idx):
        return simple_transducer_loss(am[idx], x, [ys[i] for i in idx], flens[idx],
                                      reduction="none")
    _check_loss(run_lm, lm, _set(1, 2, 0, INF), 1)  # position 2 <= U_1 = 2
    # the occupation of the excluded utterance is 0, the others' unchanged
    bad_am = am.clone()
    bad_am[0, 0, 0] = NAN
    _, info = simple_transducer_loss(bad_am, lm, ys, flens, return_occupation=True)
    _, ref = simple_transducer_loss(am[1:], lm[1:], ys[1:], flens[1:], return_occupation=True)
    assert bool((info["occupation"][0] == 0).all())
    torch.testing.assert_close(info["occupation"][1:], ref["occupation"])

    _, sinfo = simple_transducer_loss(am, lm, ys, flens, return_occupation=True)
    ranges = get_pruned_ranges(sinfo["occupation"], flens, [3, 2, 1], 3)
    logits = torch.randn(3, 6, 3, 5, generator=g)

    def run_pruned(x, idx):
        return pruned_transducer_loss(x, [ys[i] for i in idx], ranges[idx], flens[idx],
                                      reduction="none")
    _check_loss(run_pruned, logits, _nan_at(0, 3, 1, 2), 0, exact=True)


def test_transducer_loss_module():
    V, B, T = 6, 3, 7
    torch.manual_seed(0)
    model = Transducer(5, V, decoder_dim=8, joiner_dim=7, context_size=2).double()
    enc = torch.randn(B, T, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lens = torch.tensor([7, 5, 6])
    ys = [[1, 2, 3], [4, 5], [1]]
    bad = enc.clone()
    bad[1, 2, 0] = NAN
    for crit in (TransducerLoss(pruned=False), TransducerLoss(pruned=True, s_range=3)):
        with torch.no_grad():
            dec, am, lm = model(bad, ys, simple=crit.pruned)
            loss, info = crit(bad, lens, dec, ys, model.joiner, am, lm)
            keep = [0, 2]
            dec_r, am_r, lm_r = model(enc[keep], [ys[i] for i in keep], simple=crit.pruned)
            ref, _ = crit(enc[keep], lens[keep], dec_r, [ys[i] for i in keep], model.joiner,
                          am_r, lm_r)
        assert info["excluded"] == [1] and info["nonfinite_input"] == [1]
        torch.testing.assert_close(loss, ref)


# ----------------------------------------------------------------------------- the engine
def _random_graph(gen, num_states, num_arcs, V) -> Fsa:
    """Random labels on the arcs entering a state (the arc-mode sweep), all states final."""
    n = num_arcs - num_states
    src = torch.randint(0, num_states, (n,), generator=gen)
    src[:num_states] = torch.arange(num_states)
    dst = torch.randint(0, num_states, (n,), generator=gen)
    lab = torch.randint(0, V, (n,), generator=gen)
    fs = torch.arange(num_states)
    arcs = torch.stack([torch.cat([src, fs]), torch.cat([dst, torch.full_like(fs, num_states)]),
                        torch.cat([lab, torch.full_like(fs, -1)])], 1).to(torch.int32)
    order = torch.argsort(arcs[:, 0], stable=True)
    scores = torch.cat([torch.randn(n, generator=gen) * 0.5, torch.zeros(num_states)])
    return Fsa(arcs[order], scores[order], num_states=num_states + 1)


# (seq, start, frames): several segments per sequence, starts > 0, frames in no segment
SEGS = [(0, 0, 5), (0, 7, 9), (1, 2, 14), (2, 0, 16), (1, 0, 2)]


def _engine_case(kind: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lp = torch.randn(3, 16, 6, generator=gen).log_softmax(-1)
    if kind == "ctc":  # state mode (every state's entering arcs share a label)
        graphs = ctc_graph([[1, 2], [3, 1, 3], [5], [2, 4, 2], [1]])
    elif kind == "shared":
        graphs = _random_graph(gen, 6, 30, 6)
    else:  # arc mode, one graph per segment
        graphs = create_fsa_vec([_random_graph(gen, 5, 20, 6) for _ in SEGS])
    return lp, graphs


def _sub_graphs(graphs: Fsa, keep: list[int]) -> Fsa:
    if graphs.as_vec().num_fsas == 1:
        return graphs
    return create_fsa_vec([graphs[i] for i in keep])


def _totals(lp, graphs, segs, log_semiring=True, double=False):
    x = lp.clone().requires_grad_()
    g = graphs.clone()
    g.scores = graphs.scores.detach().clone().requires_grad_()
    tot = get_tot_scores(intersect_dense(g, DenseFsaVec(x, torch.tensor(segs, dtype=torch.int32))),
                         log_semiring=log_semiring, use_double_scores=double)
    torch.where(torch.isfinite(tot), tot, torch.zeros_like(tot)).sum().backward()
    return tot.detach(), x.grad, g.scores.grad


@pytest.mark.parametrize("kind", ["ctc", "shared", "per-segment"])
@pytest.mark.parametrize("log_semiring", [True, False], ids=["log", "tropical"])
@pytest.mark.parametrize("split", [False, True], ids=["one-thread", "two-threads"])
def test_intersect_dense_totals_and_gradients(kind, log_semiring, split, monkeypatch):
    if split:  # the two-thread split over sequences (large batches on a multi-core CPU)
        monkeypatch.setattr(intersect_mod, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    lp, graphs = _engine_case(kind)
    bad = 1  # segment (0, 7, 9): frames 7..15 of sequence 0, read past the end by segment 0
    x = lp.clone()
    x[0, 10, 3] = NAN
    tot, glp, gg = _totals(x, graphs, SEGS, log_semiring)
    assert math.isnan(float(tot[bad])) and _no_nan(glp) and _no_nan(gg)
    assert bool((glp[0, 7:16] == 0).all())
    own = graphs.arc_fsa == bad if graphs.num_fsas > 1 else None
    if own is not None:
        assert bool((gg[own] == 0).all())
    keep = [i for i in range(len(SEGS)) if i != bad]
    # exactly the same arithmetic: the same batch with the bad segment's frames clean
    same_tot, same_glp, same_gg = _totals(lp, graphs, SEGS, log_semiring)
    others = torch.ones_like(glp, dtype=torch.bool)
    others[0, 7:16] = False
    assert torch.equal(tot[keep], same_tot[keep])
    assert torch.equal(glp[others], same_glp[others])
    if own is not None:
        assert torch.equal(gg[~own], same_gg[~own])
    # the clean sub-batch: another layout of the graph's arcs (bucket widths, block sizes),
    # so the same sums may round differently in the last place
    ref_tot, ref_glp, ref_gg = _totals(lp, _sub_graphs(graphs, keep), [SEGS[i] for i in keep],
                                       log_semiring)
    torch.testing.assert_close(tot[keep], ref_tot)
    torch.testing.assert_close(glp, ref_glp)
    torch.testing.assert_close(gg if own is None else gg[~own], ref_gg)


@pytest.mark.parametrize("kind", ["ctc", "shared"])
def test_intersect_dense_nan_outside_every_segment_changes_nothing(kind):
    lp, graphs = _engine_case(kind, seed=1)
    x = lp.clone()
    x[0, 5, :] = NAN  # frames 5, 6 of sequence 0 are in no segment (segment 0 reads them)
    x[0, 6, 2] = INF
    x[1, 0, 0] = x[1, 1, 0]  # (untouched data of a segment stays as it is)
    tot, glp, gg = _totals(x, graphs, SEGS)
    y = x.clone()
    y[0, 5:7] = 0.0
    ref_tot, ref_glp, ref_gg = _totals(y, graphs, SEGS)
    assert torch.equal(tot, ref_tot) and torch.equal(glp, ref_glp) and torch.equal(gg, ref_gg)
    assert _no_nan(tot) and _no_nan(glp)


def test_intersect_dense_double_scores():
    lp, graphs = _engine_case("ctc", seed=2)
    x = lp.clone()
    x[2, 3, 1] = INF
    tot, glp, _ = _totals(x, graphs, SEGS, double=True)
    keep = [0, 1, 2, 4]
    ref_tot, ref_glp, _ = _totals(lp, _sub_graphs(graphs, keep), [SEGS[i] for i in keep],
                                  double=True)
    assert tot.dtype == torch.float64 and math.isnan(float(tot[3]))
    assert torch.equal(tot[keep], ref_tot) and torch.equal(glp, ref_glp)


def _same_fsa(a: Fsa, b: Fsa, arc_offset: int = 0) -> None:
    """Identical lattices (``arc_offset``: of ``a``'s graph in its FsaVec minus ``b``'s)."""
    assert torch.equal(a.arcs, b.arcs)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.graph_arc_idx - arc_offset, b.graph_arc_idx)
    assert torch.equal(a.frame_idx, b.frame_idx)


def _check_lattices(make, lp, graphs, bad):
    x = lp.clone()
    x[SEGS[bad][0], SEGS[bad][1] + 1, 0] = NAN
    lat = make(graphs, DenseFsaVec(x, torch.tensor(SEGS, dtype=torch.int32)))
    keep = [i for i in range(len(SEGS)) if i != bad]
    ref = make(_sub_graphs(graphs, keep),
               DenseFsaVec(lp, torch.tensor([SEGS[i] for i in keep], dtype=torch.int32)))
    assert lat.num_fsas == len(SEGS) and int(lat[bad].num_states) == 0
    assert _no_nan(lat.scores)
    per_seg = graphs.as_vec().num_fsas > 1
    sub = _sub_graphs(graphs, keep).as_vec()
    for j, i in enumerate(keep):
        off = int(graphs.arc_splits[i]) - int(sub.arc_splits[j]) if per_seg else 0
        assert lat[i].num_arcs > 0
        _same_fsa(lat[i], ref[j], off)
        assert torch.equal(get_arc_post(lat[i]), get_arc_post(ref[j]))
        _same_fsa(shortest_path(lat[i]), shortest_path(ref[j]), off)
    # the same through FsaVec-level algorithms
    post = get_arc_post(lat)
    assert bool(torch.isfinite(post).any()) and not bool(torch.isnan(post).any())
    tot = get_tot_scores(lat)
    assert torch.equal(tot[keep], get_tot_scores(ref)) and float(tot[bad]) == -INF
    paths = shortest_path(lat)
    assert int(paths[bad].num_states) == 0


@pytest.mark.parametrize("kind", ["ctc", "per-segment"])
def test_intersect_dense_output_beam_lattices(kind):
    lp, graphs = _engine_case(kind, seed=3)
    _check_lattices(lambda g, d: intersect_dense(g, d, output_beam=8.0), lp, graphs, bad=0)
    _check_lattices(lambda g, d: intersect_dense(g, d, output_beam=INF), lp, graphs, bad=3)


def test_intersect_dense_pruned_lattices():
    lp, _ = _engine_case("ctc", seed=4)
    H = ctc_topo(5)

    def make(g, d):
        return intersect_dense_pruned(g, d, search_beam=10.0, output_beam=6.0,
                                      min_active_states=2, max_active_states=50)
    _check_lattices(make, lp, H, bad=2)


def test_lattice_scores_keep_autograd_and_zero_gradient_for_the_bad_segment():
    lp, graphs = _engine_case("ctc", seed=5)
    x = lp.clone()
    x[1, 4, 2] = NAN  # segment 2 (1, 2, 14)
    x.requires_grad_()
    lat = intersect_dense(graphs, DenseFsaVec(x, torch.tensor(SEGS, dtype=torch.int32)),
                          output_beam=8.0)
    get_tot_scores(lat).sum().backward()
    assert _no_nan(x.grad) and bool((x.grad[1, 2:16] == 0).all())


def test_get_tot_scores_of_an_fsa_vec_with_a_nan_arc():
    """The level-wise forward-backward of materialised FsaVecs never mixes FSAs."""
    lp, graphs = _engine_case("ctc", seed=6)
    lat = intersect_dense(graphs, DenseFsaVec(lp, torch.tensor(SEGS, dtype=torch.int32)),
                          output_beam=INF)
    scores = lat.scores.detach().clone()
    first = int(lat.arc_splits[1])
    scores[first] = NAN  # an arc of FSA 1
    for log_semiring in (True, False):
        s = scores.clone().requires_grad_()
        lat.scores = s
        tot = get_tot_scores(lat, log_semiring=log_semiring)
        torch.where(torch.isfinite(tot), tot, torch.zeros_like(tot)).sum().backward()
        s2 = lat.scores.detach().clone()
        s2[first] = 0.0
        s2.requires_grad_()
        lat.scores = s2
        ref = get_tot_scores(lat, log_semiring=log_semiring)
        ref[torch.arange(len(SEGS)) != 1].sum().backward()
        others = lat.arc_fsa != 1
        keep = torch.arange(len(SEGS)) != 1
        assert math.isnan(float(tot[1].detach())) and torch.equal(tot[keep].detach(), ref[keep].detach())
        assert _no_nan(s.grad) and bool((s.grad[~others] == 0).all())
        assert torch.equal(s.grad[others], s2.grad[others])
