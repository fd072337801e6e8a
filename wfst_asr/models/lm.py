"""A word-level (or token-level) LSTM language model for n-best rescoring.

:class:`LstmLm` models sequences of ids ``0 .. vocab_size - 1`` (the ids of a word table, e.g.
a lattice directory's ``words.txt``; for a token-level LM, the token table's ids). One extra
symbol, ``vocab_size``, is both the sentence start ``<s>`` (fed before the first id) and the
sentence end ``</s>`` (predicted after the last one), so::

    log P(w_1 .. w_n) = sum_{t=1}^{n+1} log p(w_t | <s> w_1 .. w_{t-1}),   w_{n+1} = </s>

:meth:`LstmLm.score` returns that log-probability (natural log, float64) for a list of
sequences, batched with padding (sequences sorted by length per batch, results in input order).

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

__all__ = ["LmLoss", "LstmLm", "load_lm", "pad_seqs", "train_lm"]

LM_FILE = "lm.pt"


def pad_seqs(seqs: Sequence[Sequence[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, L] int64 padded with pad, lens [N] int64)``; ``L >= 1``."""
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    L = max(int(lens.max()) if len(seqs) else 0, 1)
    x = torch.full((len(seqs), L), pad, dtype=torch.int64)
    for i, s in enumerate(seqs):
        if len(s):
            x[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
    return x, lens


class LstmLm(nn.Module):
    """Embedding -> LSTM -> linear over ``vocab_size + 1`` outputs (the last is ``</s>``).

    Args:
      vocab_size: ids ``0 .. vocab_size - 1`` may occur in sequences; ``vocab_size`` is
        ``<s>`` / ``</s>``.
      embed_dim, hidden_dim, num_layers: sizes.
      dropout: on the embeddings, between LSTM layers and before the output layer.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 128, hidden_dim: int = 256,
                 num_layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.bos = self.eos = self.vocab_size
        self.words_checksum: str | None = None  # of the word table (set by load_lm)
        self.kwargs = {"vocab_size": int(vocab_size), "embed_dim": int(embed_dim),
                       "hidden_dim": int(hidden_dim), "num_layers": int(num_layers),
                       "dropout": float(dropout)}
        self.embed = nn.Embedding(vocab_size + 1, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size + 1)

    def check_ids(self, seqs: Sequence[Sequence[int]]) -> None:
        """ValueError naming the first sequence with an id outside ``0 .. vocab_size - 1``."""
        for i, s in enumerate(seqs):
            bad = [w for w in s if not 0 <= int(w) < self.vocab_size]
            if bad:
                raise ValueError(f"sequence {i} has id {bad[0]} outside the LM's vocabulary "
                                 f"0..{self.vocab_size - 1}")

    def forward(self, ids: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids`` ``[B, L]`` (padding: anything in range), ``lens`` ``[B]`` ->
        ``(log_probs [B, L + 1, vocab_size + 1], lens + 1)``: position ``t`` holds the
        distribution of symbol ``t`` (``t = lens[b]``: ``</s>``) given ``<s>`` and the
        symbols before it."""
        bos = torch.full((ids.shape[0], 1), self.bos, dtype=torch.int64, device=ids.device)
        x = torch.cat([bos, ids.long()], dim=1)
        h, _ = self.lstm(self.drop(self.embed(x)))
        return self.out(self.drop(h)).log_softmax(-1), lens + 1

    def targets(self, seqs: Sequence[Sequence[int]], length: int) -> torch.Tensor:
        """``[B, length]`` int64: each sequence, then ``</s>``, then ``-1`` (ignored)."""
        t = torch.full((len(seqs), length), -1, dtype=torch.int64)
        for i, s in enumerate(seqs):
            if len(s):
                t[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
            t[i, len(s)] = self.eos
        return t

    def seq_log_probs(self, log_probs: torch.Tensor, seqs: Sequence[Sequence[int]]
                      ) -> torch.Tensor:
        """Per-sequence sums of the log-probabilities of its symbols and ``</s>`` from
        :meth:`forward`'s output (same dtype as ``log_probs``)."""
        t = self.targets(seqs, log_probs.shape[1]).to(log_probs.device)
        mask = t >= 0
        lp = log_probs.gather(2, t.clamp(min=0).unsqueeze(2)).squeeze(2)
        return (lp * mask).sum(1)

    @torch.no_grad()
    def score(self, seqs: Sequence[Sequence[int]], batch_size: int = 256) -> torch.Tensor:
        """float64 ``[N]`` (CPU): ``log P(seq)`` of each sequence, ``</s>`` included, in
        eval mode (no dropout); batches of ``batch_size`` sequences of similar length."""
        seqs = [list(map(int, s)) for s in seqs]
        self.check_ids(seqs)
        out = torch.zeros(len(seqs), dtype=torch.float64)
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
            for a in range(0, len(order), max(int(batch_size), 1)):
                idx = order[a:a + batch_size]
                chunk = [seqs[i] for i in idx]
                x, lens = pad_seqs(chunk)
                lp, _ = self(x.to(device), lens.to(device))
                out[torch.tensor(idx)] = self.seq_log_probs(lp.double(), chunk).cpu()
        finally:
            self.train(was_training)
        return out


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
    from wfst_asr.train.checkpoint import load_checkpoint, save_checkpoint
    from wfst_asr.train.config import ExperimentConfig
    from wfst_asr.train.trainer import Trainer, seed_everything

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
    from wfst_asr.train.checkpoint import CheckpointError, load_checkpoint

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
