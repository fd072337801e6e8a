"""Lattice pipelines for recipes: a data set's lattices to a directory, and the second passes
run on them (LM-scale / insertion-penalty sweeps, whole-lattice rescoring, n-best lists,
oracle error rates), each over a set of utterances.

Lattice sets are mappings ``utt -> lattice`` (single lattices as :func:`load_lattice_dir`
gives them); word sequences are lists of word ids (``aux_labels``). Every function that can
meet an unusable utterance (a bad or empty lattice, no path accepted by a new G, an n-best
determinization too large) skips it, counts it by kind in the returned :class:`Counter`, and
reports it with its utterance id through ``on_skip`` (default: a line on stderr). Sweeps
(:func:`~.grid.grid_search`: its sweep order and tie-break) score an utterance without a
hypothesis as an empty one (all deletions).

::

    stats = write_lattice_dir(hlg, batches, "exp/lats/dev", words=words, lm_scale=0.5)
    lats, bad = load_lattice_dir("exp/lats/dev")
    best = sweep_lattices(lats, refs, [0.2, 0.5, 1.0], [-1, 0, 1], error_fn=per)   # 1-best
    print(best.format_table(), end="")                      # .best: the chosen setting
    new, bad = rescore_lattices(lats, load_g("3gram.arpa", words))                  # 3-gram
    best3 = sweep_lattices(new, refs, [0.2, 0.5, 1.0], [-1, 0, 1], error_fn=per)
    errors = oracle_errors(lats, ref_ids, word_map=fold)                            # oracle

Score conventions are :mod:`.lattice`'s: ``scores = am + lm_scale * lm - word_penalty *
[word]`` (log semiring values, tropical best paths); n-best reranking is :mod:`.nnlm`'s.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch

from wfst_asr.fsa import Fsa, SymbolTable, create_fsa_vec

from .grid import GridResult, grid_search
from .lattice import best_word_sequences, get_lattice, is_empty, lattice_stats, rescale
from .lattice_io import LatticeError, LatticeReader, LatticeWriter
from .nbest import Nbest, nbest_one
from .nnlm import error_rate
from .ondemand import OnDemandNgram, rescore_lattice_ngram
from .rescore import check_g_words, oracle, prepare_g, rescore_lattice

__all__ = [
    "best_word_seqs",
    "load_lattice_dir",
    "nbest_lists",
    "oracle_errors",
    "rescore_lattices",
    "sweep_lattices",
    "write_lattice_dir",
]

Batch = tuple[Sequence[str], torch.Tensor, torch.Tensor]
SkipFn = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def write_lattice_dir(graph: Fsa, batches: Iterable[Batch], out_dir: str | Path, *,
                      words: SymbolTable | None = None, tokens: SymbolTable | None = None,
                      search_beam: float = 20.0, output_beam: float = 8.0,
                      min_active_states: int = 30, max_active_states: int = 10000,
                      lm_scale: float = 1.0, word_penalty: float = 0.0,
                      meta: Mapping[str, object] | None = None,
                      overwrite: bool = False) -> dict[str, float]:
    """Lattices of a data set (:func:`~.lattice.get_lattice`) written as a lattice directory
    (:class:`~.lattice_io.LatticeWriter`: one file per batch, staged and moved in at the end,
    the index last, so an interrupted run leaves no readable partial directory, and with
    ``overwrite`` the old lattices stay whole until the new ones are all written).

    Args:
      graph: the decoding graph (HLG, ...), one FSA with ``aux_labels``.
      batches: ``(utt_ids [B], log_probs [B, T, V], lens [B])`` per batch; row ``b`` of
        ``log_probs`` belongs to ``utt_ids[b]``.
      out_dir: the lattice directory (``overwrite``: replace a complete one).
      words, tokens: symbol tables copied into the directory (their checksums into the files).
      search_beam, output_beam, min_active_states, max_active_states, lm_scale, word_penalty:
        :func:`~.lattice.get_lattice`'s.
      meta: extra ``meta.json`` values (``frame_shift``, ``subsampling``, ...).

    Returns:
      ``{"utterances", "empty", "frames", "arcs", "seconds"}``: counts over the data set (an
      empty lattice, where no path survived the beam, is written as such: readers skip it),
      and the wall time of the searches (not of the model that made ``log_probs``).
    """
    out = {"utterances": 0.0, "empty": 0.0, "frames": 0.0, "arcs": 0.0, "seconds": 0.0}
    m = dict(meta or {})
    m.update(search_beam=float(search_beam), output_beam=float(output_beam))
    with LatticeWriter(out_dir, words=words, tokens=tokens, meta=m, overwrite=overwrite) as w:
        for ids, log_probs, lens in batches:
            if len(ids) == 0:
                continue
            t0 = time.perf_counter()
            lat = get_lattice(graph, log_probs, lens, search_beam=search_beam,
                              output_beam=output_beam, min_active_states=min_active_states,
                              max_active_states=max_active_states, lm_scale=lm_scale,
                              word_penalty=word_penalty)
            out["seconds"] += time.perf_counter() - t0
            w.write(list(ids), lat.to("cpu"))
            st = lattice_stats(lat)
            out["utterances"] += len(ids)
            out["empty"] += float(is_empty(lat).sum())
            out["frames"] += float(st["frames"].sum())
            out["arcs"] += float(st["arcs"].sum())
    return out


def load_lattice_dir(lat_dir: str | Path, words: SymbolTable | str | Path | None = None,
                     on_skip: SkipFn | None = _stderr) -> tuple[dict[str, Fsa], Counter[str]]:
    """All usable lattices of a directory, ``({utt: lattice}, skipped counts by kind)``; each
    unusable one (corrupt or truncated file, another word table, empty) reported through
    ``on_skip`` with its utterance id (:class:`~.lattice_io.LatticeError`)."""
    reader = LatticeReader(lat_dir, words=words)
    lats: dict[str, Fsa] = {}
    bad: Counter[str] = Counter()
    for utt, lat in reader:
        if isinstance(lat, LatticeError):
            bad[lat.kind] += 1
            if on_skip is not None:
                on_skip(f"skipping {lat}")
            continue
        lats[utt] = lat
    return lats, bad


def best_word_seqs(lattices: Mapping[str, Fsa], lm_scale: float | None = None,
                   word_penalty: float | None = None) -> dict[str, list[int]]:
    """``{utt: words of the best path}`` with the lattices' scores recombined at ``lm_scale``
    / ``word_penalty`` (:func:`~.lattice.rescale`; ``None``: each lattice's own). All
    lattices go through one batched shortest-path search."""
    if not lattices:
        return {}
    keys = list(lattices)
    vec = create_fsa_vec([lattices[k] for k in keys])
    if lm_scale is not None or word_penalty is not None:
        s0 = float(vec.lm_scale) if vec.has_attr("lm_scale") else 1.0
        w0 = float(vec.word_penalty) if vec.has_attr("word_penalty") else 0.0
        vec = rescale(vec, s0 if lm_scale is None else lm_scale,
                      w0 if word_penalty is None else word_penalty)
    return dict(zip(keys, best_word_sequences(vec)))


def sweep_lattices(lattices: Mapping[str, Fsa], refs: Mapping[str, Sequence],
                   lm_scales: Sequence[float], word_penalties: Sequence[float],
                   error_fn: Callable[[list, list], float] | None = None,
                   log: Callable[[str], None] | None = None,
                   metric: str = "ER") -> GridResult:
    """:func:`~.grid.grid_search` of the lattices' best paths (:func:`best_word_seqs`) at
    every ``(lm_scale, word_penalty)``, scored against ``refs`` (``utt -> reference``;
    utterances of ``refs`` without a lattice count with an empty hypothesis) with
    ``error_fn(refs, hyps)`` (lists in ``refs`` order; default :func:`~.nnlm.error_rate` over
    the word ids, in percent). ``result.format_table()`` is the table (``metric`` names the
    error)."""
    err_fn = error_fn or error_rate
    keys = list(refs)
    ref_list = [refs[k] for k in keys]
    usable = {k: lattices[k] for k in keys if k in lattices}

    def evaluate(lm_scale: float, word_penalty: float) -> float:
        hyps = best_word_seqs(usable, lm_scale, word_penalty)
        return err_fn(ref_list, [hyps.get(k, []) for k in keys])

    return grid_search(evaluate, lm_scales, word_penalties, log=log, metric=metric)


def rescore_lattices(lattices: Mapping[str, Fsa], G: Fsa | OnDemandNgram,
                     words: SymbolTable | None = None, on_skip: SkipFn | None = _stderr
                     ) -> tuple[dict[str, Fsa], Counter[str]]:
    """Whole-lattice rescoring of every lattice with ``G`` (:func:`~.rescore.rescore_lattice`:
    old LM scores dropped, composed with G, new ``lm_scores`` = G's; the lattices' own
    ``lm_scale`` / ``word_penalty`` kept). ``G`` goes through :func:`~.rescore.prepare_g` once
    and its word table is checked against ``words`` (ValueError when they differ). A lattice
    none of whose paths G accepts is skipped and counted as ``"no-path-in-G"``. An
    :class:`~.ondemand.OnDemandNgram` (a large LM, never expanded) is composed on demand with
    :func:`~.ondemand.rescore_lattice_ngram` instead."""
    if isinstance(G, OnDemandNgram):
        def rescore(lat: Fsa) -> Fsa:
            return rescore_lattice_ngram(lat, G)
    else:
        g = prepare_g(G)
        check_g_words(g, words)

        def rescore(lat: Fsa) -> Fsa:
            return rescore_lattice(lat, g, prepared=True)
    out: dict[str, Fsa] = {}
    bad: Counter[str] = Counter()
    for utt, lat in lattices.items():
        res = rescore(lat)
        if res.num_arcs == 0:
            bad["no-path-in-G"] += 1
            if on_skip is not None:
                err = LatticeError(utt, "no-path-in-G",
                                   "no path of the lattice is accepted by the new G")
                on_skip(f"skipping {err}")
            continue
        out[utt] = res[0]
    return out, bad


def nbest_lists(lattices: Mapping[str, Fsa], n: int, lm_scale: float | None = None,
                word_penalty: float | None = None, beam: float = 4.0, max_states: int = 10000,
                on_skip: SkipFn | None = _stderr) -> tuple[dict[str, Nbest], Counter[str]]:
    """The ``n`` best distinct word sequences of every lattice (:func:`~.nbest.nbest_one`),
    ranked with the lattices' scores recombined at ``lm_scale`` / ``word_penalty`` (``None``:
    each lattice's own); each list's entries keep the unscaled ``am_scores`` / ``lm_scores``.
    A lattice whose word-level determinization outgrows ``max_states`` at the starting
    ``beam`` is skipped and counted (``"too-large"``); lists not proven exact (grown past
    ``max_states`` while widening) are kept and counted as ``"inexact"`` (not skipped)."""
    out: dict[str, Nbest] = {}
    bad: Counter[str] = Counter()
    for utt, lat in lattices.items():
        if lm_scale is not None or word_penalty is not None:
            s0 = float(lat.lm_scale) if lat.has_attr("lm_scale") else 1.0
            w0 = float(lat.word_penalty) if lat.has_attr("word_penalty") else 0.0
            lat = rescale(lat, s0 if lm_scale is None else lm_scale,
                          w0 if word_penalty is None else word_penalty)
        try:
            nb = nbest_one(lat, n, beam=beam, max_states=max_states)
        except RuntimeError as e:
            bad["too-large"] += 1
            if on_skip is not None:
                on_skip(f"skipping utterance {utt}: {e}")
            continue
        if not nb.exact:
            bad["inexact"] += 1
        out[utt] = nb
    return out, bad


def oracle_errors(lattices: Mapping[str, Fsa], refs: Mapping[str, Sequence[int]],
                  word_map: Mapping[int, int] | None = None, method: str = "auto",
                  max_paths: int = 1000) -> dict[str, tuple[int, list[int]]]:
    """Lattice oracle of every utterance of ``refs``: ``{utt: (errors, closest hypothesis)}``
    (:func:`~.rescore.oracle`: the minimum edit distance between ``refs[utt]`` and the word
    sequence of any lattice path, after ``word_map``, e.g. a 48 -> 39 phone folding on word
    ids). An utterance without a lattice gets ``(len(ref), [])``. The oracle error rate is
    ``sum(errors) / sum(len(ref))``, never above the error rate of any path of the lattices
    (their best path included)."""
    out: dict[str, tuple[int, list[int]]] = {}
    for utt, ref in refs.items():
        lat = lattices.get(utt)
        if lat is None:
            out[utt] = (len(ref), [])
            continue
        out[utt] = oracle(lat, [int(r) for r in ref], method=method, max_paths=max_paths,
                          word_map=word_map)
    return out
