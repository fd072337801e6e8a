"""Lattice files: wfst_asr's own format, lattice directories, and Kaldi lattice archives.

Lattice files (``.pt``)
-----------------------
:func:`save_lattices` writes the lattices of a batch (an FsaVec from
:func:`~wfst_asr.decode.lattice.get_lattice`) with ``torch.save`` (atomically), as a dict read
back with ``torch.load(weights_only=True)``:

====================  ====================================================================
``format``            ``"wfst_asr.lattices"``; ``version``: 1
``utt_ids``           list of N utterance ids, in FSA order
``words_checksum``    :func:`symbol_table_checksum` of the word table (``aux_labels``) or None
``tokens_checksum``   the same for the token table (``labels``) or None
``lm_scale``          float; ``word_penalty``: float (they made ``scores``)
``num_states``        int64 ``[N]``; ``arc_splits``: int64 ``[N+1]``
``arcs``              int32 ``[A, 3]`` (src, dst, label), states local to each lattice
``aux_labels``        int32 ``[A]``; ``frame_idx``: int32 ``[A]``
``am_scores``         float32 ``[A]``; ``lm_scores``: float32 ``[A]``
====================  ====================================================================

``scores`` are not stored: :func:`load_lattices` recomputes them from ``am_scores``,
``lm_scores``, ``lm_scale`` and ``word_penalty`` (bitwise the same as when written).

Lattice directories
-------------------
:class:`LatticeWriter` writes one file per batch and, when closed, the index; a directory is::

    meta.json        {"format": "wfst_asr.lattice_dir", "version": 1, "num_utterances",
                      "num_files", "words_checksum", "tokens_checksum", "lm_scale",
                      "word_penalty", ... (the writer's ``meta``: frame_shift, subsampling, ...)}
    index.tsv        utt_id <TAB> file <TAB> position in the file, one line per utterance
    words.txt        the word table, when the writer was given one (tokens.txt likewise)
    lat.00000.pt     lattice files (above), one per write() call

Every file is written atomically, and ``index.tsv`` / ``meta.json`` only by ``close()``: a
directory without them is incomplete and :class:`LatticeReader` refuses it. The reader yields
one lattice per utterance, or a :class:`LatticeError` naming the utterance for a lattice that
cannot be used: a missing, truncated or corrupt file (``kind`` "corrupt"), a file written with
another word table than the one expected ("symbol-table"), an empty lattice ("empty").

Kaldi lattice archives
----------------------
:func:`write_kaldi_lattices` writes a Kaldi table archive (``ark:``; ``text=True`` for
``ark,t:``) of ``Lattice`` (arc type ``lattice4``) or ``CompactLattice`` (``compactlattice44``)
entries, byte for byte what Kaldi's ``LatticeWriter`` / ``CompactLatticeWriter`` write:
``key + " \\0B" + `` an OpenFst binary ``vector`` FST (``key + " \\n"`` + printed arcs + a blank
line in text mode). Kaldi's lattice weight is the pair (graph cost, acoustic cost) =
``(-lm_scores, -am_scores)``, unscaled (apply ``--acoustic-scale=1/lm_scale`` and
``--word-ins-penalty`` in Kaldi's tools to get this toolkit's ``scores``). Input labels are
``label + ilabel_offset`` (default 1: Kaldi's input label 0 is epsilon, a frame-consuming CTC
blank must not be), output labels the word ids; -1 arcs become final weights. States keep their
numbers (start 0). A ``Lattice`` has one arc per lattice arc; a ``CompactLattice`` is the same
acceptor over words with each arc's input label as its one-element string (not determinized:
``lattice-determinize`` in Kaldi does that). The OpenFst header's properties field holds only
``kExpanded | kMutable`` (every other property "unknown", which OpenFst recomputes on demand),
and its arc count is 0, as OpenFst leaves it when it writes a VectorFst whose states it
counted first (so the bytes equal kaldifst's / Kaldi's but for the properties).

:func:`read_kaldi_lattices` reads such archives back (both types, binary or text; a Kaldi
``CompactLattice`` arc with a longer string becomes a chain of arcs, its word and weight on the
first); :func:`to_kaldifst_lattice` gives a ``kaldifst.Lattice`` object (through an OpenFst
binary file) for kaldifst's lattice functions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from wfst_asr.atomic import atomic_output, atomic_write_text
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.fsa.io import format_float32

from .lattice import LATTICE_ATTRS, _scales, check_lattice, combine_scores

__all__ = [
    "FILE_FORMAT",
    "LatticeError",
    "LatticeReader",
    "LatticeWriter",
    "kaldi_archive_bytes",
    "load_lattices",
    "read_kaldi_lattices",
    "read_meta",
    "save_lattices",
    "symbol_table_checksum",
    "to_kaldifst_lattice",
    "write_kaldi_lattices",
]

PathLike = str | os.PathLike
FILE_FORMAT = "wfst_asr.lattices"
DIR_FORMAT = "wfst_asr.lattice_dir"
VERSION = 1
_INDEX = "index.tsv"
_META = "meta.json"


class LatticeError(ValueError):
    """A lattice that cannot be used; ``utt`` names the utterance, ``kind`` is one of
    ``"corrupt"`` (missing, truncated or unreadable file), ``"symbol-table"`` (written with
    another word table), ``"empty"`` (no path), ``"format"`` (not a lattice file)."""

    def __init__(self, utt: str | None, kind: str, message: str) -> None:
        self.utt = utt
        self.kind = kind
        super().__init__(f"utterance {utt}: {message}" if utt is not None else message)


def symbol_table_checksum(table: SymbolTable | PathLike | None) -> str | None:
    """SHA-256 (hex) of a symbol table's canonical text (``symbol id`` lines sorted by id);
    None for None. Two tables with the same pairs have the same checksum."""
    if table is None:
        return None
    if not isinstance(table, SymbolTable):
        table = SymbolTable.from_file(table)
    return hashlib.sha256(table.to_str().encode("utf-8")).hexdigest()


def _short(checksum: str | None) -> str:
    return "none" if checksum is None else checksum[:12]


# ---------------------------------------------------------------------- .pt files
def _table_checksum_of(lattices: Fsa, attr: str) -> str | None:
    t = lattices._other_attrs.get(attr)
    return symbol_table_checksum(t) if isinstance(t, SymbolTable) else None


def save_lattices(path: PathLike, utt_ids: Sequence[str], lattices: Fsa,
                  words_checksum: str | None = None, tokens_checksum: str | None = None) -> None:
    """Write the lattices of a batch to ``path`` atomically (format: the module docstring).

    ``words_checksum`` / ``tokens_checksum`` default to the checksums of the lattices'
    ``aux_labels_sym`` / ``labels_sym`` when they have them.
    """
    lat = lattices.as_vec()
    check_lattice(lat)
    if len(utt_ids) != lat.num_fsas:
        raise ValueError(f"{len(utt_ids)} utterance ids for {lat.num_fsas} lattices")
    if len(set(utt_ids)) != len(utt_ids):
        raise ValueError("duplicate utterance ids in one batch")
    lm_scale, wp = _scales(lat)
    obj = {
        "format": FILE_FORMAT, "version": VERSION, "utt_ids": [str(u) for u in utt_ids],
        "words_checksum": words_checksum or _table_checksum_of(lat, "aux_labels_sym"),
        "tokens_checksum": tokens_checksum or _table_checksum_of(lat, "labels_sym"),
        "lm_scale": lm_scale, "word_penalty": wp,
        "num_states": lat.num_states_per_fsa.cpu().to(torch.int64),
        "arc_splits": lat.arc_splits.cpu().to(torch.int64),
        "arcs": lat.arcs.cpu().to(torch.int32),
        "aux_labels": lat.aux_labels.detach().cpu().to(torch.int32),
        "frame_idx": lat.frame_idx.detach().cpu().to(torch.int32),
        "am_scores": lat.am_scores.detach().cpu().to(torch.float32),
        "lm_scores": lat.lm_scores.detach().cpu().to(torch.float32),
    }
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _check_obj(obj: Any, path: str) -> None:
    if not isinstance(obj, dict) or obj.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not a lattice file written by wfst_asr (format "
                         f"{obj.get('format') if isinstance(obj, dict) else type(obj).__name__})")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path}: lattice file version {obj.get('version')}, this wfst_asr "
                         f"reads version {VERSION}")
    n = len(obj["utt_ids"])
    A = obj["arcs"].shape[0]
    if obj["arcs"].dim() != 2 or obj["arcs"].shape[1] != 3:
        raise ValueError(f"{path}: arcs must be [A, 3]")
    if obj["num_states"].shape != (n,) or obj["arc_splits"].shape != (n + 1,):
        raise ValueError(f"{path}: num_states / arc_splits do not match {n} utterances")
    if int(obj["arc_splits"][0]) != 0 or int(obj["arc_splits"][-1]) != A or bool(
            (obj["arc_splits"][1:] < obj["arc_splits"][:-1]).any()):
        raise ValueError(f"{path}: arc_splits are not offsets of {A} arcs")
    for k in LATTICE_ATTRS:
        if obj[k].shape != (A,):
            raise ValueError(f"{path}: {k} must have shape [{A}]")


def load_lattices(path: PathLike, validate: bool = True) -> tuple[list[str], Fsa, dict]:
    """Read a lattice file: ``(utt_ids, lattices FsaVec, header)``; ``header`` holds the
    checksums, ``lm_scale`` and ``word_penalty``. Raises ValueError / OSError / RuntimeError for
    a file that is not one, or is truncated (see :class:`LatticeReader` for per-utterance
    errors)."""
    path = os.fspath(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    _check_obj(obj, path)
    lm_scale, wp = float(obj["lm_scale"]), float(obj["word_penalty"])
    aux = obj["aux_labels"]
    scores = combine_scores(obj["am_scores"], obj["lm_scores"], aux, lm_scale, wp)
    lat = Fsa(obj["arcs"], scores, num_states=obj["num_states"], arc_splits=obj["arc_splits"],
              validate=validate, aux_labels=aux, am_scores=obj["am_scores"],
              lm_scores=obj["lm_scores"], frame_idx=obj["frame_idx"], lm_scale=lm_scale,
              word_penalty=wp)
    header = {k: obj.get(k) for k in ("words_checksum", "tokens_checksum", "lm_scale",
                                      "word_penalty", "version")}
    return list(obj["utt_ids"]), lat, header


# ---------------------------------------------------------------------- directories
class LatticeWriter:
    """Write a lattice directory (layout: the module docstring), one file per :meth:`write`.

    Args:
      out_dir: created if needed; refused if it already holds an index (unless
        ``overwrite``: then its old lattice files are replaced as new ones are written).
      words, tokens: the symbol tables (copied into the directory; their checksums go into
        every file); default: the first batch's ``aux_labels_sym`` / ``labels_sym``.
      meta: extra JSON values for ``meta.json`` (e.g. ``frame_shift``, ``subsampling``).

    Use as a context manager, or call :meth:`close`; the directory is complete only then.
    """

    def __init__(self, out_dir: PathLike, words: SymbolTable | None = None,
                 tokens: SymbolTable | None = None, meta: dict | None = None,
                 overwrite: bool = False) -> None:
        self.dir = Path(out_dir)
        if (self.dir / _INDEX).exists() and not overwrite:
            raise FileExistsError(f"{self.dir} already holds lattices ({_INDEX}); choose another "
                                  "directory or pass overwrite=True")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.words, self.tokens = words, tokens
        self.meta = dict(meta or {})
        self.index: list[tuple[str, str, int]] = []
        self._seen: set[str] = set()
        self._files = 0
        self._scales: tuple[float, float] | None = None
        self.closed = False

    def write(self, utt_ids: Sequence[str], lattices: Fsa) -> None:
        """Write one batch (an FsaVec with one lattice per id) as the next file."""
        if self.closed:
            raise ValueError("the LatticeWriter is closed")
        lat = lattices.as_vec()
        dup = [u for u in utt_ids if u in self._seen]
        if dup:
            raise ValueError(f"utterance {dup[0]} was already written to {self.dir}")
        if any("\t" in u or "\n" in u or not u for u in utt_ids):
            raise ValueError("utterance ids must be non-empty without tabs or newlines")
        table = lat._other_attrs.get("aux_labels_sym")
        if isinstance(table, SymbolTable):
            if self.words is None:
                self.words = table
            elif symbol_table_checksum(table) != symbol_table_checksum(self.words):
                raise ValueError(f"the lattices' word table (aux_labels_sym) differs from the "
                                 f"one {self.dir} is written with")
        if self.tokens is None and isinstance(lat._other_attrs.get("labels_sym"), SymbolTable):
            self.tokens = lat.labels_sym
        name = f"lat.{self._files:05d}.pt"
        save_lattices(self.dir / name, utt_ids, lat, symbol_table_checksum(self.words),
                      symbol_table_checksum(self.tokens))
        self._files += 1
        for i, u in enumerate(utt_ids):
            self.index.append((u, name, i))
            self._seen.add(u)
        if self._scales is None:
            self._scales = _scales(lat)

    def close(self) -> None:
        """Write the symbol tables, ``meta.json`` and ``index.tsv`` (atomically)."""
        if self.closed:
            return
        if self.words is not None:
            self.words.to_file(self.dir / "words.txt")
        if self.tokens is not None:
            self.tokens.to_file(self.dir / "tokens.txt")
        lm_scale, wp = self._scales or (1.0, 0.0)
        meta = {"format": DIR_FORMAT, "version": VERSION,
                "num_utterances": len(self.index), "num_files": self._files,
                "words_checksum": symbol_table_checksum(self.words),
                "tokens_checksum": symbol_table_checksum(self.tokens),
                "lm_scale": lm_scale, "word_penalty": wp}
        meta.update(self.meta)
        atomic_write_text(self.dir / _META, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        atomic_write_text(self.dir / _INDEX,
                          "".join(f"{u}\t{f}\t{i}\n" for u, f, i in self.index))
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def read_meta(lat_dir: PathLike) -> dict:
    """``meta.json`` of a lattice directory (ValueError when it is not a complete one)."""
    d = Path(lat_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such lattice directory")
    for name in (_META, _INDEX):
        if not (d / name).is_file():
            raise ValueError(f"{d}: no {name}: not a lattice directory, or its writer did not "
                             "finish")
    meta = json.loads((d / _META).read_text(encoding="utf-8"))
    if meta.get("format") != DIR_FORMAT:
        raise ValueError(f"{d}/{_META}: not a wfst_asr lattice directory")
    return meta


class _FileError:
    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message


class LatticeReader:
    """Read a lattice directory utterance by utterance.

    Args:
      lat_dir: a directory written by :class:`LatticeWriter`.
      words: the word table the caller will use (a :class:`SymbolTable` or a path); every file
        must have been written with it (same checksum), else its utterances give a
        "symbol-table" :class:`LatticeError`. Default: the directory's own ``words.txt``.
      empty_ok: yield empty lattices as they are instead of an "empty" LatticeError.

    Iterating yields ``(utt_id, lattice)`` in index order, where ``lattice`` is a single
    :class:`Fsa` or a :class:`LatticeError` (the caller counts and skips those).
    """

    def __init__(self, lat_dir: PathLike, words: SymbolTable | PathLike | None = None,
                 empty_ok: bool = False) -> None:
        self.dir = Path(lat_dir)
        self.meta = read_meta(self.dir)
        if words is not None and not isinstance(words, SymbolTable):
            words = SymbolTable.from_file(words)
        if words is None and (self.dir / "words.txt").is_file():
            words = SymbolTable.from_file(self.dir / "words.txt")
        self.words: SymbolTable | None = words
        self.expected_checksum = (symbol_table_checksum(words) if words is not None
                                  else self.meta.get("words_checksum"))
        self.empty_ok = empty_ok
        self.index: list[tuple[str, str, int]] = []
        text = (self.dir / _INDEX).read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), start=1):
            f = line.split("\t")
            if len(f) != 3:
                raise ValueError(f"{self.dir / _INDEX}:{n}: expected 'utt<TAB>file<TAB>pos'")
            self.index.append((f[0], f[1], int(f[2])))
        self._cache: tuple[str, Any] | None = None

    @property
    def utt_ids(self) -> list[str]:
        return [u for u, _, _ in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def _load_file(self, name: str):
        if self._cache is not None and self._cache[0] == name:
            return self._cache[1]
        path = self.dir / name
        try:
            res: Any = load_lattices(path)
        except FileNotFoundError:
            res = _FileError("corrupt", f"lattice file {path} is missing")
        except (ValueError, KeyError, TypeError) as e:
            res = _FileError("format", f"lattice file {path} is not a valid lattice file: {e}")
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # truncated
            first = str(e).splitlines()[0] if str(e) else ""
            res = _FileError("corrupt", f"cannot read lattice file {path} (truncated or "
                                        f"corrupt): {type(e).__name__}: {first}")
        self._cache = (name, res)
        return res

    def _get(self, utt: str, name: str, pos: int) -> Fsa | LatticeError:
        res = self._load_file(name)
        if isinstance(res, _FileError):
            return LatticeError(utt, res.kind, res.message)
        ids, lat, header = res
        if pos >= len(ids) or ids[pos] != utt:
            return LatticeError(utt, "format", f"{self.dir / name} does not hold this "
                                "utterance at the position the index gives")
        have = header.get("words_checksum")
        if self.expected_checksum is not None and have is not None \
                and have != self.expected_checksum:
            return LatticeError(utt, "symbol-table",
                                f"{self.dir / name} was written with another word table "
                                f"(checksum {_short(have)}, expected "
                                f"{_short(self.expected_checksum)})")
        one = lat[pos]
        if one.num_arcs == 0 and not self.empty_ok:
            return LatticeError(utt, "empty", "empty lattice (no path survived the beam)")
        return one

    def __iter__(self) -> Iterator[tuple[str, Fsa | LatticeError]]:
        for utt, name, pos in self.index:
            yield utt, self._get(utt, name, pos)

    def read(self, utt: str) -> Fsa:
        """The lattice of one utterance (raises its :class:`LatticeError`)."""
        for u, name, pos in self.index:
            if u == utt:
                res = self._get(u, name, pos)
                if isinstance(res, LatticeError):
                    raise res
                return res
        raise KeyError(f"{utt}: not in {self.dir / _INDEX}")


# ---------------------------------------------------------------------- Kaldi archives
_FST_MAGIC = 2125659606
_PROPS = 0x3  # kExpanded | kMutable: every other property unknown
_INF = np.float32(np.inf)
_LAT_ARC = np.dtype([("i", "<i4"), ("o", "<i4"), ("w1", "<f4"), ("w2", "<f4"), ("n", "<i4")])
_LAT_HDR = np.dtype([("f1", "<f4"), ("f2", "<f4"), ("narcs", "<i8")])
_CL_ARC = np.dtype([("i", "<i4"), ("o", "<i4"), ("w1", "<f4"), ("w2", "<f4"), ("slen", "<i4"),
                    ("s", "<i4"), ("n", "<i4")])
_CL_HDR = np.dtype([("f1", "<f4"), ("f2", "<f4"), ("slen", "<i4"), ("narcs", "<i8")])
LATTICE_ARC_TYPE = "lattice4"
COMPACT_ARC_TYPE = "compactlattice44"


def _kstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<i", len(b)) + b


def _lattice_parts(lat: Fsa, ilabel_offset: int):
    """Regular arcs (in order) and per-state final weights of ONE lattice, as numpy arrays."""
    check_lattice(lat)
    ns = lat.num_states
    F = max(ns - 1, 0)  # OpenFst states: all but the k2 final state
    lab = lat.labels.cpu().long().numpy()
    reg = lab != -1
    src = lat.arcs[:, 0].cpu().long().numpy()
    dst = lat.arcs[:, 1].cpu().long().numpy()
    aux = lat.aux_labels.cpu().long().numpy()
    g = (-lat.lm_scores.detach().cpu().float().numpy() + np.float32(0.0)).astype(np.float32)
    a = (-lat.am_scores.detach().cpu().float().numpy() + np.float32(0.0)).astype(np.float32)
    if bool((aux[reg] < 0).any()):
        raise ValueError("a lattice arc has a negative aux_label (OpenFst labels are >= 0)")
    il = lab[reg] + ilabel_offset
    if il.size and int(il.min()) < 0:
        raise ValueError("input labels + ilabel_offset must be >= 0")
    f1 = np.full(F, _INF, dtype=np.float32)
    f2 = np.full(F, _INF, dtype=np.float32)
    fin = np.nonzero(~reg)[0]
    if fin.size:
        # several -1 arcs from one state: keep the best (lowest total cost)
        order = fin[np.argsort(-(g[fin] + a[fin]), kind="stable")]
        f1[src[order]] = g[order]
        f2[src[order]] = a[order]
    return F, src[reg], dst[reg], il, aux[reg], g[reg], a[reg], f1, f2


def _fst_bytes(lat: Fsa, compact: bool, ilabel_offset: int) -> bytes:
    """One lattice as an OpenFst binary ``vector`` FST of arc type lattice4 / compactlattice44."""
    F, src, dst, il, ol, g, a, f1, f2 = _lattice_parts(lat, ilabel_offset)
    arc_type = COMPACT_ARC_TYPE if compact else LATTICE_ARC_TYPE
    head = (struct.pack("<i", _FST_MAGIC) + _kstr("vector") + _kstr(arc_type)
            + struct.pack("<iiQqqq", 2, 0, _PROPS, 0 if F else -1, F, 0))
    if F == 0:
        return head
    narcs = np.bincount(src, minlength=F).astype(np.int64)
    hdt, adt = (_CL_HDR, _CL_ARC) if compact else (_LAT_HDR, _LAT_ARC)
    hdr = np.zeros(F, dtype=hdt)
    hdr["f1"], hdr["f2"], hdr["narcs"] = f1, f2, narcs
    arcs = np.zeros(src.size, dtype=adt)
    arcs["i"] = ol if compact else il
    arcs["o"] = ol
    arcs["w1"], arcs["w2"], arcs["n"] = g, a, dst
    if compact:
        arcs["slen"] = 1
        arcs["s"] = il
    sizes = hdt.itemsize + narcs * adt.itemsize
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    buf = np.zeros(int(sizes.sum()), dtype=np.uint8)
    buf[offs[:, None] + np.arange(hdt.itemsize)] = hdr.view(np.uint8).reshape(F, hdt.itemsize)
    if src.size:
        first = np.concatenate([[0], np.cumsum(narcs)[:-1]])
        rank = np.arange(src.size) - first[src]
        pos = offs[src] + hdt.itemsize + rank * adt.itemsize
        buf[pos[:, None] + np.arange(adt.itemsize)] = arcs.view(np.uint8).reshape(
            src.size, adt.itemsize)
    return head + buf.tobytes()


def _fst_text(lat: Fsa, compact: bool, ilabel_offset: int) -> str:
    """The arcs and finals of one lattice as Kaldi's text form (fstprint with pair weights)."""
    F, src, dst, il, ol, g, a, f1, f2 = _lattice_parts(lat, ilabel_offset)
    gs, as_ = format_float32(torch.from_numpy(g)), format_float32(torch.from_numpy(a))
    fs1 = format_float32(torch.from_numpy(f1), openfst=True)
    fs2 = format_float32(torch.from_numpy(f2), openfst=True)
    by_state: list[list[str]] = [[] for _ in range(F)]
    for k in range(src.size):
        if compact:
            by_state[src[k]].append(f"{src[k]}\t{dst[k]}\t{ol[k]}\t{gs[k]},{as_[k]},{il[k]}\n")
        else:
            by_state[src[k]].append(f"{src[k]}\t{dst[k]}\t{il[k]}\t{ol[k]}\t{gs[k]},{as_[k]}\n")
    lines = []
    for q in range(F):
        lines.extend(by_state[q])
        if np.isfinite(f1[q]):
            lines.append(f"{q}\t{fs1[q]},{fs2[q]}" + ("," if compact else "") + "\n")
    return "".join(lines)


def _parse_wspecifier(spec: PathLike) -> tuple[str, bool]:
    s = os.fspath(spec)
    m = re.match(r"^ark(,[a-z]+)*:(.*)$", s)
    if m is None:
        return s, False
    opts = s[:s.index(":")].split(",")[1:]
    return m.group(2), "t" in opts


def write_kaldi_lattices(spec: PathLike, items: Iterable[tuple[str, Fsa]], compact: bool = False,
                         text: bool | None = None, ilabel_offset: int = 1) -> int:
    """Write ``(key, lattice)`` pairs to a Kaldi archive (atomically); returns the count.

    Args:
      spec: a path, or ``ark:PATH`` / ``ark,t:PATH`` (``t``: text mode).
      items: keys (no whitespace) and single lattices (or FsaVecs of one).
      compact: CompactLattice entries (else Lattice).
      text: text mode (default: binary unless ``spec`` says ``ark,t:``).
      ilabel_offset: added to every input label (see the module docstring).
    """
    path, text_spec = _parse_wspecifier(spec)
    text = text_spec if text is None else text
    n = 0
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for key, lat in items:
            if not key or any(c.isspace() for c in key):
                raise ValueError(f"invalid archive key {key!r}")
            one = lat[0] if lat.is_vec else lat
            if text:
                f.write(f"{key} \n".encode() + _fst_text(one, compact, ilabel_offset).encode()
                        + b"\n")
            else:
                f.write(key.encode() + b" \0B" + _fst_bytes(one, compact, ilabel_offset))
            n += 1
    return n


class _Buf:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("unexpected end of data (truncated archive?)")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def kstr(self) -> str:
        (n,) = self.unpack("<i")
        if n < 0 or n > 256:
            raise ValueError(f"bad string length {n} in an OpenFst header")
        return self.take(n).decode()


def _read_fst_binary(buf: _Buf) -> tuple[str, int, list]:
    """Parse one OpenFst binary vector FST of lattice type: ``(arc type, start, states)`` with
    states ``[(final (g, a, string) or None, [(ilabel, olabel, g, a, string, next), ...])]``."""
    (magic,) = buf.unpack("<i")
    if magic != _FST_MAGIC:
        raise ValueError("not an OpenFst binary FST (bad magic number)")
    fst_type, arc_type = buf.kstr(), buf.kstr()
    if fst_type != "vector":
        raise ValueError(f"FST type {fst_type!r}: only 'vector' lattices are read")
    if arc_type not in (LATTICE_ARC_TYPE, COMPACT_ARC_TYPE):
        raise ValueError(f"arc type {arc_type!r} is not a Kaldi lattice (lattice4 or "
                         "compactlattice44)")
    _version, flags, _props, start, ns, _na = buf.unpack("<iiQqqq")
    if flags & 3:  # HAS_ISYMBOLS / HAS_OSYMBOLS
        raise ValueError("lattices with symbol tables in the FST header are not supported")
    compact = arc_type == COMPACT_ARC_TYPE
    if ns < 0:
        raise ValueError("FST header without a state count (not supported)")
    states = []
    for _ in range(ns):
        if compact:
            f1, f2, slen = buf.unpack("<ffi")
            fstr = list(buf.unpack(f"<{slen}i")) if slen else []
        else:
            f1, f2 = buf.unpack("<ff")
            fstr = []
        (narcs,) = buf.unpack("<q")
        if not compact:
            arr = np.frombuffer(buf.take(narcs * _LAT_ARC.itemsize), dtype=_LAT_ARC)
            arcs = [(int(r["i"]), int(r["o"]), float(r["w1"]), float(r["w2"]), None, int(r["n"]))
                    for r in arr]
        else:
            arcs = []
            for _ in range(narcs):
                i, o, w1, w2, slen = buf.unpack("<iiffi")
                s = list(buf.unpack(f"<{slen}i")) if slen else []
                (nxt,) = buf.unpack("<i")
                arcs.append((i, o, w1, w2, s, nxt))
        final = None if (f1 == np.inf and f2 == np.inf) else (f1, f2, fstr)
        states.append((final, arcs))
    return arc_type, int(start), states


def _parse_weight(tok: str, compact: bool) -> tuple[float, float, list[int]]:
    parts = tok.split(",")
    if compact:
        if len(parts) != 3:
            raise ValueError(f"bad CompactLattice weight {tok!r}")
        s = [int(x) for x in parts[2].split("_") if x] if parts[2] else []
    else:
        if len(parts) != 2:
            raise ValueError(f"bad Lattice weight {tok!r}")
        s = []

    def f(x: str) -> float:
        special = {"Infinity": float("inf"), "-Infinity": float("-inf")}
        return special[x] if x in special else float(np.float32(x))
    return f(parts[0]), f(parts[1]), s


def _read_fst_text(lines: list[str]) -> tuple[str, int, list]:
    """Parse Kaldi's text form of a Lattice / CompactLattice (as :func:`_read_fst_binary`).

    Lines: Lattice arcs ``src dst ilabel olabel [g,a]``, CompactLattice arcs ``src dst word
    [g,a,t1_t2_...]``, finals ``state [weight]`` (a missing weight is One)."""
    rows = [ln.split() for ln in lines]
    compact = False
    for r in rows:
        if len(r) == 5:
            break
        if len(r) == 3 or (len(r) == 4 and "," in r[3]) or (len(r) == 2 and r[1].count(",") == 2):
            compact = True
            break
    arcs_of: dict[int, list] = {}
    finals: dict[int, tuple] = {}
    max_state = -1
    start = int(rows[0][0]) if rows else -1
    for r in rows:
        q = int(r[0])
        max_state = max(max_state, q)
        if len(r) >= 3:
            if len(r) > (4 if compact else 5):
                raise ValueError(f"bad lattice line: {' '.join(r)!r}")
            d = int(r[1])
            max_state = max(max_state, d)
            if compact:
                w = _parse_weight(r[3], True) if len(r) == 4 else (0.0, 0.0, [])
                arcs_of.setdefault(q, []).append((int(r[2]), int(r[2]), w[0], w[1], w[2], d))
            else:
                if len(r) < 4:
                    raise ValueError(f"bad lattice line: {' '.join(r)!r}")
                w = _parse_weight(r[4], False) if len(r) == 5 else (0.0, 0.0, [])
                arcs_of.setdefault(q, []).append((int(r[2]), int(r[3]), w[0], w[1], None, d))
        else:
            finals[q] = _parse_weight(r[1], compact) if len(r) == 2 else (0.0, 0.0, [])
    states = [(finals.get(q), arcs_of.get(q, [])) for q in range(max_state + 1)]
    return (COMPACT_ARC_TYPE if compact else LATTICE_ARC_TYPE), start, states


def _states_to_fsa(arc_type: str, start: int, states: list, ilabel_offset: int) -> Fsa:
    """Kaldi lattice states -> a lattice Fsa (start 0, final last, frame_idx from the
    topology)."""
    compact = arc_type == COMPACT_ARC_TYPE
    ns = len(states)
    if ns == 0 or start < 0:
        return _empty_lattice()
    ren = list(range(ns))
    ren[0], ren[start] = start, 0
    next_state = ns  # chain states for CompactLattice strings
    rows: list[tuple[int, int, int, int, float, float]] = []  # src dst label aux lm am
    fin_rows: list[tuple[int, float, float]] = []

    def chain(q: int, d: int | None, word: int, g: float, a: float, s: list[int]) -> int:
        nonlocal next_state
        cur = q
        for k, tid in enumerate(s):
            last = k == len(s) - 1
            nxt = d if (last and d is not None) else next_state
            if nxt == next_state:
                next_state += 1
            rows.append((cur, nxt, tid - ilabel_offset, word if k == 0 else 0,
                         -g if k == 0 else 0.0, -a if k == 0 else 0.0))
            cur = nxt
        return cur

    for q_old, (final, arcs) in enumerate(states):
        q = ren[q_old]
        for i, o, w1, w2, s, d_old in arcs:
            d = ren[d_old]
            if compact:
                if not s:
                    raise ValueError("a CompactLattice arc without input symbols (a word that "
                                     "consumes no frame) cannot be a frame-level lattice arc")
                chain(q, d, o, w1, w2, s)
            else:
                if i < ilabel_offset:
                    raise ValueError(f"input label {i} < ilabel_offset {ilabel_offset}: "
                                     "epsilon input arcs are not frame-level lattice arcs")
                rows.append((q, d, i - ilabel_offset, o, -w1, -w2))
        if final is not None:
            g, a, s = final
            end = chain(q, None, 0, 0.0, 0.0, s) if s else q
            fin_rows.append((end, -g, -a))
    total = next_state
    final_state = total
    all_rows = rows + [(q, final_state, -1, -1, g, a) for q, g, a in fin_rows]
    src = torch.tensor([r[0] for r in all_rows], dtype=torch.int64)
    order = torch.sort(src, stable=True).indices
    t = torch.tensor([r[:4] for r in all_rows], dtype=torch.int64).reshape(-1, 4)[order]
    lm = (torch.tensor([r[4] for r in all_rows], dtype=torch.float32) + 0.0)[order]
    am = (torch.tensor([r[5] for r in all_rows], dtype=torch.float32) + 0.0)[order]
    arcs = t[:, :3].to(torch.int32)
    aux = t[:, 3].to(torch.int32)
    fsa = Fsa(arcs, combine_scores(am, lm, aux, 1.0, 0.0), num_states=total + 1,
              aux_labels=aux, am_scores=am, lm_scores=lm,
              frame_idx=torch.zeros(len(all_rows), dtype=torch.int32), lm_scale=1.0,
              word_penalty=0.0)
    fsa.frame_idx = _frames_from_topology(fsa)
    return fsa


def _frames_from_topology(fsa: Fsa) -> torch.Tensor:
    """frame_idx of every arc: the number of regular arcs before it on any path; ValueError when
    paths to a state disagree (not a frame-synchronous lattice)."""
    if fsa.num_arcs == 0:
        return torch.zeros(0, dtype=torch.int32)
    lv = fsa.state_levels()
    src, dst = fsa.arcs[:, 0].long(), fsa.arcs[:, 1].long()
    reg = fsa.labels != -1
    frame = torch.full((fsa.num_states,), -1, dtype=torch.int64)
    frame[0] = 0
    order = torch.sort(lv[src], stable=True).indices.tolist()
    s_l, d_l, r_l = src.tolist(), dst.tolist(), reg.tolist()
    fr = frame.tolist()
    for k in order:
        if not r_l[k] or fr[s_l[k]] < 0:
            continue
        want = fr[s_l[k]] + 1
        if fr[d_l[k]] < 0:
            fr[d_l[k]] = want
        elif fr[d_l[k]] != want:
            raise ValueError(f"state {d_l[k]} is reached after {fr[d_l[k]]} and after {want} "
                             "frames: not a frame-synchronous lattice")
    return torch.tensor([fr[s] for s in s_l], dtype=torch.int32)


def _empty_lattice() -> Fsa:
    z = torch.zeros(0, dtype=torch.float32)
    zi = torch.zeros(0, dtype=torch.int32)
    return Fsa(torch.zeros(0, 3, dtype=torch.int32), z, num_states=0, aux_labels=zi,
               am_scores=z, lm_scores=z.clone(), frame_idx=zi.clone(), lm_scale=1.0,
               word_penalty=0.0)


def read_kaldi_lattices(spec: PathLike, ilabel_offset: int = 1) -> Iterator[tuple[str, Fsa]]:
    """Read a Kaldi lattice archive (``Lattice`` or ``CompactLattice`` entries, binary or text;
    ``ark:``/``ark,t:`` prefixes allowed): yields ``(key, lattice Fsa)`` with ``lm_scores`` =
    -graph cost, ``am_scores`` = -acoustic cost, ``labels`` = input label - ``ilabel_offset``,
    ``frame_idx`` from the topology, ``lm_scale`` 1 and ``word_penalty`` 0."""
    path, _ = _parse_wspecifier(spec)
    with open(path, "rb") as f:
        data = f.read()
    buf = _Buf(data)
    while True:
        while buf.pos < len(data) and data[buf.pos:buf.pos + 1].isspace():
            buf.pos += 1
        if buf.pos >= len(data):
            return
        sp = data.find(b" ", buf.pos)
        nl = data.find(b"\n", buf.pos)
        if sp < 0 or (0 <= nl < sp):
            raise ValueError(f"{path}: bad archive key at byte {buf.pos}")
        key = data[buf.pos:sp].decode()
        buf.pos = sp + 1
        try:
            if data[buf.pos:buf.pos + 2] == b"\0B":
                buf.pos += 2
                arc_type, start, states = _read_fst_binary(buf)
            else:
                end = data.find(b"\n\n", buf.pos)
                end = len(data) if end < 0 else end
                body = data[buf.pos:end].decode()
                lines = [ln for ln in body.split("\n") if ln.strip()]
                buf.pos = end + 2
                arc_type, start, states = _read_fst_text(lines)
            lat = _states_to_fsa(arc_type, start, states, ilabel_offset)
        except ValueError as e:
            raise ValueError(f"{path}: entry {key}: {e}") from None
        yield key, lat


def to_kaldifst_lattice(lattice: Fsa, ilabel_offset: int = 1):
    """ONE lattice as a ``kaldifst.Lattice`` (weights (graph cost, acoustic cost), see the
    module docstring), through an OpenFst binary file read by kaldifst."""
    from wfst_asr import _kaldi

    kf = _kaldi.kaldifst()
    one = lattice[0] if lattice.is_vec else lattice
    data = _fst_bytes(one, compact=False, ilabel_offset=ilabel_offset)
    fd, tmp = tempfile.mkstemp(suffix=".fst")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        out = kf.Lattice.read(tmp)
    finally:
        os.unlink(tmp)
    if out is None:
        raise RuntimeError("kaldifst could not read the lattice written for it")
    return out


def kaldi_archive_bytes(items: Iterable[tuple[str, Fsa]], compact: bool = False,
                        ilabel_offset: int = 1) -> bytes:
    """The bytes of a binary archive (as :func:`write_kaldi_lattices`), in memory."""
    out = io.BytesIO()
    for key, lat in items:
        one = lat[0] if lat.is_vec else lat
        out.write(key.encode() + b" \0B" + _fst_bytes(one, compact, ilabel_offset))
    return out.getvalue()
