"""Soft labels for knowledge distillation into an attention decoder (Futami et al. 2020):
computed offline, once, from a text teacher (:mod:`wfst_asr.train.textlm`) for every training
transcript, kept as the top-k renormalised distribution per token position
(``wfst-asr soft-labels``), and read back by the ``attention`` criterion.

* Teacher ``mlm``: ``p(y_i | y_\\i, context)`` with position ``i`` masked, the context being the
  previous / next utterances of the same chapter (:func:`~wfst_asr.train.textlm.
  context_windows`, the teacher's own settings unless overridden); teacher ``causal`` (a
  left-to-right LM): ``p(y_i | y_<i)``.
* The file's format and its reader (:class:`~wfst_asr.data.soft_labels.SoftLabels`) are in
  :mod:`wfst_asr.data.soft_labels`.

* The job is resumable and atomic: chunks of utterances go to ``OUT.parts/part-NNNNN.pt``
  (each written atomically, reused by a rerun with the same teacher, k and context), the
  merged file is written to a temporary name and renamed, then the parts are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from wfst_asr.atomic import atomic_write_text
from wfst_asr.data.soft_labels import FORMAT, PERTURBED, SoftLabels, load_soft_labels
from wfst_asr.models.textlm import TextTransformer
from wfst_asr.train.checkpoint import save_checkpoint
from wfst_asr.train.textlm import Example, context_windows, position_log_probs

__all__ = ["FORMAT", "SoftLabels", "cut_token_seqs", "file_sha256", "make_soft_labels"]



def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cut_token_seqs(cuts_path: str | os.PathLike, field: str, table: dict[str, int]
                   ) -> tuple[list[str], list[list[int]]]:
    """``(cut ids, token ids)`` of a cuts manifest: the supervisions' ``field`` (``text`` or a
    custom field, a string or a list of units) concatenated per cut, as the trainer reads
    them; speed-perturbed copies (``<id>_sp<factor>`` next to ``<id>``) are left out (they share
    their source's soft labels, :meth:`SoftLabels.lookup`, and are no context); a unit outside ``table`` is a ValueError naming the manifest, the cut and the unit."""
    from lhotse import CutSet

    ids, seqs = [], []
    for cut in CutSet.from_file(cuts_path):
        seq: list[int] = []
        for sup in cut.supervisions:
            v = sup.text if field == "text" else (sup.custom or {}).get(field)
            if v is None:
                raise ValueError(f"{cuts_path}: cut {cut.id} has no supervision field {field!r}")
            for u in (v.split() if isinstance(v, str) else v):
                if u not in table:
                    raise ValueError(f"{cuts_path}: cut {cut.id}: unit {u!r} is not in the "
                                     "token table")
                seq.append(table[u])
        ids.append(cut.id)
        seqs.append(seq)
    present = set(ids)
    keep = [i for i, c in enumerate(ids)
            if not (PERTURBED.search(c) and PERTURBED.sub("", c) in present)]
    return [ids[i] for i in keep], [seqs[i] for i in keep]


def _top_k(lp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = lp.topk(min(k, lp.shape[1]), dim=1)
    return top.indices.to(torch.int32), top.values.softmax(1).float()


def make_soft_labels(teacher: TextTransformer, teacher_path: str | os.PathLike,
                     utt_ids: Sequence[str], seqs: Sequence[Sequence[int]],
                     out: str | os.PathLike, k: int = 8, context_tokens: int | None = None,
                     chapter_regex: str | None = None, chunk: int = 200,
                     batch_size: int = 512, progress: bool = True) -> dict[str, Any]:
    """Compute and write the soft labels of ``seqs`` (see the module doc); returns a summary
    (``utts``, ``tokens``, ``skipped_empty``, ``skipped_long``, ``reused_parts``). Empty
    transcripts and inputs longer than the teacher's ``max_len`` are skipped and counted
    (the criterion falls back to the hard label for them)."""
    from wfst_asr.progress import progress as bar

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), teacher.vocab_size)  # the file's k is the columns it holds
    meta = getattr(teacher, "meta", {}) or {}
    if context_tokens is None:
        context_tokens = int(meta.get("context_tokens", 0))
    if chapter_regex is None:
        chapter_regex = meta.get("chapter_regex") or None
    if teacher.causal:
        context_tokens, chapter_regex = 0, None
    teacher.check_ids(seqs, "transcript")
    examples = context_windows(utt_ids, seqs, chapter_regex, context_tokens)
    head = {"format": FORMAT, "k": int(k), "vocab_size": teacher.vocab_size,
            "teacher": str(teacher_path), "teacher_sha256": file_sha256(teacher_path),
            "teacher_kind": "causal" if teacher.causal else "mlm",
            "context_tokens": int(context_tokens), "chapter_regex": chapter_regex}
    out = Path(out)
    parts = Path(f"{out}.parts")
    data = hashlib.sha256(json.dumps([list(utt_ids), [list(map(int, q)) for q in seqs]])
                          .encode()).hexdigest()
    key = dict(head, utts=len(seqs), chunk=chunk, data_sha256=data)
    if parts.is_dir():
        try:
            same = json.loads((parts / "job.json").read_text()) == key
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_text(parts / "job.json", json.dumps(key))
    def input_len(e: Example) -> int:  # <sos> y, or left [SEP] y [SEP] right
        return len(e[1]) + (1 if teacher.causal else
                            len(e[0]) + len(e[2]) + (2 if e[0] or e[2] else 0))

    long = {n for n, e in enumerate(examples) if input_len(e) > teacher.max_len}
    n_chunks = (len(examples) + chunk - 1) // chunk
    reused = 0
    for c in bar(range(n_chunks), desc="soft labels", disable=not progress, unit="chunk"):
        part = parts / f"part-{c:05d}.pt"
        if part.is_file():
            reused += 1
            continue
        lo = c * chunk
        todo = [n for n in range(lo, min(lo + chunk, len(examples))) if n not in long]
        sub: list[Example] = [examples[n] for n in todo]
        got = {}
        for j, lp in position_log_probs(teacher, sub, batch_size):
            n = todo[j]
            ids, probs = _top_k(lp, k)
            got[utt_ids[n]] = {"tokens": torch.tensor(seqs[n], dtype=torch.int32),
                               "ids": ids, "probs": probs}
        save_checkpoint(part, {"utts": got})
    utts: dict[str, Any] = {}
    for c in range(n_chunks):
        utts.update(load_soft_labels(parts / f"part-{c:05d}.pt")["utts"])
    save_checkpoint(out, dict(head, utts=utts))
    shutil.rmtree(parts)
    return {"utts": len(utts), "tokens": sum(len(v["tokens"]) for v in utts.values()),
            "skipped_empty": sum(1 for s in seqs if not s), "skipped_long": len(long),
            "reused_parts": reused}
