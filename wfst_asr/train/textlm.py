"""Training, evaluating and loading the transformer text models of :mod:`wfst_asr.models.textlm`
(``wfst-asr train-mlm``): the masked LM teacher of BERT distillation and the left-to-right LM
of LM distillation, shallow fusion and n-best rescoring.

* Text: Kaldi ``text`` lines (``utt unit unit ...``) in the ASR model's units, mapped through
  its ``tokens.txt`` (:func:`read_unit_text`; an unknown unit is an error naming the file, the
  line and the unit; empty transcripts are skipped and counted).
* Context (:func:`context_windows`): the utterances of one chapter (the first group of
  ``chapter_regex`` matched on the utterance id; the ids sorted in a chapter) are consecutive
  text, so the MLM also sees up to ``context_tokens`` tokens of the previous and of the next
  utterances (``left [SEP] utt [SEP] right``). Masking is within the utterance only.
* Training uses the project's :class:`~wfst_asr.train.Trainer` (Adam, epochs, best-on-dev,
  atomic checkpoints, ``--resume``): the MLM masks 15 % of the utterance's tokens (at least
  one; 80 % ``[MASK]``, 10 % a random token, 10 % unchanged; a fixed masking on dev), the
  causal LM predicts every next token and ``<eos>``. The dev loss is the cross-entropy per
  predicted token.
* At the end, :func:`text_lm_metrics` on the dev text: the MLM's pseudo-perplexity and
  masked-token accuracy (every position masked in turn), the causal LM's perplexity and
  next-token accuracy; written with the best-on-dev weights to ``EXP_DIR/textlm.pt``, which
  :func:`load_text_lm` reads (``weights_only=True``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wfst_asr.models.textlm import MaskedLm, TextTransformer, TransformerLm, mlm_input
from wfst_asr.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wfst_asr.train.config import ExperimentConfig
from wfst_asr.train.trainer import Trainer, seed_everything

__all__ = ["TEXT_LM_FILE", "Example", "context_windows", "load_text_lm", "position_log_probs",
           "read_unit_text", "text_lm_metrics", "train_text_lm"]

TEXT_LM_FILE = "textlm.pt"
#: an utterance with context: (left tokens, utterance tokens, right tokens)
Example = tuple[list[int], list[int], list[int]]


def read_unit_text(path: str | os.PathLike, table: dict[str, int], tokens_name: str = "tokens",
                   skipped: list[str] | None = None) -> tuple[list[str], list[list[int]], int]:
    """``(utt ids, id sequences, empty)`` of a Kaldi text file in the model's units; lines
    without units are skipped and counted; a unit outside ``table`` is a ValueError naming the
    file, the line and the unit, or, given a ``skipped`` list, that line is skipped and
    ``"path:line (unit)"`` appended to it."""
    from wfst_asr.atomic import iter_text_lines

    utts, seqs, empty = [], [], 0
    for n, line in enumerate(iter_text_lines(path), start=1):
        f = line.split()
        if not f:
            continue
        if len(f) == 1:
            empty += 1
            continue
        bad = [u for u in f[1:] if u not in table]
        if bad and skipped is not None:
            skipped.append(f"{path}:{n} ({bad[0]!r})")
            continue
        if bad:
            raise ValueError(f"{path}:{n}: unit {bad[0]!r} is not in {tokens_name}")
        utts.append(f[0])
        seqs.append([table[u] for u in f[1:]])
    return utts, seqs, empty


def context_windows(utt_ids: Sequence[str], seqs: Sequence[Sequence[int]],
                    chapter_regex: str | None, context_tokens: int) -> list[Example]:
    """``(left, utt, right)`` per utterance (input order): ``left`` = the last
    ``context_tokens`` tokens of the chapter's previous utterances, ``right`` = the first
    ``context_tokens`` of the next ones; none without ``chapter_regex`` or when it does not
    match (the utterance is its own chapter) or ``context_tokens <= 0``."""
    seqs = [list(s) for s in seqs]
    out: list[Example] = [([], s, []) for s in seqs]
    if not chapter_regex or context_tokens <= 0:
        return out
    pat = re.compile(chapter_regex)
    chapters: dict[str, list[int]] = {}
    for i, u in enumerate(utt_ids):
        m = pat.search(u)
        if m is not None:
            chapters.setdefault(m.group(1) if m.groups() else m.group(0), []).append(i)
    for members in chapters.values():
        members.sort(key=lambda i: utt_ids[i])
        for j, i in enumerate(members):
            left: list[int] = []
            for p in reversed(members[:j]):
                if len(left) >= context_tokens:
                    break
                left = seqs[p] + left
            right: list[int] = []
            for q in members[j + 1:]:
                if len(right) >= context_tokens:
                    break
                right = right + seqs[q]
            out[i] = (left[len(left) - context_tokens:] if len(left) > context_tokens else left,
                      seqs[i], right[:context_tokens])
    return out


# ------------------------------------------------------------------------- training
class _Objective(nn.Module):
    """The trainer's "acoustic model" for a text model: ``forward(x [B, L, 2] (ids, segments),
    lens) -> (log_probs [B, L, V], targets [B, L])``, targets -1 where nothing is predicted."""

    def __init__(self, lm: TextTransformer, mask_prob: float = 0.15, seed: int = 0) -> None:
        super().__init__()
        self.lm, self.mask_prob, self.seed = lm, float(mask_prob), int(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor, lens: torch.Tensor):
        ids, segs = x[..., 0], x[..., 1]
        B, L = ids.shape
        valid = torch.arange(L, device=ids.device)[None] < lens[:, None]
        if self.lm.causal:  # <sos> y -> y <eos>
            tgt = torch.full_like(ids, -1)
            tgt[:, :-1] = torch.where(valid[:, 1:], ids[:, 1:], tgt[:, 1:])
            tgt[torch.arange(B), lens - 1] = 0
            return self.lm(ids, lens), tgt
        g = self.gen if self.training else torch.Generator().manual_seed(
            self.seed + int((ids.cpu() * torch.arange(1, L + 1)).sum()) % 1000003)
        cand = (valid & (segs == 1) & (ids < self.lm.vocab_size)).cpu()
        u = torch.rand(B, L, generator=g)
        pick = cand & (u < self.mask_prob)
        for b in range(B):  # at least one masked token per utterance
            if not bool(pick[b].any()) and bool(cand[b].any()):
                c = cand[b].nonzero()[:, 0]
                pick[b, c[torch.randint(len(c), (1,), generator=g)]] = True
        how = torch.rand(B, L, generator=g)
        rnd = torch.randint(1, self.lm.vocab_size, (B, L), generator=g)
        inp = ids.cpu().clone()
        inp[pick & (how < 0.8)] = self.lm.mask_id
        swap = pick & (how >= 0.8) & (how < 0.9)
        inp[swap] = rnd[swap]
        tgt = torch.where(pick, ids.cpu(), torch.full_like(inp, -1)).to(ids.device)
        return self.lm(inp.to(ids.device), lens, segs), tgt


class _PredictedNll(nn.Module):
    """``loss_fn(log_probs, targets, examples) -> (summed NLL of the predicted positions,
    info)``; ``frames`` = predicted positions."""

    reduction = "sum"

    def forward(self, log_probs: torch.Tensor, tgt: torch.Tensor, examples):
        mask = tgt >= 0
        lp = log_probs.gather(2, tgt.clamp(min=0)[..., None])[..., 0]
        nll = -torch.where(mask, lp, torch.zeros_like(lp)).sum()
        return nll, {"num_utts": len(examples), "num_excluded": 0, "frames": int(mask.sum())}


def _encode(ex: Example, lm: TextTransformer) -> tuple[list[int], list[int]]:
    if lm.causal:
        return [0, *ex[1]], [1] * (len(ex[1]) + 1)
    ids, segs, _ = mlm_input(ex[1], ex[0], ex[2], lm.sep_id)
    return ids, segs


class _Batches:
    """Padded ``[B, L, 2]`` batches of examples, reshuffled per epoch (``set_epoch``)."""

    def __init__(self, examples: list[Example], lm: TextTransformer, batch_size: int,
                 shuffle: bool, seed: int) -> None:
        self.enc = [_encode(e, lm) for e in examples]
        self.examples, self.batch_size = examples, max(int(batch_size), 1)
        self.shuffle, self.seed, self.epoch, self.sampler = shuffle, seed, 0, self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.enc) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = (torch.randperm(len(self.enc), generator=torch.Generator().manual_seed(
            self.seed + self.epoch)).tolist() if self.shuffle else range(len(self.enc)))
        order = list(order)
        for a in range(0, len(order), self.batch_size):
            idx = order[a:a + self.batch_size]
            L = max(len(self.enc[i][0]) for i in idx)
            x = torch.zeros(len(idx), L, 2, dtype=torch.int64)
            for b, i in enumerate(idx):
                ids, segs = self.enc[i]
                x[b, :len(ids), 0] = torch.tensor(ids)
                x[b, :len(ids), 1] = torch.tensor(segs)
            lens = torch.tensor([len(self.enc[i][0]) for i in idx])
            yield {"features": x, "feature_lens": lens, "supervisions": {},
                   "examples": [self.examples[i] for i in idx]}


def _check_len(examples: Sequence[Example], lm: TextTransformer, what: str) -> None:
    for n, ex in enumerate(examples):
        if len(_encode(ex, lm)[0]) > lm.max_len:
            raise ValueError(f"{what} {n}: {len(ex[1])} tokens (with context) exceed the LM's "
                             f"max_len {lm.max_len}")


def train_text_lm(train: Sequence[Example], dev: Sequence[Example], vocab_size: int,
                  exp_dir: str | os.PathLike, *, kind: str = "mlm", epochs: int = 10,
                  batch_size: int = 32, lr: float = 5e-4, model_kwargs: dict | None = None,
                  mask_prob: float = 0.15, seed: int = 42, grad_clip: float = 5.0,
                  device: str | torch.device = "cpu", resume: bool = False,
                  meta: dict[str, Any] | None = None) -> tuple[TextTransformer, dict[str, Any]]:
    """Train a :class:`MaskedLm` (``kind="mlm"``) or :class:`TransformerLm` (``"causal"``);
    returns ``(model in eval mode, record)`` with the trainer history and the dev metrics of
    :func:`text_lm_metrics`; writes ``exp_dir/textlm.pt`` (weights, hyper-parameters, ``meta``
    such as the tokens' checksum and the context settings, the record)."""
    if kind not in ("mlm", "causal"):
        raise ValueError(f"kind must be mlm or causal, got {kind!r}")
    if not train or not dev:
        raise ValueError("train_text_lm: empty training or dev text")
    seed_everything(seed)
    cls = MaskedLm if kind == "mlm" else TransformerLm
    lm = cls(vocab_size, **(model_kwargs or {}))
    for what, exs in (("training utterance", train), ("dev utterance", dev)):
        lm.check_ids([e[1] for e in exs], what)
        _check_len(exs, lm, what)
    obj = _Objective(lm, mask_prob, seed)
    exp = Path(exp_dir)
    cfg = ExperimentConfig(name=f"text_{kind}", model=f"text_{kind}", model_kwargs=lm.kwargs,
                           loss="text_nll", optimizer="adam", lr=lr, grad_clip=grad_clip,
                           schedule="none", num_epochs=epochs, seed=seed, average_last=0,
                           exp_dir=str(exp), tensorboard=False)
    trainer = Trainer(cfg, obj, _PredictedNll(), _Batches(list(train), lm, batch_size, True, seed),
                      _Batches(list(dev), lm, batch_size, False, seed), device,
                      targets=lambda b: b["examples"])
    history = trainer.fit(resume=resume)
    best = load_checkpoint(exp / "best.pt")
    obj.load_state_dict(best["model"])
    lm.eval()
    metrics = text_lm_metrics(lm, dev)
    record = {"kind": kind, "best_epoch": int(best["epoch"]), **metrics,
              "history": [{k: v for k, v in r.items() if isinstance(v, (int, float, type(None)))}
                          for r in history]}
    save_checkpoint(exp / TEXT_LM_FILE, {"model": lm.state_dict(), "kind": kind,
                                         "lm_kwargs": dict(lm.kwargs), "meta": dict(meta or {}),
                                         "record": record})
    return lm, record


# ------------------------------------------------------------------------- inference
@torch.no_grad()
def position_log_probs(lm: TextTransformer, examples: Sequence[Example],
                       batch_size: int = 512) -> Iterator[tuple[int, torch.Tensor]]:
    """``(example index, log_probs [U, V] float32 CPU)`` per example with ``U > 0`` tokens, in
    order: row ``i`` is the MLM's ``log p(. | y_\\i, context)`` (position ``i`` masked), or
    the causal LM's ``log p(. | <sos> y_<i)``. Eval mode; ``batch_size`` rows per forward."""
    was = lm.training
    lm.eval()
    try:
        if lm.causal:
            for n, ex in enumerate(examples):
                if ex[1]:
                    ids = torch.tensor([[0, *ex[1]]], device=next(lm.parameters()).device)
                    lp = lm(ids, torch.tensor([ids.shape[1]], device=ids.device))
                    yield n, lp[0, :-1].float().cpu()
            return
        pending: list[tuple[int, int]] = []
        inputs: list = []
        rows: dict[int, list[torch.Tensor]] = {}

        def flush() -> Iterator[tuple[int, torch.Tensor]]:
            lp = lm.masked_log_probs(inputs).float().cpu()
            for (n, _i), row in zip(pending, lp):
                rows.setdefault(n, []).append(row)
                if len(rows[n]) == len(examples[n][1]):
                    yield n, torch.stack(rows.pop(n))
            pending.clear()
            inputs.clear()

        for n, ex in enumerate(examples):
            if not ex[1]:
                continue
            ids, segs, off = mlm_input(ex[1], ex[0], ex[2], lm.sep_id)
            for i in range(len(ex[1])):
                pending.append((n, i))
                inputs.append((ids, segs, off + i))
                if len(inputs) >= batch_size:
                    yield from flush()
        if inputs:
            yield from flush()
    finally:
        lm.train(was)


def text_lm_metrics(lm: TextTransformer, examples: Sequence[Example],
                    batch_size: int = 512) -> dict[str, float]:
    """On ``examples``: ``ppl`` (the causal LM's perplexity per token, ``<eos>`` included; the
    MLM's pseudo-perplexity ``exp(-PLL / tokens)``), ``accuracy`` (%: the argmax is the
    token, every position masked in turn for the MLM, next-token for the causal LM) and
    ``tokens``."""
    nll, right, count = 0.0, 0, 0
    for n, lp in position_log_probs(lm, examples, batch_size):
        y = torch.tensor(examples[n][1])
        nll -= float(lp.gather(1, y[:, None]).sum())
        right += int((lp.argmax(1) == y).sum())
        count += len(y)
    if lm.causal:  # the whole log P(y <eos>), <eos> included
        nll = -float(lm.score([e[1] for e in examples]).sum()) if examples else 0.0
        count += len(examples)
    return {"ppl": math.exp(nll / count) if count and nll / count < 700 else float("inf"),
            "accuracy": 100.0 * right / max(count - (len(examples) if lm.causal else 0), 1),
            "tokens": count}


def load_text_lm(path: str | os.PathLike, device: str | torch.device = "cpu"
                 ) -> TextTransformer:
    """The model of ``textlm.pt`` (eval mode; ``.meta`` = the saved ``meta`` dict,
    ``.record`` = the training record); CheckpointError for a missing or foreign file."""
    state = load_checkpoint(path, map_location="cpu")
    kind = state.get("kind")
    if kind not in ("mlm", "causal") or "lm_kwargs" not in state:
        raise CheckpointError(f"{path} is not a text LM written by wfst-asr train-mlm")
    lm = (MaskedLm if kind == "mlm" else TransformerLm)(**state["lm_kwargs"])
    try:
        lm.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit: {str(e).splitlines()[0]}") from e
    lm.meta, lm.record = dict(state.get("meta") or {}), dict(state.get("record") or {})
    return lm.to(device).eval()
