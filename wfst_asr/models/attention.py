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

import torch
from torch import nn

from wfst_asr.models.encoders import Blstm, Encoder, register_model

__all__ = ["SOS_EOS", "AttentionDecoder", "BlstmAttention", "decoder_io"]

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
