"""Transformer language models over an ASR model's own output units: the left-to-right LM of
shallow fusion, n-best rescoring and LM distillation (:class:`TransformerLm`), and the masked
LM (BERT) whose soft labels an attention decoder is distilled from (:class:`MaskedLm`,
Futami et al. 2020).

Ids are the ASR model's: ``V`` classes, ``0`` = blank / ``<sos>`` / ``<eos>``
(:data:`wfst_asr.models.attention.SOS_EOS`), tokens ``1 .. V-1``. Two more input ids exist:
``V`` = ``[MASK]`` and ``V + 1`` = ``[SEP]`` (between an utterance and its context). The output
layer has the ``V`` classes, so an LM's log-probabilities add directly to the attention
decoder's (shallow fusion) and the MLM's are a distribution over the decoder's targets.

* :class:`TransformerLm` (causal): ``log P(y) = sum_i log p(y_i | <sos> y_<i) + log p(<eos> |
  <sos> y)``; :meth:`~TransformerLm.score`, :meth:`~TransformerLm.next_log_probs`.
* :class:`MaskedLm` (bidirectional): ``p(y_i | y_\\i, context)`` at ``[MASK]`` positions; class
  0 is never predicted; :meth:`~MaskedLm.masked_log_probs`,
  :meth:`~MaskedLm.pseudo_log_likelihood` (Salazar et al. 2020). The input of one utterance
  with context is ``left [SEP] utterance [SEP] right`` with segment ids 0 (context) and 1
  (the utterance and its two ``[SEP]``), :func:`mlm_input`.

Training is :mod:`wfst_asr.train.textlm` (``wfst-asr train-mlm``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from wfst_asr.models.attention import cached_self_attention

__all__ = ["LmState", "MaskedLm", "TextTransformer", "TransformerLm", "mlm_input"]


@dataclass
class LmState:
    """:meth:`TransformerLm.step`'s state for ``K`` prefixes: per layer the self-attention
    keys / values of the positions so far (``[K, H, t, dh]``) and the next position ``t``."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    t: int = 0

    def select(self, idx: torch.Tensor) -> LmState:
        """The state of prefixes ``idx`` (``[K']`` indices, repeats allowed)."""
        return LmState([x.index_select(0, idx) for x in self.k],
                       [x.index_select(0, idx) for x in self.v], self.t)


class TextTransformer(nn.Module):
    """Token + learned position (+ segment) embeddings, ``num_layers`` pre-norm
    ``nn.TransformerEncoderLayer``s (causal self-attention when ``causal``), a final norm and
    a linear output over ``vocab_size`` classes.

    ``forward(ids [B, L], lens [B], segments [B, L] | None) -> log_probs [B, L, V]``
    (float32 log-softmax; padded positions are masked as keys).

    Args:
      vocab_size: ``V`` of the ASR model (inputs may also be ``V`` = mask, ``V+1`` = sep).
      causal: left-to-right LM (True) or masked LM (False).
      d_model, nhead, num_layers, dim_feedforward, dropout: the layers'.
      max_len: longest input (positions); longer inputs are a ValueError.
    """

    def __init__(self, vocab_size: int, causal: bool, d_model: int = 256, nhead: int = 4,
                 num_layers: int = 4, dim_feedforward: int = 1024, dropout: float = 0.1,
                 max_len: int = 512) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank/eos + tokens), got {vocab_size}")
        self.vocab_size, self.causal, self.max_len = int(vocab_size), bool(causal), int(max_len)
        self.mask_id, self.sep_id = self.vocab_size, self.vocab_size + 1
        self.kwargs = {"vocab_size": self.vocab_size, "d_model": d_model, "nhead": nhead,
                       "num_layers": num_layers, "dim_feedforward": dim_feedforward,
                       "dropout": dropout, "max_len": self.max_len}
        self.embed = nn.Embedding(self.vocab_size + 2, d_model)
        self.pos = nn.Embedding(self.max_len, d_model)
        self.seg = nn.Embedding(2, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, self.vocab_size)
        self.dropout = nn.Dropout(dropout)

    def check_ids(self, seqs: Sequence[Sequence[int]], what: str = "sequence") -> None:
        """ValueError naming the first sequence with an id outside ``1 .. V-1``."""
        for n, s in enumerate(seqs):
            bad = [int(t) for t in s if not 0 < int(t) < self.vocab_size]
            if bad:
                raise ValueError(f"{what} {n}: id {bad[0]} is not a token of this LM "
                                 f"(ids 1..{self.vocab_size - 1})")

    def forward(self, ids: torch.Tensor, lens: torch.Tensor,
                segments: torch.Tensor | None = None) -> torch.Tensor:
        L = ids.shape[1]
        if L > self.max_len:
            raise ValueError(f"input of {L} ids is longer than the LM's max_len {self.max_len}")
        pos = torch.arange(L, device=ids.device)
        x = self.embed(ids.clamp(min=0)) + self.pos(pos)[None]
        if segments is not None:
            x = x + self.seg(segments)
        pad = pos[None] >= lens.to(ids.device)[:, None]
        causal = (torch.triu(torch.ones(L, L, dtype=torch.bool, device=ids.device), 1)
                  if self.causal else None)
        h = self.layers(self.dropout(x), mask=causal, src_key_padding_mask=pad)
        logits = self.output(self.norm(h)).float()
        if not self.causal:  # the MLM predicts tokens only
            logits[..., 0] = float("-inf")
        return logits.log_softmax(-1)


class TransformerLm(TextTransformer):
    """The left-to-right LM (see the module doc); ``forward`` as :class:`TextTransformer`'s on
    ``<sos> y``."""

    def __init__(self, vocab_size: int, **kwargs) -> None:
        super().__init__(vocab_size, causal=True, **kwargs)

    def init_state(self, K: int, device: torch.device | str | None = None) -> LmState:
        """The state of ``K`` empty prefixes (feed ``<sos>`` = 0 first)."""
        d = self.kwargs["d_model"]
        h = self.layers.layers[0].self_attn.num_heads
        dev = device if device is not None else next(self.parameters()).device
        empty = torch.zeros(K, h, 0, d // h, device=dev)
        n = len(self.layers.layers)
        return LmState([empty] * n, [empty] * n, 0)

    def step(self, state: LmState, tokens: torch.Tensor) -> tuple[torch.Tensor, LmState]:
        """``(log p(. | prefix + tokens) [K, V], the new state)``: :meth:`forward`'s last
        position (eval mode), computed for the new position only (cached keys / values)."""
        if state.t >= self.max_len:
            raise ValueError(f"prefix longer than the LM's max_len {self.max_len}")
        x = self.embed(tokens.clamp(min=0))[:, None] + self.pos.weight[state.t]
        ks, vs = [], []
        for i, layer in enumerate(self.layers.layers):
            a, k, v = cached_self_attention(layer.self_attn, layer.norm1(x), state.k[i],
                                            state.v[i])
            ks.append(k)
            vs.append(v)
            x = x + a
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
        lp = self.output(self.norm(x))[:, 0].float().log_softmax(-1)
        return lp, LmState(ks, vs, state.t + 1)

    def next_log_probs(self, ys: torch.Tensor) -> torch.Tensor:
        """``[K, V]``: ``log p(. | ys)`` after prefixes ``ys [K, L]`` (each ``<sos>`` +
        tokens, unpadded)."""
        lens = torch.full((ys.shape[0],), ys.shape[1], dtype=torch.int64, device=ys.device)
        return self(ys, lens)[:, -1]

    @torch.no_grad()
    def score(self, seqs: Sequence[Sequence[int]], batch_size: int = 256) -> torch.Tensor:
        """float64 ``[N]`` (CPU): ``log P(y <eos>)`` of each token sequence, in eval mode."""
        seqs = [[int(t) for t in s] for s in seqs]
        self.check_ids(seqs)
        out = torch.zeros(len(seqs), dtype=torch.float64)
        was, dev = self.training, next(self.parameters()).device
        self.eval()
        try:
            for a in range(0, len(seqs), max(int(batch_size), 1)):
                chunk = seqs[a:a + batch_size]
                L = max(len(s) for s in chunk) + 1
                ids = torch.zeros(len(chunk), L, dtype=torch.int64)
                tgt = torch.full((len(chunk), L), -1, dtype=torch.int64)
                for b, s in enumerate(chunk):
                    ids[b, 1:len(s) + 1] = torch.tensor(s, dtype=torch.int64)
                    tgt[b, :len(s)] = torch.tensor(s, dtype=torch.int64)
                    tgt[b, len(s)] = 0
                lens = torch.tensor([len(s) + 1 for s in chunk])
                lp = self(ids.to(dev), lens.to(dev)).double().cpu()
                got = lp.gather(2, tgt.clamp(min=0)[..., None])[..., 0]
                out[a:a + len(chunk)] = torch.where(tgt >= 0, got, torch.zeros_like(got)).sum(1)
        finally:
            self.train(was)
        return out


def mlm_input(utt: Sequence[int], left: Sequence[int] = (), right: Sequence[int] = (),
              sep: int | None = None) -> tuple[list[int], list[int], int]:
    """``(ids, segments, offset)`` of one utterance with context: ``left [SEP] utt [SEP]
    right`` (no ``[SEP]`` and ``offset = 0`` without context), ``offset`` = position of
    ``utt[0]``; ``sep`` is the LM's ``sep_id``."""
    if not left and not right:
        return list(utt), [1] * len(utt), 0
    if sep is None:
        raise ValueError("mlm_input with context needs the LM's sep id")
    ids = [*left, sep, *utt, sep, *right]
    segs = [0] * len(left) + [1] * (len(utt) + 2) + [0] * len(right)
    return ids, segs, len(left) + 1


class MaskedLm(TextTransformer):
    """The masked LM (see the module doc)."""

    def __init__(self, vocab_size: int, **kwargs) -> None:
        super().__init__(vocab_size, causal=False, **kwargs)

    def masked_log_probs(self, inputs: Sequence[tuple[Sequence[int], Sequence[int], int]]
                         ) -> torch.Tensor:
        """``[N, V]``: ``log p(. | input with position p masked)`` for each ``(ids, segments,
        p)``, as one padded batch (gradients flow; call under ``no_grad`` for inference)."""
        dev = next(self.parameters()).device
        L = max(len(i) for i, _, _ in inputs)
        ids = torch.zeros(len(inputs), L, dtype=torch.int64)
        segs = torch.zeros(len(inputs), L, dtype=torch.int64)
        where = torch.tensor([p for _, _, p in inputs], dtype=torch.int64)
        for n, (i, s, p) in enumerate(inputs):
            ids[n, :len(i)] = torch.tensor(list(i), dtype=torch.int64)
            segs[n, :len(s)] = torch.tensor(list(s), dtype=torch.int64)
            ids[n, p] = self.mask_id
        lens = torch.tensor([len(i) for i, _, _ in inputs])
        lp = self(ids.to(dev), lens.to(dev), segs.to(dev))
        return lp[torch.arange(len(inputs), device=dev), where.to(dev)]

    @torch.no_grad()
    def pseudo_log_likelihood(self, seqs: Sequence[Sequence[int]], batch_size: int = 512
                              ) -> torch.Tensor:
        """float64 ``[N]`` (CPU): ``sum_i log p(y_i | y_\\i)`` of each sequence, every position
        masked in turn (``batch_size`` masked copies per forward), in eval mode."""
        seqs = [[int(t) for t in s] for s in seqs]
        self.check_ids(seqs)
        items = [(n, i) for n, s in enumerate(seqs) for i in range(len(s))]
        out = torch.zeros(len(seqs), dtype=torch.float64)
        was = self.training
        self.eval()
        try:
            for a in range(0, len(items), max(int(batch_size), 1)):
                chunk = items[a:a + batch_size]
                lp = self.masked_log_probs([(seqs[n], [1] * len(seqs[n]), i)
                                            for n, i in chunk]).double().cpu()
                for row, (n, i) in zip(lp, chunk):
                    out[n] += row[seqs[n][i]]
        finally:
            self.train(was)
        return out
