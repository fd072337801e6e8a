"""Forced alignment and frame targets: the one home of alignments in the toolkit.

* :func:`viterbi_align`: the output id of every frame on the best path of each utterance's
  graph (the engine's Viterbi, tropical semiring);
* :func:`equal_alignment`: Kaldi's ``align-equal`` (equal shares of frames, a GMM's flat start);
* :func:`alignments_from_transition_ids`, :func:`subsample_alignments`: Kaldi alignments
  (transition-ids or pdfs per input frame) -> CE targets ``[B, T_out]`` at the network's rate;
* :func:`alignment_prior`: the state prior ``p(s)`` of hybrid decoding from alignment counts.

Output ids follow :func:`wfst_asr.graphs.topo.pdf_topo`: ``pdf + 1``, column 0 unused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wfst_asr.fsa import DenseFsaVec, Fsa, get_tot_scores, intersect_dense
from wfst_asr.graphs.topo import Topology
from wfst_asr.losses.common import check_batch, segments

__all__ = ["alignment_prior", "alignments_from_transition_ids", "equal_alignment",
           "subsample_alignments", "viterbi_align"]


def alignments_from_transition_ids(tids: torch.Tensor | Sequence[Sequence[int]],
                                   topology: Topology, subsampling: int = 1) -> torch.Tensor:
    """Kaldi alignments (transition-ids per frame, one list per utterance) -> CE targets
    ``[B, T]`` int64: output id ``pdf + 1`` (as :func:`pdf_topo`), -1 as padding.

    ``subsampling``: keep every ``subsampling``-th frame (frame ``k * subsampling``), for a
    network whose output rate is lower than the alignment's.
    """
    if topology.tid2pdf is None:
        raise ValueError(f"{topology.name!r} has no transition-ids (not an HMM topology)")
    rows = [torch.as_tensor(list(r) if not isinstance(r, torch.Tensor) else r,
                            dtype=torch.int64)[::subsampling] for r in tids]
    T = max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), T), -1, dtype=torch.int64)
    pdf = topology.tid2pdf.to(torch.int64)
    for i, r in enumerate(rows):
        if r.numel() and (int(r.min()) < 1 or int(r.max()) >= pdf.numel()):
            raise ValueError(f"utterance {i}: transition-ids must be in [1, {pdf.numel() - 1}]")
        out[i, :r.numel()] = pdf[r] + 1
    return out


def _best_path_labels(graphs: Fsa, log_probs: torch.Tensor, segs: torch.Tensor
                      ) -> torch.Tensor:
    """Per-frame labels ``[B, T]`` of the engine's best path of every segment (-1 elsewhere).

    The gradient of a tropical total w.r.t. the log-probs is the indicator of one best path
    (``get_tot_scores``): one 1 per frame of the segment, at the label of the path's arc, and
    0 for a segment without a path. So the alignment is streamed like the totals, without
    building the lattice.
    """
    x = log_probs.detach().requires_grad_(True)
    with torch.enable_grad():
        tot = get_tot_scores(intersect_dense(graphs, DenseFsaVec(x, segs)), log_semiring=False)
        fin = torch.isfinite(tot)
        if not bool(fin.any()):
            return torch.full(x.shape[:2], -1, dtype=torch.int64, device=x.device)
        (grad,) = torch.autograd.grad(tot[fin].sum(), x)
    ali = grad.argmax(-1)
    return torch.where(grad.sum(-1) > 0.5, ali, torch.full_like(ali, -1))


def viterbi_align(graphs: Fsa, log_probs: torch.Tensor,
                  lens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Forced alignments: the output id (pdf + 1 for :func:`pdf_topo`) of every frame on the
    best path of each utterance's graph (tropical semiring, the engine's Viterbi).

    Args:
      graphs: FsaVec with one graph per utterance (e.g. from
        :class:`~wfst_asr.graphs.training.HmmTrainingGraphCompiler`), or one shared graph.
      log_probs: ``[B, T, V]`` scores (no gradient is taken).
      lens: ``[B]`` frames of each utterance.

    Returns:
      int64 ``[B, T]`` on ``log_probs``'s device: output ids on frames ``0 .. lens[b]-1``, -1
      after them and on every frame of an utterance whose graph has no path of that length.
      Ties between equally good paths are broken by the engine (one path is chosen).
    """
    lens = check_batch(log_probs, lens, None)
    B = log_probs.shape[0]
    g = graphs.as_vec().to(log_probs.device)
    if g.num_fsas not in (1, B):
        raise ValueError(f"got {g.num_fsas} graphs for {B} utterances")
    return _best_path_labels(g, log_probs, segments(torch.arange(B), lens))


def subsample_alignments(alis: Sequence[Sequence[int]] | Sequence[torch.Tensor],
                         subsampling: int, mapping: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Per-input-frame alignments (one sequence per utterance) -> targets ``[B, T_out]`` int64
    at the network's output rate, -1 as padding.

    Output frame ``k`` of a network that stacks ``subsampling`` input frames (floor mode)
    covers input frames ``k s .. k s + s - 1``; it gets the label of the middle one,
    ``k s + s // 2``, mapped through ``mapping`` (e.g. :func:`pdf_map`) when given. Raises
    ValueError naming the utterance for a label outside ``mapping``.
    """
    if subsampling < 1:
        raise ValueError(f"subsampling must be >= 1, got {subsampling}")
    rows = [torch.as_tensor(r if isinstance(r, torch.Tensor) else list(r), dtype=torch.int64)
            for r in alis]
    rows = [r[subsampling // 2::subsampling][:r.numel() // subsampling] for r in rows]
    T = max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), T), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        if mapping is not None and r.numel():
            if int(r.min()) < 0 or int(r.max()) >= mapping.numel():
                raise ValueError(f"utterance {i} of the batch: alignment labels must lie in "
                                 f"[0, {mapping.numel() - 1}], got {int(r.min())}.."
                                 f"{int(r.max())}")
            r = mapping[r]
        out[i, :r.numel()] = r
    return out


def alignment_prior(targets: torch.Tensor, num_outputs: int, floor: float = 1.0
                    ) -> torch.Tensor:
    """float64 ``[num_outputs]``: relative frequencies of the targets ``>= 0`` (counts plus
    ``floor`` for every column but 0, which stays 0): the state prior ``p(s)`` of hybrid
    decoding, ``log p(s|x) - alpha log p(s)``."""
    t = targets[targets >= 0].reshape(-1)
    counts = torch.bincount(t, minlength=num_outputs).to(torch.float64)[:num_outputs]
    counts[1:] += floor
    counts[0] = 0.0
    return counts / counts.sum().clamp(min=1e-20)


def equal_alignment(pdf_seq: Sequence[int], num_frames: int) -> torch.Tensor | None:
    """int64 ``[num_frames]``: state ``i`` of ``pdf_seq`` (``N`` states) on frames
    ``ceil(i T / N) .. ceil((i+1) T / N) - 1`` (equal shares, in order); None if ``T < N``."""
    n, T = len(pdf_seq), int(num_frames)
    if n == 0 or T < n:
        return None
    idx = (torch.arange(T, dtype=torch.int64) * n) // T
    return torch.as_tensor(list(pdf_seq), dtype=torch.int64)[idx]
