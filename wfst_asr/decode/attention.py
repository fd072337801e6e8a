"""Searches of attention encoder-decoders (:class:`wfst_asr.models.attention.BlstmAttention`):
batched greedy decoding and beam search with length normalisation, optional joint CTC prefix
scoring, shallow fusion with a left-to-right LM and n-best output.

Both take the decoder (:class:`~wfst_asr.models.attention.AttentionDecoder`: its incremental
``init_state`` / ``step``, cached keys and values, one new position per step), the encoder
output ``memory [B, T, C]`` and ``lens [B]``, and return token-id lists (``<sos>`` /
``<eos>`` = 0 removed). A hypothesis ends at ``<eos>`` or after ``max_len`` tokens (default:
``max_len_ratio`` (1.0) times the utterance's encoder frames, at least 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["BeamHyp", "attention_beam_search", "attention_greedy", "attention_nbest"]

EOS = 0


def _limit(frames: int, ratio: float) -> int:
    return max(1, math.ceil(ratio * frames))


@torch.no_grad()
def attention_greedy(decoder, memory: torch.Tensor, lens: torch.Tensor | Sequence[int],
                     max_len: int | None = None, max_len_ratio: float = 1.0
                     ) -> list[list[int]]:
    """The most probable next token at every step, the whole batch at once."""
    lens = torch.as_tensor(lens, device=memory.device)
    B = memory.shape[0]
    limit = int(max_len if max_len is not None else
                _limit(int(lens.max()) if B else 0, max_len_ratio))
    ys = torch.zeros(B, 1, dtype=torch.int64, device=memory.device)
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    state = decoder.init_state(memory, lens)
    for _ in range(limit):
        logits, state = decoder.step(state, ys[:, -1])
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.zeros_like(nxt), nxt)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    out = []
    for row in ys[:, 1:].tolist():
        out.append(row[:row.index(EOS)] if EOS in row else row)
    return out


@dataclass
class BeamHyp:
    """A finished hypothesis: ``tokens``, its search ``score`` (the weighted sum below, not
    length-normalised) and the parts: ``att`` (decoder ``log P(tokens <eos>)``), ``ctc``
    (``log p_ctc(tokens | x)``, 0 without CTC scoring) and ``lm`` (``log P_lm(tokens <eos>)``,
    0 without an LM)."""

    tokens: list[int]
    score: float
    att: float
    ctc: float = 0.0
    lm: float = 0.0

    def normalised(self, length_norm: bool) -> float:
        return self.score / (len(self.tokens) + 1) if length_norm else self.score


@torch.no_grad()
def attention_nbest(decoder, memory: torch.Tensor, lens: torch.Tensor | Sequence[int],
                    beam: int = 4, length_norm: bool = True, max_len: int | None = None,
                    max_len_ratio: float = 1.0,
                    ctc_log_probs: torch.Tensor | None = None, ctc_weight: float = 0.0,
                    lm=None, lm_weight: float = 0.0, length_bonus: float = 0.0,
                    nbest: int | None = None) -> list[list[BeamHyp]]:
    """Beam search per utterance (the beam's hypotheses decoded as one batch), returning the
    finished hypotheses best first (at most ``nbest``, default ``beam``).

    An extension of hypothesis ``h`` by ``c`` adds ``(1 - ctc_weight) * log p_att(c | h) +
    ctc_weight * (psi(h c) - psi(h)) + lm_weight * log p_lm(c | h) + length_bonus`` (no bonus
    for ``<eos>``); ``psi`` is the CTC prefix score of ``ctc_log_probs [B, T, V]``
    (:class:`~wfst_asr.decode.ctc_prefix.CtcPrefixScorer`, scored for the ``1.5 * beam``
    best tokens of the other terms; ``<eos>`` gets the full CTC probability) and ``lm`` a
    left-to-right LM over the same ids (:class:`~wfst_asr.models.textlm.TransformerLm`, its
    incremental ``init_state`` / ``step``). Every step extends each live hypothesis and keeps the ``beam``
    best extensions; one ending in ``<eos>`` (or reaching ``max_len``, default the encoder
    frames) is finished (its CTC term is then the full ``log p_ctc``, as for ``<eos>``, so a
    score is always the weighted sum of :class:`BeamHyp`'s parts); the search stops when
    ``beam`` are finished. Ranking: the score,
    divided by the length (tokens + ``<eos>``) when ``length_norm``."""
    from wfst_asr.decode.ctc_prefix import CtcPrefixScorer

    use_ctc = ctc_weight > 0
    if use_ctc and ctc_log_probs is None:
        raise ValueError("ctc_weight > 0 needs the CTC log-probs")
    use_lm = lm is not None and lm_weight != 0
    lens = torch.as_tensor(lens, device=memory.device)
    out: list[list[BeamHyp]] = []
    for b in range(memory.shape[0]):
        mem, n = memory[b:b + 1, :int(lens[b])], lens[b:b + 1]
        limit = int(max_len if max_len is not None else _limit(int(n), max_len_ratio))
        scorer = CtcPrefixScorer(ctc_log_probs[b].double(), int(lens[b])) if use_ctc else None
        # (tokens, score, att, lm, ctc state); the decoder's state rows follow ``live``
        live: list[tuple] = [([], 0.0, 0.0, 0.0, scorer.initial_state() if use_ctc else None)]
        finished: list[BeamHyp] = []
        state = decoder.init_state(mem, n)
        lm_state = lm.init_state(1, memory.device) if use_lm else None
        for _ in range(limit + 1):
            last = torch.tensor([h[0][-1] if h[0] else EOS for h in live], dtype=torch.int64,
                                device=memory.device)
            logits, state = decoder.step(state, last)
            att = logits.log_softmax(-1).double().cpu()
            V = att.shape[1]
            if use_lm:
                lmp, lm_state = lm.step(lm_state, last)
                lmp = lmp.double().cpu()
            else:
                lmp = torch.zeros_like(att)
            base = torch.tensor([h[1] for h in live], dtype=torch.float64)[:, None]
            step = (1.0 - ctc_weight) * att + lm_weight * lmp
            bonus = torch.full((V,), float(length_bonus), dtype=torch.float64)
            bonus[EOS] = 0.0
            if use_ctc:
                pre = min(V, max(int(1.5 * beam), beam + 1))
                cand = (step + bonus).topk(pre, dim=1).indices
                cs = scorer.score_batch([h[4] for h in live], cand)
                psi0 = torch.tensor([h[4].psi for h in live], dtype=torch.float64)[:, None]
                total = torch.full_like(att, float("-inf"))
                total.scatter_(1, cand, (base + step + bonus).gather(1, cand)
                               + ctc_weight * (cs.psi.double().cpu() - psi0))
            else:
                total = base + step + bonus
            top = total.reshape(-1).topk(min(beam, int(torch.isfinite(total).sum())))
            nxt: list[tuple] = []
            rows: list[int] = []
            for val, idx in zip(top.values.tolist(), top.indices.tolist()):
                i, tok = idx // V, idx % V
                h = live[i]
                a, lmv = h[2] + float(att[i, tok]), h[3] + float(lmp[i, tok])
                if tok == EOS or len(h[0]) + 1 >= limit:
                    toks = h[0] if tok == EOS else [*h[0], tok]
                    ctc = 0.0
                    if use_ctc and tok == EOS:
                        ctc = float(cs.psi[i, (cand[i] == EOS).nonzero()[0, 0]])
                    elif use_ctc:  # cut at max_len: the full CTC probability, not the prefix's
                        st = cs.state(i, tok)
                        ctc = st.log_prob
                        val += ctc_weight * (ctc - st.psi)
                    finished.append(BeamHyp(toks, val, a, ctc, lmv))
                else:
                    st = cs.state(i, tok) if use_ctc else None
                    nxt.append(([*h[0], tok], val, a, lmv, st))
                    rows.append(i)
            live = nxt
            if live:
                keep = torch.tensor(rows, device=memory.device)
                state = state.select(keep)
                lm_state = lm_state.select(keep) if use_lm else None
            if len(finished) >= beam or not live:
                break
        if not finished:
            finished = [BeamHyp(h[0], h[1] + (ctc_weight * (h[4].log_prob - h[4].psi)
                                              if use_ctc else 0.0),
                                h[2], h[4].log_prob if use_ctc else 0.0, h[3]) for h in live]
        finished.sort(key=lambda h: h.normalised(length_norm), reverse=True)
        out.append(finished[:nbest or beam])
    return out


def attention_beam_search(decoder, memory: torch.Tensor, lens: torch.Tensor | Sequence[int],
                          beam: int = 4, length_norm: bool = True,
                          max_len: int | None = None, **kwargs) -> list[list[int]]:
    """The best hypothesis of :func:`attention_nbest` (same arguments) per utterance."""
    return [hyps[0].tokens if hyps else []
            for hyps in attention_nbest(decoder, memory, lens, beam, length_norm, max_len,
                                        **kwargs)]
