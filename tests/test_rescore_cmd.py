"""``wfst-asr make-lattices`` / ``cuts-text`` / ``rescore`` end to end on a synthetic task.

tests/test_decode_cmd.py's task (3-5 phones of {a, b, c, d} per cut, a phone-level lang dir with
a bigram HLG, a small BLSTM trained by the Trainer): its dev / test lattices, a 3-gram and a
tiny LSTM LM on the training transcripts, then ``rescore``. Checked here:

* every setting is chosen on dev only: the lattice 1-best's choice is the argmin (grid_search's
  tie-break) of dev error counts computed here from the lattices' best paths and kaldialign;
  test is decoded once, at that setting; scrambling the test references changes no choice and
  no hypothesis;
* the output is a decode directory ``wfst-asr score`` scores to the same reports;
* the oracle's errors are at most every method's, with and without a folding map;
* bad inputs (a missing lattice dir, a lang dir of other words, a missing LM) are one line and
  exit code 2.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import kaldialign
import pytest
from lhotse import CutSet

from tests.test_decode_cmd import (
    _lang,
    _one_thread,  # noqa: F401 (autouse: one thread)
    _read_text,
    _train,
    _write_cuts,
)
from tests.test_train import PHONES
from wfst_asr.bin.cli import main
from wfst_asr.decode.pipeline import best_word_seqs, load_lattice_dir
from wfst_asr.fsa import SymbolTable

SCALES, PENALTIES = [0.2, 1.0, 3.0], [-3.0, 0.0, 2.0]
GRID = ["--lm-scales=" + ",".join(map(str, SCALES)),
        "--word-penalties=" + ",".join(map(str, PENALTIES))]
METHODS = ("lat1best", "3gram", "nnlm", "oracle")


def _cli(*argv: str) -> int:
    return main(["-q", *argv])


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """The data, lang dir and trained model; lattices, LMs and one rescoring run."""
    from wfst_asr.graphs.ngram import estimate_ngram

    root = tmp_path_factory.mktemp("rescore")
    train, sents = _write_cuts(root, "train", 30, 0)
    t = {"root": root, "lang": _lang(root / "lang", PHONES, sents), "train": train,
         "dev": _write_cuts(root, "dev", 9, 1)[0], "test": _write_cuts(root, "test", 9, 2)[0]}
    t["exp"] = _train(t, "exp", num_epochs=6)
    t["lats"] = root / "lats"
    assert _cli("make-lattices", "--exp-dir", str(t["exp"]), "--lang-dir", str(t["lang"]),
                "--dev-cuts", str(t["dev"]), "--test-cuts", str(t["test"]), "--out-dir",
                str(t["lats"]), "--output-beam", "2") == 0
    lm = root / "lm"
    assert _cli("cuts-text", "--cuts", str(train), "--field", "phones", "--out",
                str(lm / "text_train")) == 0
    assert (lm / "text_train").read_text().splitlines()[0].split()[1:] == sents[0]
    t["arpa"] = lm / "3gram.arpa"
    estimate_ngram(sents, 3, vocab=PHONES).write_arpa(t["arpa"])
    assert _cli("train-nnlm", str(lm / "text_train"), str(t["lang"] / "words.txt"),
                str(lm / "nnlm"), "--epochs", "1", "--embed-dim", "8", "--hidden-dim", "8",
                "--num-layers", "1") == 0
    t["nnlm"] = lm / "nnlm" / "lm.pt"
    t["out"] = root / "rescore"
    assert _cli(*_rescore_args(t, t["out"])) == 0
    return t


def _rescore_args(t: dict, out: Path, test_cuts: Path | None = None) -> list[str]:
    return ["rescore", "--lat-dir", str(t["lats"]), "--lang-dir", str(t["lang"]), "--dev-cuts",
            str(t["dev"]), "--test-cuts", str(test_cuts or t["test"]), "--ref-field", "phones",
            "--metric", "PER", "--ngram-arpa", str(t["arpa"]), "--nnlm", str(t["nnlm"]),
            "--nbest", "5", "--nnlm-scales", "0,0.5,1", *GRID, "--out-dir", str(out)]


def _errors(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> int:
    return sum(kaldialign.edit_distance(r, hyps.get(u, []))["total"] for u, r in refs.items())


def _report_errors(path: Path) -> int:
    m = re.search(r"%PER [0-9.]+ \[ (\d+) / \d+", path.read_text())
    assert m is not None, path
    return int(m.group(1))


def test_lattices_and_decode_dir_layout(task, capsys):
    from wfst_asr.decode.lattice_io import LatticeReader

    for name in ("dev", "test"):
        reader = LatticeReader(task["lats"] / name)
        assert len(reader) == 9 and reader.meta["output_beam"] == 2.0
        assert reader.meta["model"].endswith("averaged.pt")
    out = task["out"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sets"] == ["dev", "test"] and settings["tune_set"] == "dev"
    assert list(settings["methods"]) == list(METHODS)
    for m in METHODS:
        for name in ("dev", "test"):
            assert (out / m / f"{name}.hyp").is_file() and (out / f"per_{m}_{name}.txt").is_file()
        # the grid is swept on dev only
        assert sorted(p.name for p in (out / m).glob("sweep_*")) == \
            ([] if m == "oracle" else ["sweep_dev.txt"])
    assert settings["methods"]["nnlm"]["setting"]["nnlm_scale"] in (0, 0.5, 1)
    # `wfst-asr score` scores the directory to the same reports and results
    before = {p.name: p.read_text() for p in out.glob("*.txt")}
    capsys.readouterr()
    assert _cli("score", "--decode-dir", str(out)) == 0
    assert {p.name: p.read_text() for p in out.glob("*.txt")} == before
    assert re.search(r"^oracle +test PER", before["results.txt"], re.MULTILINE)


def test_dev_choice_is_the_dev_argmin_and_test_is_decoded_at_it(task):
    refs = {n: _read_text(task["out"] / "ref" / f"{n}.ref") for n in ("dev", "test")}
    words = SymbolTable.from_file(task["lang"] / "words.txt")
    lats = {n: load_lattice_dir(task["lats"] / n, on_skip=None)[0] for n in ("dev", "test")}

    def hyps(name: str, s: float, wp: float) -> dict[str, list[str]]:
        return {u: [str(words[i]) for i in h] for u, h in best_word_seqs(lats[name], s,
                                                                          wp).items()}

    key = {(s, wp): (_errors(refs["dev"], hyps("dev", s, wp)), s, abs(wp), wp)
           for s in SCALES for wp in PENALTIES}
    s, wp = min(key, key=key.__getitem__)
    setting = json.loads((task["out"] / "settings.json").read_text())["methods"]["lat1best"]
    assert setting["setting"] == {"lm_scale": s, "word_penalty": wp}
    for name in ("dev", "test"):
        assert _read_text(task["out"] / "lat1best" / f"{name}.hyp") == \
            {u: h for u, h in hyps(name, s, wp).items()}


def test_test_set_is_decoded_once_at_the_dev_setting(task, tmp_path, monkeypatch):
    from wfst_asr.train import rescoring

    calls: list[tuple[frozenset, float, float]] = []
    real = rescoring.best_word_seqs

    def spy(lattices, lm_scale=None, word_penalty=None):
        calls.append((frozenset(lattices), lm_scale, word_penalty))
        return real(lattices, lm_scale, word_penalty)

    monkeypatch.setattr(rescoring, "best_word_seqs", spy)
    assert _cli(*_rescore_args(task, tmp_path / "out")) == 0
    chosen = json.loads((tmp_path / "out" / "settings.json").read_text())["methods"]
    test_utts = frozenset(_read_text(task["out"] / "ref" / "test.ref"))
    on_test = [(s, wp) for utts, s, wp in calls if utts == test_utts]
    assert on_test == [tuple(chosen[m]["setting"].values()) for m in ("lat1best", "3gram")]


def test_test_references_change_nothing_but_the_test_scores(task, tmp_path):
    cuts = list(CutSet.from_file(task["test"]))
    for c in cuts:  # other references for test: the choices must not move
        sup = c.supervisions[0]
        sup.custom["phones"] = " ".join(reversed(sup.custom["phones"].split())) + " a a"
    scrambled = tmp_path / "test_scrambled.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(scrambled)
    out = tmp_path / "out"
    assert _cli(*_rescore_args(task, out, scrambled)) == 0
    a = json.loads((task["out"] / "settings.json").read_text())["methods"]
    b = json.loads((out / "settings.json").read_text())["methods"]
    assert {m: i["setting"] for m, i in a.items()} == {m: i["setting"] for m, i in b.items()}
    for m in METHODS[:3]:
        for name in ("dev", "test"):
            assert (out / m / f"{name}.hyp").read_text() == \
                (task["out"] / m / f"{name}.hyp").read_text()
    assert (out / "ref" / "test.ref").read_text() != (task["out"] / "ref" / "test.ref").read_text()


@pytest.mark.parametrize("folded", [False, True])
def test_oracle_is_never_above_any_method(task, tmp_path, folded):
    out = task["out"]
    if folded:  # b -> a, d deleted: hypotheses stay unfolded, the oracle works on the folds
        table = tmp_path / "fold.map"
        table.write_text("# full half\na a\nb a\nc c\nd\n")
        out = tmp_path / "out"
        assert _cli(*_rescore_args(task, out), "--map", str(table), "--map-from", "full",
                    "--map-to", "half") == 0
        for name in ("dev", "test"):  # written as words of words.txt, not folded symbols
            hyps = _read_text(out / "oracle" / f"{name}.hyp")
            assert {w for h in hyps.values() for w in h} <= set(PHONES)
    for name in ("dev", "test"):
        errors = {m: _report_errors(out / f"per_{m}_{name}.txt") for m in METHODS}
        assert all(errors["oracle"] <= e for e in errors.values()), errors


@pytest.mark.parametrize("case", ["no-lat-dir", "other-words", "no-nnlm", "no-tune-set"])
def test_bad_input_is_one_line_exit_2(task, tmp_path, capsys, case):
    args = _rescore_args(task, tmp_path / "out")
    if case == "no-lat-dir":
        args[args.index("--lat-dir") + 1] = str(tmp_path / "nolats")
        needle = str(tmp_path / "nolats" / "dev")
    elif case == "other-words":
        lang = _lang(tmp_path / "lang2", ["a", "b", "c", "e"], [["a", "e"], ["c", "b"]])
        args[args.index("--lang-dir") + 1] = str(lang)
        needle = str(lang / "words.txt")
    elif case == "no-nnlm":
        args[args.index("--nnlm") + 1] = str(tmp_path / "lm.pt")
        needle = str(tmp_path / "lm.pt")
    else:  # a grid to sweep, but no dev set
        i = args.index("--dev-cuts")
        del args[i:i + 2]
        needle = "tune set 'dev'"
    capsys.readouterr()
    assert _cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("wfst-asr rescore: error: ") and err.count("\n") == 1, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "out" / "settings.json").exists()


def test_make_lattices_bad_input(task, tmp_path, capsys):
    capsys.readouterr()
    assert _cli("make-lattices", "--exp-dir", str(tmp_path / "noexp"), "--lang-dir",
                str(task["lang"]), "--dev-cuts", str(task["dev"]), "--out-dir",
                str(tmp_path / "lats")) == 2
    err = capsys.readouterr().err
    assert err.startswith("wfst-asr make-lattices: error: ") and err.count("\n") == 1, err
    assert str(tmp_path / "noexp") in err
