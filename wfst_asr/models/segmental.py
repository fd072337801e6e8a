"""Discriminative segmental models (Tang, Wang, Gimpel and Livescu 2016): the segment scorer
``theta^T phi(x, (s, t, y))`` and the model that puts it on a frame encoder.

The encoder gives frame vectors ``k_t`` (``[B, T, F]``, e.g. log-softmax over the labels).
For a segment ``(s, t, y)`` (frames ``s .. t - 1``, duration ``d = t - s``), ``phi`` is, each
part tensor-producted with ``onehot(y)``:

* the average of ``k`` over the segment;
* ``k`` at the 0/25/50/75/100% positions: frames ``s + floor(j (d - 1) / 4)``, ``j = 0..4``;
* the boundary frames ``k_{s-1}, k_{s-2}`` (before the segment) and ``k_t, k_{t+1}`` (after
  it), clamped to the utterance's frames ``0 .. n - 1``;
* a duration one-hot ``1..D``; a per-label bias.

So the score is ``sum_p W_p[y] . part_p + dur[y, d - 1] + bias[y]`` with ``W`` of shape
``[10, L, F]``. Every part is linear in ``k``, so ``k`` is projected once (``k W_p^T``:
``[B, T, 10, L]``) and the parts are cumulative sums (the average) and gathers of the
projection: no loop over segments or frames. The output is the end-indexed score layout of
:mod:`wfst_asr.fsa.segment`.
"""

from __future__ import annotations

import torch
from torch import nn

from wfst_asr.models.encoders import Blstm, Encoder, register_model

__all__ = ["NUM_PARTS", "SegmentScorer", "SegmentalBlstm"]

#: average, 5 positions, 2 frames before, 2 after
NUM_PARTS = 10


class SegmentScorer(nn.Module):
    """``forward(k [B, T, F], lens [B]) -> scores [B, T, D, L]`` (end-indexed:
    ``scores[b, e, d - 1, y]`` scores the segment ``(e + 1 - d, e + 1, y)``; entries starting
    before frame 0 are never used by the lattice code and are left at 0's feature values).

    Args:
      num_inputs: ``F``, the frame vector's size.
      num_labels: ``L``.
      max_duration: ``D``, the longest segment in frames.
    """

    def __init__(self, num_inputs: int, num_labels: int, max_duration: int = 30) -> None:
        super().__init__()
        self.num_inputs, self.num_labels, self.max_duration = num_inputs, num_labels, max_duration
        self.weight = nn.Parameter(torch.zeros(NUM_PARTS, num_labels, num_inputs))
        self.duration = nn.Parameter(torch.zeros(num_labels, max_duration))
        self.bias = nn.Parameter(torch.zeros(num_labels))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, k: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        B, T, _ = k.shape
        D, L = self.max_duration, self.num_labels
        dev = k.device
        lens = torch.as_tensor(lens, device=dev).to(torch.int64)
        # the projection of every frame under every part: [B, T, P, L]
        proj = torch.einsum("btf,plf->btpl", k, self.weight)
        end = torch.arange(1, T + 1, device=dev)  # t = e + 1 (exclusive end)
        d = torch.arange(1, D + 1, device=dev)
        start = end[:, None] - d[None, :]  # [T, D], may be < 0 (unused entries)
        s0 = start.clamp(min=0)
        dur = (end[:, None] - s0).to(k.dtype)  # frames actually averaged
        # average: cumulative sums of part 0
        cum = torch.cat([proj.new_zeros(B, 1, L), proj[:, :, 0].cumsum(1)], dim=1)  # [B, T+1, L]
        out = (cum[:, end][:, :, None] - cum[:, s0.reshape(-1)].view(B, T, D, L)) \
            / dur[None, :, :, None]
        last = (lens - 1).clamp(min=0).view(B, 1, 1)

        def gather(part: int, frames: torch.Tensor) -> torch.Tensor:
            """proj[b, frames[b, e, d], part, :] for [T, D] (or [B, T, D]) frames."""
            f = frames.expand(B, T, D) if frames.dim() == 2 else frames
            f = torch.minimum(f.clamp(min=0), last)
            src = proj[:, :, part]  # [B, T, L]
            return src.gather(1, f.reshape(B, T * D, 1).expand(B, T * D, L)).view(B, T, D, L)

        dm1 = (d - 1)[None, :]
        for j in range(5):  # positions 0, 25, 50, 75, 100%
            out = out + gather(1 + j, s0 + (dm1 * j) // 4)
        for r, part in ((1, 6), (2, 7)):  # before the segment
            out = out + gather(part, start - r)
        for r, part in ((0, 8), (1, 9)):  # after it: frames t, t + 1
            out = out + gather(part, (end[:, None] + r).expand(T, D))
        return out + self.duration.t()[None, None] + self.bias


class SegmentalBlstm(Encoder):
    """A discriminative segmental model (registered as ``blstm_segmental``): a
    :class:`~wfst_asr.models.Blstm` giving frame vectors ``k_t`` (log-softmax over
    ``num_classes`` = blank column + ``L`` labels, as a CTC model's output) and a
    :class:`SegmentScorer` over the ``L`` labels (label ``y`` = token id ``y + 1``).

    ``forward(x [B, T, F], lens) -> (k [B, T', num_classes], out_lens)`` is the encoder's
    (with ``input_dropout`` on ``x`` in training); ``segment_scores(k, out_lens)`` gives the
    end-indexed scores ``[B, T', D, L]`` (with ``output_dropout`` on ``k`` in training): the
    paper's dropout on the inputs and on the last output. Other arguments are the
    :class:`~wfst_asr.models.Blstm`'s.
    """

    def __init__(self, num_features: int, num_classes: int, hidden: int = 256,
                 num_layers: int = 3, dropout: float = 0.2, subsampling: int = 1,
                 subsample_type: str = "concat", subsample_after: int | None = None,
                 max_duration: int = 30, input_dropout: float = 0.0,
                 output_dropout: float = 0.0) -> None:
        super().__init__(num_features, num_classes)
        self.encoder = Blstm(num_features, num_classes, hidden=hidden, num_layers=num_layers,
                             dropout=dropout, subsampling=subsampling,
                             subsample_type=subsample_type, subsample_after=subsample_after)
        self.subsampling_factor = self.encoder.subsampling_factor
        self.subsampling_mode = self.encoder.subsampling_mode
        self.scorer = SegmentScorer(num_classes, num_classes - 1, max_duration)
        self.input_dropout = nn.Dropout(input_dropout)
        self.output_dropout = nn.Dropout(output_dropout)

    @property
    def max_duration(self) -> int:
        return self.scorer.max_duration

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(self.input_dropout(x), lens)

    def segment_scores(self, k: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.scorer(self.output_dropout(k), lens)


register_model("blstm_segmental", SegmentalBlstm)
