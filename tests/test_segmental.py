"""Dense segment lattices (wfst_asr.fsa.segment) and the segmental losses
(wfst_asr.losses.segmental) against brute-force enumeration of every segmentation and
labelling of tiny utterances, computed independently here in plain Python float64."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from reference import all_segmentations, compositions

from wfst_asr.fsa.segment import best_segmentation, constrained_scores, segment_tot_scores
from wfst_asr.losses.segmental import (
    KINDS,
    frame_labels,
    infeasible,
    overlap_cost,
    segmental_loss,
)

ATOL = 1e-9

# (T, D, L, lens): B >= 2 with different lens, at least one shorter than T; D in {2, 3, T}
CONFIGS = [
    (6, 2, 3, [6, 4, 5]),
    (7, 3, 2, [7, 3, 5]),
    (5, 5, 3, [5, 2, 4]),
    (8, 3, 2, [8, 6]),
    (8, 8, 2, [8, 5, 1]),
]
CONFIG_IDS = [f"T{c[0]}D{c[1]}L{c[2]}" for c in CONFIGS]
SEEDS = [0, 1, 2]


# ----------------------------------------------------------------------------------------
# Brute-force reference (plain Python floats)
# ----------------------------------------------------------------------------------------


def seg_score(sc, b: int, z) -> float:
    """Sum of segment scores; sc: nested python list [B][T][D][L]."""
    return sum(sc[b][t - 1][t - s - 1][y] for s, t, y in z)


def label_seq(z) -> tuple[int, ...]:
    return tuple(y for _s, _t, y in z)


def frames_of(z, n: int) -> list[int]:
    out = [-1] * n
    for s, t, y in z:
        for i in range(s, t):
            out[i] = y
    return out


def hamming(z1, z2, n: int) -> int:
    return sum(a != b for a, b in zip(frames_of(z1, n), frames_of(z2, n)))


def lse(xs) -> float:
    xs = list(xs)
    if not xs:
        return -math.inf
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def bmax(xs) -> float:
    xs = list(xs)
    return max(xs) if xs else -math.inf


def argmax_seg(sc, b, segs):
    return max(segs, key=lambda z: seg_score(sc, b, z))


def random_scores(seed: int, T: int, D: int, L: int, B: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, L, generator=gen, dtype=dtype) * 1.5


def random_gold(rng: random.Random, lens, D, L):
    return [list(rng.choice(all_segmentations(n, D, L))) if n > 0 else [] for n in lens]


def pad_labels(seqs, L, rng: random.Random, extra: int = 0):
    """int64 [B, U] (padding: random labels in [0, L)) and label_lens [B]."""
    U = max([len(s) for s in seqs] + [1]) + extra
    rows = [list(s) + [rng.randrange(L) for _ in range(U - len(s))] for s in seqs]
    return (torch.tensor(rows, dtype=torch.int64),
            torch.tensor([len(s) for s in seqs], dtype=torch.int64))


def indicator(shape, paths, dtype=torch.float64) -> torch.Tensor:
    """Sum over rows b of the one-hot end-indexed entries of the segments of paths[b]."""
    out = torch.zeros(shape, dtype=dtype)
    for b, z in enumerate(paths):
        for s, t, y in z:
            out[b, t - 1, t - s - 1, y] += 1.0
    return out


def close(a: float, b: float, atol: float = ATOL) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol


# ----------------------------------------------------------------------------------------
# Sanity checks of the reference itself
# ----------------------------------------------------------------------------------------


def test_reference_counts():
    # compositions of n with parts <= D; labellings L^k each
    assert len(compositions(4, 4)) == 8
    assert len(compositions(5, 2)) == 8  # Fibonacci
    assert len(all_segmentations(3, 3, 2)) == 2 * 1 + 2 * 4 + 1 * 8  # k=1,2,3
    for z in all_segmentations(5, 2, 2):
        assert z[0][0] == 0 and z[-1][1] == 5
        assert all(a[1] == b[0] for a, b in itertools.pairwise(z))
        assert all(1 <= t - s <= 2 for s, t, _ in z)
    assert len(set(all_segmentations(5, 3, 2))) == len(all_segmentations(5, 3, 2))


# ----------------------------------------------------------------------------------------
# 1. segment_tot_scores
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_segment_tot_scores(cfg, seed):
    T, D, L, lens = cfg
    B = len(lens)
    x = random_scores(seed, T, D, L, B)
    sc = x.tolist()
    lens_t = torch.tensor(lens)
    got_log = segment_tot_scores(x, lens_t, log_semiring=True).tolist()
    got_max = segment_tot_scores(x, lens_t, log_semiring=False).tolist()
    for b, n in enumerate(lens):
        vals = [seg_score(sc, b, z) for z in all_segmentations(n, D, L)]
        assert close(got_log[b], lse(vals)), (b, got_log[b], lse(vals))
        assert close(got_max[b], bmax(vals)), (b, got_max[b], bmax(vals))


def test_segment_tot_scores_empty():
    x = random_scores(3, 4, 2, 2, 3)
    lens = torch.tensor([0, 4, 0])
    sc = x.tolist()
    for log in (True, False):
        got = segment_tot_scores(x, lens, log_semiring=log)
        assert got[0] == -math.inf and got[2] == -math.inf
        vals = [seg_score(sc, 1, z) for z in all_segmentations(4, 2, 2)]
        assert close(got[1].item(), lse(vals) if log else max(vals))


# ----------------------------------------------------------------------------------------
# 2. constrained_scores and forced best_segmentation
# ----------------------------------------------------------------------------------------


def _label_seq_trials(rng: random.Random, lens, D, L, n_trials=4):
    """Per trial, one label sequence per row: feasible ones (from random segmentations),
    and infeasible ones (more labels than frames; n > U * D; no labels)."""
    trials = []
    for k in range(n_trials):
        seqs = []
        for b, n in enumerate(lens):
            mode = (k + b) % 4
            if mode == 3:  # infeasible
                choices = [[rng.randrange(L) for _ in range(n + 1)], []]
                umin = -(-n // D)  # ceil(n / D): fewest labels that can cover n
                if umin >= 2:
                    choices.append([rng.randrange(L) for _ in range(umin - 1)])
                seqs.append(rng.choice(choices))
            else:
                seqs.append(list(label_seq(rng.choice(all_segmentations(n, D, L)))))
        trials.append(seqs)
    # edge cases: U == n (every segment one frame), U == ceil(n / D) (longest segments)
    trials.append([[rng.randrange(L) for _ in range(n)] for n in lens])
    trials.append([[rng.randrange(L) for _ in range(-(-n // D))] for n in lens])
    return trials


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_constrained_scores(cfg, seed):
    T, D, L, lens = cfg
    B = len(lens)
    rng = random.Random(seed)
    x = random_scores(seed, T, D, L, B)
    sc = x.tolist()
    lens_t = torch.tensor(lens)
    full_log = segment_tot_scores(x, lens_t, log_semiring=True).tolist()
    n_feasible = 0
    for seqs in _label_seq_trials(rng, lens, D, L):
        labels, label_lens = pad_labels(seqs, L, rng, extra=rng.randrange(2))
        got_log = constrained_scores(x, lens_t, labels, label_lens, log_semiring=True).tolist()
        got_max = constrained_scores(x, lens_t, labels, label_lens, log_semiring=False).tolist()
        forced = best_segmentation(x, lens_t, labels, label_lens)
        for b, n in enumerate(lens):
            allz = all_segmentations(n, D, L)
            zy = [z for z in allz if label_seq(z) == tuple(seqs[b])]
            vals = [seg_score(sc, b, z) for z in zy]
            exp_log, exp_max = lse(vals), bmax(vals)
            assert close(got_log[b], exp_log), (seqs[b], n, got_log[b], exp_log)
            assert close(got_max[b], exp_max), (seqs[b], n, got_max[b], exp_max)
            if not zy:
                assert got_log[b] == -math.inf and got_max[b] == -math.inf
                assert forced[b] == []
                continue
            n_feasible += 1
            # the forced alignment: a segmentation of n frames with label sequence seqs[b],
            # of the brute-force best score among those
            z = forced[b]
            assert tuple(z) in set(allz), z
            assert label_seq(z) == tuple(seqs[b])
            assert close(seg_score(sc, b, z), exp_max)
            assert tuple(z) == argmax_seg(sc, b, zy)
            # posterior mass of the label sequence
            probs = sum(math.exp(v - full_log[b]) for v in vals)
            assert abs(math.exp(got_log[b] - full_log[b]) - probs) <= ATOL
    assert n_feasible > 0


def test_constrained_empty_and_too_many_labels():
    T, D, L = 4, 2, 2
    x = random_scores(5, T, D, L, 4)
    lens = torch.tensor([0, 3, 4, 4])
    labels = torch.tensor([[0, 1, 0, 1, 0], [0, 1, 1, 0, 1], [1, 0, 1, 0, 0], [1, 0, 0, 0, 0]])
    # row 0: 0 frames, 1 label; row 1: 3 frames, 4 labels; row 2: 4 frames 5 labels;
    # row 3: 4 frames, 1 label, D=2 (n > U * D)
    label_lens = torch.tensor([1, 4, 5, 1])
    for log in (True, False):
        got = constrained_scores(x, lens, labels, label_lens, log_semiring=log)
        assert torch.equal(got, torch.full((4,), -math.inf, dtype=torch.float64)), got
    assert best_segmentation(x, lens, labels, label_lens) == [[], [], [], []]


# ----------------------------------------------------------------------------------------
# 3. best_segmentation (unconstrained)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_best_segmentation(cfg, seed):
    T, D, L, lens = cfg
    B = len(lens)
    x = random_scores(100 + seed, T, D, L, B)
    sc = x.tolist()
    got = best_segmentation(x, torch.tensor(lens))
    for b, n in enumerate(lens):
        expected = argmax_seg(sc, b, all_segmentations(n, D, L))
        assert tuple(got[b]) == expected, (b, got[b], expected)


# ----------------------------------------------------------------------------------------
# 4. overlap_cost
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_overlap_cost(cfg, seed):
    T, D, L, lens = cfg
    rng = random.Random(seed)
    gold = random_gold(rng, lens, D, L)
    fl = frame_labels(gold, T)
    assert fl.shape == (len(lens), T)
    cost = overlap_cost(fl, D, L)
    assert cost.shape == (len(lens), T, D, L)
    for b, n in enumerate(lens):
        gf = frames_of(gold[b], n)
        assert fl[b, :n].tolist() == gf
        assert (fl[b, n:] == -1).all()
        for t in range(1, n + 1):
            for s in range(max(0, t - D), t):
                for y in range(L):
                    exp = sum(1 for i in range(s, t) if gf[i] != y)
                    assert cost[b, t - 1, t - s - 1, y].item() == exp, (b, s, t, y)


# ----------------------------------------------------------------------------------------
# 5. the four losses
# ----------------------------------------------------------------------------------------


def brute_losses(sc, lens, D, L, gold, seqs=None):
    """{kind: [B] list} by enumeration. seqs: label sequences (default: gold's)."""
    out = {k: [] for k in KINDS}
    for b, n in enumerate(lens):
        allz = all_segmentations(n, D, L)
        svals = {z: seg_score(sc, b, z) for z in allz}
        g = tuple(gold[b])
        y = tuple(seqs[b]) if seqs is not None else label_seq(g)
        zy = [z for z in allz if label_seq(z) == y]
        full = lse(svals.values())
        out["log"].append(full - svals[g])
        out["hinge"].append(max(svals[z] + hamming(z, g, n) for z in allz) - svals[g])
        out["marginal_log"].append(full - lse(svals[z] for z in zy))
        zstar = max(zy, key=lambda z: svals[z])
        out["latent_hinge"].append(
            max(svals[z] + hamming(z, zstar, n) for z in allz) - svals[zstar])
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_losses(cfg, seed):
    T, D, L, lens = cfg
    B = len(lens)
    rng = random.Random(1000 + seed)
    x = random_scores(200 + seed, T, D, L, B)
    sc = x.tolist()
    gold = random_gold(rng, lens, D, L)
    lens_t = torch.tensor(lens)
    exp = brute_losses(sc, lens, D, L, gold)
    for kind in KINDS:
        got = segmental_loss(x, lens_t, kind, segments=gold)
        assert got.shape == (B,) and got.dtype == torch.float64
        for b in range(B):
            assert close(got[b].item(), exp[kind][b]), (kind, b, got[b].item(), exp[kind][b])
    # explicit (padded) label sequences, no segments
    labels, label_lens = pad_labels([label_seq(g) for g in gold], L, rng, extra=2)
    for kind in ("latent_hinge", "marginal_log"):
        got = segmental_loss(x, lens_t, kind, labels=labels, label_lens=label_lens)
        for b in range(B):
            assert close(got[b].item(), exp[kind][b]), (kind, b, got[b].item(), exp[kind][b])


@pytest.mark.parametrize("seed", SEEDS)
def test_latent_losses_other_label_sequences(seed):
    """latent_hinge / marginal_log with label sequences that are not the gold's (labels
    given explicitly; the gold segmentation only feeds the reference's unused kinds)."""
    T, D, L, lens = 7, 3, 3, [7, 4]
    rng = random.Random(seed)
    x = random_scores(300 + seed, T, D, L, len(lens))
    sc = x.tolist()
    gold = random_gold(rng, lens, D, L)
    seqs = [label_seq(rng.choice(all_segmentations(n, D, L))) for n in lens]
    exp = brute_losses(sc, lens, D, L, gold, seqs)
    labels, label_lens = pad_labels(seqs, L, rng, extra=1)
    for kind in ("latent_hinge", "marginal_log"):
        got = segmental_loss(x, torch.tensor(lens), kind, labels=labels, label_lens=label_lens)
        for b in range(len(lens)):
            assert close(got[b].item(), exp[kind][b]), (kind, b, got[b].item(), exp[kind][b])


def test_losses_nonnegative_and_zero_when_certain():
    """Hinge losses are >= cost-free margin; with a huge gold margin they are 0 (sanity)."""
    T, D, L, lens = 5, 2, 2, [5, 3]
    rng = random.Random(7)
    gold = random_gold(rng, lens, D, L)
    x = random_scores(7, T, D, L, 2)
    x = x + 100.0 * indicator(x.shape, gold)
    for kind in ("hinge", "latent_hinge"):
        got = segmental_loss(x, torch.tensor(lens), kind, segments=gold)
        assert torch.allclose(got, torch.zeros(2, dtype=torch.float64), atol=ATOL), (kind, got)
    for kind in KINDS:
        got = segmental_loss(random_scores(8, T, D, L, 2), torch.tensor(lens), kind,
                             segments=gold)
        assert bool((got >= -ATOL).all()), (kind, got)


# ----------------------------------------------------------------------------------------
# 6. gradients
# ----------------------------------------------------------------------------------------

GRAD_CONFIGS = [(5, 2, 2, [5, 3]), (4, 4, 2, [4, 2]), (6, 3, 2, [6, 4])]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["log", "marginal_log"])
@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=[f"T{c[0]}D{c[1]}" for c in GRAD_CONFIGS])
def test_gradcheck_smooth_losses(cfg, kind, seed):
    T, D, L, lens = cfg
    rng = random.Random(seed)
    gold = random_gold(rng, lens, D, L)
    x = random_scores(400 + seed, T, D, L, len(lens)).requires_grad_(True)
    lens_t = torch.tensor(lens)

    def f(s):
        return segmental_loss(s, lens_t, kind, segments=gold).sum()

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_log_loss_gradient_is_posterior_minus_gold(seed):
    """Independent check of the log loss' gradient: segment posteriors minus gold indicator,
    by enumeration."""
    T, D, L, lens = 5, 3, 2, [5, 3]
    rng = random.Random(seed)
    gold = random_gold(rng, lens, D, L)
    x = random_scores(450 + seed, T, D, L, 2).requires_grad_(True)
    segmental_loss(x, torch.tensor(lens), "log", segments=gold).sum().backward()
    sc = x.detach().tolist()
    exp = torch.zeros_like(x)
    for b, n in enumerate(lens):
        allz = all_segmentations(n, D, L)
        full = lse(seg_score(sc, b, z) for z in allz)
        for z in allz:
            p = math.exp(seg_score(sc, b, z) - full)
            for s, t, y in z:
                exp[b, t - 1, t - s - 1, y] += p
    exp -= indicator(x.shape, gold)
    assert torch.allclose(x.grad, exp, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=[f"T{c[0]}D{c[1]}" for c in GRAD_CONFIGS])
def test_hinge_gradients(cfg, seed):
    T, D, L, lens = cfg
    rng = random.Random(seed)
    gold = random_gold(rng, lens, D, L)
    x = random_scores(500 + seed, T, D, L, len(lens)).requires_grad_(True)
    sc = x.detach().tolist()
    lens_t = torch.tensor(lens)

    # hinge: d/dscores = 1[cost-augmented argmax vs gold] - 1[gold]
    segmental_loss(x, lens_t, "hinge", segments=gold).sum().backward()
    aug = [max(all_segmentations(n, D, L),
               key=lambda z, b=b, n=n: seg_score(sc, b, z) + hamming(z, gold[b], n))
           for b, n in enumerate(lens)]
    exp = indicator(x.shape, aug) - indicator(x.shape, gold)
    assert torch.equal(x.grad, exp), (x.grad - exp).nonzero()

    # latent hinge: 1[cost-augmented argmax vs z*] - 1[z*]
    x.grad = None
    segmental_loss(x, lens_t, "latent_hinge", segments=gold).sum().backward()
    zstars, aug = [], []
    for b, n in enumerate(lens):
        allz = all_segmentations(n, D, L)
        zy = [z for z in allz if label_seq(z) == label_seq(gold[b])]
        zs = argmax_seg(sc, b, zy)
        zstars.append(zs)
        aug.append(max(allz, key=lambda z, b=b, n=n, zs=zs:
                       seg_score(sc, b, z) + hamming(z, zs, n)))
    exp = indicator(x.shape, aug) - indicator(x.shape, zstars)
    assert torch.equal(x.grad, exp), (x.grad - exp).nonzero()


# ----------------------------------------------------------------------------------------
# 7. infeasible utterances
# ----------------------------------------------------------------------------------------


def test_infeasible_reasons():
    D = 2
    ok_segs = [(0, 2, 1), (2, 3, 0), (3, 5, 1)]
    cases = [
        # (n, label_len, segments, feasible?)
        (5, 3, ok_segs, True),
        (5, 3, None, True),
        (5, None, ok_segs, True),
        (4, 2, None, True),  # n == U * D
        (3, 3, None, True),  # n == U
        (0, 1, None, False),  # no frames
        (0, None, [], False),
        (3, 4, None, False),  # fewer frames than labels
        (5, 2, None, False),  # n > U * D
        (5, 0, None, False),  # no labels
        (5, None, [(0, 3, 1), (3, 5, 0)], False),  # segment longer than D
        (5, None, [(0, 2, 1), (3, 5, 0)], False),  # gap
        (5, None, [(0, 2, 1), (1, 3, 0), (3, 5, 1)], False),  # overlap
        (5, None, [(0, 2, 1), (2, 4, 0)], False),  # ends before n
        (5, None, [(0, 2, 1), (2, 4, 0), (4, 6, 1)], False),  # ends after n
        (5, None, [(1, 3, 1), (3, 5, 0)], False),  # does not start at 0
        (5, None, [(2, 4, 0), (0, 2, 1), (4, 5, 1)], False),  # out of order
        (5, None, [(0, 2, 1), (2, 2, 0), (2, 4, 0), (4, 5, 1)], False),  # empty segment
    ]
    for n, u, segs, feasible in cases:
        got = infeasible(
            [n], D, None if u is None else [u], None if segs is None else [segs])
        assert isinstance(got, list) and len(got) == 1
        if feasible:
            assert got == [""], (n, u, segs, got)
        else:
            assert isinstance(got[0], str) and got[0] != "", (n, u, segs, got)
    # batched, tensors
    got = infeasible(torch.tensor([5, 3, 5]), D, torch.tensor([3, 4, 2]),
                     [ok_segs, [(0, 1, 0), (1, 2, 0), (2, 3, 1)], [(0, 3, 0), (3, 5, 1)]])
    assert got[0] == "" and got[1] != "" and got[2] != ""


def _infeasible_cases(T, D, L, rng):
    """(kind, gold-or-None, label seq-or-None, n) of an infeasible extra row per kind."""
    return [
        ("marginal_log", None, [rng.randrange(L) for _ in range(T)] + [0], T - 1),  # U > n
        ("latent_hinge", None, [rng.randrange(L) for _ in range(T + 1)], T),  # U > n
        ("marginal_log", None, [1], T),  # n > U * D
        ("latent_hinge", None, [0], T),  # n > U * D
        ("log", [(0, 2, 1), (3, 5, 0), (5, T, 1)], None, T),  # gap
        ("hinge", [(0, 2, 1), (2, 4, 0)], None, T),  # does not reach n
        ("log", [(0, 1, 0)], None, 0),  # no frames
        ("hinge", [(0, D, 1), (D, 2 * D, 0)], None, 2 * D - 1),  # ends after n
    ]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", range(8))
def test_infeasible_row_isolated(case, seed):
    T, D, L = 6, 2, 2
    lens = [6, 4, 5]
    rng = random.Random(seed)
    gold = random_gold(rng, lens, D, L)
    kind, bad_gold, bad_seq, bad_n = _infeasible_cases(T, D, L, rng)[case]
    x = random_scores(600 + seed, T, D, L, 4)
    feas_x = x[:3].clone().requires_grad_(True)
    all_x = x.clone().requires_grad_(True)
    lens_all = lens + [bad_n]
    if bad_gold is not None:
        segs_all = gold + [bad_gold]
        kwargs_f = {"segments": gold}
        kwargs_a = {"segments": segs_all}
        assert infeasible(lens_all, D, segments=segs_all) == ["", "", "", infeasible(
            [bad_n], D, segments=[bad_gold])[0]]
        assert infeasible([bad_n], D, segments=[bad_gold])[0] != ""
    else:
        seqs = [label_seq(g) for g in gold]
        lab_f, ll_f = pad_labels(seqs, L, rng)
        lab_a, ll_a = pad_labels(seqs + [tuple(bad_seq)], L, rng)
        kwargs_f = {"labels": lab_f, "label_lens": ll_f}
        kwargs_a = {"labels": lab_a, "label_lens": ll_a}
        reasons = infeasible(lens_all, D, label_lens=ll_a)
        assert reasons[:3] == ["", "", ""] and reasons[3] != "", reasons

    loss_f = segmental_loss(feas_x, torch.tensor(lens), kind, **kwargs_f)
    loss_a = segmental_loss(all_x, torch.tensor(lens_all), kind, **kwargs_a)
    assert torch.isfinite(loss_f).all()
    assert torch.allclose(loss_a[:3], loss_f, atol=ATOL, rtol=0), (loss_a, loss_f)
    # brute-force values of the feasible rows are unaffected
    exp = brute_losses(x.tolist(), lens, D, L, gold)[kind]
    assert all(close(loss_a[b].item(), exp[b]) for b in range(3)), (loss_a, exp)

    keep = torch.tensor([r == "" for r in (
        infeasible(lens_all, D, segments=kwargs_a["segments"]) if bad_gold is not None
        else infeasible(lens_all, D, label_lens=kwargs_a["label_lens"]))])
    loss_a[keep].sum().backward()
    loss_f.sum().backward()
    assert not torch.isnan(all_x.grad).any()
    assert torch.isfinite(all_x.grad).all()
    assert torch.allclose(all_x.grad[:3], feas_x.grad, atol=ATOL, rtol=0)
    assert (all_x.grad[3] == 0).all()


def test_gold_segment_longer_than_D_does_not_break_batch():
    """A gold segment longer than D is infeasible; per segmental_loss's docstring such a row
    gives inf/nan (the caller selects the feasible rows), so the feasible rows of the same
    batch must still be computed."""
    T, D, L = 6, 2, 2
    lens = [6, 4, 6]
    rng = random.Random(0)
    gold = random_gold(rng, lens[:2], D, L) + [[(0, 3, 1), (3, 5, 0), (5, 6, 1)]]
    assert infeasible(lens, D, segments=gold)[2] != ""
    x = random_scores(650, T, D, L, 3)
    exp = brute_losses(x.tolist(), lens[:2], D, L, gold[:2])
    for kind in ("log", "hinge"):
        got = segmental_loss(x, torch.tensor(lens), kind, segments=gold)
        assert all(close(got[b].item(), exp[kind][b]) for b in range(2)), (kind, got)


# ----------------------------------------------------------------------------------------
# 8. unreachable constrained states: finite values and gradients
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", SEEDS)
def test_unreachable_states_finite(seed, dtype):
    T, D, L = 7, 3, 3
    rng = random.Random(seed)
    lens = [7, 7, 3, 6, 5]
    seqs = [
        [rng.randrange(L) for _ in range(7)],  # U == n: one segmentation
        [rng.randrange(L) for _ in range(3)],  # U == ceil(n / D): few segmentations
        [rng.randrange(L) for _ in range(3)],  # U == n, short utterance
        [rng.randrange(L) for _ in range(2)],  # U * D == n: exactly one segmentation
        [rng.randrange(L) for _ in range(4)],
    ]
    labels, label_lens = pad_labels(seqs, L, rng, extra=2)  # extra label positions unreached
    x64 = random_scores(700 + seed, T, D, L, len(lens))
    sc = x64.tolist()
    tol = ATOL if dtype == torch.float64 else 1e-4
    for log in (True, False):
        x = x64.to(dtype).requires_grad_(True)
        got = constrained_scores(x, torch.tensor(lens), labels, label_lens, log_semiring=log)
        assert torch.isfinite(got).all(), got
        got.sum().backward()
        assert torch.isfinite(x.grad).all()
        for b, n in enumerate(lens):
            vals = [seg_score(sc, b, z) for z in all_segmentations(n, D, L)
                    if label_seq(z) == tuple(seqs[b])]
            e = lse(vals) if log else max(vals)
            assert abs(got[b].item() - e) <= tol * max(1.0, abs(e)), (b, got[b].item(), e)
    exp = brute_losses(sc, lens, D, L, [next(z for z in all_segmentations(n, D, L)
                                             if label_seq(z) == tuple(s))
                                        for n, s in zip(lens, seqs)], seqs)
    for kind in ("marginal_log", "latent_hinge"):
        x = x64.to(dtype).requires_grad_(True)
        loss = segmental_loss(x, torch.tensor(lens), kind, labels=labels, label_lens=label_lens)
        assert torch.isfinite(loss).all(), (kind, loss)
        loss.sum().backward()
        assert torch.isfinite(x.grad).all(), kind
        for b in range(len(lens)):
            assert abs(loss[b].item() - exp[kind][b]) <= tol * max(1.0, abs(exp[kind][b]))

    # with one more row that has no segmentation at all (-inf), selected out of the sum
    lens2 = lens + [2]
    labels2, label_lens2 = pad_labels(seqs + [[0, 1, 0]], L, rng)
    x = random_scores(750 + seed, T, D, L, len(lens2), dtype=dtype).requires_grad_(True)
    for log in (True, False):
        x.grad = None
        got = constrained_scores(x, torch.tensor(lens2), labels2, label_lens2, log_semiring=log)
        assert got[-1] == -math.inf and torch.isfinite(got[:-1]).all()
        got[:-1].sum().backward()
        assert torch.isfinite(x.grad).all()
        assert (x.grad[-1] == 0).all()
