"""The level-wise forward-backward's padded block layout and caller-given state levels.

``wfst_asr.fsa.forward_backward`` lays the arcs of each level out as padded ``[K, n]`` blocks;
a level whose degrees are too uneven is split into one block per degree class. The small random
FSAs of test_forward_backward.py never trigger the split, so here the thresholds are forced to
split whenever degrees differ, and the results are compared with the brute-force references of
tests/reference.py. ``Fsa.set_state_levels`` with any valid layering must give the same results.
"""

from __future__ import annotations

import pytest
import torch

try:
    from tests import reference as ref
except ImportError:  # pragma: no cover - run from inside tests/
    import reference as ref

import wfst_asr.fsa.forward_backward as fb
from wfst_asr.fsa import (
    Fsa,
    create_fsa_vec,
    get_arc_post,
    get_backward_scores,
    get_forward_scores,
    get_tot_scores,
    shortest_path,
)

INF = float("inf")


def _vec(seed: int) -> Fsa:
    gen = torch.Generator().manual_seed(seed)
    fsas = [ref.random_acyclic_fsa(gen, num_states=ref._randint(gen, 3, 9), num_labels=4,
                                   arc_prob=0.3 + 0.6 * ref._rand(gen), ensure_path=(i != 3),
                                   top_sorted=(i % 2 == 0), dtype=torch.float64)
            for i in range(6)]
    # the start state has an entering arc (from an unreachable state): its initial 0 must be
    # combined with what arrives, not overwritten
    rows = [(0, 1, 1, 0.5), (1, 3, -1, -0.25), (2, 0, 2, 0.75), (2, 3, -1, 0.1)]
    fsas.append(Fsa(torch.tensor([r[:3] for r in rows], dtype=torch.int32),
                    torch.tensor([r[3] for r in rows], dtype=torch.float64), num_states=4,
                    aux_labels=torch.tensor([r[2] for r in rows], dtype=torch.int32)))
    return create_fsa_vec(fsas)


def _check(vec: Fsa) -> None:
    refs = ref.split_fsas(vec)
    for log in (True, False):
        exp_tot = [ref.total(ref.enumerate_paths(r), log) for r in refs]
        exp_fwd = [x for r in refs for x in ref.forward_scores(r, log)]
        exp_bwd = [x for r in refs for x in ref.backward_scores(r, log)]
        exp_post = [x for r in refs for x in ref.arc_log_posteriors(r, log)]
        exp_grad = [c for r in refs
                    for c in ref.arc_expected_counts(ref.enumerate_paths(r), len(r.arcs), log)]
        kw = {"log_semiring": log, "use_double_scores": True}
        tol = ref.tol(torch.float64)
        f = vec.clone().requires_grad_(True)
        tot = get_tot_scores(f, **kw)
        torch.testing.assert_close(tot, torch.tensor(exp_tot, dtype=torch.float64), **tol)
        tot.masked_fill(~torch.isfinite(tot), 0.0).sum().backward()
        torch.testing.assert_close(f.scores.grad, torch.tensor(exp_grad, dtype=torch.float64),
                                   **tol)
        torch.testing.assert_close(get_forward_scores(vec, **kw),
                                   torch.tensor(exp_fwd, dtype=torch.float64), **tol)
        torch.testing.assert_close(get_backward_scores(vec, **kw),
                                   torch.tensor(exp_bwd, dtype=torch.float64), **tol)
        torch.testing.assert_close(get_arc_post(vec, **kw),
                                   torch.tensor(exp_post, dtype=torch.float64), **tol)
    best = shortest_path(vec)
    for i, r in enumerate(refs):
        exp = ref.best_path(ref.enumerate_paths(r))
        got = best[i]
        if exp is None:
            assert got.num_arcs == 0
        else:
            assert float(got.scores.sum()) == pytest.approx(exp[1], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_layout(seed):
    _check(_vec(seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_levels(seed, monkeypatch):
    monkeypatch.setattr(fb, "_PAD_FACTOR", 1)
    monkeypatch.setattr(fb, "_PAD_SLACK", 0)
    vec = _vec(seed)
    plan = fb._plan(vec)
    # some level really is split into several blocks, and some block is not a contiguous run
    # of ranks (it is read and written through its state list)
    entered = torch.bincount(vec.dst_global, minlength=vec.num_states) > 0
    assert len(plan.fwd.ns) > len(set(vec.state_levels()[entered].tolist()))
    assert -1 in plan.bwd.s0s or -1 in plan.fwd.s0s
    _check(vec)


def test_given_levels():
    vec = _vec(3)
    longest = vec.state_levels().clone()
    other = _vec(3)
    # any layering that increases along every arc: here twice the depth plus the parity of
    # the state number (so levels are also skipped and shared differently)
    other.set_state_levels(2 * longest + torch.arange(other.num_states) % 2)
    assert not torch.equal(other.state_levels(), longest)
    _check(other)
    bad = _vec(3)
    with pytest.raises(ValueError):
        bad.set_state_levels(torch.zeros(bad.num_states, dtype=torch.int64))
    with pytest.raises(ValueError):
        bad.set_state_levels(longest[:-1])
