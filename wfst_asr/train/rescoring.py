"""Lattices of a trained model and their second passes, tuned on a dev set, for any corpus
(``wfst-asr make-lattices``, ``wfst-asr rescore``, ``wfst-asr cuts-text``).

* :func:`make_lattices`: the model of an experiment directory, loaded and run as ``wfst-asr
  decode`` does (:class:`~.decoder.Decoder`: CTC / HMM / MMI models and GMM dirs, not
  transducers), over each set; lattices with its graph (the lang dir's HLG / HCLG, or a given
  graph file) -> ``<out_dir>/<set>`` (:func:`~wfst_asr.decode.pipeline.write_lattice_dir`:
  per-arc acoustic and graph scores kept, so the second passes can rescale them).
* :class:`Rescorer`: the lattice directories ``<lat_dir>/<set>`` of the sets, scored against the
  references of their cuts, with these methods:

  ===========  ==============================================================================
  ``lat1best``  the lattices' best path over ``lm_scales`` x ``word_penalties``
  ``<N>gram``   (an n-gram given) the lattices rescored with it (old graph scores replaced,
                :func:`~wfst_asr.decode.pipeline.rescore_lattices`), best path, same grid;
                ``N`` is the ARPA file's order (``ngram`` for a G file)
  ``nnlm``      (an LSTM LM given) the ``nbest`` best word sequences of each lattice at
                ``lat1best``'s setting, reranked by ``am + lm_scale * lm - word_penalty *
                words + nnlm_scale * LSTM LM`` (:mod:`wfst_asr.decode.nnlm`)
  ``attention`` (an attention model's exp dir given) the same n-best lists, each entry's
                tokens (its lattice path's CTC labels, collapsed) scored by the attention
                decoder on the utterance's encoder output: icefall's attention-decoder
                rescoring, ``+ attention_scale * log P_att(tokens <eos>)``; its lattices come
                from the same model's CTC branch (``make-lattices`` on the attention exp dir)
  ``oracle``    the lattice path closest to the reference (edit distance on the folded words:
                under CER, the CER of the word oracle); a lower bound of any rescoring
  ===========  ==============================================================================

  Every setting is chosen on the tune set ONLY (:func:`~wfst_asr.decode.grid.grid_search`,
  scored by :func:`~wfst_asr.scoring.score_texts` as ``wfst-asr decode`` tunes) and applied once
  to every other set. The output is a decode directory (:mod:`wfst_asr.scoring.decode_dir`:
  ``ref/<set>.ref``, ``<method>/<set>.hyp`` in words.txt's symbols before any folding,
  ``<method>/sweep_<tune set>.txt``, ``settings.json``), scored at the end with
  :func:`~wfst_asr.scoring.score_decode_dir` (what ``wfst-asr score`` runs).

Nothing here knows a corpus: the references' field, the folding map and the metric are the
caller's. Inputs a user can fix raise ValueError (or :class:`~.decoder.DecodeError`) with one
line naming the file.

::

    make_lattices("exp/ctc", {"dev": dev_cuts, "test": test_cuts}, "exp/ctc/lats", "data/lang")
    refs, spk = set_references({"dev": dev_cuts, "test": test_cuts}, "text")
    r = Rescorer("exp/ctc/lats", "data/lang", refs, spk, RescoreOptions(metric="WER"))
    settings, results = r.run("exp/ctc/rescore", ngram="lm/4gram.arpa", nnlm="lm/nnlm/lm.pt")
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wfst_asr.atomic import atomic_write_text, iter_text_lines
from wfst_asr.decode.grid import GridResult
from wfst_asr.decode.lattice_io import read_meta, symbol_table_checksum
from wfst_asr.decode.nbest import Nbest
from wfst_asr.decode.nnlm import add_nnlm_scores, rescore, sweep
from wfst_asr.decode.ondemand import OnDemandNgram, load_rescoring_lm
from wfst_asr.decode.pipeline import (
    best_word_seqs,
    load_lattice_dir,
    nbest_lists,
    oracle_errors,
    rescore_lattices,
    sweep_lattices,
    write_lattice_dir,
)
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.scoring import Fold, score_decode_dir, score_texts, write_text, write_utt2spk
from wfst_asr.scoring.decode_dir import SETTINGS, hyp_path, ref_path, utt2spk_path, write_settings
from wfst_asr.train.decoder import DecodeError, DecodeOptions, Decoder
from wfst_asr.train.inference import read_references
from wfst_asr.train.lm import load_lm

__all__ = ["LatticeOptions", "RescoreOptions", "Rescorer", "make_lattices", "set_references"]

PathLike = str | os.PathLike
Refs = dict[str, dict[str, list[str]]]


# ---------------------------------------------------------------------- references
def set_references(sets: Mapping[str, PathLike], field: str = "text"
                   ) -> tuple[Refs, dict[str, dict[str, str]]]:
    """``({set: {utt: reference}}, {set: {utt: speaker}})`` of each set's cuts, in manifest
    order; the reference is the supervision field ``field`` (``text``: the supervision text)
    split at spaces. ValueError naming the manifest for a supervision without it."""
    from lhotse import CutSet

    refs: Refs = {}
    spk: dict[str, dict[str, str]] = {}
    for name, path in sets.items():
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such cuts file ({name})")
        if field != "text":
            r, s = read_references(path, field)
        else:
            r, s = {}, {}
            for sup in (s_ for c in CutSet.from_file(path) for s_ in c.supervisions):
                if sup.text is None:
                    raise ValueError(f"{path}: supervision {sup.id} has no text")
                r[sup.id], s[sup.id] = sup.text.split(), sup.speaker
        refs[name] = r
        spk[name] = {u: str(v) for u, v in s.items() if v is not None}
    return refs, spk


# ---------------------------------------------------------------------- lattices
@dataclass
class LatticeOptions:
    """How :func:`make_lattices` searches (:func:`~wfst_asr.decode.lattice.get_lattice`)."""

    search_beam: float = 20.0
    output_beam: float = 6.0
    """The lattice beam, in log-score units at ``lm_scale``."""
    max_active_states: int = 10000
    lm_scale: float = 0.5
    """Graph-score scale of the search (the second passes rescale the lattices)."""
    word_penalty: float = 0.0
    max_duration: float = 200.0
    ref_field: str | None = None
    """As ``wfst-asr decode``'s (a hybrid trained on alignments needs it)."""
    device: str | None = None


def _frame_shift(cuts: PathLike) -> float | None:
    from lhotse import CutSet

    first = next(iter(CutSet.from_jsonl_lazy(cuts)), None)
    return getattr(first, "frame_shift", None) if first is not None else None


def _ctc_outputs(dec: Decoder, out: torch.Tensor) -> torch.Tensor:
    """The log-probs a graph searches: the model's outputs, or an attention model's CTC
    branch on its encoder output."""
    if dec.loss != "attention":
        return out
    with torch.no_grad():
        return dec.model.ctc_log_probs(out.to(dec.device)).cpu()


def ctc_collapse(labels: Sequence[int]) -> list[int]:
    """The tokens of a CTC label path (one label per frame): repeats merged, blanks (0) and
    the final arc's -1 dropped."""
    out: list[int] = []
    prev = 0
    for x in labels:
        if x > 0 and x != prev:
            out.append(int(x))
        prev = x
    return out


def attention_memory(dec: Decoder, cuts: PathLike) -> dict[str, tuple[torch.Tensor, int]]:
    """``{utt: (encoder output [T, C], frames)}`` of an attention model over a cuts file."""
    return {u: (e[: int(k)], int(k)) for b in dec.outputs(cuts)
            for u, e, k in zip(b.ids, b.log_probs, b.lens)}


def make_lattices(exp_dir: PathLike, sets: Mapping[str, PathLike], out_dir: PathLike,
                  lang_dir: PathLike, graph: PathLike | None = None,
                  options: LatticeOptions | None = None,
                  log: Callable[[str], None] | None = print) -> dict[str, dict[str, float]]:
    """The lattices of every set (``{name: cuts}``) -> ``<out_dir>/<name>`` (replaced when it
    exists); returns :func:`~wfst_asr.decode.pipeline.write_lattice_dir`'s stats per set."""
    o = options or LatticeOptions()
    say = log or (lambda _m: None)
    if not sets:
        raise DecodeError("no cuts (give --dev-cuts / --test-cuts / --cuts)")
    dec = Decoder(exp_dir, lang_dir, graph, DecodeOptions(max_duration=o.max_duration,
                                                          ref_field=o.ref_field,
                                                          device=o.device), log=log)
    if dec.loss == "transducer":
        raise DecodeError(f"{exp_dir}: a transducer has no lattices here (CTC, HMM, MMI "
                          "models and GMM dirs do)")
    for name, path in sets.items():
        if not Path(path).is_file():
            raise DecodeError(f"{path}: no such cuts file ({name})")
    search_graph = dec.graph
    hmm = dec.topo is not None and not dec.topo.is_ctc
    graph_name = str(graph) if graph is not None else str(Path(lang_dir) / ("HCLG" if hmm
                                                                           else "HLG"))
    tokens = SymbolTable.from_file(Path(lang_dir) / "tokens.txt")
    out: dict[str, dict[str, float]] = {}
    for name, path in sets.items():
        t0 = time.perf_counter()
        batches = [(b.ids, _ctc_outputs(dec, b.log_probs), b.lens) for b in dec.outputs(path)]
        t_model = time.perf_counter() - t0
        meta: dict[str, Any] = {"model": str(dec.checkpoint), "graph": graph_name}
        shift = _frame_shift(path)
        if shift is not None:
            meta["frame_shift"] = float(shift)
        meta["subsampling"] = int(getattr(dec.model, "subsampling_factor", 1))
        st = write_lattice_dir(search_graph, batches, Path(out_dir) / name, words=dec.words,
                               tokens=tokens, search_beam=o.search_beam,
                               output_beam=o.output_beam, max_active_states=o.max_active_states,
                               lm_scale=o.lm_scale, word_penalty=o.word_penalty, meta=meta,
                               overwrite=True)
        out[name] = st
        say(f"{name}: {int(st['utterances'])} lattices ({int(st['empty'])} empty), "
            f"{st['arcs'] / max(st['frames'], 1):.1f} arcs per frame, model {t_model:.1f} s, "
            f"search {st['seconds']:.1f} s -> {Path(out_dir) / name}")
    return out


# ---------------------------------------------------------------------- rescoring
@dataclass
class RescoreOptions:
    """The grids and settings of :class:`Rescorer` (the ``wfst-asr rescore`` options)."""

    lm_scales: Sequence[float] = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    word_penalties: Sequence[float] = (-2.0, -1.0, 0.0, 1.0)
    nbest: int = 50
    nbest_beam: float = 1.0
    """Starting beam of the n-best search (widened until the list is exact)."""
    max_states: int = 20000
    nnlm_lm_scales: Sequence[float] | None = None
    """The n-best sweep's graph-score scales (None: ``lm_scales``)."""
    nnlm_scales: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    nnlm_word_penalties: Sequence[float] | None = None
    """The n-best sweep's penalties (None: ``word_penalties``)."""
    nnlm_batch_size: int = 256
    attention_scales: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    """The attention-rescoring sweep's weights of the decoder's ``log P(tokens <eos>)``."""
    metric: str = "WER"
    fold: Fold | None = None
    """Applied to references and hypotheses before scoring (e.g. TIMIT's 48 -> 39)."""
    tune_set: str = "dev"


def arpa_order(path: PathLike) -> int:
    """The highest order of an ARPA file's ``\\data\\`` header (``ngram N=...`` lines)."""
    order = 0
    for line in iter_text_lines(path):
        s = line.strip()
        if s.startswith("ngram ") and "=" in s:
            order = max(order, int(s[6:].split("=")[0]))
        elif s.startswith("\\") and s.endswith("-grams:"):
            break
    if not order:
        raise ValueError(f"{path}: no '\\data\\' header with 'ngram N=' lines (not an ARPA LM)")
    return order


def _check_words(words: SymbolTable, words_file: Path, lat_dir: Path) -> None:
    """ValueError naming ``words_file`` when it is not the word table of ``lat_dir``."""
    meta = read_meta(lat_dir)
    own = lat_dir / "words.txt"
    theirs = symbol_table_checksum(own) if own.is_file() else meta.get("words_checksum")
    mine = symbol_table_checksum(words)
    if theirs is not None and theirs != mine:
        raise ValueError(f"{words_file}: not the word table of the lattices in {lat_dir} "
                         f"(checksum {mine[:12]}, theirs {str(theirs)[:12]})")


class _Symbols:
    """Word ids <-> the scored symbols: the error of id sequences (sweeps), and the oracle's
    id space (the folded symbols, new ids for symbols not in words.txt)."""

    def __init__(self, words: SymbolTable, metric: str, fold: Fold | None) -> None:
        self.words, self.metric, self.fold = words, metric, fold
        self.ids = {str(w): int(i) for w, i in words.items()}
        self.word_map: dict[int, int] | None = None
        if fold is not None:
            self.word_map = {}
            for w, i in words.items():
                try:
                    f = fold([str(w)]) if int(i) > 0 else None
                except ValueError:  # <s>, #0, ...: not in the folding table
                    continue
                if f is not None and len(f) <= 1:
                    self.word_map[int(i)] = self.intern(f[0]) if f else 0
        # a folded id -> the word written for it (the symbol itself when it folds to itself)
        self.written: dict[int, str] = {}
        for w, i in words.items():
            j = self.word_map.get(int(i)) if self.word_map is not None else int(i)
            if j and (j not in self.written or self.ids.get(str(w)) == j):
                self.written[j] = str(w)

    def intern(self, sym: str) -> int:
        if sym not in self.ids:
            self.ids[sym] = max(self.ids.values(), default=0) + 1
        return self.ids[sym]

    def strs(self, ids: Sequence[int]) -> list[str]:
        return [str(self.words[int(i)]) for i in ids]

    def error(self, refs: list, hyps: list) -> float:
        """Corpus error rate (%) of symbol references and word-id hypotheses."""
        return score_texts(dict(enumerate(refs)), {i: self.strs(h) for i, h in enumerate(hyps)},
                           None, self.metric, self.fold).rate

    def oracle(self, lattices: Mapping[str, Fsa], refs: Mapping[str, list[str]]
               ) -> dict[str, list[str]]:
        """The oracle hypothesis of every utterance, as words that fold to it."""
        f = self.fold or list
        ref_ids = {u: [self.intern(s) for s in f(r)] for u, r in refs.items()}
        out = oracle_errors(lattices, ref_ids, word_map=self.word_map)
        return {u: [self.written.get(i) or str(self.words[i]) for i in h]
                for u, (_, h) in out.items() if u in lattices}


def _grid_text(res: GridResult, tune: str, metric: str, grid: str) -> str:
    return f"tuned on {tune} over {grid}: {res.describe()} ({tune} {metric} {res.error:.2f}%)"


class Rescorer:
    """The second passes over the lattice directories ``<lat_dir>/<set>`` of the sets of
    ``refs`` (see the module doc).

    Args:
      lat_dir: the folder of the sets' lattice directories (:func:`make_lattices`'s out_dir).
      lang_dir: its ``words.txt`` must be the lattices' (ValueError naming it otherwise).
      refs, speakers: per set, ``{utt: reference symbols}`` / ``{utt: speaker}``
        (:func:`set_references`).
      options: :class:`RescoreOptions`.
      log: progress lines (default ``print``).
    """

    def __init__(self, lat_dir: PathLike, lang_dir: PathLike, refs: Refs,
                 speakers: Mapping[str, Mapping[str, str]],
                 options: RescoreOptions | None = None,
                 log: Callable[[str], None] | None = print) -> None:
        self.o = options or RescoreOptions()
        self.metric = self.o.metric.upper()
        self.log = log or (lambda _m: None)
        self.lat_dir, self.lang_dir = Path(lat_dir), Path(lang_dir)
        self.refs, self.speakers = refs, speakers
        if not refs:
            raise ValueError("no sets (give --dev-cuts / --test-cuts / --cuts)")
        words_file = self.lang_dir / "words.txt"
        if not words_file.is_file():
            raise ValueError(f"{words_file}: no such file (not a lang dir?)")
        self.words = SymbolTable.from_file(words_file)
        self.sym = _Symbols(self.words, self.metric, self.o.fold)
        self.lats: dict[str, dict[str, Fsa]] = {}
        self.skipped: Counter[str] = Counter()
        for name in refs:
            d = self.lat_dir / name
            if not d.is_dir():
                raise ValueError(f"{d}: no such lattice directory (make-lattices writes it)")
            _check_words(self.words, words_file, d)
            lats, bad = load_lattice_dir(d, words=self.words)
            self.skipped.update({f"{name} {k}": v for k, v in bad.items()})
            self.lats[name] = {u: lat for u, lat in lats.items() if u in refs[name]}
            if len(self.lats[name]) < len(lats):
                n = len(lats) - len(self.lats[name])
                self.skipped[f"{name} no-reference"] += n
                self.log(f"{d}: {n} lattices of utterances without a reference left out")
        self.meta = read_meta(self.lat_dir / next(iter(refs)))
        self.out = Path(".")
        self.methods: dict[str, dict[str, Any]] = {}
        self.hyps: dict[str, dict[str, dict[str, list[str]]]] = {}

    # ------------------------------------------------------------------ tuning
    def _tuned(self, name: str, how: str, grid_size: int, sweep_fn: Callable[[], GridResult],
               single: dict[str, float], grid: str) -> dict[str, float]:
        """The setting of ``name``: ``sweep_fn()`` on the tune set (its table written), or the
        grid's only setting."""
        info: dict[str, Any] = {"how": how, "setting": None}
        if grid_size > 1:
            tune = self.o.tune_set
            res = sweep_fn()
            p = self.out / name / f"sweep_{tune}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p, res.format_table())
            setting = {k: float(v) for k, v in res.best.items()}
            info["tune_error"] = res.error
            info["how"] += ", " + _grid_text(res, tune, self.metric, grid)
            self.log(f"{name}: chosen {res.describe()} ({tune} {self.metric} {res.error:.2f}%)")
        else:
            setting = dict(single)
        info["setting"] = setting
        self.methods[name] = info
        return setting

    def _lattice_method(self, name: str, how: str, lats: dict[str, dict[str, Fsa]]) -> None:
        o = self.o
        scales, pens = list(o.lm_scales), list(o.word_penalties)
        tune = o.tune_set
        s = self._tuned(name, how, len(scales) * len(pens),
                        lambda: sweep_lattices(lats[tune], self.refs[tune], scales, pens,
                                               error_fn=self.sym.error, metric=self.metric),
                        {"lm_scale": scales[0], "word_penalty": pens[0]},
                        f"lm_scale {scales} x word_penalty {pens}")
        self.hyps[name] = {n: {u: self.sym.strs(h) for u, h in best_word_seqs(
            lats[n], s["lm_scale"], s["word_penalty"]).items()} for n in self.refs}

    def _load_ngram(self, path: Path) -> tuple[str, Fsa | OnDemandNgram]:
        """The method's name (``<order>gram``) and the LM of an ARPA file (or G file): G, or
        for an ARPA LM too large to expand into an acceptor, the LM queried on demand
        (:func:`~wfst_asr.decode.ondemand.load_rescoring_lm`)."""
        name = f"{arpa_order(path)}gram" if path.suffix == ".arpa" else "ngram"
        return name, load_rescoring_lm(path, self.words)

    def _load_nnlm(self, path: Path) -> torch.nn.Module:
        lm = load_lm(path)
        if lm.words_checksum is not None and \
                lm.words_checksum != symbol_table_checksum(self.words):
            raise ValueError(f"{path}: the LM was trained over another word table than "
                             f"{self.lang_dir / 'words.txt'}")
        return lm

    def _ngram(self, path: Path, name: str, g: Fsa | OnDemandNgram) -> None:
        t0 = time.perf_counter()
        lats = {}
        for n in self.refs:
            lats[n], bad = rescore_lattices(self.lats[n], g, words=self.words)
            self.skipped.update({f"{n} {name} {k}": v for k, v in bad.items()})
        self._lattice_method(name, f"best path of the lattices rescored with {path} (whole "
                             "lattice, the old graph scores replaced)", lats)
        self.methods[name]["seconds"] = round(time.perf_counter() - t0, 2)

    def _nbest_method(self, name: str, what: str, at: dict[str, float],
                      score: Callable[[str, dict[str, Nbest]], None],
                      weights: Sequence[float]) -> None:
        """``name``: the ``nbest``-best lists of each lattice at lattice setting ``at``,
        ``score(set, lists)`` attaching the extra score ``name`` to every entry, reranked by
        ``am + lm_scale * lm - word_penalty * words + <name>_scale * extra`` (tuned)."""
        t0 = time.perf_counter()
        o = self.o
        nbests = {}
        for n in self.refs:
            nbests[n], bad = nbest_lists(self.lats[n], o.nbest, lm_scale=at["lm_scale"],
                                         word_penalty=at["word_penalty"], beam=o.nbest_beam,
                                         max_states=o.max_states)
            self.skipped.update({f"{n} nbest {k}": v for k, v in bad.items()})
            score(n, nbests[n])
        scales = list(o.nnlm_lm_scales or o.lm_scales)
        pens = list(o.nnlm_word_penalties or o.word_penalties)
        ws = list(weights)
        tune = o.tune_set
        sizes = ", ".join(f"{n} {sum(map(len, nb.values())) / max(len(nb), 1):.1f}"
                          for n, nb in nbests.items())
        how = (f"{o.nbest}-best lists at lattice lm_scale {at['lm_scale']:g}, word_penalty "
               f"{at['word_penalty']:g} (mean entries: {sizes}) reranked with am + lm_scale * "
               f"lm - word_penalty * words + {name}_scale * {what}")
        key = f"{name}_scale"
        s = self._tuned(name, how, len(scales) * len(pens) * len(ws),
                        lambda: sweep(nbests[tune], self.refs[tune], scales, ws, pens,
                                      error_fn=self.sym.error, metric=self.metric, name=name),
                        {"lm_scale": scales[0], "word_penalty": pens[0], key: ws[0]},
                        f"lm_scale {scales} x word_penalty {pens} x {key} {ws}")
        self.methods[name]["nbest"] = o.nbest
        self.hyps[name] = {}
        for n, nb in nbests.items():
            keys = list(nb)
            best = rescore([nb[k] for k in keys], s["lm_scale"], s[key], s["word_penalty"],
                           name=name)
            self.hyps[name][n] = {k: self.sym.strs(h) for k, h in zip(keys, best)}
        self.methods[name]["seconds"] = round(time.perf_counter() - t0, 2)

    def _nnlm(self, path: Path, lm: torch.nn.Module, at: dict[str, float]) -> None:
        self._nbest_method("nnlm", str(path), at, lambda _n, nbs: add_nnlm_scores(
            list(nbs.values()), lm, batch_size=self.o.nnlm_batch_size), self.o.nnlm_scales)

    def _attention(self, exp_dir: Path, cuts: Mapping[str, PathLike],
                   at: dict[str, float]) -> None:
        """icefall's attention-decoder rescoring: each n-best entry's tokens (its lattice path's
        CTC labels, collapsed) scored by the attention decoder of ``exp_dir`` on the
        utterance's encoder output."""
        missing = [n for n in self.refs if n not in cuts]
        if missing:
            raise ValueError(f"attention rescoring needs the cuts of {', '.join(missing)}")
        dec = Decoder(exp_dir, self.lang_dir, options=DecodeOptions(device="cpu"), log=None)
        if dec.loss != "attention":
            raise DecodeError(f"{exp_dir}: attention rescoring needs an attention model, "
                              f"got loss {dec.loss!r}")

        def score(n: str, nbs: dict[str, Nbest]) -> None:
            mem = attention_memory(dec, cuts[n])
            for utt, nb in nbs.items():
                if utt not in mem:
                    raise ValueError(f"utterance {utt} of the lattices is not in {cuts[n]}")
                lat = self.lats[n][utt]
                seqs = [ctc_collapse(nb.alignment(lat, i)["labels"]) for i in range(len(nb))]
                e, k = mem[utt]
                nb.add_scores("attention",
                              dec.model.decoder.sequence_log_probs(e, k, seqs))

        self._nbest_method("attention", f"the attention decoder of {exp_dir}", at, score,
                           self.o.attention_scales)

    # ------------------------------------------------------------------ run
    def run(self, out_dir: PathLike, ngram: PathLike | None = None,
            nnlm: PathLike | None = None, attention: PathLike | None = None,
            cuts: Mapping[str, PathLike] | None = None) -> tuple[dict[str, Any], str]:
        """Every method, the decode directory ``out_dir`` written and scored; returns
        ``(settings, results text)``. ``attention``: an attention model's exp dir (method
        ``attention``, which runs its encoder on each set's ``cuts``)."""
        o = self.o
        grids = [len(o.lm_scales) * len(o.word_penalties)]
        if nnlm is not None:
            grids.append(len(o.nnlm_lm_scales or o.lm_scales) * len(o.nnlm_scales)
                         * len(o.nnlm_word_penalties or o.word_penalties))
        if max(grids) > 1 and o.tune_set not in self.refs:
            raise ValueError(f"the settings are chosen on the tune set {o.tune_set!r}, which "
                             "is not given (--dev-cuts, or --cuts NAME=PATH and --tune-set NAME)")
        ngram_p, nnlm_p = (Path(p) if p is not None else None for p in (ngram, nnlm))
        g = self._load_ngram(ngram_p) if ngram_p is not None else None
        lm = self._load_nnlm(nnlm_p) if nnlm_p is not None else None
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / SETTINGS).unlink(missing_ok=True)  # a dir without it is being written
        ref_path(self.out, "x").parent.mkdir(exist_ok=True)
        for n in self.refs:
            write_text(ref_path(self.out, n), self.refs[n])
            write_utt2spk(utt2spk_path(self.out, n), self.speakers.get(n, {}))
        t0 = time.perf_counter()
        self._lattice_method("lat1best", "best path of the lattices", self.lats)
        self.methods["lat1best"]["seconds"] = round(time.perf_counter() - t0, 2)
        if ngram_p is not None and g is not None:
            self._ngram(ngram_p, *g)
        if nnlm_p is not None and lm is not None:
            self._nnlm(nnlm_p, lm, self.methods["lat1best"]["setting"])
        if attention is not None:
            self._attention(Path(attention), cuts or {}, self.methods["lat1best"]["setting"])
        t0 = time.perf_counter()
        self.hyps["oracle"] = {n: self.sym.oracle(self.lats[n], self.refs[n]) for n in self.refs}
        self.methods["oracle"] = {
            "how": "the lattice path closest to the reference (edit distance on the folded "
                   "words): a lower bound of any rescoring of these lattices", "setting": None,
            "seconds": round(time.perf_counter() - t0, 2)}
        for m, per_set in self.hyps.items():
            hyp_path(self.out, m, "x").parent.mkdir(exist_ok=True)
            for n, hyps in per_set.items():
                write_text(hyp_path(self.out, m, n), hyps)
        skipped = ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items())) or "none"
        settings = {"sets": list(self.refs), "tune_set": self.o.tune_set,
                    "metric": self.metric,
                    "map": self.o.fold.as_dict() if self.o.fold is not None else None,
                    "lang_dir": str(self.lang_dir), "lat_dir": str(self.lat_dir),
                    "model": {"checkpoint": str(self.meta.get("model") or self.lat_dir),
                              "describe": f"lattices of {self.lat_dir} with "
                                          f"{self.meta.get('graph', 'a graph')}, lattice beam "
                                          f"{self.meta.get('output_beam', '?')}; skipped: "
                                          f"{skipped}"},
                    "skipped": dict(self.skipped), "methods": self.methods}
        write_settings(self.out, settings)
        _, text = score_decode_dir(self.out)
        return settings, text
