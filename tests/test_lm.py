"""Tests of wfst_asr.graphs.lm (ARPA -> G through kaldilm) and the estimate-lm / compile-lm CLI.

Reference for G: OpenFst (kaldifst) composition of a linear acceptor with G (``#0`` relabelled
to epsilon) and its shortest path, against ``ln(10) * sum of back-off log10 probabilities``
computed here from the ARPA text.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from wfst_asr.bin.cli import main
from wfst_asr.fsa import load
from wfst_asr.graphs.lm import arpa_to_fst, g_pt_path, make_token_lm
from wfst_asr.graphs.ngram import estimate_ngram

try:
    from tests.reference import parse_arpa
except ImportError:  # pragma: no cover - run from inside tests/
    from reference import parse_arpa

WORDS = ["ah", "be", "cee", "dee", "ee", "ef"]


def sentence_log10(table: dict, order: int, words: list[str], max_order: int | None = None
                   ) -> float:
    """sum of back-off log10 P(w | history) over words + </s>, histories from <s>."""
    n = max_order or order
    seq = ["<s>"] + words + ["</s>"]
    total = 0.0
    for i in range(1, len(seq)):
        hist = tuple(seq[max(0, i - n + 1):i])
        while hist + (seq[i],) not in table:
            total += table[hist][1] if hist in table else 0.0
            hist = hist[1:]
        total += table[hist + (seq[i],)][0]
    return total


def write_words_txt(path: Path, words: list[str]) -> dict[str, int]:
    """words.txt as lang.py writes it: <eps> 0, sorted words, #0, <s>, </s>."""
    syms = ["<eps>"] + sorted(words) + ["#0", "<s>", "</s>"]
    path.write_text("".join(f"{s} {i}\n" for i, s in enumerate(syms)))
    return {s: i for i, s in enumerate(syms)}


def corpus(seed: int = 0, num: int = 200) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS[:rng.randint(2, len(WORDS))]) for _ in range(rng.randint(1, 7))]
            for _ in range(num)]


def read_g(g_fst: Path) -> tuple[int, dict[int, dict[int, tuple[int, float]]], dict[int, float]]:
    """(start, {state: {ilabel: (dst, cost)}}, {state: final cost}) of an OpenFst binary G."""
    from wfst_asr import _kaldi

    g = _kaldi.kaldifst().StdVectorFst.read(str(g_fst))
    arcs: dict[int, dict[int, tuple[int, float]]] = {}
    finals: dict[int, float] = {}
    for line in g.to_str().splitlines():
        f = line.split()
        if len(f) >= 4:
            arcs.setdefault(int(f[0]), {})[int(f[2])] = (int(f[1]), float(f[4]) if len(f) > 4
                                                         else 0.0)
        elif f:
            finals[int(f[0])] = float(f[1]) if len(f) > 1 else 0.0
    return g.start, arcs, finals


def g_phi_cost(g_fst: Path, ids: list[int], disambig: int) -> float:
    """Cost of ids in G read with #0 as a failure arc (taken only when no arc matches): the
    exact back-off LM score."""
    state, arcs, finals = read_g(g_fst)
    cost = 0.0
    for w in ids + [None]:
        while (w not in arcs.get(state, {})) if w is not None else (state not in finals):
            state, c = arcs[state][disambig]
            cost += c
        if w is None:
            return cost + finals[state]
        state, c = arcs[state][w]
        cost += c
    raise AssertionError  # pragma: no cover


def g_path_cost(g_fst: Path, ids: list[int], disambig: int) -> float:
    """Tropical shortest-path cost of linear(ids) o G, with G's #0 input labels as epsilon."""
    from wfst_asr import _kaldi

    kfst = _kaldi.kaldifst()
    g = kfst.StdVectorFst.read(str(g_fst))
    lines = []
    for line in g.to_str().splitlines():
        f = line.split()
        if len(f) >= 4 and int(f[2]) == disambig:
            f[2] = "0"
        lines.append("\t".join(f))
    g0 = kfst.compile("\n".join(lines) + "\n", acceptor=False, keep_state_numbering=True)
    kfst.arcsort(g0, sort_type="ilabel")
    best = kfst.shortest_path(kfst.compose(kfst.make_linear_acceptor(ids), g0))
    assert best.num_states > 0, "no path"
    cost = 0.0
    for line in best.to_str().splitlines():
        f = line.split()
        cost += float(f[4]) if len(f) == 5 else float(f[1]) if len(f) == 2 else 0.0
    return cost


@pytest.mark.parametrize("method", ["kn", "wb"])
def test_g_scores_match_arpa(tmp_path: Path, method: str) -> None:
    arpa = tmp_path / "lm.arpa"
    estimate_ngram(corpus(), 3, method, vocab=WORDS + ["ef"]).write_arpa(arpa)
    order, table = parse_arpa(arpa.read_text())
    ids = write_words_txt(tmp_path / "words.txt", WORDS)
    out = tmp_path / "G.fst"
    g = arpa_to_fst(arpa, tmp_path / "words.txt", out)
    assert out.is_file() and g_pt_path(out) == tmp_path / "G.pt" and (tmp_path / "G.pt").is_file()
    g2 = load(tmp_path / "G.pt")
    assert torch.equal(g2.arcs, g.arcs) and torch.equal(g2.aux_labels, g.aux_labels)
    assert set(g.labels.tolist()) <= set(ids.values()) | {-1}
    assert ids["<s>"] not in g.labels.tolist() and ids["</s>"] not in g.labels.tolist()
    backoff = g.labels == ids["#0"]
    assert backoff.any() and (g.aux_labels[backoff] == 0).all()
    rng = random.Random(5)
    sents = [["ah"], ["ef", "ef", "ah"], ["dee", "cee", "be", "ah", "ee"], []]
    sents += [[rng.choice(WORDS) for _ in range(rng.randint(1, 8))] for _ in range(6)]
    for s in sents:
        expected = math.log(10) * sentence_log10(table, order, s)
        word_ids = [ids[w] for w in s]
        assert math.isclose(-g_phi_cost(out, word_ids, ids["#0"]), expected, rel_tol=1e-5,
                            abs_tol=1e-4), s
        # With #0 as epsilon, G's best path may back off early and gain later (a known property
        # of epsilon back-off G), so OpenFst's best path is at least the exact LM score.
        assert -g_path_cost(out, word_ids, ids["#0"]) >= expected - 1e-4, s
    assert not list(tmp_path.glob(".tmp-*"))


def test_max_order_and_no_out(tmp_path: Path) -> None:
    arpa = tmp_path / "lm.arpa"
    estimate_ngram(corpus(1), 3).write_arpa(arpa)
    order, table = parse_arpa(arpa.read_text())
    ids = write_words_txt(tmp_path / "words.txt", WORDS)
    g1 = arpa_to_fst(arpa, tmp_path / "words.txt", tmp_path / "G1.fst", max_order=1)
    g3 = arpa_to_fst(arpa, tmp_path / "words.txt")  # nothing written
    assert g1.num_arcs < g3.num_arcs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["G1.fst", "G1.pt", "lm.arpa",
                                                          "words.txt"]
    s = ["be", "ah", "cee"]
    expected = math.log(10) * sentence_log10(table, order, s, max_order=1)
    assert math.isclose(-g_phi_cost(tmp_path / "G1.fst", [ids[w] for w in s], ids["#0"]),
                        expected, rel_tol=1e-5)
    # a unigram G has no back-off paths to exploit: OpenFst's best path is exact
    assert math.isclose(-g_path_cost(tmp_path / "G1.fst", [ids[w] for w in s], ids["#0"]),
                        expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="max_order must be in 1..3"):
        arpa_to_fst(arpa, tmp_path / "words.txt", max_order=4)


def test_word_missing_from_words_txt(tmp_path: Path) -> None:
    arpa = tmp_path / "lm.arpa"
    estimate_ngram(corpus(2) + [["zed"]], 2).write_arpa(arpa)
    write_words_txt(tmp_path / "words.txt", WORDS)
    with pytest.raises(ValueError, match=r"lm\.arpa: 1 word\(s\) .*words\.txt: 'zed'"):
        arpa_to_fst(arpa, tmp_path / "words.txt", tmp_path / "G.fst")
    assert not (tmp_path / "G.fst").exists()
    (tmp_path / "nodis.txt").write_text("<eps> 0\n" + "".join(
        f"{w} {i}\n" for i, w in enumerate(WORDS + ["zed"], start=1)))
    with pytest.raises(ValueError, match="no disambiguation symbol '#0'"):
        arpa_to_fst(arpa, tmp_path / "nodis.txt")


def test_malformed_arpa_is_a_value_error(tmp_path: Path) -> None:
    # kaldilm would abort the whole process on this file; arpa_to_fst must raise first.
    arpa = tmp_path / "lm.arpa"
    estimate_ngram(corpus(3), 2).write_arpa(arpa)
    lines = arpa.read_text().splitlines(keepends=True)
    i = next(k for k, line in enumerate(lines) if line.startswith("\\2-grams:")) + 2
    lines[i] = "oops " + lines[i]
    arpa.write_text("".join(lines))
    write_words_txt(tmp_path / "words.txt", WORDS)
    with pytest.raises(ValueError, match=f"lm.arpa:{i + 1}: "):
        arpa_to_fst(arpa, tmp_path / "words.txt", tmp_path / "G.fst")
    arpa.write_text("".join(lines[:i]))
    with pytest.raises(ValueError, match=f"lm.arpa:{i}: truncated"):
        arpa_to_fst(arpa, tmp_path / "words.txt", tmp_path / "G.fst")


def test_make_token_lm(tmp_path: Path) -> None:
    phones = [[1, 2, 3, 2], [3, 1], [2, 2, 1, 3]]
    m = make_token_lm(phones, 2, tmp_path / "P.arpa", vocab=[1, 2, 3, 4])
    assert m.vocab == ["<s>", "</s>", "1", "2", "3", "4"]
    _, table = parse_arpa((tmp_path / "P.arpa").read_text())
    assert ("4",) in table and ("1", "2") in table and ("3", "3") not in table
    (tmp_path / "tokens.txt").write_text("<eps> 0\n1 1\n2 2\n3 3\n4 4\n#0 5\n<s> 6\n</s> 7\n")
    p = arpa_to_fst(tmp_path / "P.arpa", tmp_path / "tokens.txt")
    assert p.num_arcs > 0


def test_cli(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.write_text("".join(f"utt{i} {' '.join(s)}\n" for i, s in enumerate(corpus(4))))
    write_words_txt(tmp_path / "words.txt", WORDS)
    arpa = tmp_path / "lm.arpa"
    assert main(["estimate-lm", "--text", str(text), "--order", "2", "--method", "wb",
                 "--out", str(arpa), "--skip-first-field",
                 "--vocab", str(tmp_path / "words.txt")]) == 0
    order, table = parse_arpa(arpa.read_text())
    assert order == 2 and ("utt0",) not in table and ("ef",) in table
    assert main(["compile-lm", "--arpa", str(arpa), "--words", str(tmp_path / "words.txt"),
                 "--out", str(tmp_path / "G.fst")]) == 0
    assert (tmp_path / "G.fst").is_file() and (tmp_path / "G.pt").is_file()


def test_cli_drop_oov_sentences(tmp_path: Path, capsys) -> None:
    """--drop-oov-sentences: sentences with a word outside --vocab are left out and counted;
    the LM equals one estimated on the kept sentences alone."""
    text, kept = tmp_path / "text", tmp_path / "kept"
    text.write_text("a b\na c\nz a\nb a b\nc y\n")
    kept.write_text("a b\na c\nb a b\n")
    vocab = tmp_path / "vocab"
    vocab.write_text("a\nb\nc\n")
    argv = ["estimate-lm", "--order", "2", "--vocab", str(vocab)]
    assert main([*argv, "--text", str(text), "--drop-oov-sentences", "--out",
                 str(tmp_path / "1.arpa")]) == 0
    assert "dropped 2 sentences with words outside" in capsys.readouterr().err
    assert main([*argv, "--text", str(kept), "--out", str(tmp_path / "2.arpa")]) == 0
    assert (tmp_path / "1.arpa").read_text() == (tmp_path / "2.arpa").read_text()
    assert main(["estimate-lm", "--text", str(text), "--drop-oov-sentences", "--out",
                 str(tmp_path / "3.arpa")]) == 2  # needs --vocab
    assert main([*argv, "--text", str(text), "--out", str(tmp_path / "4.arpa")]) == 2  # z
    # an empty LM text after filtering: refused, nothing written
    (tmp_path / "none").write_text("z y\ny z\n")
    capsys.readouterr()
    assert main([*argv, "--text", str(tmp_path / "none"), "--drop-oov-sentences", "--out",
                 str(tmp_path / "5.arpa")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no sentences left: all 2 have a word outside" in err[-1]
    assert not (tmp_path / "5.arpa").exists()


def test_perplexity_srilm_convention(tmp_path: Path, capsys) -> None:
    """ppl by hand on a written bigram ARPA: an OOV is not predicted and starts a new history
    (its successor gets the back-off unigram), </s> is predicted."""
    from wfst_asr.graphs.ngram import perplexity, read_arpa

    arpa = tmp_path / "lm.arpa"
    arpa.write_text("\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t</s>\n-99\t<s>\t-0.3\n"
                    "-0.5\ta\t-0.2\n-0.6\tb\t-0.1\n\n\\2-grams:\n-0.1\t<s> a\n-0.4\ta b\n\n"
                    "\\end\\\n")
    model = read_arpa(arpa)
    # "a b </s>": P(a|<s>) P(b|a) P(</s>|b) = -0.1 - 0.4 + (-0.1 - 1.0)
    # "b z a </s>": P(b|<s>) = -0.3 - 0.6; z OOV; a (no history) -0.5; P(</s>|a) = -0.2 - 1.0
    want = (-0.1 - 0.4 - 0.1 - 1.0) + (-0.3 - 0.6 - 0.5 - 0.2 - 1.0)
    r = perplexity(model, [["a", "b"], ["b", "z", "a"]])
    assert (r.sentences, r.words, r.oovs, r.predicted) == (2, 5, 1, 6)
    assert abs(r.log10_prob - want) < 1e-9
    assert abs(r.ppl - 10 ** (-want / 6)) < 1e-9 and r.oov_rate == 0.2
    text = tmp_path / "text"
    text.write_text("u1 a b\nu2 b z a\n")
    capsys.readouterr()
    assert main(["lm-eval", "--arpa", str(arpa), "--text", str(text), "--skip-first-field"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split("\t")
    assert row[4:8] == ["2", "5", "1", "20.00%"] and float(row[8]) == round(10 ** (-want / 6), 2)
