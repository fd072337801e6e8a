"""Searches of attention encoder-decoders (:class:`wfst_asr.models.attention.BlstmAttention`):
batched greedy decoding and beam search with length normalisation.

Both take the decoder (``decoder(memory, memory_lens, ys_in) -> logits [B, L, V]``), the
encoder output ``memory [B, T, C]`` and ``lens [B]``, and return token-id lists (``<sos>`` /
``<eos>`` = 0 removed). A hypothesis ends at ``<eos>`` or after ``max_len`` tokens (default:
the utterance's encoder frames).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["attention_beam_search", "attention_greedy"]

EOS = 0


@torch.no_grad()
def attention_greedy(decoder, memory: torch.Tensor, lens: torch.Tensor | Sequence[int],
                     max_len: int | None = None) -> list[list[int]]:
    """The most probable next token at every step, the whole batch at once."""
    lens = torch.as_tensor(lens, device=memory.device)
    B = memory.shape[0]
    limit = int(max_len if max_len is not None else max(int(lens.max()) if B else 0, 1))
    ys = torch.zeros(B, 1, dtype=torch.int64, device=memory.device)
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    for _ in range(limit):
        nxt = decoder(memory, lens, ys)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.zeros_like(nxt), nxt)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    out = []
    for row in ys[:, 1:].tolist():
        out.append(row[:row.index(EOS)] if EOS in row else row)
    return out


@torch.no_grad()
def attention_beam_search(decoder, memory: torch.Tensor, lens: torch.Tensor | Sequence[int],
                          beam: int = 4, length_norm: bool = True,
                          max_len: int | None = None) -> list[list[int]]:
    """Beam search per utterance (the beam's hypotheses decoded as one batch): at each step
    every live hypothesis is extended by its ``beam`` best tokens and the ``beam`` best
    extensions are kept; one ending in ``<eos>`` is finished. The search stops when ``beam``
    hypotheses are finished (or at ``max_len``); the result is the finished one with the best
    log-probability, divided by its length (tokens + ``<eos>``) when ``length_norm``."""
    lens = torch.as_tensor(lens, device=memory.device)
    out: list[list[int]] = []
    for b in range(memory.shape[0]):
        mem, n = memory[b:b + 1, :int(lens[b])], lens[b:b + 1]
        limit = int(max_len if max_len is not None else max(int(n), 1))
        live: list[tuple[list[int], float]] = [([], 0.0)]
        finished: list[tuple[list[int], float]] = []
        for _ in range(limit + 1):
            ys = torch.tensor([[EOS, *h] for h, _ in live], dtype=torch.int64,
                              device=memory.device)
            k = len(live)
            logp = decoder(mem.expand(k, -1, -1), n.expand(k), ys)[:, -1].log_softmax(-1)
            scores = torch.tensor([s for _, s in live], device=logp.device)[:, None] + logp
            top = scores.reshape(-1).topk(min(beam, scores.numel()))
            nxt: list[tuple[list[int], float]] = []
            V = logp.shape[1]
            for val, idx in zip(top.values.tolist(), top.indices.tolist()):
                h, tok = live[idx // V][0], idx % V
                if tok == EOS or len(h) + 1 >= limit:
                    finished.append((h if tok == EOS else [*h, tok], val))
                else:
                    nxt.append(([*h, tok], val))
            live = nxt
            if len(finished) >= beam or not live:
                break
        if not finished:
            finished = live

        def norm(item: tuple[list[int], float]) -> float:
            return item[1] / (len(item[0]) + 1) if length_norm else item[1]

        out.append(max(finished, key=norm)[0])
    return out
