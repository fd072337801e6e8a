"""The lang directory and the lexicon transducer L (Kaldi / icefall conventions).

Files read
----------
* **lexicon** (Kaldi ``lexicon.txt`` / ``lexiconp.txt``), one pronunciation a line::

      word tok1 tok2 ...            # lexicon.txt
      word prob tok1 tok2 ...       # lexiconp.txt, prob in (0, 1]

  A probability column is detected from the first entry (its second field is a number) and is
  then required on every line. Blank lines are skipped. A word may have several lines.
* **token list**: one token a line, or ``token id`` lines (a ``tokens.txt``, read in id order,
  without its id-0 symbol ``<blk>``/``<eps>`` and its disambiguation symbols ``#0 #1 ...``).

Files written by :func:`prepare_lang` (icefall layout; every file written atomically)
-------------------------------------------------------------------------------------
* ``tokens.txt``: ``<blk> 0`` (blank; also epsilon on the token side of graphs), the tokens,
  then ``#0 #1 ... #K`` (K = the largest disambiguation symbol of ``lexicon_disambig.txt``).
* ``words.txt``: ``<eps> 0``, the words (sorted), then ``#0``, ``<s>``, ``</s>``.
* ``lexicon.txt`` (or ``lexiconp.txt`` when the lexicon has probabilities): the lexicon read,
  unless the input already is that file; ``lexicon_disambig.txt``: the same entries with ``#1
  #2 ...`` appended where a pronunciation is a proper prefix of another one or is shared by
  several entries (the logic of Kaldi's ``add_lex_disambig.pl``); ``oov.txt`` when an OOV word
  is given.
* ``L.fst`` / ``L_disambig.fst`` (OpenFst binary, tropical, ``cost = -score``, symbol tables
  attached) and ``L.pt`` / ``L_disambig.pt`` (:func:`wfst_asr.fsa.save`).

The L transducer (:func:`lexicon_to_fst`)
-----------------------------------------
Input labels (``fsa.labels``) are token ids, output labels (``fsa.aux_labels``) word ids, scores
are log-probabilities (log semiring weights; OpenFst tropical ``cost = -score``). Topology as in
Kaldi's ``make_lexicon_fst.py``. With optional silence (``sil_token`` and ``0 < sil_prob < 1``):
state 0 is the start, state 1 the *loop* state, state 2 the *silence* state::

    0 -> 1  <blk>:<eps>  log(1 - sil_prob)
    0 -> 2  <blk>:<eps>  log(sil_prob)
    2 -> 1  sil:<eps>    0

Each pronunciation ``t1 .. tn`` of ``word`` (with probability ``p``) is a chain leaving the loop
state whose first arc outputs ``word`` and carries ``log(p)``; its last arc is doubled: into the
loop state (``+ log(1 - sil_prob)``) and into the silence state (``+ log(sil_prob)``), from which
the silence token must follow. The loop state is the only final state (score 0). Without silence, state 0 is both start and loop state
and pronunciations return to it. ``disambig=True`` adds the self-loop ``#0:#0`` (score 0) at the
loop state, which lets G's back-off disambiguation symbol through (as Kaldi's
``fstaddselfloops``). Arcs are sorted by (state, label) with -1 arcs last, as k2's arc_sort.
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wfst_asr.atomic import read_text
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.fsa.io import save, write_fst
from wfst_asr.fsa.symbol_table import atomic_write_text

__all__ = [
    "Lang",
    "LexiconEntry",
    "add_disambig_symbols",
    "lexicon_to_fst",
    "prepare_lang",
    "read_lexicon",
    "read_token_list",
    "remove_disambig_symbols",
    "write_lexicon",
    "write_token_list",
]

PathLike = str | os.PathLike
#: One lexicon entry: (word, probability or None, tokens).
LexiconEntry = tuple[str, float | None, list[str]]

BLANK = "<blk>"
WORD_EPS = "<eps>"
_DISAMBIG_RE = re.compile(r"#[0-9]+\Z")
_RESERVED_WORDS = ("<eps>", "<s>", "</s>")
_RESERVED_TOKENS = ("<blk>", "<eps>")


def is_disambig_symbol(symbol: str) -> bool:
    """True for ``#0``, ``#1``, ... (disambiguation symbols)."""
    return bool(_DISAMBIG_RE.match(symbol))


# ---------------------------------------------------------------------- lexicon text
def _parse_prob(tok: str) -> float | None:
    """The float value of ``tok``, or None when it is not a finite number."""
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _read_lexicon_lines(path: PathLike, has_probs: bool | None = None
                        ) -> list[tuple[int, str, float | None, list[str]]]:
    """(line number, word, prob or None, tokens) of each entry; ValueError naming file:line."""
    path = os.fspath(path)
    out: list[tuple[int, str, float | None, list[str]]] = []
    lines = read_text(path).splitlines()
    for no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{no}"
        if has_probs is None:
            has_probs = len(fields) >= 2 and _parse_prob(fields[1]) is not None
        prob = None
        if has_probs:
            if len(fields) < 2 or _parse_prob(fields[1]) is None:
                got = fields[1] if len(fields) >= 2 else "nothing"
                raise ValueError(f"{where}: malformed probability {got!r} for word {fields[0]!r} "
                                 "(this lexicon has a probability column, detected on its first "
                                 "entry)")
            prob = _parse_prob(fields[1])
            if not 0.0 < prob <= 1.0:
                raise ValueError(f"{where}: malformed probability {fields[1]!r} for word "
                                 f"{fields[0]!r}: must be in (0, 1]")
        tokens = fields[2:] if has_probs else fields[1:]
        if not tokens:
            raise ValueError(f"{where}: empty pronunciation for word {fields[0]!r}")
        out.append((no, fields[0], prob, tokens))
    return out


def read_lexicon(path: PathLike, has_probs: bool | None = None) -> list[LexiconEntry]:
    """Read a Kaldi ``lexicon.txt`` / ``lexiconp.txt``: a list of (word, prob or None, tokens).

    Args:
      path: the lexicon (UTF-8), lines ``word [prob] tok1 tok2 ...``.
      has_probs: whether there is a probability column; None: it is when the second field of the
        first entry is a number.

    Raises:
      ValueError: naming the file and line, for an empty pronunciation or a malformed
        probability (not a number, or outside (0, 1]).
    """
    return [(w, p, t) for _, w, p, t in _read_lexicon_lines(path, has_probs)]


def write_lexicon(path: PathLike, lexicon: Sequence[LexiconEntry]) -> None:
    """Write ``word [prob] tokens`` lines atomically (a prob column if some entry has a prob;
    missing ones are written as 1.0)."""
    with_probs = any(p is not None for _, p, _ in lexicon)
    lines = []
    for word, prob, tokens in lexicon:
        prob_str = f" {1.0 if prob is None else prob!r}" if with_probs else ""
        lines.append(f"{word}{prob_str} {' '.join(tokens)}\n")
    atomic_write_text(path, "".join(lines))


# ---------------------------------------------------------------------- token lists
def read_token_list(path: PathLike) -> list[str]:
    """Read a token list: one token a line, or ``token id`` lines (``tokens.txt``).

    ``token id`` files are read in id order; their id-0 symbol (``<blk>``/``<eps>``) and
    disambiguation symbols (``#0``, ``#1``, ...) are left out.

    Raises:
      ValueError: naming the file and line, for a line with more than two fields, a non-integer
        id, or a duplicate token.
    """
    path = os.fspath(path)
    lines = read_text(path).splitlines()
    entries: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{no}"
        if len(fields) > 2:
            raise ValueError(f"{where}: expected 'token' or 'token id', got {len(fields)} fields")
        if len(fields) == 2 and not re.fullmatch(r"[0-9]+", fields[1]):
            raise ValueError(f"{where}: id {fields[1]!r} is not a non-negative integer")
        tok = fields[0]
        if tok in seen:
            raise ValueError(f"{where}: duplicate token {tok!r} (first on line {seen[tok]})")
        seen[tok] = no
        key = int(fields[1]) if len(fields) == 2 else len(entries)
        if len(fields) == 2 and (key == 0 or is_disambig_symbol(tok)):
            continue
        entries.append((key, tok))
    return [tok for _, tok in sorted(entries, key=lambda e: e[0])]


def write_token_list(path: PathLike, tokens: Sequence[str]) -> None:
    """Write one token a line, atomically."""
    atomic_write_text(path, "".join(f"{t}\n" for t in tokens))


# ---------------------------------------------------------------------- disambiguation
def add_disambig_symbols(lexicon: Sequence[LexiconEntry], first: int = 1
                         ) -> tuple[list[LexiconEntry], int]:
    """Append ``#n`` to pronunciations that need it (Kaldi's add_lex_disambig.pl logic).

    A pronunciation needs one when it is a proper prefix of another pronunciation or when it
    occurs more than once (homophones). The k-th entry with a given such pronunciation gets
    ``#(first + k - 1)``.

    Returns:
      (the new lexicon, the largest ``n`` used, or ``first - 1`` when none is needed).
    """
    count: dict[tuple[str, ...], int] = defaultdict(int)
    prefixes: set[tuple[str, ...]] = set()
    for _, _, tokens in lexicon:
        pron = tuple(tokens)
        count[pron] += 1
        prefixes.update(pron[:i] for i in range(1, len(pron)))
    last_used: dict[tuple[str, ...], int] = {}
    out: list[LexiconEntry] = []
    max_disambig = first - 1
    for word, prob, tokens in lexicon:
        pron = tuple(tokens)
        if pron in prefixes or count[pron] > 1:
            n = last_used.get(pron, first - 1) + 1
            last_used[pron] = n
            max_disambig = max(max_disambig, n)
            tokens = list(tokens) + [f"#{n}"]
        out.append((word, prob, list(tokens)))
    return out, max_disambig


# ---------------------------------------------------------------------- L
class _ArcList:
    """Growing columns of (src, dst, label, aux_label, score)."""

    def __init__(self) -> None:
        self.cols: tuple[list[int], list[int], list[int], list[int], list[float]] = (
            [], [], [], [], [])

    def add(self, src: int, dst: int, label: int, aux: int, score: float) -> None:
        for col, v in zip(self.cols, (src, dst, label, aux, score)):
            col.append(v)


def _token_ids(word: str, tokens: Sequence[str], token_table: SymbolTable) -> list[int]:
    ids = []
    for t in tokens:
        if t not in token_table:
            raise ValueError(f"token {t!r} of word {word!r} is not in the token table")
        i = int(token_table[t])
        if i == 0:
            raise ValueError(f"token {t!r} of word {word!r} has id 0 (blank/epsilon)")
        ids.append(i)
    return ids


def _symbol_id(table: SymbolTable, sym: str, what: str) -> int:
    if sym not in table:
        raise ValueError(f"{what} {sym!r} is not in the {what.split()[0]} table")
    return int(table[sym])


def lexicon_to_fst(lexicon: Sequence[LexiconEntry], token_table: SymbolTable,
                   word_table: SymbolTable, sil_token: str | None = None,
                   sil_prob: float = 0.5, disambig: bool = False) -> Fsa:
    """Build the lexicon transducer L (tokens -> words) directly from ids.

    Args:
      lexicon: (word, prob or None, tokens) entries; for L_disambig, the output of
        :func:`add_disambig_symbols` (its ``#n`` must be in ``token_table``).
      token_table: token symbols; id 0 is blank/epsilon.
      word_table: word symbols; id 0 is epsilon.
      sil_token: the optional-silence token; None: no optional silence.
      sil_prob: probability of silence at the start and after each word, in [0, 1); 0 (or
        ``sil_token=None``) gives the topology without silence.
      disambig: add the ``#0:#0`` self-loop at the loop state (needs ``#0`` in both tables).

    Returns:
      A single-FSA transducer: ``labels`` = token ids, ``aux_labels`` = word ids (-1 on the arc
      into the final state), ``scores`` = log-probabilities (see the module docstring), with
      ``labels_sym`` / ``aux_labels_sym`` set to the tables.

    Raises:
      ValueError: for a token or word missing from its table, a token with id 0, an empty
        pronunciation, a probability outside (0, 1] or ``sil_prob`` outside [0, 1).
    """
    if not 0.0 <= sil_prob < 1.0:
        raise ValueError(f"sil_prob must be in [0, 1), got {sil_prob}")
    use_sil = sil_token is not None and sil_prob > 0.0
    arcs = _ArcList()
    if use_sil:
        sil_id = _token_ids("<silence>", [sil_token], token_table)[0]
        loop, sil_state, next_state = 1, 2, 3
        no_sil_score, sil_score = math.log1p(-sil_prob), math.log(sil_prob)
        arcs.add(0, loop, 0, 0, no_sil_score)
        arcs.add(0, sil_state, 0, 0, sil_score)
        arcs.add(sil_state, loop, sil_id, 0, 0.0)
    else:
        loop, sil_state, next_state = 0, -1, 1
        no_sil_score = sil_score = 0.0
    for word, prob, tokens in lexicon:
        if not tokens:
            raise ValueError(f"empty pronunciation for word {word!r}")
        if prob is not None and not 0.0 < prob <= 1.0:
            raise ValueError(f"probability {prob} of word {word!r} is not in (0, 1]")
        wid = _symbol_id(word_table, word, "word")
        tids = _token_ids(word, tokens, token_table)
        score = 0.0 if prob is None else math.log(prob)
        src, out = loop, wid
        for t in tids[:-1]:
            arcs.add(src, next_state, t, out, score)
            src, out, score = next_state, 0, 0.0
            next_state += 1
        arcs.add(src, loop, tids[-1], out, score + no_sil_score)
        if use_sil:
            arcs.add(src, sil_state, tids[-1], out, score + sil_score)
    if disambig:
        arcs.add(loop, loop, _symbol_id(token_table, "#0", "token #0"),
                 _symbol_id(word_table, "#0", "word #0"), 0.0)
    final = next_state
    arcs.add(loop, final, -1, -1, 0.0)
    return _assemble(arcs, final + 1, token_table, word_table)


def _assemble(arcs: _ArcList, num_states: int, token_table: SymbolTable,
              word_table: SymbolTable) -> Fsa:
    """The Fsa of the arc columns, arcs sorted by (src, label, dst) with -1 labels last."""
    src, dst, lab, aux, score = (np.asarray(c) for c in arcs.cols)
    sort_lab = np.where(lab < 0, np.iinfo(np.int64).max, lab.astype(np.int64))
    order = np.lexsort((dst, sort_lab, src))
    cols = np.stack([src[order], dst[order], lab[order]], axis=1).astype(np.int32)
    return Fsa(torch.from_numpy(cols), torch.from_numpy(score[order].astype(np.float32)),
               num_states=num_states,
               aux_labels=torch.from_numpy(aux[order].astype(np.int32)),
               labels_sym=token_table, aux_labels_sym=word_table)


def remove_disambig_symbols(fsa: Fsa, first_token_disambig_id: int,
                            first_word_disambig_id: int | None = None) -> Fsa:
    """A copy of ``fsa`` with disambiguation symbols replaced by 0 (epsilon).

    Labels ``>= first_token_disambig_id`` become 0; when the FSA has ``aux_labels`` and
    ``first_word_disambig_id`` is given, aux_labels ``>= first_word_disambig_id`` become 0 (as
    icefall does: with the ``words.txt`` of :func:`prepare_lang` this also clears ``<s>`` and
    ``</s>``, which come after ``#0`` and have no business in a decoding graph's output).
    -1 labels are kept. Scores keep their gradient history.
    """
    out = fsa.clone()
    labels = out.labels.clone()
    labels[labels >= first_token_disambig_id] = 0
    out.labels = labels
    if first_word_disambig_id is not None and out.has_attr("aux_labels"):
        aux = out.aux_labels.clone()
        aux[aux >= first_word_disambig_id] = 0
        out.aux_labels = aux
    return out


# ---------------------------------------------------------------------- lang dir
@dataclass
class Lang:
    """What :func:`prepare_lang` built (and wrote)."""

    lang_dir: Path
    token_table: SymbolTable
    word_table: SymbolTable
    lexicon: list[LexiconEntry]
    lexicon_disambig: list[LexiconEntry]
    max_disambig: int
    L: Fsa
    L_disambig: Fsa


def _check_symbols(lex_path: str, entries: list[tuple[int, str, float | None, list[str]]],
                   tokens: set[str]) -> None:
    """ValueError naming file:line for a reserved word/token or a token missing from the list."""
    for no, word, _, toks in entries:
        where = f"{lex_path}:{no}"
        if word in _RESERVED_WORDS or is_disambig_symbol(word):
            raise ValueError(f"{where}: word {word!r} is reserved (words.txt adds <eps>, #0, "
                             "<s>, </s> itself)")
        for t in toks:
            if t in _RESERVED_TOKENS or is_disambig_symbol(t):
                raise ValueError(f"{where}: token {t!r} of word {word!r} is reserved "
                                 "(tokens.txt adds <blk> and #0, #1, ... itself)")
            if t not in tokens:
                raise ValueError(f"{where}: token {t!r} of word {word!r} is not in the token "
                                 "list")


def _token_list(tokens: PathLike | Sequence[str] | None, lexicon: list[LexiconEntry],
                sil_token: str | None) -> list[str]:
    """The tokens (without blank and disambiguation symbols), in id order."""
    if tokens is None:
        found = {t for _, _, toks in lexicon for t in toks}
        if sil_token is not None:
            found.add(sil_token)
        return sorted(found)
    if isinstance(tokens, (str, os.PathLike)):
        return read_token_list(tokens)
    out = [t for t in tokens if t not in _RESERVED_TOKENS]
    bad = [t for t in out if is_disambig_symbol(t)]
    if bad:
        raise ValueError(f"the token list contains the disambiguation symbol {bad[0]!r}")
    if len(set(out)) != len(out):
        raise ValueError("the token list has duplicate tokens")
    return out


def _make_tables(tokens: list[str], words: list[str], max_disambig: int
                 ) -> tuple[SymbolTable, SymbolTable]:
    # explicit ids: SymbolTable.add(sym) without an id scans every id (quadratic for 100k words)
    token_table = SymbolTable({BLANK: 0})
    for i, t in enumerate(tokens + [f"#{k}" for k in range(max_disambig + 1)], start=1):
        token_table.add(t, i)
    word_table = SymbolTable({WORD_EPS: 0})
    for i, w in enumerate(sorted(set(words)) + ["#0", "<s>", "</s>"], start=1):
        word_table.add(w, i)
    return token_table, word_table


def prepare_lang(lang_dir: PathLike, lexicon_path: PathLike,
                 tokens: PathLike | Sequence[str] | None = None, sil_token: str | None = None,
                 sil_prob: float = 0.5, oov_word: str | None = None) -> Lang:
    """Write a lang directory (see the module docstring) from a lexicon.

    Args:
      lang_dir: output folder (created if missing).
      lexicon_path: ``lexicon.txt`` or ``lexiconp.txt`` (see :func:`read_lexicon`).
      tokens: the token inventory (a token-list file, see :func:`read_token_list`, or a list of
        tokens) in id order; None: the lexicon's tokens (and ``sil_token``), sorted.
      sil_token: the optional-silence token (must be in the token list); None: no silence.
      sil_prob: probability of silence at the start and after each word, in [0, 1).
      oov_word: the word for out-of-vocabulary words (must be a lexicon word); written to
        ``oov.txt``.

    Raises:
      ValueError: naming the lexicon file and line, for a malformed line, a reserved word or
        token, or a token missing from ``tokens``; also for a ``sil_token`` not in the token
        list, an ``oov_word`` not in the lexicon or a bad ``sil_prob``.
    """
    if not 0.0 <= sil_prob < 1.0:
        raise ValueError(f"sil_prob must be in [0, 1), got {sil_prob}")
    if os.path.exists(lang_dir) and not os.path.isdir(lang_dir):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory (the lang dir "
                                 "must be a folder)", os.fspath(lang_dir))
    lex_path = os.fspath(lexicon_path)
    entries = _read_lexicon_lines(lex_path)
    if not entries:
        raise ValueError(f"{lex_path}: the lexicon is empty")
    lexicon = [(w, p, t) for _, w, p, t in entries]
    token_list = _token_list(tokens, lexicon, sil_token)
    _check_symbols(lex_path, entries, set(token_list))
    if sil_token is not None and sil_token not in token_list:
        raise ValueError(f"the silence token {sil_token!r} is not in the token list")
    words = [w for w, _, _ in lexicon]
    if oov_word is not None and oov_word not in set(words):
        raise ValueError(f"the OOV word {oov_word!r} is not in the lexicon {lex_path}")
    lexicon_disambig, max_disambig = add_disambig_symbols(lexicon)
    token_table, word_table = _make_tables(token_list, words, max_disambig)
    L = lexicon_to_fst(lexicon, token_table, word_table, sil_token, sil_prob)
    L_disambig = lexicon_to_fst(lexicon_disambig, token_table, word_table, sil_token, sil_prob,
                                disambig=True)
    out = Path(lang_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_lang(out, lex_path, lexicon, lexicon_disambig, token_table, word_table, L,
                L_disambig, oov_word)
    return Lang(out, token_table, word_table, lexicon, lexicon_disambig, max_disambig, L,
                L_disambig)


def _write_lang(out: Path, lex_path: str, lexicon: list[LexiconEntry],
                lexicon_disambig: list[LexiconEntry], token_table: SymbolTable,
                word_table: SymbolTable, L: Fsa, L_disambig: Fsa, oov_word: str | None) -> None:
    token_table.to_file(out / "tokens.txt")
    word_table.to_file(out / "words.txt")
    name = "lexiconp.txt" if any(p is not None for _, p, _ in lexicon) else "lexicon.txt"
    if not (out / name).exists() or not os.path.samefile(out / name, lex_path):
        write_lexicon(out / name, lexicon)
    write_lexicon(out / "lexicon_disambig.txt", lexicon_disambig)
    if oov_word is not None:
        atomic_write_text(out / "oov.txt", f"{oov_word}\n")
    write_fst(L, out / "L.fst")
    write_fst(L_disambig, out / "L_disambig.fst")
    save(L, out / "L.pt")
    save(L_disambig, out / "L_disambig.pt")
