"""The G2P model: joint tokens, the joint-sequence n-gram, its WFST, and the model directory.

Joint tokens (Phonetisaurus' spelling): the letters of a unit joined by ``|``, ``}``, then its
phones joined by ``|`` or ``_`` for none, e.g. ``p|h}F``, ``x}K|S``, ``e}_``. So letters may
not be ``|``, ``}`` or ``_`` (nor white space), phones neither.

Training (:func:`train_g2p`): EM alignment (:func:`~wfst_asr.g2p.align.align_lexicon`), each
entry's Viterbi alignment becomes a sentence of joint tokens, an n-gram over them is estimated
with :func:`~wfst_asr.graphs.ngram.estimate_ngram` and compiled into G with
:func:`~wfst_asr.graphs.lm.arpa_to_fst` (one state per n-gram context, back-off arcs ``#0``),
whose token arcs are then expanded into letter:phone chains (:func:`compile_g2p_fst`):

* the WFST's input labels (``labels``) are letter ids of ``letters.txt`` (``#0`` on back-off
  arcs, -1 on final arcs), its output labels (``aux_labels``) phone ids of ``phones.txt``
  (0 = none); scores are natural-log probabilities (OpenFst cost = -score), as G's;
* a token of ``a`` letters and ``b`` phones is a chain of ``max(a, b)`` arcs: arc ``k``
  reads letter ``k`` (or epsilon) and writes phone ``k`` (or epsilon); the first arc carries
  the token's score and, in the per-arc attribute ``joint`` (int32), its joint token id (0 on
  every other arc); the chain's inner states are numbered after G's context states (plain
  attribute ``num_context_states``), before the final state;
* the back-off arcs are *failure* arcs: a token is read through ``#0`` only when the state has
  no chain for it, which :class:`~wfst_asr.g2p.decode.G2PDecoder` honours, so a path's score
  is exactly the n-gram's log-probability of its token sequence (with ``</s>``).

The model directory (:func:`write_model_dir`, written in a staging folder and renamed into
place): ``model.arpa``, ``joint.txt``, ``letters.txt``, ``phones.txt`` (symbol tables),
``g2p.pt`` (the WFST, :func:`wfst_asr.fsa.save`), ``meta.json``; ``eval.json`` when the
caller adds it (``wfst-asr train-g2p --held-out-fraction``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from wfst_asr.atomic import atomic_write_text, read_text
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.fsa.io import load, save
from wfst_asr.graphs.lm import arpa_to_fst
from wfst_asr.graphs.ngram import NgramModel, estimate_ngram

from .align import AlignConfig, Alignment, align_lexicon

__all__ = ["FORMAT", "G2PModel", "TrainConfig", "align_entries", "build_model",
           "check_entry", "compile_g2p_fst", "joint_token", "parse_joint_token", "staged_dir",
           "train_g2p", "write_model_dir"]

FORMAT = "wfst_asr-g2p"
VERSION = 1
LETTER_SEP, JOINT_SEP, NOTHING = "|", "}", "_"
BACKOFF = "#0"
EPS = "<eps>"
_RESERVED = frozenset(LETTER_SEP + JOINT_SEP + NOTHING)
FILES = ("model.arpa", "joint.txt", "letters.txt", "phones.txt", "g2p.pt", "meta.json")

Entry = tuple[str, Sequence[str]]


def joint_token(letters: Sequence[str], phones: Sequence[str]) -> str:
    """``p|h}F`` for letters ``p h`` and phones ``F`` (``_`` for no phone)."""
    return (LETTER_SEP.join(letters) + JOINT_SEP
            + (LETTER_SEP.join(phones) if len(phones) else NOTHING))


def parse_joint_token(token: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``(letters, phones)`` of a joint token (inverse of :func:`joint_token`)."""
    g, sep, p = token.partition(JOINT_SEP)
    if not sep or not g:
        raise ValueError(f"not a joint token: {token!r}")
    return tuple(g.split(LETTER_SEP)), (() if p == NOTHING else tuple(p.split(LETTER_SEP)))


def bad_symbol(s: str) -> bool:
    """Whether ``s`` cannot be a letter or a phone (a separator of joint tokens, white space,
    or empty)."""
    return not s or any(c in _RESERVED or c.isspace() for c in s)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_g2p`.

    Attributes:
      order: n-gram order of the joint-token model.
      method: ``"kn"`` (interpolated modified Kneser-Ney) or ``"wb"`` (Witten-Bell).
      align: the EM alignment settings (units allowed, iterations).
    """

    order: int = 8
    method: str = "kn"
    align: AlignConfig = field(default_factory=AlignConfig)


# ---------------------------------------------------------------------- the WFST
def _letter_table(letters: Sequence[str]) -> SymbolTable:
    return SymbolTable({EPS: 0, **{c: k for k, c in enumerate(letters, start=1)},
                        BACKOFF: len(letters) + 1})


def _phone_table(phones: Sequence[str]) -> SymbolTable:
    return SymbolTable({EPS: 0, **{p: k for k, p in enumerate(phones, start=1)}})


def compile_g2p_fst(arpa_path: str | os.PathLike, joint_txt: str | os.PathLike,
                    letters: SymbolTable, phones: SymbolTable) -> Fsa:
    """The G2P WFST (module docstring) of a joint-token ARPA model.

    Args:
      arpa_path: the joint-token n-gram (ARPA).
      joint_txt: ``<eps> 0``, the joint tokens, ``#0`` (ids >= 1 for tokens).
      letters: ``<eps> 0``, every letter of the tokens, ``#0``.
      phones: ``<eps> 0``, every phone of the tokens.

    Returns:
      the transducer, with ``labels_sym`` = ``letters``, ``aux_labels_sym`` = ``phones``,
      per-arc ``joint`` and plain attribute ``num_context_states``.
    """
    joint = SymbolTable.from_file(joint_txt)
    g = arpa_to_fst(arpa_path, joint_txt, disambig_symbol=BACKOFF)
    num_ids = joint.max_id + 1
    backoff = int(joint[BACKOFF])
    n_let = np.zeros(num_ids, np.int64)
    n_ph = np.zeros(num_ids, np.int64)
    width = 1
    spell: dict[int, tuple[list[int], list[int]]] = {}
    for sym, i in joint.items():
        if i == 0 or sym == BACKOFF:
            continue
        lets, phs = parse_joint_token(sym)
        spell[i] = ([int(letters[c]) for c in lets], [int(phones[p]) for p in phs])
        n_let[i], n_ph[i] = len(lets), len(phs)
        width = max(width, len(lets), len(phs))
    let_ids = np.zeros((num_ids, width), np.int64)
    ph_ids = np.zeros((num_ids, width), np.int64)
    for i, (ls, ps) in spell.items():
        let_ids[i, :len(ls)] = ls
        ph_ids[i, :len(ps)] = ps
    src, dst, lab = (g.arcs[:, k].long().numpy() for k in range(3))
    score = g.scores.detach().numpy()
    S = g.num_states
    final = S - 1
    is_tok = (lab > 0) & (lab != backoff)
    safe = np.where(is_tok, lab, 0)
    n = np.where(is_tok, np.maximum(np.maximum(n_let[safe], n_ph[safe]), 1), 1)
    inner = n - 1
    first_inner = final + np.concatenate([[0], np.cumsum(inner)[:-1]])  # new id of each arc's
    num_inner = int(inner.sum())                                        # first inner state
    new_final = final + num_inner
    arc = np.repeat(np.arange(len(src)), n)
    k = np.arange(len(arc)) - np.repeat(np.cumsum(n) - n, n)
    last = k == n[arc] - 1
    remap = np.where(dst == final, new_final, dst)
    new_src = np.where(k == 0, src[arc], first_inner[arc] + k - 1)
    new_dst = np.where(last, remap[arc], first_inner[arc] + k)
    tok = safe[arc]
    kk = np.minimum(k, width - 1)
    labels = np.where(is_tok[arc], np.where(k < n_let[tok], let_ids[tok, kk], 0),
                      np.where(lab[arc] == -1, -1, int(letters[BACKOFF])))
    aux = np.where(is_tok[arc], np.where(k < n_ph[tok], ph_ids[tok, kk], 0),
                   np.where(lab[arc] == -1, -1, 0))
    arcs = torch.from_numpy(np.stack([new_src, new_dst, labels], axis=1)).to(torch.int32)
    scores = torch.from_numpy(np.where(k == 0, score[arc], 0.0).astype(np.float32))
    fsa = Fsa(arcs, scores, num_states=new_final + 1,
              aux_labels=torch.from_numpy(aux).to(torch.int32),
              joint=torch.from_numpy(np.where(is_tok[arc] & (k == 0), tok, 0)).to(torch.int32))
    fsa.labels_sym = letters
    fsa.aux_labels_sym = phones
    fsa.num_context_states = final
    return fsa


# ---------------------------------------------------------------------- the model
@dataclass
class G2PModel:
    """A trained G2P model: the WFST and its symbol tables.

    Attributes:
      fst: the G2P WFST (module docstring).
      letters: ``letters.txt`` (``<eps>``, letters, ``#0``).
      phones: ``phones.txt`` (``<eps>``, phones).
      meta: the settings and figures of training (``meta.json``).
    """

    fst: Fsa
    letters: SymbolTable
    phones: SymbolTable
    meta: dict
    _decoder: object = field(default=None, repr=False)

    @property
    def lowercase(self) -> bool:
        """Whether words are lower-cased before conversion (the letters were, in training)."""
        return bool(self.meta.get("lowercase", True))

    @property
    def alphabet(self) -> set[str]:
        """The letters the model knows."""
        return {s for s, i in self.letters.items() if i and s != BACKOFF}

    def normalize(self, word: str) -> str:
        """``word`` as the model spells it (lower-cased if it was trained so)."""
        return word.lower() if self.lowercase else word

    def unknown_letters(self, word: str) -> list[str]:
        """The characters of ``word`` (normalised) that are not letters of the model, sorted."""
        alphabet = self.alphabet
        return sorted({c for c in self.normalize(word) if c not in alphabet})

    def decoder(self):
        """The :class:`~wfst_asr.g2p.decode.G2PDecoder` of the WFST (built once)."""
        if self._decoder is None:
            from .decode import G2PDecoder

            self._decoder = G2PDecoder(self.fst)
        return self._decoder

    def predict(self, words: Sequence[str], nbest: int = 1, **kwargs
                ) -> list[list[tuple[list[str], float]]]:
        """The ``nbest`` best pronunciations of each word (normalised first), best first, as
        ``(phones, log-probability)``: :meth:`G2PDecoder.decode` (``kwargs``: beam, ...)."""
        return self.decoder().decode([self.normalize(w) for w in words], nbest=nbest, **kwargs)

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> G2PModel:
        """Read a model directory (:func:`write_model_dir`); ValueError naming the file when
        it is not one."""
        d = Path(model_dir)
        if not d.is_dir():
            raise FileNotFoundError(2, "no such model directory", str(d))
        meta_path = d / "meta.json"
        try:
            meta = json.loads(read_text(meta_path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}:{e.lineno}: not JSON ({e.msg})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: not a G2P model (format is not {FORMAT!r})")
        letters = SymbolTable.from_file(d / "letters.txt")
        phones = SymbolTable.from_file(d / "phones.txt")
        fst = load(d / "g2p.pt")
        if not fst.has_attr("joint") or not fst.has_attr("aux_labels"):
            raise ValueError(f"{d / 'g2p.pt'}: not a G2P WFST (no joint / aux_labels)")
        fst.labels_sym, fst.aux_labels_sym = letters, phones
        return cls(fst, letters, phones, meta)


# ---------------------------------------------------------------------- training
def check_entry(word: str, phones: Sequence[str]) -> str | None:
    """What makes ``(word, phones)`` unusable for G2P training, or None."""
    if not word:
        return "empty word"
    bad = sorted({c for c in word if bad_symbol(c)})
    if bad:
        return (f"word {word!r} has character(s) {bad} that G2P reserves (joint-token "
                f"separators {sorted(_RESERVED)} or white space)")
    if not len(phones):
        return f"empty pronunciation for word {word!r}"
    badp = sorted({p for p in phones if bad_symbol(p) or p in (EPS, BACKOFF)})
    if badp:
        return f"word {word!r}: phone(s) {badp} are reserved in G2P"
    return None


def _check_entries(entries: Sequence[Entry]) -> None:
    for n, (word, phones) in enumerate(entries):
        problem = check_entry(word, phones)
        if problem:
            raise ValueError(f"entry {n}: {problem}")


def dedupe(entries: Sequence[Entry], lowercase: bool = True) -> list[tuple[str, tuple[str, ...]]]:
    """Distinct ``(word, phones)`` entries (words lower-cased with ``lowercase``), first-seen
    order."""
    seen: dict[tuple[str, tuple[str, ...]], None] = {}
    for w, p in entries:
        seen.setdefault((w.lower() if lowercase else w, tuple(p)), None)
    return list(seen)


def align_entries(entries: Sequence[Entry], config: AlignConfig | None = None,
                  lowercase: bool = True, log: Callable[[str], None] | None = None
                  ) -> tuple[list[list[str]], Alignment]:
    """The joint-token sentences of the EM alignment of ``entries`` (checked, deduplicated,
    lower-cased with ``lowercase``; entries that cannot be aligned are left out) and the
    :class:`~wfst_asr.g2p.align.Alignment` itself."""
    _check_entries(entries)
    data = dedupe(entries, lowercase)
    if not data:
        raise ValueError("no lexicon entries to train on")
    al = align_lexicon([(list(w), p) for w, p in data], config or AlignConfig(), log=log)
    sentences = [[joint_token(g, p) for g, p in units] for units in al.units if units]
    return sentences, al


def build_model(sentences: Sequence[Sequence[str]], stage_dir: str | os.PathLike,
                order: int = 8, method: str = "kn", log: Callable[[str], None] | None = None
                ) -> tuple[G2PModel, NgramModel]:
    """Estimate the joint-token n-gram of ``sentences`` and compile its WFST; write
    ``model.arpa``, the symbol tables and ``g2p.pt`` into ``stage_dir`` (not ``meta.json``:
    the model's ``meta`` is empty)."""
    model = estimate_ngram(sentences, order, method=method)
    d = Path(stage_dir)
    model.write_arpa(d / "model.arpa")
    tokens = [w for w in model.vocab if w not in ("<s>", "</s>")]
    spelled = [parse_joint_token(t) for t in tokens]
    letters = _letter_table(sorted({c for g, _ in spelled for c in g}))
    phones = _phone_table(sorted({p for _, ps in spelled for p in ps}))
    joint = SymbolTable({EPS: 0, **{t: k for k, t in enumerate(tokens, start=1)},
                         BACKOFF: len(tokens) + 1})
    joint.to_file(d / "joint.txt")
    letters.to_file(d / "letters.txt")
    phones.to_file(d / "phones.txt")
    t0 = time.perf_counter()
    fst = compile_g2p_fst(d / "model.arpa", d / "joint.txt", letters, phones)
    save(fst, d / "g2p.pt")
    if log is not None:
        log(f"n-gram ({method}, order {order}, n-grams per order {model.counts}) and WFST "
            f"({fst.num_states} states, {fst.num_arcs} arcs) in "
            f"{time.perf_counter() - t0:.1f} s")
    return G2PModel(fst, letters, phones, {}), model


def train_g2p(entries: Sequence[Entry], stage_dir: str | os.PathLike,
              config: TrainConfig | None = None, lowercase: bool = True,
              log: Callable[[str], None] | None = None, extra: dict | None = None
              ) -> G2PModel:
    """Train a G2P model on lexicon entries and write its files into ``stage_dir``.

    Args:
      entries: ``(word, phones)``, one per pronunciation (duplicates are dropped).
      stage_dir: an existing (staging) folder receiving :data:`FILES`; see
        :func:`write_model_dir` for the atomic version.
      config: n-gram order and method, alignment settings.
      lowercase: lower-case the words (and so the words given to :meth:`G2PModel.predict`).
      log: progress lines.
      extra: more items for ``meta.json`` (the data's source, ...).

    Returns:
      the model (its WFST in memory; ``meta`` as written).

    Raises:
      ValueError: no entries, a reserved character in a word or phone, an empty
        pronunciation, nothing alignable.
    """
    config = config or TrainConfig()
    t0 = time.perf_counter()
    sentences, al = align_entries(entries, config.align, lowercase, log)
    t_align = time.perf_counter() - t0
    if log is not None:
        log(f"aligned {len(sentences)} of {len(al.units)} entries in {t_align:.1f} s "
            f"({al.num_unaligned} not alignable)")
    g2p, ngram = build_model(sentences, stage_dir, config.order, config.method, log)
    g2p.meta = {"format": FORMAT, "version": VERSION, "lowercase": lowercase,
                "order": config.order, "method": config.method, "align": asdict(config.align),
                "num_entries": len(al.units), "num_unaligned": al.num_unaligned,
                "log_likelihoods": al.log_likelihoods, "ngram_counts": ngram.counts,
                "num_joint_tokens": len(ngram.vocab) - 2,
                "num_letters": len(g2p.alphabet), "num_phones": len(g2p.phones) - 1,
                "fst_states": g2p.fst.num_states, "fst_arcs": g2p.fst.num_arcs,
                "align_seconds": round(t_align, 2),
                "train_seconds": round(time.perf_counter() - t0, 2), **(extra or {})}
    atomic_write_text(Path(stage_dir) / "meta.json", json.dumps(g2p.meta, indent=1) + "\n")
    return g2p


# ---------------------------------------------------------------------- the directory
@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh staging folder next to ``out_dir``; when the block succeeds, it replaces
    ``out_dir`` (an earlier model directory, or an empty folder, is swapped out and removed);
    on an exception it is removed and ``out_dir`` is untouched.

    Raises (before the block): ``FileExistsError`` when ``out_dir`` is a file or a non-empty
    folder that is not a model directory (no ``meta.json`` of format :data:`FORMAT`);
    ``FileNotFoundError`` when its parent folder does not exist.
    """
    out = Path(out_dir)
    parent = out.absolute().parent
    if not parent.is_dir():
        raise FileNotFoundError(2, "no such directory", str(parent))
    if out.exists() and not _replaceable(out):
        raise FileExistsError(17, "exists and is not a G2P model directory (not replaced)",
                              str(out))
    stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-g2p-{os.getpid()}-"))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".old-g2p-{os.getpid()}-"))
            os.replace(out, old / "old")
            try:
                os.replace(stage, out)
            except BaseException:
                os.replace(old / "old", out)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replaceable(out: Path) -> bool:
    if not out.is_dir() or out.is_symlink():
        return False
    if not any(out.iterdir()):
        return True
    try:
        return json.loads((out / "meta.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_model_dir(entries: Sequence[Entry], out_dir: str | os.PathLike,
                    config: TrainConfig | None = None, lowercase: bool = True,
                    log: Callable[[str], None] | None = None, extra: dict | None = None
                    ) -> G2PModel:
    """:func:`train_g2p` into ``out_dir``, atomically (:func:`staged_dir`)."""
    with staged_dir(out_dir) as stage:
        return train_g2p(entries, stage, config, lowercase, log, extra)
