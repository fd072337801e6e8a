"""Transducer (RNN-T) search: greedy, modified beam search, and fast beam search in a graph.

* :func:`greedy_search` (batched) and :func:`beam_search` (modified beam search, one utterance
  at a time) over encoder outputs, as icefall's ``greedy_search`` / ``modified_beam_search``;
* :func:`fast_beam_search`: k2's / icefall's ``fast_beam_search``: the search runs in a
  decoding graph (:func:`trivial_graph`: any token sequence; an LG: the sequences of its
  lexicon and LM, scores added) and returns a lattice, an FsaVec of the engine;
  :func:`fast_beam_search_one_best` takes its best path (:func:`~wfst_asr.fsa.shortest_path`).

The models are duck-typed: ``decoder`` is a stateless prediction network
(:class:`~wfst_asr.models.StatelessDecoder`: attributes ``blank``, ``context_size``;
``decoder(context [N, context_size], need_pad=False) -> [N, 1, D]``) and ``joiner`` a
:class:`~wfst_asr.models.Joiner` (``encoder_proj``, ``decoder_proj``,
``joiner(enc, dec, project_input=False)``). ``encoder_out`` is ``[B, T, C]`` before the joiner's
projection, ``encoder_lens`` ``[B]`` (default: all ``T``); results come in batch order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wfst_asr.fsa import Fsa, shortest_path
from wfst_asr.graphs.topo import trivial_graph

__all__ = ["beam_search", "fast_beam_search", "fast_beam_search_one_best", "greedy_search"]


def _decoder_out(decoder: nn.Module, joiner: nn.Module, context: torch.Tensor
                 ) -> torch.Tensor:
    """Projected decoder output ``[N, J]`` for contexts ``[N, context_size]``."""
    return joiner.decoder_proj(decoder(context, need_pad=False)[:, -1])


@torch.no_grad()
def greedy_search(decoder: nn.Module, joiner: nn.Module, encoder_out: torch.Tensor,
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
def beam_search(decoder: nn.Module, joiner: nn.Module, encoder_out: torch.Tensor,
                encoder_lens=None, beam: int = 4) -> list[list[int]]:
    """Modified beam search (at most one label per frame), batched over the utterances.

    Hypotheses are distinct label sequences with the log-probability summed over their
    alignments so far. At each frame every hypothesis is extended by each output
    (blank: same sequence; a label: one longer), the ``beam`` best extensions of each utterance
    are kept, and extensions that reach the same sequence are merged (log-add). With
    ``beam=1`` this is :func:`greedy_search` with ``max_sym_per_frame=1``; with a beam as large
    as the number of extensions nothing is pruned and the result is the most probable label
    sequence under the one-label-per-frame model. Returns the best sequence of each utterance.

    One joiner call per frame for the hypotheses of all the utterances still running; the
    merging is plain Python over at most ``beam`` extensions per utterance.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    B, T, _ = encoder_out.shape
    dev = encoder_out.device
    lens = (torch.full((B,), T, dtype=torch.int64) if encoder_lens is None
            else torch.as_tensor(encoder_lens).to("cpu", torch.int64))
    enc_all = joiner.encoder_proj(encoder_out)
    blank, C = decoder.blank, decoder.context_size
    hyps: list[dict[tuple[int, ...], float]] = [{(): 0.0} for _ in range(B)]
    for t in range(int(lens.max()) if B else 0):
        active = [b for b in range(B) if int(lens[b]) > t]
        seqs = [list(hyps[b]) for b in active]
        n = [len(x) for x in seqs]
        H = max(n)
        flat = [s for x in seqs for s in x]
        ctx = torch.tensor([([blank] * C + list(s))[-C:] for s in flat], dtype=torch.int64,
                           device=dev)
        rows = torch.repeat_interleave(torch.arange(len(active)), torch.tensor(n))
        cols = torch.cat([torch.arange(k) for k in n])
        frame = enc_all[torch.tensor(active, device=dev), t].index_select(0, rows.to(dev))
        lp = joiner(frame, _decoder_out(decoder, joiner, ctx),
                    project_input=False).log_softmax(-1).double()
        lp = lp + torch.tensor([hyps[b][s] for b, x in zip(active, seqs) for s in x],
                               dtype=torch.float64, device=dev).unsqueeze(1)
        V = lp.shape[1]
        grid = lp.new_full((len(active), H, V), float("-inf"))
        grid[rows.to(dev), cols.to(dev)] = lp
        top = torch.topk(grid.reshape(len(active), H * V), min(beam, H * V), dim=1)
        for i, (vals, idxs) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            new: dict[tuple[int, ...], float] = {}
            for score, idx in zip(vals, idxs):
                if score == float("-inf"):  # fewer than `beam` extensions
                    continue
                s, v = seqs[i][idx // V], idx % V
                key = s if v == blank else s + (v,)
                if key in new:
                    hi, lo = max(new[key], score), min(new[key], score)
                    score = hi + math.log1p(math.exp(lo - hi))
                new[key] = score
            hyps[active[i]] = new
    return [list(max(h.items(), key=lambda kv: kv[1])[0]) for h in hyps]


# ----------------------------------------------------------------------------- fast beam search
class _Graph:
    """The tensors :func:`fast_beam_search` reads from a decoding graph (arcs sorted by source;
    label -1 arcs split off as per-state final scores)."""

    def __init__(self, graph: Fsa, device: torch.device, vocab_size: int) -> None:
        if graph.is_vec:
            if graph.num_fsas != 1:
                raise ValueError("fast_beam_search takes one decoding graph (an Fsa), got an "
                                 f"FsaVec of {graph.num_fsas}")
            graph = graph[0]
        if graph.num_states < 1:
            raise ValueError("the decoding graph is empty")
        g = graph.detach().to(device)
        lab = g.labels.long()
        if bool((lab == 0).any()):
            raise ValueError("the decoding graph has input epsilon (label 0) arcs: every arc "
                             "must consume a token (remove them, e.g. "
                             "wfst_asr.graphs.compile.remove_input_epsilons + Connect)")
        if lab.numel() and int(lab.max()) >= vocab_size:
            raise ValueError(f"the decoding graph has label {int(lab.max())}, but the model "
                             f"outputs {vocab_size} tokens (disambiguation symbols left?)")
        src, dst = g.arcs[:, 0].long(), g.arcs[:, 1].long()
        scores = g.scores.to(torch.float64)
        aux = g.aux_labels.long() if g.has_attr("aux_labels") else lab
        S = g.num_states
        final = lab == -1
        self.final_score = torch.full((S,), float("-inf"), dtype=torch.float64, device=device)
        self.final_score.scatter_reduce_(0, src[final], scores[final], "amax")
        keep = (~final).nonzero().squeeze(1)  # arcs stay sorted by source
        self.src, self.dst, self.label = src[keep], dst[keep], lab[keep]
        self.score, self.aux = scores[keep], aux[keep]
        counts = torch.bincount(self.src, minlength=S)
        self.begin = torch.cumsum(counts, 0) - counts
        self.count = counts
        self.num_states = S


def _rank_in_group(group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The rank of each element by ``score`` (descending; 0 = best) among the elements of its
    ``group`` (ties: lower index first)."""
    n = score.numel()
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    g = group[order]
    counts = torch.bincount(g)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64, device=score.device)
    rank[order] = torch.arange(n, device=score.device) - first[g]
    return rank


def _unique_rows(rows: torch.Tensor, radix: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(rows, dim=0, return_inverse=True)`` for non-negative int64 ``rows [N, K]``
    with column ``k`` below ``radix[k]``: the rows packed into one int64 key each (same order:
    lexicographic), several times faster than the row-wise unique; falls back to it when the
    keys would not fit."""
    if math.prod(radix) >= 1 << 62:
        return torch.unique(rows, dim=0, return_inverse=True)
    key = rows[:, 0]
    for k in range(1, rows.shape[1]):
        key = key * radix[k] + rows[:, k]
    uniq, inv = torch.unique(key, return_inverse=True)
    n = rows.shape[0]
    first = torch.full((uniq.numel(),), n, dtype=torch.int64, device=rows.device)
    first.scatter_reduce_(0, inv, torch.arange(n, device=rows.device), "amin")
    return rows[first], inv


def _group_max(index: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.full((size,), float("-inf"), dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, index, values, "amax")


@torch.no_grad()
def fast_beam_search(decoder: nn.Module, joiner: nn.Module, encoder_out: torch.Tensor,
                     encoder_lens=None, graph: Fsa | None = None, beam: float = 20.0,
                     max_states: int = 64, max_contexts: int = 8) -> Fsa:
    """k2's fast beam search (``RnntDecodingStreams``, icefall's ``fast_beam_search``):
    one-label-per-frame transducer search constrained by a decoding graph, returning lattices.

    A hypothesis at frame ``t`` is a pair (graph state ``s``, decoder context ``c``: the last
    ``context_size`` labels), with the best score of the partial paths that reach it. At each
    frame the joiner scores every hypothesis's context; then

    * blank: ``(s, c) -> (s, c)``, score ``log p(blank)``;
    * each graph arc ``s -> s'`` with label ``v`` (> 0) and score ``g``: ``(s, c) -> (s',
      c[1:] + v)``, score ``log p(v) + g``;

    the extensions more than ``beam`` below the utterance's best are dropped; those reaching the
    same (graph state, context) become one hypothesis (max); the ``max_contexts`` best contexts
    and then the ``max_states`` best hypotheses are kept. After the last frame each hypothesis
    takes the score of its graph state's final arc (-1); states without one end no path.

    Args:
      graph: the decoding graph, an :class:`~wfst_asr.fsa.Fsa` (tokens in, ``aux_labels`` out,
        e.g. an LG: words), start state 0, no input epsilons (-1 arcs into the final state);
        scores are added as they are (scale them first, e.g. with
        :func:`~wfst_asr.decode.scale_graph`). Default: :func:`trivial_graph`.
      beam: score beam (natural log) per frame; max_states, max_contexts: per utterance and
        frame (defaults: icefall's decoding defaults).

    Returns:
      The lattices, an FsaVec with one FSA per utterance: a state per surviving hypothesis and
      frame (levels = frames, set for the engine) and a final state; every surviving extension
      between surviving hypotheses is an arc, with ``labels`` = the token (0 = blank, -1 on the
      final arcs), ``aux_labels`` = the graph arc's output (0 on blanks), scores = acoustic +
      graph. Its best path (:func:`~wfst_asr.fsa.shortest_path`) is the best hypothesis; an
      utterance whose search ends in no final graph state has an empty lattice path set.
    """
    if beam <= 0 or max_states < 1 or max_contexts < 1:
        raise ValueError(f"need beam > 0, max_states >= 1, max_contexts >= 1; got {beam}, "
                         f"{max_states}, {max_contexts}")
    B, T, _ = encoder_out.shape
    dev = encoder_out.device
    lens = (torch.full((B,), T, dtype=torch.int64) if encoder_lens is None
            else torch.as_tensor(encoder_lens).to("cpu", torch.int64).reshape(-1))
    if lens.numel() != B or (B and (int(lens.min()) < 0 or int(lens.max()) > T)):
        raise ValueError(f"encoder_lens must be [B]={B} values in [0, {T}], got {lens.tolist()}")
    V = getattr(decoder, "vocab_size", None) or joiner.output_linear.out_features
    g = _Graph(graph if graph is not None else trivial_graph(V), dev, V)
    blank, C = decoder.blank, decoder.context_size
    enc = joiner.encoder_proj(encoder_out)
    lens_d = lens.to(dev)
    # hypotheses at the current frame
    h_stream = torch.arange(B, device=dev)
    h_state = torch.zeros(B, dtype=torch.int64, device=dev)
    h_ctx = torch.full((B, C), blank, dtype=torch.int64, device=dev)
    h_score = torch.zeros(B, dtype=torch.float64, device=dev)
    h_id = torch.arange(B, device=dev)  # lattice state ids (global, in creation order)
    n_ids = B
    id_stream, id_frame = [h_stream], [torch.zeros(B, dtype=torch.int64, device=dev)]
    arcs: list[tuple[torch.Tensor, ...]] = []  # (src id, dst id, label, aux, score)
    done: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (id, state, stream)
    for t in range(T + 1):
        ended = lens_d[h_stream] <= t
        if bool(ended.any()):
            done.append((h_id[ended], h_state[ended], h_stream[ended]))
            live = (~ended).nonzero().squeeze(1)
            h_stream, h_state, h_ctx = h_stream[live], h_state[live], h_ctx[live]
            h_score, h_id = h_score[live], h_id[live]
        H = h_stream.numel()
        if H == 0 or t == T:
            break
        # joiner log-probs once per distinct (utterance, context)
        keys, inv = _unique_rows(torch.cat([h_stream.unsqueeze(1), h_ctx], 1), [B] + [V] * C)
        dec = joiner.decoder_proj(decoder(keys[:, 1:], need_pad=False)[:, -1])
        lp = joiner(enc[keys[:, 0], t], dec, project_input=False).log_softmax(-1).double()
        # extensions: blank, then one per graph arc leaving each hypothesis's state
        cnt = g.count[h_state]
        rep = torch.repeat_interleave(torch.arange(H, device=dev), cnt)
        first = torch.cumsum(cnt, 0) - cnt
        arc = g.begin[h_state][rep] + torch.arange(rep.numel(), device=dev) - first[rep]
        lab = g.label[arc]
        x_src = torch.cat([torch.arange(H, device=dev), rep])
        x_label = torch.cat([torch.full((H,), blank, dtype=torch.int64, device=dev), lab])
        x_aux = torch.cat([torch.zeros(H, dtype=torch.int64, device=dev), g.aux[arc]])
        x_step = torch.cat([lp[inv, blank], lp[inv[rep], lab] + g.score[arc]])
        x_state = torch.cat([h_state, g.dst[arc]])
        x_ctx = torch.cat([h_ctx, torch.cat([h_ctx[rep, 1:], lab.unsqueeze(1)], 1)])
        x_stream = h_stream[x_src]
        x_score = h_score[x_src] + x_step
        # beam
        best = _group_max(x_stream, x_score, B)
        ok = (x_score >= best[x_stream] - beam).nonzero().squeeze(1)
        x_src, x_label, x_aux, x_step = x_src[ok], x_label[ok], x_aux[ok], x_step[ok]
        x_state, x_ctx, x_stream, x_score = x_state[ok], x_ctx[ok], x_stream[ok], x_score[ok]
        # merge into hypotheses (utterance, graph state, context), then keep the best
        hyp_keys, x_hyp = _unique_rows(torch.cat([x_stream.unsqueeze(1), x_state.unsqueeze(1),
                                                  x_ctx], 1), [B, g.num_states] + [V] * C)
        n_hyp = hyp_keys.shape[0]
        n_score = _group_max(x_hyp, x_score, n_hyp)
        n_stream = hyp_keys[:, 0]
        ctx_keys, n_ctx = _unique_rows(torch.cat([n_stream.unsqueeze(1), hyp_keys[:, 2:]], 1),
                                       [B] + [V] * C)
        ctx_score = _group_max(n_ctx, n_score, ctx_keys.shape[0])
        keep = _rank_in_group(ctx_keys[:, 0], ctx_score)[n_ctx] < max_contexts
        rank = torch.full((n_hyp,), max_states, dtype=torch.int64, device=dev)
        kept = keep.nonzero().squeeze(1)
        rank[kept] = _rank_in_group(n_stream[kept], n_score[kept])
        survive = rank < max_states
        new_id = torch.full((n_hyp,), -1, dtype=torch.int64, device=dev)
        sv = survive.nonzero().squeeze(1)
        new_id[sv] = n_ids + torch.arange(sv.numel(), device=dev)
        n_ids += sv.numel()
        a = survive[x_hyp].nonzero().squeeze(1)
        arcs.append((h_id[x_src[a]], new_id[x_hyp[a]], x_label[a], x_aux[a], x_step[a]))
        h_stream, h_state, h_ctx = n_stream[sv], hyp_keys[sv, 1], hyp_keys[sv, 2:]
        h_score, h_id = n_score[sv], new_id[sv]
        id_stream.append(h_stream)
        id_frame.append(torch.full_like(h_stream, t + 1))
    return _lattice(arcs, done, g, torch.cat(id_stream), torch.cat(id_frame), lens_d, B)


def _lattice(arcs, done, g: _Graph, id_stream: torch.Tensor, id_frame: torch.Tensor,
             lens: torch.Tensor, B: int) -> Fsa:
    """The FsaVec of :func:`fast_beam_search` from its arcs between global state ids."""
    dev = id_stream.device
    n_ids = id_stream.numel()
    # local numbering: ids are created frame by frame, so per utterance they are in order
    per = torch.bincount(id_stream, minlength=B)
    order = torch.argsort(id_stream, stable=True)
    offs = torch.cumsum(per, 0) - per
    local = torch.empty(n_ids, dtype=torch.int64, device=dev)
    local[order] = torch.arange(n_ids, device=dev) - offs[id_stream[order]]
    if done:
        f_id, f_state, f_stream = (torch.cat(x) for x in zip(*done))
    else:
        f_id = f_state = f_stream = torch.zeros(0, dtype=torch.int64, device=dev)
    f_score = g.final_score[f_state]
    fin = torch.isfinite(f_score).nonzero().squeeze(1)
    f_id, f_stream, f_score = f_id[fin], f_stream[fin], f_score[fin]
    src_id = torch.cat([a[0] for a in arcs] + [f_id])
    stream = id_stream[src_id]
    src = local[src_id]
    inner = torch.cat([a[1] for a in arcs]) if arcs else src_id.new_zeros(0)
    dst = torch.cat([local[inner], per[f_stream]])
    label = torch.cat([a[2] for a in arcs] + [torch.full_like(f_id, -1)])
    aux = torch.cat([a[3] for a in arcs] + [torch.full_like(f_id, -1)])
    score = torch.cat([a[4] for a in arcs] + [f_score])
    srt = torch.argsort(stream * (n_ids + 1) + src, stable=True)
    counts = torch.bincount(stream, minlength=B)
    splits = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    lat = Fsa(torch.stack([src[srt], dst[srt], label[srt]], 1).to(torch.int32),
              score[srt].to(torch.float32), num_states=per + 1, arc_splits=splits,
              validate=False, aux_labels=aux[srt].to(torch.int32))
    # levels: the frame of each state, then T_b + 1 for the final state (global numbering:
    # utterance b's states in creation order, then its final state)
    state_off = torch.cumsum(per + 1, 0) - (per + 1)
    lv = torch.empty(int((per + 1).sum()), dtype=torch.int64, device=dev)
    lv[state_off[id_stream] + local] = id_frame
    lv[state_off + per] = lens + 1
    lat.set_state_levels(lv, check=False)
    return lat


def fast_beam_search_one_best(decoder: nn.Module, joiner: nn.Module, encoder_out: torch.Tensor,
                              encoder_lens=None, graph: Fsa | None = None, beam: float = 20.0,
                              max_states: int = 64, max_contexts: int = 8,
                              output: str = "tokens") -> list[list[int]]:
    """The best path of each :func:`fast_beam_search` lattice: its tokens (``output="tokens"``,
    blanks dropped) or its graph outputs (``"aux_labels"``: the words of an LG; 0s dropped).
    An utterance whose lattice has no complete path gives ``[]``."""
    if output not in ("tokens", "aux_labels"):
        raise ValueError(f"output must be 'tokens' or 'aux_labels', got {output!r}")
    lat = fast_beam_search(decoder, joiner, encoder_out, encoder_lens, graph, beam=beam,
                           max_states=max_states, max_contexts=max_contexts)
    best = shortest_path(lat)
    vals = (best.labels if output == "tokens" else best.aux_labels).detach().cpu()
    splits = best.arc_splits.cpu().tolist()
    out = []
    for i in range(best.num_fsas):
        v = vals[splits[i]:splits[i + 1]]
        out.append(v[v > 0].tolist())
    return out
