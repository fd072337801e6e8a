"""Transducer (RNN-T) heads: a stateless prediction network, a joiner, and decoding.

The pieces, as in icefall's stateless transducers:

* :class:`StatelessDecoder`: the prediction network sees only the last ``context_size`` tokens
  (embedding, then a depthwise 1-D convolution over them, then ReLU); ``[B, U] -> [B, U, D]``.
* :class:`Joiner`: ``output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))`` on
  broadcastable inputs, e.g. ``enc [B, T, 1, C]`` and ``dec [B, 1, U+1, C']`` give the full
  ``[B, T, U+1, V]`` logits; ``project_input=False`` when the inputs are already projected
  (the pruned loss projects first, then gathers, see
  :func:`wfst_asr.losses.do_rnnt_pruning`).
* :class:`Transducer`: decoder + joiner + the simple joiner's projections to the vocabulary,
  on top of any encoder output ``[B, T, C]``; ``forward(..., loss=TransducerLoss(...))``.
* :func:`greedy_search` (batched) and :func:`beam_search` (modified beam search, one utterance
  at a time) over encoder outputs.

Token ``blank`` (default 0) is both the blank output and the start-of-sequence context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Joiner", "StatelessDecoder", "Transducer", "add_sos", "beam_search",
           "greedy_search"]


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

    ``forward(encoder_out, encoder_lens, targets, loss, target_lens=None) -> (loss, info)``
    runs ``loss`` (a :class:`wfst_asr.losses.TransducerLoss`) with the decoder output on
    ``add_sos(targets)`` and, for the pruned loss, ``simple_am = simple_am_proj(encoder_out)``,
    ``simple_lm = simple_lm_proj(decoder_out)``. With padded ``targets [B, U]`` give
    ``target_lens``.
    """

    def __init__(self, encoder_dim: int, vocab_size: int, decoder_dim: int = 512,
                 joiner_dim: int = 512, context_size: int = 2, blank: int = 0) -> None:
        super().__init__()
        self.blank = blank
        self.decoder = StatelessDecoder(vocab_size, decoder_dim, blank, context_size)
        self.joiner = Joiner(encoder_dim, decoder_dim, joiner_dim, vocab_size)
        self.simple_am_proj = nn.Linear(encoder_dim, vocab_size)
        self.simple_lm_proj = nn.Linear(decoder_dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, encoder_lens, targets, loss: nn.Module,
                target_lens=None) -> tuple[torch.Tensor, dict]:
        if isinstance(targets, torch.Tensor) and targets.dim() == 2:
            if target_lens is None:
                raise ValueError("padded targets [B, U] need target_lens")
            lens = torch.as_tensor(target_lens).tolist()
            seqs = [row[:n].tolist() for row, n in zip(targets, lens)]
        else:
            seqs = [list(s.tolist() if isinstance(s, torch.Tensor) else s) for s in targets]
        dec = self.decoder(add_sos(seqs, self.blank, encoder_out.device))
        simple_am = simple_lm = None
        if getattr(loss, "pruned", False):
            simple_am, simple_lm = self.simple_am_proj(encoder_out), self.simple_lm_proj(dec)
        return loss(encoder_out, encoder_lens, dec, seqs, self.joiner, simple_am, simple_lm)


def _decoder_out(decoder: StatelessDecoder, joiner: Joiner, context: torch.Tensor
                 ) -> torch.Tensor:
    """Projected decoder output ``[N, J]`` for contexts ``[N, context_size]``."""
    return joiner.decoder_proj(decoder(context, need_pad=False)[:, -1])


@torch.no_grad()
def greedy_search(decoder: StatelessDecoder, joiner: Joiner, encoder_out: torch.Tensor,
                  encoder_lens=None, max_sym_per_frame: int = 1) -> list[list[int]]:
    """Greedy transducer decoding, batched: at each frame take the best output; a label
    extends the hypothesis (and the decoder context) and, up to ``max_sym_per_frame`` labels,
    the same frame is scored again; blank moves on to the next frame.

    ``encoder_out [B, T, C]`` (before the joiner's projection), ``encoder_lens [B]`` (default:
    all T). Returns the token ids of each utterance.
    """
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    B, T, _ = encoder_out.shape
    dev = encoder_out.device
    lens = (torch.full((B,), T, dtype=torch.int64) if encoder_lens is None
            else torch.as_tensor(encoder_lens).to("cpu", torch.int64))
    blank = decoder.blank
    enc = joiner.encoder_proj(encoder_out)
    context = torch.full((B, decoder.context_size), blank, dtype=torch.int64, device=dev)
    dec = _decoder_out(decoder, joiner, context)
    hyps: list[list[int]] = [[] for _ in range(B)]
    for t in range(T):
        active = (lens > t).to(dev)
        for _ in range(max_sym_per_frame):
            if not bool(active.any()):
                break
            tok = joiner(enc[:, t], dec, project_input=False).argmax(-1)
            emit = active & (tok != blank)
            if not bool(emit.any()):
                break
            for b, v in zip(emit.nonzero().squeeze(1).tolist(), tok[emit].tolist()):
                hyps[b].append(v)
            shifted = torch.cat([context[:, 1:], tok.unsqueeze(1)], 1)
            context = torch.where(emit.unsqueeze(1), shifted, context)
            dec = torch.where(emit.unsqueeze(1), _decoder_out(decoder, joiner, context), dec)
            active = emit
    return hyps


@torch.no_grad()
def beam_search(decoder: StatelessDecoder, joiner: Joiner, encoder_out: torch.Tensor,
                encoder_lens=None, beam: int = 4) -> list[list[int]]:
    """Modified beam search (at most one label per frame), one utterance at a time.

    Hypotheses are distinct label sequences with the log-probability summed over their
    alignments so far. At each frame every hypothesis is extended by each output
    (blank: same sequence; a label: one longer), the ``beam`` best extensions are kept, and
    extensions that reach the same sequence are merged (log-add). With ``beam=1`` this is
    :func:`greedy_search` with ``max_sym_per_frame=1``; with a beam as large as the number of
    extensions nothing is pruned and the result is the most probable label sequence under the
    one-label-per-frame model. Returns the best sequence of each utterance.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    B, T, _ = encoder_out.shape
    lens = (torch.full((B,), T, dtype=torch.int64) if encoder_lens is None
            else torch.as_tensor(encoder_lens).to("cpu", torch.int64))
    enc_all = joiner.encoder_proj(encoder_out)
    blank, C = decoder.blank, decoder.context_size
    out = []
    for b in range(B):
        hyps: dict[tuple[int, ...], float] = {(): 0.0}
        for t in range(int(lens[b])):
            seqs = list(hyps)
            ctx = torch.tensor([([blank] * C + list(s))[-C:] for s in seqs],
                               dtype=torch.int64, device=encoder_out.device)
            dec = _decoder_out(decoder, joiner, ctx)
            lp = joiner(enc_all[b, t].unsqueeze(0), dec, project_input=False).log_softmax(-1)
            lp = lp.double() + torch.tensor([hyps[s] for s in seqs], dtype=torch.float64,
                                            device=lp.device).unsqueeze(1)
            V = lp.shape[1]
            top = torch.topk(lp.reshape(-1), min(beam, lp.numel()))
            new: dict[tuple[int, ...], float] = {}
            for score, idx in zip(top.values.tolist(), top.indices.tolist()):
                s, v = seqs[idx // V], idx % V
                key = s if v == blank else s + (v,)
                new[key] = score if key not in new else float(
                    torch.logaddexp(torch.tensor(new[key]), torch.tensor(score)))
            hyps = new
        out.append(list(max(hyps.items(), key=lambda kv: kv[1])[0]))
    return out
