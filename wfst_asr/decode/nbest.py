"""N-best lists: the k best distinct word sequences of a lattice, scores split into parts.

:func:`nbest` finds, for each lattice, the ``k`` best *distinct* word sequences, exactly:

1. word-level determinization of the lattice pruned with a beam
   (:func:`~wfst_asr.decode.lattice.determinize_words`, tropical: each word sequence once, with
   the score of its best path), the beam widened until the list is certainly exact (see
   :func:`nbest`; determinizing a whole phone lattice can take millions of states);
2. OpenFst's n-shortest paths of that deterministic word acceptor (kaldifst): distinct paths are
   distinct word sequences;
3. for each sequence, the best lattice path that outputs it: the lattice, with each arc's index
   as its input label, composed with the sequence's linear acceptor, and the shortest path of
   that (kaldifst). Its arcs give the acoustic and LM scores of the entry, and its alignment.

Entries are sorted by total score (ties: the order of step 2). The top entry is the lattice's
best path (:func:`~wfst_asr.decode.lattice.best_paths`).

An :class:`Nbest` keeps, per entry, the word sequence, ``am_scores``, ``lm_scores`` (float64),
the lattice arcs of its best path, and any number of extra scores (:meth:`Nbest.add_scores`),
e.g. a neural LM's log-probabilities: :meth:`Nbest.total_scores` combines them with weights and
:meth:`Nbest.reranked` re-sorts. To rescore a batch with an LM, flatten the word sequences of
all lists (:func:`flatten`), score them, and give each list its slice back
(:func:`add_flat_scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from wfst_asr import _kaldi
from wfst_asr.fsa import Fsa, get_arc_post
from wfst_asr.fsa.io import to_kaldifst

from .lattice import _scales, best_paths, check_lattice, determinize_words, with_frame_levels

__all__ = ["Nbest", "add_flat_scores", "flatten", "nbest", "nbest_one"]


@dataclass
class Nbest:
    """The n-best list of one utterance (entries best first when made by :func:`nbest`).

    Attributes:
      word_seqs: the word ids of each entry.
      am_scores, lm_scores: float64 ``[K]``: sums of the lattice's ``am_scores`` /
        ``lm_scores`` along each entry's best path (LM scores unscaled).
      arc_paths: the lattice arcs of each entry's best path, in order (the final arc last).
      lm_scale, word_penalty: the weights :meth:`total_scores` uses by default.
      extra_scores: name -> float64 ``[K]`` (e.g. ``"nnlm"``), added by :meth:`add_scores`.
      exact: False when :func:`nbest` could not prove the list is the true k-best (see there).
    """

    word_seqs: list[list[int]]
    am_scores: torch.Tensor
    lm_scores: torch.Tensor
    arc_paths: list[list[int]]
    lm_scale: float = 1.0
    word_penalty: float = 0.0
    extra_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    exact: bool = True

    def __len__(self) -> int:
        return len(self.word_seqs)

    @property
    def num_words(self) -> torch.Tensor:
        """float64 ``[K]``: words per entry."""
        return torch.tensor([len(w) for w in self.word_seqs], dtype=torch.float64)

    def add_scores(self, name: str, scores: Sequence[float] | torch.Tensor) -> None:
        """Attach one more score per entry (e.g. a neural LM's log-probability)."""
        t = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
        if t.numel() != len(self):
            raise ValueError(f"{t.numel()} scores for an n-best list of {len(self)}")
        self.extra_scores[name] = t

    def total_scores(self, lm_scale: float | None = None, word_penalty: float | None = None,
                     weights: Mapping[str, float] | None = None) -> torch.Tensor:
        """``am + lm_scale * lm - word_penalty * num_words + sum_k weights[k] * extra[k]``
        (float64 ``[K]``); ``lm_scale`` / ``word_penalty`` default to the list's own."""
        s = self.lm_scale if lm_scale is None else lm_scale
        wp = self.word_penalty if word_penalty is None else word_penalty
        tot = self.am_scores + s * self.lm_scores - wp * self.num_words
        for name, w in (weights or {}).items():
            if name not in self.extra_scores:
                raise KeyError(f"no extra score {name!r} (have {sorted(self.extra_scores)})")
            tot = tot + w * self.extra_scores[name]
        return tot

    def reranked(self, lm_scale: float | None = None, word_penalty: float | None = None,
                 weights: Mapping[str, float] | None = None) -> Nbest:
        """A copy sorted by :meth:`total_scores` (best first; stable)."""
        tot = self.total_scores(lm_scale, word_penalty, weights)
        order = sorted(range(len(self)), key=lambda i: -float(tot[i]))
        idx = torch.tensor(order, dtype=torch.int64)
        return Nbest([self.word_seqs[i] for i in order], self.am_scores[idx],
                     self.lm_scores[idx], [self.arc_paths[i] for i in order], self.lm_scale,
                     self.word_penalty, {k: v[idx] for k, v in self.extra_scores.items()},
                     self.exact)

    def best(self, lm_scale: float | None = None, word_penalty: float | None = None,
             weights: Mapping[str, float] | None = None) -> list[int]:
        """The word sequence with the best :meth:`total_scores` (``[]`` for an empty list)."""
        if not len(self):
            return []
        tot = self.total_scores(lm_scale, word_penalty, weights)
        return list(self.word_seqs[int(torch.argmax(tot))])

    def alignment(self, lattice: Fsa, i: int) -> dict[str, list[int]]:
        """Entry ``i``'s path in ``lattice`` (the one it came from): ``labels`` (tokens),
        ``aux_labels`` and ``frame_idx`` of its arcs."""
        one = lattice[0] if lattice.is_vec else lattice
        idx = torch.tensor(self.arc_paths[i], dtype=torch.int64)
        return {"labels": one.labels[idx].tolist(), "aux_labels": one.aux_labels[idx].tolist(),
                "frame_idx": one.frame_idx[idx].tolist()}


def _empty(lm_scale: float, wp: float) -> Nbest:
    z = torch.zeros(0, dtype=torch.float64)
    return Nbest([], z, z.clone(), [], lm_scale, wp)


def arc_id_fst(one: Fsa):
    """ONE lattice as a kaldifst transducer: input label = arc index + 1, output label = word
    (``aux_labels``), cost = ``-scores``; -1 arcs -> final weights (the best one per state).
    Arc-sorted on output labels, ready to be composed on the word side."""
    kf = _kaldi.kaldifst()
    one = one.to("cpu")
    reg = one.labels != -1
    ids = torch.arange(1, one.num_arcs + 1, dtype=torch.int32)
    lab = torch.where(reg, ids, torch.full_like(ids, -1))
    arcs = torch.cat([one.arcs[:, :2], lab.unsqueeze(1)], dim=1)
    fsa = Fsa(arcs, one.scores.detach().float(), num_states=one.num_states,
              aux_labels=one.aux_labels.to(torch.int32), validate=False)
    fst = to_kaldifst(fsa, final_semiring="tropical", attach_symbols=False)
    kf.arcsort(fst, sort_type="olabel")
    return fst


def _best_final_arc(one: Fsa) -> dict[int, int]:
    """state -> its best -1 arc."""
    fin = (one.labels == -1).nonzero().squeeze(1).tolist()
    src = one.arcs[:, 0].tolist()
    sc = one.scores.detach().tolist()
    out: dict[int, int] = {}
    for a in fin:
        q = src[a]
        if q not in out or sc[a] > sc[out[q]]:
            out[q] = a
    return out


def constrained_best_paths(one: Fsa, word_seqs: Sequence[Sequence[int]], fst=None
                           ) -> list[list[int] | None]:
    """For each word sequence, the arcs of the best path of ONE lattice that outputs exactly
    it (final arc last), or None when no path does (composition with its linear acceptor and
    shortest path, kaldifst). ``fst``: :func:`arc_id_fst` of ``one``, if already made."""
    kf = _kaldi.kaldifst()
    one = one.to("cpu")
    fst = arc_id_fst(one) if fst is None else fst
    finals = _best_final_arc(one)
    dst = one.arcs[:, 1].tolist()
    out: list[list[int] | None] = []
    for ws in word_seqs:
        lin = kf.make_linear_acceptor([int(w) for w in ws])
        kf.arcsort(lin, sort_type="ilabel")
        comp = kf.compose(fst, lin, compose_filter="sequence", connect=True)
        if comp.num_states == 0:
            out.append(None)
            continue
        path = kf.shortest_path(comp, n=1)
        ok, isyms, _osyms, _w = kf.get_linear_symbol_sequence(path)
        if not ok or path.num_states == 0:
            out.append(None)
            continue
        arcs = [int(i) - 1 for i in isyms if i > 0]
        last = dst[arcs[-1]] if arcs else 0
        if last not in finals:
            out.append(None)
            continue
        out.append(arcs + [finals[last]])
    return out


def _candidates(one: Fsa, k: int, beam: float, max_states: int) -> list[list[int]] | None:
    """The k best word sequences of ``one`` pruned with ``beam`` (word-level determinization
    and n-shortest paths); None when the determinization grew past ``max_states``."""
    kf = _kaldi.kaldifst()
    try:
        det = determinize_words(one, beam=beam, max_states=max_states)[0]
    except RuntimeError:
        return None
    if det.num_arcs == 0:
        return []
    dfst = to_kaldifst(det, final_semiring="tropical", attach_symbols=False)
    seqs = []
    for p in kf.convert_nbest_to_vector(kf.shortest_path(dfst, n=int(k))):
        ok, isyms, _osyms, _w = kf.get_linear_symbol_sequence(p)
        if ok:
            seqs.append([int(w) for w in isyms if w > 0])
    return seqs


def nbest_one(lattice: Fsa, k: int, beam: float = 4.0, max_states: int = 10000) -> Nbest:
    """The n-best list of ONE lattice (see :func:`nbest`)."""
    one = (lattice[0] if lattice.is_vec else lattice).detach().to("cpu")
    check_lattice(one)
    lm_scale, wp = _scales(one)
    if one.num_arcs == 0 or k <= 0:
        return _empty(lm_scale, wp)
    post = get_arc_post(with_frame_levels(one.detach().as_vec()), log_semiring=False,
                        use_double_scores=True)
    post = post[torch.isfinite(post)]
    if post.numel() == 0:
        return _empty(lm_scale, wp)
    spread = float(-post.min())  # a beam >= spread keeps the whole lattice
    best_total = float(best_paths(one).scores.double().sum())
    fst = arc_id_fst(one)
    result: Nbest | None = None
    b = min(float(beam), spread) if beam is not None else spread
    while True:
        seqs = _candidates(one, k, b, max_states)
        if seqs is None:  # determinization too large: keep the last beam's list
            break
        result = _entries(one, seqs, fst, lm_scale, wp)
        whole = b >= spread
        kth_ok = len(result) >= k and float(result.total_scores()[k - 1]) >= \
            best_total - b - 1e-6 * (1.0 + abs(best_total))
        if whole or kth_ok:
            result.exact = True
            return result
        b = min(max(b * 1.5, b + 1.0), spread)
    if result is None:
        raise RuntimeError(f"n-best: the word-level determinization of the lattice pruned with "
                           f"beam {b:g} has more than {max_states} states; give a smaller beam "
                           "or a larger max_states")
    result.exact = False
    return result


def _entries(one: Fsa, seqs: list[list[int]], fst, lm_scale: float, wp: float) -> Nbest:
    """Entries for ``seqs`` with each one's best path in the whole lattice, sorted."""
    best = constrained_best_paths(one, seqs, fst)
    am = one.am_scores.detach().double()
    lm = one.lm_scores.detach().double()
    words, ams, lms, arcs = [], [], [], []
    for ws, path in zip(seqs, best):
        if path is None:  # cannot happen for sequences of the lattice; kept defensive
            continue
        idx = torch.tensor(path, dtype=torch.int64)
        words.append(ws)
        ams.append(float(am[idx].sum()))
        lms.append(float(lm[idx].sum()))
        arcs.append(path)
    nb = Nbest(words, torch.tensor(ams, dtype=torch.float64),
               torch.tensor(lms, dtype=torch.float64), arcs, lm_scale, wp)
    return nb.reranked()


def nbest(lattice: Fsa, k: int, beam: float = 4.0, max_states: int = 10000) -> list[Nbest]:
    """The ``k`` best distinct word sequences of each lattice of an FsaVec (fewer when the
    lattice has fewer), best first by the lattice's ``scores`` (see the module docstring).

    The word-level determinization runs on the lattice pruned with ``beam`` (``None``: the
    whole lattice), widened (x1.5 at least +1) until the list is certainly exact: every word
    sequence scoring within the beam of the best path is in the pruned lattice with its best
    path, so once the k-th entry scores within the beam (or nothing is pruned) no sequence can
    be missing. When the determinization outgrows ``max_states`` first, the last list is
    returned with ``exact=False`` (its entries within the last beam are still exact).
    """
    lat = lattice.as_vec()
    return [nbest_one(lat[i], k, beam, max_states) for i in range(lat.num_fsas)]


def flatten(nbests: Sequence[Nbest]) -> tuple[list[list[int]], list[int]]:
    """All word sequences of a batch of lists, and where each list starts (for an LM that
    scores a flat batch): ``(seqs, offsets)`` with ``len(offsets) == len(nbests) + 1``."""
    seqs: list[list[int]] = []
    offsets = [0]
    for nb in nbests:
        seqs.extend(nb.word_seqs)
        offsets.append(len(seqs))
    return seqs, offsets


def add_flat_scores(nbests: Sequence[Nbest], name: str, scores: Sequence[float] | torch.Tensor,
                    offsets: Sequence[int]) -> None:
    """Give each list its slice of ``scores`` (one per sequence of :func:`flatten`)."""
    t = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if t.numel() != offsets[-1]:
        raise ValueError(f"{t.numel()} scores for {offsets[-1]} n-best entries")
    for nb, a, b in zip(nbests, offsets[:-1], offsets[1:]):
        nb.add_scores(name, t[a:b])
