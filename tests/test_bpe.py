"""Word-piece lang dirs (wfst_asr.graphs.bpe; `wfst-asr train-bpe`, `lexicon --bpe-model`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wfst_asr.bin.cli import main
from wfst_asr.graphs.bpe import (
    WORD_BOUNDARY,
    bpe_lexicon,
    is_piece_table,
    load_bpe,
    pieces_to_words,
    train_bpe,
)
from wfst_asr.graphs.lang import read_lexicon

TEXT = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog",
        "cats and dogs sat together", "the mat and the log"] * 20


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bpe")
    (d / "text").write_text("".join(f"{x}\n" for x in TEXT))
    return train_bpe([d / "text"], d / "lang", vocab_size=20)


def test_pieces_to_words() -> None:
    b = WORD_BOUNDARY
    assert pieces_to_words([f"{b}the", f"{b}ca", "t", f"{b}", "s"]) == ["the", "cat", "s"]
    assert pieces_to_words(["at", f"{b}x"]) == ["at", "x"]  # starts mid-word
    assert pieces_to_words([]) == []
    assert is_piece_table(["<blk>", f"{b}a", "b"]) and not is_piece_table(["AA", "B"])


def test_lexicon_spells_every_word(model: Path) -> None:
    sp = load_bpe(model)
    assert sp.get_piece_size() == 20
    words = sorted({w for x in TEXT for w in x.split()}) + ["tag", "zebra"]  # unseen letters
    entries = bpe_lexicon(words, model)
    assert [w for w, _, _ in entries] == words
    for w, prob, pieces in entries:
        assert prob is None and pieces and pieces[0].startswith(WORD_BOUNDARY)
        if set(w) <= set("".join(TEXT)):
            assert pieces_to_words(pieces) == [w], (w, pieces)
    # the sentence's pieces (sentencepiece's own encoding) read back as its words
    for x in TEXT[:5]:
        assert pieces_to_words(sp.encode(x, out_type=str)) == x.split()


def test_cli_lang_dir(tmp_path: Path, capsys) -> None:
    text = tmp_path / "text"
    text.write_text("".join(f"u{i} {x}\n" for i, x in enumerate(TEXT)))
    lang = tmp_path / "lang_bpe"
    assert main(["train-bpe", "--text", str(text), "--utt-ids", "--vocab-size", "20",
                 "--out-dir", str(lang)]) == 0
    assert main(["lexicon", "--text", str(text), "--utt-ids", "--bpe-model",
                 str(lang / "bpe.model"), "--out", str(lang / "lexicon.txt")]) == 0
    assert main(["compile-lang", "--lang-dir", str(lang), "--lexicon",
                 str(lang / "lexicon.txt")]) == 0
    lex = read_lexicon(lang / "lexicon.txt")
    assert sorted(w for w, _, _ in lex) == sorted({w for x in TEXT for w in x.split()})
    tokens = [ln.split()[0] for ln in (lang / "tokens.txt").read_text().splitlines()]
    assert tokens[0] == "<blk>" and is_piece_table(tokens)
    assert {p for _, _, ps in lex for p in ps} <= set(tokens)
    assert not list(lang.glob(".tmp-*"))


@pytest.mark.parametrize("case", ["vocab-too-large", "empty-text", "not-a-model"])
def test_cli_bad_input(tmp_path: Path, capsys, case: str) -> None:
    text = tmp_path / "text"
    text.write_text("" if case == "empty-text" else "a b c\n")
    if case == "not-a-model":
        (tmp_path / "bpe.model").write_bytes(b"garbage")
        argv = ["lexicon", "--text", str(text), "--bpe-model", str(tmp_path / "bpe.model"),
                "--out", str(tmp_path / "out" / "lexicon.txt")]
        name = str(tmp_path / "bpe.model")
    else:
        argv = ["train-bpe", "--text", str(text), "--vocab-size", "500", "--out-dir",
                str(tmp_path / "out")]
        name = str(text)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wfst-asr {argv[0]}: error: "), err
    assert name in err[0]
    assert not (tmp_path / "out" / "bpe.model").exists()
    assert not (tmp_path / "out" / "lexicon.txt").exists()
