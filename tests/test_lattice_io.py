"""Lattice files and directories (wfst_asr.decode.lattice_io) and Kaldi lattice archives
(wfst_asr.decode.kaldi_lattice).

Kaldi archives are checked against kaldifst: its ``Lattice.read`` reads what we write (every
arc and final weight, bit for bit), our bytes equal those of a ``kaldifst.Lattice`` built arc by
arc and written by kaldifst (but for the properties field of the header), and a CompactLattice
entry equals bytes packed here from the format's description."""

from __future__ import annotations

import json
import re
import struct

import pytest
import torch

from tests.lattice_reference import lattice_paths
from tests.test_lattice import make_case
from wfst_asr import _kaldi
from wfst_asr.decode.kaldi_lattice import (
    kaldi_archive_bytes,
    read_kaldi_lattices,
    to_kaldifst_lattice,
    write_kaldi_lattices,
)
from wfst_asr.decode.lattice import best_paths, rescale
from wfst_asr.decode.lattice_io import (
    LatticeError,
    LatticeReader,
    LatticeWriter,
    load_lattices,
    save_lattices,
    symbol_table_checksum,
)
from wfst_asr.fsa import Fsa, SymbolTable, create_fsa_vec

WORDS = SymbolTable.from_str("<eps> 0\na 1\nb 2\nc 3\n")
OTHER = SymbolTable.from_str("<eps> 0\na 1\nb 2\nd 3\n")


@pytest.fixture(scope="module")
def case():
    return make_case(1)


def _same(a: Fsa, b: Fsa, frames: bool = True) -> None:
    assert torch.equal(a.arcs, b.arcs)
    assert torch.equal(a.num_states_per_fsa, b.num_states_per_fsa)
    assert torch.equal(a.aux_labels.int(), b.aux_labels.int())
    assert torch.equal(a.am_scores, b.am_scores)
    assert torch.equal(a.lm_scores, b.lm_scores)
    if frames:
        assert torch.equal(a.frame_idx.int(), b.frame_idx.int())


# ---------------------------------------------------------------------- .pt files, directories
def test_save_load_exact(case, tmp_path):
    lat = case["lat"]
    save_lattices(tmp_path / "a.pt", ["u1", "u2"], lat, words_checksum="abc")
    ids, back, header = load_lattices(tmp_path / "a.pt")
    assert ids == ["u1", "u2"]
    _same(back, lat)
    assert torch.equal(back.scores, lat.scores)
    assert torch.equal(back.arc_splits, lat.arc_splits)
    assert back.lm_scale == lat.lm_scale and back.word_penalty == lat.word_penalty
    assert header["words_checksum"] == "abc"
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_checksum():
    assert symbol_table_checksum(WORDS) == symbol_table_checksum(WORDS.copy())
    assert symbol_table_checksum(WORDS) != symbol_table_checksum(OTHER)
    assert symbol_table_checksum(None) is None


def test_directory_round_trip(case, tmp_path):
    lat = case["lat"]
    d = tmp_path / "lats"
    with LatticeWriter(d, words=WORDS, meta={"frame_shift": 0.01, "subsampling": 3}) as w:
        w.write(["u1", "u2"], lat)
        w.write(["u3"], lat[1].as_vec())
        with pytest.raises(ValueError, match="u1"):
            w.write(["u1"], lat[0].as_vec())
    meta = json.loads((d / "meta.json").read_text())
    assert meta["num_utterances"] == 3 and meta["num_files"] == 2
    assert meta["subsampling"] == 3 and meta["words_checksum"] == symbol_table_checksum(WORDS)
    assert SymbolTable.from_file(d / "words.txt") == WORDS
    r = LatticeReader(d)
    assert r.utt_ids == ["u1", "u2", "u3"]
    got = list(r)
    for (utt, one), want in zip(got, [lat[0], lat[1], lat[1]]):
        assert not isinstance(one, LatticeError), one
        _same(one, want)
        assert torch.equal(one.scores, want.scores)
    _same(r.read("u2"), lat[1])
    with pytest.raises(FileExistsError):
        LatticeWriter(d)


def _bad_dir(lat, tmp_path):
    d = tmp_path / "bad"
    with LatticeWriter(d, words=WORDS) as w:
        w.write(["ok1", "ok2"], lat)
        w.write(["trunc1", "trunc2"], lat)
        w.write(["other"], lat[0].as_vec())
        w.write(["empty"], _empty_like(lat))
    data = (d / "lat.00001.pt").read_bytes()
    (d / "lat.00001.pt").write_bytes(data[: len(data) // 2])
    save_lattices(d / "lat.00002.pt", ["other"], lat[0].as_vec(),
                  words_checksum=symbol_table_checksum(OTHER))
    return d


def _empty_like(lat):
    one = lat[0]
    idx = torch.zeros(0, dtype=torch.int64)
    e = one.index_arcs(idx, torch.zeros(0, 3, dtype=torch.int32), None, 0)
    return create_fsa_vec([e])


def test_bad_lattices_are_reported_by_utterance(case, tmp_path):
    d = _bad_dir(case["lat"], tmp_path)
    res = dict(LatticeReader(d))
    assert not isinstance(res["ok1"], LatticeError) and not isinstance(res["ok2"], LatticeError)
    for utt, kind in (("trunc1", "corrupt"), ("trunc2", "corrupt"), ("other", "symbol-table"),
                      ("empty", "empty")):
        err = res[utt]
        assert isinstance(err, LatticeError), utt
        assert err.kind == kind and err.utt == utt
        assert f"utterance {utt}:" in str(err)
    assert "truncated" in str(res["trunc1"])
    assert "another word table" in str(res["other"])
    # empty lattices can be asked for; a reader given the other table rejects the good files
    assert dict(LatticeReader(d, empty_ok=True))["empty"].num_states == 0
    res2 = dict(LatticeReader(d, words=OTHER))
    assert res2["ok1"].kind == "symbol-table"
    assert not isinstance(res2["other"], LatticeError)
    with pytest.raises(LatticeError, match="trunc1"):
        LatticeReader(d).read("trunc1")


def test_incomplete_directory_is_refused(case, tmp_path):
    d = tmp_path / "inc"
    w = LatticeWriter(d, words=WORDS)
    w.write(["u1", "u2"], case["lat"])  # never closed: no index.tsv
    with pytest.raises(ValueError, match="writer did not finish"):
        LatticeReader(d)
    with pytest.raises(FileNotFoundError):
        LatticeReader(tmp_path / "nothing")


# ---------------------------------------------------------------------- Kaldi archives
def _lattice_arcs_kaldifst(kl):
    """(state, ilabel, olabel, graph, acoustic, next) of every arc, finals, of a kaldifst
    Lattice, iterated with kaldifst."""
    kf = _kaldi.kaldifst()
    arcs, finals = [], {}
    for q in range(kl.num_states):
        it = kf.lib._kaldifst._ArcIteratorLattice(kl, q)
        while not it.done:
            a = it.value
            arcs.append((q, a.ilabel, a.olabel, a.weight.value1, a.weight.value2, a.nextstate))
            it.next()
        w = kl.final(q)
        if w.value1 != float("inf"):
            finals[q] = (w.value1, w.value2)
    return arcs, finals


def _expected_arcs(one, offset=1):
    """The same lists computed from the lattice's tensors (costs = -scores as float32)."""
    arcs, finals = [], {}
    lab, aux = one.labels.tolist(), one.aux_labels.tolist()
    src, dst = one.arcs[:, 0].tolist(), one.arcs[:, 1].tolist()
    g = (-one.lm_scores.float() + 0.0).tolist()
    a = (-one.am_scores.float() + 0.0).tolist()
    for k in range(one.num_arcs):
        if lab[k] == -1:
            finals[src[k]] = (g[k], a[k])
        else:
            arcs.append((src[k], lab[k] + offset, aux[k], g[k], a[k], dst[k]))
    return arcs, finals


def _entry_fst_bytes(path, key):
    data = path.read_bytes()
    prefix = key.encode() + b" \0B"
    assert data.startswith(prefix)
    return data[len(prefix):]


def test_kaldi_lattice_read_by_kaldifst(case, tmp_path):
    kf = _kaldi.kaldifst()
    for b in range(2):
        one = case["lat"][b]
        ark = tmp_path / f"l{b}.ark"
        assert write_kaldi_lattices(f"ark:{ark}", [(f"utt{b}", one)]) == 1
        fst = tmp_path / f"l{b}.fst"
        fst.write_bytes(_entry_fst_bytes(ark, f"utt{b}"))
        kl = kf.Lattice.read(str(fst))
        assert kl is not None and kl.start == 0
        assert kl.num_states == one.num_states - 1
        assert _lattice_arcs_kaldifst(kl) == _expected_arcs(one)
        # the same bytes as kaldifst writes for a Lattice built arc by arc (properties aside)
        built = kf.Lattice()
        for _ in range(one.num_states - 1):
            built.add_state()
        built.start = 0
        arcs, finals = _expected_arcs(one)
        for q, i, o, g, a, n in arcs:
            built.add_arc(q, kf.LatticeArc(i, o, kf.LatticeWeight(g, a), n))
        for q, (g, a) in finals.items():
            built.set_final(q, kf.LatticeWeight(g, a))
        ref_path = tmp_path / f"ref{b}.fst"
        built.write(str(ref_path))
        mine, theirs = fst.read_bytes(), ref_path.read_bytes()
        props = 4 + (4 + 6) + (4 + 8) + 4 + 4  # magic, "vector", "lattice4", version, flags
        assert len(mine) == len(theirs)
        assert mine[:props] == theirs[:props] and mine[props + 8:] == theirs[props + 8:]


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("text", [False, True])
def test_kaldi_archive_round_trip_exact(case, tmp_path, compact, text):
    lat = case["lat"]
    spec = f"ark{',t' if text else ''}:{tmp_path / 'x.ark'}"
    write_kaldi_lattices(spec, [("u1", lat[0]), ("u2", lat[1])], compact=compact)
    got = dict(read_kaldi_lattices(spec))
    assert list(got) == ["u1", "u2"]
    for key, b in (("u1", 0), ("u2", 1)):
        _same(got[key], lat[b])
        assert torch.equal(got[key].scores, rescale(lat[b], 1.0, 0.0).scores)


def test_compact_lattice_bytes_from_the_format():
    # 0 -(token 2, word 5)-> 1 -(token 0, no word)-> 2 -> final ; Kaldi ilabel = token + 1
    arcs = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 3, -1]], dtype=torch.int32)
    am = torch.tensor([-1.5, -0.25, 0.0])
    lm = torch.tensor([-2.0, 0.0, -0.5])
    aux = torch.tensor([5, 0, -1], dtype=torch.int32)
    lat = Fsa(arcs, am + lm, num_states=4, aux_labels=aux, am_scores=am, lm_scores=lm,
              frame_idx=torch.tensor([0, 1, 2], dtype=torch.int32))

    def s(x):
        return struct.pack("<i", len(x)) + x.encode()
    inf = float("inf")
    want = (struct.pack("<i", 2125659606) + s("vector") + s("compactlattice44")
            + struct.pack("<iiQqqq", 2, 0, 3, 0, 3, 0)  # numarcs 0, as OpenFst writes
            # state 0: final Zero (inf, inf, no string), 1 arc: word 5, (2.0, 1.5), [3], -> 1
            + struct.pack("<ffiq", inf, inf, 0, 1) + struct.pack("<iiffiii", 5, 5, 2.0, 1.5, 1, 3, 1)
            # state 1: 1 arc: epsilon word, (0, 0.25), [1], -> 2
            + struct.pack("<ffiq", inf, inf, 0, 1) + struct.pack("<iiffiii", 0, 0, 0.0, 0.25, 1, 1, 2)
            # state 2: final (0.5, 0, no string), no arcs
            + struct.pack("<ffiq", 0.5, 0.0, 0, 0))
    assert kaldi_archive_bytes([("k", lat)], compact=True) == b"k \0B" + want
    lat_want = (struct.pack("<i", 2125659606) + s("vector") + s("lattice4")
                + struct.pack("<iiQqqq", 2, 0, 3, 0, 3, 0)
                + struct.pack("<ffq", inf, inf, 1) + struct.pack("<iiffi", 3, 5, 2.0, 1.5, 1)
                + struct.pack("<ffq", inf, inf, 1) + struct.pack("<iiffi", 1, 0, 0.0, 0.25, 2)
                + struct.pack("<ffq", 0.5, 0.0, 0))
    assert kaldi_archive_bytes([("k", lat)]) == b"k \0B" + lat_want


def test_text_archive_lines(case, tmp_path):
    one = case["lat"][0]
    p = tmp_path / "t.ark"
    write_kaldi_lattices(f"ark,t:{p}", [("u1", one)])
    lines = p.read_text().split("\n")
    assert lines[0] == "u1 "
    f = lines[1].split("\t")
    assert len(f) == 5 and f[0] == "0" and "," in f[4]
    assert lines[-2:] == ["", ""]  # entry ends with a blank line


def test_compact_lattice_with_strings_expands_to_chains(tmp_path):
    # a Kaldi-style CompactLattice: arc 0->1 word 7 with tids [3, 3, 1], final with tids [1]
    p = tmp_path / "c.ark"
    p.write_text("k \n0\t1\t7\t1.5,2.5,3_3_1\n1\t0.5,0.25,1\n\n")
    (key, lat), = list(read_kaldi_lattices(p))
    assert key == "k"
    (path,) = lattice_paths(lat)
    assert path["labels"] == [2, 2, 0, 0, -1]
    assert path["words"] == [7]
    assert path["frames"] == [0, 1, 2, 3, 4]
    assert float(lat.am_scores.sum()) == pytest.approx(-2.75)
    assert float(lat.lm_scores.sum()) == pytest.approx(-2.0)


def test_to_kaldifst_lattice_best_path_agrees(case):
    """kaldifst's shortest path over the Lattice semiring (graph + acoustic cost) finds our best
    path at lm_scale 1, word_penalty 0, with the same split."""
    kf = _kaldi.kaldifst()
    for b in range(2):
        one = rescale(case["lat"][b], 1.0, 0.0)
        kl = to_kaldifst_lattice(one)
        best = kf.shortest_path(kl, n=1)
        ok, isyms, osyms, w = kf.get_linear_symbol_sequence(best)
        assert ok
        path = best_paths(one)
        assert [x - 1 for x in isyms] == path.labels.tolist()[:-1]
        assert [x for x in osyms if x] == [x for x in path.aux_labels.tolist() if x > 0]
        assert w.value1 == pytest.approx(-float(path.lm_scores.double().sum()), abs=1e-4)
        assert w.value2 == pytest.approx(-float(path.am_scores.double().sum()), abs=1e-4)


def test_archive_errors(case, tmp_path):
    p = tmp_path / "bad.ark"
    p.write_bytes(b"k \0B" + struct.pack("<i", 12345))
    with pytest.raises(ValueError, match=re.escape(f"{p}: entry k: not an OpenFst binary FST")):
        list(read_kaldi_lattices(p))
    # a truncated header, a truncated body: the error names the file and the entry
    good = kaldi_archive_bytes([("u1", case["lat"][0])])
    for cut in (20, len(good) - 3):
        p.write_bytes(good[:cut])
        with pytest.raises(ValueError, match=re.escape(f"{p}: entry u1: unexpected end of data")):
            list(read_kaldi_lattices(p))
    # epsilon input labels cannot be frame-level lattice arcs
    p.write_text("k \n0\t1\t0\t5\t1,1\n1\t0,0\n\n")
    with pytest.raises(ValueError, match="epsilon"):
        list(read_kaldi_lattices(p))


def test_writer_refuses_lattices_of_another_word_table(case, tmp_path):
    lat = case["lat"].clone()
    lat.aux_labels_sym = OTHER
    with pytest.raises(ValueError, match="word table"):
        LatticeWriter(tmp_path / "w", words=WORDS).write(["u1", "u2"], lat)
    # without an explicit table the lattices' own is used
    with LatticeWriter(tmp_path / "w2") as w:
        w.write(["u1", "u2"], lat)
    assert SymbolTable.from_file(tmp_path / "w2" / "words.txt") == OTHER
