"""The soft-label file of knowledge distillation (written by
:func:`wfst_asr.train.distill.make_soft_labels`, ``wfst-asr soft-labels``), read back for the
``attention`` criterion: per cut, the teacher's top-k distribution at every token position.

Format (``torch.save``, read with ``weights_only=True``)::

    {"format": FORMAT, "k": k, "vocab_size": V, "teacher": path, "teacher_kind": kind,
     "teacher_sha256": ..., "context_tokens": n, "chapter_regex": r,
     "utts": {cut_id: {"tokens": int32 [U], "ids": int32 [U, k], "probs": float32 [U, k]}}}
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["FORMAT", "PERTURBED", "SoftLabels", "load_soft_labels"]

FORMAT = "wfst_asr.soft_labels/1"
#: lhotse's id of a speed-perturbed copy: ``<id>_sp<factor>``
PERTURBED = re.compile(r"_sp\d+(\.\d+)?$")


def load_soft_labels(path: str | os.PathLike) -> dict[str, Any]:
    """A soft-label file or part read back with ``weights_only=True`` (not
    :func:`~wfst_asr.train.checkpoint.load_checkpoint`, which wants a model's ``model``
    entry); a missing or unreadable file is a ValueError naming it."""
    from wfst_asr.fsa.io import torch_load_reason

    if not os.path.isfile(path):
        raise ValueError(f"soft-label file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip, unpickling, EOF errors: a bad file
        raise ValueError(f"cannot load {path}: corrupted or truncated "
                         f"({torch_load_reason(e)})") from None
    return state if isinstance(state, dict) else {}


class SoftLabels:
    """A soft-label file read back (``weights_only``): ``lookup(cut_id, tokens, k)`` ->
    ``(ids [U, k] int64, probs [U, k] float32)`` renormalised over the first ``k``, or None when
    the cut has none (a speed-perturbed copy ``<id>_sp<factor>`` takes its source's); a cut whose stored tokens differ from the transcript is a ValueError
    (the file is stale)."""

    def __init__(self, path: str | os.PathLike) -> None:
        state = load_soft_labels(path)
        if state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a soft-label file (wfst-asr soft-labels)")
        self.path, self.k = str(path), int(state["k"])
        self.vocab_size = int(state["vocab_size"])
        self.teacher_kind = state.get("teacher_kind")
        self.utts: dict[str, dict[str, torch.Tensor]] = state["utts"]

    def check_vocab(self, num_classes: int) -> None:
        if num_classes != self.vocab_size:
            raise ValueError(f"the soft labels {self.path} come from a teacher over "
                             f"{self.vocab_size} classes, the model has {num_classes}")

    def lookup(self, cut_id: str, tokens: Sequence[int], k: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
        e = self.utts.get(cut_id)
        if e is None:  # a perturbed copy (lhotse's "<id>_sp0.9") has its source's labels
            e = self.utts.get(PERTURBED.sub("", cut_id))
        if e is None:
            return None
        if e["tokens"].tolist() != list(tokens):
            raise ValueError(f"{self.path}: the soft labels of cut {cut_id} are for another "
                             "transcript (recompute them with wfst-asr soft-labels)")
        k = self.k if k is None else int(k)
        if k > self.k:
            raise ValueError(f"distill_k {k} > the {self.k} labels kept in {self.path}")
        p = e["probs"][:, :k].float()
        return e["ids"][:, :k].long(), p / p.sum(1, keepdim=True)
