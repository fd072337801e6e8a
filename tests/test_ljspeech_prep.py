"""Stage 0 of egs/ljspeech (local/prepare_ljspeech.py): the corpus README's split, split
hygiene of the LM text (read from the files written), and bad input (a FLAC that does not
decode, a transcript id with no audio: skipped, named and counted)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from conftest import shared_data_dir
from lhotse import CutSet

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "prepare_ljspeech", ROOT / "egs" / "ljspeech" / "local" / "prepare_ljspeech.py")
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)


def test_split_and_normalize() -> None:
    assert prep.split_of("LJ001-0186") == "train" and prep.split_of("LJ002-0120") == "train"
    assert prep.split_of("LJ002-0121") == "dev" and prep.split_of("LJ002-0160") == "dev"
    assert prep.split_of("LJ002-0161") == "test" and prep.split_of("LJ002-0200") == "test"
    assert prep.split_of("LJ002-0201") is None and prep.split_of("LJ050-0001") is None
    assert prep.normalize('Printing, in the "only" sense -- king\'s men; Müller\'s.') == [
        "printing", "in", "the", "only", "sense", "king's", "men", "müller's"]
    assert prep.normalize("twenty-one 'quoted'") == ["twenty", "one", "quoted"]


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[Path, Path]:
    corpus = shared_data_dir() / "ljspeech_part1"
    out = tmp_path_factory.mktemp("lj") / "manifests"
    assert prep.main(["--corpus-dir", str(corpus), "--out-dir", str(out)]) == 0
    return corpus, out


def _ids(path: Path) -> list[str]:
    return [ln.split()[0] for ln in path.read_text().splitlines()]


def test_real_corpus_split(real) -> None:
    corpus, out = real
    sizes = {s: len(CutSet.from_file(out / f"ljspeech_cuts_{s}.jsonl.gz"))
             for s in ("train", "dev", "test")}
    assert sizes == {"train": 305, "dev": 40, "test": 40}
    for split in ("train", "dev", "test"):
        assert all(prep.split_of(u) == split for u in _ids(out / f"text_{split}"))
    assert (out / "skipped.tsv").read_text() == ""


def test_no_dev_or_test_sentence_in_the_lm_text(real) -> None:
    """Split hygiene, read from the files: no dev/test transcript is a line of the LM text,
    every train transcript is, and the LM text is metadata.csv minus exactly dev and test."""
    corpus, out = real
    lm = (out / "lm_text").read_text().splitlines()
    lm_set = set(lm)
    for split in ("dev", "test"):
        for line in (out / f"text_{split}").read_text().splitlines():
            assert line.split(maxsplit=1)[1] not in lm_set, line
    for line in (out / "text_train").read_text().splitlines():
        assert line.split(maxsplit=1)[1] in lm_set
    meta = (corpus / "metadata.csv").read_text(encoding="utf-8").splitlines()
    held_out = sum(prep.split_of(ln.split("|")[0]) in ("dev", "test") for ln in meta)
    assert held_out == 80 and len(lm) == len(meta) - held_out
    # lm_text_utt: the same sentences with their clip ids (metadata order), no dev/test id
    with_ids = (out / "lm_text_utt").read_text().splitlines()
    assert [x.split(maxsplit=1)[1] for x in with_ids] == lm
    ids = [x.split()[0] for x in with_ids]
    assert ids[0] == meta[0].split("|")[0] and len(set(ids)) == len(ids)
    assert not any(prep.split_of(u) in ("dev", "test") for u in ids)


def test_bad_audio_and_missing_audio_are_skipped_and_counted(tmp_path, capsys) -> None:
    src = shared_data_dir() / "ljspeech_part1"
    corpus = tmp_path / "corpus"
    (corpus / "flac").mkdir(parents=True)
    meta = (src / "metadata.csv").read_text(encoding="utf-8").splitlines()
    keep = {"LJ001-0001", "LJ001-0002", "LJ001-0003", "LJ002-0121", "LJ002-0161"}
    (corpus / "metadata.csv").write_text(
        "\r\n".join(ln for ln in meta if ln.split("|")[0] in keep | {"LJ001-0004"}) + "\r\n",
        encoding="utf-8")
    for utt in keep:
        shutil.copy(src / "flac" / f"{utt}.flac", corpus / "flac")
    data = (corpus / "flac" / "LJ001-0002.flac").read_bytes()
    (corpus / "flac" / "LJ001-0002.flac").write_bytes(data[:40] + b"\0" * 200)  # no decode
    out = tmp_path / "out"
    assert prep.main(["--corpus-dir", str(corpus), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 clips: bad_audio 1, no_audio 1" in printed
    assert "LJ001-0002 bad_audio" in printed and "LJ001-0004 no_audio" in printed
    skipped = {ln.split("\t")[0]: ln.split("\t")[1]
               for ln in (out / "skipped.tsv").read_text().splitlines()}
    assert skipped == {"LJ001-0002": "bad_audio", "LJ001-0004": "no_audio"}
    assert _ids(out / "text_train") == ["LJ001-0001", "LJ001-0003"]
    assert len(CutSet.from_file(out / "ljspeech_cuts_dev.jsonl.gz")) == 1
    # the clips without audio still give LM text; dev and test never do
    assert len((out / "lm_text").read_text().splitlines()) == 4


def test_malformed_metadata_names_the_line(tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "metadata.csv").write_text("LJ001-0001|a|a\nLJ001-0002|only two\n")
    assert prep.main(["--corpus-dir", str(corpus), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{corpus / 'metadata.csv'}:2:" in err[0]
    assert not (tmp_path / "o").exists()
