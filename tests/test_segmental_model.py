"""The segment scorer against phi computed segment by segment, the segmental criterion's
training modes and exclusions, and per-frame labels from alignments."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from reference import all_segmentations

from wfst_asr.data.frame_labels import FrameLabelError, frame_labels
from wfst_asr.losses.segmental import SegmentalLoss, runs
from wfst_asr.models import SegmentScorer, build_model
from wfst_asr.train.criteria import SegmentalCriterion


def _phi_score(scorer: SegmentScorer, k: torch.Tensor, n: int, s: int, t: int, y: int) -> float:
    """theta^T phi(x, (s, t, y)) written out for one segment (frames s..t-1 of n)."""
    W, dur, bias = (p.detach().double() for p in (scorer.weight, scorer.duration, scorer.bias))
    k = k.double()
    d = t - s

    def at(f: int) -> torch.Tensor:
        return k[min(max(f, 0), n - 1)]

    parts = [k[s:t].mean(0)]
    parts += [k[s + math.floor(j * (d - 1) / 4)] for j in range(5)]
    parts += [at(s - 1), at(s - 2), at(t), at(t + 1)]
    total = sum(float(W[p, y] @ parts[p]) for p in range(10))
    return total + float(dur[y, d - 1]) + float(bias[y])


@pytest.mark.parametrize("seed", range(3))
def test_scorer_equals_phi_per_segment(seed):
    torch.manual_seed(seed)
    B, T, F, L, D = 2, 9, 5, 3, 4
    scorer = SegmentScorer(F, L, D).double()
    with torch.no_grad():
        scorer.weight.normal_()
        scorer.duration.normal_()
        scorer.bias.normal_()
    k = torch.randn(B, T, F, dtype=torch.float64)
    lens = torch.tensor([9, 6])
    got = scorer(k, lens)
    assert got.shape == (B, T, D, L)
    for b in range(B):
        n = int(lens[b])
        for t in range(1, n + 1):
            for d in range(1, min(D, t) + 1):
                for y in range(L):
                    want = _phi_score(scorer, k[b], n, t - d, t, y)
                    assert got[b, t - 1, d - 1, y].item() == pytest.approx(want, abs=1e-9)


def test_scorer_gradients_reach_theta_and_input():
    torch.manual_seed(0)
    scorer = SegmentScorer(4, 3, 3).double()
    k = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    lens = torch.tensor([6, 4])
    assert torch.autograd.gradcheck(lambda x: scorer(x, lens)[:, :, :, :].sum(-1), (k,))
    scorer(k, lens).sum().backward()
    for p in scorer.parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0)


def _model():
    torch.manual_seed(0)
    return build_model("blstm_segmental", 6, 4, hidden=8, num_layers=1, subsampling=1,
                       max_duration=4, dropout=0.0)


def test_criterion_excludes_and_counts_bad_utterances():
    m = _model()
    crit = SegmentalCriterion(m, SegmentalLoss("marginal_log"))
    x = torch.randn(3, 8, 6)
    lens = torch.tensor([8, 8, 2])
    k, out_lens = m(x, lens)
    # utt 1 needs a segment longer than D=4 per label (8 frames, 1 label); utt 2: 2 frames, 3 labels
    loss, info = crit(k, out_lens, [[1, 2, 3], [2], [1, 2, 3]])
    assert info["num_excluded"] == 2 and info["excluded"] == [1, 2]
    assert "longer than D=4" in info["reasons"][1] and "2 frames for 3 labels" in info["reasons"][2]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    alone, _ = SegmentalCriterion(m, SegmentalLoss("marginal_log"))(k[:1], out_lens[:1],
                                                                      [[1, 2, 3]])
    assert float(alone) == pytest.approx(float(loss), rel=1e-5)
    with pytest.raises(ValueError, match="token ids must be in"):
        crit(k, out_lens, [[1, 4], [1], [1]])


def test_criterion_frame_targets_all_kinds_finite():
    m = _model()
    x = torch.randn(2, 8, 6)
    lens = torch.tensor([8, 6])
    frames = [[1, 1, 2, 2, 2, 3, 3, 3], [3, 3, 1, 1, 2, 2]]
    for kind in ("hinge", "log", "latent_hinge", "marginal_log"):
        m.zero_grad()
        k, out_lens = m(x, lens)
        loss, info = SegmentalCriterion(m, SegmentalLoss(kind, frame_targets=True))(
            k, out_lens, frames)
        assert info["num_excluded"] == 0 and torch.isfinite(loss), kind
        loss.backward()
        assert m.scorer.weight.grad is not None


def test_two_stage_modes():
    m = _model()
    x = torch.randn(2, 8, 6)
    lens = torch.tensor([8, 6])
    frames = [[1, 1, 2, 2, 2, 3, 3, 3], [3, 3, 1, 1, 2, 2]]
    # stage 1: frame cross-entropy = -sum of k at the reference labels
    k, out_lens = m(x, lens)
    loss, info = SegmentalCriterion(m, SegmentalLoss("log", frame_targets=True),
                                    frame_ce=True)(k, out_lens, frames)
    want = -sum(float(k[b, t, frames[b][t]]) for b in range(2) for t in range(len(frames[b])))
    assert float(loss) == pytest.approx(want, rel=1e-5) and info["frames"] == 14
    loss.backward()
    assert float(m.scorer.weight.grad.abs().sum()) == 0.0
    # stage 2: theta only
    m.zero_grad()
    crit = SegmentalCriterion(m, SegmentalLoss("log", frame_targets=True), freeze_encoder=True)
    k, out_lens = m(x, lens)
    crit(k, out_lens, frames)[0].backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert m.scorer.weight.grad is not None
    with pytest.raises(ValueError, match="frame labels"):
        SegmentalCriterion(m, SegmentalLoss("marginal_log"), frame_ce=True)
    with pytest.raises(ValueError, match="needs gold segmentations"):
        SegmentalLoss("hinge")


def test_registered_config_builds():
    from wfst_asr.train.config import load_config
    from wfst_asr.train.criteria import build_loss

    cfg = load_config("segmental_blstm")
    cfg.num_features, cfg.num_classes = 6, 4
    cfg.model_kwargs.update(hidden=8, num_layers=1)
    from wfst_asr.train.build import build_model_from_config

    model = build_model_from_config(cfg)
    crit = build_loss(cfg, model)
    assert isinstance(crit, SegmentalCriterion) and crit.loss.kind == "marginal_log"
    assert crit.loss.subsampling == model.subsampling_factor == 3


def _item(sym, start, dur):
    return SimpleNamespace(symbol=sym, start=start, duration=dur)


def test_frame_labels_and_runs():
    items = [_item("h#", 0.0, 0.035), _item("q", 0.035, 0.01), _item("aa", 0.045, 0.03),
             _item("b", 0.075, 0.02)]
    mapping = {"h#": "sil", "aa": "aa", "b": "b", "q": None}
    labels, dropped = frame_labels(items, 10, 0.01, mapping)
    # centres 0.005, 0.015, ...: q's frame (centre 0.035..0.045 -> frame 3) goes to h# (sil)
    assert labels == ["sil", "sil", "sil", "sil", "aa", "aa", "aa", "b", "b", "b"]
    assert dropped == 1
    assert runs([0, 0, 1, 1, 1, 2, -1, 2]) == [(0, 2, 0), (2, 5, 1), (5, 6, 2)]
    with pytest.raises(FrameLabelError):
        frame_labels([_item("q", 0.0, 0.1)], 5, 0.01, mapping)


def test_trainer_names_the_excluded_utterances():
    from wfst_asr.train.trainer import _excluded_names

    batch = {"supervisions": {"sequence_idx": torch.tensor([0, 1, 2]),
                              "cut_id": ["cutA", "cutB", "cutC"]}}
    info = {"excluded": [0, 2], "reasons": {0: "2 frames for 3 labels"}}
    assert _excluded_names(batch, info) == "cutA (2 frames for 3 labels), cutC"


def test_segment_posteriors_cover_every_frame_once():
    """Each frame of an utterance lies in exactly one segment of any path: the posteriors of
    the segments covering it sum to 1 (full and constrained lattices); posteriors of one
    segment equal brute force on a tiny case."""
    from wfst_asr.fsa.segment import segment_posteriors

    torch.manual_seed(0)
    B, T, D, L = 2, 6, 3, 2
    scores = torch.randn(B, T, D, L, dtype=torch.float64)
    lens = torch.tensor([6, 4])
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]])
    label_lens = torch.tensor([3, 2])
    for post in (segment_posteriors(scores, lens),
                 segment_posteriors(scores, lens, labels, label_lens)):
        for b in range(B):
            n = int(lens[b])
            for f in range(n):
                cover = sum(float(post[b, e, d - 1].sum()) for e in range(f, min(n, f + D))
                            for d in range(e - f + 1, min(D, e + 1) + 1))
                assert cover == pytest.approx(1.0, abs=1e-9)
            assert float(post[b, n:].abs().sum()) == 0.0

    # brute force: utterance 1 (4 frames), segment (1, 3, 0) = frames 1..2, label 0
    num = den = 0.0
    for segs in all_segmentations(4, D, L):
        w = math.exp(sum(float(scores[1, t - 1, t - s - 1, y]) for s, t, y in segs))
        den += w
        num += w if (1, 3, 0) in segs else 0.0
    assert float(segment_posteriors(scores, lens)[1, 2, 1, 0]) == pytest.approx(num / den)
