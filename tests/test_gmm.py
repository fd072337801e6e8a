"""The monophone GMM system (wfst_asr.gmm) and frame CE on given alignments, against
independent references written here: the diagonal-Gaussian mixture density formula, Kaldi's
own ``DiagGmm.log_likelihood``, EM's monotone likelihood, brute-force enumeration of
alignments, explicit delta formulas and an explicit cross-entropy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import timit_conf

from wfst_asr.gmm import MonoGmm, MonoOptions, add_deltas, speaker_cmn, train_mono
from wfst_asr.graphs import pdf_map, phone_pdfs
from wfst_asr.graphs.topo import make_topology
from wfst_asr.losses import alignment_prior, equal_alignment, subsample_alignments
from wfst_asr.losses.hmm import AlignmentCeLoss, HmmLoss


def _random_params(num_pdfs: int, gauss: list[int], D: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = {"weights": [], "means": [], "vars": []}
    for p in range(num_pdfs):
        w = torch.rand(gauss[p], generator=gen) + 0.1
        params["weights"].append(w / w.sum())
        params["means"].append(torch.randn(gauss[p], D, generator=gen))
        params["vars"].append(torch.rand(gauss[p], D, generator=gen) + 0.3)
    return params


def _mixture_loglike(x: list[float], w, mu, var) -> float:
    """log sum_g w_g prod_d N(x_d; mu_gd, var_gd), term by term."""
    total = 0.0
    for g in range(len(w)):
        dens = float(w[g])
        for d in range(len(x)):
            v, m = float(var[g][d]), float(mu[g][d])
            dens *= math.exp(-0.5 * (x[d] - m) ** 2 / v) / math.sqrt(2 * math.pi * v)
        total += dens
    return math.log(total)


def test_log_likelihoods_match_mixture_formula_and_kaldi():
    topo = make_topology("hmm-1state", 2)  # 2 pdfs
    params = _random_params(2, [3, 2], D=4)
    model = MonoGmm.from_params(topo, params)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    got = model.log_likelihoods(x)
    assert got.shape == (7, 2) and got.dtype == torch.float64
    for t in range(7):
        for p in range(2):
            ref = _mixture_loglike(x[t].tolist(), params["weights"][p], params["means"][p],
                                   params["vars"][p])
            assert float(got[t, p]) == pytest.approx(ref, rel=1e-5, abs=1e-4)
            kaldi = model.am.log_likelihood(p, x[t].numpy().astype(np.float32))
            assert float(got[t, p]) == pytest.approx(kaldi, rel=1e-5, abs=1e-4)
    back = model.params()  # the round trip keeps the parameters
    for key in params:
        for a, b in zip(params[key], back[key]):
            assert torch.allclose(a.float(), b, rtol=1e-5, atol=1e-5)


def _synthetic(num_utts: int = 12, D: int = 3, seed: int = 0):
    """Utterances of phones 1..3 (hmm-1state), each phone a Gaussian blob (mean 3 * phone)."""
    gen = torch.Generator().manual_seed(seed)
    feats, texts, labels = [], [], []
    for _ in range(num_utts):
        phones = torch.randint(1, 4, (4,), generator=gen).tolist()
        frames = []
        for p in phones:
            n = int(torch.randint(4, 9, (1,), generator=gen))
            frames.append(3.0 * p + torch.randn(n, D, generator=gen))
        feats.append(torch.cat(frames))
        texts.append(phones)
        labels.append(torch.cat([torch.full((f.shape[0],), p) for f, p in zip(frames, phones)]))
    return feats, texts, labels


def test_em_does_not_decrease_the_likelihood_with_fixed_alignments():
    topo = make_topology("hmm-1state", 3)
    feats, texts, _ = _synthetic()
    model = MonoGmm.from_params(topo, _random_params(3, [2, 2, 2], D=3, seed=3))
    alis = [equal_alignment(model.pdf_sequence(t), f.shape[0]) for f, t in zip(feats, texts)]
    opts = MonoOptions(min_gaussian_occupancy=1.0)
    history = []
    for _ in range(6):
        acc, tot, frames = model.accumulate(feats, alis)
        assert frames == sum(f.shape[0] for f in feats)
        # the E-step total is the sum of the aligned pdfs' log-likelihoods
        ref = sum(float(model.log_likelihoods(f)[torch.arange(f.shape[0]), a].sum())
                  for f, a in zip(feats, alis))
        assert tot == pytest.approx(ref, rel=1e-6)
        history.append(tot)
        model.update(acc, opts)
    assert all(b >= a - 1e-6 * abs(a) for a, b in itertools.pairwise(history))
    assert history[-1] > history[0]


def test_train_mono_improves_and_finds_the_segments():
    topo = make_topology("hmm-1state", 3, self_loop_scale=0.1)
    feats, texts, labels = _synthetic()
    records = []
    opts = MonoOptions(num_iters=6, max_iter_inc=3, tot_gauss=12, realign_iters=(1, 2, 4),
                       min_count=2.0, min_gaussian_occupancy=1.0)
    model, alis = train_mono(topo, feats, texts, opts, report=records.append)
    assert [r["iter"] for r in records] == list(range(6))
    assert records[-1]["loglike_per_frame"] > records[0]["loglike_per_frame"]
    assert model.num_gauss > 3 and all(a is not None for a in alis)
    # the blobs are apart: the final alignments' pdfs are mostly the generating phones'
    pdfs = phone_pdfs(topo)
    hits = sum(int((a == torch.tensor([pdfs[int(p)][0] for p in lab])).sum())
               for a, lab in zip(alis, labels))
    assert hits / sum(lab.numel() for lab in labels) > 0.95


def _brute_force_best(ll: torch.Tensor, pdf_seq: list[int]) -> torch.Tensor:
    """Best segmentation of T frames into len(pdf_seq) non-empty runs, by enumeration (equal
    transition scores on every path: 3-state phones, same loop/forward probabilities)."""
    T, N = ll.shape[0], len(pdf_seq)
    best, best_path = -math.inf, None
    for cuts in itertools.combinations(range(1, T), N - 1):
        bounds = (0, *cuts, T)
        path = torch.cat([torch.full((bounds[i + 1] - bounds[i],), pdf_seq[i])
                          for i in range(N)])
        score = float(ll[torch.arange(T), path].sum())
        if score > best:
            best, best_path = score, path
    return best_path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alignment_equals_brute_force(seed):
    topo = make_topology("hmm-3state", 2)  # 6 pdfs
    model = MonoGmm.from_params(topo, _random_params(6, [2] * 6, D=2, seed=seed))
    gen = torch.Generator().manual_seed(10 + seed)
    feats = [torch.randn(9, 2, generator=gen), torch.randn(8, 2, generator=gen)]
    texts = [[1, 2], [2, 1]]
    alis = model.align(feats, texts, acoustic_scale=1.0)
    for f, t, a in zip(feats, texts, alis):
        ref = _brute_force_best(model.log_likelihoods(f), model.pdf_sequence(t))
        assert torch.equal(a, ref)
    # too few frames for 6 HMM states: no alignment
    assert model.align([torch.randn(5, 2)], [[1, 2]])[0] is None
    assert equal_alignment([4, 5, 6], 2) is None


def test_equal_alignment_and_pdf_map():
    assert equal_alignment([7, 8, 9], 7).tolist() == [7, 7, 7, 8, 8, 9, 9]
    three, one = make_topology("hmm-3state", 4), make_topology("hmm-1state", 4)
    m = pdf_map(three, one)
    p3, p1 = phone_pdfs(three), phone_pdfs(one)
    for phone in range(1, 5):
        assert all(int(m[q]) == p1[phone][0] + 1 for q in p3[phone])
    assert torch.equal(pdf_map(three, three), torch.arange(three.num_pdfs) + 1)


def test_add_deltas_explicit_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, dtype=torch.float64, generator=gen)
    y = add_deltas(x, order=2, window=2)
    assert y.shape == (12, 9) and torch.equal(y[:, :3], x)

    def clamp(t: int) -> int:
        return min(max(t, 0), x.shape[0] - 1)

    def delta(src, t: int, clamp_rows: bool = True):
        return sum(n * (src[clamp(t + n)] - src[clamp(t - n)]) for n in (1, 2)) / 10.0

    for t in range(12):
        assert torch.allclose(y[t, 3:6], delta(x, t), atol=1e-12)
    d1 = torch.stack([delta(x, t) for t in range(12)])
    for t in range(4, 8):  # away from the edges the 2nd order is the delta of the delta
        ref = sum(n * (d1[t + n] - d1[t - n]) for n in (1, 2)) / 10.0
        assert torch.allclose(y[t, 6:], ref, atol=1e-12)


def test_speaker_cmn():
    gen = torch.Generator().manual_seed(0)
    feats = {u: torch.randn(5 + i, 2, generator=gen) + 4 * i for i, u in enumerate("abc")}
    out = speaker_cmn(feats, {"a": "s1", "b": "s1", "c": "s2"})
    s1 = torch.cat([out["a"], out["b"]])
    assert torch.allclose(s1.mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(out["c"].mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(out["a"] - feats["a"], (out["b"] - feats["b"])[:1].expand(5, 2))


def test_alignment_ce_loss_explicit():
    three, one = make_topology("hmm-3state", 3), make_topology("hmm-1state", 3)
    m = pdf_map(three, one)
    crit = AlignmentCeLoss(HmmLoss(one, mode="ce"), m, subsampling=3)
    alis = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 0], [5, 5, 5, 5, 5]]  # pdfs of the 3-state topology
    targets = crit.targets(alis)
    # middle frames 1, 4, 7 (the 10th frame is a partial group: dropped) and 1
    assert targets.tolist() == [[int(m[1]), int(m[4]), int(m[7])], [int(m[5]), -1, -1]]
    lp = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    loss, info = crit(lp, torch.tensor([4, 1]), alis)
    ref = -(lp[0, 0, m[1]] + lp[0, 1, m[4]] + lp[0, 2, m[7]] + lp[1, 0, m[5]])
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert info["aligned_frames"] == 4 and info["num_excluded"] == 0
    with pytest.raises(ValueError, match="utterance 1 of the batch"):
        crit.targets([[0, 1, 2], [0, 99, 2]])
    prior = alignment_prior(targets, 4, floor=0.0)
    assert prior.tolist() == pytest.approx([0.0, *[float((targets == k).sum()) / 4
                                                   for k in (1, 2, 3)]])
    assert subsample_alignments([[3, 4, 5, 6]], 1).tolist() == [[3, 4, 5, 6]]


def test_hybrid_config_builds_the_alignment_criterion(tmp_path):
    from wfst_asr.train import build_model_and_loss
    from wfst_asr.train.config import apply_overrides, load_config

    (tmp_path / "tokens.txt").write_text("<blk> 0\na 1\nb 2\nc 3\n")
    base = [f"tokens={tmp_path}/tokens.txt", f"lang_dir={tmp_path}", "model.hidden=8",
            "model.num_layers=1", "train_cuts="]
    cfg = apply_overrides(load_config(timit_conf("hmm_blstm")), base)
    model, crit, _ = build_model_and_loss(cfg)
    assert isinstance(crit, AlignmentCeLoss) and crit.subsampling == 3
    assert cfg.num_classes == 4 and cfg.token_field == "gmm_ali"
    three = make_topology("hmm-3state", 3)
    assert torch.equal(crit.mapping, pdf_map(three, make_topology("hmm-1state", 3)))
    feats = torch.randn(1, 30, 80)
    lp, out_lens = model(feats, torch.tensor([30]))
    ali = [[int(q) for q in torch.arange(30) % three.num_pdfs]]
    loss, info = crit(lp, out_lens, ali)
    ref = -sum(lp[0, k, crit.mapping[(3 * k + 1) % three.num_pdfs]] for k in range(10))
    assert float(loss) == pytest.approx(float(ref), rel=1e-5) and info["frames"] == 10
    with pytest.raises(ValueError, match="needs loss.mode=ce"):
        build_model_and_loss(apply_overrides(load_config(timit_conf("hmm_blstm")),
                                             [*base, "loss.mode=forward"]))
