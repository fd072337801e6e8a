"""The G2P system (wfst_asr/g2p, ``wfst-asr train-g2p`` / ``g2p``) on tiny CMUdict lexicons.

* the EM alignment's log-likelihood never decreases;
* the WFST's exact n-best equals brute force: every segmentation of the word into joint tokens
  scored with the n-gram's own back-off arithmetic (:meth:`NgramModel.sentence_log10_prob`),
  max over segmentations per phone sequence, sorted (``accumulate``: between that max and
  the log-sum);
* a trained word comes back at rank 1, through the API and the CLI;
* bad input through the CLI: one line naming file and line, exit 2, nothing written; words
  with letters outside the model's alphabet are reported and skipped.
"""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest

from wfst_asr.bin import cli
from wfst_asr.g2p.align import AlignConfig, align_lexicon
from wfst_asr.g2p.model import (
    G2PModel,
    TrainConfig,
    joint_token,
    parse_joint_token,
    staged_dir,
    write_model_dir,
)
from wfst_asr.graphs.lexicon import cmudict_lexicon
from wfst_asr.graphs.ngram import read_arpa

WORDS = ["cat", "cats", "hat", "hats", "bat", "bath", "math", "phone", "phones", "photo",
         "graph", "that", "the", "this", "thin", "think", "sing", "sang", "song", "ring",
         "rang", "bring", "thing", "shin", "ship", "chip", "chap"]


def _entries(words=WORDS) -> list[tuple[str, list[str]]]:
    return [(w, p) for w, _, p in cmudict_lexicon(words)]


@pytest.fixture(scope="module", name="model_dir")
def model_dir_fixture(tmp_path_factory):
    out = tmp_path_factory.mktemp("g2p") / "model"
    write_model_dir(_entries(), out, TrainConfig(order=3, align=AlignConfig(iters=6)))
    return out


# ---------------------------------------------------------------------- (a) EM
@pytest.mark.parametrize("restrict", [True, False])
def test_em_log_likelihood_never_decreases(restrict):
    entries = [(list(w), p) for w, p in _entries()]
    al = align_lexicon(entries, AlignConfig(iters=8, restrict=restrict))
    lls = al.log_likelihoods
    assert len(lls) == 8 and all(math.isfinite(x) for x in lls)
    for a, b in itertools.pairwise(lls):
        assert b >= a - 1e-9 * abs(a), lls
    assert lls[-1] > lls[0]
    # every entry aligned, and its units spell it exactly
    for (letters, phones), units in zip(entries, al.units):
        assert units is not None
        assert [c for g, _ in units for c in g] == letters
        assert [p for _, ps in units for p in ps] == list(phones)
        assert all(1 <= len(g) <= 2 and len(ps) <= 2 for g, ps in units)
        if restrict:
            assert not any(len(g) > 1 and len(ps) > 1 for g, ps in units)


def test_unalignable_entry_is_left_out():
    """More phones than 2 per letter: no alignment, the others still align."""
    al = align_lexicon([(list("ab"), ["A", "B"]), (list("x"), ["K", "S", "Z"])],
                       AlignConfig(iters=2))
    assert al.units[0] is not None and al.units[1] is None and al.num_unaligned == 1


def test_joint_token_spelling():
    assert joint_token(("p", "h"), ("F",)) == "p|h}F"
    assert joint_token(("e",), ()) == "e}_"
    assert parse_joint_token("x}K|S") == (("x",), ("K", "S"))


# ---------------------------------------------------------------------- (b) brute force
def _brute_force(model_dir, word: str, n: int) -> list[tuple[tuple[str, ...], float]]:
    """Every segmentation x every token choice, scored with the ARPA model directly."""
    lm = read_arpa(model_dir / "model.arpa")
    by_letters: dict[tuple[str, ...], list[str]] = {}
    for tok in lm.vocab:
        if tok not in ("<s>", "</s>"):
            by_letters.setdefault(parse_joint_token(tok)[0], []).append(tok)
    best: dict[tuple[str, ...], float] = {}
    total: dict[tuple[str, ...], float] = {}

    def walk(pos: int, seq: list[str]) -> None:
        if pos == len(word):
            phones = tuple(p for t in seq for p in parse_joint_token(t)[1])
            score = math.log(10.0) * lm.sentence_log10_prob(seq)
            best[phones] = max(best.get(phones, -math.inf), score)
            total[phones] = float(np.logaddexp(total.get(phones, -math.inf), score))
            return
        for a in (1, 2):
            for tok in by_letters.get(tuple(word[pos:pos + a]), []) if pos + a <= len(word) \
                    else []:
                walk(pos + a, seq + [tok])

    walk(0, [])
    return sorted(best.items(), key=lambda kv: -kv[1])[:n], best, total


@pytest.mark.parametrize("method", ["kn", "wb"])
def test_nbest_equals_brute_force(tmp_path, method):
    out = tmp_path / "m"
    model = write_model_dir(_entries(WORDS[:14]), out,
                            TrainConfig(order=3, method=method, align=AlignConfig(iters=4)))
    words = ["cat", "hats", "phat", "thin", "graph", "tact"]
    n = 8
    got = model.predict(words, nbest=n, beam=math.inf, max_active=None)
    for word, hyps in zip(words, got):
        want, scores, _ = _brute_force(out, word, n)
        assert len(hyps) == len(want), word
        assert len({tuple(p) for p, _ in hyps}) == len(hyps)
        for (phones, score), (_, want_score) in zip(hyps, want):
            assert score == pytest.approx(want_score, abs=1e-3), (word, phones)
            # the sequence itself (ties may come in either order): its brute-force score
            assert scores[tuple(phones)] == pytest.approx(score, abs=1e-3), (word, phones)


def test_accumulate_sums_paths(model_dir):
    """``accumulate``: a pronunciation's score is the log-sum of the paths kept, so between its
    best path and the sum over all its paths (brute force)."""
    model = G2PModel.load(model_dir)
    added = 0
    for word in ["that", "bath"]:
        viterbi = {tuple(p): s for p, s in
                   model.predict([word], nbest=5, beam=math.inf, max_active=None)[0]}
        summed = model.predict([word], nbest=5, beam=math.inf, max_active=None,
                               accumulate=True)[0]
        _, best, total = _brute_force(model_dir, word, 5)
        assert [s for _, s in summed] == sorted((s for _, s in summed), reverse=True)
        for phones, score in summed:
            assert best[tuple(phones)] - 1e-3 <= score <= total[tuple(phones)] + 1e-3
            if tuple(phones) in viterbi:
                assert score >= viterbi[tuple(phones)] - 1e-6
            added += score > best[tuple(phones)] + 1e-3
    assert added  # "bath": some pronunciations have several paths


def test_pruned_search_keeps_the_best(model_dir):
    model = G2PModel.load(model_dir)
    words = ["bath", "shin", "chap", "rings"]
    exact = model.predict(words, nbest=1, beam=math.inf, max_active=None)
    pruned = model.predict(words, nbest=1)
    assert [h[0][0] for h in exact] == [h[0][0] for h in pruned]


# ---------------------------------------------------------------------- (c) rank 1
def test_trained_word_at_rank_1(model_dir):
    model = G2PModel.load(model_dir)
    words = ["phone", "think", "PHONE"]
    got = model.predict(words, nbest=3)
    ref = {w: [tuple(p) for p in prons] for w, prons in
           [(w, [p for ww, p in _entries() if ww == w.lower()]) for w in words]}
    for w, hyps in zip(words, got):
        assert tuple(hyps[0][0]) in ref[w], (w, hyps)
        assert [s for _, s in hyps] == sorted((s for _, s in hyps), reverse=True)


def test_cli_train_and_g2p(tmp_path, capsys):
    lex = tmp_path / "lexicon.txt"
    lex.write_text("".join(f"{w} {' '.join(p)}\n" for w, p in _entries()), encoding="utf-8")
    out = tmp_path / "model"
    rc = cli.main(["-q", "train-g2p", "--lexicon", str(lex), "--out-dir", str(out),
                   "--order", "3", "--iters", "5", "--held-out-fraction", "0.1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "%WER" in printed and "%PER" in printed
    meta = json.loads((out / "meta.json").read_text())
    ev = json.loads((out / "eval.json").read_text())
    assert meta["order"] == 3 and ev["num_words"] == round(0.1 * len(set(WORDS)))
    assert {p.name for p in out.iterdir()} >= {"model.arpa", "joint.txt", "letters.txt",
                                               "phones.txt", "g2p.pt", "meta.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # g2p: a training word at rank 1 (train on everything this time)
    rc = cli.main(["-q", "train-g2p", "--lexicon", str(lex), "--out-dir", str(out),
                   "--order", "3", "--iters", "5"])
    assert rc == 0 and not (out / "eval.json").exists()  # the old directory was replaced
    words = tmp_path / "words.txt"
    words.write_text("phone\nSing\n\ncat\n", encoding="utf-8")
    lexout = tmp_path / "out.txt"
    assert cli.main(["g2p", "--model-dir", str(out), "--words", str(words),
                     "--out", str(lexout), "--nbest", "2"]) == 0
    lines = lexout.read_text().splitlines()
    firsts = {}
    for line in lines:
        w, *p = line.split()
        firsts.setdefault(w, p)
    assert list(firsts) == ["phone", "Sing", "cat"]
    assert firsts["phone"] == ["F", "OW", "N"] and firsts["Sing"] == ["S", "IH", "NG"]
    assert len(lines) == 6


# ---------------------------------------------------------------------- (d), (e) bad input
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("content,line,needle", [
    (b"cat K AE T\nbat B AE T\nba\xfft B AE T\n", 3, "not valid UTF-8"),
    (b"cat K AE T\nbat\nhat HH AE T\n", 2, "empty pronunciation"),
    (b"cat K AE T\n\nb|at B AE T\n", 3, "reserves"),
])
def test_cli_bad_lexicon(tmp_path, capsys, content, line, needle):
    lex = tmp_path / "lexicon.txt"
    lex.write_bytes(content)
    out = tmp_path / "model"
    assert cli.main(["train-g2p", "--lexicon", str(lex), "--out-dir", str(out)]) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"wfst-asr train-g2p: error: {lex}:{line}: ") and needle in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lexicon.txt"]  # nothing written


def test_cli_failed_retrain_keeps_the_old_model(tmp_path, capsys, model_dir):
    lex = tmp_path / "lexicon.txt"
    lex.write_bytes(b"cat\n")
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    assert cli.main(["train-g2p", "--lexicon", str(lex), "--out-dir", str(model_dir)]) == 2
    assert f"{lex}:1: empty pronunciation" in _one_error_line(capsys)
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_cli_refuses_to_replace_a_foreign_folder(tmp_path, capsys):
    lex = tmp_path / "lexicon.txt"
    lex.write_text("cat K AE T\n", encoding="utf-8")
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert cli.main(["train-g2p", "--lexicon", str(lex), "--out-dir", str(folder)]) == 2
    assert "not a G2P model directory" in _one_error_line(capsys)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_cli_g2p_skips_unknown_letters(tmp_path, capsys, model_dir):
    words = tmp_path / "words.txt"
    words.write_text("cat\ncaté\nx9\nthat\nq-tip\n", encoding="utf-8")
    out = tmp_path / "lex.txt"
    assert cli.main(["g2p", "--model-dir", str(model_dir), "--words", str(words),
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 word(s)" in err and "'caté'" in err and "'x9'" in err and "'q-tip'" in err
    assert [line.split()[0] for line in out.read_text().splitlines()] == ["cat", "that"]


def test_cli_g2p_bad_input_writes_nothing(tmp_path, capsys, model_dir):
    words = tmp_path / "words.txt"
    words.write_bytes(b"cat\nb\xffd\n")
    out = tmp_path / "lex.txt"
    assert cli.main(["g2p", "--model-dir", str(model_dir), "--words", str(words),
                     "--out", str(out)]) == 2
    assert f"{words}:2: not valid UTF-8" in _one_error_line(capsys)
    assert not out.exists()
    # a folder that is not a model
    words.write_text("cat\n", encoding="utf-8")
    assert cli.main(["g2p", "--model-dir", str(tmp_path), "--words", str(words),
                     "--out", str(out)]) == 2
    assert "meta.json" in _one_error_line(capsys)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["words.txt"]


def test_staged_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(RuntimeError), staged_dir(out) as stage:
        (stage / "x").write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
