"""N-best pronunciations: the word's letters composed with the G2P WFST, batched over words.

The composition of a word's letter string ``x`` (length ``L``) with the WFST
(:func:`~wfst_asr.g2p.model.compile_g2p_fst`) is an acyclic lattice whose states are pairs
``(i, s)``: ``i`` letters read, WFST context state ``s``. From ``(i, s)`` every joint token
whose letter chain spells ``x[i:i+a]`` is taken with failure semantics: by the chain leaving
``s`` when there is one, else through the back-off arc ``#0`` (adding its score) from the
back-off state, and so on (the empty context has a chain for every token). The result is the
exact n-gram log-probability ``ln P(token | history)`` and the next context, as the ARPA
back-off rule gives; at ``i == L`` the final arc (``</s>``) is taken the same way. (OpenFst's
epsilon back-off, as Phonetisaurus uses by default, would instead also keep the back-off path
of a token the state has, and let it win when it scores higher.)

The n best *distinct* phone sequences, each scored by its best path (Viterbi, as
Phonetisaurus' ``--nbest``), are found by a dynamic programme over the lattice in letter order
that keeps, at each state ``(i, s)``, the ``n`` best distinct phone prefixes (a prefix reached
by several paths keeps its best score). That is exact: the phone sequence of a path through
``(i, s)`` is its prefix there plus a suffix that depends only on the path's rest, so if ``n``
better distinct prefixes reach ``(i, s)``, they give ``n`` better distinct complete sequences
with the same rest. Pruning, on top (``beam``, ``max_active``), is per word and position: only
hypotheses within ``beam`` (natural log) of the position's best, and at most ``max_active`` of
them, are expanded. ``beam=inf, max_active=None`` is the exact search.

Everything is numpy over all hypotheses of a batch of words at once (arrays ``[H]`` of word,
state, prefix id, score); the token look-up is a binary search in the sorted ``(state,
token)`` keys of the WFST's chains; phone prefixes are ids of a trie (a dict over
``(parent id, phone)``), so equal phone sequences have equal ids whatever their path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from wfst_asr.fsa import Fsa

__all__ = ["G2PDecoder", "Pronunciation"]

#: ``(phones, score)``: a pronunciation and its natural-log score (the n-gram log-probability
#: of its best joint-token path, ``</s>`` included).
Pronunciation = tuple[list[str], float]


class G2PDecoder:
    """The look-up tables of a G2P WFST and the batched n-best search over it.

    Args:
      fst: the WFST of :func:`~wfst_asr.g2p.model.compile_g2p_fst` (``labels_sym`` /
        ``aux_labels_sym`` = letters / phones, per-arc ``joint``, plain
        ``num_context_states``).
    """

    def __init__(self, fst: Fsa) -> None:
        letters, phones = fst.labels_sym, fst.aux_labels_sym
        self.letter_id = {s: i for s, i in letters.items() if i > 0 and s != "#0"}
        self.phone_sym = {i: s for s, i in phones.items()}
        backoff_label = int(letters["#0"])
        src, dst, lab = (fst.arcs[:, k].long().numpy() for k in range(3))
        aux = fst.aux_labels.long().numpy()
        joint = fst.joint.long().numpy()
        score = fst.scores.detach().double().numpy()
        num_states = fst.num_states
        ctx = int(fst.num_context_states)
        first_arc = np.searchsorted(src, np.arange(num_states))  # arcs sorted by source
        # follow every chain from its first arc to its end (a context state)
        starts = np.flatnonzero(joint > 0)
        end = dst[starts].copy()
        lets, phs = [lab[starts]], [aux[starts]]
        while True:
            inner = (end >= ctx) & (end < num_states - 1)
            if not inner.any():
                break
            a = first_arc[np.where(inner, end, 0)]
            lets.append(np.where(inner, lab[a], 0))
            phs.append(np.where(inner, aux[a], 0))
            end = np.where(inner, dst[a], end)
        lets_m, phs_m = np.stack(lets, 1), np.stack(phs, 1)
        tok = joint[starts]
        self.num_tokens = int(tok.max()) + 1 if len(tok) else 1
        self.eos = self.num_tokens  # the pseudo token of final arcs
        radix = self.num_tokens + 1
        # token spellings: letters (for matching) and phones (for the output)
        uniq, first = np.unique(tok, return_index=True)
        self.token_phones = np.zeros((self.num_tokens, phs_m.shape[1]), np.int64)
        self.token_phones[uniq] = phs_m[first]
        self.token_len = np.zeros(self.num_tokens, np.int64)
        self.token_len[uniq] = (lets_m[first] > 0).sum(1)
        by_chunk: dict[tuple[int, ...], list[int]] = {}
        for t, row in zip(uniq.tolist(), lets_m[first].tolist()):
            by_chunk.setdefault(tuple(c for c in row if c > 0), []).append(t)
        self.chunk_tokens = {k: np.array(v, np.int64) for k, v in by_chunk.items()}
        self.max_letters = max((len(k) for k in by_chunk), default=1)
        # (state, token) -> score, next state; final arcs as the token eos
        fin = np.flatnonzero(lab == -1)
        keys = np.concatenate([src[starts] * radix + tok, src[fin] * radix + self.eos])
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        if len(self.keys) > 1 and bool((self.keys[1:] == self.keys[:-1]).any()):
            raise ValueError("the G2P WFST has two chains for one token at one state")
        self.values = np.concatenate([score[starts], score[fin]])[order]
        self.next_state = np.concatenate([end, np.full(len(fin), -1)])[order]
        self.radix = radix
        bo = np.flatnonzero(lab == backoff_label)
        self.backoff_state = np.full(num_states, -1, np.int64)
        self.backoff_score = np.zeros(num_states)
        self.backoff_state[src[bo]] = dst[bo]
        self.backoff_score[src[bo]] = score[bo]
        self.start = 0

    # ------------------------------------------------------------------ look-ups
    def resolve(self, states: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(score, next state)`` of token ``tokens[h]`` (``self.eos``: the final arc, next
        state -1) from state ``states[h]``, backing off through ``#0`` as long as the state has
        no chain for it (failure semantics). float64 / int64 ``[H]``."""
        score = np.zeros(len(states))
        nxt = np.full(len(states), -1, np.int64)
        todo = np.arange(len(states))
        cur = states.astype(np.int64).copy()
        while len(todo):
            key = cur[todo] * self.radix + tokens[todo]
            pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
            found = self.keys[pos] == key
            hit = todo[found]
            score[hit] += self.values[pos[found]]
            nxt[hit] = self.next_state[pos[found]]
            todo = todo[~found]
            if not len(todo):
                break
            back = self.backoff_state[cur[todo]]
            if bool((back < 0).any()):
                bad = int(tokens[todo[back < 0][0]])
                raise ValueError(f"token {bad} has no arc in the G2P WFST, even backed off")
            score[todo] += self.backoff_score[cur[todo]]
            cur[todo] = back
        return score, nxt

    def encode(self, word: str) -> list[int]:
        """The letter ids of ``word``; ValueError naming the characters the model lacks."""
        ids = [self.letter_id.get(c, -1) for c in word]
        if not word or -1 in ids:
            bad = sorted({c for c, i in zip(word, ids) if i < 0})
            raise ValueError(f"word {word!r}: " + (f"letter(s) {bad} not in the G2P model"
                                                   if word else "empty"))
        return ids

    # ------------------------------------------------------------------ search
    def decode(self, words: Sequence[str], nbest: int = 1, beam: float = 8.0,
               max_active: int | None = 50, batch_size: int = 500,
               accumulate: bool = False) -> list[list[Pronunciation]]:
        """The ``nbest`` best distinct pronunciations of each word, best first.

        Args:
          words: spelled with the model's letters (ValueError otherwise; normalise first,
            :meth:`~wfst_asr.g2p.model.G2PModel.normalize`).
          nbest: pronunciations per word (>= 1).
          beam: per word and letter position, expand only hypotheses within this much
            (natural log) of the best one; ``math.inf``: no beam.
          max_active: and at most this many of them (None: no limit).
          batch_size: words searched together.
          accumulate: score a pronunciation by the sum (log-add) of the probabilities of
            the paths that reach it instead of the best one (Phonetisaurus' ``--accumulate``);
            approximate: only the paths the per-state n-best lists keep are summed.

        Returns:
          per word, up to ``nbest`` ``(phones, score)``.
        """
        if nbest < 1:
            raise ValueError(f"nbest must be >= 1, got {nbest}")
        if max_active is not None and max_active < nbest:
            raise ValueError(f"max_active ({max_active}) must be >= nbest ({nbest})")
        encoded = [self.encode(w) for w in words]
        out: list[list[Pronunciation]] = []
        for b in range(0, len(words), batch_size):
            out += _Search(self, encoded[b:b + batch_size], nbest, beam, max_active,
                           accumulate).run()
        return out


class _Trie:
    """Phone prefixes as ids (0: the empty prefix): ``(parent, phone) -> id``, kept as the
    sorted keys ``parent * radix + phone`` and their ids (numpy, no per-key Python)."""

    def __init__(self, num_phones: int) -> None:
        self.radix = num_phones + 1
        self.keys = np.zeros(0, np.int64)  # sorted
        self.ids = np.zeros(0, np.int64)
        self.node_keys: list[np.ndarray] = [np.zeros(1, np.int64)]  # id -> key
        self.size = 1

    def extend(self, pref: np.ndarray, phone: np.ndarray) -> np.ndarray:
        """The id of each prefix ``pref[h]`` followed by ``phone[h]`` (unchanged where 0)."""
        out = pref.copy()
        m = phone > 0
        if not m.any():
            return out
        keys, inv = np.unique(pref[m] * self.radix + phone[m], return_inverse=True)
        pos = np.searchsorted(self.keys, keys)
        found = np.zeros(len(keys), bool)
        inside = pos < len(self.keys)
        found[inside] = self.keys[pos[inside]] == keys[inside]
        got = np.empty(len(keys), np.int64)
        got[found] = self.ids[pos[found]]
        new = np.flatnonzero(~found)
        got[new] = self.size + np.arange(len(new))
        self.size += len(new)
        self.node_keys.append(keys[new])
        self.keys = np.insert(self.keys, pos[new], keys[new])
        self.ids = np.insert(self.ids, pos[new], got[new])
        out[m] = got[inv.reshape(-1)]
        return out

    def phones(self, nodes: list[int]) -> list[list[int]]:
        """The phone ids of each prefix id."""
        table = np.concatenate(self.node_keys)
        out = []
        for node in nodes:
            seq = []
            while node:
                node, phone = divmod(int(table[node]), self.radix)
                seq.append(phone)
            out.append(seq[::-1])
        return out


def _group_rank(keys: np.ndarray) -> np.ndarray:
    """The rank of each element within its run of equal (sorted) ``keys``."""
    if not len(keys):
        return keys
    new = np.concatenate([[True], keys[1:] != keys[:-1]])
    starts = np.flatnonzero(new)
    return np.arange(len(keys)) - np.repeat(starts, np.diff(np.append(starts, len(keys))))


class _Search:
    """One batch of words: hypotheses ``(word, state, prefix, score)`` per letter position."""

    def __init__(self, dec: G2PDecoder, words: list[list[int]], nbest: int, beam: float,
                 max_active: int | None, accumulate: bool = False) -> None:
        self.accumulate = accumulate
        self.dec, self.words, self.n = dec, words, nbest
        self.beam, self.max_active = beam, max_active
        self.trie = _Trie(max(dec.phone_sym) if dec.phone_sym else 0)
        self.lens = np.array([len(w) for w in words], np.int64)
        self.num_states = int(dec.backoff_state.shape[0])

    def _candidates(self, w: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
        """For each hypothesis (word ``w[h]``, at letter ``p``): the tokens that spell the
        next letters, as ``(hyp index, token)`` pairs."""
        uw, inv = np.unique(w, return_inverse=True)
        per_word = []
        for wi in uw.tolist():
            word = self.words[wi]
            toks = [self.dec.chunk_tokens.get(tuple(word[p:p + a]))
                    for a in range(1, self.dec.max_letters + 1) if p + a <= len(word)]
            toks = [t for t in toks if t is not None]
            per_word.append(np.concatenate(toks) if toks else np.zeros(0, np.int64))
        count = np.array([len(t) for t in per_word], np.int64)
        ptr = np.concatenate([[0], np.cumsum(count)])
        flat = np.concatenate(per_word) if per_word else np.zeros(0, np.int64)
        cnt = count[inv.reshape(-1)]
        h = np.repeat(np.arange(len(w)), cnt)
        offset = np.arange(len(h)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        return h, flat[ptr[inv.reshape(-1)][h] + offset]

    def _merge(self, score: np.ndarray, first: np.ndarray) -> np.ndarray:
        """One score per run of equal hypotheses (``first`` marks each run's start, runs
        sorted best first): the best, or the log-sum with ``accumulate``."""
        if not self.accumulate or not len(score):
            return score[first]
        return np.logaddexp.reduceat(score, np.flatnonzero(first))

    def _prune(self, w, s, pref, score, keep_per_state: int, beam: float,
               max_active: int | None):
        """Merge equal (word, state, prefix), keep the best ``keep_per_state`` distinct
        prefixes per (word, state), then the beam and ``max_active`` per word."""
        ws = w * self.num_states + s
        order = np.lexsort((-score, pref, ws))
        w, s, pref, score, ws = w[order], s[order], pref[order], score[order], ws[order]
        first = np.concatenate([[True], (ws[1:] != ws[:-1]) | (pref[1:] != pref[:-1])])
        score = self._merge(score, first)
        w, s, pref, ws = w[first], s[first], pref[first], ws[first]
        order = np.lexsort((-score, ws))
        keep = order[_group_rank(ws[order]) < keep_per_state]
        w, s, pref, score = w[keep], s[keep], pref[keep], score[keep]
        if math.isfinite(beam) or max_active is not None:
            order = np.lexsort((-score, w))
            w, s, pref, score = w[order], s[order], pref[order], score[order]
            rank = _group_rank(w)
            best = score[rank == 0][np.cumsum(rank == 0) - 1]
            keep = score >= best - beam
            if max_active is not None:
                keep &= rank < max_active
            w, s, pref, score = w[keep], s[keep], pref[keep], score[keep]
        return w, s, pref, score

    def run(self) -> list[list[Pronunciation]]:
        """The n-best lists of the batch's words (in order)."""
        dec, n = self.dec, self.n
        max_len = int(self.lens.max()) if len(self.lens) else 0
        # per letter position: hypotheses (word, state, prefix before the token, token or -1,
        # score); the token's phones are added to the prefix after the beam
        pending: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(max_len + 1)]
        nw = len(self.words)
        pending[0].append((np.arange(nw, dtype=np.int64), np.full(nw, dec.start, np.int64),
                           np.zeros(nw, np.int64), np.full(nw, -1, np.int64), np.zeros(nw)))
        finals: list[tuple[np.ndarray, ...]] = []
        for p in range(max_len + 1):
            if not pending[p]:
                continue
            w, s, pref, tok, score = (np.concatenate(x) for x in zip(*pending[p]))
            pending[p] = []
            if math.isfinite(self.beam):
                best = np.full(nw, -np.inf)
                np.maximum.at(best, w, score)
                keep = score >= best[w] - self.beam
                w, s, pref, tok, score = w[keep], s[keep], pref[keep], tok[keep], score[keep]
            has = tok >= 0
            for k in range(dec.token_phones.shape[1]):
                pref = self.trie.extend(pref, np.where(has, dec.token_phones[tok, k], 0))
            w, s, pref, score = self._prune(w, s, pref, score, n, self.beam, self.max_active)
            done = self.lens[w] == p
            if done.any():
                fs, _ = dec.resolve(s[done], np.full(int(done.sum()), dec.eos, np.int64))
                finals.append((w[done], pref[done], score[done] + fs))
            w, s, pref, score = w[~done], s[~done], pref[~done], score[~done]
            if not len(w):
                continue
            h, tok = self._candidates(w, p)
            sc, nxt = dec.resolve(s[h], tok)
            new_pos = p + dec.token_len[tok]
            new_w, new_pref, new_score = w[h], pref[h], score[h] + sc
            for q in np.unique(new_pos).tolist():
                m = new_pos == q
                pending[q].append((new_w[m], nxt[m], new_pref[m], tok[m], new_score[m]))
        out: list[list[Pronunciation]] = [[] for _ in range(nw)]
        if not finals:
            return out
        w, pref, score = (np.concatenate(x) for x in zip(*finals))
        # best score per (word, phone sequence), then the n best per word
        order = np.lexsort((-score, pref, w))
        w, pref, score = w[order], pref[order], score[order]
        first = np.concatenate([[True], (w[1:] != w[:-1]) | (pref[1:] != pref[:-1])])
        score = self._merge(score, first)
        w, pref = w[first], pref[first]
        order = np.lexsort((-score, w))
        w, pref, score = w[order], pref[order], score[order]
        keep = _group_rank(w) < n
        seqs = self.trie.phones(pref[keep].tolist())
        for wi, seq, sc in zip(w[keep].tolist(), seqs, score[keep].tolist()):
            out[wi].append(([dec.phone_sym[x] for x in seq], sc))
        return out
