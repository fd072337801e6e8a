"""Fuzzing every parser with hypothesis (issue 12).

For each parser -- k2 and OpenFst text FSTs, OpenFst binary FSTs, ARPA files, lexicons, symbol
tables, TIMIT ``.phn`` files, lattice files and Kaldi lattice archives -- random input and
mutations of valid examples give either a correct parse (checked by a property of the result,
e.g. a round trip) or a clean error: a ValueError (the module's error classes derive from it)
naming the file where a file was read. Never another exception, a hang (every example runs
under a hard time limit, and hypothesis' deadline) or unbounded memory (the process' peak
resident memory may grow by at most 1 GB over the whole file).

Profiles: the default (CI) one runs a few dozen examples per parser with a fixed seed (the
whole file well under 60 s); ``WFST_ASR_FUZZ=long`` runs thousands per parser with a random
seed (``WFST_ASR_FUZZ_EXAMPLES=N`` sets the number), for a run by hand.
"""

from __future__ import annotations

import math
import os
import re
import resource
import signal
import struct
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from wfst_asr.decode.kaldi_lattice import (
    kaldi_archive_bytes,
    read_kaldi_lattices,
    write_kaldi_lattices,
)
from wfst_asr.decode.lattice_io import load_lattices, save_lattices
from wfst_asr.fsa import Fsa, SymbolTable, io
from wfst_asr.fsa._fstbin import const_bytes
from wfst_asr.graphs.lang import read_lexicon
from wfst_asr.graphs.ngram import estimate_ngram, read_arpa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "egs" / "timit" / "local"))
from timit_text import read_phn

LONG = os.environ.get("WFST_ASR_FUZZ") == "long"
EXAMPLES = int(os.environ.get("WFST_ASR_FUZZ_EXAMPLES", "5000" if LONG else "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), derandomize=not LONG,
                database=None, suppress_health_check=list(HealthCheck))
#: seconds one example may take before it counts as a hang (SIGALRM)
HANG_S = 20
MEMORY_GROWTH_KB = 1 << 20  # 1 GB


class Hang(Exception):
    """An example ran past :data:`HANG_S`."""


@contextmanager
def _time_limit(seconds: float):
    def fire(signum, frame):
        raise Hang(f"no answer after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parse_or_clean_error(fn, *args, path=None):
    """``fn(*args)``, or None when it raises a ValueError (naming ``path`` if given); any other
    exception, or a hang, fails the example."""
    with _time_limit(HANG_S):
        try:
            got = fn(*args)
        except ValueError as e:
            if path is not None:
                assert os.fspath(path) in str(e), f"the error does not name the file: {e}"
            event("clean error")
            return None
    event("parsed")
    return got


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < MEMORY_GROWTH_KB, f"peak memory grew by {grown} kB while fuzzing"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------- strategies
NASTY = ["0", "1", "2", "3", "-1", "-3", "+1", "007", "2147483647", "2147483648", "-2147483649",
         "99999999999999999999", "1e400", "-1e400", "1e-50", "nan", "NaN", "inf", "-inf",
         "Infinity", "-Infinity", "0.5", "-0.5", "1_0", "0x10", "a", "<eps>", "#0", "<s>",
         "</s>", "\\data\\", "\\1-grams:", "\\2-grams:", "\\end\\", "ngram", "ngram 1=2",
         "1=2", "=", "\u0661", "\u00b2", "\u00e9", "\ufeff", "\x00", "\x85", "\u2028"]
token = st.one_of(st.sampled_from(NASTY), st.integers(-5, 40).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.text(max_size=4))
sep = st.sampled_from([" ", "\t", "  ", " \t"])
eol = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\n\n"])


@st.composite
def token_text(draw) -> str:
    """Lines of nasty tokens."""
    lines = draw(st.lists(st.lists(token, max_size=7), max_size=10))
    return "".join(draw(sep).join(fields) + draw(eol) for fields in lines)


@st.composite
def mutated_text(draw, seeds: list[str]) -> str:
    """A valid example with a few fields or lines replaced, deleted or repeated."""
    lines = draw(st.sampled_from(seeds)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        lines = lines or [""]
        i = draw(st.integers(0, len(lines) - 1))
        fields = lines[i].split()
        op = draw(st.sampled_from(["field", "field", "drop-field", "add-field", "drop-line",
                                   "dup-line", "swap", "truncate"]))
        if op == "field" and fields:
            fields[draw(st.integers(0, len(fields) - 1))] = draw(token)
        elif op == "drop-field" and fields:
            del fields[draw(st.integers(0, len(fields) - 1))]
        elif op == "add-field":
            fields.insert(draw(st.integers(0, len(fields))), draw(token))
        elif op == "drop-line":
            del lines[i]
            continue
        elif op == "dup-line":
            lines.insert(i, lines[i])
            continue
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            continue
        elif op == "truncate":
            del lines[i:]
            lines.append("\t".join(fields[:draw(st.integers(0, len(fields)))]))
            continue
        lines[i] = draw(sep).join(fields)
    return "\n".join(lines)


@st.composite
def mutated_bytes(draw, seeds: list[bytes]) -> bytes:
    """A valid example with bits flipped, bytes inserted / deleted / repeated, an int32 or
    int64 overwritten with an extreme value, or the end cut off."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup", "int32", "int64",
                                   "truncate"]))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "dup":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 16))]
        elif op == "int32":
            v = draw(st.sampled_from([-1, 0, 1, 3, 255, 2 ** 20, 2 ** 31 - 1, -2 ** 31]))
            data[pos:pos + 4] = struct.pack("<i", v)
        elif op == "int64":
            v = draw(st.sampled_from([-1, 0, 1, 2 ** 20, 2 ** 40, 2 ** 62, -2 ** 63]))
            data[pos:pos + 8] = struct.pack("<q", v)
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def texts(seeds: list[str]):
    return st.one_of(st.text(max_size=200), token_text(), mutated_text(seeds))


def blobs(seeds: list[bytes]):
    return st.one_of(st.binary(max_size=200), mutated_bytes(seeds),
                     texts([s.decode("utf-8", "replace") for s in seeds]).map(
                         lambda t: t.encode("utf-8", "surrogatepass")))


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


# ---------------------------------------------------------------------- valid examples
K2_SEEDS = ["0 1 1 0.5\n1 2 -1 0\n2\n", "0 1 2 3 -1.25\n0 2 -1 -1 0\n1 2 -1 -1 0.5\n2\n",
            "0 0 1\n0 1 -1\n1\n", "0\n", "0 1 3 2\n1 2 -1 0\n0 2 -1 1e-3\n2\n"]
OPENFST_SEEDS = ["0\t1\t1\t0.5\n1\t2\t2\n2\t1.5\n", "0 1 1 2 0.25\n1 0 3 0\n1 0.5\n0\n",
                 "0\n", "3\t1\t1\t1\n1\n", "0 1 1\n1 1 2 2\n1\tInfinity\n"]


def _std_fst_seeds(work: Path) -> list[bytes]:
    """Vector FSTs written by OpenFst (one with a symbol table) and a const FST."""
    import numpy as np

    fsas = [io.from_openfst(t) for t in OPENFST_SEEDS[:2] + ["0 1 1 1 0.5\n1 2 2 3 1\n2\n"]]
    fsas[0].labels_sym = SymbolTable.from_str("<eps> 0\na 1\nb 2\n")
    out = []
    for fsa in fsas:
        io.write_fst(fsa, work / "seed.fst")
        out.append((work / "seed.fst").read_bytes())
    out.append(const_bytes(0, np.array([np.inf, 0.5], np.float32), np.array([0, 0]),
                           np.array([1, 2], np.int32), np.array([1, 2], np.int32),
                           np.array([0.5, 1.0], np.float32), np.array([1, 1], np.int32)))
    return out


def _arpa_seeds(work: Path) -> list[str]:
    corpus = [s.split() for s in ("a b c", "a c", "b b a c", "c")]
    out = []
    for order in (1, 2, 3):
        p = work / f"seed{order}.arpa"
        estimate_ngram(corpus, order).write_arpa(p)
        out.append(p.read_text())
    return out


LEXICON_SEEDS = ["yes y e s\nno n o\n", "yes 0.5 y e s\nyes 0.5 j e s\nno 1.0 n o\n",
                 "a a\n\nb b b\n"]
SYMBOL_SEEDS = ["<eps> 0\na 1\nb 2\n", "<blk> 0\nx\t5\n#0 6\n", ""]
PHN_SEEDS = ["0 3050 h#\n3050 4559 sh\n4559 5723 ix\n5723 6400 h#\n", "0 1 a\n"]


# ---------------------------------------------------------------------- the parsers
def _same(a: Fsa, b: Fsa) -> None:
    assert torch.equal(a.arcs, b.arcs)
    assert torch.equal(a.scores.view(torch.int32), b.scores.view(torch.int32)) or \
        torch.equal(a.scores, b.scores)
    assert a.has_attr("aux_labels") == b.has_attr("aux_labels")
    if a.has_attr("aux_labels"):
        assert torch.equal(a.aux_labels, b.aux_labels)


@pytest.mark.parametrize("parse, examples", [(io.from_str, K2_SEEDS),
                                             (io.from_openfst, OPENFST_SEEDS)],
                         ids=["k2", "openfst"])
@FUZZ
@given(data=st.data())
def test_fuzz_text_fst(parse, examples, data):
    text = data.draw(texts(examples))
    fsa = parse_or_clean_error(parse, text)
    if fsa is not None:
        lines = len(text.splitlines())
        assert fsa.num_states <= 2 * lines + 2 + io.MAX_STATE_GAP
        assert bool((fsa.labels >= -1).all())
        assert fsa.num_arcs == 0 or int(fsa.arcs[:, :2].max()) < fsa.num_states
        if parse is io.from_str:  # k2 text reads back exactly
            _same(fsa, io.from_str(io.to_str(fsa)))


@FUZZ
@given(blobs([s.encode() for s in K2_SEEDS + OPENFST_SEEDS]))
def test_fuzz_text_fst_files(work, data):
    path = _write(work / "fst.txt", data)
    parse_or_clean_error(io.from_file, path, path=path)
    parse_or_clean_error(io.from_openfst_file, path, path=path)


class Seeds(dict):
    """Valid examples by kind; printed briefly in hypothesis' reports."""

    def __repr__(self) -> str:
        return f"<valid examples: {', '.join(self)}>"


@pytest.fixture(scope="module")
def seeds(work) -> Seeds:
    """Valid binary FSTs and ARPA files, written by the code under test."""
    return Seeds(fst=_std_fst_seeds(work), arpa=_arpa_seeds(work))


@FUZZ
@given(data=st.data())
def test_fuzz_openfst_binary(work, seeds, data):
    blob = data.draw(st.one_of(mutated_bytes(seeds["fst"]), st.binary(max_size=120),
                               st.sampled_from(seeds["fst"])))
    path = _write(work / "G.fst", blob)
    fsa = parse_or_clean_error(io.read_fst, path, path=path)
    if fsa is not None:
        assert fsa.num_states <= len(blob) + 2  # every state costs bytes of the file
        assert bool((fsa.labels >= -1).all())


@FUZZ
@given(data=st.data())
def test_fuzz_arpa(work, seeds, data):
    blob = data.draw(blobs([s.encode() for s in seeds["arpa"]]))
    path = _write(work / "lm.arpa", blob)
    model = parse_or_clean_error(read_arpa, path, path=path)
    if model is not None:
        for n, (ids, probs) in enumerate(zip(model.ngrams, model.log10_probs), start=1):
            assert ids.shape == (probs.shape[0], n)
            assert ids.size == 0 or (0 <= ids.min() and ids.max() < len(model.vocab))
            assert all(math.isfinite(p) and p <= 1e-4 for p in probs.tolist())


@FUZZ
@given(blobs([s.encode() for s in LEXICON_SEEDS]))
def test_fuzz_lexicon(work, blob):
    path = _write(work / "lexicon.txt", blob)
    lex = parse_or_clean_error(read_lexicon, path, path=path)
    if lex is not None:
        for word, prob, tokens in lex:
            assert word and tokens and not any(c.isspace() for c in word)
            assert prob is None or 0.0 < prob <= 1.0


@FUZZ
@given(texts(SYMBOL_SEEDS))
def test_fuzz_symbol_table_text(text):
    table = parse_or_clean_error(SymbolTable.from_str, text)
    if table is not None:
        assert SymbolTable.from_str(table.to_str()) == table
        assert all(0 <= i < 2 ** 31 for i in table.ids)


@FUZZ
@given(blobs([s.encode() for s in SYMBOL_SEEDS]))
def test_fuzz_symbol_table_file(work, blob):
    path = _write(work / "words.txt", blob)
    parse_or_clean_error(SymbolTable.from_file, path, path=path)


@FUZZ
@given(blobs([s.encode() for s in PHN_SEEDS]))
def test_fuzz_timit_phn(work, blob):
    path = _write(work / "SA1.PHN", blob)
    labels = parse_or_clean_error(read_phn, work / "SA1", path=path)
    if labels is not None:
        assert all(isinstance(x, str) and x and not any(c.isspace() for c in x)
                   for x in labels)


@pytest.fixture(scope="module")
def lattice_seeds(work) -> Seeds:
    from tests.test_lattice import make_case

    lat = make_case(1)["lat"]
    save_lattices(work / "seed.pt", ["u1", "u2"], lat)
    spec = f"ark,t:{work / 'seed.txt.ark'}"
    write_kaldi_lattices(spec, [("u1", lat[0]), ("u2", lat[1])])
    write_kaldi_lattices(f"ark,t:{work / 'seedc.txt.ark'}", [("u1", lat[0])], compact=True)
    return Seeds(lat=lat, pt=(work / "seed.pt").read_bytes(),
                 obj=torch.load(work / "seed.pt", weights_only=True),
                 ark=[kaldi_archive_bytes([("u1", lat[0]), ("u2", lat[1])]),
                      kaldi_archive_bytes([("u1", lat[0])], compact=True),
                      (work / "seed.txt.ark").read_bytes(),
                      (work / "seedc.txt.ark").read_bytes()])


def _check_lattices(utts: list[str], lat: Fsa, header: dict) -> None:
    """What LatticeReader does with a file that loads: one lattice per id, each indexable."""
    assert len(utts) == lat.num_fsas
    for i in range(lat.num_fsas):
        assert lat[i].num_arcs == int(lat.arc_splits[i + 1] - lat.arc_splits[i])


@FUZZ
@given(data=st.data())
def test_fuzz_lattice_file_bytes(work, lattice_seeds, data):
    blob = data.draw(st.one_of(mutated_bytes([lattice_seeds["pt"]]), st.binary(max_size=100)))
    path = _write(work / "lat.pt", blob)
    got = parse_or_clean_error(load_lattices, path, path=path)
    if got is not None:
        _check_lattices(*got)


#: Lattice files no mutation above makes: a tensor that is a view of 1e9 rows over a storage of
#: one (a small file: must not be copied or scanned), a state count of 2^62 (must not be
#: allocated), a global torch refuses (its error without the weights_only advice).
@pytest.mark.parametrize("which, want", [
    ("expanded", "arcs has 3000000000 entries, more than the file holds"),
    ("num-states", "num_states must be >= 0, and not more than the file's size"),
    ("global", "not a lattice file (truncated or corrupt: UnpicklingError: Unsupported global"),
    ("truncated", "not a lattice file (truncated or corrupt: ")])
def test_lattice_file_crafted(work, lattice_seeds, which, want):
    path = work / "crafted.pt"
    obj, pt = lattice_seeds["obj"], lattice_seeds["pt"]
    if which == "truncated":
        _write(path, pt[:len(pt) // 2])
    else:
        torch.save({"expanded": {**obj, "arcs": torch.zeros(1, 3, dtype=torch.int32).expand(
                        10 ** 9, 3)},
                    "num-states": {**obj, "num_states": torch.tensor([2 ** 62, 2 ** 62])},
                    "global": {**obj, "x": re.compile("x")}}[which], path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {want}")) as e:
        load_lattices(path)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)


@st.composite
def mutated_lattice_obj(draw, obj: dict) -> dict:
    """The dict of a lattice file with some entries replaced by wrong types, shapes or
    values."""
    obj = dict(obj)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(obj)))
        v = obj[key]
        if isinstance(v, torch.Tensor) and v.numel():
            op = draw(st.sampled_from(["value", "value", "shape", "dtype", "empty"]))
            v = v.clone()
            if op == "value":
                i = draw(st.integers(0, v.numel() - 1))
                v.view(-1)[i] = draw(st.sampled_from([-5, -1, 0, 1, 7, 2 ** 20, 2 ** 31 - 1]))
            elif op == "shape":
                v = v.reshape(-1)[: draw(st.integers(0, v.numel()))]
            elif op == "dtype":
                v = v.double() if v.dtype != torch.float64 else v.long()
            else:
                v = v[:0]
            obj[key] = v
        else:
            obj[key] = draw(st.sampled_from([None, 0, -1, 1.5, "x", [], ["u1"], {}]))
    return obj


@FUZZ
@given(data=st.data())
def test_fuzz_lattice_file_fields(work, lattice_seeds, data):
    obj = data.draw(mutated_lattice_obj(lattice_seeds["obj"]))
    path = work / "latf.pt"
    torch.save(obj, path)
    got = parse_or_clean_error(load_lattices, path, path=path)
    if got is not None:
        _check_lattices(*got)


@FUZZ
@given(data=st.data())
def test_fuzz_kaldi_archive(work, lattice_seeds, data):
    blob = data.draw(blobs(lattice_seeds["ark"]))
    path = _write(work / "lat.ark", blob)
    got = parse_or_clean_error(lambda p: list(read_kaldi_lattices(f"ark:{p}")), path, path=path)
    if got is not None:
        for key, lat in got:
            assert key and lat.has_attr("lm_scores")


def _bad_next_state(lattice_seeds) -> bytes:
    """A binary Lattice entry whose first arc goes to state 259 of 33."""
    from wfst_asr.fsa._fstbin import Reader

    good = kaldi_archive_bytes([("u1", lattice_seeds["lat"][0])])
    r = Reader(good, good.index(b" \0B") + 3)
    r.header()
    at = r.pos + 16 + 16  # first state: 2 floats, int64 arc count; first arc: 4 fields, then
    return good[:at] + struct.pack("<i", 259) + good[at + 4:]


#: Found by the long run (WFST_ASR_FUZZ=long) in wfst_asr/decode/kaldi_lattice.py, now fixed:
#: an arc to a state beyond the lattice's states was an IndexError, an archive key that is not
#: UTF-8 a UnicodeDecodeError without the file name.
@pytest.mark.parametrize("which", ["next-state-out-of-range", "key-not-utf8"])
def test_kaldi_archive_found_by_the_long_run(work, lattice_seeds, which):
    blob = (_bad_next_state(lattice_seeds) if which == "next-state-out-of-range"
            else b"\xf51 \n0\t1\t1\t1\t1,1\n1\t0,0\n\n")
    path = _write(work / "found.ark", blob)
    want = "entry u1: an arc of state 0 goes to state 259" if which.startswith("next") \
        else "the archive key at byte 0 is not UTF-8"
    with pytest.raises(ValueError, match=re.escape(f"{path}: {want}")):
        list(read_kaldi_lattices(f"ark:{path}"))


#: Kaldi text entries no mutation above makes: a state far beyond the lines (must not be
#: allocated), a next state < 0 (once wrapped around to the last state), an int32 overflow.
@pytest.mark.parametrize("body, want", [
    ("0\t2000000000\t1\t1\t1,1\n2000000000\t0,0", "state 2000000000 is far beyond"),
    ("0\t1\t1\t1\t1,1\n1\t-1\t1\t1\t1,1\n1\t0,0", "state -1 is out of range"),
    ("0\t1\t1\t4294967297\t1,1\n1\t0,0", "output label 4294967297 is out of range")])
def test_kaldi_archive_crafted(work, body, want):
    path = _write(work / "crafted.ark", f"k1 \n{body}\n\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: entry k1: {want}")):
        list(read_kaldi_lattices(f"ark:{path}"))
