"""Lattice files: wfst_asr's own format and lattice directories.

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

Every file is written atomically into a staging folder inside the directory and moved in by
``close()``, ``index.tsv`` last (the old index is removed first): a directory without it is
incomplete and :class:`LatticeReader` refuses it, and a writer may replace the directory it
reads (an in-place ``lattice-prune``). A corrupt ``meta.json`` or ``index.tsv`` is a
ValueError naming the file and line. The reader yields
one lattice per utterance, or a :class:`LatticeError` naming the utterance for a lattice that
cannot be used: a missing, truncated or corrupt file (``kind`` "corrupt"), a file written with
another word table than the one expected ("symbol-table"), an empty lattice ("empty").

Kaldi lattice archives (``Lattice`` / ``CompactLattice`` tables, weights (graph cost, acoustic
cost)) are :mod:`.kaldi_lattice`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import torch

from wfst_asr.atomic import atomic_output, atomic_write_text
from wfst_asr.fsa import Fsa, SymbolTable

from .lattice import LATTICE_ATTRS, _scales, check_lattice, combine_scores

__all__ = [
    "FILE_FORMAT",
    "LatticeError",
    "LatticeReader",
    "LatticeWriter",
    "load_lattices",
    "read_meta",
    "save_lattices",
    "symbol_table_checksum",
]

PathLike = str | os.PathLike
FILE_FORMAT = "wfst_asr.lattices"
DIR_FORMAT = "wfst_asr.lattice_dir"
VERSION = 1
_INDEX = "index.tsv"
_META = "meta.json"
_STAGE = ".tmp-lattices-"


class LatticeError(ValueError):
    """A lattice that cannot be used; ``utt`` names the utterance (None: a whole lattice file,
    from :func:`load_lattices`, whose message names the file), ``kind`` is one of
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


_ZIP_MAGIC = b"PK\x03\x04"
#: what torch.load raises for a file that is not a (complete) torch zip archive
_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError,
                TypeError, KeyError, IndexError, AttributeError, OverflowError, ImportError,
                AssertionError, struct.error, MemoryError)
#: dtype and number of dimensions of the tensors of a lattice file
_TENSORS = {"num_states": (torch.int64, 1), "arc_splits": (torch.int64, 1),
            "arcs": (torch.int32, 2), "aux_labels": (torch.int32, 1),
            "frame_idx": (torch.int32, 1), "am_scores": (torch.float32, 1),
            "lm_scores": (torch.float32, 1)}


def _what(v: Any) -> str:
    """A short description of a bad value for an error message (never its whole repr)."""
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:40] + "...")
    if isinstance(v, (int, float)) or v is None:
        return repr(v)
    return type(v).__name__


def _reason(e: BaseException) -> str:
    """One short line for torch.load's error (not its advice about ``weights_only``)."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    line = m.group(1) if m else next((ln for ln in text.splitlines() if ln.strip()), "")
    line = line.split(". ")[0].strip()  # the first sentence: what, not the advice
    if "weights_only" in line or "weights only" in line.lower():
        line = ""
    line = line[:120]
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _torch_load(path: str) -> tuple[Any, int]:
    """``torch.load`` of a torch zip archive whose records all lie within the file (so nothing
    is allocated beyond its size), and the file's size; LatticeError ``"corrupt"`` naming
    ``path`` otherwise."""
    def corrupt(reason: str) -> LatticeError:
        return LatticeError(None, "corrupt", f"{path}: not a lattice file (truncated or "
                                             f"corrupt: {reason})")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(4) != _ZIP_MAGIC:
            raise corrupt("not a torch zip archive")
        try:
            with zipfile.ZipFile(f) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, ValueError, OSError, OverflowError, EOFError,
                struct.error) as e:
            raise corrupt(_reason(e)) from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > size \
                or info.header_offset + info.file_size > size:
            raise corrupt(f"record {_what(info.filename)} is compressed or reaches beyond "
                          "the end of the file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 255": an error follows
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True), size
    except _LOAD_ERRORS as e:
        raise corrupt(_reason(e)) from None


def _check_obj(obj: Any, path: str, size: int) -> None:
    """LatticeError ``"format"`` naming ``path`` unless ``obj`` is the dict of a lattice file
    (the module docstring) whose tensors are consistent, with no tensor (nor state count)
    larger than the file's ``size`` in bytes."""
    def bad(message: str) -> LatticeError:
        return LatticeError(None, "format", f"{path}: {message}")
    if not isinstance(obj, dict) or not isinstance(obj.get("format"), str) \
            or obj["format"] != FILE_FORMAT:
        got = _what(obj.get("format")) if isinstance(obj, dict) else type(obj).__name__
        raise bad(f"not a lattice file written by wfst_asr (format {got})")
    if type(obj.get("version")) is not int or obj["version"] != VERSION:
        raise bad(f"lattice file version {_what(obj.get('version'))}, this wfst_asr reads "
                  f"version {VERSION}")
    missing = [k for k in ("utt_ids", "lm_scale", "word_penalty", *_TENSORS) if k not in obj]
    if missing:
        raise bad(f"no {', '.join(missing)} in the lattice file")
    ids = obj["utt_ids"]
    if not isinstance(ids, list) or not all(isinstance(u, str) for u in ids):
        raise bad(f"utt_ids must be a list of strings, not {_what(ids)}")
    if len(set(ids)) != len(ids):
        raise bad("duplicate utterance ids")
    for k in ("words_checksum", "tokens_checksum"):
        if not isinstance(obj.get(k), str | None):
            raise bad(f"{k} must be a string or None, not {_what(obj[k])}")
    for k in ("lm_scale", "word_penalty"):
        if type(obj[k]) not in (int, float):
            raise bad(f"{k} must be a number, not {_what(obj[k])}")
    for k, (dtype, dim) in _TENSORS.items():
        t = obj[k]
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.dtype != dtype \
                or t.dim() != dim:
            what = (f"{t.dtype} {t.dim()}-d tensor" if isinstance(t, torch.Tensor)
                    else _what(t))
            raise bad(f"{k} must be a {dim}-d {dtype} tensor, not {what}")
        if t.numel() * t.element_size() > size:
            raise bad(f"{k} has {t.numel()} entries, more than the file holds")
    n, A = len(ids), obj["arcs"].shape[0]
    ns, splits, arcs = obj["num_states"], obj["arc_splits"], obj["arcs"]
    if arcs.shape[1] != 3:
        raise bad(f"arcs must be [A, 3], not {list(arcs.shape)}")
    if ns.shape != (n,) or splits.shape != (n + 1,):
        raise bad(f"num_states / arc_splits do not match {n} utterances")
    if bool(((ns < 0) | (ns > size)).any()) or int(ns.sum()) > size:
        raise bad("num_states must be >= 0, and not more than the file's size in all")
    if int(splits[0]) != 0 or int(splits[-1]) != A or bool((splits[1:] < splits[:-1]).any()):
        raise bad(f"arc_splits are not offsets of {A} arcs")
    for k in LATTICE_ATTRS:
        if obj[k].shape != (A,):
            raise bad(f"{k} must have shape [{A}], not {list(obj[k].shape)}")
    if A:
        ns_of_arc = torch.repeat_interleave(ns, splits.diff())
        states = arcs[:, :2].long()
        wrong = ((states < 0) | (states >= ns_of_arc[:, None])).any(dim=1) | (arcs[:, 2] < -1)
        if bool(wrong.any()):
            i = int(wrong.nonzero()[0])
            raise bad(f"arc {i} {arcs[i].tolist()}: state out of range or label < -1")


def load_lattices(path: PathLike, validate: bool = True) -> tuple[list[str], Fsa, dict]:
    """Read a lattice file: ``(utt_ids, lattices FsaVec, header)``; ``header`` holds the
    checksums, ``lm_scale`` and ``word_penalty``.

    A file that is not a lattice file, or is truncated or corrupt, is a :class:`LatticeError`
    (a ValueError; ``kind`` "corrupt" when torch cannot read it, "format" when what it holds is
    not a lattice file) naming ``path``; OSError when it cannot be opened. Every tensor is
    checked (dtype, shape, states within their lattice) before the lattices are built, and
    ``validate`` checks them as FSAs too (:class:`~wfst_asr.fsa.Fsa`).
    """
    path = os.fspath(path)
    obj, size = _torch_load(path)
    _check_obj(obj, path, size)
    lm_scale, wp = float(obj["lm_scale"]), float(obj["word_penalty"])
    aux = obj["aux_labels"]
    scores = combine_scores(obj["am_scores"], obj["lm_scores"], aux, lm_scale, wp)
    try:
        lat = Fsa(obj["arcs"], scores, num_states=obj["num_states"],
                  arc_splits=obj["arc_splits"], validate=validate, aux_labels=aux,
                  am_scores=obj["am_scores"], lm_scores=obj["lm_scores"],
                  frame_idx=obj["frame_idx"], lm_scale=lm_scale, word_penalty=wp)
    except ValueError as e:
        raise LatticeError(None, "format", f"{path}: {e}") from None
    header = {k: obj.get(k) for k in ("words_checksum", "tokens_checksum", "lm_scale",
                                      "word_penalty", "version")}
    return list(obj["utt_ids"]), lat, header


# ---------------------------------------------------------------------- directories
class LatticeWriter:
    """Write a lattice directory (layout: the module docstring), one file per :meth:`write`.

    Args:
      out_dir: created if needed; refused if it already holds an index (unless
        ``overwrite``: then its lattices are replaced when the writer closes).
      words, tokens: the symbol tables (copied into the directory; their checksums go into
        every file); default: the first batch's ``aux_labels_sym`` / ``labels_sym``.
      meta: extra JSON values for ``meta.json`` (e.g. ``frame_shift``, ``subsampling``).

    Everything is written into a staging folder ``out_dir/.tmp-lattices-<pid>-*`` and moved
    into ``out_dir`` by :meth:`close`: first the old ``index.tsv`` is removed (the directory
    is incomplete from then on), then the old lattice files, then the new files are renamed in,
    ``meta.json`` and ``index.tsv`` last. So ``out_dir`` may also be the directory being read
    (an in-place ``lattice-prune``): its lattices stay untouched until every new one is written,
    and an interrupted writer never leaves a directory that looks complete and is not.
    Use as a context manager, or call :meth:`close`; the directory is complete only then (an
    exception in the ``with`` block removes the staging folder and leaves ``out_dir`` as it was).
    """

    def __init__(self, out_dir: PathLike, words: SymbolTable | None = None,
                 tokens: SymbolTable | None = None, meta: dict | None = None,
                 overwrite: bool = False) -> None:
        self.dir = Path(out_dir)
        if (self.dir / _INDEX).exists() and not overwrite:
            raise FileExistsError(f"{self.dir} already holds lattices ({_INDEX}); choose another "
                                  "directory or pass overwrite=True")
        if self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(f"{self.dir}: exists and is not a directory")
        self._created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(self.dir)
        self.stage = Path(tempfile.mkdtemp(dir=self.dir, prefix=f"{_STAGE}{os.getpid()}-"))
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
        save_lattices(self.stage / name, utt_ids, lat, symbol_table_checksum(self.words),
                      symbol_table_checksum(self.tokens))
        self._files += 1
        for i, u in enumerate(utt_ids):
            self.index.append((u, name, i))
            self._seen.add(u)
        if self._scales is None:
            self._scales = _scales(lat)

    def close(self) -> None:
        """Write the symbol tables, ``meta.json`` and ``index.tsv``, and move everything from
        the staging folder into the directory (the class docstring: in which order)."""
        if self.closed:
            return
        st = self.stage
        if self.words is not None:
            self.words.to_file(st / "words.txt")
        if self.tokens is not None:
            self.tokens.to_file(st / "tokens.txt")
        lm_scale, wp = self._scales or (1.0, 0.0)
        meta = {"format": DIR_FORMAT, "version": VERSION,
                "num_utterances": len(self.index), "num_files": self._files,
                "words_checksum": symbol_table_checksum(self.words),
                "tokens_checksum": symbol_table_checksum(self.tokens),
                "lm_scale": lm_scale, "word_penalty": wp}
        meta.update(self.meta)
        atomic_write_text(st / _META, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        atomic_write_text(st / _INDEX, "".join(f"{u}\t{f}\t{i}\n" for u, f, i in self.index))
        # from here on the old directory is incomplete until the new index is in place
        try:
            for name in (_INDEX, _META, "words.txt", "tokens.txt"):
                (self.dir / name).unlink(missing_ok=True)
            for old in self.dir.glob("lat.*.pt"):
                old.unlink()
            for new in sorted(st.iterdir(), key=lambda p: (p.name == _META, p.name == _INDEX)):
                os.replace(new, self.dir / new.name)
            st.rmdir()
        except BaseException:
            shutil.rmtree(st, ignore_errors=True)  # the directory stays incomplete (no index)
            raise
        finally:
            self.closed = True

    def abort(self) -> None:
        """Drop what was written (the staging folder); ``out_dir`` stays as it was (removed
        when this writer created it and it is empty)."""
        if self.closed:
            return
        shutil.rmtree(self.stage, ignore_errors=True)
        if self._created:
            with contextlib.suppress(OSError):
                self.dir.rmdir()
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _remove_dead_staging(folder: Path) -> None:
    """Remove the staging folders of writers (of this host) whose process is gone."""
    for p in folder.glob(f"{_STAGE}*"):
        m = re.match(rf"{re.escape(_STAGE)}(\d+)-", p.name)
        if m is None or not p.is_dir():
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def read_meta(lat_dir: PathLike) -> dict:
    """``meta.json`` of a lattice directory (ValueError when it is not a complete one)."""
    d = Path(lat_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such lattice directory")
    for name in (_META, _INDEX):
        if not (d / name).is_file():
            raise ValueError(f"{d}: no {name}: not a lattice directory, or its writer did not "
                             "finish")
    path = d / _META
    data = path.read_bytes()
    try:
        meta = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = 1 + data.count(b"\n", 0, e.start)
        raise ValueError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                         "a corrupt lattice directory: write it again") from None
    if not isinstance(meta, dict) or meta.get("format") != DIR_FORMAT:
        raise ValueError(f"{path}: not the meta.json of a wfst_asr lattice directory")
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
        index = self.dir / _INDEX
        data = index.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = 1 + data.count(b"\n", 0, e.start)
            raise ValueError(f"{index}:{line}: not valid UTF-8 ({e.reason})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            f = line.split("\t")
            if len(f) != 3 or not f[2].isdigit() or "/" in f[1] or f[1].startswith("."):
                raise ValueError(f"{index}:{n}: expected 'utt<TAB>lat.N.pt<TAB>position'")
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
        except LatticeError as e:  # names the file
            res = _FileError(e.kind, f"cannot read lattice file {e}")
        except OSError as e:
            res = _FileError("corrupt", f"cannot read lattice file {path}: {e}")
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
