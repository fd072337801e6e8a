"""Forced-best scores: is a decoding error a search error or a model error?

For a word sequence ``W`` and an utterance, the *forced-best* score is the best total score
(tropical) over the paths of the decoding graph whose output is exactly ``W``, with the
search's scoring: ``am + lm_scale * graph - word_penalty * [word]`` (:func:`~.ctc.scale_graph`).
The graph is restricted to ``W`` by composing it with a linear acceptor of ``W`` on its output
side (OpenFst, through kaldifst), and the restricted graph is intersected with the network
output exactly (:func:`~wfst_asr.fsa.intersect_dense`, no beam).

Comparing the reference's forced-best score with the hypothesis' tells the two errors apart
(Kaldi's and the literature's forced-alignment check):

* ``search``: the reference scores higher than the hypothesis the beam search returned: a
  wider search would have found a better path, so the beam lost it;
* ``model``: the reference scores lower: the model (acoustics + LM + penalty) prefers the wrong
  words, and no search would fix it;
* ``unreachable``: no path of the graph outputs the reference (an OOV word, or a word the
  graph cannot follow), so the model cannot produce it at all.

::

    fb = ForcedBest(HLG, lm_scale=0.8, word_penalty=1.0)
    scores = fb.scores(log_probs, lens, [ref_ids_0, ref_ids_1])   # [B], -inf: unreachable
    kinds = classify(ref_scores, hyp_scores)                       # 'search' / 'model' / ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    create_fsa_vec,
    from_kaldifst,
    get_tot_scores,
    intersect_dense,
    linear_fsa,
    to_kaldifst,
)

from .ctc import _check_inputs, scale_graph, single_graph

__all__ = ["ForcedBest", "classify_error", "compare"]

#: score differences below this (in log units) count as ties (float32 sums over ~1k frames)
TIE = 1e-3


class ForcedBest:
    """Best path scores of given word sequences in a decoding graph (see the module docstring).

    Args:
      graph: one decoding graph with ``aux_labels`` (HLG: labels = network output ids, 0 =
        blank, -1 on final arcs; ``aux_labels`` = word ids, 0 = none).
      lm_scale, word_penalty: the search's (:func:`~wfst_asr.decode.one_best`).

    The scaled graph is converted to OpenFst once (about a second for a 3M-arc HLG); each
    :meth:`restrict` is then one composition with a linear acceptor.
    """

    def __init__(self, graph: Fsa, lm_scale: float = 1.0, word_penalty: float = 0.0) -> None:
        from wfst_asr._kaldi import kaldifst
        graph = single_graph(graph, "ForcedBest")
        self._kf = kaldifst()
        self._fst = to_kaldifst(scale_graph(graph, lm_scale, word_penalty).to("cpu"),
                                attach_symbols=False)
        self._kf.arcsort(self._fst, sort_type="olabel")

    def restrict(self, words: Sequence[int]) -> Fsa | None:
        """The graph's paths whose output is ``words`` (non-zero word ids), trimmed: an
        FSA with the graph's (scaled) scores, or None when there is none."""
        w = to_kaldifst(linear_fsa([int(x) for x in words]), attach_symbols=False)
        fst = self._kf.compose(self._fst, w, connect=True)
        if fst.num_states == 0:
            return None
        return from_kaldifst(fst, acceptor=False)

    def scores(self, log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int],
               word_seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Forced-best total of ``word_seqs[b]`` on utterance ``b``.

        Args:
          log_probs: ``[B, T, V]`` network log-probs; ``lens``: ``[B]`` valid frames.
          word_seqs: ``B`` word-id sequences.

        Returns:
          float64 ``[B]`` (on CPU): the best ``am + lm_scale * graph - word_penalty * words``
          over the paths of the graph with output ``word_seqs[b]``; ``-inf`` where no such path
          fits the utterance's frames.
        """
        lens_t = _check_inputs(log_probs, lens)
        B = log_probs.shape[0]
        if len(word_seqs) != B:
            raise ValueError(f"{len(word_seqs)} word sequences for a batch of {B}")
        out = torch.full((B,), float("-inf"), dtype=torch.float64)
        rows: list[int] = []
        graphs: list[Fsa] = []
        for b, ws in enumerate(word_seqs):
            g = self.restrict(ws)
            if g is not None and int(lens_t[b]) > 0:
                rows.append(b)
                graphs.append(g)
        if not rows:
            return out
        lp = log_probs.detach().to("cpu", torch.float32)
        idx = torch.tensor(rows, dtype=torch.int64)
        segs = torch.stack([torch.arange(len(rows)), torch.zeros(len(rows), dtype=torch.int64),
                            lens_t.cpu()[idx]], dim=1).to(torch.int32)
        lat = intersect_dense(create_fsa_vec(graphs), DenseFsaVec(lp[idx], segs))
        tot = get_tot_scores(lat, log_semiring=False, use_double_scores=True)
        out[idx] = tot.detach().to(torch.float64)
        return out


def classify_error(ref: Sequence[int], hyp: Sequence[int], ref_score: float,
                   hyp_score: float) -> str:
    """One utterance's decoding outcome: ``"correct"`` (``hyp == ref``), ``"unreachable"`` (the
    reference has no path: ``ref_score`` is -inf), ``"search"`` (the reference scores more than
    ``TIE`` above the hypothesis) or ``"model"`` (it does not)."""
    if list(ref) == list(hyp):
        return "correct"
    if ref_score == float("-inf"):
        return "unreachable"
    return "search" if ref_score > hyp_score + TIE else "model"


def compare(fb: ForcedBest, log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int],
            refs: Sequence[Sequence[int] | None], hyps: Sequence[Sequence[int]]
            ) -> list[tuple[str, float, float]]:
    """``(kind, ref_score, hyp_score)`` per utterance of a batch (:func:`classify_error`):
    forced-best scores of the reference (``None``: it has a word outside the graph's
    vocabulary, ``"unreachable"``) and of the hypothesis. Only the utterances whose
    hypothesis differs from their reference are scored (the others: ``"correct"``, NaN)."""
    lens_t = _check_inputs(log_probs, lens)
    nan = float("nan")
    out: list[tuple[str, float, float]] = [("correct", nan, nan)] * len(hyps)
    rows = [b for b, (r, h) in enumerate(zip(refs, hyps)) if r is None or list(r) != list(h)]
    if not rows:
        return out
    idx = torch.tensor(rows, dtype=torch.int64)
    lp, n = log_probs[idx.to(log_probs.device)], lens_t[idx]
    hyp_s = fb.scores(lp, n, [hyps[b] for b in rows])
    ref_s = fb.scores(lp, n, [refs[b] or [] for b in rows])
    for i, b in enumerate(rows):
        r = refs[b]
        rs = float("-inf") if r is None else float(ref_s[i])
        out[b] = (classify_error(r if r is not None else [-1], hyps[b], rs, float(hyp_s[i])),
                  rs, float(hyp_s[i]))
    return out
