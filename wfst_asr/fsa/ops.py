"""Static graph algorithms through OpenFst (kaldifst), in the tropical semiring.

Each function converts its input with :func:`~wfst_asr.fsa.io.to_kaldifst` (``cost = -score``,
-1 arcs become final weights), calls the kaldifst/OpenFst function and converts back with
:func:`~wfst_asr.fsa.io.from_kaldifst` (one new final state, last; final weights become -1
arcs). Results are new FSAs without gradient history; only ``arcs``, ``scores``, ``aux_labels``
and non-tensor attributes (symbol tables ``labels_sym`` / ``aux_labels_sym``, ...) survive; other
per-arc tensors are dropped. An acceptor input gives an acceptor, an input with ``aux_labels`` a
transducer. An FsaVec is processed FSA by FSA.

Exceptions: :func:`project` only moves labels and :func:`top_sort` renumbers states in Python,
because kaldifst does not expose OpenFst's Project and TopSort; both keep every attribute and the
gradient graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .fsa import Fsa, create_fsa_vec
from .io import from_kaldifst, to_kaldifst

__all__ = ["add_self_loops", "arc_sort", "compose", "connect", "determinize",
           "determinize_star", "invert", "minimize", "project", "remove_epsilon", "top_sort"]


def _kaldifst():
    from wfst_asr._kaldi import kaldifst as _kfst
    return _kfst()


def _is_transducer(fsa: Fsa) -> bool:
    return fsa.has_attr("aux_labels")


def _other_attrs(fsa: Fsa) -> dict[str, Any]:
    return dict(fsa._other_attrs)


def _per_fsa(fn: Callable[..., Fsa]) -> Callable[..., Fsa]:
    """Apply a single-FSA op to each FSA of an FsaVec."""
    def wrapper(fsa: Fsa, *args: Any, **kwargs: Any) -> Fsa:
        if fsa.is_vec:
            return create_fsa_vec([fn(f, *args, **kwargs) for f in fsa])
        return fn(fsa, *args, **kwargs)
    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _back(fst, like: Fsa, transducer: bool | None = None,
          attrs: dict[str, Any] | None = None) -> Fsa:
    """Convert an OpenFst result back, as acceptor/transducer like ``like``; set attributes."""
    transducer = _is_transducer(like) if transducer is None else transducer
    out = from_kaldifst(fst, acceptor=not transducer)
    for k in ("labels_sym", "aux_labels_sym"):
        if out.has_attr(k):
            delattr(out, k)
    for k, v in (_other_attrs(like) if attrs is None else attrs).items():
        if k == "aux_labels_sym" and not transducer:
            continue
        setattr(out, k, v)
    return out


def _in_place(fsa: Fsa, op: Callable[[Any], Any]) -> Fsa:
    """to_kaldifst, ``op(fst)`` modifying it in place, convert back."""
    fst = to_kaldifst(fsa, attach_symbols=False)
    op(fst)
    return _back(fst, fsa)


# ---------------------------------------------------------------------- binary
def compose(a: Fsa, b: Fsa, connect: bool = True, compose_filter: str = "sequence") -> Fsa:
    """OpenFst Compose of ``a`` and ``b`` (tropical: scores add along matched paths).

    ``a``'s output side (``aux_labels``, or labels for an acceptor) is matched against ``b``'s
    labels; label 0 is epsilon on both sides. Both inputs are arc-sorted first (``a`` by olabel,
    ``b`` by ilabel), so any input order is fine. ``connect``: trim states not on a successful
    path; ``compose_filter``: OpenFst's filter ("sequence", "alt_sequence", "match", ...).

    Returns:
      An acceptor when both inputs are acceptors, else a transducer with ``a``'s labels as
      labels and ``b``'s output labels as ``aux_labels``. ``labels_sym`` comes from ``a``;
      ``aux_labels_sym`` from ``b`` (its ``aux_labels_sym``, or ``labels_sym`` for an acceptor).
    """
    if a.is_vec or b.is_vec:
        raise ValueError("compose takes single FSAs")
    kfst = _kaldifst()
    fa = to_kaldifst(a, attach_symbols=False)
    fb = to_kaldifst(b, attach_symbols=False)
    kfst.arcsort(fa, sort_type="olabel")
    kfst.arcsort(fb, sort_type="ilabel")
    fst = kfst.compose(fa, fb, compose_filter=compose_filter, connect=connect)
    transducer = _is_transducer(a) or _is_transducer(b)
    attrs = _other_attrs(a)
    attrs.pop("aux_labels_sym", None)
    bsym = b._other_attrs.get("aux_labels_sym" if _is_transducer(b) else "labels_sym")
    if transducer and bsym is not None:
        attrs["aux_labels_sym"] = bsym
    return _back(fst, a, transducer=transducer, attrs=attrs)


# ---------------------------------------------------------------------- unary
@_per_fsa
def determinize(fsa: Fsa, delta: float = 1.0 / 1024, det_type: str = "functional") -> Fsa:
    """OpenFst Determinize (tropical): no state has two arcs with the same label.

    Epsilon (0) is treated as an ordinary label (remove epsilons first, or use
    :func:`determinize_star`). Transducers must be functional unless ``det_type`` is
    "nonfunctional" or "disambiguate". ``delta``: weight quantization for state equality.
    """
    return _back(_kaldifst().determinize(to_kaldifst(fsa, attach_symbols=False), delta=delta,
                                         det_type=det_type), fsa)


@_per_fsa
def determinize_star(fsa: Fsa, delta: float = 1.0 / 1024, max_states: int = -1,
                     use_log: bool = False) -> Fsa:
    """Kaldi's DeterminizeStar: removes epsilons and determinizes in one step.

    ``use_log``: determinize in the log semiring. Raises RuntimeError when ``max_states`` (>0)
    stopped it early.
    """
    kfst = _kaldifst()
    fst = to_kaldifst(fsa, attach_symbols=False)
    try:
        stopped = kfst.determinize_star(fst, delta=delta, max_states=max_states,
                                        use_log=use_log)
    except RuntimeError as e:  # kaldifst raises when max_states is passed
        raise RuntimeError(f"determinize_star stopped at max_states={max_states}: {e}") from e
    if stopped:
        raise RuntimeError(f"determinize_star stopped at max_states={max_states}")
    return _back(fst, fsa)


@_per_fsa
def minimize(fsa: Fsa, delta: float = 1e-6, allow_nondet: bool = False) -> Fsa:
    """OpenFst Minimize of a deterministic FSA (``allow_nondet``: also non-deterministic)."""
    return _in_place(fsa, lambda f: _kaldifst().minimize(f, delta=delta,
                                                         allow_nondet=allow_nondet))


@_per_fsa
def remove_epsilon(fsa: Fsa, connect: bool = True, delta: float = 1e-6) -> Fsa:
    """OpenFst RmEpsilon: removes arcs whose label (and aux_label) is 0, keeping path weights."""
    return _in_place(fsa, lambda f: _kaldifst().rmepsilon(f, connect=connect, delta=delta))


@_per_fsa
def connect(fsa: Fsa) -> Fsa:
    """OpenFst Connect: removes states (and arcs) not on a path from start to a final state.

    A result without successful paths has no states at all.
    """
    return _in_place(fsa, lambda f: _kaldifst().connect(f))


@_per_fsa
def arc_sort(fsa: Fsa, sort_type: str = "ilabel") -> Fsa:
    """OpenFst ArcSort of each state's arcs by "ilabel" or "olabel" (then -1 arcs last)."""
    if sort_type not in ("ilabel", "olabel"):
        raise ValueError(f"sort_type must be 'ilabel' or 'olabel', got {sort_type!r}")
    return _in_place(fsa, lambda f: _kaldifst().arcsort(f, sort_type=sort_type))


@_per_fsa
def invert(fsa: Fsa) -> Fsa:
    """OpenFst Invert: swaps labels and aux_labels (and ``labels_sym``/``aux_labels_sym``).

    An acceptor is returned unchanged (as a new Fsa).
    """
    fst = to_kaldifst(fsa, attach_symbols=False)
    _kaldifst().invert(fst)
    attrs = _other_attrs(fsa)
    if _is_transducer(fsa):
        isym, osym = attrs.pop("labels_sym", None), attrs.pop("aux_labels_sym", None)
        attrs.update({k: v for k, v in (("labels_sym", osym), ("aux_labels_sym", isym))
                      if v is not None})
    return _back(fst, fsa, attrs=attrs)


@_per_fsa
def add_self_loops(fsa: Fsa, isyms: Sequence[int], osyms: Sequence[int]) -> Fsa:
    """Kaldi's AddSelfLoops: self-loops ``isyms[i]:osyms[i]`` (weight 0) at each final state
    and each state with a non-epsilon output label leaving it (used for disambiguation symbols
    before composing with a graph made by PreDeterminize). The result is a transducer."""
    if len(isyms) != len(osyms):
        raise ValueError("isyms and osyms must have the same length")
    fst = to_kaldifst(fsa, attach_symbols=False)
    _kaldifst().add_self_loops(fst, list(isyms), list(osyms))
    return _back(fst, fsa, transducer=True)


# ---------------------------------------------------------------------- pure Python
def project(fsa: Fsa, project_output: bool = False) -> Fsa:
    """Project a transducer to an acceptor on its input (labels) or output (aux_labels) side.

    Output projection makes ``aux_labels`` the labels (``aux_labels_sym`` becomes
    ``labels_sym``); -1 on arcs entering the final state stays -1. An acceptor is returned as
    a shallow copy. Other attributes and the score gradient are kept.
    """
    arcs = fsa.arcs
    if _is_transducer(fsa) and project_output:
        aux = fsa.aux_labels.to(device=arcs.device, dtype=torch.int32)
        lab = torch.where(arcs[:, 2] == -1, torch.full_like(aux, -1), aux)
        arcs = torch.cat([arcs[:, :2], lab.unsqueeze(1)], dim=1)
    out = fsa.index_arcs(torch.arange(fsa.num_arcs, device=fsa.device), arcs,
                         fsa.arc_splits if fsa.is_vec else None,
                         fsa.num_states_per_fsa if fsa.is_vec else fsa.num_states,
                         scores=fsa.scores, validate=project_output and _is_transducer(fsa))
    if not _is_transducer(fsa):
        return out
    if project_output:
        if out.has_attr("aux_labels_sym"):
            out.labels_sym = out.aux_labels_sym
        elif out.has_attr("labels_sym"):
            delattr(out, "labels_sym")
    delattr(out, "aux_labels")
    if out.has_attr("aux_labels_sym"):
        delattr(out, "aux_labels_sym")
    return out


@_per_fsa
def top_sort(fsa: Fsa) -> Fsa:
    """Renumber the states of an acyclic FSA so that every arc goes to a higher state.

    States are ordered by longest-path depth (ties by old number); the start stays 0 and the
    final state stays last. (Only an arc into the start state from a state unreachable from it
    can then still go backwards: :func:`connect` first removes such states.) Arc order within a state is kept, as are all
    attributes and the gradient graph. Raises ValueError for a cyclic FSA (OpenFst's TopSort
    would leave it unchanged; kaldifst does not expose TopSort).
    """
    ns = fsa.num_states
    if ns == 0:
        return fsa.clone()
    level = fsa.state_levels()
    is_final = torch.zeros(ns, dtype=torch.int64, device=fsa.device)
    is_final[ns - 1] = 1
    key = (is_final * (ns + 1) + level) * ns + torch.arange(ns, device=fsa.device)
    key[0] = -1  # start first even if it is not the only source
    order = torch.argsort(key)
    new_of_old = torch.empty_like(order)
    new_of_old[order] = torch.arange(ns, device=fsa.device)
    src = new_of_old[fsa.arcs[:, 0].long()]
    dst = new_of_old[fsa.arcs[:, 1].long()]
    arc_order = torch.sort(src, stable=True).indices
    arcs = torch.stack([src[arc_order], dst[arc_order], fsa.arcs[arc_order, 2].long()],
                       dim=1).to(torch.int32)
    return fsa.index_arcs(arc_order, arcs, None, ns, validate=True)
