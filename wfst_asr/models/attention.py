"""Attention encoder-decoder (ESPnet-style joint CTC / attention): the toolkit's BLSTM encoder,
a Transformer decoder over its output, and a CTC output on the encoder.

Ids: the CTC vocabulary ``V`` (blank 0 + tokens ``1..V-1``). The decoder uses id 0 as both
``<sos>`` (input) and ``<eos>`` (output), so its output has the same ``V`` classes as CTC and
never needs blank: ``ys_in = [0, y_1, .., y_U]``, ``ys_out = [y_1, .., y_U, 0]``.

* :class:`AttentionDecoder`: token embedding + sinusoidal positions, ``nn.TransformerDecoder``
  (causal self-attention, cross-attention to the encoder frames, padding masked), a linear
  output layer: ``forward(memory [B, T, C], memory_lens [B], ys_in [B, L]) -> logits [B, L, V]``.
* :class:`BlstmAttention` (registered ``blstm_attention``): ``forward(x, lens) -> (memory
  [B, T', C], out_lens)``; ``ctc_log_probs(memory)``; ``decoder``.

Training is :class:`~wfst_asr.train.criteria.AttentionCriterion`; searches are in
:mod:`wfst_asr.decode.attention`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wfst_asr.models.encoders import Blstm, Encoder, register_model

__all__ = ["SOS_EOS", "AttentionDecoder", "BlstmAttention", "DecoderState",
           "cached_self_attention", "decoder_io", "merge_heads", "split_heads"]

#: the decoder's start and end symbol (the CTC blank id, never a decoder target otherwise)
SOS_EOS = 0


def decoder_io(token_seqs: list[list[int]], device: torch.device | str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ys_in [B, L], ys_out [B, L])`` for token sequences (``L = max U + 1``): ``<sos>`` +
    tokens and tokens + ``<eos>``; ``ys_out`` is padded with -1 (ignored), ``ys_in`` with 0."""
    L = max((len(s) for s in token_seqs), default=0) + 1
    ys_in = torch.zeros(len(token_seqs), L, dtype=torch.int64)
    ys_out = torch.full((len(token_seqs), L), -1, dtype=torch.int64)
    for b, s in enumerate(token_seqs):
        if s:
            t = torch.as_tensor(s, dtype=torch.int64)
            ys_in[b, 1:len(s) + 1] = t
            ys_out[b, :len(s)] = t
        ys_out[b, len(s)] = SOS_EOS
    return ys_in.to(device), ys_out.to(device)


def _positions(L: int, d: int, device, dtype) -> torch.Tensor:
    pos = torch.arange(L, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32)
                    * (-math.log(10000.0) / d))
    pe = torch.zeros(L, d, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d // 2])
    return pe.to(dtype)


@dataclass
class DecoderState:
    """The incremental state of :meth:`AttentionDecoder.step` for ``K`` hypotheses: per layer
    the self-attention keys / values of the positions so far (``[K, H, t, dh]``) and the
    cross-attention keys / values of the encoder output (``[K, H, T, dh]``, computed once),
    the encoder padding (``[K, 1, 1, T]``, True = a real frame) and the next position ``t``."""

    self_k: list[torch.Tensor]
    self_v: list[torch.Tensor]
    cross_k: list[torch.Tensor]
    cross_v: list[torch.Tensor]
    mem_ok: torch.Tensor
    t: int = 0

    def select(self, idx: torch.Tensor) -> DecoderState:
        """The state of hypotheses ``idx`` (``[K']`` indices, repeats allowed)."""
        pick = [x.index_select(0, idx) for x in (*self.self_k, *self.self_v)]
        n = len(self.self_k)
        cross = [x.index_select(0, idx) for x in (*self.cross_k, *self.cross_v)]
        return DecoderState(pick[:n], pick[n:], cross[:n], cross[n:],
                            self.mem_ok.index_select(0, idx), self.t)


def split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """``[K, L, d] -> [K, h, L, d / h]``."""
    return x.reshape(x.shape[0], x.shape[1], h, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[K, h, L, dh] -> [K, L, h * dh]``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def cached_self_attention(sa: nn.MultiheadAttention, h: torch.Tensor, k_cache: torch.Tensor,
                          v_cache: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One new position through a causal self-attention with cached keys / values:
    ``(output [K, 1, d], keys, values [K, H, t + 1, dh])`` for its normalised input
    ``h [K, 1, d]`` and the caches ``[K, H, t, dh]`` of the earlier positions (eval mode)."""
    q, k, v = F.linear(h, sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
    k = torch.cat([k_cache, split_heads(k, sa.num_heads)], dim=2)
    v = torch.cat([v_cache, split_heads(v, sa.num_heads)], dim=2)
    a = F.scaled_dot_product_attention(split_heads(q, sa.num_heads), k, v)
    return sa.out_proj(merge_heads(a)), k, v


class AttentionDecoder(nn.Module):
    """A Transformer decoder (see the module docstring).

    Args:
      vocab_size: ``V`` (blank / ``<sos>`` / ``<eos>`` 0 + tokens).
      d_model: model width (= the encoder output size ``C``).
      nhead, num_layers, dim_feedforward, dropout: ``nn.TransformerDecoderLayer``'s.
    """

    def __init__(self, vocab_size: int, d_model: int = 256, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.vocab_size, self.d_model = int(vocab_size), int(d_model)
        self.embed = nn.Embedding(vocab_size, d_model)
        layer = nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, num_layers)
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, memory: torch.Tensor, memory_lens: torch.Tensor,
                ys_in: torch.Tensor) -> torch.Tensor:
        L = ys_in.shape[1]
        x = self.embed(ys_in.clamp(min=0)) * math.sqrt(self.d_model)
        x = self.dropout(x + _positions(L, self.d_model, x.device, x.dtype))
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=1)
        mem_pad = (torch.arange(memory.shape[1], device=memory.device)[None]
                   >= memory_lens.to(memory.device)[:, None])
        h = self.layers(x, memory, tgt_mask=causal, memory_key_padding_mask=mem_pad)
        return self.output(self.norm(h))

    @torch.no_grad()
    def sequence_log_probs(self, memory: torch.Tensor, length: int,
                           seqs: list[list[int]], batch_size: int = 64) -> torch.Tensor:
        """float64 ``[N]``: ``log P(y <eos>)`` of each token sequence given ONE utterance's
        encoder output ``memory [T, C]`` (or ``[1, T, C]``) of ``length`` frames, teacher
        forced, ``batch_size`` sequences per forward (eval mode: attention rescoring)."""
        mem = memory.reshape(-1, memory.shape[-1])[:length][None]
        out = torch.zeros(len(seqs), dtype=torch.float64)
        for a in range(0, len(seqs), max(int(batch_size), 1)):
            chunk = [list(map(int, q)) for q in seqs[a:a + batch_size]]
            ys_in, ys_out = decoder_io(chunk, mem.device)
            n = len(chunk)
            lp = self(mem.expand(n, -1, -1), torch.full((n,), length, device=mem.device),
                      ys_in).double().log_softmax(-1)
            got = lp.gather(2, ys_out.clamp(min=0)[..., None])[..., 0]
            out[a:a + n] = torch.where(ys_out >= 0, got, torch.zeros_like(got)).sum(1).cpu()
        return out

    # ------------------------------------------------------------------ incremental decoding
    def init_state(self, memory: torch.Tensor, memory_lens: torch.Tensor) -> DecoderState:
        """The state before the first token for ``memory [K, T, C]``: the cross-attention keys
        and values of every layer, projected once (eval mode: no dropout)."""
        K, T, d = memory.shape
        ck, cv, sk, sv = [], [], [], []
        for layer in self.layers.layers:
            mha = layer.multihead_attn
            w, b = mha.in_proj_weight[d:], mha.in_proj_bias[d:]
            k, v = F.linear(memory, w, b).chunk(2, dim=-1)
            ck.append(split_heads(k, mha.num_heads))
            cv.append(split_heads(v, mha.num_heads))
            empty = memory.new_zeros(K, mha.num_heads, 0, d // mha.num_heads)
            sk.append(empty)
            sv.append(empty)
        ok = (torch.arange(T, device=memory.device)[None]
              < memory_lens.to(memory.device)[:, None])[:, None, None, :]
        return DecoderState(sk, sv, ck, cv, ok, 0)

    def step(self, state: DecoderState, tokens: torch.Tensor
             ) -> tuple[torch.Tensor, DecoderState]:
        """``(logits [K, V] of the next token, the new state)`` after feeding ``tokens [K]``
        at position ``state.t`` (the first is ``<sos>``): the same function of the prefix as
        :meth:`forward`'s last position (eval mode), computed for the new position only."""
        d = self.d_model
        x = self.embed(tokens.clamp(min=0))[:, None] * math.sqrt(d)
        x = x + _positions(state.t + 1, d, x.device, x.dtype)[state.t]
        sk, sv = [], []
        for i, layer in enumerate(self.layers.layers):
            ca = layer.multihead_attn
            a, k, v = cached_self_attention(layer.self_attn, layer.norm1(x), state.self_k[i],
                                            state.self_v[i])
            sk.append(k)
            sv.append(v)
            x = x + a
            q = F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            a = F.scaled_dot_product_attention(split_heads(q, ca.num_heads), state.cross_k[i],
                                               state.cross_v[i], attn_mask=state.mem_ok)
            x = x + ca.out_proj(merge_heads(a))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        logits = self.output(self.norm(x))[:, 0]
        return logits, DecoderState(sk, sv, state.cross_k, state.cross_v, state.mem_ok,
                                    state.t + 1)


class BlstmAttention(Encoder):
    """Joint CTC / attention model (registered ``blstm_attention``): a
    :class:`~wfst_asr.models.Blstm` whose output layer projects to ``d_model`` (no softmax),
    an :class:`AttentionDecoder` and a CTC output ``Linear(d_model, V)``.

    Args:
      num_features, num_classes: input dimension; ``V`` (blank 0 + tokens).
      hidden, num_layers, dropout, subsampling, subsample_type, subsample_after: the encoder's.
      d_model, nhead, decoder_layers, dim_feedforward, decoder_dropout: the decoder's.
    """

    def __init__(self, num_features: int, num_classes: int, hidden: int = 256,
                 num_layers: int = 3, dropout: float = 0.2, subsampling: int = 1,
                 subsample_type: str = "concat", subsample_after: int | None = None,
                 d_model: int = 256, nhead: int = 4, decoder_layers: int = 2,
                 dim_feedforward: int = 1024, decoder_dropout: float = 0.1) -> None:
        super().__init__(num_features, num_classes)
        self.encoder = Blstm(num_features, d_model, hidden=hidden, num_layers=num_layers,
                             dropout=dropout, subsampling=subsampling,
                             subsample_type=subsample_type, subsample_after=subsample_after)
        self.subsampling_factor = self.encoder.subsampling_factor
        self.subsampling_mode = self.encoder.subsampling_mode
        self.decoder = AttentionDecoder(num_classes, d_model, nhead, decoder_layers,
                                        dim_feedforward, decoder_dropout)
        self.ctc_output = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.logits(x, lens)

    def ctc_log_probs(self, memory: torch.Tensor) -> torch.Tensor:
        return self.ctc_output(memory).log_softmax(-1)


register_model("blstm_attention", BlstmAttention)
