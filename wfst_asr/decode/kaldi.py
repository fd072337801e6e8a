"""A second 1-best backend: kaldi-decoder's ``FasterDecoder`` on a CTC decoding graph.

Used to cross-check :func:`wfst_asr.decode.one_best` (the engine's beam search) and as a
CPU decoder in its own right.

Label mapping
-------------
Kaldi decoders treat input label 0 as epsilon (no frame consumed), while the engine's graphs use
0 for the CTC blank, which consumes a frame. kaldi-decoder's ``DecodableCtc`` reads
``LogLikelihood(frame, index) = log_probs[frame, index - 1]`` (its graphs are built with every
input label incremented, as sherpa/sherpa-onnx do for their HLGs). So :func:`kaldi_ctc_graph`
converts an engine graph by adding 1 to every input label >= 0 (blank 0 -> 1, token ``t`` ->
``t + 1``); the -1 arcs into the final state become OpenFst final weights
(:func:`wfst_asr.fsa.to_kaldifst`) and output labels (word ids, 0 = epsilon) are unchanged. The
engine's graphs have no input epsilons, so the shifted graph has none either and every arc
consumes exactly one frame, as in the engine.

Scores: OpenFst cost = ``-lm_scale * score``; the decoder's acoustic cost is
``-log_probs[t, label]`` (DecodableCtc does not scale), so the total is the engine's
``lm_scale * graph score + log-probs``, negated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from wfst_asr import _kaldi
from wfst_asr.fsa import Fsa, read_fst, to_kaldifst

from .ctc import _check_inputs, scale_graph, single_graph

__all__ = ["kaldi_ctc_graph", "kaldi_one_best"]


def kaldi_ctc_graph(hlg: Fsa | str | os.PathLike, lm_scale: float = 1.0,
                    word_penalty: float = 0.0):
    """The ``kaldifst.StdVectorFst`` that kaldi-decoder's ``DecodableCtc`` expects.

    Args:
      hlg: an engine decoding graph with ``aux_labels`` (labels = network output ids, 0 = blank,
        -1 on final arcs), or the path of one written by :func:`wfst_asr.fsa.write_fst` (e.g.
        ``HLG.fst`` of :func:`wfst_asr.graphs.compile.compile_graph`).
      lm_scale: graph scores are multiplied by it (see :func:`wfst_asr.decode.one_best`).
      word_penalty: added to the cost of every arc with a word (see
        :func:`wfst_asr.decode.scale_graph`).

    Returns:
      A copy with input labels + 1 (see the module docstring), costs
      ``-lm_scale * score + word_penalty * [word arc]``.
    """
    if isinstance(hlg, (str, os.PathLike)):
        hlg = read_fst(Path(hlg), acceptor=False)
    hlg = single_graph(hlg, "kaldi_ctc_graph")
    g = scale_graph(hlg, lm_scale, word_penalty).to("cpu")
    lab = g.labels.to(torch.int64)
    shifted = torch.where(lab >= 0, lab + 1, lab).to(torch.int32)
    arcs = torch.cat([g.arcs[:, :2], shifted.unsqueeze(1)], dim=1)
    fsa = Fsa(arcs, g.scores, num_states=g.num_states, aux_labels=g.aux_labels, validate=False)
    return to_kaldifst(fsa, attach_symbols=False)


def _is_kaldi_fst(obj) -> bool:
    return not isinstance(obj, (Fsa, str, os.PathLike))


def kaldi_one_best(hlg, log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int],
                   beam: float = 20.0, max_active: int = 10000, min_active: int = 30,
                   lm_scale: float = 1.0, word_penalty: float = 0.0) -> list[list[int]]:
    """1-best decoding with kaldi-decoder's ``FasterDecoder`` + ``DecodableCtc``, one
    utterance at a time.

    Args:
      hlg: an engine graph (:class:`Fsa` or the path of its ``.fst``; converted with
        :func:`kaldi_ctc_graph`), or a graph already converted by :func:`kaldi_ctc_graph`
        (then ``lm_scale`` and ``word_penalty`` must have been applied there and are ignored
        here). Convert once
        when decoding many batches with a large graph.
      log_probs: ``[B, T, V]`` network log-probs (0 = blank).
      lens: ``[B]`` valid frames per utterance.
      beam, max_active, min_active: ``FasterDecoderOptions`` (search beam in log-prob units,
        bounds on active tokens per frame).
      lm_scale: graph scores are multiplied by it (ignored for a converted graph).
      word_penalty: per-word penalty (ignored for a converted graph).

    Returns:
      The non-zero output labels (word ids) of each utterance's best path; ``[]`` when no
      final state was reached (the engine's :func:`~wfst_asr.decode.one_best` also gives
      ``[]`` when the search finds no complete path) or the utterance has no frames.
    """
    lens_t = _check_inputs(log_probs, lens)
    kd = _kaldi.kaldi_decoder()
    kf = _kaldi.kaldifst()
    fst = hlg if _is_kaldi_fst(hlg) else kaldi_ctc_graph(hlg, lm_scale, word_penalty)
    opts = kd.FasterDecoderOptions(beam=float(beam), max_active=int(max_active),
                                   min_active=int(min_active))
    decoder = kd.FasterDecoder(fst, opts)
    lp = log_probs.detach().to("cpu", torch.float32)
    out: list[list[int]] = []
    for b, n in enumerate(lens_t.tolist()):
        if n == 0:
            out.append([])
            continue
        mat = np.ascontiguousarray(lp[b, :n].numpy())
        decoder.decode(kd.DecodableCtc(mat))
        if not decoder.reached_final():
            out.append([])
            continue
        ok, path = decoder.get_best_path()
        if not ok:
            out.append([])
            continue
        ok, _isyms, osyms, _w = kf.get_linear_symbol_sequence(path)
        if not ok:
            raise RuntimeError("kaldi-decoder's best path is not linear")
        out.append([int(w) for w in osyms if w > 0])
    return out
