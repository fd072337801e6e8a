"""``wfst-asr spell``: word transcripts spelled in a lexicon's tokens (first pronunciation) or
in sentencepiece pieces, for Kaldi text files and cuts manifests; words outside the lexicon are
skipped and named, or an error (``--oov error``)."""

from __future__ import annotations

from lhotse import CutSet, MonoCut, SupervisionSegment

from wfst_asr.bin import cli
from wfst_asr.graphs.bpe import load_bpe, train_bpe
from wfst_asr.graphs.lexicon import first_pronunciations, spell_words


def _lexicon(path) -> None:
    path.write_text("a AH\na EY\ncat K AE T\nsat S AE T\n")


def test_spell_words(tmp_path):
    _lexicon(tmp_path / "lexicon.txt")
    prons = first_pronunciations(tmp_path / "lexicon.txt")
    assert prons == {"a": ["AH"], "cat": ["K", "AE", "T"], "sat": ["S", "AE", "T"]}
    assert spell_words(["a", "cat", "sat"], prons) == (["AH", "K", "AE", "T", "S", "AE", "T"],
                                                       None)
    assert spell_words(["a", "dog", "cat"], prons) == ([], "dog")


def test_spell_text_and_cuts(tmp_path, capsys):
    lex, text = tmp_path / "lexicon.txt", tmp_path / "text"
    _lexicon(lex)
    text.write_text("u1 a cat\nu2 a dog\n\nu3 cat sat\n")
    out = tmp_path / "spelled"
    assert cli.main(["spell", "--lexicon", str(lex), "--text", str(text), "--out", str(out)]) == 0
    assert out.read_text() == "u1 AH K AE T\nu3 K AE T S AE T\n"
    err = capsys.readouterr().err
    assert "1 skipped" in err and f"{text}:2 ('dog')" in err
    assert cli.main(["spell", "--lexicon", str(lex), "--text", str(text), "--out",
                     str(tmp_path / "x"), "--oov", "error"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{text}:2: word 'dog'" in err[0]
    assert not (tmp_path / "x").exists()
    cuts = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts([MonoCut(id=c, start=0, duration=1, channel=0, supervisions=[
        SupervisionSegment(id=c, recording_id=c, start=0, duration=1, text=t)])
        for c, t in [("c1", "cat sat"), ("c2", "dog")]]).to_file(cuts)
    out_cuts = tmp_path / "spelled.jsonl.gz"
    assert cli.main(["spell", "--lexicon", str(lex), "--cuts", str(cuts), "--field", "phones",
                     "--out", str(out_cuts)]) == 0
    got = list(CutSet.from_file(out_cuts))
    assert [c.id for c in got] == ["c1"]
    assert got[0].supervisions[0].custom["phones"] == "K AE T S AE T"
    assert got[0].supervisions[0].text == "cat sat"  # the words stay
    assert "cut c2 ('dog')" in capsys.readouterr().err


def test_spell_with_a_bpe_model_takes_any_word(tmp_path):
    (tmp_path / "corpus").write_text("the cat sat on the mat\nthe dog sat on the log\n" * 20)
    model = train_bpe([tmp_path / "corpus"], tmp_path / "lang", vocab_size=15)
    text, out = tmp_path / "text", tmp_path / "out"
    text.write_text("u1 the cat\nu2 zebra dog\n")
    assert cli.main(["spell", "--bpe-model", str(model), "--text", str(text), "--out",
                     str(out)]) == 0
    sp = load_bpe(model)
    want = [f"u1 {' '.join(sp.encode('the', out_type=str) + sp.encode('cat', out_type=str))}",
            f"u2 {' '.join(sp.encode('zebra', out_type=str) + sp.encode('dog', out_type=str))}"]
    assert out.read_text().splitlines() == want
    assert cli.main(["spell", "--text", str(text), "--out", str(out)]) == 2  # no source
