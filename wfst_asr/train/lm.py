"""Training and loading the LSTM language model of n-best rescoring
(:class:`wfst_asr.models.lm.LstmLm`).

:func:`train_lm` trains one with the project's :class:`~wfst_asr.train.Trainer` (Adam,
epochs, dev loss = dev cross-entropy per predicted symbol, ``best.pt`` on the best dev loss,
atomic checkpoints): the LM presents itself to the trainer as an acoustic model would
(``model(inputs, lens) -> (log_probs, out_lens)``, padded id batches in the ``features`` slot)
with :class:`LmLoss` as the criterion. The best-on-dev weights are written to
``exp_dir/lm.pt`` (atomic) with the model's hyper-parameters; :func:`load_lm` reads it back
(``weights_only=True``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wfst_asr.models.lm import LstmLm, pad_seqs
from wfst_asr.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wfst_asr.train.config import ExperimentConfig
from wfst_asr.train.trainer import Trainer, seed_everything

__all__ = ["LM_FILE", "LmLoss", "load_lm", "train_lm"]


LM_FILE = "lm.pt"


class LmLoss(nn.Module):
    """The trainer's criterion for :class:`LstmLm`: ``loss_fn(log_probs, out_lens, seqs)`` ->
    ``(summed negative log-likelihood, info)`` with ``info["frames"]`` = the number of
    predicted symbols (words + one ``</s>`` per sequence), so the trainer's "loss per output
    frame" is the cross-entropy per symbol and ``exp`` of it the perplexity."""

    reduction = "sum"

    def __init__(self, model: LstmLm) -> None:
        super().__init__()
        self.eos = model.eos
        self._seq_lp = model.seq_log_probs

    def forward(self, log_probs: torch.Tensor, out_lens: torch.Tensor,
                seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, dict[str, Any]]:
        nll = -self._seq_lp(log_probs, seqs).sum()
        frames = sum(len(s) + 1 for s in seqs)
        return nll, {"num_utts": len(seqs), "num_excluded": 0, "frames": frames}


class _SeqBatches:
    """The trainer's data loader for sequences: dicts with ``features`` (padded ids),
    ``feature_lens`` and ``seqs``; reshuffled per epoch (``sampler.set_epoch``, which the
    trainer calls) with a generator seeded by ``seed + epoch``."""

    def __init__(self, seqs: list[list[int]], batch_size: int, shuffle: bool, seed: int) -> None:
        self.seqs, self.batch_size, self.shuffle, self.seed = seqs, max(batch_size, 1), shuffle, seed
        self.epoch = 0
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.seqs) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.seqs), generator=g).tolist()
        else:
            order = list(range(len(self.seqs)))
        for a in range(0, len(order), self.batch_size):
            chunk = [self.seqs[i] for i in order[a:a + self.batch_size]]
            x, lens = pad_seqs(chunk)
            yield {"features": x, "feature_lens": lens, "supervisions": {}, "seqs": chunk}


def train_lm(sequences: Sequence[Sequence[int]], vocab_size: int, exp_dir: str | os.PathLike,
             dev_sequences: Sequence[Sequence[int]] | None = None, *, epochs: int = 10,
             batch_size: int = 32, lr: float = 1e-3, model_kwargs: dict[str, Any] | None = None,
             dev_fraction: float = 0.1, seed: int = 42, grad_clip: float = 5.0,
             device: str | torch.device = "cpu", resume: bool = False,
             words_checksum: str | None = None) -> tuple[LstmLm, list[dict[str, Any]]]:
    """Train an :class:`LstmLm` on id sequences with :class:`~wfst_asr.train.Trainer`.

    Adam with ``lr``, ``epochs`` epochs, batches of ``batch_size`` sequences reshuffled per
    epoch. The dev set is ``dev_sequences``, else a seeded random ``dev_fraction`` of
    ``sequences`` (at least one) held out. The trainer writes ``exp_dir/epoch-N.pt`` and
    ``best.pt`` (lowest dev cross-entropy) atomically, and ``resume=True`` continues after the
    newest epoch checkpoint. The best-on-dev weights (loaded back with ``weights_only=True``)
    are returned and written to ``exp_dir/lm.pt`` with the hyper-parameters, the dev
    perplexity and ``words_checksum`` (e.g. :func:`~wfst_asr.decode.lattice_io.symbol_table_checksum`
    of the word table, checked by ``wfst-asr lattice-rescore --mode nbest-nnlm``).

    Returns ``(model, history)``: the model in eval mode, and the trainer's per-epoch
    records with ``dev_ppl`` / ``train_ppl`` (``exp`` of the per-symbol losses) added.
    """
    seqs = [[int(w) for w in s] for s in sequences]
    if dev_sequences is None:
        if len(seqs) < 2:
            raise ValueError("train_lm needs at least 2 sequences to hold out a dev set")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(seqs), generator=g).tolist()
        n_dev = min(max(1, round(dev_fraction * len(seqs))), len(seqs) - 1)
        dev = [seqs[i] for i in perm[:n_dev]]
        seqs = [seqs[i] for i in sorted(perm[n_dev:])]
    else:
        dev = [[int(w) for w in s] for s in dev_sequences]
    if not seqs or not dev:
        raise ValueError("train_lm: empty training or dev set")
    seed_everything(seed)
    model = LstmLm(vocab_size, **(model_kwargs or {}))
    model.check_ids(seqs)
    model.check_ids(dev)
    exp = Path(exp_dir)
    cfg = ExperimentConfig(name="lstm_lm", model="lstm_lm", model_kwargs=dict(model.kwargs),
                           loss="lm_ce", optimizer="adam", lr=lr, grad_clip=grad_clip,
                           schedule="none", num_epochs=epochs, seed=seed, average_last=0,
                           exp_dir=str(exp), tensorboard=False)
    trainer = Trainer(cfg, model, LmLoss(model), _SeqBatches(seqs, batch_size, True, seed),
                      _SeqBatches(dev, batch_size, False, seed), device,
                      targets=lambda b: b["seqs"])
    history = trainer.fit(resume=resume)
    for rec in history:
        for k in ("train", "dev"):
            v = rec.get(f"{k}_loss")
            rec[f"{k}_ppl"] = math.exp(v) if v is not None and v < 700 else None
    best = load_checkpoint(exp / "best.pt")
    model.load_state_dict(best["model"])
    model.eval()
    best_epoch = int(best["epoch"])
    dev_ppl = next((r["dev_ppl"] for r in history if r["epoch"] == best_epoch), None)
    save_checkpoint(exp / LM_FILE, {
        "model": model.state_dict(), "kind": "lstm_lm", "lm_kwargs": dict(model.kwargs),
        "epoch": best_epoch, "dev_ppl": dev_ppl, "words_checksum": words_checksum,
        "history": [{k: v for k, v in r.items() if isinstance(v, (int, float, type(None)))}
                    for r in history]})
    return model, history


def load_lm(path: str | os.PathLike, device: str | torch.device = "cpu") -> LstmLm:
    """An :class:`LstmLm` (eval mode) from ``lm.pt`` written by :func:`train_lm`, or from one
    of its trainer checkpoints (``best.pt``, ``epoch-N.pt``), loaded with ``weights_only=True``.
    :class:`~wfst_asr.train.checkpoint.CheckpointError` (a ``RuntimeError``) for a missing,
    truncated or foreign file."""
    state = load_checkpoint(path, map_location="cpu")
    kwargs = state.get("lm_kwargs")
    if kwargs is None:
        cfg = state.get("config") or {}
        if cfg.get("model") != "lstm_lm":
            raise CheckpointError(f"{path} is not an LSTM LM checkpoint (model "
                                  f"{cfg.get('model')!r})")
        kwargs = cfg.get("model_kwargs", {})
    model = LstmLm(**kwargs)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit an LstmLm{kwargs}: "
                              f"{str(e).splitlines()[0]}") from e
    model.words_checksum = state.get("words_checksum")
    return model.to(device).eval()
