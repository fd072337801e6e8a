"""A word-level (or token-level) LSTM language model for n-best rescoring.

:class:`LstmLm` models sequences of ids ``0 .. vocab_size - 1`` (the ids of a word table, e.g.
a lattice directory's ``words.txt``; for a token-level LM, the token table's ids). One extra
symbol, ``vocab_size``, is both the sentence start ``<s>`` (fed before the first id) and the
sentence end ``</s>`` (predicted after the last one), so::

    log P(w_1 .. w_n) = sum_{t=1}^{n+1} log p(w_t | <s> w_1 .. w_{t-1}),   w_{n+1} = </s>

:meth:`LstmLm.score` returns that log-probability (natural log, float64) for a list of
sequences, batched with padding (sequences sorted by length per batch, results in input order).

Training and loading (:func:`~wfst_asr.train.lm.train_lm`, :func:`~wfst_asr.train.lm.load_lm`)
are in :mod:`wfst_asr.train.lm`: a model imports only torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LstmLm", "pad_seqs"]

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


