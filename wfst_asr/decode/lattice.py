"""Lattices: decoding graphs intersected with network output, kept for later passes.

A lattice is an :class:`~wfst_asr.fsa.Fsa` (an FsaVec, one FSA per utterance) made by
:func:`get_lattice` with :func:`~wfst_asr.fsa.intersect_dense_pruned`. Every arc but the final
ones consumes one frame; the states of an utterance are numbered frame by frame, so every path
to a state has the same number of frames. Per arc:

=================  ===========================================================================
``labels``         the network output id (token; 0 = blank), -1 on the arcs into the final state
``aux_labels``     the graph's output label: a word id, 0 = no word (epsilon), -1 on final arcs
``am_scores``      the acoustic score: ``log_probs[utt, frame, label]`` (0 on final arcs)
``lm_scores``      the graph score of the arc, unscaled (LM, plus any lexicon / topology
                   weights of the graph), as in icefall's ``lm_scores``
``frame_idx``      the frame the arc consumes (the number of frames on final arcs)
``scores``         ``lm_scale * lm_scores - word_penalty * [aux_labels > 0] + am_scores``
=================  ===========================================================================

and the plain attributes ``lm_scale`` and ``word_penalty`` that made ``scores``. Changing them
(:func:`rescale`) only recomputes ``scores``. A lattice just out of :func:`get_lattice` also
has ``graph_arc_idx`` (the arc of the graph) and the graph's symbol tables (``labels_sym``,
``aux_labels_sym``) when it has them; neither is saved (:mod:`.lattice_io`).

An utterance whose search found no complete path (nothing survived the beam) has an empty FSA
(no states): :func:`is_empty`.

Operations: :func:`prune` (arcs within a beam of the best path), :func:`determinize_words`
(one path per word sequence, OpenFst's DeterminizeStar on the word projection),
:func:`best_paths` / :func:`best_word_sequences`, word alignments and times
(:func:`word_alignment`), frame-level word posteriors and per-word confidences
(:func:`frame_word_posteriors`, :func:`word_posteriors`, :func:`word_confidences`) and CTM lines
(:func:`ctm_lines`, :func:`lattice_to_ctm`). N-best lists are in :mod:`.nbest`, rescoring and
oracle error rates in :mod:`.rescore`, files in :mod:`.lattice_io`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    create_fsa_vec,
    get_arc_post,
    get_backward_scores,
    get_forward_scores,
    intersect_dense_pruned,
    ops,
    shortest_path,
)

from .ctc import _check_inputs, aux_label_sequences, scale_graph, single_graph

__all__ = [
    "LATTICE_ATTRS",
    "WordSpan",
    "best_paths",
    "best_word_sequences",
    "check_lattice",
    "combine_scores",
    "ctm_lines",
    "determinize_words",
    "frame_levels",
    "frame_word_posteriors",
    "get_lattice",
    "is_empty",
    "lattice_stats",
    "lattice_to_ctm",
    "num_frames",
    "prune",
    "rescale",
    "with_frame_levels",
    "word_acceptor",
    "word_alignment",
    "word_confidences",
    "word_posteriors",
]

#: Per-arc tensors every lattice has (besides ``arcs`` / ``labels`` and ``scores``).
LATTICE_ATTRS = ("aux_labels", "am_scores", "lm_scores", "frame_idx")


# ---------------------------------------------------------------------- construction
def combine_scores(am_scores: torch.Tensor, lm_scores: torch.Tensor, aux_labels: torch.Tensor,
                   lm_scale: float, word_penalty: float) -> torch.Tensor:
    """``lm_scale * lm - word_penalty * [aux > 0] + am``, in the order (and float32 rounding)
    of :func:`~wfst_asr.decode.scale_graph` followed by the intersection, so a lattice's
    ``scores`` are bitwise those of the search."""
    g = lm_scores
    if lm_scale != 1.0:
        g = g * lm_scale
    if word_penalty != 0.0:
        g = g - word_penalty * (aux_labels > 0).to(g.dtype)
    return g + am_scores


def get_lattice(graph: Fsa, log_probs: torch.Tensor, lens: torch.Tensor | Sequence[int],
                search_beam: float = 20.0, output_beam: float = 8.0,
                min_active_states: int = 30, max_active_states: int = 10000,
                lm_scale: float = 1.0, word_penalty: float = 0.0) -> Fsa:
    """Lattices of a batch: ``graph`` intersected with the network output, beam-pruned.

    Args:
      graph: one decoding graph with ``aux_labels`` (HLG / TLG: words; ``ctc_topo``: tokens);
        labels = network output ids (0 = blank), -1 on arcs into the final state.
      log_probs: ``[B, T, V]`` network log-probs; ``lens`` ``[B]`` valid frames.
      search_beam, min_active_states, max_active_states: the frame-by-frame search
        (:func:`~wfst_asr.fsa.intersect_dense_pruned`).
      output_beam: arcs kept are on a path within this of the best path (icefall's default 8).
      lm_scale, word_penalty: the search (and the lattice's ``scores``) use graph scores times
        ``lm_scale`` and ``word_penalty`` off every word, as :func:`~wfst_asr.decode.one_best`;
        ``am_scores`` / ``lm_scores`` are kept unscaled, so :func:`rescale` can change them.
        The beams are in units of the scaled total.

    Returns:
      An FsaVec of ``B`` lattices (see the module docstring); an utterance without a complete
      path gets an empty FSA. Detached from autograd.
    """
    lens_t = _check_inputs(log_probs, lens)
    graph = single_graph(graph, "get_lattice")
    B = log_probs.shape[0]
    lp = log_probs.detach()
    g = scale_graph(graph, lm_scale, word_penalty).to(lp.device)
    segs = torch.stack([torch.arange(B), torch.zeros(B, dtype=torch.int64), lens_t], dim=1)
    dense = DenseFsaVec(lp, segs.to(torch.int32))
    lat = intersect_dense_pruned(g, dense, search_beam, output_beam, min_active_states,
                                 max_active_states).detach()
    garc = lat.graph_arc_idx.long()
    lm = graph.scores.detach().to(lp.device, torch.float32).index_select(0, garc)
    lab = lat.labels.long()
    _B, T, V = lp.shape
    # final arcs (label -1, frame = the utterance's length) consume no frame: acoustic score 0
    row = (lat.arc_fsa * T + lat.frame_idx.long().clamp(max=max(T - 1, 0))) * V
    am = lp.reshape(-1).index_select(0, row + lab.clamp(min=0)).to(torch.float32) \
        if lp.numel() else lm.new_zeros(lm.shape)
    am = torch.where(lab >= 0, am, 0.0)
    aux = lat.aux_labels.to(torch.int32)
    lat.aux_labels = aux
    lat.am_scores = am
    lat.lm_scores = lm
    lat.scores = combine_scores(am, lm, aux, lm_scale, word_penalty)
    lat.lm_scale = float(lm_scale)
    lat.word_penalty = float(word_penalty)
    return lat


def frame_levels(lattice: Fsa) -> torch.Tensor | None:
    """int64 ``[S]``: each state's frame (the ``frame_idx`` of the arcs leaving it; the final
    state one past the last frame), a topological layering of a lattice's states (every arc
    goes from frame ``t`` to ``t + 1``), or None when the arcs' ``frame_idx`` do not form one
    (then Kahn's algorithm has to find the levels)."""
    S = lattice.num_states
    lv = torch.zeros(S, dtype=torch.int64, device=lattice.device)
    if lattice.num_arcs == 0 or not lattice.has_attr("frame_idx"):
        return lv if lattice.num_arcs == 0 else None
    f = lattice.frame_idx.long()
    src, dst = lattice.src_global, lattice.dst_global
    lv.scatter_(0, src, f)
    lv.scatter_(0, dst, f + 1)
    if bool((lv[src] != f).any()) or bool((lv[dst] != f + 1).any()) or int(f.min()) < 0:
        return None
    return lv


def with_frame_levels(fsa: Fsa, lattice: Fsa | None = None) -> Fsa:
    """``fsa`` with its state levels set (:meth:`~wfst_asr.fsa.Fsa.set_state_levels`) to the
    frame layering of ``lattice`` (default: ``fsa`` itself; another FSA over the same states,
    e.g. :func:`word_acceptor`'s), so that best paths, pruning and posteriors skip Kahn's
    algorithm; ``fsa`` unchanged when the frames do not layer the states. Returns ``fsa``."""
    lv = frame_levels(fsa if lattice is None else lattice)
    if lv is not None and lv.numel() == fsa.num_states:
        fsa.set_state_levels(lv, check=False)
    return fsa


def check_lattice(lattice: Fsa) -> None:
    """ValueError unless ``lattice`` has the per-arc attributes of a lattice."""
    missing = [k for k in LATTICE_ATTRS if not lattice.has_attr(k)]
    if missing:
        raise ValueError(f"not a lattice: no {', '.join(missing)} (make lattices with "
                         "wfst_asr.decode.get_lattice)")


def _scales(lattice: Fsa) -> tuple[float, float]:
    lm_scale = lattice.lm_scale if lattice.has_attr("lm_scale") else 1.0
    wp = lattice.word_penalty if lattice.has_attr("word_penalty") else 0.0
    return float(lm_scale), float(wp)


def rescale(lattice: Fsa, lm_scale: float, word_penalty: float = 0.0) -> Fsa:
    """The same lattice with ``scores = lm_scale * lm_scores - word_penalty * [word] + am``.

    Tensors other than ``scores`` are shared with ``lattice``, which is unchanged.
    """
    check_lattice(lattice)
    out = lattice.detach()
    out.scores = combine_scores(out.am_scores, out.lm_scores, out.aux_labels, lm_scale,
                                word_penalty)
    out.lm_scale = float(lm_scale)
    out.word_penalty = float(word_penalty)
    return out


def is_empty(lattice: Fsa) -> torch.Tensor:
    """bool ``[N]``: the utterances without any arc (the search found no complete path)."""
    lattice = lattice.as_vec()
    return (lattice.arc_splits[1:] - lattice.arc_splits[:-1]) == 0


def num_frames(lattice: Fsa) -> torch.Tensor:
    """int64 ``[N]``: frames of each utterance (the ``frame_idx`` of its final arcs; 0 when
    empty)."""
    lattice = lattice.as_vec()
    out = torch.zeros(lattice.num_fsas, dtype=torch.int64, device=lattice.device)
    fin = lattice.labels == -1
    if bool(fin.any()):
        out.scatter_reduce_(0, lattice.arc_fsa[fin], lattice.frame_idx[fin].long(), "amax")
    return out


def lattice_stats(lattice: Fsa) -> dict[str, torch.Tensor]:
    """Per utterance: ``frames``, ``states``, ``arcs`` and ``arcs_per_frame`` (float)."""
    lattice = lattice.as_vec()
    frames = num_frames(lattice)
    arcs = lattice.arc_splits[1:] - lattice.arc_splits[:-1]
    return {"frames": frames, "states": lattice.num_states_per_fsa.clone(), "arcs": arcs,
            "arcs_per_frame": arcs.double() / frames.clamp(min=1).double()}


# ---------------------------------------------------------------------- pruning, best paths
def prune(lattice: Fsa, beam: float) -> Fsa:
    """Keep the arcs on a path whose score is within ``beam`` of the best path.

    Forward-backward in the tropical semiring (float64): an arc is kept when the best path
    through it scores ``>= best - beam``; every arc of such a path is then kept too, so the
    result has no dead ends. States are renumbered in their old order (start 0, final last).
    Per-arc attributes follow; empty lattices stay empty.
    """
    if beam < 0:
        raise ValueError(f"beam must be >= 0, got {beam}")
    lat = lattice.as_vec()
    if lat.num_arcs == 0:
        return lat.clone()
    post = get_arc_post(with_frame_levels(lat.detach()), log_semiring=False,
                        use_double_scores=True)
    keep = torch.isfinite(post) & (post >= -beam - 1e-9 * (1 + post.abs()))
    idx = keep.nonzero().squeeze(1)
    used = torch.zeros(lat.num_states, dtype=torch.bool, device=lat.device)
    used[lat.src_global[idx]] = True
    used[lat.dst_global[idx]] = True
    new_id = torch.cumsum(used.long(), 0) - 1  # global -> index among the kept states
    counts = torch.zeros(lat.num_fsas, dtype=torch.int64, device=lat.device)
    counts.scatter_add_(0, lat.state_fsa()[used], torch.ones_like(new_id[used]))
    first = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
    fsa_of = lat.arc_fsa[idx]
    src = new_id[lat.src_global[idx]] - first[fsa_of]
    dst = new_id[lat.dst_global[idx]] - first[fsa_of]
    arcs = torch.stack([src, dst, lat.labels[idx].long()], dim=1).to(torch.int32)
    splits = torch.cat([counts.new_zeros(1),
                        torch.bincount(fsa_of, minlength=lat.num_fsas).cumsum(0)])
    return lat.index_arcs(idx, arcs, splits, counts)


def best_paths(lattice: Fsa) -> Fsa:
    """The best path (by ``scores``) of each lattice: linear FSAs with the lattice's per-arc
    attributes (:func:`~wfst_asr.fsa.shortest_path`); empty for an empty lattice."""
    return shortest_path(with_frame_levels(lattice.as_vec().detach()))


def best_word_sequences(lattice: Fsa) -> list[list[int]]:
    """The words (``aux_labels`` > 0) of each lattice's best path."""
    return aux_label_sequences(best_paths(lattice))


def word_acceptor(lattice: Fsa) -> Fsa:
    """The output projection of ONE lattice: an acceptor with labels = ``aux_labels`` (0 =
    epsilon, -1 on final arcs) and the lattice's ``scores`` (float32); same states and arcs."""
    one = lattice[0] if lattice.is_vec else lattice
    aux = one.aux_labels.to(torch.int32)
    lab = torch.where(one.labels == -1, torch.full_like(aux, -1), aux)
    arcs = torch.cat([one.arcs[:, :2], lab.unsqueeze(1)], dim=1)
    acc = Fsa(arcs, one.scores.detach().float(), num_states=one.num_states, validate=False)
    return with_frame_levels(acc, one)


def determinize_words(lattice: Fsa, beam: float | None = None, max_states: int = -1) -> Fsa:
    """Word-level determinization: one path per distinct word sequence.

    The output projection (:func:`word_acceptor`) of each lattice goes through Kaldi's
    DeterminizeStar (epsilon removal and determinization in one step, kaldifst) in the tropical
    semiring: each word sequence keeps the score of its best path, as Kaldi's
    ``lattice-determinize`` keeps the best path. Only the total ``scores`` survive (OpenFst
    weights are one number here): the acoustic / LM split of a word sequence's best path is what
    :func:`wfst_asr.decode.nbest.nbest` gives. (DeterminizeStar's log-semiring mode does not give
    the log-sum of the paths of a word sequence on such lattices, so it is not offered.)

    The result can be exponentially larger than the lattice (a phone lattice 50 arcs per frame
    deep easily gives millions of arcs): ``beam`` prunes each lattice first (:func:`prune`;
    as Kaldi's ``lattice-determinize-pruned``), ``max_states`` (> 0) stops with RuntimeError
    when the result grows past it.

    Returns:
      An FsaVec of word acceptors (labels = word ids, -1 on final arcs); an empty lattice
      gives an empty FSA.
    """
    lat = lattice.as_vec().detach().to("cpu")
    if beam is not None:
        lat = prune(lat, beam)
    out = []
    for i in range(lat.num_fsas):
        one = lat[i]
        if one.num_arcs == 0:
            out.append(Fsa(torch.zeros(0, 3, dtype=torch.int32), num_states=0))
            continue
        out.append(ops.determinize_star(word_acceptor(one), max_states=max_states))
    return create_fsa_vec(out)


# ---------------------------------------------------------------------- times and posteriors
@dataclass(frozen=True)
class WordSpan:
    """A word of a path and its frames ``[start, end)`` (network output frames)."""

    word: int
    start: int
    end: int


def word_alignment(labels: Sequence[int], aux_labels: Sequence[int], frames: Sequence[int],
                   num_frames: int, trim_blank: bool = True) -> list[WordSpan]:
    """Word times of one path, from its arcs (labels, aux_labels, frame_idx) in path order.

    A word starts at the frame of the arc that outputs it and lasts until the next word starts
    (the last one until ``num_frames``); with ``trim_blank`` the blank (label 0) frames at the
    end of that stretch are left out (always keeping at least the first frame).
    """
    starts = [(int(f), int(w)) for lab, w, f in zip(labels, aux_labels, frames)
              if int(w) > 0 and int(lab) >= 0]
    blank = [False] * num_frames
    for lab, f in zip(labels, frames):
        if int(lab) == 0 and 0 <= int(f) < num_frames:
            blank[int(f)] = True
    out = []
    for k, (s, w) in enumerate(starts):
        e = starts[k + 1][0] if k + 1 < len(starts) else num_frames
        e = max(e, s + 1)
        if trim_blank:
            while e > s + 1 and e - 1 < num_frames and blank[e - 1]:
                e -= 1
        out.append(WordSpan(w, s, e))
    return out


def _topo_arc_order(one: Fsa) -> torch.Tensor:
    """Arc indices sorted by the topological level of their source state."""
    lv = one.state_levels()
    return torch.sort(lv[one.arcs[:, 0].long()], stable=True).indices


def frame_word_posteriors(lattice: Fsa, scale: float = 1.0) -> list[dict[int, float]]:
    """Frame-level word posteriors of ONE lattice: for each frame ``t``, ``{word: P}``, the
    posterior probability that the word active at ``t`` is ``word`` (Wessel et al.'s
    frame-based word posteriors).

    The word active at frame ``t`` on a path is the last word output at or before ``t`` (0 before
    the first word). Paths are weighted by ``exp(scale * scores)`` (``scale`` plays Kaldi's
    acoustic scale: ``0.1`` with ``lm_scale = 10`` is Kaldi's usual setting). Exact: a forward
    pass keeps, for each state, the log-weight of its prefixes per last word.
    """
    one = lattice[0] if lattice.is_vec else lattice
    T = int(num_frames(one)[0])
    out: list[dict[int, float]] = [{} for _ in range(T)]
    if one.num_arcs == 0:
        return out
    s = (one.scores.detach().double() * scale)
    f = with_frame_levels(Fsa(one.arcs, s, num_states=one.num_states, validate=False), one)
    alpha = get_forward_scores(f, log_semiring=True, use_double_scores=True).tolist()
    beta = get_backward_scores(f, log_semiring=True, use_double_scores=True).tolist()
    tot = alpha[one.num_states - 1]
    if not math.isfinite(tot):
        return out
    src = one.arcs[:, 0].tolist()
    dst = one.arcs[:, 1].tolist()
    lab = one.labels.tolist()
    aux = one.aux_labels.tolist()
    frm = one.frame_idx.tolist()
    sc = s.tolist()
    last: list[dict[int, float]] = [{} for _ in range(one.num_states)]
    last[0] = {0: 0.0}
    for a in _topo_arc_order(one).tolist():
        q, r, w = src[a], dst[a], aux[a]
        if not last[q]:
            continue
        if lab[a] == -1:
            continue
        post_base = sc[a] + beta[r] - tot
        t = frm[a]
        if w > 0:
            val = alpha[q] + sc[a]
            _logadd(last[r], w, val)
            if 0 <= t < T and math.isfinite(val + beta[r]):
                out[t][w] = out[t].get(w, 0.0) + math.exp(val + beta[r] - tot)
        else:
            for v, x in last[q].items():
                _logadd(last[r], v, x + sc[a])
                if 0 <= t < T:
                    p = x + post_base
                    if p > -745.0:
                        out[t][v] = out[t].get(v, 0.0) + math.exp(p)
    return out


def _logadd(d: dict[int, float], key: int, val: float) -> None:
    old = d.get(key)
    if old is None:
        d[key] = val
    else:
        m = max(old, val)
        d[key] = m + math.log1p(math.exp(-abs(old - val))) if math.isfinite(m) else m


def word_posteriors(lattice: Fsa, scale: float = 1.0) -> list[tuple[int, int, float]]:
    """``(word, start frame, posterior)`` of ONE lattice: the posterior of the paths that output
    ``word`` at that frame (the sum of the posteriors of such arcs; log semiring, paths weighted
    by ``exp(scale * scores)``), sorted by frame then word."""
    one = lattice[0] if lattice.is_vec else lattice
    if one.num_arcs == 0:
        return []
    s = one.scores.detach().double() * scale
    f = with_frame_levels(Fsa(one.arcs, s, num_states=one.num_states, validate=False), one)
    post = get_arc_post(f, log_semiring=True, use_double_scores=True).exp()
    sel = (one.aux_labels > 0) & (one.labels >= 0)
    acc: dict[tuple[int, int], float] = {}
    for w, t, p in zip(one.aux_labels[sel].tolist(), one.frame_idx[sel].tolist(),
                       post[sel].tolist()):
        acc[(t, w)] = acc.get((t, w), 0.0) + p
    return [(w, t, min(p, 1.0)) for (t, w), p in sorted(acc.items())]


def word_confidences(spans: Sequence[WordSpan], frame_posts: Sequence[dict[int, float]]
                     ) -> list[float]:
    """Confidence of each word of a path: the largest frame-level posterior of that word over
    its frames (``C_max``), from :func:`frame_word_posteriors`; in ``[0, 1]``."""
    out = []
    for sp in spans:
        best = 0.0
        for t in range(sp.start, min(sp.end, len(frame_posts))):
            best = max(best, frame_posts[t].get(sp.word, 0.0))
        out.append(min(best, 1.0))
    return out


def ctm_lines(utt: str, spans: Sequence[WordSpan], confidences: Sequence[float] | None = None,
              frame_shift: float = 0.01, subsampling: int = 1, words=None,
              channel: str = "1") -> list[str]:
    """CTM lines ``utt channel start duration word [confidence]`` (seconds, 2 decimals as
    Kaldi's ``lattice-to-ctm-conf`` / ``nbest-to-ctm``) for the words of one path.

    A network output frame lasts ``frame_shift * subsampling`` seconds. ``words``: a
    :class:`~wfst_asr.fsa.SymbolTable` to print words (else ids).
    """
    step = frame_shift * subsampling
    out = []
    for k, sp in enumerate(spans):
        w = str(words.get(sp.word)) if words is not None else str(sp.word)
        line = f"{utt} {channel} {sp.start * step:.2f} {(sp.end - sp.start) * step:.2f} {w}"
        if confidences is not None:
            line += f" {confidences[k]:.2f}"
        out.append(line)
    return out


def lattice_to_ctm(lattice: Fsa, utt: str, frame_shift: float = 0.01, subsampling: int = 1,
                   words=None, confidence: bool = True, posterior_scale: float = 1.0,
                   trim_blank: bool = True) -> list[str]:
    """CTM lines of the best path of ONE lattice, with per-word confidences
    (:func:`word_confidences`) unless ``confidence=False``; ``[]`` for an empty lattice."""
    one = lattice[0] if lattice.is_vec else lattice
    path = best_paths(one)
    if path.num_arcs == 0:
        return []
    T = int(num_frames(one)[0])
    spans = word_alignment(path.labels.tolist(), path.aux_labels.tolist(),
                           path.frame_idx.tolist(), T, trim_blank=trim_blank)
    confs = None
    if confidence:
        confs = word_confidences(spans, frame_word_posteriors(one, posterior_scale))
    return ctm_lines(utt, spans, confs, frame_shift, subsampling, words)
