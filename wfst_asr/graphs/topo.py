"""Topologies H for decoding-graph compilation: CTC (k2 style) and Kaldi HMMs.

:func:`make_topology` returns a :class:`Topology`: an :class:`~wfst_asr.fsa.Fsa` transducer
``H`` (``labels`` = what the network scores per frame, ``aux_labels`` = tokens, 0 = no token)
plus what is needed to use it.

CTC (``'ctc'``, ``'ctc-modified'``)
-----------------------------------
``H`` is :func:`wfst_asr.graphs.topo.ctc_topo` over tokens ``1 .. num_tokens`` (``tokens.txt`` ids;
disambiguation symbols excluded). Its input label 0 is *blank*, and every input label >= 0
consumes one frame. OpenFst reads 0 as epsilon, so the scheme (k2/icefall's) is: only LG is
determinized / epsilon-removed; H is composed with an LG that has *no* epsilon input arcs
(:func:`wfst_asr.graphs.compile.compile_hlg`), and no epsilon-sensitive operation is ever
applied to the input side of ``H o LG`` afterwards. In the composition, H's blank arcs
(``0:0``) only ever match as "H moves, LG stays", which is exactly their meaning, so blank may
share the id 0 with epsilon.

HMM (``'hmm-1state'``, ``'hmm-3state'``, ``'chain'``)
------------------------------------------------------
Kaldi topologies are built with ``kaldi_hmm_gmm`` (``HmmTopology``, a monophone
``ContextDependency``, ``TransitionModel``), so the *transition-ids* are exactly Kaldi's. Phones
are the token ids ``1 .. num_tokens``.

* ``hmm-1state``: one emitting state, self-loop and exit with probability 0.5 each;
* ``hmm-3state``: Kaldi's 3-state left-to-right phone (0.75 self-loop, 0.25 forward);
* ``chain``: Kaldi's chain topology: one emitting state with two pdf classes, forward pdf class
  0 on the first frame and self-loop pdf class 1 on the following frames (2 HMM states: the
  emitting one and the non-emitting final one).

``H``'s input labels are **transition-ids** (1-based, as Kaldi; 0 = epsilon) and its output
labels tokens (phones). Use :attr:`Topology.tid2pdf` (int64 ``[num_tids + 1]``, entry 0 = -1)
to turn network outputs over pdfs into per-transition-id scores (:func:`pdf_to_tid_log_probs`),
or relabel a graph over transition-ids (HCLG) with the network's output columns ``pdf + 1``
(:func:`pdf_output_graph`, the convention of :func:`wfst_asr.graphs.topo.pdf_topo`).

The H transducer is built here in Python from the ``TransitionModel``, because the
``kaldi_hmm_gmm`` builders (``get_h_transducer``, ``add_self_loops``, ``add_transition_probs``)
return/take an OpenFst type that its Python bindings do not register (``TypeError: Unregistered
type fst::VectorFst<...>``; kaldi_hmm_gmm 1.1.4). It is the graph Kaldi's mkgraph would give
with ``reorder=true`` self-loops, monophone context (C = identity):

* a central state ``0`` (start and final) between phones;
* the first frame of a phone is a forward transition out of HMM state 0 (aux_label = phone);
* after a forward transition ``s -> d`` come the self-loops of ``s`` (Kaldi's reordering: the
  self-loop of a state follows the transition that leaves it), then the transitions out of
  ``d``; when ``d`` is the final HMM state an epsilon arc (``0:0``) goes back to state 0.

Scores (log semiring weights): a self-loop of state ``s`` gets
``self_loop_scale * log p_loop(s)``; a forward transition ``s -> d`` gets
``transition_scale * log(p(s->d) / (1 - p_loop(s))) + self_loop_scale * log(1 - p_loop(s))``
(Kaldi's ``AddTransitionProbs`` then ``AddSelfLoops``). With both scales 1 these are the plain
log transition probabilities; Kaldi's mkgraph uses ``self_loop_scale=0.1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from wfst_asr.fsa import Fsa

__all__ = ["HMM_TOPOLOGY_TEXT", "TOPOLOGIES", "Topology", "ctc_topo", "hmm_output_id", "hmm_topo",
           "hmm_topology_text", "make_topology", "pdf_map", "pdf_output_graph",
           "pdf_to_tid_log_probs", "pdf_topo", "phone_pdfs", "trivial_graph"]

Device = str | torch.device | None

#: Known topology names for :func:`make_topology`.
TOPOLOGIES = ("ctc", "ctc-modified", "hmm-1state", "hmm-3state", "chain")

#: Kaldi ``<TopologyEntry>`` bodies (without ``<ForPhones>``) of the HMM topologies.
HMM_TOPOLOGY_TEXT = {
    "hmm-1state": (
        "<State> 0 <PdfClass> 0 <Transition> 0 0.5 <Transition> 1 0.5 </State>\n"
        "<State> 1 </State>\n"),
    "hmm-3state": (
        "<State> 0 <PdfClass> 0 <Transition> 0 0.75 <Transition> 1 0.25 </State>\n"
        "<State> 1 <PdfClass> 1 <Transition> 1 0.75 <Transition> 2 0.25 </State>\n"
        "<State> 2 <PdfClass> 2 <Transition> 2 0.75 <Transition> 3 0.25 </State>\n"
        "<State> 3 </State>\n"),
    "chain": (
        "<State> 0 <ForwardPdfClass> 0 <SelfLoopPdfClass> 1 "
        "<Transition> 0 0.5 <Transition> 1 0.5 </State>\n"
        "<State> 1 </State>\n"),
}


@dataclass
class Topology:
    """A topology H and its metadata.

    Attributes:
      name: one of :data:`TOPOLOGIES`.
      H: transducer, ``labels`` = network-side ids (CTC: token ids, 0 = blank; HMM:
        transition-ids, 0 = epsilon), ``aux_labels`` = tokens (0 = none).
      num_tokens: tokens are ``1 .. num_tokens``.
      is_ctc: True for the CTC topologies.
      tid2pdf: HMM only: int64 ``[num_tids + 1]``, pdf-id of each transition-id (entry 0: -1).
      num_pdfs: HMM only: number of pdfs (network outputs).
      transition_model: HMM only: the ``kaldi_hmm_gmm.TransitionModel``.
      options: the options the topology was built with (for cache stamps).
    """

    name: str
    H: Fsa
    num_tokens: int
    is_ctc: bool
    tid2pdf: torch.Tensor | None = None
    num_pdfs: int = 0
    transition_model: Any = None
    options: dict[str, Any] = field(default_factory=dict)


def hmm_topology_text(name: str, num_tokens: int) -> str:
    """Kaldi ``topo`` file text of HMM topology ``name`` for phones ``1 .. num_tokens``."""
    if name not in HMM_TOPOLOGY_TEXT:
        raise ValueError(f"unknown HMM topology {name!r}; known: {sorted(HMM_TOPOLOGY_TEXT)}")
    phones = " ".join(str(p) for p in range(1, num_tokens + 1))
    return (f"<Topology>\n<TopologyEntry>\n<ForPhones> {phones} </ForPhones>\n"
            f"{HMM_TOPOLOGY_TEXT[name]}</TopologyEntry>\n</Topology>\n")


def make_topology(name: str, num_tokens: int, *, transition_scale: float = 1.0,
                  self_loop_scale: float = 1.0, device: str | torch.device | None = None
                  ) -> Topology:
    """Build topology ``name`` (one of :data:`TOPOLOGIES`) over tokens ``1 .. num_tokens``.

    ``transition_scale`` / ``self_loop_scale`` apply to HMM topologies (see the module
    docstring); CTC topologies have score 0 on every arc. Raises ValueError for an unknown name
    (listing the known ones) or ``num_tokens < 1``.
    """
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; known topologies: {', '.join(TOPOLOGIES)}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    if name in ("ctc", "ctc-modified"):
        H = ctc_topo(num_tokens, modified=(name == "ctc-modified"), device=device)
        return Topology(name, H, num_tokens, True, options={"name": name})
    topo = _hmm_topology(name, num_tokens, transition_scale, self_loop_scale)
    if device is not None:
        topo.H = topo.H.to(device)
    return topo


def _hmm_topology(name: str, num_tokens: int, transition_scale: float,
                  self_loop_scale: float) -> Topology:
    """Kaldi objects for ``name`` and the H transducer built from them."""
    from wfst_asr import _kaldi
    khg = _kaldi.kaldi_hmm_gmm()
    topo = khg.HmmTopology()
    topo.read(hmm_topology_text(name, num_tokens))
    phones = list(range(1, num_tokens + 1))
    ctx_dep = khg.monophone_context_dependency(phones, topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx_dep, topo)
    tid2pdf = torch.tensor([-1] + [tm.transition_id_to_pdf(t)
                                   for t in range(1, tm.num_transition_ids + 1)])
    H = _hmm_h_transducer(tm, topo, phones, transition_scale, self_loop_scale)
    opts = {"name": name, "transition_scale": transition_scale,
            "self_loop_scale": self_loop_scale}
    return Topology(name, H, num_tokens, False, tid2pdf=tid2pdf, num_pdfs=tm.num_pdfs,
                    transition_model=tm, options=opts)


def _trans_state_of(tm: Any) -> dict[tuple[int, int], int]:
    """(phone, hmm_state) -> Kaldi transition-state (1-based) for a monophone model.

    Kaldi numbers transition-states in the order of their sorted (phone, hmm_state, pdfs)
    tuples; with one tuple per (phone, emitting state) the k-th transition-state of a phone is
    its HMM state k (the tuples themselves are not readable from Python).
    """
    out: dict[tuple[int, int], int] = {}
    seen: dict[int, int] = {}
    for ts in range(1, tm.num_transition_states + 1):
        phone = tm.transition_id_to_phone(tm.state2id[ts])
        out[(phone, seen.get(phone, 0))] = ts
        seen[phone] = seen.get(phone, 0) + 1
    return out


def _hmm_h_transducer(tm: Any, topo: Any, phones: list[int], transition_scale: float,
                      self_loop_scale: float) -> Fsa:
    """H with reordered self-loops and transition probabilities (module docstring)."""
    ts_of = _trans_state_of(tm)
    arcs: list[tuple[int, int, int, int, float]] = []  # src, dst, tid, aux, score
    counter = [1]  # number of H states allocated so far (state 0 = between phones)
    for p in phones:
        entry = topo.topology_for_phone(p)
        n_states = len(entry)

        def loop_logp(s: int, p: int = p, entry: Any = entry) -> float | None:
            for i, (d, _prob) in enumerate(entry[s].transitions):
                if d == s:
                    return tm.log_probs[tm.state2id[ts_of[(p, s)]] + i]
            return None

        after: dict[tuple[int, int], int] = {}  # (s, d) -> H state "just did s -> d"
        def state(s: int, d: int, after: dict = after) -> int:
            if (s, d) not in after:
                after[(s, d)] = counter[0]
                counter[0] += 1
            return after[(s, d)]

        def out_arcs(s: int, src: int, aux: int, p: int = p, entry: Any = entry) -> None:
            ls = loop_logp(s)
            keep = 0.0 if ls is None else math.log1p(-math.exp(ls))
            for i, (d, _prob) in enumerate(entry[s].transitions):
                if d == s:
                    continue
                tid = tm.state2id[ts_of[(p, s)]] + i
                score = (transition_scale * (tm.log_probs[tid] - keep)
                         + self_loop_scale * keep)
                arcs.append((src, state(s, d), tid, aux, score))

        out_arcs(0, 0, p)
        done: set[tuple[int, int]] = set()
        while len(done) < len(after):
            for (s, d), q in list(after.items()):
                if (s, d) in done:
                    continue
                done.add((s, d))
                ls = loop_logp(s)
                if ls is not None:
                    tid = tm.state2id[ts_of[(p, s)]] + [t[0] for t in entry[s].transitions
                                                       ].index(s)
                    arcs.append((q, q, tid, 0, self_loop_scale * ls))
                if d == n_states - 1 or not entry[d].transitions:
                    arcs.append((q, 0, 0, 0, 0.0))
                else:
                    out_arcs(d, q, 0)
    return _assemble_h(arcs, counter[0])


def _assemble_h(arcs: list[tuple[int, int, int, int, float]], n: int) -> Fsa:
    """The Fsa of H: states ``0 .. n-1`` plus a final state; state 0 is final (score 0)."""
    arcs = sorted(arcs, key=lambda a: (a[0], a[2], a[1])) + [(0, n, -1, -1, 0.0)]
    t = torch.tensor([a[:4] for a in arcs], dtype=torch.int64)
    scores = torch.tensor([a[4] for a in arcs], dtype=torch.float32)
    return Fsa(t[:, :3].to(torch.int32), scores, num_states=n + 1,
               aux_labels=t[:, 3].to(torch.int32))


def pdf_to_tid_log_probs(log_probs: torch.Tensor, tid2pdf: torch.Tensor) -> torch.Tensor:
    """Network log-probs over pdfs ``[B, T, num_pdfs]`` -> ``[B, T, num_tids + 1]`` indexed by
    transition-id (column 0, epsilon, is -inf), for :func:`wfst_asr.fsa.intersect_dense` with an
    HMM graph (HCLG) whose labels are transition-ids."""
    idx = tid2pdf.clamp(min=0).to(log_probs.device)
    out = log_probs.index_select(-1, idx)
    out[..., 0] = float("-inf")
    return out


def pdf_output_graph(graph: Fsa, tid2pdf: torch.Tensor) -> Fsa:
    """``graph`` (e.g. an HCLG of :func:`wfst_asr.graphs.compile.compile_hclg`) with every
    transition-id label ``t >= 1`` replaced by the network output column ``tid2pdf[t] + 1``
    (column 0 is unused, as in :func:`wfst_asr.graphs.topo.pdf_topo` and
    :func:`~wfst_asr.graphs.topo.hmm_output_id`); -1 labels (final arcs) stay.

    The result decodes network log-probs ``[B, T, num_pdfs + 1]`` directly with
    :func:`wfst_asr.decode.one_best` / :func:`wfst_asr.decode.kaldi_one_best`: the same paths
    and scores as ``graph`` on :func:`pdf_to_tid_log_probs` of the columns ``1..num_pdfs``.
    Raises ValueError on an input epsilon (label 0: it would consume a frame here) or a label
    outside ``tid2pdf``. Other attributes (``aux_labels``, scores) are shared, not copied.
    """
    lab = graph.labels.to(torch.int64)
    if bool((lab == 0).any()):
        raise ValueError("pdf_output_graph: the graph has input epsilons (label 0); remove them "
                         "first (compile_hclg does)")
    table = tid2pdf.to(device=lab.device, dtype=torch.int64)
    if bool((lab >= table.numel()).any()):
        raise ValueError(f"pdf_output_graph: label {int(lab.max())} is not a transition-id of "
                         f"the topology (1..{table.numel() - 1})")
    out = graph.detach()
    out.labels = torch.where(lab > 0, table[lab.clamp(min=0)] + 1, lab)
    return out


def ctc_topo(max_token: int, modified: bool = False,
             device: str | torch.device | None = None) -> Fsa:
    """The CTC topology over tokens ``0 (blank) .. max_token`` as a transducer.

    Standard (``modified=False``): one state per token, ``(max_token+1)**2`` arcs; from every
    state an arc enters state ``j`` with label ``j``; its aux_label is ``j`` (a new token) unless it
    is a self-loop or ``j`` is blank, so a repeated token needs a blank in between.

    Modified (``modified=True`` relaxes that, linear size ``4*max_token + 2`` arcs): state 0 has a
    self-loop for every label (blank, or a one-frame token) and an arc to token state ``i`` that
    starts a longer token ``i``; token state ``i`` has a self-loop ``i:0`` and an arc ``i:0`` back to
    state 0 that ends it. Repeated tokens need no blank in between.

    All states are final (an arc with label -1 to the super-final state), except token states
    of the modified topology.
    """
    if max_token < 1:
        raise ValueError(f"max_token must be >= 1, got {max_token}")
    n = max_token + 1
    final = n
    if not modified:
        src = torch.arange(n).repeat_interleave(n)
        dst = torch.arange(n).repeat(n)
        lab = dst.clone()
        aux = torch.where((src == dst) | (dst == 0), torch.zeros_like(dst), dst)
        fsrc = torch.arange(n)
    else:
        tok = torch.arange(1, n)
        parts_src = [torch.zeros(n, dtype=torch.long), torch.zeros(max_token, dtype=torch.long),
                     tok, tok]
        parts_dst = [torch.zeros(n, dtype=torch.long), tok, tok,
                     torch.zeros(max_token, dtype=torch.long)]
        parts_lab = [torch.arange(n), tok, tok, tok]
        parts_aux = [torch.arange(n), tok, torch.zeros_like(tok), torch.zeros_like(tok)]
        src, dst, lab, aux = (torch.cat(p) for p in (parts_src, parts_dst, parts_lab, parts_aux))
        fsrc = torch.zeros(1, dtype=torch.long)
    src = torch.cat([src, fsrc])
    dst = torch.cat([dst, torch.full_like(fsrc, final)])
    lab = torch.cat([lab, torch.full_like(fsrc, -1)])
    aux = torch.cat([aux, torch.full_like(fsrc, -1)])
    arcs = torch.stack([src, dst, lab], dim=1).to(torch.int32)
    fsa = Fsa(arcs, num_states=n + 1, aux_labels=aux.to(torch.int32))
    return fsa.to(device) if device is not None else fsa


def hmm_output_id(token: int, state: int, num_states: int) -> int:
    """Network output id of HMM state ``state`` (0-based) of ``token`` (>= 1) in :func:`hmm_topo`:
    ``(token - 1) * num_states + state + 1`` (so 0 stays unused / blank)."""
    return (token - 1) * num_states + state + 1


def hmm_topo(num_tokens: int, num_states: int = 1, self_loop_logprob: float = math.log(0.5),
             device: Device = None) -> Fsa:
    """A simple left-to-right HMM topology as a transducer (output ids -> tokens).

    Tokens ``1..num_tokens`` each get ``num_states`` emitting states; state ``j`` of token ``t``
    emits the output id :func:`hmm_output_id` ``(t-1)*num_states + j + 1`` (network outputs
    ``1..num_tokens*num_states``; id 0 is not used). With one state, output id = token id.

    States: 0 is the (non-emitting) start, ``1 + (t-1)*num_states + j`` the emitting states,
    then the final state. Arcs (each consumes one frame with the label of the state it enters):

    * start -> first state of every token (score 0, aux_label = the token);
    * self-loop on every emitting state (score ``self_loop_logprob`` = log p);
    * state j -> j+1 of the same token (score log(1-p), aux 0);
    * last state of every token -> first state of every token (score log(1-p), aux = the new
      token): ``num_tokens**2`` arcs;
    * last state of every token -> final (label -1, score log(1-p)), and start -> final
      (score 0; an empty transcript).

    So every emitting state leaves by its self-loop with probability p or forward with 1-p.
    """
    if num_tokens < 1 or num_states < 1:
        raise ValueError("num_tokens and num_states must be >= 1")
    if not self_loop_logprob < 0:
        raise ValueError("self_loop_logprob must be < 0")
    n, N = num_states, num_tokens
    fwd = math.log(-math.expm1(self_loop_logprob))
    tok = torch.arange(1, N + 1)
    first = 1 + (tok - 1) * n
    last = first + n - 1
    emit = torch.arange(1, N * n + 1)  # emitting states; their output id = state number
    final = N * n + 1
    chain = emit[(emit - 1) % n != n - 1]
    parts = [
        (torch.zeros(N, dtype=torch.int64), first, tok, torch.zeros(N)),
        (emit, emit, torch.zeros_like(emit), torch.full((N * n,), self_loop_logprob)),
        (chain, chain + 1, torch.zeros_like(chain), torch.full((chain.numel(),), fwd)),
        (last.repeat_interleave(N), first.repeat(N), tok.repeat(N), torch.full((N * N,), fwd)),
        (last, torch.full((N,), final), torch.full((N,), -1), torch.full((N,), fwd)),
        (torch.zeros(1, dtype=torch.int64), torch.tensor([final]), torch.tensor([-1]),
         torch.zeros(1)),
    ]
    src, dst, aux, sc = (torch.cat(c) for c in zip(*parts))
    lab = torch.where(aux == -1, -1, dst)  # the label of a state = its number
    arcs = torch.stack([src, dst, lab], 1).to(torch.int32)
    fsa = Fsa(arcs, sc.to(torch.float32), num_states=final + 1, aux_labels=aux.to(torch.int32))
    return fsa.to(device) if device is not None else fsa


def pdf_topo(topology: Topology) -> Fsa:
    """A Kaldi HMM topology's ``H`` as a frame-synchronous transducer over pdfs.

    :func:`~wfst_asr.graphs.topo.make_topology` gives ``H`` with transition-id labels and
    epsilon arcs (``0:0``, back to the central state 0 after each phone); the engine needs
    every arc to consume a frame. Here each epsilon arc ``q -> r`` (score ``w``) is replaced by
    copies of the arcs leaving ``r`` (``q -> x``, score ``w +`` theirs; repeated while epsilon
    arcs remain), which keeps every path and its score, and each transition-id label ``t``
    becomes ``tid2pdf[t] + 1``: the network then has ``num_pdfs + 1`` outputs, column 0 unused
    (the convention of :func:`~wfst_asr.graphs.topo.hmm_output_id`). ``aux_labels`` stay
    the phones, so the result works with :class:`~wfst_asr.graphs.training.
    HmmTrainingGraphCompiler` and :class:`~wfst_asr.graphs.training.MmiTrainingGraphCompiler`.
    """
    if topology.is_ctc or topology.tid2pdf is None:
        raise ValueError(f"pdf_topo needs an HMM topology, got {topology.name!r} (a CTC "
                         "topology is frame-synchronous already: use topology.H)")
    H = topology.H.to("cpu").detach()
    a = H.arcs.long()
    src, dst, lab = a[:, 0].tolist(), a[:, 1].tolist(), a[:, 2].tolist()
    aux, sc = H.aux_labels.tolist(), H.scores.tolist()
    arcs = list(zip(src, dst, lab, aux, sc))
    for _ in range(H.num_states + 1):
        eps = [x for x in arcs if x[2] == 0]
        if not eps:
            break
        leaving: dict[int, list[tuple]] = {}
        for x in arcs:
            leaving.setdefault(x[0], []).append(x)
        new = [x for x in arcs if x[2] != 0]
        for q, r, _lab, eaux, w in eps:
            if eaux != 0:
                raise ValueError("pdf_topo: an epsilon arc with an output token")
            new += [(q, d, lb, ax, w + s) for _, d, lb, ax, s in leaving.get(r, [])]
        arcs = new
    else:
        raise ValueError("pdf_topo: H has an epsilon cycle")
    t = torch.tensor([x[:4] for x in arcs], dtype=torch.int64)
    pdf = topology.tid2pdf.to(torch.int64)
    labels = torch.where(t[:, 2] > 0, pdf[t[:, 2].clamp(min=0)] + 1, t[:, 2])
    out = torch.stack([t[:, 0], t[:, 1], labels], 1).to(torch.int32)
    return Fsa(out, torch.tensor([x[4] for x in arcs], dtype=torch.float32),
               num_states=H.num_states, aux_labels=t[:, 3].to(torch.int32))


def pdf_map(src: Topology, dst: Topology) -> torch.Tensor:
    """int64 ``[src.num_pdfs]``: the ``dst`` output id (``pdf + 1``, as :func:`pdf_topo`) of
    each ``src`` pdf: the same phone, HMM state ``min(k, n_dst - 1)`` for ``src``'s state ``k``
    (``hmm-3state`` -> ``hmm-1state``: every state of a phone -> the phone's pdf; the same
    topology: the identity plus one). Monophone topologies with one pdf per HMM state."""
    s, d = phone_pdfs(src), phone_pdfs(dst)
    out = torch.full((src.num_pdfs,), -1, dtype=torch.int64)
    for phone, pdfs in s.items():
        if phone not in d:
            raise ValueError(f"phone {phone} of {src.name!r} is not in {dst.name!r}")
        for k, p in enumerate(pdfs):
            out[p] = d[phone][min(k, len(d[phone]) - 1)] + 1
    return out


def phone_pdfs(topology: Topology) -> dict[int, list[int]]:
    """``{phone: [pdf of HMM state 0, 1, ...]}`` of a monophone Kaldi topology whose states have
    one pdf each (``hmm-1state``, ``hmm-3state``; not ``chain``)."""
    if topology.is_ctc or topology.transition_model is None:
        raise ValueError(f"{topology.name!r} is not a Kaldi HMM topology")
    tm = topology.transition_model
    out: dict[int, list[int]] = {}
    for ts in range(1, tm.num_transition_states + 1):
        tids = [t for t in range(1, tm.num_transition_ids + 1) if tm.id2state[t] == ts]
        pdfs = {int(topology.tid2pdf[t]) for t in tids}
        if len(pdfs) != 1:
            raise ValueError(f"topology {topology.name!r}: an HMM state with several pdfs "
                             "(forward / self-loop pdf classes) is not supported")
        out.setdefault(tm.transition_id_to_phone(tm.state2id[ts]), []).append(pdfs.pop())
    return out


def trivial_graph(vocab_size: int, device: str | torch.device | None = None) -> Fsa:
    """k2's ``trivial_graph(vocab_size - 1)``: one state with a self-loop for every token
    ``1 .. V-1`` (score 0, ``aux_labels`` = ``labels``) and its arc into the final state: any
    token sequence, unscored. :func:`fast_beam_search` in it is a plain beam search."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (blank + a token), got {vocab_size}")
    labels = torch.cat([torch.arange(1, vocab_size), torch.tensor([-1])])
    dst = torch.zeros(vocab_size, dtype=torch.int64)
    dst[-1] = 1
    arcs = torch.stack([torch.zeros_like(dst), dst, labels], 1).to(torch.int32)
    fsa = Fsa(arcs, num_states=2, aux_labels=labels.to(torch.int32).clone())
    return fsa.to(device) if device is not None else fsa
