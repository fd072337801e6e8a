"""The joint CTC / attention loss of attention encoder-decoders (Kim, Hori and Watanabe 2017;
ESPnet's ``mtlalpha``): ``(1 - ctc_weight) * CE_ls + ctc_weight * CTC``.

``CE_ls`` is the decoder's cross-entropy with label smoothing (``torch.nn.functional.
cross_entropy``'s: the target keeps ``1 - label_smoothing`` of the mass, the rest is spread
evenly over all ``V`` classes), summed over the target tokens and ``<eos>``; CTC is the
engine's (:class:`~wfst_asr.losses.CtcLoss`, summed over utterances).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wfst_asr.losses.ctc import CtcLoss

__all__ = ["AttentionLoss"]


class AttentionLoss(nn.Module):
    """``forward(logits [B, L, V], ys_out [B, L], ctc_log_probs [B, T, V], lens [B],
    token_seqs) -> (loss, info)``: ``ys_out`` holds the decoder targets (tokens + ``<eos>``,
    -1 = padding); ``info`` is the CTC loss's (exclusions, frames) plus ``att_loss``,
    ``ctc_loss`` (floats, the parts before weighting) and ``tokens``.

    Args:
      ctc_weight: weight of the CTC loss, in ``[0, 1]``.
      label_smoothing: of the decoder's cross-entropy.
      reduction: ``"sum"`` (the trainer divides by frames) or ``"mean"`` (per frame).
    """

    def __init__(self, ctc_weight: float = 0.3, label_smoothing: float = 0.1,
                 reduction: str = "sum") -> None:
        super().__init__()
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be sum or mean, got {reduction!r}")
        self.ctc_weight, self.label_smoothing = float(ctc_weight), float(label_smoothing)
        self.reduction = reduction
        self.ctc = CtcLoss(reduction="sum")

    def forward(self, logits: torch.Tensor, ys_out: torch.Tensor, ctc_log_probs: torch.Tensor,
                lens: torch.Tensor, token_seqs) -> tuple[torch.Tensor, dict]:
        ctc, info = self.ctc(ctc_log_probs, lens, token_seqs)
        B = logits.shape[0]
        ok = torch.ones(B, dtype=torch.bool, device=logits.device)
        ok[torch.as_tensor(info["excluded"], dtype=torch.int64, device=logits.device)] = False
        tgt = torch.where(ok[:, None], ys_out.to(logits.device), torch.full_like(ys_out, -1))
        att = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1),
                              ignore_index=-1, label_smoothing=self.label_smoothing,
                              reduction="sum")
        loss = (1.0 - self.ctc_weight) * att + self.ctc_weight * ctc.to(att.dtype)
        info = dict(info, att_loss=float(att.detach()), ctc_loss=float(ctc.detach()),
                    tokens=int((tgt >= 0).sum()))
        if self.reduction == "mean":
            loss = loss / max(int(info["frames"]), 1)
        return loss, info
