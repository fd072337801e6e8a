"""Independent, deliberately simple references for the lattice tests (plain Python, float64).

A lattice is only read through its tensors (``arcs``, ``aux_labels``, ``am_scores``,
``lm_scores``, ``frame_idx``); nothing here calls the algorithms under test. Helpers that *build*
inputs (random bigram grammars, lattices through the engine) are at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def lattice_paths(one) -> list[dict]:
    """Every complete path of ONE acyclic lattice (depth-first): ``arcs`` (indices), ``labels``,
    ``words`` (aux > 0), ``frames``, ``am``, ``lm`` (float64 sums), ``nwords``."""
    arcs = one.arcs.tolist()
    aux = one.aux_labels.tolist()
    am = one.am_scores.double().tolist()
    lm = one.lm_scores.double().tolist()
    frm = one.frame_idx.tolist()
    ns = int(one.num_states_per_fsa[0]) if one.is_vec else one.num_states
    if ns == 0:
        return []
    final = ns - 1
    leaving: dict[int, list[int]] = {}
    for i, (s, _, _) in enumerate(arcs):
        leaving.setdefault(s, []).append(i)
    out: list[dict] = []

    def dfs(q: int, path: list[int]) -> None:
        if q == final:
            out.append({
                "arcs": list(path),
                "labels": [arcs[a][2] for a in path],
                "words": [aux[a] for a in path if aux[a] > 0 and arcs[a][2] != -1],
                "frames": [frm[a] for a in path],
                "am": sum(am[a] for a in path),
                "lm": sum(lm[a] for a in path),
            })
            return
        for a in leaving.get(q, []):
            path.append(a)
            dfs(arcs[a][1], path)
            path.pop()

    dfs(0, [])
    for p in out:
        p["nwords"] = len(p["words"])
    return out


def total(p: dict, lm_scale: float, word_penalty: float) -> float:
    return p["am"] + lm_scale * p["lm"] - word_penalty * p["nwords"]


def best_per_word_sequence(paths: Sequence[dict], lm_scale: float, word_penalty: float
                           ) -> list[tuple[tuple[int, ...], dict]]:
    """(word sequence, its best path) for every distinct word sequence, best first."""
    best: dict[tuple[int, ...], dict] = {}
    for p in paths:
        key = tuple(p["words"])
        if key not in best or total(p, lm_scale, word_penalty) > total(best[key], lm_scale,
                                                                       word_penalty):
            best[key] = p
    return sorted(best.items(), key=lambda kv: -total(kv[1], lm_scale, word_penalty))


def logsumexp(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x != -math.inf]
    if not xs:
        return -math.inf
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def frame_word_posteriors(paths: Sequence[dict], T: int, scores: Sequence[float]
                          ) -> list[dict[int, float]]:
    """P(word active at frame t = w) by enumeration: the active word is the last word output
    at or before t (0 before the first); ``scores`` = each path's (scaled) score; paths need
    ``word_frames`` (:func:`add_word_frames`)."""
    z = logsumexp(scores)
    out: list[dict[int, float]] = [{} for _ in range(T)]
    for p, s in zip(paths, scores):
        w_at = [0] * T
        cur = 0
        word_frames = p["word_frames"]  # (frame of the arc that outputs the word, word)
        k = 0
        for t in range(T):
            while k < len(word_frames) and word_frames[k][0] <= t:
                cur = word_frames[k][1]
                k += 1
            w_at[t] = cur
        prob = math.exp(s - z)
        for t in range(T):
            out[t][w_at[t]] = out[t].get(w_at[t], 0.0) + prob
    return out


def add_word_frames(one, paths: Sequence[dict]) -> None:
    """Give each path its ``word_frames``: (frame, word) of its word-output arcs."""
    aux = one.aux_labels.tolist()
    lab = one.labels.tolist()
    frm = one.frame_idx.tolist()
    for p in paths:
        p["word_frames"] = [(frm[a], aux[a]) for a in p["arcs"] if aux[a] > 0 and lab[a] >= 0]


def edit_distance(ref: Sequence[int], hyp: Sequence[int]) -> int:
    """Levenshtein distance with unit costs (plain DP)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


# ---------------------------------------------------------------------- input builders
def bigram_g_rows(V: int, gen: torch.Generator) -> list[tuple[int, int, int, float]]:
    """A random word bigram as arc rows (src, dst, word, score): state 0 = start, state w =
    last word w, final state V + 1 (-1 arcs); every word allowed everywhere."""
    rows = []
    for q in range(V + 1):
        for w in range(1, V + 1):
            rows.append((q, w, w, float(torch.randn(1, generator=gen, dtype=torch.float64))))
        rows.append((q, V + 1, -1, float(torch.randn(1, generator=gen, dtype=torch.float64))))
    return rows


def g_from_rows(rows, V: int):
    from wfst_asr.fsa import Fsa

    arcs = torch.tensor([r[:3] for r in rows], dtype=torch.int32)
    return Fsa(arcs, torch.tensor([r[3] for r in rows], dtype=torch.float32), num_states=V + 2)


def g_score(rows, words: Sequence[int]) -> float:
    """Score of a word sequence (with the final arc) in a deterministic G given as rows;
    -inf when G does not accept it. Scores as float32 values, summed in float64."""
    nxt = {(s, w): (d, float(torch.tensor(sc, dtype=torch.float32))) for s, d, w, sc in rows}
    q, tot = 0, 0.0
    for w in list(words) + [-1]:
        if (q, w) not in nxt:
            return -math.inf
        q, sc = nxt[(q, w)]
        tot += sc
    return tot
