"""Tests of wfst_asr.graphs.ngram_prune: relative-entropy (Stolcke) pruning of back-off LMs.

References: Stolcke's D computed by brute force here (full distributions P(.|h) over the
vocabulary before and after removing one n-gram, the back-off weight renormalised by an
explicit sum, P(h) by the chain rule); explicit normalisation sums; kaldilm as an independent
ARPA reader and G compiler.
"""

from __future__ import annotations

import math
import random
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from wfst_asr.bin.cli import main
from wfst_asr.graphs.ngram import BOS, EOS, NgramModel, estimate_ngram, read_arpa
from wfst_asr.graphs.ngram_prune import prune_ngram, pruning_deltas, recompute_backoffs

try:
    from tests.test_lm import g_phi_cost, write_words_txt
    from tests.test_ngram import random_corpus
except ImportError:  # pragma: no cover - run from inside tests/
    from test_lm import g_phi_cost, write_words_txt
    from test_ngram import random_corpus

Table = dict[tuple[str, ...], tuple[float, float]]


# ------------------------------------------------------------------ independent references
def as_table(m: NgramModel) -> Table:
    """{n-gram words: (log10 prob, log10 back-off weight, 0 where none)}."""
    table: Table = {}
    for ids, probs, bows in zip(m.ngrams, m.log10_probs, m.backoffs):
        for row, p, b in zip(ids.tolist(), probs.tolist(), bows.tolist()):
            table[tuple(m.vocab[i] for i in row)] = (p, 0.0 if math.isnan(b) else b)
    return table


def prob(table: Table, word: str, hist: tuple[str, ...]) -> float:
    """P(word | hist) by the ARPA back-off rule (hist no longer than the order - 1)."""
    if hist + (word,) in table:
        return 10 ** table[hist + (word,)][0]
    bow = 10 ** table[hist][1] if hist in table else 1.0
    return bow * prob(table, word, hist[1:])


def brute_force_delta(table: Table, predicted: list[str], ngram: tuple[str, ...]) -> float:
    """Stolcke's D of removing ``ngram`` alone: -P(h) sum_v P(v|h) ln(P'(v|h) / P(v|h))."""
    h, w = ngram[:-1], ngram[-1]
    before = {v: prob(table, v, h) for v in predicted}
    kept = {v for v in predicted if h + (v,) in table and v != w}
    lower = {v: prob(table, v, h[1:]) for v in predicted}
    bow = (1 - sum(before[v] for v in kept)) / sum(lower[v] for v in predicted if v not in kept)
    after = {v: before[v] if v in kept else bow * lower[v] for v in predicted}
    assert math.isclose(sum(after.values()), 1.0, abs_tol=1e-9)
    p_h = math.prod(1.0 if i == 0 and h[0] == BOS else prob(table, h[i], h[:i])
                    for i in range(len(h)))
    return -p_h * sum(before[v] * math.log(after[v] / before[v]) for v in predicted)


def worst_sum_error(m: NgramModel, histories: list[tuple[str, ...]]) -> float:
    """max |sum_v P(v|h) - 1| over ``histories`` and the empty one (back-off via the model)."""
    predicted = [w for w in m.vocab if w != BOS]
    table = as_table(m)
    return max(abs(sum(prob(table, v, h[len(h) - m.order + 1:] if m.order > 1 else ())
                       for v in predicted) - 1.0)
               for h in [()] + histories)


def all_histories(m: NgramModel) -> list[tuple[str, ...]]:
    """Every n-gram of order < N not ending in </s> (as a history)."""
    return [tuple(m.vocab[i] for i in row) for ids in m.ngrams[:-1] for row in ids.tolist()
            if m.vocab[row[-1]] != EOS]


def ngram_set(m: NgramModel, n: int) -> set[tuple[int, ...]]:
    return {tuple(r) for r in m.ngrams[n - 1].tolist()}


def markov_corpus(seed: int, num: int, vocab: int = 30) -> list[list[str]]:
    """Sentences from a random second-order Markov source (so that trigrams help)."""
    rng = random.Random(seed)
    src = random.Random(1234)  # the same source for every seed
    words = [f"w{i}" for i in range(vocab)]
    succ = {(a, b): src.sample(words, 4) for a in words + ["<s>"] for b in words + ["<s>"]}
    out = []
    for _ in range(num):
        a, b, sent = "<s>", "<s>", []
        while len(sent) < 12 and (len(sent) < 2 or rng.random() > 0.15):
            c = rng.choice(succ[(a, b)]) if rng.random() < 0.9 else rng.choice(words)
            sent.append(c)
            a, b = b, c
        out.append(sent)
    return out


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("method", ["kn", "wb"])
def test_deltas_match_brute_force(method: str) -> None:
    m = estimate_ngram(random_corpus(7, num=40, vocab=8), 3, method,
                       vocab=[f"w{i}" for i in range(10)])  # w8, w9 unseen
    table = as_table(m)
    predicted = [w for w in m.vocab if w != BOS]
    deltas = pruning_deltas(m)
    assert np.isnan(deltas[0]).all()
    checked = 0
    for n in (2, 3):
        for row, d in zip(m.ngrams[n - 1].tolist(), deltas[n - 1].tolist()):
            ref = brute_force_delta(table, predicted, tuple(m.vocab[i] for i in row))
            assert math.isclose(d, ref, rel_tol=1e-6, abs_tol=1e-13), (row, d, ref)
            checked += 1
    assert checked == m.counts[1] + m.counts[2] > 100
    assert all((d >= -1e-15).all() for d in deltas[1:])
    d3 = pruning_deltas(m, min_order=3)
    assert np.isnan(d3[1]).all() and np.allclose(d3[2], deltas[2], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["kn", "wb"])
def test_pruned_model_is_normalised_and_well_formed(tmp_path: Path, method: str) -> None:
    m = estimate_ngram(random_corpus(3), 3, method, vocab=[f"w{i}" for i in range(28)])
    deltas = pruning_deltas(m)
    threshold = float(np.median(deltas[2]))
    p = prune_ngram(m, threshold)
    assert 0 < p.counts[2] < m.counts[2] and 0 < p.counts[1] < m.counts[1]
    assert p.counts[0] == m.counts[0] and p.vocab == m.vocab
    assert worst_sum_error(p, all_histories(m)) < 1e-9
    # kept: exactly D >= threshold, plus the contexts of kept trigrams; probabilities unchanged
    kept3, kept2 = ngram_set(p, 3), ngram_set(p, 2)
    assert kept3 == {tuple(r) for r, d in zip(m.ngrams[2].tolist(), deltas[2]) if d >= threshold}
    contexts = {r[:2] for r in kept3}
    assert contexts <= kept2
    assert kept2 == contexts | {tuple(r) for r, d in zip(m.ngrams[1].tolist(), deltas[1])
                                if d >= threshold}
    orig, new = as_table(m), as_table(p)
    assert all(new[g][0] == orig[g][0] for g in new)
    # a trigram whose suffix bigram was pruned (allowed) is in this test's model
    assert any(g[1:] not in new for g in new if len(g) == 3)
    # the ARPA file: read back by read_arpa and by kaldilm; normalised to the 7 digits written
    path = tmp_path / "pruned.arpa"
    p.write_arpa(path)
    back = read_arpa(path)
    assert back.counts == p.counts
    assert worst_sum_error(back, all_histories(m)) < 2e-6
    from wfst_asr import _kaldi

    text = _kaldi.kaldilm().arpa2fst(str(path), "", disambig_symbol="")
    assert len(text.splitlines()) > p.counts[0]


def test_g_of_pruned_model_scores_like_the_model(tmp_path: Path) -> None:
    """kaldilm's G (back-off arcs read as failure arcs) gives the pruned model's scores, also
    through the trigrams whose suffix bigram was pruned."""
    from wfst_asr.graphs.lm import arpa_to_fst

    words = [f"w{i}" for i in range(12)]
    m = estimate_ngram(markov_corpus(1, 300, vocab=12), 3, vocab=words)
    p = prune_ngram(m, 2e-3)
    assert 0 < p.counts[2] < m.counts[2]
    arpa = tmp_path / "lm.arpa"
    p.write_arpa(arpa)
    ids = write_words_txt(tmp_path / "words.txt", words)
    arpa_to_fst(arpa, tmp_path / "words.txt", tmp_path / "G.fst")
    for s in markov_corpus(2, 20, vocab=12):
        expected = math.log(10) * read_arpa(arpa).sentence_log10_prob(s)
        got = -g_phi_cost(tmp_path / "G.fst", [ids[w] for w in s], ids["#0"])
        assert math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-4), s


def test_threshold_extremes_and_min_order() -> None:
    m = estimate_ngram(random_corpus(5), 3)
    same = prune_ngram(m, 0.0)
    assert same.counts == m.counts
    for a, b in zip(same.log10_probs + same.backoffs, m.log10_probs + m.backoffs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    only_unigrams = prune_ngram(m, 1e9)
    assert only_unigrams.counts == [m.counts[0], 0, 0]
    assert np.isnan(only_unigrams.backoffs[0]).all()  # no successors: no back-off weights
    assert worst_sum_error(only_unigrams, all_histories(m)) < 1e-12
    bigrams_kept = prune_ngram(m, 1e9, min_order=3)
    assert bigrams_kept.counts == [m.counts[0], m.counts[1], 0]
    assert worst_sum_error(bigrams_kept, all_histories(m)) < 1e-9
    # the higher the threshold, the fewer n-grams, each set inside the previous one
    prev = m
    for t in (1e-5, 1e-4, 1e-3, 1e-2):
        p = prune_ngram(m, t)
        assert all(ngram_set(p, n) <= ngram_set(prev, n) for n in (2, 3))
        prev = p
    assert prev.counts[2] < m.counts[2]
    unigrams = estimate_ngram(random_corpus(5), 1)
    assert prune_ngram(unigrams, 1e9).counts == unigrams.counts


def test_heldout_perplexity_rises_with_threshold() -> None:
    """Held-out perplexity goes up with the threshold (a sanity property, not a theorem: a
    light pruning may lower it a little; here 10.2659 -> 10.2651 at 1e-6, so 0.1% slack)."""
    words = [f"w{i}" for i in range(30)]
    train, heldout = markov_corpus(10, 1500), markov_corpus(11, 200)
    m = estimate_ngram(train, 3, vocab=words)
    tokens = sum(len(s) + 1 for s in heldout)
    ppls, counts = [], []
    for t in (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e9):
        p = prune_ngram(m, t)
        log10 = sum(p.sentence_log10_prob(s) for s in heldout)
        ppls.append(10 ** (-log10 / tokens))
        counts.append(sum(p.counts))
    assert all(b >= a * (1 - 1e-3) for a, b in pairwise(ppls)), ppls
    assert all(b <= a for a, b in pairwise(counts)) and counts[-1] < counts[0]
    assert ppls[-1] > 1.5 * ppls[0]


def test_pruning_a_model_read_from_arpa(tmp_path: Path) -> None:
    m = estimate_ngram(random_corpus(9), 3)
    path = tmp_path / "lm.arpa"
    m.write_arpa(path)
    r = read_arpa(path)
    for a, b in zip(pruning_deltas(r)[1:], pruning_deltas(m)[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
    # recomputed from the 7-digit probabilities: every history sums exactly as the unigrams
    # (whose rounding no weight can fix), better than the file's own weights
    again = recompute_backoffs(r)
    unigram_error = worst_sum_error(r, [])
    assert worst_sum_error(r, all_histories(m)) > 2 * unigram_error
    assert abs(worst_sum_error(again, all_histories(m)) - unigram_error) < 1e-12
    for a, b in zip(again.backoffs, m.backoffs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_bad_arguments_and_models() -> None:
    m = estimate_ngram(random_corpus(1), 2)
    for bad in (-1e-9, math.nan, math.inf):
        with pytest.raises(ValueError, match="threshold"):
            prune_ngram(m, bad)
    with pytest.raises(ValueError, match="min_order"):
        prune_ngram(m, 1e-7, min_order=1)
    # a trigram whose context bigram is absent
    broken = NgramModel(vocab=m.vocab, ngrams=[m.ngrams[0], np.zeros((0, 2), np.int32),
                                               np.array([[2, 3, 4]], np.int32)],
                        log10_probs=[m.log10_probs[0], np.zeros(0), np.array([-1.0])],
                        backoffs=[m.backoffs[0], np.zeros(0), np.full(1, np.nan)])
    with pytest.raises(ValueError, match="no 2-gram context"):
        prune_ngram(broken, 1e-7)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "text"
    text.write_text("".join(" ".join(s) + "\n" for s in random_corpus(4)))
    full, pruned, again = tmp_path / "full.arpa", tmp_path / "pruned.arpa", tmp_path / "a.arpa"
    assert main(["estimate-lm", "--text", str(text), "--out", str(full)]) == 0
    assert main(["estimate-lm", "--text", str(text), "--out", str(pruned),
                 "--prune", "1e-3"]) == 0
    err = capsys.readouterr().err
    assert "pruned" in err and "threshold 0.001" in err
    assert main(["prune-lm", "--arpa", str(full), "--threshold", "1e-3",
                 "--out", str(again)]) == 0
    assert "threshold 0.001" in capsys.readouterr().err
    a, b, c = read_arpa(full), read_arpa(pruned), read_arpa(again)
    assert b.counts == c.counts and sum(b.counts) < sum(a.counts)
    assert main(["prune-lm", "--arpa", str(full), "--threshold", "-1",
                 "--out", str(tmp_path / "x.arpa")]) == 2
    assert "threshold" in capsys.readouterr().err
    assert not (tmp_path / "x.arpa").exists() and not list(tmp_path.glob(".tmp-*"))


def test_history_whose_successors_cover_the_vocabulary() -> None:
    """No back-off mass left (num = den = 0): weight 1; removing any one successor loses
    nothing (the freed mass goes back to it alone), so D = 0 up to rounding."""
    lg = math.log10
    m = NgramModel(vocab=[BOS, EOS, "a"],
                   ngrams=[np.array([[0], [1], [2]], np.int32),
                           np.array([[0, 1], [0, 2], [2, 1], [2, 2]], np.int32)],
                   log10_probs=[np.array([-99.0, lg(0.4), lg(0.6)]),
                                np.array([lg(0.3), lg(0.7), lg(0.4), lg(0.6)])],
                   backoffs=[np.array([0.0, np.nan, 0.0]), np.full(4, np.nan)])
    again = recompute_backoffs(m)
    np.testing.assert_array_equal(again.backoffs[0], [0.0, np.nan, 0.0])
    deltas = pruning_deltas(m)[1]
    assert np.isfinite(deltas).all() and abs(deltas).max() < 1e-11
    p = prune_ngram(m, 1e-9)
    assert p.counts == [3, 0] and worst_sum_error(p, [(BOS,), ("a",)]) < 1e-12
