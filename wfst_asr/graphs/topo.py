"""Topologies H for decoding-graph compilation: CTC (k2 style) and Kaldi HMMs.

:func:`make_topology` returns a :class:`Topology`: an :class:`~wfst_asr.fsa.Fsa` transducer
``H`` (``labels`` = what the network scores per frame, ``aux_labels`` = tokens, 0 = no token)
plus what is needed to use it.

CTC (``'ctc'``, ``'ctc-modified'``)
-----------------------------------
``H`` is :func:`wfst_asr.fsa.ctc_topo` over tokens ``1 .. num_tokens`` (``tokens.txt`` ids;
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
(:func:`pdf_output_graph`, the convention of :func:`wfst_asr.losses.hmm.pdf_topo`).

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

from wfst_asr.fsa import Fsa, ctc_topo

__all__ = ["HMM_TOPOLOGY_TEXT", "TOPOLOGIES", "Topology", "hmm_topology_text", "make_topology",
           "pdf_output_graph", "pdf_to_tid_log_probs"]

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
    (column 0 is unused, as in :func:`wfst_asr.losses.hmm.pdf_topo` and
    :func:`~wfst_asr.graphs.training.hmm_output_id`); -1 labels (final arcs) stay.

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
