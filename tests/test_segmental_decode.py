"""Segmental decoding with a label bigram (wfst_asr.decode.segmental) against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from reference import all_segmentations

from wfst_asr.decode.segmental import best_segmentation_lm, bigram_matrix
from wfst_asr.fsa.segment import best_segmentation
from wfst_asr.graphs.ngram import estimate_ngram


@pytest.mark.parametrize("seed", range(4))
def test_best_segmentation_lm_equals_brute_force(seed):
    torch.manual_seed(seed)
    labels = ["a", "b", "c"]
    lm = estimate_ngram([["a", "b", "a"], ["c", "a"], ["b", "b", "c", "a"]], 2)
    big = bigram_matrix(lm, labels)
    B, T, D, L = 2, 6, 3, len(labels)
    scores = torch.randn(B, T, D, L, dtype=torch.float64)
    lens = torch.tensor([6, 4])
    for lm_scale, pen in ((0.7, 0.3), (2.0, -0.5)):
        got = best_segmentation_lm(scores, lens, big, lm_scale, pen)
        for b in range(B):
            n = int(lens[b])

            def total(segs, b=b, lm_scale=lm_scale, pen=pen):
                am = sum(float(scores[b, t - 1, t - s - 1, y]) for s, t, y in segs)
                words = [labels[y] for *_, y in segs]
                lp = lm.sentence_log10_prob(words) * math.log(10.0)
                return am + lm_scale * lp - pen * len(segs)

            want = list(max(all_segmentations(n, D, L), key=total))
            assert got[b] == want
            assert total(got[b]) == pytest.approx(total(want))


def test_bigram_matrix_and_zero_scale_is_plain_best_path():
    labels = ["a", "b"]
    lm = estimate_ngram([["a", "b"], ["b"]], 2)
    big = bigram_matrix(lm, labels)
    assert big.shape == (3, 3)
    assert float(big[2, 0]) == pytest.approx(lm.log10_prob("a", ("<s>",)) * math.log(10))
    assert float(big[1, 2]) == pytest.approx(lm.log10_prob("</s>", ("b",)) * math.log(10))
    torch.manual_seed(0)
    scores = torch.randn(2, 7, 3, 2, dtype=torch.float64)
    lens = torch.tensor([7, 5])
    assert best_segmentation_lm(scores, lens, big, 0.0, 0.0) == best_segmentation(scores, lens)
