"""A monophone GMM-HMM on any lhotse cuts: the work of ``wfst-asr train-mono``.

Inputs:

* cut sets (lhotse manifests) with recordings: one to train on, others to align with the
  trained model (e.g. dev). The features are :func:`wfst_asr.gmm.features.cut_features`' (13
  MFCCs from the audio, per-speaker CMN, deltas); a cut that also carries precomputed features
  (e.g. the network's fbank) gets exactly their frame count, so the alignments line up with
  them. Each cut needs exactly one supervision;
* a lang dir: ``tokens.txt`` (the phones; ids as :func:`~wfst_asr.graphs.lang.read_token_list`
  reads them), and for word transcripts ``lexicon.txt`` (or ``lexiconp.txt``) and
  ``words.txt``;
* the transcript: ``token_field="text"`` takes the supervision's ``text`` (words, through the
  lexicon); any other name is a supervision custom field of space-separated tokens;
* optional silence (``optional_silence`` token, ``sil_prob``): the training graphs allow that
  token at the start and after every word (token transcripts: after every token), as Kaldi's L
  with ``sil_prob`` (:func:`~wfst_asr.graphs.lang.lexicon_to_fst`, through
  :class:`~wfst_asr.graphs.training.HmmTrainingGraphCompiler`), so transcripts without silence
  can be aligned to audio with pauses. The equal alignment of the first iteration then puts the
  silence at the start and the end of each utterance (where the transcript does not already
  have it and the frames allow it).

Training is :func:`wfst_asr.gmm.mono.train_mono` (Kaldi's ``train_mono.sh`` schedule).

Outputs in ``out_dir`` (each written atomically): ``gmm.pt`` (``params``, ``topology``,
``self_loop_scale``, ``num_tokens``, ``options``, plus ``token_field``, ``optional_silence``,
``sil_prob``), ``train_log.tsv`` (one row per EM iteration), ``summary.json``, and for each
set ``<name>``: ``ali_<name>.pt`` (``{cut id: int16 pdf ids, one per frame}``) and
``cuts_<name>.jsonl.gz``: the input cuts with the alignment in the supervision custom field
``ali_field`` (space-separated pdf ids); cuts that cannot be aligned (no path of their length)
are left out and counted.

Set names (:func:`set_name`): ``NAME=PATH``, or from the file name: its stem without the
manifest suffix (``.jsonl.gz``, ``.jsonl``, ``.json.gz``, ``.json``), and of that the part after
the last underscore, if any: ``timit_cuts_dev.jsonl.gz`` -> ``dev``, ``cuts_train.jsonl.gz`` ->
``train``, ``yesno.jsonl.gz`` -> ``yesno``.

Bad input raises :class:`InputError`, whose message starts with ``FILE[:LINE]:``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from wfst_asr.atomic import atomic_output, atomic_write_text
from wfst_asr.fsa import SymbolTable
from wfst_asr.gmm.features import cut_features
from wfst_asr.gmm.mono import MonoOptions, train_mono
from wfst_asr.graphs.lang import lexicon_to_fst, read_lexicon, read_token_list
from wfst_asr.graphs.topo import Topology, make_topology, pdf_topo
from wfst_asr.graphs.training import HmmTrainingGraphCompiler

__all__ = ["ALI_FIELD", "CutData", "InputError", "Transcripts", "load_cuts", "parse_set",
           "run_train_mono", "set_name", "write_alignments"]

#: The supervision field of the alignments (what the hybrid's config reads as ``token_field``).
ALI_FIELD = "gmm_ali"
#: Seconds per frame of the MFCCs and the alignments.
FRAME_SHIFT = 0.01
_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


class InputError(ValueError):
    """A bad input file or entry; the message is ``FILE[:LINE]: what``."""


def _need_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return path


# ---------------------------------------------------------------------------- set names
def set_name(path: str | Path) -> str:
    """The name of a cut set from its file name (module docstring)."""
    stem = Path(path).name
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    tail = stem.rsplit("_", 1)[-1]
    return tail or stem


def parse_set(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` -> ``(name, path)`` (the name from :func:`set_name`)."""
    name, sep, rest = spec.partition("=")
    if sep and _NAME_RE.match(name) and "/" not in name:
        return name, Path(rest)
    return set_name(spec), Path(spec)


# ---------------------------------------------------------------------------- transcripts
class Transcripts:
    """What a supervision's transcript becomes: the input of the training-graph compiler
    (token ids, or word ids with a lexicon) and the tokens of one path (equal alignment).

    Args:
      lang_dir: ``tokens.txt``; with ``token_field="text"`` also ``lexicon.txt`` (or
        ``lexiconp.txt``) and ``words.txt``.
      token_field: ``"text"`` (words) or a supervision custom field with tokens.
      optional_silence: a token of ``tokens.txt`` the graphs allow at the start and after
        every word (token); None: the transcript only.
      sil_prob: its probability, in (0, 1).
    """

    def __init__(self, lang_dir: str | Path, token_field: str,
                 optional_silence: str | None = None, sil_prob: float = 0.5) -> None:
        lang = Path(lang_dir)
        self.tokens_path = _need_file(lang / "tokens.txt")
        try:
            self.tokens = read_token_list(self.tokens_path)
        except ValueError as e:
            raise InputError(str(e)) from None
        self.token_ids = {t: i for i, t in enumerate(self.tokens, start=1)}
        self.token_field = token_field
        self.sil_token, self.sil_prob = optional_silence, sil_prob
        if not 0.0 < sil_prob < 1.0:
            raise ValueError(f"sil_prob must be in (0, 1), got {sil_prob}")
        if optional_silence is not None and optional_silence not in self.token_ids:
            raise InputError(f"{self.tokens_path}: has no optional-silence token "
                             f"{optional_silence!r}")
        self.sil = self.token_ids.get(optional_silence) if optional_silence else None
        self.words = token_field == "text"
        self.entries: list[tuple[str, float | None, list[str]]] = []
        self.word_ids: dict[str, int] = {}
        self.prons: dict[str, list[list[int]]] = {}
        if self.words:
            self._read_lexicon(lang)

    def _read_lexicon(self, lang: Path) -> None:
        lex = lang / "lexicon.txt"
        if not lex.is_file() and (lang / "lexiconp.txt").is_file():
            lex = lang / "lexiconp.txt"
        self.lexicon_path = _need_file(lex)
        words_path = _need_file(lang / "words.txt")
        try:
            self.word_table = SymbolTable.from_file(words_path)
            self.entries = read_lexicon(lex)
        except ValueError as e:
            raise InputError(str(e)) from None
        lines = [no for no, line in enumerate(lex.read_text(encoding="utf-8").splitlines(), 1)
                 if line.split()]
        for (word, _, toks), no in zip(self.entries, lines):
            if word not in self.word_table:
                raise InputError(f"{lex}:{no}: word {word!r} is not in {words_path}")
            bad = [t for t in toks if t not in self.token_ids]
            if bad:
                raise InputError(f"{lex}:{no}: token {bad[0]!r} of word {word!r} is not in "
                                 f"{self.tokens_path}")
            self.word_ids[word] = int(self.word_table[word])
            self.prons.setdefault(word, []).append([self.token_ids[t] for t in toks])

    def convert(self, sup, where: str) -> tuple[list[int], list[int]]:
        """``(graph input, tokens of one path)`` of a supervision; ``where`` (``FILE:LINE:
        cut ID``) starts the message of the :class:`InputError` for an unknown symbol."""
        if self.words:
            words = (sup.text or "").split()
            missing = [w for w in words if w not in self.prons]
            if missing:
                raise InputError(f"{where}: word {missing[0]!r} is not in the lexicon "
                                 f"{self.lexicon_path}")
            return ([self.word_ids[w] for w in words],
                    [t for w in words for t in self.prons[w][0]])
        text = (sup.custom or {}).get(self.token_field)
        if text is None:
            raise InputError(f"{where}: its supervision has no field {self.token_field!r}")
        toks = str(text).split()
        missing = [t for t in toks if t not in self.token_ids]
        if missing:
            raise InputError(f"{where}: token {missing[0]!r} (field {self.token_field}) is "
                             f"not in {self.tokens_path}")
        ids = [self.token_ids[t] for t in toks]
        return ids, ids

    def with_silence(self, tokens: list[int], max_len: int) -> list[int]:
        """``tokens`` with the optional silence added at the start and at the end (where it is
        not there already), if that makes at most ``max_len`` tokens."""
        if self.sil is None:
            return tokens
        out = tokens if tokens[:1] == [self.sil] else [self.sil, *tokens]
        if tokens and out[-1] != self.sil:
            out = [*out, self.sil]
        return out if len(out) <= max_len else tokens

    def compiler(self, topology: Topology):
        """The training-graph compiler over ``pdf_topo(topology)``, or None when the default
        of :meth:`~wfst_asr.gmm.mono.MonoGmm.align` (token transcripts) is it."""
        probs = any(p is not None for _, p, _ in self.entries)
        if self.sil is None and not self.words:
            return None
        H = pdf_topo(topology)
        if self.sil is None and not probs:
            lexicon = {self.word_ids[w]: p for w, p in self.prons.items()}
            return _CachedCompiler(HmmTrainingGraphCompiler(H, lexicon=lexicon))
        token_table = SymbolTable({"<blk>": 0, **self.token_ids})
        if self.words:
            entries, word_table = self.entries, self.word_table
        else:  # every token its own word
            entries, word_table = [(t, None, [t]) for t in self.tokens], token_table
        L = lexicon_to_fst(entries, token_table, word_table, self.sil_token,
                           self.sil_prob if self.sil is not None else 0.0)
        return _CachedCompiler(HmmTrainingGraphCompiler(H, lexicon=L))


class _CachedCompiler:
    """A compiler whose graphs are made once per batch of transcripts: realignment asks for
    the same batches on every iteration."""

    def __init__(self, inner: HmmTrainingGraphCompiler) -> None:
        self.inner = inner
        self.cache: dict[tuple, object] = {}

    def compile(self, texts: Sequence[Sequence[int]]):
        key = tuple(tuple(t) for t in texts)
        if key not in self.cache:
            self.cache[key] = self.inner.compile([list(t) for t in texts])
        return self.cache[key]


# ---------------------------------------------------------------------------- cut sets
@dataclass
class CutData:
    """A cut set read for training or alignment."""

    name: str
    path: Path
    cuts: list            # the lhotse cuts, in file order
    feats: dict[str, torch.Tensor]
    texts: dict[str, list[int]]   # graph input (token or word ids)
    init: dict[str, list[int]]    # tokens of one path (equal alignment)
    adjusted: int                 # cuts whose MFCC frame count was set to their features'

    @property
    def ids(self) -> list[str]:
        """The cut ids, sorted (the order of training and alignment)."""
        return sorted(self.feats)


def load_cuts(name: str, path: str | Path, transcripts: Transcripts,
              states_per_token: int = 3) -> CutData:
    """Read a cut set, check it, convert its transcripts and compute its features; an
    :class:`InputError` names the file (and the line of a ``.jsonl[.gz]`` manifest)."""
    from lhotse import CutSet
    from lhotse.cut import Cut

    path = _need_file(Path(path))
    try:
        cuts = list(CutSet.from_file(path))
    except (ValueError, TypeError, KeyError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a lhotse cut manifest ({type(e).__name__}: {e})"
                         ) from None
    by_line = path.name.endswith((".jsonl", ".jsonl.gz"))
    for i, c in enumerate(cuts):
        if not isinstance(c, Cut):
            raise InputError(f"{path}{f':{i + 1}' if by_line else ''}: a {type(c).__name__}, "
                             "not a cut (give a cut manifest)")
    where = {c.id: f"{path}:{i + 1}: cut {c.id}" if by_line else f"{path}: cut {c.id}"
             for i, c in enumerate(cuts)}
    texts, init = {}, {}
    for c in cuts:
        if c.id in texts:
            raise InputError(f"{where[c.id]}: a second cut with this id")
        if len(c.supervisions) != 1:
            raise InputError(f"{where[c.id]}: has {len(c.supervisions)} supervisions; "
                             "train-mono needs one per cut")
        if not c.has_recording:
            raise InputError(f"{where[c.id]}: has no recording (the MFCCs come from the audio)")
        if c.has_features and abs(c.frame_shift - FRAME_SHIFT) > 1e-6:
            raise InputError(f"{where[c.id]}: its features have a frame shift of "
                             f"{c.frame_shift} s; the alignments have one pdf per "
                             f"{FRAME_SHIFT} s")
        texts[c.id], init[c.id] = transcripts.convert(c.supervisions[0], where[c.id])
    if not cuts:
        raise InputError(f"{path}: no cuts")
    f = cut_features(cuts)
    if f.skipped:
        cut_id, _, why = f.skipped[0].partition(": ")
        raise InputError(f"{where[cut_id]}: cannot read its audio: {why}")
    for u, x in f.feats.items():
        init[u] = transcripts.with_silence(init[u], x.shape[0] // states_per_token)
    return CutData(name, path, cuts, f.feats, texts, init, f.adjusted)


def write_alignments(out_dir: Path, data: CutData, alis: dict[str, torch.Tensor],
                     field: str = ALI_FIELD) -> list[str]:
    """Write ``ali_<name>.pt`` and ``cuts_<name>.jsonl.gz`` (the cuts with ``field``)
    atomically; return the ids of the cuts left out (no alignment)."""
    from lhotse import CutSet

    with atomic_output(out_dir / f"ali_{data.name}.pt") as tmp:
        torch.save({u: a.to(torch.int16) for u, a in alis.items()}, tmp)
    kept, missing = [], []
    for c in data.cuts:
        if c.id not in alis:
            missing.append(c.id)
            continue
        sup = c.supervisions[0]
        sup.custom = {**(sup.custom or {}), field: " ".join(map(str, alis[c.id].tolist()))}
        kept.append(c)
    with atomic_output(out_dir / f"cuts_{data.name}.jsonl.gz") as tmp:
        CutSet.from_cuts(kept).to_file(tmp)  # the name ends in .jsonl.gz, as lhotse needs
    return missing


# ---------------------------------------------------------------------------- the whole run
def run_train_mono(train: tuple[str, str | Path], align: Sequence[tuple[str, str | Path]],
                   lang_dir: str | Path, token_field: str, out_dir: str | Path,
                   topology: str = "hmm-3state", opts: MonoOptions | None = None,
                   self_loop_scale: float = 0.1, optional_silence: str | None = None,
                   sil_prob: float = 0.5, ali_field: str = ALI_FIELD,
                   say: Callable[[str], None] = print) -> dict:
    """Train on ``train = (name, cuts path)``, align it and the ``align`` sets, write the
    outputs (module docstring) into ``out_dir``; return the summary (``summary.json``).

    Every input is read and checked before training starts; ``say`` gets the progress lines.
    """
    opts = opts or MonoOptions()
    out = Path(out_dir)
    names = [n for n, _ in [train, *align]]
    for n, p in [train, *align]:
        if not _NAME_RE.match(n):
            raise InputError(f"{p}: bad set name {n!r} (letters, digits, '_', '.', '-'; give "
                             "NAME=PATH)")
        if names.count(n) > 1:
            raise InputError(f"{p}: a second cut set named {n!r} (give NAME=PATH)")
    tr = Transcripts(lang_dir, token_field, optional_silence, sil_prob)
    topo = make_topology(topology, len(tr.tokens), self_loop_scale=self_loop_scale)
    per_token = 3 if topology == "hmm-3state" else 1
    sets = [load_cuts(n, p, tr, per_token) for n, p in [train, *align]]
    for d in sets:
        say(f"[{d.name}] {len(d.feats)} cuts of {d.path}: MFCC + deltas ({d.adjusted} frame "
            "counts set to their features')")
    compiler = tr.compiler(topology=topo)
    out.mkdir(parents=True, exist_ok=True)
    data = sets[0]
    ids = data.ids
    rows = ["iter\trealigned\tloglike_per_frame\tframes\tnum_gauss\tunaligned\tseconds"]
    t0 = time.perf_counter()
    model, final = train_mono(topo, [data.feats[u] for u in ids], [data.texts[u] for u in ids],
                              opts, names=ids, report=lambda r: rows.append("\t".join(
                                  f"{v:.4f}" if isinstance(v, float) else str(v)
                                  for v in r.values())),
                              compiler=compiler, init_texts=[data.init[u] for u in ids])
    train_s = time.perf_counter() - t0
    atomic_write_text(out / "train_log.tsv", "\n".join(rows) + "\n")
    say(f"trained {topology} monophone GMM: {model.num_gauss} Gaussians, {len(rows) - 1} "
        f"iterations in {train_s:.1f} s (log: {out}/train_log.tsv)")
    with atomic_output(out / "gmm.pt") as tmp:
        torch.save({"params": model.params(), "topology": topology,
                    "self_loop_scale": self_loop_scale, "num_tokens": len(tr.tokens),
                    "options": vars(opts), "token_field": token_field,
                    "optional_silence": optional_silence,
                    "sil_prob": sil_prob if optional_silence else None}, tmp)
    summary: dict = {"topology": topology, "num_gauss": model.num_gauss,
                     "train_seconds": round(train_s, 1), "token_field": token_field,
                     "optional_silence": optional_silence,
                     "sil_prob": sil_prob if optional_silence else None, "sets": {}}
    for d in sets:
        if d is data:
            got = final
        else:
            got = model.align([d.feats[u] for u in d.ids], [d.texts[u] for u in d.ids],
                              opts.acoustic_scale, opts.align_batch, compiler)
        alis = {u: a for u, a in zip(d.ids, got) if a is not None}
        missing = write_alignments(out, d, alis, ali_field)
        say(f"[{d.name}] {len(alis)} of {len(d.cuts)} cuts aligned -> {out}/cuts_{d.name}"
            f".jsonl.gz" + (f"; {len(missing)} left out (no path of their length): "
                            f"{' '.join(missing[:5])}{' ...' * (len(missing) > 5)}"
                            if missing else ""))
        summary[f"aligned_{d.name}"] = len(alis)
        summary["sets"][d.name] = {"cuts": str(d.path), "num_cuts": len(d.cuts),
                                   "aligned": len(alis), "left_out": missing,
                                   "frames_adjusted": d.adjusted}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
