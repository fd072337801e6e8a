"""Greedy decoding of HMM models without a graph: per-frame argmax over the pdf columns.

A network of a Kaldi HMM topology outputs ``num_pdfs + 1`` columns (column ``pdf + 1``, 0
unused, :func:`wfst_asr.graphs.topo.pdf_output_graph`); :func:`pdf_to_token` maps each column to
its token (phone) and :func:`greedy_hmm` turns the per-frame best columns into tokens with runs
merged (an HMM has no blank, so two equal tokens in a row come out as one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wfst_asr.graphs.topo import Topology

from .ctc import _check_inputs

__all__ = ["greedy_hmm", "pdf_to_token"]


def pdf_to_token(topo: Topology) -> torch.Tensor:
    """int64 ``[num_pdfs + 1]``: the token (phone id, from 1) of each network column
    ``pdf + 1`` of a Kaldi HMM topology (column 0, unused: 0)."""
    tm = topo.transition_model
    if topo.is_ctc or tm is None:
        raise ValueError(f"{topo.name!r} is not a Kaldi HMM topology")
    out = torch.zeros(topo.num_pdfs + 1, dtype=torch.int64)
    for tid in range(1, tm.num_transition_ids + 1):
        out[int(topo.tid2pdf[tid]) + 1] = tm.transition_id_to_phone(tid)
    return out


def greedy_hmm(log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int],
               token_of: torch.Tensor) -> list[list[int]]:
    """Per-frame argmax over the columns ``1..`` of ``log_probs [B, T, num_pdfs + 1]``, mapped
    to tokens by ``token_of`` (:func:`pdf_to_token`), runs of a token merged; frames past
    ``lens[b]`` ignored."""
    lens_t = _check_inputs(log_probs, lens)
    best = log_probs.detach()[..., 1:].argmax(-1).cpu() + 1
    tokens = token_of[best]
    out = []
    for row, n in zip(tokens, lens_t.tolist()):
        seq = row[:n]
        keep = torch.ones_like(seq, dtype=torch.bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append(seq[keep].tolist())
    return out
