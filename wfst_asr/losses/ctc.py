"""The CTC loss through the FSA engine, with infeasible utterances excluded up front.

``CtcLoss()(log_probs, out_lens, token_seqs)`` computes, for each utterance ``b``,
``-get_tot_scores(intersect_dense(ctc_graph(token_seqs), DenseFsaVec(log_probs, segments)))``
with segments ``(b, 0, out_lens[b])``.

An utterance whose transcript cannot be aligned with its frames (``T < U + number of adjacent
repeated tokens`` for standard CTC, ``T < U`` for modified CTC) has no CTC path: its loss would
be ``inf``. Such utterances are found before the loss, left out of the graphs, and reported
(``info["excluded"]``); any total that still comes out non-finite (e.g. ``-inf`` log-probs on
every path) is dropped the same way. An utterance with a NaN or ``+inf`` log-prob in its frames
is excluded before the graphs are built (``info["nonfinite_input"]``,
:func:`~wfst_asr.losses.common.isolate_nonfinite`): its gradient is exactly 0 and the other
utterances are computed as if it were not in the batch. So neither the loss nor the gradient is
ever inf/NaN. :func:`nan_guard` is the last line of defence before an optimizer step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from itertools import pairwise

import torch
from torch import nn

from wfst_asr.fsa import DenseFsaVec, get_tot_scores, intersect_dense
from wfst_asr.graphs.training import CtcTrainingGraphCompiler, ctc_graph
from wfst_asr.losses.common import (
    _as_token_lists,
    drop_nonfinite,
    exclusion_info,
    feasible,
    frame_mask,
    isolate_nonfinite,
    reduce_loss,
    select_fsas,
)

__all__ = ["CtcLoss", "ctc_min_frames", "nan_guard"]

log = logging.getLogger(__name__)


def ctc_min_frames(tokens: Sequence[int], modified: bool = False) -> int:
    """Fewest frames a CTC path for ``tokens`` needs: ``U`` plus one blank between each pair of
    identical adjacent tokens (none for modified CTC)."""
    tokens = list(tokens)
    if modified:
        return len(tokens)
    return len(tokens) + sum(1 for a, b in pairwise(tokens) if a == b)


class CtcLoss(nn.Module):
    """CTC loss (token 0 = blank) computed with the FSA engine.

    Args:
      modified: use the modified CTC topology (identical adjacent tokens need no blank between
        them), as :func:`wfst_asr.graphs.training.ctc_graph`.
      reduction: ``"sum"`` over the kept utterances; ``"mean"``: that sum divided by the number
        of output frames of the kept utterances (``info["frames"]``; not torch's per-target-
        length mean); ``"none"``: a ``[B]`` tensor, 0 for excluded utterances.
      use_double_scores: run the forward-backward in float64 (the loss is then float64).
      compiler: a :class:`~wfst_asr.graphs.training.CtcTrainingGraphCompiler` with a lexicon:
        the transcripts are then word ids, and each utterance's graph allows every
        pronunciation of its words (several per word are fine); feasibility is read from the
        graphs (:func:`~wfst_asr.losses.common.feasible`). None: token transcripts.

    ``forward(log_probs [B, T, V], out_lens [B], token_seqs)`` returns ``(loss, info)`` where
    ``token_seqs`` holds one list of token ids (1..V-1) per sequence (word ids with a
    ``compiler``) and ``info`` is a dict:

    * ``num_utts``: B;
    * ``num_excluded``, ``excluded``: how many and which sequence indices were left out
      (infeasible transcripts, non-finite log-probs, plus any non-finite total: see
      ``num_nonfinite``);
    * ``num_nonfinite``: how many of those were feasible but still gave a non-finite total;
    * ``nonfinite_input``: the sequences left out because their log-probs hold a NaN or +inf
      in their frames (their gradient is exactly 0);
    * ``frames``: output frames of the kept utterances (int; the ``"mean"`` denominator).

    If every utterance is excluded the loss is a zero that still depends on ``log_probs`` (so
    ``backward()`` works and gives zero gradients).
    """

    def __init__(self, modified: bool = False, reduction: str = "sum",
                 use_double_scores: bool = False,
                 compiler: CtcTrainingGraphCompiler | None = None) -> None:
        super().__init__()
        if reduction not in ("sum", "mean", "none"):
            raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
        if compiler is not None and compiler.modified != bool(modified):
            raise ValueError("CtcLoss: modified must match the compiler's")
        self.compiler = compiler
        self.modified = bool(modified)
        self.reduction = reduction
        self.use_double_scores = bool(use_double_scores)

    def extra_repr(self) -> str:
        return f"modified={self.modified}, reduction={self.reduction!r}"

    def feasible(self, out_lens: torch.Tensor | Sequence[int],
                 token_seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """bool ``[B]`` (CPU): the transcript fits the frames (``T >= ctc_min_frames``)."""
        lens = torch.as_tensor(out_lens).detach().to("cpu", torch.int64)
        need = torch.tensor([ctc_min_frames(s, self.modified) for s in token_seqs],
                            dtype=torch.int64)
        return lens >= need

    def forward(self, log_probs: torch.Tensor, out_lens: torch.Tensor,
                token_seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, dict]:
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs must be [B, T, V], got {tuple(log_probs.shape)}")
        B, T, V = log_probs.shape
        seqs = _as_token_lists(token_seqs)
        lens = torch.as_tensor(out_lens).detach().to("cpu", torch.int64).reshape(-1)
        if len(seqs) != B or lens.numel() != B:
            raise ValueError(f"got {B} sequences of log-probs, {lens.numel()} lengths and "
                             f"{len(seqs)} transcripts")
        if bool((lens < 0).any()) or bool((lens > T).any()):
            raise ValueError(f"out_lens must lie in [0, T={T}], got {lens.tolist()}")
        log_probs, bad_input = isolate_nonfinite(log_probs, frame_mask(lens, T), "log_probs",
                                                 "CtcLoss")
        all_graphs = None
        if self.compiler is not None:
            all_graphs = self._word_graphs(seqs, V)
            ok, _ = feasible(all_graphs, lens)
        else:
            for i, s in enumerate(seqs):
                if s and (min(s) < 1 or max(s) >= V):
                    raise ValueError(f"transcript {i}: token ids must be in [1, {V}) (0 is "
                                     f"blank, V={V} outputs), got {s}")
            ok = self.feasible(lens, seqs)
        ok &= ~bad_input
        keep = ok.nonzero().squeeze(1)
        dtype = torch.float64 if self.use_double_scores else log_probs.dtype
        per_utt = log_probs.new_zeros(B, dtype=dtype)
        num_nonfinite = 0
        if keep.numel():
            segs = torch.stack([keep, torch.zeros_like(keep), lens[keep]], 1).to(torch.int32)
            if all_graphs is not None:
                graphs = select_fsas(all_graphs, keep).to(log_probs.device)
            else:
                graphs = ctc_graph([seqs[i] for i in keep.tolist()], modified=self.modified,
                                   device=log_probs.device)
            tot = get_tot_scores(intersect_dense(graphs, DenseFsaVec(log_probs, segs)),
                                 log_semiring=True, use_double_scores=self.use_double_scores)
            fin, num_nonfinite = drop_nonfinite(tot, keep, ok, "CtcLoss")
            # where(): the gradient of the dropped (non-finite) entries is exactly 0
            nll = torch.where(fin, -tot, torch.zeros_like(tot))
            per_utt = per_utt.index_put((keep.to(log_probs.device),), nll.to(dtype))
        frames = int(lens[ok].sum())
        info = exclusion_info(B, ok, frames, num_nonfinite, bad_input)
        if info["excluded"]:
            log.debug("CtcLoss: excluded %d/%d utterances: %s", info["num_excluded"], B,
                      info["excluded"])
        return reduce_loss(per_utt, frames, self.reduction,
                           () if keep.numel() else (log_probs,)), info


    def _word_graphs(self, seqs: list[list[int]], V: int):
        """The compiler's graphs of word transcripts (ValueError naming the utterance for a
        word not in the lexicon or a token outside the ``V`` outputs)."""
        try:
            graphs = self.compiler.compile(seqs, unit="words").as_vec().to("cpu")
        except KeyError as e:
            raise ValueError(f"CtcLoss: {e.args[0]}") from None
        if graphs.num_arcs and int(graphs.labels.max()) >= V:
            raise ValueError(f"CtcLoss: the lexicon has token id {int(graphs.labels.max())}, "
                             f"but the network has {V} outputs")
        return graphs


def nan_guard(loss: torch.Tensor, params: Iterable[torch.nn.Parameter],
              zero_grad: bool = True) -> bool:
    """True when ``loss`` and every gradient of ``params`` are finite, so the optimizer step
    is safe; otherwise log a warning, drop the gradients (``p.grad = None``, unless
    ``zero_grad=False``) and return False. Call after ``backward()``::

        loss.backward()
        if nan_guard(loss, model.parameters()):
            optimizer.step()
        optimizer.zero_grad()
    """
    params = [p for p in params if p.grad is not None]
    ok = bool(torch.isfinite(loss.detach()).all())
    if ok and params:
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for p in params:  # one "all finite" flag per parameter, one sync per device
            by_device.setdefault(p.grad.device, []).append(torch.isfinite(p.grad).all())
        ok = all(bool(torch.stack(flags).all()) for flags in by_device.values())
    if not ok:
        log.warning("nan_guard: non-finite loss or gradient (loss=%s); skipping this step",
                    float(loss.detach().sum()) if loss.numel() else loss)
        if zero_grad:
            for p in params:
                p.grad = None
    return ok
