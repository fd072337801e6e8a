"""The ``wfst-asr lattice-*`` tools on a small lattice directory that also holds a truncated
file, a file written with another word table and an empty lattice."""

from __future__ import annotations

import pytest
import torch

from tests.test_lattice import make_case
from wfst_asr.bin.cli import main
from wfst_asr.decode.kaldi_lattice import read_kaldi_lattices
from wfst_asr.decode.lattice import best_word_sequences, prune, rescale
from wfst_asr.decode.lattice_io import (
    LatticeError,
    LatticeReader,
    LatticeWriter,
    save_lattices,
    symbol_table_checksum,
)
from wfst_asr.decode.nbest import nbest_one
from wfst_asr.decode.rescore import rescore_lattice
from wfst_asr.fsa import SymbolTable, create_fsa_vec, save

WORDS = SymbolTable.from_str("<eps> 0\na 1\nb 2\nc 3\n")
OTHER = SymbolTable.from_str("<eps> 0\na 1\nb 2\nd 3\n")
GOOD = ["ok1", "ok2", "ok3"]
COMMANDS = ["lattice-info", "lattice-prune", "lattice-best-path", "lattice-nbest",
            "lattice-to-ctm", "lattice-rescore", "lattice-to-kaldi"]


def _empty_vec(one):
    e = one.index_arcs(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3, dtype=torch.int32),
                       None, 0)
    return create_fsa_vec([e])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latcmd")
    c = make_case(21)
    lat = c["lat"]
    d = tmp / "lats"
    with LatticeWriter(d, words=WORDS, meta={"frame_shift": 0.01, "subsampling": 2}) as w:
        w.write(["ok1", "ok2"], lat)
        w.write(["trunc"], lat[0].as_vec())
        w.write(["other"], lat[1].as_vec())
        w.write(["empty", "ok3"], create_fsa_vec([_empty_vec(lat[0])[0], lat[1]]))
    data = (d / "lat.00001.pt").read_bytes()
    (d / "lat.00001.pt").write_bytes(data[:200])
    save_lattices(d / "lat.00002.pt", ["other"], lat[1].as_vec(),
                  words_checksum=symbol_table_checksum(OTHER))
    G = c["G"]
    G.labels_sym = WORDS
    save(G, tmp / "G.pt")
    G_other = c["G"].clone()
    G_other.labels_sym = OTHER
    save(G_other, tmp / "G_other.pt")
    return {"dir": d, "tmp": tmp, "lat": lat, "c": c,
            "want": {"ok1": lat[0], "ok2": lat[1], "ok3": lat[1]}}


def _check_skips(err: str, cmd: str) -> None:
    assert f"{cmd}: skipping utterance trunc:" in err and "truncated" in err
    assert f"{cmd}: skipping utterance other:" in err and "another word table" in err
    assert f"{cmd}: skipping utterance empty: empty lattice" in err
    assert "3 lattices done, 3 skipped (1 corrupt, 1 empty, 1 symbol-table)" in err


def _words(ids):
    return " ".join(str(WORDS[i]) for i in ids)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "lattice" in capsys.readouterr().out


def test_lattice_info(data, capsys, tmp_path):
    per = tmp_path / "per_utt.tsv"
    assert main(["lattice-info", str(data["dir"]), "--no-progress", "--per-utt", str(per)]) == 0
    cap = capsys.readouterr()
    _check_skips(cap.err, "lattice-info")
    assert "utterances: 6 (3 usable, 3 skipped" in cap.out
    lines = per.read_text().splitlines()
    assert lines[0].startswith("utt\tframes") and [x.split("\t")[0] for x in lines[1:]] == GOOD
    arcs = sum(data["want"][u].num_arcs for u in GOOD)
    assert f"arcs: {arcs}" in cap.out


def test_lattice_best_path(data, capsys, tmp_path):
    out = tmp_path / "best.txt"
    assert main(["lattice-best-path", str(data["dir"]), str(out), "--no-progress"]) == 0
    _check_skips(capsys.readouterr().err, "lattice-best-path")
    want = [f"{u} {_words(best_word_sequences(data['want'][u])[0])}".rstrip() for u in GOOD]
    assert out.read_text().splitlines() == want
    # another LM scale changes what the best path is computed with
    out2 = tmp_path / "best2.txt"
    assert main(["lattice-best-path", str(data["dir"]), str(out2), "--no-progress", "--ids",
                 "--lm-scale", "3", "--word-penalty", "-2"]) == 0
    want2 = [" ".join([u] + [str(w) for w in best_word_sequences(
        rescale(data["want"][u], 3.0, -2.0))[0]]) for u in GOOD]
    assert out2.read_text().splitlines() == want2


def test_lattice_nbest(data, capsys, tmp_path):
    out = tmp_path / "nbest.tsv"
    assert main(["lattice-nbest", str(data["dir"]), str(out), "--n", "3", "--no-progress"]) == 0
    _check_skips(capsys.readouterr().err, "lattice-nbest")
    rows = [x.split("\t") for x in out.read_text().splitlines()]
    assert rows[0] == ["utt", "rank", "total", "am", "lm", "num_words", "words"]
    for u in GOOD:
        mine = [r for r in rows[1:] if r[0] == u]
        nb = nbest_one(data["want"][u], 3)
        assert [r[6] for r in mine] == [_words(w) for w in nb.word_seqs]
        assert [float(r[2]) for r in mine] == pytest.approx(nb.total_scores().tolist(),
                                                            abs=1e-3)


def test_lattice_to_ctm(data, capsys, tmp_path):
    out = tmp_path / "x.ctm"
    assert main(["lattice-to-ctm", str(data["dir"]), str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    _check_skips(err, "lattice-to-ctm")
    assert "frame shift 0.01 s x subsampling 2" in err  # from meta.json
    lines = out.read_text().splitlines()
    for u in GOOD:
        mine = [x.split() for x in lines if x.split()[0] == u]
        assert " ".join(x[4] for x in mine) == _words(best_word_sequences(data["want"][u])[0])
        for x in mine:
            assert abs(float(x[2]) / 0.02 - round(float(x[2]) / 0.02)) < 1e-6  # whole frames
            assert 0.0 <= float(x[5]) <= 1.0


def test_lattice_prune(data, capsys, tmp_path):
    out = tmp_path / "pruned"
    assert main(["lattice-prune", str(data["dir"]), "--beam", "1.5", "--out-dir", str(out),
                 "--no-progress", "--batch-size", "2"]) == 0
    _check_skips(capsys.readouterr().err, "lattice-prune")
    r = LatticeReader(out)
    assert r.utt_ids == GOOD and r.meta["subsampling"] == 2
    for u, one in r:
        want = prune(data["want"][u], 1.5)
        assert torch.equal(one.arcs, want[0].arcs)
    # the output directory exists now: refused unless --overwrite (a bad input: exit 2)
    assert main(["lattice-prune", str(data["dir"]), "--beam", "1", "--out-dir", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds lattices" in err and "--overwrite" in err and "overwrite=" not in err


def test_lattice_rescore(data, capsys, tmp_path):
    out = tmp_path / "resc"
    best = tmp_path / "resc_best.txt"
    assert main(["lattice-rescore", str(data["dir"]), "--lm", str(data["tmp"] / "G.pt"),
                 "--out-dir", str(out), "--best-path", str(best), "--no-progress"]) == 0
    _check_skips(capsys.readouterr().err, "lattice-rescore")
    G = data["c"]["G"]
    want = [f"{u} {_words(best_word_sequences(rescore_lattice(data['want'][u], G))[0])}"
            .rstrip() for u in GOOD]
    assert best.read_text().splitlines() == want
    assert LatticeReader(out).utt_ids == GOOD
    # a G over another word table: a clear error, and no output written
    best2 = tmp_path / "never.txt"
    assert main(["lattice-rescore", str(data["dir"]), "--lm", str(data["tmp"] / "G_other.pt"),
                 "--best-path", str(best2), "--no-progress"]) == 2
    assert "word table differs" in capsys.readouterr().err
    assert not best2.exists()
    # n-best rescoring with a neural LM needs --lm-model (tested in test_nnlm.py)
    assert main(["lattice-rescore", str(data["dir"]), "--lm", "x", "--mode", "nbest-nnlm",
                 "--best-path", str(best2)]) == 2
    assert "needs --lm-model" in capsys.readouterr().err
    assert main(["lattice-rescore", str(data["dir"]), "--best-path", str(best2)]) == 2
    assert "needs --lm" in capsys.readouterr().err


def test_lattice_to_kaldi(data, capsys, tmp_path):
    ark = tmp_path / "lat.ark"
    assert main(["lattice-to-kaldi", str(data["dir"]), f"ark:{ark}", "--compact",
                 "--no-progress"]) == 0
    _check_skips(capsys.readouterr().err, "lattice-to-kaldi")
    got = dict(read_kaldi_lattices(ark))
    assert list(got) == GOOD
    for u in GOOD:
        assert torch.equal(got[u].arcs, data["want"][u].arcs)


def test_all_bad_is_an_error(tmp_path, capsys, data):
    d = tmp_path / "allbad"
    with LatticeWriter(d, words=WORDS) as w:
        w.write(["e1"], _empty_vec(data["lat"][0]))
    assert main(["lattice-best-path", str(d), str(tmp_path / "o.txt"), "--no-progress"]) == 1
    assert "0 lattices done, 1 skipped (1 empty)" in capsys.readouterr().err
    assert isinstance(dict(LatticeReader(d))["e1"], LatticeError)
