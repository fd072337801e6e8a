"""Tests of wfst_asr.fsa.{symbol_table,io,draw}: exact round trips, kaldifst as a reference."""

from __future__ import annotations

import math
import os
import re
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfst_asr._kaldi import kaldifst as _kfst
from wfst_asr.fsa import (
    Fsa,
    SymbolTable,
    create_fsa_vec,
    draw,
    from_file,
    from_kaldifst,
    from_openfst,
    from_openfst_file,
    from_str,
    load,
    read_fst,
    save,
    to_dot,
    to_file,
    to_kaldifst,
    to_openfst_str,
    to_str,
    write_fst,
)
from wfst_asr.fsa.io import format_float32, parse_float32

kaldifst = _kfst()
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def fsas(draw, transducer: bool | None = None, scores=f32, max_states: int = 8) -> Fsa:
    """A valid FSA: state 0 has a line in OpenFst text, state F-1 has a -1 arc (last)."""
    ns = draw(st.integers(2, max_states))
    final = ns - 1
    has_aux = draw(st.booleans()) if transducer is None else transducer
    arcs, aux = [], []
    for s in range(final):
        for _ in range(draw(st.integers(0, 3))):
            arcs.append([s, draw(st.integers(0, final - 1)), draw(st.integers(0, 6))])
            aux.append(draw(st.integers(0, 6)))
        if s == final - 1 or (s == 0 and not arcs) or draw(st.booleans()):
            arcs.append([s, final, -1])
            aux.append(-1)
    sc = torch.tensor([draw(scores) for _ in arcs], dtype=torch.float32)
    attrs = {"aux_labels": torch.tensor(aux, dtype=torch.int32)} if has_aux else {}
    return Fsa(torch.tensor(arcs, dtype=torch.int32), sc, num_states=ns, **attrs)


def bits(t: torch.Tensor, zero_sign: bool = True) -> list[int]:
    """Bit patterns of float32 values (``zero_sign=False``: -0.0 counts as 0.0)."""
    t = t.detach().float()
    if not zero_sign:
        t = t + 0.0
    return t.view(torch.int32).tolist()


def assert_same(a: Fsa, b: Fsa, zero_sign: bool = True) -> None:
    assert a.num_states == b.num_states
    assert a.arcs.tolist() == b.arcs.tolist()
    assert bits(a.scores, zero_sign) == bits(b.scores, zero_sign)
    assert a.has_attr("aux_labels") == b.has_attr("aux_labels")
    if a.has_attr("aux_labels"):
        assert a.aux_labels.tolist() == b.aux_labels.tolist()


# ---------------------------------------------------------------------- float32 text
@SETTINGS
@given(st.lists(st.floats(width=32, allow_nan=False), max_size=30))
def test_float32_text_exact(values):
    t = torch.tensor(values, dtype=torch.float32)
    strs = format_float32(t)
    assert bits(parse_float32(strs)) == bits(t)
    digits = [s.lstrip("-").split("e")[0].replace(".", "").lstrip("0") for s in strs]
    assert all(len(d) <= 9 for d in digits)  # at most 9 significant digits


def test_float32_parse_is_correctly_rounded():
    # 1 + 2**-24 is the midpoint between 1 and the next float32; a hair above must round up.
    assert parse_float32(["1.000000059604644775390625"]).item() == 1.0  # tie -> even
    up = parse_float32(["1.0000000596046447753906250000000001"]).item()
    assert up == float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))
    assert format_float32(torch.tensor([0.1, -0.0, 1e30, float("inf")])) == \
        ["0.1", "-0", "1e+30", "inf"]


# ---------------------------------------------------------------------- k2 text format
@SETTINGS
@given(fsas())
def test_k2_text_round_trip_exact(fsa):
    s = to_str(fsa)
    back = from_str(s)
    assert_same(fsa, back)
    assert to_str(back) == s
    assert str(fsa) == s
    assert_same(from_str(s, acceptor=not fsa.has_attr("aux_labels")), fsa)


def test_k2_text_format_details():
    s = "0 1 2 0.5\n0 2 3 -1.25\n1 3 -1 0\n2 3 -1 2\n3\n"
    fsa = from_str(s)
    assert fsa.num_states == 4 and not fsa.has_attr("aux_labels")
    assert fsa.arcs.tolist() == [[0, 1, 2], [0, 2, 3], [1, 3, -1], [2, 3, -1]]
    assert fsa.scores.tolist() == [0.5, -1.25, 0.0, 2.0]
    assert to_str(fsa) == s
    t = from_str("0 1 2 7 0.5\n1 2 -1 -1 0\n2\n")
    assert t.aux_labels.tolist() == [7, -1]
    assert to_str(t) == "0 1 2 7 0.5\n1 2 -1 -1 0\n2\n"
    # forced kinds, missing scores, tabs and blank lines
    t2 = from_str("0\t1\t2\t7\n\n1 2 -1 -1\n2\n", acceptor=False)
    assert t2.aux_labels.tolist() == [7, -1] and t2.scores.tolist() == [0.0, 0.0]
    a3 = from_str("0 1 2\n1 2 -1\n2\n")
    assert a3.labels.tolist() == [2, -1] and not a3.has_attr("aux_labels")
    one = from_str("0")
    assert one.num_states == 1 and one.num_arcs == 0 and to_str(one) == "0\n"
    assert to_str(Fsa(torch.zeros(0, 3, dtype=torch.int32), num_states=0)) == ""


def test_k2_text_fsa_vec():
    a, b = from_str("0 1 1 0.5\n1 2 -1 0\n2\n"), from_str("0 1 -1 1\n1\n")
    assert to_str(create_fsa_vec([a, b])) == to_str(a) + "\n" + to_str(b)


@pytest.mark.parametrize("text, line, what", [
    ("0 1 1 0.5\n1 2 -1\n2\n", 2, "fields"),
    ("0 1 x 0.5\n1 2 -1 0\n2\n", 1, "not an integer"),
    ("0 1 1 abc\n1 2 -1 0\n2\n", 1, "not a number"),
    ("0 1 -1 0.5\n1 2 -1 0\n2\n", 1, "label -1"),
    ("0 1 1 0.5\n1 2 3 0\n2\n", 2, "label -1"),
    ("0 5 1 0.5\n5 2 -1 0\n2\n", 1, "out of range"),
    ("0 1 1 0\n1 2 -1 0\n", 2, "final state alone"),
    ("0 1 1 0\n1\n1 2 -1 0\n2\n", 2, "last line"),
    ("0 1 -2 0\n1\n", 1, "label -2"),
    ("0 1 1 0\n1 2 -1 0\n2 1 3 0\n2\n", 3, "leaving the final state"),
    ("0 1 1 0\n1 2 -1 0\nx\n", 3, "final state"),
    ("0 1 1 2 3 4\n1\n", 1, "fields"),
    ("0 1 -1 99999999999 0\n1\n", 1, "int32"),
])
def test_k2_text_malformed(text, line, what):
    with pytest.raises(ValueError, match=f"<string>:{line}: .*{what}"):
        from_str(text)


def test_k2_text_empty_and_kind_mismatch():
    for s in ("", "  \n\n"):
        with pytest.raises(ValueError, match="empty"):
            from_str(s)
    with pytest.raises(ValueError, match="<string>:1: a transducer arc line"):
        from_str("0 1 1\n1\n", acceptor=False)
    with pytest.raises(ValueError, match="<string>:1: an? acceptor arc line"):
        from_str("0 1 1 2 0.5\n1\n", acceptor=True)


def test_k2_text_file_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.fst.txt"
    p.write_text("0 1 1 0.5\n1 2 oops 0\n2\n")
    with pytest.raises(ValueError, match=f"{p}:2: label 'oops'"):
        from_file(p)
    good = from_str("0 1 1 0.5\n1 2 -1 0\n2\n")
    to_file(good, tmp_path / "good.txt")
    assert_same(from_file(tmp_path / "good.txt"), good)
    to_file(good, tmp_path / "good.ofst", openfst=True)
    assert_same(from_openfst_file(tmp_path / "good.ofst"), good, zero_sign=False)
    assert sorted(os.listdir(tmp_path)) == ["bad.fst.txt", "good.ofst", "good.txt"]


# ---------------------------------------------------------------------- OpenFst text
@SETTINGS
@given(fsas())
def test_openfst_text_round_trip_exact(fsa):
    acc = not fsa.has_attr("aux_labels")
    text = to_openfst_str(fsa)
    assert_same(from_openfst(text, acceptor=acc), fsa, zero_sign=False)
    if not acc and (fsa.labels != -1).any():  # 5-field lines: inferred as a transducer
        assert_same(from_openfst(text), fsa, zero_sign=False)
    # OpenFst itself reads our text to the same FST
    ref = kaldifst.compile(text, acceptor=acc, keep_state_numbering=True)
    assert_same(from_kaldifst(ref, acceptor=acc), fsa, zero_sign=False)


def test_openfst_text_details():
    # start state 2 (first line), two final states, an Infinity final weight (= not final)
    text = "2 1 5 0.5\n1 0 6 0.25\n0 1.5\n1 -2\n3 Infinity\n"
    fsa = from_openfst(text)
    # 2 <-> 0 swapped, states 0..3 kept, super-final 4
    assert fsa.num_states == 5
    assert fsa.arcs.tolist() == [[0, 1, 5], [1, 2, 6], [1, 4, -1], [2, 4, -1]]
    assert fsa.scores.tolist() == [-0.5, -0.25, 2.0, -1.5]
    assert to_openfst_str(fsa) == "0\t1\t5\t0.5\n1\t2\t6\t0.25\n1\t-2\n2\t1.5\n"
    t = from_openfst("0 1 3 4\n1\n", acceptor=False)  # weightless transducer lines
    assert t.aux_labels.tolist() == [4, -1] and t.scores.tolist() == [0.0, 0.0]
    assert from_openfst("0 1 3 4\n1\n").labels.tolist() == [3, -1]  # 4 fields: acceptor
    assert from_openfst("0\n").arcs.tolist() == [[0, 1, -1]]
    # nothing final: the appended final state has no arcs in
    nf = from_openfst("0 1 3 0.5\n")
    assert nf.num_states == 3 and nf.arcs.tolist() == [[0, 1, 3]]
    # infinities
    assert from_openfst("0 1 1 Infinity\n1 0\n").scores[0].item() == -math.inf


@pytest.mark.parametrize("text, line, what, acceptor", [
    ("0 1 a 0.5\n1\n", 1, "not an integer", None),
    ("0 1 1 0.5\n1 2 3 4 5 6\n", 2, "fields", None),
    ("0 1 -3 0.5\n1\n", 1, "negative ilabel", None),
    ("0 1 3 -4 0.5\n1\n", 1, "negative olabel", None),
    ("0\n0 0.5\n", 2, "final twice", None),
    ("0 1 1 x\n1\n", 1, "not a number", True),
    ("0 1 1 2 0\n1\n", 1, "acceptor arc line", True),
    ("0 -1 1 0\n1\n", 1, "negative state", None),
    ("0 1 1 0\n1 xyz\n", 2, "final weight", None),
])
def test_openfst_text_malformed(text, line, what, acceptor):
    with pytest.raises(ValueError, match=f"<string>:{line}: .*{what}"):
        from_openfst(text, acceptor=acceptor)


def test_openfst_text_empty_and_file(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        from_openfst("\n")
    p = tmp_path / "g.txt"
    p.write_text("0 1 1 1 0.5\n1 2 2\n")
    with pytest.raises(ValueError, match=f"{p}:2: .*fields"):
        from_openfst_file(p, acceptor=False)


def test_several_final_arcs_need_a_semiring():
    fsa = from_str("0 1 1 0\n1 2 -1 0.5\n1 2 -1 -1\n2\n")
    with pytest.raises(ValueError, match="final_semiring"):
        to_openfst_str(fsa)
    with pytest.raises(ValueError, match="final_semiring"):
        to_kaldifst(fsa)
    assert to_openfst_str(fsa, final_semiring="tropical").splitlines()[-1] == "1\t-0.5"
    w = float(from_openfst(to_openfst_str(fsa, final_semiring="log")).scores[-1])
    assert w == pytest.approx(math.log(math.exp(0.5) + math.exp(-1)), abs=1e-6)
    k = to_kaldifst(fsa, final_semiring="tropical")
    assert k.final(1).value == -0.5


def test_aux_label_on_final_arc_is_rejected():
    fsa = from_str("0 1 1 1 0\n1 2 -1 5 0\n2\n")
    with pytest.raises(ValueError, match="aux_label 5"):
        to_kaldifst(fsa)


# ---------------------------------------------------------------------- kaldifst
def _fst_arcs(fst) -> tuple[dict, dict]:
    arcs, finals = {}, {}
    for s in kaldifst.StateIterator(fst):
        arcs[s] = [(a.ilabel, a.olabel, a.nextstate, a.weight.value)
                   for a in kaldifst.ArcIterator(fst, s)]
        w = fst.final(s).value
        if w != math.inf:
            finals[s] = w
    return arcs, finals


@SETTINGS
@given(fsas())
def test_kaldifst_round_trip_exact(fsa):
    acc = not fsa.has_attr("aux_labels")
    fst = to_kaldifst(fsa)
    assert fst.start == 0 and fst.num_states == fsa.num_states - 1
    # independent check of the conversion against the definition
    arcs, finals = _fst_arcs(fst)
    aux = fsa.aux_labels.tolist() if not acc else fsa.labels.tolist()
    exp_arcs = {s: [] for s in range(fsa.num_states - 1)}
    exp_finals = {}
    for i, ((src, dst, lab), sc) in enumerate(zip(fsa.arcs.tolist(), fsa.scores.tolist())):
        if lab == -1:
            exp_finals[src] = -sc
        else:
            exp_arcs[src].append((lab, aux[i], dst, -sc))
    assert arcs == exp_arcs and finals == exp_finals
    back = from_kaldifst(fst, acceptor=acc)
    assert_same(back, fsa, zero_sign=False)
    if acc:
        assert_same(from_kaldifst(fst), fsa, zero_sign=False)


@SETTINGS
@given(fsas())
def test_from_kaldifst_iterator_fallback(fsa):
    """The arc-iterator path (used if the const-FST bytes look unexpected) agrees."""
    import wfst_asr.fsa.io as fio
    acc = not fsa.has_attr("aux_labels")
    fst = to_kaldifst(fsa)
    fast = from_kaldifst(fst, acceptor=acc)
    real = fio._fstbin.read_const
    try:
        fio._fstbin.read_const = lambda *a: None
        slow = from_kaldifst(fst, acceptor=acc)
    finally:
        fio._fstbin.read_const = real
    assert_same(fast, slow)


def test_from_kaldifst_start_and_finals():
    fst = kaldifst.StdVectorFst()
    for _ in range(3):
        fst.add_state()
    fst.start = 1
    fst.add_arc(1, kaldifst.StdArc(ilabel=3, olabel=4, weight=0.5, nextstate=0))
    fst.add_arc(0, kaldifst.StdArc(ilabel=5, olabel=6, weight=0.0, nextstate=2))
    fst.set_final(2, 1.5)
    fst.set_final(1, -2.0)
    fsa = from_kaldifst(fst)
    assert fsa.num_states == 4
    assert fsa.arcs.tolist() == [[0, 1, 3], [0, 3, -1], [1, 2, 5], [2, 3, -1]]
    assert fsa.aux_labels.tolist() == [4, -1, 6, -1]
    assert bits(fsa.scores) == bits(torch.tensor([-0.5, 2.0, 0.0, -1.5]))
    with pytest.raises(ValueError, match="not an acceptor"):
        from_kaldifst(fst, acceptor=True)
    assert from_kaldifst(kaldifst.StdVectorFst()).num_states == 0
    one = to_kaldifst(from_str("0"))
    assert one.num_states == 1 and one.final(0).value == 0.0


def test_symbols_through_kaldifst_and_binary_files(tmp_path):
    fsa = from_str("0 1 1 2 0.5\n0 1 2 1 -0.25\n1 2 -1 -1 0.125\n2\n")
    fsa.labels_sym = SymbolTable.from_str("<eps> 0\na 1\nb 2\n")
    fsa.aux_labels_sym = SymbolTable.from_str("<eps> 0\nA 1\nB 2\n")
    fst = to_kaldifst(fsa)
    assert fst.input_symbols.find(1) == "a" and fst.output_symbols.find(2) == "B"
    path = tmp_path / "g.fst"
    write_fst(fsa, path)
    assert os.listdir(tmp_path) == ["g.fst"]  # no temp file left
    back = read_fst(path)
    assert_same(back, fsa)
    assert back.labels_sym == fsa.labels_sym and back.aux_labels_sym == fsa.aux_labels_sym
    # a const FST (as Kaldi writes HCLG.fst) reads too
    kaldifst.StdConstFst(to_kaldifst(fsa)).write(str(tmp_path / "c.fst"))
    assert_same(read_fst(tmp_path / "c.fst"), fsa)
    with pytest.raises(FileNotFoundError):
        read_fst(tmp_path / "missing.fst")
    (tmp_path / "junk.fst").write_bytes(b"not an fst")
    with pytest.raises(ValueError, match="junk.fst"):
        read_fst(tmp_path / "junk.fst")


def test_openfst_header_reader(tmp_path):
    """The one OpenFst header parser reads OpenFst's own files, writes the same header bytes,
    and names the file when the data is not an OpenFst FST or its header is cut short."""
    from wfst_asr.fsa._fstbin import Reader

    path = tmp_path / "g.fst"
    write_fst(from_str("0 1 3 0.5\n1 2 -1 0\n2\n"), path)
    data = path.read_bytes()
    r = Reader(data, name=str(path))
    h = r.header()
    assert (h.fst_type, h.arc_type, h.version, h.start, h.num_states) == \
        ("vector", "standard", 2, 0, 2)
    assert h.to_bytes() == data[:r.pos]
    with pytest.raises(ValueError, match=re.escape(f"{path}: not an OpenFst binary FST")):
        Reader(b"\0\0\0\0" + data[4:], name=str(path)).header()
    with pytest.raises(ValueError, match=re.escape(f"{path}: not an OpenFst binary FST")):
        Reader(data[:3], name=str(path)).header()
    for cut in (6, 10, r.pos - 1):
        with pytest.raises(ValueError, match=re.escape(f"{path}: unexpected end of data")):
            Reader(data[:cut], name=str(path)).header()


# ---------------------------------------------------------------------- torch format
def test_save_load(tmp_path):
    a = from_str("0 1 1 3 0.5\n1 2 -1 -1 0.25\n2\n")
    b = from_str("0 1 2 4 -1\n0 2 -1 -1 2\n1 2 -1 -1 0\n2\n")
    vec = create_fsa_vec([a, b])
    vec.frame_idx = torch.arange(vec.num_arcs)
    vec.labels_sym = SymbolTable.from_str("<eps> 0\na 1\nb 2\n")
    vec.note = "hello"
    vec.scores.requires_grad_(True)
    save(vec, tmp_path / "v.pt")
    assert os.listdir(tmp_path) == ["v.pt"]
    back = load(tmp_path / "v.pt")
    assert back.is_vec and back.num_fsas == 2
    assert back.num_states_per_fsa.tolist() == [3, 3]
    assert back.arc_splits.tolist() == vec.arc_splits.tolist()
    assert_same(back, vec)
    assert back.frame_idx.tolist() == list(range(vec.num_arcs))
    assert back.labels_sym == vec.labels_sym and back.note == "hello"
    save(a, tmp_path / "a.pt")
    assert_same(load(tmp_path / "a.pt"), a)
    assert not load(tmp_path / "a.pt").is_vec
    (tmp_path / "x.pt").write_bytes(b"")
    torch.save({"x": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an Fsa"):
        load(tmp_path / "x.pt")


# ---------------------------------------------------------------------- symbol tables
symbols = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF,
                                         blacklist_categories=("Z", "C")),
                  min_size=1, max_size=6)


@SETTINGS
@given(st.dictionaries(symbols, st.integers(0, 10**6), max_size=20).filter(
    lambda d: len(set(d.values())) == len(d)))
def test_symbol_table_round_trip(pairs):
    st_ = SymbolTable(pairs)
    back = SymbolTable.from_str(st_.to_str())
    assert back == st_ and len(back) == len(pairs)
    for sym, i in pairs.items():
        assert back[sym] == i and back[i] == sym and sym in back and i in back
    assert back.ids == sorted(pairs.values())
    assert back.symbols == [back[i] for i in back.ids]
    if max(pairs.values(), default=0) < 10**4:  # from_kaldifst scans ids 0..max
        assert SymbolTable.from_kaldifst(st_.to_kaldifst()) == st_


def test_symbol_table_api(tmp_path):
    t = SymbolTable.from_str("<eps> 0\na 1\n\nb\t2\n")
    assert t.eps == "<eps>" and t.get("a") == 1 and t.get(2) == "b" and len(t) == 3
    assert "c" not in t and 3 not in t
    assert t.add("c") == 3 and t.add("c") == 3 and t.add("z", 10) == 10
    with pytest.raises(ValueError, match="duplicate id"):
        t.add("y", 10)
    with pytest.raises(ValueError, match="duplicate symbol"):
        t.add("z", 11)
    with pytest.raises(KeyError):
        t["nope"]
    m = t.merge(SymbolTable.from_str("a 1\nq 20\n"))
    assert m["q"] == 20 and m["a"] == 1 and len(m) == 6
    with pytest.raises(ValueError):
        t.merge(SymbolTable.from_str("a 7\n"))
    p = tmp_path / "words.txt"
    t.to_file(p)
    assert SymbolTable.from_file(p) == t and os.listdir(tmp_path) == ["words.txt"]
    assert p.read_text().splitlines()[:2] == ["<eps> 0", "a 1"]


@pytest.mark.parametrize("text, line, what", [
    ("a 1\na 2\n", 2, "duplicate symbol"),
    ("a 1\nb 1\n", 2, "duplicate id"),
    ("a 1\nb x\n", 2, "not an integer"),
    ("a 1\n\nb 2 3\n", 3, "2 fields"),
    ("a\n", 1, "2 fields"),
    ("a -1\n", 1, "negative id"),
])
def test_symbol_table_malformed(tmp_path, text, line, what):
    with pytest.raises(ValueError, match=f"<string>:{line}: .*{what}"):
        SymbolTable.from_str(text)
    p = tmp_path / "words.txt"
    p.write_text(text)
    with pytest.raises(ValueError, match=f"{p}:{line}: "):
        SymbolTable.from_file(p)


# ---------------------------------------------------------------------- drawing
def _sym_fsa() -> Fsa:
    fsa = from_str("0 1 1 2 0.5\n0 1 2 1 -0.25\n1 2 -1 -1 0\n2\n")
    fsa.labels_sym = SymbolTable.from_str("<eps> 0\na 1\nb\" 2\n")
    return fsa


def test_to_dot_content():
    fsa = _sym_fsa()
    dot = to_dot(fsa, title="my graph")
    assert dot.startswith("digraph FSA {") and dot.rstrip().endswith("}")
    assert 'label = "my graph";' in dot
    assert '0 [label = "0", style = bold];' in dot
    assert '2 [label = "2", shape = doublecircle];' in dot
    assert '0 -> 1 [label = "a:2/0.5"];' in dot
    assert '0 -> 1 [label = "b\\":1/-0.25"];' in dot  # quote escaped
    assert '1 -> 2 [label = "-1:-1/0"];' in dot
    aux = SymbolTable.from_str("<eps> 0\nA 1\nB 2\n")
    assert '0 -> 1 [label = "a:B/0.5"];' in to_dot(fsa, aux_labels_sym=aux)
    acc = from_str("0 1 3 1.5\n1 2 -1 0\n2\n")
    assert '0 -> 1 [label = "3/1.5"];' in to_dot(acc)
    vec = to_dot(create_fsa_vec([acc, acc]))
    assert "subgraph cluster_1" in vec and "f1_0 -> f1_1" in vec


def test_draw_dot_file(tmp_path):
    p = tmp_path / "g.dot"
    src = draw(_sym_fsa(), p, title="t")
    assert p.read_text() == src and os.listdir(tmp_path) == ["g.dot"]
    with pytest.raises(ValueError, match="suffix"):
        draw(_sym_fsa(), tmp_path / "g.jpeg2")


def test_draw_without_dot_program(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        draw(_sym_fsa(), tmp_path / "g.svg")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz 'dot' not installed (apt-get install graphviz)")
@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_draw_rendered(tmp_path, suffix):
    p = tmp_path / f"g.{suffix}"
    draw(_sym_fsa(), p, title="t")
    data = p.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in data
    assert os.listdir(tmp_path) == [p.name]
