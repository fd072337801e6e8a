"""Tests of wfst_asr.graphs.lang (lang directory, L) and the fst-info / fst-draw / compile-lang
commands, checked against kaldifst/OpenFst directly and hand-computed weights."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from wfst_asr import _kaldi
from wfst_asr.bin.cli import main as cli_main
from wfst_asr.fsa.io import load, read_fst
from wfst_asr.graphs.lang import (
    add_disambig_symbols,
    prepare_lang,
    read_lexicon,
    read_token_list,
    remove_disambig_symbols,
)

LEXICON = "a A\nab A B\nred R EH D\nread R EH D\n"
LEXICONP = "a 1.0 A\nab 0.5 A B\nred 1.0 R EH D\nread 0.25 R EH D\n"
PROBS = {"a": 1.0, "ab": 0.5, "red": 1.0, "read": 0.25}
SIL_PROB = 0.3


def kfst():
    return _kaldi.kaldifst()


def _table(path: Path) -> dict[str, int]:
    """symbol -> id, parsed here (not by SymbolTable)."""
    return {s: int(i) for s, i in (line.split() for line in path.read_text().splitlines())}


def _lex_dict(path: Path) -> dict[str, list[str]]:
    return {f[0]: f[1:] for f in (line.split() for line in path.read_text().splitlines())}


@pytest.fixture(name="lang")
def lang_fixture(tmp_path: Path):
    lex = tmp_path / "lexiconp.txt"
    lex.write_text(LEXICONP)
    return prepare_lang(tmp_path / "lang", lex, sil_token="SIL", sil_prob=SIL_PROB)


# ---------------------------------------------------------------------- path enumeration
def _paths(fst) -> list[tuple[tuple[int, ...], float]]:
    """All (non-epsilon output labels, total cost) of an acyclic kaldifst FST, brute force."""
    k = kfst()
    out = []

    def walk(q: int, olabels: tuple[int, ...], cost: float, depth: int) -> None:
        assert depth < 100, "cycle"
        final = fst.final(q).value
        if final != math.inf:
            out.append((olabels, cost + final))
        it = k.ArcIterator(fst, q)
        while not it.done:
            a = it.value
            walk(a.nextstate, olabels + ((a.olabel,) if a.olabel else ()),
                 cost + a.weight.value, depth + 1)
            it.next()

    if fst.start >= 0:
        walk(fst.start, (), 0.0, 0)
    return sorted(out)


def _transduce(L_path: Path, token_ids: list[int]) -> list[tuple[tuple[int, ...], float]]:
    """Paths of (linear acceptor of token_ids) o L, read from L_path with kaldifst."""
    k = kfst()
    L = k.StdVectorFst.read(str(L_path))
    k.arcsort(L, sort_type="ilabel")
    acc = k.make_linear_acceptor(token_ids)
    return _paths(k.compose(acc, L))


# ---------------------------------------------------------------------- reading
def test_read_lexicon_with_and_without_probs(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text(LEXICON + "\n")
    (tmp_path / "lp.txt").write_text(LEXICONP)
    assert read_lexicon(tmp_path / "l.txt")[1] == ("ab", None, ["A", "B"])
    lp = read_lexicon(tmp_path / "lp.txt")
    assert [(w, p) for w, p, _ in lp] == list(PROBS.items())
    assert lp[3][2] == ["R", "EH", "D"]


@pytest.mark.parametrize("text, line, what", [
    ("a A\nb\n", 2, "empty pronunciation"),
    ("a 0.5 A\nb 0.5\n", 2, "empty pronunciation"),
    ("a 0.5 A\nb x B\n", 2, "malformed probability"),
    ("a 0.5 A\n\nb 1.5 B\n", 3, "malformed probability"),
])
def test_read_lexicon_errors(tmp_path: Path, text: str, line: int, what: str) -> None:
    lex = tmp_path / "lexicon.txt"
    lex.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{lex}:{line}: {what}")):
        read_lexicon(lex)


def test_read_token_list_both_formats(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("B\nA\n")
    (tmp_path / "tokens.txt").write_text("<blk> 0\nB 2\nA 1\n#0 3\n")
    assert read_token_list(tmp_path / "plain") == ["B", "A"]
    assert read_token_list(tmp_path / "tokens.txt") == ["A", "B"]


# ---------------------------------------------------------------------- disambiguation
def test_add_disambig_symbols_kaldi_logic() -> None:
    lex = [("x", None, ["A"]), ("y", None, ["A"]), ("z", None, ["A", "B"]),
           ("w", None, ["C", "D"]), ("w", None, ["C", "E"]), ("v", None, ["A", "B", "C"])]
    out, max_d = add_disambig_symbols(lex)
    assert [t for _, _, t in out] == [["A", "#1"], ["A", "#2"], ["A", "B", "#1"],
                                      ["C", "D"], ["C", "E"], ["A", "B", "C"]]
    assert max_d == 2
    assert add_disambig_symbols([("a", None, ["A"])]) == ([("a", None, ["A"])], 0)


# ---------------------------------------------------------------------- lang dir files
def test_tables_and_lexicon_disambig(lang) -> None:
    d = lang.lang_dir
    assert _table(d / "tokens.txt") == {"<blk>": 0, "A": 1, "B": 2, "D": 3, "EH": 4, "R": 5,
                                        "SIL": 6, "#0": 7, "#1": 8, "#2": 9}
    assert _table(d / "words.txt") == {"<eps>": 0, "a": 1, "ab": 2, "read": 3, "red": 4,
                                       "#0": 5, "<s>": 6, "</s>": 7}
    expected = {"a": ["1.0", "A", "#1"], "ab": ["0.5", "A", "B"],
                "red": ["1.0", "R", "EH", "D", "#1"], "read": ["0.25", "R", "EH", "D", "#2"]}
    assert _lex_dict(d / "lexicon_disambig.txt") == expected
    assert _lex_dict(d / "lexiconp.txt") == {w: t[:-1] if t[-1].startswith("#") else t
                                            for w, t in expected.items()}
    assert not [p.name for p in d.iterdir() if p.name.startswith(".tmp")]


def test_given_token_list_fixes_ids(tmp_path: Path) -> None:
    (tmp_path / "lexicon.txt").write_text(LEXICON)
    (tmp_path / "toks").write_text("SIL\nR\nEH\nD\nB\nA\nZ\n")
    lang = prepare_lang(tmp_path / "lang", tmp_path / "lexicon.txt", tokens=tmp_path / "toks")
    assert _table(tmp_path / "lang" / "tokens.txt") == {
        "<blk>": 0, "SIL": 1, "R": 2, "EH": 3, "D": 4, "B": 5, "A": 6, "Z": 7,
        "#0": 8, "#1": 9, "#2": 10}
    assert lang.max_disambig == 2


def _ids(table: dict[str, int], toks: list[str]) -> list[int]:
    return [table[t] for t in toks]


def test_L_disambig_maps_each_pronunciation_back(lang) -> None:
    d = lang.lang_dir
    tok, words = _table(d / "tokens.txt"), _table(d / "words.txt")
    lex_d = _lex_dict(d / "lexicon_disambig.txt")
    no_sil, sil = -math.log(1 - SIL_PROB), -math.log(SIL_PROB)
    for word, fields in lex_d.items():
        toks, pron = fields[1:], -math.log(PROBS[word])
        # alone: start -> loop (no sil), the word, back to the loop state (no sil), final
        got = _transduce(d / "L_disambig.fst", _ids(tok, toks))
        assert [o for o, _ in got] == [(words[word],)]
        assert got[0][1] == pytest.approx(no_sil + pron + no_sil, abs=1e-5)
        # followed by silence: the word's last arc into the silence state, then SIL
        got = _transduce(d / "L_disambig.fst", _ids(tok, toks + ["SIL"]))
        assert [o for o, _ in got] == [(words[word],)]
        assert got[0][1] == pytest.approx(no_sil + pron + sil, abs=1e-5)


def test_L_disambig_sentence_with_silences(lang) -> None:
    d = lang.lang_dir
    tok, words = _table(d / "tokens.txt"), _table(d / "words.txt")
    seq = ["SIL", "A", "#1", "SIL", "R", "EH", "D", "#2", "#0"]
    got = _transduce(d / "L_disambig.fst", _ids(tok, seq))
    assert [o for o, _ in got] == [(words["a"], words["read"], words["#0"])]
    sil, no_sil = -math.log(SIL_PROB), -math.log(1 - SIL_PROB)
    assert got[0][1] == pytest.approx(sil + sil - math.log(0.25) + no_sil, abs=1e-5)


def test_L_without_disambig_is_ambiguous(lang) -> None:
    d = lang.lang_dir
    tok, words = _table(d / "tokens.txt"), _table(d / "words.txt")
    got = _transduce(d / "L.fst", _ids(tok, ["R", "EH", "D"]))
    assert sorted(o for o, _ in got) == [(words["read"],), (words["red"],)]
    no_sil = -math.log(1 - SIL_PROB)
    costs = {o[0]: c for o, c in got}
    assert costs[words["read"]] == pytest.approx(2 * no_sil - math.log(0.25), abs=1e-5)
    assert costs[words["red"]] == pytest.approx(2 * no_sil, abs=1e-5)
    # "A B" is ab only, "A" alone is a
    assert [o for o, _ in _transduce(d / "L.fst", _ids(tok, ["A", "B"]))] == [(words["ab"],)]
    assert [o for o, _ in _transduce(d / "L.fst", _ids(tok, ["A"]))] == [(words["a"],)]


def test_no_silence_topology(tmp_path: Path) -> None:
    (tmp_path / "lexiconp.txt").write_text(LEXICONP)
    prepare_lang(tmp_path / "lang", tmp_path / "lexiconp.txt", sil_prob=0.0)
    d = tmp_path / "lang"
    tok, words = _table(d / "tokens.txt"), _table(d / "words.txt")
    got = _transduce(d / "L.fst", _ids(tok, ["A", "B", "R", "EH", "D"]))
    assert sorted(o for o, _ in got) == [(words["ab"], words["read"]), (words["ab"], words["red"])]
    assert min(c for _, c in got) == pytest.approx(-math.log(0.5), abs=1e-5)
    assert "SIL" not in tok


def test_written_files_read_back(lang) -> None:
    d = lang.lang_dir
    k = kfst()
    for name, fsa in (("L", lang.L), ("L_disambig", lang.L_disambig)):
        fst = k.StdVectorFst.read(str(d / f"{name}.fst"))
        assert fst is not None
        assert fst.num_states == fsa.num_states - 1  # k2 has one extra final state
        assert fst.input_symbols.find(1) == "A" and fst.output_symbols.find(4) == "red"
        back = read_fst(d / f"{name}.fst")
        assert back.num_arcs == fsa.num_arcs
        key = lambda f: sorted(zip(f.arcs.tolist(), f.aux_labels.tolist(),
                                   f.scores.tolist()))
        assert key(back) == key(fsa)
        pt = load(d / f"{name}.pt")
        assert torch.equal(pt.arcs, fsa.arcs) and torch.equal(pt.aux_labels, fsa.aux_labels)
        assert torch.equal(pt.scores, fsa.scores)
        assert pt.labels_sym == lang.token_table and pt.aux_labels_sym == lang.word_table
    n_self = int(((lang.L_disambig.arcs[:, 0] == lang.L_disambig.arcs[:, 1])
                  & (lang.L_disambig.labels == lang.token_table["#0"])).sum())
    assert n_self == 1


def test_remove_disambig_symbols(lang) -> None:
    first_tok, first_word = lang.token_table["#0"], lang.word_table["#0"]
    out = remove_disambig_symbols(lang.L_disambig, first_tok, first_word)
    assert out.num_arcs == lang.L_disambig.num_arcs
    assert int(out.labels.max()) < first_tok and int(out.aux_labels.max()) < first_word
    changed = (out.labels != lang.L_disambig.labels)
    assert bool((out.labels[changed] == 0).all())
    assert int(changed.sum()) == int((lang.L_disambig.labels >= first_tok).sum()) > 0


# ---------------------------------------------------------------------- errors
def test_unknown_token_names_file_and_line(tmp_path: Path) -> None:
    lex = tmp_path / "lexicon.txt"
    lex.write_text("a A\n\nb B Q\n")
    with pytest.raises(ValueError, match=re.escape(f"{lex}:3: token 'Q'")):
        prepare_lang(tmp_path / "lang", lex, tokens=["A", "B"])
    assert not (tmp_path / "lang").exists()


def test_empty_pronunciation_and_reserved_names(tmp_path: Path) -> None:
    lex = tmp_path / "lexicon.txt"
    lex.write_text("a A\nb\n")
    with pytest.raises(ValueError, match=re.escape(f"{lex}:2: empty pronunciation")):
        prepare_lang(tmp_path / "lang", lex)
    lex.write_text("a A\n<s> A\n")
    with pytest.raises(ValueError, match=re.escape(f"{lex}:2: word '<s>'")):
        prepare_lang(tmp_path / "lang", lex)
    lex.write_text("a A #1\n")
    with pytest.raises(ValueError, match=re.escape(f"{lex}:1: token '#1'")):
        prepare_lang(tmp_path / "lang", lex)


# ---------------------------------------------------------------------- commands
def _tiny_fst(path: Path) -> None:
    """0 -1-> 1 (cost 0.5), 1 -2-> 2, 1 -3-> 1; state 2 final (cost 1.5): written by kaldifst."""
    k = kfst()
    f = k.StdVectorFst()
    for _ in range(3):
        f.add_state()
    f.start = 0
    f.add_arc(0, k.StdArc(1, 1, 0.5, 1))
    f.add_arc(1, k.StdArc(2, 2, 0.0, 2))
    f.add_arc(1, k.StdArc(3, 3, 0.0, 1))
    f.set_final(2, 1.5)
    assert f.write(str(path))


def test_fst_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _tiny_fst(tmp_path / "t.fst")
    assert cli_main(["fst-info", str(tmp_path / "t.fst")]) == 0
    out = capsys.readouterr().out
    for line in ("states: 4", "arcs: 4 (3 regular, 1 with label -1", "acceptor: yes",
                 "input epsilon-free: yes", "input-deterministic: yes", "acyclic: no",
                 "input labels: [1, 3], 3 distinct",
                 "final states (OpenFst sense, score): 1: 2 (-1.5)"):
        assert line in out, (line, out)


def test_fst_info_on_lang(lang, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["fst-info", str(lang.lang_dir / "L_disambig.pt")]) == 0
    out = capsys.readouterr().out
    assert "acceptor: no" in out and "input-deterministic: no" in out
    assert "output symbols: 8 symbols, max id 7" in out


def test_fst_draw(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _tiny_fst(tmp_path / "t.fst")
    (tmp_path / "isym.txt").write_text("<eps> 0\nx 1\ny 2\nz 3\n")
    dot = tmp_path / "t.dot"
    assert cli_main(["fst-draw", str(tmp_path / "t.fst"), str(dot),
                     "--isymbols", str(tmp_path / "isym.txt")]) == 0
    text = dot.read_text()
    assert text.startswith("digraph") and text.count("->") == 4 and '"y/' in text
    assert cli_main(["fst-draw", str(tmp_path / "t.fst"), str(tmp_path / "u.dot"),
                     "--max-states", "3"]) == 2
    assert "more than --max-states 3" in capsys.readouterr().err
    assert not (tmp_path / "u.dot").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_compile_lang_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "lexicon.txt").write_text(LEXICON + "!SIL SIL\n")
    rc = cli_main(["compile-lang", "--lang-dir", str(tmp_path / "lang"), "--lexicon",
                   str(tmp_path / "lexicon.txt"), "--sil-token", "SIL", "--oov-word", "!SIL"])
    assert rc == 0
    assert "5 words" in capsys.readouterr().out
    assert (tmp_path / "lang" / "oov.txt").read_text() == "!SIL\n"
    rc = cli_main(["compile-lang", "--lang-dir", str(tmp_path / "lang2"), "--lexicon",
                   str(tmp_path / "lexicon.txt"), "--tokens", str(tmp_path / "lexicon.txt")])
    assert rc == 2
    assert "is not a non-negative integer" in capsys.readouterr().err


# ---------------------------------------------------------------------- real data: TIMIT
def _timit_module():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "egs" / "timit" / "local" / "timit_lexicon.py"
    spec = importlib.util.spec_from_file_location("timit_lexicon", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("phone_set", ["61", "48"])
def test_timit_langs(tmp_path: Path, phone_set: str, shared_data_dir: Path) -> None:
    timit = shared_data_dir / "timit_nltk_sample"
    mod = _timit_module()
    phn = {line.split()[2] for f in timit.glob("dr*/*.phn") for line in f.read_text().splitlines()
           if line.strip()}
    assert phn == set(mod.PHONES_61)
    dic = [line for line in (timit / "timitdic.txt").read_text().splitlines()
           if line.strip() and not line.startswith(";")]
    lang_phone, lang_word = mod.prepare_timit_langs(timit, tmp_path, phone_set)
    n_phones = int(phone_set)
    n_dis = lang_word.max_disambig + 1
    assert len(lang_phone.token_table) == 1 + n_phones + 1  # <blk>, phones, #0
    assert len(lang_phone.word_table) == 1 + n_phones + 3
    assert len(lang_word.token_table) == 1 + n_phones + n_dis
    assert len(lang_word.word_table) == 1 + len({d.split()[0] for d in dic}) + 3
    print(f"TIMIT {phone_set}: phone lang: {n_phones} tokens, {n_phones} words, "
          f"L {lang_phone.L.num_arcs} arcs; word lang: {n_phones} tokens, "
          f"{len(lang_word.word_table) - 4} words, #0..#{lang_word.max_disambig}, "
          f"L {lang_word.L.num_arcs} arcs, L_disambig {lang_word.L_disambig.num_arcs} arcs")
    # a few pronunciations (stress stripped by hand here) transduce back to their word
    tok = _table(tmp_path / "lang_word" / "tokens.txt")
    words = _table(tmp_path / "lang_word" / "words.txt")
    lex_d = {f[0]: f[1:] for f in (line.split() for line in
                                    (tmp_path / "lang_word" / "lexicon_disambig.txt")
                                    .read_text().splitlines())}
    for line in dic[:40:4]:
        word, pron = line.split(None, 1)
        phones = [p.rstrip("12") for p in pron.strip().strip("/").split()]
        if phone_set == "61":
            assert [t for t in lex_d[word] if not t.startswith("#")] == phones
        got = _transduce(tmp_path / "lang_word" / "L_disambig.fst", _ids(tok, lex_d[word]))
        assert [o for o, _ in got] == [(words[word],)]
        assert got[0][1] == pytest.approx(-2 * math.log(0.5), abs=1e-5)


def test_L_disambig_is_determinizable(lang) -> None:
    """With #1/#2 L_disambig is functional: OpenFst determinizes it into an input-deterministic
    FST."""
    k = kfst()
    fst = k.StdVectorFst.read(str(lang.lang_dir / "L_disambig.fst"))
    det = k.determinize(fst)
    assert det.num_states > 0
    for q in range(det.num_states):
        it, labels = k.ArcIterator(det, q), []
        while not it.done:
            labels.append(it.value.ilabel)
            it.next()
        assert len(labels) == len(set(labels))
