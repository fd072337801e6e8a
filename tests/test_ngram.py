"""Tests of wfst_asr.graphs.ngram: n-gram estimation and ARPA I/O.

References: an ARPA parser and back-off evaluation written here; hand-computed Kneser-Ney and
Witten-Bell values; a dict-based re-implementation of the smoothing formulas; kaldilm.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from wfst_asr.graphs.ngram import estimate_ngram, read_arpa

try:
    from tests.reference import parse_arpa
except ImportError:  # pragma: no cover - run from inside tests/
    from reference import parse_arpa


# ------------------------------------------------------------------ independent references
def backoff_log10(table: dict, order: int, word: str, hist: tuple[str, ...]) -> float:
    """log10 P(word | hist) by the ARPA back-off rule."""
    hist = hist[len(hist) - (order - 1):] if order > 1 else ()
    if hist + (word,) in table:
        return table[hist + (word,)][0]
    bow = table[hist][1] if hist in table else 0.0
    return bow + backoff_log10(table, order, word, hist[1:])


def sum_per_history(arpa: Path) -> float:
    """Largest |sum_w P(w|h) - 1| over the empty history and every n-gram below the top."""
    order, table = parse_arpa(arpa.read_text())
    words = [k[0] for k in table if len(k) == 1 and k[0] != "<s>"]
    worst = 0.0
    for hist in [()] + [k for k in table if len(k) < order and k[-1] != "</s>"]:
        s = sum(10 ** backoff_log10(table, order, w, hist) for w in words)
        worst = max(worst, abs(s - 1.0))
    return worst


def random_corpus(seed: int, num: int = 300, vocab: int = 25) -> list[list[str]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    return [[rng.choice(words[:rng.randint(2, vocab)]) for _ in range(rng.randint(0, 10))]
            for _ in range(num)]


def reference_model(sents: list[list[str]], order: int, method: str,
                    fallback=(0.5, 1.0, 1.5)) -> dict[tuple[str, ...], tuple[float, float]]:
    """Dict-based interpolated modified KN / Witten-Bell: {ngram: (prob, backoff weight)}."""
    raw: list[Counter] = [Counter() for _ in range(order + 1)]
    for s in sents:
        toks = ["<s>"] + s + ["</s>"]
        for n in range(1, order + 1):
            for i in range(len(toks) - n + 1):
                raw[n][tuple(toks[i:i + n])] += 1
    vocab = sorted({w for s in sents for w in s} | {"</s>"})
    cnt: list[dict] = [{} for _ in range(order + 1)]
    for n in range(1, order + 1):
        if method == "wb" or n == order:
            cnt[n] = dict(raw[n])
        else:
            left = defaultdict(set)
            for g in raw[n + 1]:
                left[g[1:]].add(g[0])
            cnt[n] = {g: (c if g[0] == "<s>" else len(left[g])) for g, c in raw[n].items()}
        cnt[n].pop(("<s>",), None)
    prob: dict[tuple[str, ...], float] = {}
    bow: dict[tuple[str, ...], float] = {}
    for n in range(1, order + 1):
        disc = (0.0, 0.0, 0.0)
        if method == "kn":
            cc = Counter(cnt[n].values())
            n1, n2, n3, n4 = cc[1], cc[2], cc[3], cc[4]
            disc = fallback
            if min(n1, n2, n3, n4) > 0:
                y = n1 / (n1 + 2 * n2)
                d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
                if all(0 < d[k] <= k + 1 for k in range(3)):
                    disc = d
        by_hist = defaultdict(dict)
        for g, c in cnt[n].items():
            by_hist[g[:-1]][g[-1]] = c
        for h, ext in by_hist.items():
            total = sum(ext.values())
            if method == "kn":
                dsum = sum(disc[min(c, 3) - 1] for c in ext.values())
                gamma, denom = dsum / total, total
            else:
                gamma, denom = len(ext) / (total + len(ext)), total + len(ext)
            bow[h] = gamma
            for w, c in ext.items():
                d = disc[min(c, 3) - 1] if method == "kn" else 0.0
                lower = 1 / len(vocab) if n == 1 else prob[h[1:] + (w,)]
                prob[h + (w,)] = (c - d) / denom + gamma * lower
    return {g: (p, bow.get(g, 1.0)) for g, p in prob.items()}


# ------------------------------------------------------------------ tests
TINY = [["a", "b"], ["b"], ["a", "a", "b"]]


def test_kneser_ney_hand_computed(tmp_path: Path) -> None:
    # Bigram counts: <s> a:2, <s> b:1, a b:2, a a:1, b </s>:3. Continuation counts of the
    # unigrams: a:2 ({<s>, a}), b:2 ({a, <s>}), </s>:1 ({b}). Counts-of-counts have zeros at
    # both orders, so the fallback discounts D1, D2, D3+ = 0.5, 1, 1.5 are used.
    m = estimate_ngram(TINY, 2, "kn")
    assert m.discounts == [(0.5, 1.0, 1.5), (0.5, 1.0, 1.5)]
    gamma0 = (1.0 + 1.0 + 0.5) / 5  # sum of unigram discounts / total continuation count
    p_a = (2 - 1.0) / 5 + gamma0 / 3  # 3 predicted words: a, b, </s>
    p_eos = (1 - 0.5) / 5 + gamma0 / 3
    gamma_bos = (1.0 + 0.5) / 3
    expected = {
        ("a", ()): p_a,
        ("b", ()): p_a,
        ("</s>", ()): p_eos,
        ("a", ("<s>",)): (2 - 1.0) / 3 + gamma_bos * p_a,
        ("b", ("<s>",)): (1 - 0.5) / 3 + gamma_bos * p_a,
        ("</s>", ("<s>",)): gamma_bos * p_eos,  # backed off
        ("a", ("a",)): (1 - 0.5) / 3 + 0.5 * p_a,
        ("</s>", ("b",)): (3 - 1.5) / 3 + (1.5 / 3) * p_eos,
        ("b", ("b",)): (1.5 / 3) * p_a,  # backed off
    }
    path = tmp_path / "kn.arpa"
    m.write_arpa(path)
    order, table = parse_arpa(path.read_text())
    for (w, h), p in expected.items():
        assert math.isclose(10 ** backoff_log10(table, order, w, h), p, rel_tol=1e-5), (w, h)
        assert math.isclose(10 ** m.log10_prob(w, h), p, rel_tol=1e-12), (w, h)
    assert table[("<s>",)][0] == -99.0
    assert math.isclose(10 ** table[("<s>",)][1], gamma_bos, rel_tol=1e-6)


def test_witten_bell_hand_computed(tmp_path: Path) -> None:
    # Unigram raw counts a:3 b:3 </s>:3 (N=9, T=3); history <s>: a:2 b:1 (c=3, T=2);
    # history b: </s>:3 (c=3, T=1).
    m = estimate_ngram(TINY, 2, "wb")
    p_uni = 3 / 12 + (3 / 12) / 3
    expected = {
        ("a", ()): p_uni,
        ("a", ("<s>",)): 2 / 5 + (2 / 5) * p_uni,
        ("b", ("<s>",)): 1 / 5 + (2 / 5) * p_uni,
        ("</s>", ("<s>",)): (2 / 5) * p_uni,
        ("b", ("a",)): 2 / 5 + (2 / 5) * p_uni,
        ("</s>", ("b",)): 3 / 4 + (1 / 4) * p_uni,
        ("a", ("b",)): (1 / 4) * p_uni,
    }
    path = tmp_path / "wb.arpa"
    m.write_arpa(path)
    order, table = parse_arpa(path.read_text())
    for (w, h), p in expected.items():
        assert math.isclose(10 ** backoff_log10(table, order, w, h), p, rel_tol=1e-5), (w, h)


@pytest.mark.parametrize("method", ["kn", "wb"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_dict_reference(tmp_path: Path, method: str, order: int) -> None:
    sents = random_corpus(order * 7 + len(method))
    path = tmp_path / "lm.arpa"
    estimate_ngram(sents, order, method).write_arpa(path)
    _, table = parse_arpa(path.read_text())
    ref = reference_model(sents, order, method)
    assert set(table) == set(ref) | {("<s>",)}
    for g, (p, gamma) in ref.items():
        assert math.isclose(table[g][0], math.log10(p), rel_tol=1e-6, abs_tol=1e-6), g
        if len(g) < order and g[-1] != "</s>" and any(k[:-1] == g for k in ref):
            assert math.isclose(table[g][1], math.log10(gamma), abs_tol=1e-6), g


@pytest.mark.parametrize("method", ["kn", "wb"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_sums_to_one_and_kaldilm_loads(tmp_path: Path, method: str, order: int) -> None:
    from wfst_asr import _kaldi

    path = tmp_path / "lm.arpa"
    m = estimate_ngram(random_corpus(order + 11), order, method,
                       vocab=[f"w{i}" for i in range(30)])  # w25..w29 unseen
    m.write_arpa(path)
    assert sum_per_history(path) < 1e-4
    text = _kaldi.kaldilm().arpa2fst(str(path), "", disambig_symbol="")
    assert len(text.splitlines()) > m.counts[0]


def test_vocab_and_unk() -> None:
    m = estimate_ngram([["a", "zz"]], 2, vocab=["a", "b", "<unk>"], unk="<unk>")
    assert m.vocab == ["<s>", "</s>", "a", "b", "<unk>"]
    assert m.log10_prob("<unk>", ["a"]) > m.log10_prob("b", ["a"])
    with pytest.raises(ValueError, match="'zz' is not in vocab"):
        estimate_ngram([["a", "zz"]], 2, vocab=["a"])
    with pytest.raises(ValueError, match="reserved"):
        estimate_ngram([["a", "</s>"]], 2)
    with pytest.raises(TypeError, match="str"):
        estimate_ngram(["a b"], 2)


def test_read_arpa_roundtrip(tmp_path: Path) -> None:
    m = estimate_ngram(random_corpus(3), 3)
    path = tmp_path / "lm.arpa"
    m.write_arpa(path)
    r = read_arpa(path)
    assert r.counts == m.counts and r.vocab == m.vocab
    for a, b in zip(r.log10_probs, m.log10_probs):
        assert max(abs(a - b)) < 1e-5
    sent = ["w1", "w3", "w2", "w9"]
    assert math.isclose(r.sentence_log10_prob(sent), m.sentence_log10_prob(sent), abs_tol=1e-5)
    assert not list(tmp_path.glob(".tmp-*"))


GOOD = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.5
-0.5\ta\t-0.3
-0.7\tb

\\2-grams:
-0.2\t<s> a
-0.3\ta b

\\end\\
"""


@pytest.mark.parametrize("old,new,line,what", [
    ("-0.3\ta b", "xx\ta b", 13, "invalid log10 probability 'xx'"),
    ("-0.3\ta b", "-0.3\ta c", 13, "'c' has no unigram"),
    ("-0.3\ta b", "-0.3\ta b\t-0.1", 13, "expected 'log10prob w1 w2'"),
    ("-0.3\ta b", "-0.3\t<s> a", 13, "duplicate 2-gram"),
    ("ngram 2=2", "ngram 2=3", 14, "truncated \\\\2-grams: section: 2 entries"),
    ("ngram 2=2", "ngram 2=1", 13, "expected \\\\end\\\\"),
    ("ngram 2=2", "ngram 3=2", 3, "expected 'ngram 2=...'"),
    ("\\data\\", "data", 15, "no \\\\data\\\\ line"),
    ("\\2-grams:", "\\3-grams:", 11, "expected \\\\2-grams:"),
    ("-0.7\tb", "0.5\tb", 9, "> 0"),
    ("\\end\\", "\\end\\\nmore", 16, "unexpected text after"),
])
def test_read_arpa_malformed(tmp_path: Path, old: str, new: str, line: int, what: str) -> None:
    path = tmp_path / "bad.arpa"
    assert old in GOOD
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ValueError, match=f"bad.arpa:{line}: .*{what}"):
        read_arpa(path)


@pytest.mark.parametrize("cut", [3, 8, 12, 14])
def test_read_arpa_truncated(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.arpa"
    path.write_text("".join(GOOD.splitlines(keepends=True)[:cut]))
    with pytest.raises(ValueError, match=f"cut.arpa:{cut}: truncated"):
        read_arpa(path)
    assert read_arpa_ok(tmp_path)


def read_arpa_ok(tmp_path: Path) -> bool:
    path = tmp_path / "good.arpa"
    path.write_text(GOOD)
    m = read_arpa(path)
    return m.counts == [4, 2] and math.isclose(m.log10_prob("b", ["<s>"]), -0.5 - 0.7)
