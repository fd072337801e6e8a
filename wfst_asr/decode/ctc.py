"""Greedy CTC decoding and graph-based 1-best decoding with the engine's beam search."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wfst_asr.fsa import DenseFsaVec, Fsa
from wfst_asr.fsa.viterbi import best_path_arcs

__all__ = ["aux_label_sequences", "greedy_ctc", "one_best", "scale_graph"]


def _check_inputs(log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``lens`` as a CPU int64 tensor ``[B]``, checked against ``log_probs [B, T, V]``."""
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [B, T, V], got {tuple(log_probs.shape)}")
    lens_t = torch.as_tensor(lens).to(device="cpu", dtype=torch.int64).reshape(-1)
    B, T, _ = log_probs.shape
    if lens_t.numel() != B:
        raise ValueError(f"got {lens_t.numel()} lengths for a batch of {B}")
    if B and (int(lens_t.min()) < 0 or int(lens_t.max()) > T):
        raise ValueError(f"lengths must be in [0, {T}], got {lens_t.tolist()}")
    return lens_t


def greedy_ctc(log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int]) -> list[list[int]]:
    """Greedy CTC decoding: per-frame argmax, repeats collapsed, blanks (0) dropped.

    Args:
      log_probs: ``[B, T, V]`` network output (any scores: only the argmax matters).
      lens: ``[B]`` number of valid frames per utterance; frames past it are ignored.

    Returns:
      The token ids of each utterance.
    """
    lens_t = _check_inputs(log_probs, lens)
    B, T, _ = log_probs.shape
    if B == 0 or T == 0:
        return [[] for _ in range(B)]
    best = log_probs.detach().argmax(dim=-1).cpu()  # [B, T]
    prev = torch.cat([torch.full((B, 1), -1, dtype=best.dtype), best[:, :-1]], dim=1)
    valid = torch.arange(T).unsqueeze(0) < lens_t.unsqueeze(1)
    keep = (best != prev) & (best != 0) & valid
    return [row[k].tolist() for row, k in zip(best, keep)]


def single_graph(graph: Fsa, what: str = "the decoder") -> Fsa:
    """``graph`` as one FSA (an FsaVec of one is indexed), which must have ``aux_labels``
    (output symbols); ValueError naming ``what`` otherwise."""
    if graph.is_vec:
        if graph.num_fsas != 1:
            raise ValueError(f"{what} takes one shared graph, got an FsaVec of "
                             f"{graph.num_fsas}")
        graph = graph[0]
    if not graph.has_attr("aux_labels"):
        raise ValueError("the graph has no aux_labels (output words); decode with a transducer "
                         "such as an HLG or ctc_topo")
    return graph


def scale_graph(graph: Fsa, lm_scale: float, word_penalty: float = 0.0) -> Fsa:
    """A detached view of ``graph`` with scores ``lm_scale * score - word_penalty * [aux > 0]``.

    ``word_penalty`` is Kaldi's word insertion penalty (``lattice-add-penalty``): it is taken
    off every arc that outputs a word (``aux_labels > 0``); a negative value is a bonus. Tensors
    other than the scores are shared; ``graph`` itself is unchanged.
    """
    g = graph.detach()
    if lm_scale != 1.0:
        g.scores = g.scores * lm_scale
    if word_penalty != 0.0:
        if not g.has_attr("aux_labels"):
            raise ValueError("word_penalty needs a graph with aux_labels (output words)")
        g.scores = g.scores - word_penalty * (g.aux_labels > 0).to(g.scores.dtype)
    return g


def _scaled_scores(graph: Fsa, lm_scale: float, word_penalty: float) -> torch.Tensor:
    """:func:`scale_graph`'s scores, cached on ``graph`` (per scale and penalty) while its
    scores are the same tensor, unmodified: repeated calls (an utterance at a time) then
    neither rescale a large graph nor rebuild the search's per-arc arrays."""
    key = ("scaled_scores", float(lm_scale), float(word_penalty))
    sc = graph.scores
    hit = graph._cache.get(key)
    if hit is not None and hit[0] is sc and hit[1] == sc._version:
        return hit[2]
    scaled = scale_graph(graph, lm_scale, word_penalty).scores
    graph._cache[key] = (sc, sc._version, scaled)
    return scaled


def aux_label_sequences(paths: Fsa) -> list[list[int]]:
    """The non-zero, non-(-1) ``aux_labels`` of each FSA of an FsaVec (e.g. the output of
    :func:`~wfst_asr.fsa.shortest_path`), in arc order: word ids for an HLG, token ids for
    :func:`~wfst_asr.graphs.topo.ctc_topo`."""
    paths = paths.as_vec()
    if not paths.has_attr("aux_labels"):
        raise ValueError("the graph has no aux_labels (output symbols); decode with a "
                         "transducer such as an HLG or ctc_topo")
    aux = paths.aux_labels.detach().cpu()
    splits = paths.arc_splits.cpu().tolist()
    out = []
    for i in range(paths.num_fsas):
        a = aux[splits[i]:splits[i + 1]]
        out.append(a[(a != 0) & (a != -1)].tolist())
    return out


def one_best(graph: Fsa, log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int],
             search_beam: float = 20.0, output_beam: float = 0.0, min_active_states: int = 30,
             max_active_states: int = 10000, lm_scale: float = 1.0,
             word_penalty: float = 0.0) -> list[list[int]]:
    """1-best decoding of a batch with a decoding graph (icefall's ``1best`` method).

    Each utterance ``b`` is the segment ``(b, 0, lens[b])`` of a :class:`DenseFsaVec`; the whole
    batch goes through one beam search with the shared ``graph``
    (:func:`~wfst_asr.fsa.viterbi.best_path_arcs`: the search of
    :func:`~wfst_asr.fsa.intersect_dense_pruned` with back-pointers instead of a lattice), and
    each utterance's best path is read back from them.

    Args:
      graph: a single decoding graph with ``aux_labels`` (HLG / TLG: word ids; ``ctc_topo``:
        token ids). Labels are network output ids (0 = blank), -1 on final arcs.
      log_probs: ``[B, T, V]`` network log-probs.
      lens: ``[B]`` valid frames per utterance.
      search_beam, min_active_states, max_active_states: see :func:`intersect_dense_pruned`.
      output_beam: kept for compatibility; the best path does not depend on a lattice beam, so
        no lattice is built whatever its value.
      lm_scale: the graph's scores are multiplied by ``lm_scale`` (the acoustic log-probs are
        not scaled), as icefall scales LM scores. Same best path as ``log_probs / lm_scale``
        with unscaled graph scores, but the beams are in the units of the scaled total.
      word_penalty: taken off the total once per output word (see :func:`scale_graph`).

    Returns:
      The non-zero, non-(-1) aux_labels of each utterance's best path (``[]`` when the search
      found no complete path).
    """
    lens_t = _check_inputs(log_probs, lens)
    B = log_probs.shape[0]
    if B == 0:
        return []
    if graph.is_vec and graph.num_fsas != 1:
        raise ValueError(f"one_best takes one shared graph, got an FsaVec of {graph.num_fsas}")
    graph = single_graph(graph, "one_best").to(log_probs.device)
    scores = _scaled_scores(graph, lm_scale, word_penalty)
    segs = torch.stack([torch.arange(B), torch.zeros(B, dtype=torch.int64), lens_t], dim=1)
    dense = DenseFsaVec(log_probs.detach(), segs.to(torch.int32))
    paths = best_path_arcs(graph, dense, search_beam, min_active_states, max_active_states,
                           scores=scores)
    aux = graph.aux_labels.detach()
    out = []
    for arcs in paths:
        a = aux.index_select(0, arcs).cpu()
        out.append(a[(a != 0) & (a != -1)].tolist())
    return out
