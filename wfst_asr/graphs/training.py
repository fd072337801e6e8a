"""Per-utterance training graphs (CTC, HMM, LF-MMI) built as batched FsaVecs.

Every graph here is meant for :func:`wfst_asr.fsa.intersect_dense`: ``labels`` are network
output ids (every arc with a label >= 0 consumes one frame; for CTC label 0 is blank), scores
are log-weights (log semiring for training), ``aux_labels`` are tokens (0 = nothing emitted,
-1 on arcs entering the final state) unless documented otherwise.

Main pieces:

* :func:`compose_linear` -- ``H o T_i`` for a topology transducer ``H`` (labels = output ids,
  ``aux_labels`` = tokens, 0 = epsilon output) and a batch of linear token acceptors ``T_i``
  (optionally weighted), in one vectorised step (no per-utterance OpenFst call);
* :func:`ctc_graph_from_acceptors` -- ``ctc_topo o G_i`` for a batch of epsilon-free token
  acceptors ``G_i`` (e.g. the union of the pronunciations of a word sequence), vectorised;
* :func:`ctc_graph` -- CTC training graphs of token sequences (k2's ``ctc_graph``);
* :class:`CtcTrainingGraphCompiler`, :class:`HmmTrainingGraphCompiler`,
  :class:`MmiTrainingGraphCompiler`.

Static graphs (the LF-MMI denominator ``H o P``) go through OpenFst
(:mod:`wfst_asr.fsa.ops`, tropical semiring, exact float32 costs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from wfst_asr.fsa import Fsa, create_fsa_vec, linear_fsa, ops
from wfst_asr.graphs.topo import ctc_topo

__all__ = [
    "CtcTrainingGraphCompiler",
    "HmmTrainingGraphCompiler",
    "LinearComposer",
    "MmiTrainingGraphCompiler",
    "compose_linear",
    "ctc_graph",
    "ctc_graph_from_acceptors",
]

Device = str | torch.device | None
Texts = Sequence[Sequence[int]]


# ---------------------------------------------------------------------------- helpers
def _as_lists(texts: Texts | torch.Tensor) -> list[list[int]]:
    """A batch of id sequences as lists (a single flat sequence gives a batch of one)."""
    if isinstance(texts, torch.Tensor):
        texts = texts.tolist()
    texts = list(texts)
    if texts and not isinstance(texts[0], (list, tuple, torch.Tensor)):
        texts = [texts]
    return [list(map(int, t.tolist() if isinstance(t, torch.Tensor) else t)) for t in texts]


def _csr(keys: torch.Tensor, num_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order sorting ``keys`` (stable) and offsets ``[num_keys+1]`` of each key's run."""
    order = torch.argsort(keys, stable=True)
    counts = torch.bincount(keys, minlength=num_keys)
    offsets = torch.zeros(num_keys + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    return order, offsets


def _expand(starts: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For runs ``[starts[i], starts[i]+counts[i])``: (run index, position) of every element."""
    total = int(counts.sum())
    run = torch.repeat_interleave(torch.arange(counts.numel()), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    pos = starts[run] + torch.arange(total) - first[run]
    return run, pos


def _assemble(fsa_idx: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, lab: torch.Tensor,
              aux: torch.Tensor, scores: torch.Tensor, num_states: torch.Tensor,
              **extra: torch.Tensor) -> Fsa:
    """An FsaVec from per-arc columns (FSA index, local src/dst, label, aux, score, and any
    ``extra`` per-arc attributes)."""
    n = num_states.numel()
    key = fsa_idx * (int(num_states.max()) + 1 if n else 1) + src
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(fsa_idx, minlength=n)
    splits = torch.zeros(n + 1, dtype=torch.int64)
    splits[1:] = counts.cumsum(0)
    arcs = torch.stack([src[order], dst[order], lab[order]], 1).to(torch.int32)
    return Fsa(arcs, scores[order], num_states=num_states, arc_splits=splits, validate=False,
               aux_labels=aux[order].to(torch.int32), **{k: v[order] for k, v in extra.items()})


# ---------------------------------------------------------------------------- H o linear
class LinearComposer:
    """Batched composition ``H o T_i`` of a topology transducer with linear token acceptors.

    ``H`` (a single Fsa) has ``labels`` = network output ids and ``aux_labels`` = tokens
    (0 = no output, -1 on final arcs); its input side has no epsilons (every arc consumes a
    frame). Tables computed once here (``S`` = states of ``H``):

    * ``R`` ``[S, S]`` bool: reflexive-transitive closure over the arcs with aux_label 0;
    * ``acc[x]`` ``[X+1, S]``: states reachable, without output, right after emitting token
      ``x`` (row ``X``: from the start state);
    * ``coacc[x]`` ``[X+1, S]``: states from which an arc emitting ``x`` is reachable without
      output (row ``X``: from which a final arc is reachable).

    A product state ``(h, k)`` (``k`` tokens emitted) is kept iff ``h`` is in
    ``acc[y_{k-1}] & coacc[y_k]``. Every state of every successful path passes that test, so the
    result has exactly the paths of the OpenFst composition (one per pair of paths, with the
    same scores), possibly plus a few dead-end states for unusual ``H``. Product states are
    numbered by ``(k, h)``, so ``(0, 0)`` is the start state; the final state comes last.
    """

    def __init__(self, topo: Fsa) -> None:
        if topo.is_vec:
            raise ValueError("the topology must be a single Fsa, not an FsaVec")
        if not topo.has_attr("aux_labels"):
            raise ValueError("the topology must be a transducer with aux_labels = tokens")
        self.topo = topo.to("cpu").detach()
        arcs = self.topo.arcs.long()
        self.src, self.dst, self.lab = arcs[:, 0], arcs[:, 1], arcs[:, 2]
        self.aux = self.topo.aux_labels.long()
        self.scores = self.topo.scores
        S = self.num_states = self.topo.num_states
        is_final = self.lab == -1
        is_eps = (self.aux == 0) & ~is_final
        is_tok = (self.aux > 0) & ~is_final
        self.X = X = int(self.aux.max()) + 1 if self.aux.numel() else 1
        R = self._closure(self.src[is_eps], self.dst[is_eps], S)
        Rf = R.to(torch.float32)
        tok = is_tok.nonzero().squeeze(1)
        m_dst = torch.zeros(X + 1, S)
        m_dst.index_put_((self.aux[tok], self.dst[tok]), torch.ones(tok.numel()), accumulate=True)
        m_dst[X, 0] = 1.0
        m_src = torch.zeros(X + 1, S)
        m_src.index_put_((self.aux[tok], self.src[tok]), torch.ones(tok.numel()),
                         accumulate=True)
        fin = is_final.nonzero().squeeze(1)
        m_src[X].index_put_((self.src[fin],), torch.ones(fin.numel()), accumulate=True)
        self.acc = (m_dst @ Rf) > 0
        self.coacc = (m_src @ Rf.T) > 0
        # arcs leaving each state with no output; arcs emitting each token; final arcs by state
        eps = is_eps.nonzero().squeeze(1)
        o, self.eps_off = _csr(self.src[eps], S)
        self.eps_arcs = eps[o]
        o, self.tok_off = _csr(self.aux[tok], X)
        self.tok_arcs = tok[o]
        o, self.fin_off = _csr(self.src[fin], S)
        self.fin_arcs = fin[o]

    @staticmethod
    def _closure(src: torch.Tensor, dst: torch.Tensor, S: int) -> torch.Tensor:
        """Reflexive-transitive closure ``[S, S]`` (bool) of the graph ``src -> dst``."""
        R = torch.eye(S, dtype=torch.bool)
        R[src, dst] = True
        while True:
            Rf = R.to(torch.float32)
            new = R | ((Rf @ Rf) > 0)
            if torch.equal(new, R):
                return R
            R = new

    def __call__(self, texts: Texts, arc_scores: Sequence[Sequence[float]] | None = None,
                 final_scores: Sequence[float] | None = None,
                 device: Device = None) -> Fsa:
        """``H o T_i`` for each token sequence ``texts[i]`` (ids >= 1) as an FsaVec.

        Args:
          texts: N token sequences.
          arc_scores: optional per-token scores of the linear acceptors (same shape as texts),
            added to the arcs that emit the token.
          final_scores: optional ``[N]`` scores of the acceptors' final arcs.

        Returns:
          FsaVec of N graphs; scores = H's scores (+ the acceptors'); aux_labels = tokens.
        """
        seqs = _as_lists(texts)
        N, S, X = len(seqs), self.num_states, self.X
        lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        y = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
        if y.numel() and (int(y.min()) < 1 or int(y.max()) >= X):
            raise ValueError(f"token ids must be in [1, {X - 1}] (the topology's aux_labels)")
        ys = (torch.tensor([float(v) for s in arc_scores for v in s]) if arc_scores is not None
              else torch.zeros(y.numel()))
        if ys.numel() != y.numel():
            raise ValueError("arc_scores must have one score per token")
        fs = (torch.as_tensor(final_scores, dtype=torch.float32) if final_scores is not None
              else torch.zeros(N))
        # rows = product positions k = 0..U_i of every utterance
        rows_per = lens + 1
        R_tot = int(rows_per.sum())
        row_utt = torch.repeat_interleave(torch.arange(N), rows_per, output_size=R_tot)
        row_first = torch.cumsum(rows_per, 0) - rows_per
        k = torch.arange(R_tot) - row_first[row_utt]
        is_last = k == lens[row_utt]
        tok_first = torch.cumsum(lens, 0) - lens  # index in y of each utterance's token 0
        yi = tok_first[row_utt] + k  # index in y of token k (valid where not is_last)
        prev = torch.where(k == 0, torch.full_like(k, X), y[(yi - 1).clamp(min=0)]
                           if y.numel() else torch.full_like(k, X))
        nxt = torch.where(is_last, torch.full_like(k, X),
                          y[yi.clamp(max=max(y.numel() - 1, 0))] if y.numel()
                          else torch.full_like(k, X))
        mask = self.acc[prev] & self.coacc[nxt]
        mask[row_first, 0] = True  # the start state exists even without a successful path
        flat_id = torch.cumsum(mask.view(-1).to(torch.int64), 0).view(R_tot, S) - 1
        per_utt = torch.zeros(N, dtype=torch.int64).index_add_(0, row_utt, mask.sum(1))
        base = torch.cumsum(per_utt, 0) - per_utt
        local = flat_id - base[row_utt].unsqueeze(1)  # local id of (row, h) where mask
        kept_r, kept_h = mask.nonzero(as_tuple=True)
        parts = [self._eps_part(kept_r, kept_h, mask, local, row_utt),
                 self._tok_part(y, ys, row_utt, row_first, k, is_last, mask, local, lens),
                 self._fin_part(kept_r, kept_h, is_last, local, row_utt, per_utt, fs)]
        cols = [torch.cat(c) for c in zip(*parts)]
        out = _assemble(*cols, num_states=per_utt + 1)
        return out.to(device) if device is not None else out

    def _eps_part(self, kept_r, kept_h, mask, local, row_utt):
        cnt = self.eps_off[kept_h + 1] - self.eps_off[kept_h]
        run, pos = _expand(self.eps_off[kept_h], cnt)
        e = self.eps_arcs[pos]
        r = kept_r[run]
        ok = mask[r, self.dst[e]]
        r, e = r[ok], e[ok]
        return (row_utt[r], local[r, self.src[e]], local[r, self.dst[e]], self.lab[e],
                self.aux[e], self.scores[e])

    def _tok_part(self, y, ys, row_utt, row_first, k, is_last, mask, local, lens):
        rows = (~is_last).nonzero().squeeze(1)
        yi = (row_first[row_utt] - row_utt + k)[rows]  # index in y of token k of the row
        tok = y[yi] if rows.numel() else rows
        cnt = self.tok_off[tok + 1] - self.tok_off[tok]
        run, pos = _expand(self.tok_off[tok], cnt)
        e = self.tok_arcs[pos]
        r = rows[run]
        ok = mask[r, self.src[e]] & mask[r + 1, self.dst[e]]
        r, e, yi = r[ok], e[ok], yi[run][ok]
        return (row_utt[r], local[r, self.src[e]], local[r + 1, self.dst[e]], self.lab[e],
                self.aux[e], self.scores[e] + ys[yi].to(self.scores.dtype))

    def _fin_part(self, kept_r, kept_h, is_last, local, row_utt, per_utt, fs):
        sel = is_last[kept_r]
        kr, kh = kept_r[sel], kept_h[sel]
        cnt = self.fin_off[kh + 1] - self.fin_off[kh]
        run, pos = _expand(self.fin_off[kh], cnt)
        f = self.fin_arcs[pos]
        r = kr[run]
        u = row_utt[r]
        return (u, local[r, self.src[f]], per_utt[u], self.lab[f], self.aux[f],
                self.scores[f] + fs[u].to(self.scores.dtype))


def compose_linear(topo: Fsa, texts: Texts, arc_scores: Sequence[Sequence[float]] | None = None,
                   final_scores: Sequence[float] | None = None, device: Device = None) -> Fsa:
    """``topo o linear_acceptor(texts[i])`` for every i, batched (see :class:`LinearComposer`).

    For repeated use with the same topology keep a :class:`LinearComposer`.
    """
    return LinearComposer(topo)(texts, arc_scores, final_scores, device)


# ---------------------------------------------------------------------------- CTC o acceptor
def ctc_graph_from_acceptors(acceptors: Fsa, modified: bool = False,
                             device: Device = None, arc_map: bool = False,
                             share_token_states: bool = False) -> Fsa:
    """``ctc_topo o G_i`` for each epsilon-free token acceptor ``G_i`` of an FsaVec, vectorised.

    ``G_i``: labels are tokens >= 1 (-1 on final arcs), scores are kept (added to the arcs that
    start a token and to the final arcs). If ``G_i`` has ``aux_labels`` (e.g. words), they are
    the output aux_labels of the arcs that start the token (0 elsewhere); otherwise the tokens.

    Result, per graph: one blank state per non-final state ``n`` of ``G`` (``n`` keeps its number,
    so the start is 0), one token state per arc ``a`` of ``G`` (arcs entering it: label
    ``token(a)``), then the final state. Its paths are in one-to-one correspondence with pairs
    (CTC alignment, path of ``G``) with the same scores, as in the composition (which would merge
    token states of arcs with the same token entering the same state). If ``G`` is unambiguous
    (e.g. deterministic), every alignment of every accepted token string has one path.
    Standard CTC (``modified=False``) needs a blank between two equal tokens. With
    ``arc_map``, attribute ``arc_map`` (int64): the arc of ``acceptors`` whose score an arc
    carries, -1 for none.

    ``share_token_states``: one token state per (destination state, token) of ``G`` instead of
    one per arc, as the composition has: the arcs entering it still come one per arc of ``G``
    (its score and aux label), so the paths and their scores are the same, but the arcs leaving
    a token state are made once, not once per arc entering it. For graphs where many arcs enter
    the states with many arcs leaving (a lexicon tree whose first arcs are copied into every
    LM state).
    """
    G = acceptors.as_vec().to("cpu").detach()
    arcs = G.arcs.long()
    lab = arcs[:, 2]
    if bool((lab == 0).any()):
        raise ValueError("the acceptors must be epsilon-free (remove_epsilon first)")
    out_aux = G.aux_labels.long() if G.has_attr("aux_labels") else lab
    N = G.num_fsas
    fsa = G.arc_fsa
    gsrc, gdst = G.src_global, G.dst_global
    ns = G.num_states_per_fsa
    is_fin = lab == -1
    real = (~is_fin).nonzero().squeeze(1)
    fin = is_fin.nonzero().squeeze(1)
    # token states ("units"): one per real arc, or per (dst, token); units[u]: an arc of unit u
    if share_token_states:
        _keys, unit_of = torch.unique(gdst[real] * (int(lab.max()) + 1) + lab[real],
                                      return_inverse=True)
        units = torch.empty(_keys.numel(), dtype=torch.int64).scatter_(0, unit_of, real)
    else:
        units, unit_of = real, torch.arange(real.numel())
    # local numbering: blanks 0..ns-2, token state of unit u: ns-1 + (rank of u in its FSA)
    n_units = torch.bincount(fsa[units], minlength=N)
    units_first = torch.cumsum(n_units, 0) - n_units
    unit_state = (ns - 1)[fsa[units]] + torch.arange(units.numel()) - units_first[fsa[units]]
    tok_state = torch.full((G.num_arcs,), -1, dtype=torch.int64)  # per real arc: its unit's
    tok_state[real] = unit_state[unit_of]
    final_local = ns - 1 + n_units
    offsets, st_fsa = G.state_offsets[:-1], G.state_fsa()

    def loc(g: torch.Tensor) -> torch.Tensor:  # global state -> local state
        return g - offsets[st_fsa[g]]

    zeros = torch.zeros
    parts = []
    # blank self-loops on non-final states
    st = torch.arange(G.num_states)
    nonfinal = st != G.final_states[st_fsa]
    bs, bf = loc(st[nonfinal]), st_fsa[nonfinal]
    none = torch.full((bs.numel(),), -1, dtype=torch.int64)
    parts.append((bf, bs, bs, zeros(bs.numel(), dtype=torch.int64),
                  zeros(bs.numel(), dtype=torch.int64), zeros(bs.numel()), none))
    # blank(src) -> tok(a); tok(a) self-loop; tok(a) -> blank(dst)
    ts, sc = tok_state[real], G.scores.detach()[real].to(torch.float32)
    parts.append((fsa[real], loc(gsrc[real]), ts, lab[real], out_aux[real], sc, real))
    z = zeros(units.numel(), dtype=torch.int64)
    none = torch.full_like(z, -1)
    us = tok_state[units]
    parts.append((fsa[units], us, us, lab[units], z, zeros(units.numel()), none))
    parts.append((fsa[units], us, loc(gdst[units]), z, z, zeros(units.numel()), none))
    # tok(a) -> tok(b) for b leaving dst(a); tok(a) -> final for final arcs leaving dst(a)
    order, off = _csr(gsrc, G.num_states)
    a_run, pos = _expand(off[gdst[units]], off[gdst[units] + 1] - off[gdst[units]])
    a, b = units[a_run], order[pos]
    keep = (lab[b] == -1) | modified | (lab[b] != lab[a])
    a, b = a[keep], b[keep]
    b_fin = lab[b] == -1
    dst = torch.where(b_fin, final_local[fsa[a]], tok_state[b].clamp(min=0))
    parts.append((fsa[a], tok_state[a], dst, lab[b], torch.where(b_fin, -1, out_aux[b]),
                  G.scores.detach()[b].to(torch.float32), b))
    # blank(q) -> final
    parts.append((fsa[fin], loc(gsrc[fin]), final_local[fsa[fin]], lab[fin],
                  torch.full_like(fin, -1), G.scores.detach()[fin].to(torch.float32), fin))
    cols = [torch.cat(c) for c in zip(*parts)]
    out = _assemble(*cols[:6], num_states=final_local + 1,
                    **({"arc_map": cols[6]} if arc_map else {}))
    return out.to(device) if device is not None else out


# ---------------------------------------------------------------------------- CTC compiler
def _normalize_lexicon(lexicon: Mapping[int, Sequence]) -> dict[int, list[tuple[int, ...]]]:
    """word -> list of distinct pronunciations (each a tuple of token ids >= 1)."""
    out: dict[int, list[tuple[int, ...]]] = {}
    for w, prons in lexicon.items():
        prons = list(prons)
        if not prons or isinstance(prons[0], int) or (
                isinstance(prons[0], torch.Tensor) and prons[0].dim() == 0):
            prons = [prons]
        uniq = list(dict.fromkeys(tuple(int(t) for t in p) for p in prons))
        for p in uniq:
            if not p or min(p) < 1:
                raise ValueError(f"word {w}: pronunciations must be non-empty token ids >= 1, "
                                 f"got {list(p)}")
        out[int(w)] = uniq
    return out


class CtcTrainingGraphCompiler:
    """CTC training graphs for token or word transcripts.

    Args:
      lexicon: ``{word id: pronunciation}`` or ``{word id: [pron, pron, ...]}`` (token ids >= 1;
        tokens.txt id 0 = blank), or an ``L`` Fsa (labels = tokens, aux_labels = words, no
        disambiguation symbols), or None (token transcripts only).
      modified: use the modified CTC topology (no blank needed between equal tokens).
      aux: ``"tokens"``: aux_labels = the token started by the arc (as :func:`ctc_graph`);
        ``"words"``: aux_labels = the word id on the arc that starts its first token, 0
        elsewhere (word boundaries are known from the lexicon).
      determinize: with several pronunciations (``aux="tokens"``), determinize each utterance's
        token acceptor (OpenFst), so a token string reachable by two word segmentations is
        counted once. With ``aux="words"`` such strings keep one path per segmentation.
      device: where the graphs go.

    Graphs: FsaVec, one per utterance, labels = network output ids (0 = blank), scores 0.
    """

    def __init__(self, lexicon: Mapping[int, Sequence] | Fsa | None = None,
                 modified: bool = False, aux: str = "tokens", determinize: bool = True,
                 device: Device = None) -> None:
        if aux not in ("tokens", "words"):
            raise ValueError(f"aux must be 'tokens' or 'words', got {aux!r}")
        self.modified, self.aux, self.determinize = modified, aux, determinize
        self.device = device
        self.L: Fsa | None = None
        self.lexicon: dict[int, list[tuple[int, ...]]] | None = None
        self.single: dict[int, tuple[int, ...]] = {}
        if isinstance(lexicon, Fsa):
            if not lexicon.has_attr("aux_labels"):
                raise ValueError("L must be a transducer (labels tokens, aux_labels words)")
            self.L = lexicon.to("cpu").detach()
        elif lexicon is not None:
            self.lexicon = _normalize_lexicon(lexicon)
            self.single = {w: p[0] for w, p in self.lexicon.items() if len(p) == 1}

    def compile(self, texts: Texts, unit: str | None = None) -> Fsa:
        """Graphs for a batch of transcripts.

        Args:
          texts: N sequences of token ids (``unit="tokens"``) or word ids (``unit="words"``).
          unit: default ``"words"`` when a lexicon was given, else ``"tokens"``.

        Returns:
          FsaVec of N graphs (see the class docstring).
        """
        seqs = _as_lists(texts)
        unit = unit or ("tokens" if self.lexicon is None and self.L is None else "words")
        if unit == "tokens":
            return ctc_graph(seqs, modified=self.modified, device=self.device)
        if unit != "words":
            raise ValueError(f"unit must be 'tokens' or 'words', got {unit!r}")
        if self.L is not None:
            accs = [self._acceptor_from_L(s) for s in seqs]
            return self._from_acceptors(accs)
        assert self.lexicon is not None
        for i, s in enumerate(seqs):
            missing = [w for w in s if w not in self.lexicon]
            if missing:
                raise KeyError(f"utterance {i}: words {missing} are not in the lexicon")
        if all(w in self.single for s in seqs for w in s):
            return self._single_pron(seqs)
        accs = [self._acceptor_from_lexicon(s) for s in seqs]
        return self._from_acceptors(accs)

    # -- one pronunciation per word: a dict and the vectorised ctc_graph
    def _single_pron(self, seqs: list[list[int]]) -> Fsa:
        tokens = [[t for w in s for t in self.single[w]] for s in seqs]
        graphs = ctc_graph(tokens, modified=self.modified)
        if self.aux == "words":
            graphs.aux_labels = self._word_aux(graphs, seqs, tokens)
        return graphs.to(self.device) if self.device is not None else graphs

    def _word_aux(self, graphs: Fsa, seqs: list[list[int]], tokens: list[list[int]]
                  ) -> torch.Tensor:
        """aux_labels = word id on arcs that start a word's first token (ctc_graph layout:
        state ``2k+1`` is the k-th token)."""
        word_at = torch.tensor([w if j == 0 else 0 for s in seqs for w in s
                                for j in range(len(self.single[w]))], dtype=torch.int64)
        lens = torch.tensor([len(t) for t in tokens])
        first = torch.cumsum(lens, 0) - lens
        dst = graphs.arcs[:, 1].long()
        starts = (graphs.aux_labels > 0) & (dst % 2 == 1)
        k = (dst - 1) // 2
        idx = (first[graphs.arc_fsa] + k).clamp(0, max(word_at.numel() - 1, 0))
        word = word_at[idx] if word_at.numel() else torch.zeros_like(dst)
        aux = torch.where(starts, word, torch.zeros_like(word))
        return torch.where(graphs.labels == -1, -1, aux).to(torch.int32)

    # -- several pronunciations: a token acceptor per utterance, then CTC over it
    def _acceptor_from_lexicon(self, words: list[int]) -> Fsa:
        """Union of the pronunciation chains of each word, concatenated (aux = words if asked)."""
        assert self.lexicon is not None
        rows: list[tuple[int, int, int, int]] = []
        cur, nxt_state = 0, 1
        for w in words:
            end = nxt_state
            nxt_state += 1
            for p in self.lexicon[w]:
                s = cur
                for j, t in enumerate(p):
                    d = end if j == len(p) - 1 else nxt_state
                    if d != end:
                        nxt_state += 1
                    rows.append((s, d, t, w if j == 0 else 0))
                    s = d
            cur = end
        final = nxt_state
        rows.append((cur, final, -1, -1))
        t = torch.tensor(rows, dtype=torch.int32).view(-1, 4)
        aux = {"aux_labels": t[:, 3]} if self.aux == "words" else {}
        acc = Fsa(t[:, :3], num_states=final + 1, **aux)
        if self.aux == "tokens" and self.determinize and any(
                len(self.lexicon[w]) > 1 for w in words):
            acc = ops.determinize(acc)
        return acc

    def _acceptor_from_L(self, words: list[int]) -> Fsa:
        """``L o W`` (W: linear word acceptor), epsilons removed (and determinized on tokens)."""
        assert self.L is not None
        g = ops.compose(self.L, linear_fsa(words))
        if self.aux == "tokens":
            g = ops.remove_epsilon(ops.project(g))
            return ops.determinize(g) if self.determinize else g
        g = ops.remove_epsilon(g)
        if bool((g.labels == 0).any()):
            raise ValueError("L o W has arcs with epsilon input and a word output; "
                             "use aux='tokens'")
        return g

    def _from_acceptors(self, accs: list[Fsa]) -> Fsa:
        vec = create_fsa_vec(accs)
        return ctc_graph_from_acceptors(vec, modified=self.modified, device=self.device)


# ---------------------------------------------------------------------------- HMM
class HmmTrainingGraphCompiler:
    """Per-utterance HMM training graphs ``H o transcript`` (batched, no OpenFst call when every
    word has one pronunciation).

    Args:
      topo: the topology transducer ``H`` (labels = output ids, aux_labels = tokens, see
        :class:`LinearComposer`), e.g. :func:`hmm_topo` or an H built from a Kaldi topology.
      lexicon: optional ``{word id: pronunciation}`` or ``{word id: [pron, ...]}`` (token ids
        >= 1) for word transcripts, or a lexicon transducer ``L`` (labels = tokens, aux_labels =
        words, no disambiguation symbols), e.g. :func:`wfst_asr.graphs.lang.lexicon_to_fst`
        with ``sil_token`` / ``sil_prob``: word transcripts then go through ``L o W`` (OpenFst,
        one utterance at a time), so the graphs have L's optional silence (at the start and
        after every word, with L's ``log sil_prob`` / ``log(1 - sil_prob)`` scores) and its
        pronunciation probabilities, as Kaldi's ``compile-train-graphs``. An L whose words are
        the tokens themselves (``word = [word]``) gives token transcripts optional silence.
      device: where the graphs go.
    """

    def __init__(self, topo: Fsa, lexicon: Mapping[int, Sequence] | Fsa | None = None,
                 device: Device = None) -> None:
        self.topo = topo
        self.device = device
        self._composer = LinearComposer(topo)
        self.L: Fsa | None = None
        self.lexicon: dict[int, list[tuple[int, ...]]] | None = None
        if isinstance(lexicon, Fsa):
            if not lexicon.has_attr("aux_labels"):
                raise ValueError("L must be a transducer (labels tokens, aux_labels words)")
            self.L = lexicon.to("cpu").detach()
            self._L_words = set(self.L.aux_labels.tolist()) - {0, -1}
            self._L_acceptors = CtcTrainingGraphCompiler(self.L, determinize=False)
        elif lexicon is not None:
            self.lexicon = _normalize_lexicon(lexicon)

    def compile(self, texts: Texts, unit: str | None = None) -> Fsa:
        """FsaVec of ``H o transcript_i``; scores = H's transition scores (plus L's, with an
        ``L``).

        Args:
          texts: token-id sequences (``unit="tokens"``) or word-id sequences (``"words"``,
            through the lexicon; default when a lexicon was given).
        """
        seqs = _as_lists(texts)
        has_lex = self.lexicon is not None or self.L is not None
        unit = unit or ("words" if has_lex else "tokens")
        if unit == "tokens":
            return self._composer(seqs, device=self.device)
        if unit != "words" or not has_lex:
            raise ValueError("word transcripts need a lexicon; unit must be 'tokens' or 'words'")
        known = self._L_words if self.L is not None else self.lexicon
        for i, s in enumerate(seqs):
            missing = [w for w in s if w not in known]
            if missing:
                raise KeyError(f"utterance {i}: words {missing} are not in the lexicon")
        if self.L is not None:  # H o (L o W), the latter projected on tokens, epsilon-free
            return self._compose_h([self._L_acceptors._acceptor_from_L(s) for s in seqs])
        if all(len(self.lexicon[w]) == 1 for s in seqs for w in s):
            tokens = [[t for w in s for t in self.lexicon[w][0]] for s in seqs]
            return self._composer(tokens, device=self.device)
        # several pronunciations: H o (union of pronunciation chains), through OpenFst
        words_ctc = CtcTrainingGraphCompiler(self.lexicon, determinize=True)
        return self._compose_h([words_ctc._acceptor_from_lexicon(s) for s in seqs])

    def _compose_h(self, acceptors: list[Fsa]) -> Fsa:
        """FsaVec of ``H o acceptor`` (OpenFst) for token acceptors without epsilons."""
        graphs = []
        for acc in acceptors:
            g = ops.compose(self.topo, acc)  # arc-sorts both, trims dead states
            if bool((g.labels == 0).any()):
                raise ValueError("H has arcs without an output id (input epsilon): it cannot "
                                 "be used for frame-synchronous training graphs")
            graphs.append(g)
        vec = create_fsa_vec(graphs)
        return vec.to(self.device) if self.device is not None else vec


# ---------------------------------------------------------------------------- LF-MMI
def _is_deterministic(fsa: Fsa) -> bool:
    """Epsilon-free and no state has two arcs with the same label."""
    if fsa.has_epsilons():
        return False
    key = fsa.src_global * (int(fsa.labels.max()) + 2) + fsa.labels.long() + 1
    return torch.unique(key).numel() == key.numel()


class MmiTrainingGraphCompiler:
    """LF-MMI graphs (Povey et al. 2016): a shared denominator ``H o P``, numerators
    ``H o (P o transcript)``.

    Args:
      P: phone (token) LM acceptor, labels = tokens >= 1 (e.g. from an ARPA file via kaldilm;
        a transducer is projected on its input). If it has epsilons (back-off arcs) or is not
        deterministic it is made so with OpenFst RmEpsilon + Determinize (tropical semiring),
        and that P is used for both graphs.
      topo: ``"ctc"`` (``ctc_topo`` over P's tokens) or an HMM-style ``H`` transducer
        (labels = output ids, aux_labels = tokens), e.g. :func:`hmm_topo`.
      modified: modified CTC topology (``topo="ctc"`` only).
      lm_scale: P's scores are multiplied by it (in both graphs).
      device: where the graphs go.

    ``den`` is built once with OpenFst composition; numerators walk each transcript through the
    (deterministic) P and compose ``H`` with the weighted linear acceptors in one batched step,
    so every numerator path is a denominator path with the same score.
    """

    def __init__(self, P: Fsa, topo: str | Fsa = "ctc", modified: bool = False,
                 lm_scale: float = 1.0, device: Device = None) -> None:
        P = P.to("cpu").detach()
        if P.has_attr("aux_labels"):
            P = ops.project(P)
        if not _is_deterministic(P):
            P = ops.determinize(ops.remove_epsilon(P))
        P = Fsa(P.arcs, P.scores * lm_scale, num_states=P.num_states)
        self.P, self.lm_scale, self.device = P, lm_scale, device
        if isinstance(topo, str):
            if topo != "ctc":
                raise ValueError(f"topo must be 'ctc' or an Fsa, got {topo!r}")
            topo = ctc_topo(int(P.labels.max()), modified=modified)
        self.H = topo
        self._composer = LinearComposer(topo)
        den = ops.compose(topo.to("cpu").detach(), P)
        self.den = den.to(device) if device is not None else den
        self._delta = self._transitions(P)

    @staticmethod
    def _transitions(P: Fsa) -> tuple[dict[tuple[int, int], tuple[int, float]], dict[int, float]]:
        arcs, sc = P.arcs.tolist(), P.scores.tolist()
        delta, final = {}, {}
        for (s, d, lab), w in zip(arcs, sc):
            if lab == -1:
                final[s] = w
            else:
                delta[(s, lab)] = (d, w)
        return delta, final

    def walk(self, tokens: Sequence[int]) -> tuple[list[float], float]:
        """P's score of each token of a transcript and its final score (ValueError if P
        does not accept it)."""
        delta, final = self._delta
        s, out = 0, []
        for t in tokens:
            if (s, t) not in delta:
                raise ValueError(f"P does not accept {list(tokens)} (no arc for token {t})")
            s, w = delta[(s, t)]
            out.append(w)
        if s not in final:
            raise ValueError(f"P does not accept {list(tokens)} (state {s} is not final)")
        return out, final[s]

    def compile(self, texts: Texts) -> tuple[Fsa, Fsa]:
        """``(num, den)``: numerators (FsaVec, one per transcript of token ids) and the shared
        denominator (a single Fsa, pass it as is to intersect_dense)."""
        seqs = _as_lists(texts)
        walks = [self.walk(s) for s in seqs]
        num = self._composer(seqs, [w for w, _ in walks], [f for _, f in walks],
                             device=self.device)
        return num, self.den


def _ctc_graph_arrays(labels: np.ndarray, modified: bool) -> np.ndarray:
    """Arcs ``[A, 4]`` (src, dst, label, aux) of one CTC graph, sorted by src.

    States ``2k`` are blanks, ``2k+1`` the k-th label, ``2U+1`` the final state.
    """
    U = labels.size
    k = np.arange(U)
    blank = np.arange(U + 1) * 2
    sym = 2 * k + 1
    nxt_ok = np.zeros(U, dtype=bool)
    if U > 1:
        nxt_ok[:-1] = modified | (labels[1:] != labels[:-1])
    parts = [
        np.stack([blank, blank, 0 * blank, 0 * blank], 1),  # blank self-loops
        np.stack([blank[:-1], sym, labels, labels], 1),  # blank -> next label
        np.stack([sym, sym, labels, 0 * sym], 1),  # label self-loops
        np.stack([sym, sym + 1, 0 * sym, 0 * sym], 1),  # label -> blank
        np.stack([sym[nxt_ok], sym[nxt_ok] + 2, labels[1:][nxt_ok[:-1]] if U > 1 else
                  labels[:0], labels[1:][nxt_ok[:-1]] if U > 1 else labels[:0]], 1),
        np.array([[2 * U, 2 * U + 1, -1, -1]] + ([[2 * U - 1, 2 * U + 1, -1, -1]] if U else [])),
    ]
    arcs = np.concatenate([p.reshape(-1, 4) for p in parts]).astype(np.int64)
    return arcs[np.argsort(arcs[:, 0], kind="stable")]


def ctc_graph(label_sequences: Sequence[int] | Sequence[Sequence[int]],
              modified: bool = False, device: str | torch.device | None = None) -> Fsa:
    """CTC training graphs: an FsaVec with one graph per label sequence (``aux_labels`` = tokens).

    ``modified=True`` allows two identical consecutive labels without a blank between them.
    A single list of ints gives an FsaVec of one graph too.
    """
    seqs = label_sequences
    if isinstance(seqs, torch.Tensor):
        seqs = seqs.tolist()
    if len(seqs) == 0 or not isinstance(seqs[0], (list, tuple)):
        seqs = [list(seqs)]
    arrays = []
    for i, sq in enumerate(seqs):
        lab = np.asarray(sq, dtype=np.int64).reshape(-1)
        if lab.size and lab.min() <= 0:
            raise ValueError(f"label sequence {i}: CTC labels must be >= 1 (0 is blank): {sq}")
        arrays.append(_ctc_graph_arrays(lab, modified))
    arcs = torch.from_numpy(np.concatenate(arrays))
    counts = torch.tensor([a.shape[0] for a in arrays])
    splits = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    num_states = torch.tensor([2 * len(sq) + 2 for sq in seqs])
    vec = Fsa(arcs[:, :3], num_states=num_states, arc_splits=splits, validate=False,
              aux_labels=arcs[:, 3].to(torch.int32))
    return vec.to(device) if device is not None else vec
