"""Transducer (RNN-T) models: a stateless prediction network, a joiner, the head, a BLSTM model.

The pieces, as in icefall's stateless transducers:

* :class:`StatelessDecoder`: the prediction network sees only the last ``context_size`` tokens
  (embedding, then a depthwise 1-D convolution over them, then ReLU); ``[B, U] -> [B, U, D]``.
* :class:`Joiner`: ``output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))`` on
  broadcastable inputs, e.g. ``enc [B, T, 1, C]`` and ``dec [B, 1, U+1, C']`` give the full
  ``[B, T, U+1, V]`` logits; ``project_input=False`` when the inputs are already projected
  (the pruned loss projects first, then gathers, see
  :func:`wfst_asr.losses.do_rnnt_pruning`).
* :class:`Transducer`: decoder + joiner + the simple joiner's projections to the vocabulary,
  on top of any encoder output ``[B, T, C]``; ``forward`` gives the decoder output and the
  simple projections of a batch; the criterion (:mod:`wfst_asr.train.criteria`) hands them
  and the joiner to :class:`wfst_asr.losses.TransducerLoss` (a model never calls a loss).
* :class:`BlstmTransducer` (registered model ``blstm_transducer``): a :class:`Blstm` encoder and
  a :class:`Transducer` head as submodules; ``forward(feats, lens) -> (encoder_out, out_lens)``
  (what the trainer calls), ``head(...)`` for the loss's inputs.
* the searches take the model (as icefall's ``beam_search.py`` does) and live in
  :mod:`wfst_asr.decode.transducer`: greedy, modified beam and graph-constrained fast beam
  search; a model never imports its decoder.

Token ``blank`` (default 0) is both the blank output and the start-of-sequence context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wfst_asr.models.encoders import Blstm, Encoder, register_model

__all__ = ["BlstmTransducer", "Joiner", "StatelessDecoder", "Transducer", "add_sos"]


class StatelessDecoder(nn.Module):
    """Stateless prediction network: the output at position ``u`` depends on tokens
    ``u - context_size + 1 .. u`` of its input only.

    Args:
      vocab_size: V (blank included).
      decoder_dim: embedding / output size D.
      blank: blank id; its embedding is fixed at zero (``padding_idx``), and it pads the
        context on the left.
      context_size: tokens seen (1: embedding only, no convolution).

    ``forward(y [B, U] int, need_pad=True) -> [B, U, D]``: with ``need_pad`` the sequence is
    left-padded with ``context_size - 1`` zero embeddings (training: ``y = add_sos(targets)``);
    without, ``U`` must be ``context_size`` and the output has one position (search).
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank: int = 0,
                 context_size: int = 2) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.vocab_size = vocab_size
        self.decoder_dim = decoder_dim
        self.blank = blank
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim, padding_idx=blank)
        self.conv = (nn.Conv1d(decoder_dim, decoder_dim, context_size, groups=decoder_dim,
                               bias=False) if context_size > 1 else None)

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        emb = self.embedding(y.clamp(min=0))
        if self.conv is not None:
            emb = emb.permute(0, 2, 1)
            if need_pad:
                emb = F.pad(emb, (self.context_size - 1, 0))
            elif emb.shape[-1] != self.context_size:
                raise ValueError(f"without padding the input must hold {self.context_size} "
                                 f"tokens, got {emb.shape[-1]}")
            emb = self.conv(emb).permute(0, 2, 1)
        return F.relu(emb)


class Joiner(nn.Module):
    """``output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))``.

    ``forward(enc [..., C_enc], dec [..., C_dec], project_input=True) -> [..., V]`` with
    broadcasting; ``project_input=False``: ``enc`` and ``dec`` are already projected to
    ``joiner_dim``.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int,
                 vocab_size: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor,
                project_input: bool = True) -> torch.Tensor:
        if project_input:
            enc, dec = self.encoder_proj(enc), self.decoder_proj(dec)
        return self.output_linear(torch.tanh(enc + dec))


def add_sos(targets, blank: int = 0, device=None) -> torch.Tensor:
    """``[B, U_max + 1]`` int64: ``[blank] + y`` per utterance, padded with blank (the
    decoder's input; its output at position ``u`` has seen ``u`` labels)."""
    if isinstance(targets, torch.Tensor) and targets.dim() == 2:
        seqs = [row.tolist() for row in targets]
    else:
        seqs = [list(s.tolist() if isinstance(s, torch.Tensor) else s) for s in targets]
    width = max((len(s) for s in seqs), default=0) + 1
    out = torch.full((len(seqs), width), blank, dtype=torch.int64)
    for i, s in enumerate(seqs):
        if s:
            out[i, 1:len(s) + 1] = torch.tensor(s, dtype=torch.int64)
    return out.to(device) if device is not None else out


class Transducer(nn.Module):
    """Prediction network, joiner and simple-joiner projections on top of an encoder output.

    Args:
      encoder_dim: C of the encoder output ``[B, T, C]`` (not log-softmax'ed).
      vocab_size: V (blank included); decoder_dim, joiner_dim, context_size, blank: as
        :class:`StatelessDecoder` / :class:`Joiner`.

    ``forward(encoder_out [B, T, C], targets, simple=True) -> (decoder_out [B, U+1, D],
    simple_am [B, T, V], simple_lm [B, U+1, V])``: the decoder output on ``add_sos(targets)``
    (one token list per utterance) and the simple joiner's projections
    ``simple_am_proj(encoder_out)``, ``simple_lm_proj(decoder_out)`` (None, None with
    ``simple=False``): the inputs of :class:`wfst_asr.losses.TransducerLoss` besides the
    joiner.
    """

    def __init__(self, encoder_dim: int, vocab_size: int, decoder_dim: int = 512,
                 joiner_dim: int = 512, context_size: int = 2, blank: int = 0) -> None:
        super().__init__()
        self.blank = blank
        self.decoder = StatelessDecoder(vocab_size, decoder_dim, blank, context_size)
        self.joiner = Joiner(encoder_dim, decoder_dim, joiner_dim, vocab_size)
        self.simple_am_proj = nn.Linear(encoder_dim, vocab_size)
        self.simple_lm_proj = nn.Linear(decoder_dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, targets, simple: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        dec = self.decoder(add_sos(targets, self.blank, encoder_out.device))
        if not simple:
            return dec, None, None
        return dec, self.simple_am_proj(encoder_out), self.simple_lm_proj(dec)


class BlstmTransducer(Encoder):
    """A transducer with a BLSTM encoder: :class:`~wfst_asr.models.Blstm` (its output layer
    projects to ``encoder_dim``, no log-softmax) + :class:`Transducer` head, both submodules
    (``encoder``, ``head``), so ``parameters()`` covers everything the loss trains.

    Args:
      num_features, num_classes: input dimension F; vocabulary size V (blank 0 included).
      hidden, num_layers, dropout, subsampling, subsample_type, subsample_after: the encoder's
        (:class:`~wfst_asr.models.Blstm`).
      encoder_dim: encoder output dimension C.
      decoder_dim, joiner_dim, context_size: the head's (:class:`Transducer`).
      aux_ctc: also a CTC output layer on the encoder output, ``ctc_output: Linear(C, V)``, for
        an auxiliary CTC loss (``loss.ctc_scale`` of the ``transducer`` loss; icefall's
        ``--use-ctc``); :meth:`ctc_log_probs` gives its log-probs.

    ``forward(x [B, T, F], lens [B]) -> (encoder_out [B, T', C], out_lens [B])``; the rest of the
    encoder interface (``subsampling_factor``, ``output_lengths``, ...) is the encoder's. For
    search, ``decoder`` and ``joiner`` are the head's.
    """

    def __init__(self, num_features: int, num_classes: int, hidden: int = 256,
                 num_layers: int = 3, dropout: float = 0.2, subsampling: int = 1,
                 subsample_type: str = "concat", subsample_after: int | None = None,
                 encoder_dim: int = 256, decoder_dim: int = 256, joiner_dim: int = 256,
                 context_size: int = 2, aux_ctc: bool = False) -> None:
        super().__init__(num_features, num_classes)
        self.encoder = Blstm(num_features, encoder_dim, hidden=hidden, num_layers=num_layers,
                             dropout=dropout, subsampling=subsampling,
                             subsample_type=subsample_type, subsample_after=subsample_after)
        self.subsampling_factor = self.encoder.subsampling_factor
        self.subsampling_mode = self.encoder.subsampling_mode
        self.encoder_dim = int(encoder_dim)
        self.head = Transducer(encoder_dim, num_classes, decoder_dim=decoder_dim,
                               joiner_dim=joiner_dim, context_size=context_size, blank=0)
        self.ctc_output = nn.Linear(encoder_dim, num_classes) if aux_ctc else None

    @property
    def decoder(self) -> StatelessDecoder:
        return self.head.decoder

    @property
    def joiner(self) -> Joiner:
        return self.head.joiner

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.logits(x, lens)

    def ctc_log_probs(self, encoder_out: torch.Tensor) -> torch.Tensor:
        """CTC log-probs ``[B, T', V]`` of the auxiliary output (``aux_ctc=True`` only)."""
        if self.ctc_output is None:
            raise ValueError("this model has no CTC output (build it with aux_ctc=True)")
        return self.ctc_output(encoder_out).log_softmax(-1)


register_model("blstm_transducer", BlstmTransducer)
