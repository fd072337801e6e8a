"""Independent, deliberately simple reference implementations used only by the tests.

Nothing here uses the algorithms of :mod:`wfst_asr`; an :class:`~wfst_asr.fsa.Fsa` is only read
through ``arcs``, ``scores``, ``arc_splits`` and ``num_states_per_fsa`` (and built through its
constructor by the random generators). All arithmetic is plain Python floats (float64), except
the CTC dynamic programme :func:`ctc_forward_dp`, which uses float64 torch elementwise ops so
that autograd gives the reference gradient.

Conventions (k2's): state 0 is the start state, the highest-numbered state is the final state,
only arcs entering it carry label -1. For dense intersection every arc with label >= 0 consumes
one frame (label 0 = blank), the -1 arc consumes one virtual frame with log-prob 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import cache

import torch

NEG_INF = float("-inf")

Path = tuple[list[int], float]  # (arc indices, score)


# ----------------------------------------------------------------------------- reading FSAs
class RefFsa:
    """A plain-Python copy of one FSA: ``num_states`` and ``arcs`` as (src, dst, label, score).

    ``offset`` is the index of its first arc in the FsaVec it came from (0 for a single FSA).
    """

    def __init__(self, num_states: int, arcs: list[tuple[int, int, int, float]],
                 offset: int = 0, attrs: dict[str, list] | None = None) -> None:
        self.num_states = num_states
        self.arcs = arcs
        self.offset = offset
        self.attrs = attrs or {}

    @property
    def final(self) -> int:
        return self.num_states - 1

    def leaving(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in range(self.num_states)]
        for i, (s, _, _, _) in enumerate(self.arcs):
            out[s].append(i)
        return out


INF = float("inf")


def tol(dtype) -> dict:
    """Tolerances for comparing engine results with these references: float64 vs float32."""
    import torch
    if dtype == torch.float64:
        return {"rtol": 1e-9, "atol": 1e-9}
    return {"rtol": 1e-4, "atol": 1e-4}


def split_fsas(fsa, attrs: Sequence[str] = ()) -> list[RefFsa]:
    """The FSAs of an Fsa or FsaVec as :class:`RefFsa` (scores as Python floats)."""
    arcs = fsa.arcs.detach().cpu().tolist()
    scores = fsa.scores.detach().cpu().to(torch.float64).tolist()
    splits = fsa.arc_splits.cpu().tolist()
    nstates = fsa.num_states_per_fsa.cpu().tolist()
    attr_lists = {k: getattr(fsa, k).detach().cpu().tolist() for k in attrs}
    out = []
    for i, ns in enumerate(nstates):
        a0, a1 = splits[i], splits[i + 1]
        rows = [(int(s), int(d), int(lab), float(sc))
                for (s, d, lab), sc in zip(arcs[a0:a1], scores[a0:a1])]
        out.append(RefFsa(int(ns), rows, a0, {k: v[a0:a1] for k, v in attr_lists.items()}))
    return out


def as_ref(fsa_or_ref) -> RefFsa:
    if isinstance(fsa_or_ref, RefFsa):
        return fsa_or_ref
    refs = split_fsas(fsa_or_ref)
    if len(refs) != 1:
        raise ValueError(f"expected a single FSA, got {len(refs)}")
    return refs[0]


# ----------------------------------------------------------------------------- semiring helpers
def logsumexp(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x != NEG_INF]
    if not xs:
        return NEG_INF
    m = max(xs)
    if m == math.inf:
        return math.inf
    return m + math.log(sum(math.exp(x - m) for x in xs))


def total(paths: Sequence[Path], log_semiring: bool = True) -> float:
    """logsumexp (log semiring) or max (tropical) of the path scores; -inf without paths."""
    scores = [s for _, s in paths]
    if log_semiring:
        return logsumexp(scores)
    return max(scores) if scores else NEG_INF


def best_path(paths: Sequence[Path]) -> Path | None:
    return max(paths, key=lambda p: p[1]) if paths else None


# ----------------------------------------------------------------------------- (a) acyclic paths
def enumerate_paths(fsa) -> list[Path]:
    """All complete start -> final paths of an ACYCLIC FSA (depth-first), arc indices local.

    Raises ValueError on a cycle reachable from the start state.
    """
    f = as_ref(fsa)
    if f.num_states == 0:
        return []
    leaving = f.leaving()
    final = f.final
    out: list[Path] = []
    on_stack = [False] * f.num_states

    def dfs(state: int, arcs: list[int], score: float) -> None:
        if state == final:
            out.append((list(arcs), score))
            return
        on_stack[state] = True
        for a in leaving[state]:
            _, d, _, sc = f.arcs[a]
            if on_stack[d]:
                raise ValueError("enumerate_paths: the FSA has a cycle")
            arcs.append(a)
            dfs(d, arcs, score + sc)
            arcs.pop()
        on_stack[state] = False

    dfs(0, [], 0.0)
    return out


def _partial_paths_from(f: RefFsa, start: int) -> list[tuple[int, float]]:
    """(end state, score) of every path (including the empty one) leaving ``start``."""
    leaving = f.leaving()
    out: list[tuple[int, float]] = []

    def dfs(state: int, score: float, depth: int) -> None:
        if depth > f.num_states:
            raise ValueError("the FSA has a cycle")
        out.append((state, score))
        for a in leaving[state]:
            _, d, _, sc = f.arcs[a]
            dfs(d, score + sc, depth + 1)

    dfs(start, 0.0, 0)
    return out


def forward_scores(fsa, log_semiring: bool = True) -> list[float]:
    """Forward score of every state: (+) over all partial paths start -> state (-inf: none)."""
    f = as_ref(fsa)
    if f.num_states == 0:
        return []
    per_state: list[list[float]] = [[] for _ in range(f.num_states)]
    for s, sc in _partial_paths_from(f, 0):
        per_state[s].append(sc)
    return [total([([], x) for x in xs], log_semiring) for xs in per_state]


def backward_scores(fsa, log_semiring: bool = True) -> list[float]:
    """Backward score of every state: (+) over all paths state -> final (final: 0)."""
    f = as_ref(fsa)
    out = []
    for s in range(f.num_states):
        ends = [sc for d, sc in _partial_paths_from(f, s) if d == f.final]
        out.append(total([([], x) for x in ends], log_semiring))
    return out


def arc_expected_counts(paths: Sequence[Path], num_arcs: int,
                        log_semiring: bool = True) -> list[float]:
    """d total / d arc score: expected number of uses of each arc (log semiring), or the number
    of uses on the best path (tropical). All zeros when there is no path."""
    counts = [0.0] * num_arcs
    if not paths:
        return counts
    if not log_semiring:
        for a in best_path(paths)[0]:
            counts[a] += 1.0
        return counts
    tot = total(paths)
    for arcs, sc in paths:
        p = math.exp(sc - tot)
        for a in arcs:
            counts[a] += p
    return counts


def arc_log_posteriors(fsa, log_semiring: bool = True) -> list[float]:
    """Per arc of an acyclic FSA: log of (sum of probs of paths through it) / total (log
    semiring), or best path score through it minus the best score (tropical); -inf when no
    complete path uses the arc."""
    f = as_ref(fsa)
    paths = enumerate_paths(f)
    tot = total(paths, log_semiring)
    through: list[list[float]] = [[] for _ in f.arcs]
    for arcs, sc in paths:
        for a in set(arcs):
            through[a].append(sc)
    out = []
    for xs in through:
        if not xs:
            out.append(NEG_INF)
        else:
            v = logsumexp(xs) if log_semiring else max(xs)
            out.append(v - tot)
    return out


def path_labels(fsa, arcs: Sequence[int]) -> list[int]:
    f = as_ref(fsa)
    return [f.arcs[a][2] for a in arcs]


# ----------------------------------------------------------------------------- (b) dense paths
def enumerate_dense_paths(graph, log_probs) -> list[Path]:
    """All paths of the intersection of a graph with ``n`` frames of log-probs ``[n, V]``.

    A path is ``n`` graph arcs with labels >= 0 (arc at step t consumes frame t, column
    ``label``) followed by one arc with label -1 (into the final state). The graph may have
    cycles and self-loops. Returns ``(graph arc indices local to the graph, score)`` with
    score = sum of arc scores + sum_t log_probs[t, label_t].
    """
    f = as_ref(graph)
    lp = torch.as_tensor(log_probs).detach().cpu().to(torch.float64).tolist()
    n = len(lp)
    if f.num_states == 0:
        return []
    leaving = f.leaving()
    out: list[Path] = []

    def dfs(state: int, t: int, arcs: list[int], score: float) -> None:
        for a in leaving[state]:
            _, d, lab, sc = f.arcs[a]
            if t < n:
                if lab < 0:
                    continue
                arcs.append(a)
                dfs(d, t + 1, arcs, score + sc + lp[t][lab])
                arcs.pop()
            elif lab == -1:
                out.append((arcs + [a], score + sc))

    dfs(0, 0, [], 0.0)
    return out


def dense_frame_posteriors(graph, paths: Sequence[Path], n: int, V: int,
                           log_semiring: bool = True) -> list[list[float]]:
    """d total / d log_probs[t, v] ``[n][V]``: expected count of label v at frame t (log
    semiring) or indicator of the best path (tropical)."""
    f = as_ref(graph)
    post = [[0.0] * V for _ in range(n)]
    if not paths:
        return post
    if log_semiring:
        tot = total(paths)
        weighted = [(arcs, math.exp(sc - tot)) for arcs, sc in paths]
    else:
        weighted = [(best_path(paths)[0], 1.0)]
    for arcs, p in weighted:
        for t, a in enumerate(arcs[:n]):
            post[t][f.arcs[a][2]] += p
    return post


# ----------------------------------------------------------------------------- (d) CTC DP
def ctc_min_frames(targets: Sequence[int]) -> int:
    """Minimal number of frames for standard CTC: U + number of adjacent repeats."""
    reps = sum(1 for a, b in itertools.pairwise(targets) if a == b)
    return len(targets) + reps


def ctc_forward_dp(log_probs: torch.Tensor, targets: Sequence[int], blank: int = 0,
                   modified: bool = False) -> torch.Tensor:
    """log p(targets | log_probs [T, V]) by the CTC alpha recursion over the blank-interleaved
    label sequence, in float64 (differentiable through autograd; -inf if infeasible).

    ``modified=True`` allows the skip from label k to label k+1 even when they are equal (the
    modified CTC graph), so a repeat needs no blank in between.
    """
    lp = log_probs.to(torch.float64)
    T = lp.shape[0]
    if T == 0:
        return torch.tensor(0.0 if not targets else NEG_INF, dtype=torch.float64)
    ext = [blank]
    for x in targets:
        ext += [int(x), blank]
    S = len(ext)
    ext_t = torch.tensor(ext, dtype=torch.long, device=lp.device)
    skip = [s >= 2 and ext[s] != blank and (modified or ext[s] != ext[s - 2]) for s in range(S)]
    skip = torch.tensor(skip, dtype=torch.bool, device=lp.device)
    # "impossible" is a huge finite negative number rather than -inf, so that autograd through
    # logsumexp never forms -inf - (-inf) (which would put NaN into the reference gradient)
    big = torch.full((S,), _IMPOSSIBLE, dtype=torch.float64, device=lp.device)
    pad = torch.full((2,), _IMPOSSIBLE, dtype=torch.float64, device=lp.device)
    init = big.clone()
    init[: min(S, 2)] = 0.0
    alpha = init + lp[0, ext_t]
    for t in range(1, T):
        a1 = torch.cat([pad[:1], alpha])[:S]
        a2 = torch.where(skip, torch.cat([pad, alpha])[:S], big)
        alpha = torch.logsumexp(torch.stack([alpha, a1, a2]), dim=0) + lp[t, ext_t]
    res = torch.logsumexp(alpha[-2:] if S > 1 else alpha, dim=0)
    return torch.where(res < _IMPOSSIBLE / 2, torch.full_like(res, NEG_INF), res)


_IMPOSSIBLE = -1e30


# ----------------------------------------------------------------------------- (e) generators
def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (1,), generator=gen))


def _rand(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen, dtype=torch.float64))


def _randn(gen: torch.Generator) -> float:
    return float(torch.randn((), generator=gen, dtype=torch.float64))


def _build(rows: list[tuple[int, int, int, float]], num_states: int, gen: torch.Generator,
           dtype: torch.dtype, with_aux: bool, shuffle: bool, max_aux: int = 9):
    from wfst_asr.fsa import Fsa  # only the container

    if shuffle and rows:
        perm = torch.randperm(len(rows), generator=gen).tolist()
        rows = [rows[i] for i in perm]
    arcs = torch.tensor([r[:3] for r in rows], dtype=torch.int32).reshape(-1, 3)
    scores = torch.tensor([r[3] for r in rows], dtype=dtype)
    attrs = {}
    if with_aux:
        aux = [(-1 if r[2] == -1 else _randint(gen, 0, max_aux + 1)) for r in rows]
        attrs["aux_labels"] = torch.tensor(aux, dtype=torch.int32)
    return Fsa(arcs, scores, num_states=num_states, **attrs)


def random_acyclic_fsa(gen: torch.Generator, num_states: int = 6, num_labels: int = 4,
                       arc_prob: float = 0.5, max_parallel: int = 2, ensure_path: bool = True,
                       top_sorted: bool = True, dtype: torch.dtype = torch.float32,
                       with_aux: bool = True, shuffle: bool = True):
    """A random acyclic FSA with continuous random scores.

    Arcs go from a lower to a higher state (before an optional relabelling of the middle states
    when ``top_sorted=False``), up to ``max_parallel`` parallel arcs per state pair, labels in
    ``[0, num_labels)`` (-1 into the final state). ``ensure_path`` adds a chain 0 -> 1 -> ... ->
    final when there would be no complete path; ``ensure_path=False`` may give FSAs without one.
    """
    assert num_states >= 2
    final = num_states - 1
    rows: list[tuple[int, int, int, float]] = []
    for s in range(final):
        for d in range(s + 1, num_states):
            k = 0
            while k < max_parallel and _rand(gen) < arc_prob:
                lab = -1 if d == final else _randint(gen, 0, num_labels)
                rows.append((s, d, lab, _randn(gen)))
                k += 1
    if ensure_path:
        tmp = RefFsa(num_states, rows)
        if not enumerate_paths(tmp):
            for s in range(final):
                lab = -1 if s + 1 == final else _randint(gen, 0, num_labels)
                rows.append((s, s + 1, lab, _randn(gen)))
    if not top_sorted and num_states > 3:
        mid = list(range(1, final))
        perm = torch.randperm(len(mid), generator=gen).tolist()
        m = {0: 0, final: final}
        for i, p in zip(mid, perm):
            m[i] = mid[p]
        rows = [(m[s], m[d], lab, sc) for s, d, lab, sc in rows]
    return _build(rows, num_states, gen, dtype, with_aux, shuffle)


def random_dense_graph(gen: torch.Generator, num_states: int = 4, num_labels: int = 3,
                       arc_prob: float = 0.4, self_loop_prob: float = 0.5,
                       final_prob: float = 0.6, dtype: torch.dtype = torch.float32,
                       with_aux: bool = True, shuffle: bool = True, ensure_final: bool = True):
    """A random graph for dense intersection: arbitrary arcs (cycles, self-loops, parallel
    arcs) between the non-final states with labels in ``[0, num_labels)`` (0 = blank consumes a
    frame too), and label -1 arcs from some states into the final state ``num_states - 1``.
    """
    assert num_states >= 2
    final = num_states - 1
    rows: list[tuple[int, int, int, float]] = []
    for s in range(final):
        for d in range(final):
            p = self_loop_prob if s == d else arc_prob
            if _rand(gen) < p:
                rows.append((s, d, _randint(gen, 0, num_labels), _randn(gen)))
            if s != d and _rand(gen) < p / 3:  # occasional parallel arc
                rows.append((s, d, _randint(gen, 0, num_labels), _randn(gen)))
        if _rand(gen) < final_prob:
            rows.append((s, final, -1, _randn(gen)))
    if ensure_final and not any(r[2] == -1 for r in rows):
        rows.append((final - 1, final, -1, _randn(gen)))
    if not any(r[0] == 0 for r in rows):
        rows.append((0, 0 if final == 1 else 1, _randint(gen, 0, num_labels), _randn(gen)))
    return _build(rows, num_states, gen, dtype, with_aux, shuffle)


def random_log_probs(gen: torch.Generator, B: int, T: int, V: int,
                     dtype: torch.dtype = torch.float32, normalized: bool = True
                     ) -> torch.Tensor:
    x = torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    if normalized:
        x = x.log_softmax(-1)
    return x.to(dtype)


# ------------------------------------------------------------------ ARPA
def parse_arpa(text: str) -> tuple[int, dict[tuple[str, ...], tuple[float, float]]]:
    """(order, {ngram: (log10 prob, log10 backoff or 0)}) from ARPA text."""
    table: dict[tuple[str, ...], tuple[float, float]] = {}
    order, section = 0, 0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("ngram "):
            order = int(line.split("=")[0].split()[1])
        elif line.startswith("\\") and line.endswith("-grams:"):
            section = int(line[1:].split("-")[0])
        elif line and section and not line.startswith("\\"):
            f = line.split()
            bow = float(f[section + 1]) if len(f) == section + 2 else 0.0
            table[tuple(f[1:section + 1])] = (float(f[0]), bow)
    return order, table


def graph_paths(graph, T: int) -> list[tuple[tuple[int, ...], float]]:
    """(labels, graph score) of every path with exactly T frame arcs then the -1 arc."""
    leaving: dict[int, list[tuple[int, int, float]]] = {}
    for (s, d, lab), w in zip(graph.arcs.tolist(), graph.scores.tolist()):
        leaving.setdefault(s, []).append((d, lab, w))
    out = []

    def walk(state, labels, score):
        for d, lab, w in leaving.get(state, []):
            if lab == -1:
                if len(labels) == T:
                    out.append((tuple(labels), score + w))
            elif len(labels) < T:
                walk(d, labels + [lab], score + w)
    walk(0, [], 0.0)
    return out


# ------------------------------------------------------------------ segment lattices
@cache
def compositions(n: int, D: int) -> tuple[tuple[int, ...], ...]:
    """Every tuple of durations in 1..D summing to n (n == 0: none, no segmentation)."""
    if n == 0:
        return ()
    out = []

    def rec(rest, acc):
        if rest == 0:
            out.append(tuple(acc))
            return
        for d in range(1, min(D, rest) + 1):
            rec(rest - d, acc + [d])

    rec(n, [])
    return tuple(out)


@cache
def all_segmentations(n: int, D: int, L: int) -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Every segmentation and labelling of n frames: tuples of (s, t, y)."""
    out = []
    for durs in compositions(n, D):
        bounds = [0]
        for d in durs:
            bounds.append(bounds[-1] + d)
        for ys in itertools.product(range(L), repeat=len(durs)):
            out.append(tuple((bounds[i], bounds[i + 1], ys[i]) for i in range(len(durs))))
    return tuple(out)
