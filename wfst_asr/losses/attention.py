"""The joint CTC / attention loss of attention encoder-decoders (Kim, Hori and Watanabe 2017;
ESPnet's ``mtlalpha``): ``(1 - ctc_weight) * CE_ls + ctc_weight * CTC``.

``CE_ls`` is the decoder's cross-entropy with label smoothing (``torch.nn.functional.
cross_entropy``'s: the target keeps ``1 - label_smoothing`` of the mass, the rest is spread
evenly over all ``V`` classes), summed over the target tokens and ``<eos>``; CTC is the
engine's (:class:`~wfst_asr.losses.CtcLoss`, summed over utterances).

Knowledge distillation (Futami et al. 2020), ``distill_weight`` = lambda > 0: the decoder's
term becomes ``(1 - lambda) * CE_ls + lambda * KL(p_teacher || p_decoder)`` with the teacher's
top-k distribution per target position (``teacher_ids`` / ``teacher_probs [B, L, k]``,
aligned with ``ys_out``; a position whose probabilities are all 0 has no teacher and counts
in CE only). ``KL = sum_k p_k (log p_k - log p_dec(id_k))`` (``0 log 0 = 0``), summed over
positions. ``lambda = 0`` is the baseline loss exactly (the KL is not computed).
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
      distill_weight: lambda of the distillation term (see the module doc), in ``[0, 1]``.
    """

    def __init__(self, ctc_weight: float = 0.3, label_smoothing: float = 0.1,
                 reduction: str = "sum", distill_weight: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}")
        self.distill_weight = float(distill_weight)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be sum or mean, got {reduction!r}")
        self.ctc_weight, self.label_smoothing = float(ctc_weight), float(label_smoothing)
        self.reduction = reduction
        self.ctc = CtcLoss(reduction="sum")

    def forward(self, logits: torch.Tensor, ys_out: torch.Tensor, ctc_log_probs: torch.Tensor,
                lens: torch.Tensor, token_seqs, teacher_ids: torch.Tensor | None = None,
                teacher_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        ctc, info = self.ctc(ctc_log_probs, lens, token_seqs)
        B = logits.shape[0]
        ok = torch.ones(B, dtype=torch.bool, device=logits.device)
        ok[torch.as_tensor(info["excluded"], dtype=torch.int64, device=logits.device)] = False
        tgt = torch.where(ok[:, None], ys_out.to(logits.device), torch.full_like(ys_out, -1))
        att = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1),
                              ignore_index=-1, label_smoothing=self.label_smoothing,
                              reduction="sum")
        extra = {}
        if self.distill_weight > 0:
            if teacher_ids is None or teacher_probs is None:
                raise ValueError("distill_weight > 0 needs the teacher's top-k (soft labels)")
            kl = self.kl(logits, tgt, teacher_ids, teacher_probs)
            extra = {"ce_loss": float(att.detach()), "kl_loss": float(kl.detach())}
            att = (1.0 - self.distill_weight) * att + self.distill_weight * kl
        loss = (1.0 - self.ctc_weight) * att + self.ctc_weight * ctc.to(att.dtype)
        info = dict(info, att_loss=float(att.detach()), ctc_loss=float(ctc.detach()),
                    tokens=int((tgt >= 0).sum()), **extra)
        if self.reduction == "mean":
            loss = loss / max(int(info["frames"]), 1)
        return loss, info

    @staticmethod
    def kl(logits: torch.Tensor, tgt: torch.Tensor, teacher_ids: torch.Tensor,
           teacher_probs: torch.Tensor) -> torch.Tensor:
        """``sum over positions with tgt >= 0 of KL(p_teacher || softmax(logits))``
        (``logits [B, L, V]``, ``teacher_* [B, L, k]``)."""
        logp = logits.float().log_softmax(-1).gather(2, teacher_ids.to(logits.device).long())
        p = teacher_probs.to(logp.device).float()
        keep = (tgt.to(logp.device) >= 0)[..., None] & (p > 0)
        terms = p * (torch.where(keep, p, torch.ones_like(p)).log() - logp)
        return torch.where(keep, terms, torch.zeros_like(terms)).sum()
