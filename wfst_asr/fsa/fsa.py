"""The :class:`Fsa` container: one FSA or a batch of FSAs (an FsaVec) as tensors.

Conventions (as in k2):

* states of each FSA are numbered ``0 .. num_states-1``; state 0 is the start state;
* the final state is the highest-numbered state; only arcs entering it carry label -1,
  and it has no leaving arcs;
* label 0 is epsilon in graphs (and blank when a graph is intersected with network output);
* scores are log-weights, higher is better.

Storage: ``arcs`` is an int32 tensor ``[A, 3]`` of ``(src, dst, label)``, where ``src`` and
``dst`` are *local* to their FSA; ``scores`` is a float tensor ``[A]`` that may require grad.
The arcs of FSA ``i`` are ``arcs[arc_splits[i]:arc_splits[i+1]]``, sorted by ``src`` (stable).
Any number of extra per-arc tensors (``aux_labels``, ``frame_idx``, ...) travel with the arcs
through every operation, see :meth:`Fsa.index_arcs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

#: ``{"to_str": fn}``: the text printer of ``str(fsa)``, filled in by :mod:`wfst_asr.fsa.io`
#: (so that this module does not import the one above it).
TEXT_FORMAT: dict[str, Callable[[Fsa], str]] = {}

_CORE = ("arcs", "scores", "_arc_splits", "_num_states", "_is_vec", "_tensor_attrs",
         "_other_attrs", "_cache")


def _as_long(x: torch.Tensor | Sequence[int], device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype=torch.int64, device=device if device is not None else x.device)
    return torch.tensor(list(x), dtype=torch.int64, device=device)


class Fsa:
    """One FSA (``fsa.is_vec == False``) or an FsaVec (a batch of FSAs).

    Args:
      arcs: int tensor ``[A, 3]`` (src, dst, label), or a float tensor ``[A, 4]`` whose last
        column holds the scores.
      scores: float tensor ``[A]`` (default zeros).
      num_states: ``int`` for a single FSA, or a sequence/tensor ``[N]`` for an FsaVec. Default:
        one more than the largest state mentioned by an arc (0 if there are no arcs).
      arc_splits: ``[N+1]`` offsets of each FSA's arcs (FsaVec only).
      **attrs: per-arc tensors whose first dimension is ``A`` (e.g. ``aux_labels``), or any
        other object (e.g. a :class:`SymbolTable` as ``labels_sym``), kept as a plain attribute.

    Raises:
      ValueError: when a state index is out of range, a -1 label does not enter the final state,
        or the final state has a leaving arc.
    """

    def __init__(self, arcs: torch.Tensor, scores: torch.Tensor | None = None, *,
                 num_states: None | int | Sequence[int] | torch.Tensor = None,
                 arc_splits: None | Sequence[int] | torch.Tensor = None,
                 validate: bool = True, **attrs: Any) -> None:
        if arcs.dim() != 2 or arcs.shape[1] not in (3, 4):
            raise ValueError(f"arcs must have shape [A, 3] or [A, 4], got {tuple(arcs.shape)}")
        if arcs.shape[1] == 4:
            if scores is None:
                scores = arcs[:, 3].to(torch.float32)
            arcs = arcs[:, :3]
        arcs = arcs.to(torch.int32)
        device = arcs.device
        num_arcs = arcs.shape[0]
        if scores is None:
            scores = torch.zeros(num_arcs, dtype=torch.float32, device=device)
        if scores.shape != (num_arcs,):
            raise ValueError(f"scores must have shape [{num_arcs}], got {tuple(scores.shape)}")
        is_vec = arc_splits is not None
        if not is_vec:
            if num_states is None:
                num_states = int(arcs[:, :2].max()) + 1 if num_arcs else 0
            if not isinstance(num_states, int):
                raise ValueError("num_states of a single FSA must be an int")
            arc_splits_t = torch.tensor([0, num_arcs], dtype=torch.int64, device=device)
            num_states_t = torch.tensor([num_states], dtype=torch.int64, device=device)
        else:
            arc_splits_t = _as_long(arc_splits, device)
            n = arc_splits_t.numel() - 1
            if num_states is None:
                raise ValueError("an FsaVec needs num_states per FSA")
            num_states_t = _as_long(num_states, device)
            if num_states_t.numel() != n:
                raise ValueError(f"num_states has {num_states_t.numel()} entries for {n} FSAs")
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_is_vec", is_vec)
        object.__setattr__(self, "_arc_splits", arc_splits_t)
        object.__setattr__(self, "_num_states", num_states_t)
        object.__setattr__(self, "arcs", arcs)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "_tensor_attrs", {})
        object.__setattr__(self, "_other_attrs", {})
        for k, v in attrs.items():
            setattr(self, k, v)
        if validate:
            self._validate_and_sort()

    # ------------------------------------------------------------------ attributes
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CORE:
            object.__setattr__(self, name, value)
            if name in ("arcs", "_arc_splits", "_num_states"):
                self._cache.clear()
        elif name == "labels":
            object.__setattr__(self, name, value)  # the property setter: writes arcs[:, 2]
        elif isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] != self.num_arcs:
                raise ValueError(f"per-arc attribute {name!r} must have first dimension "
                                 f"{self.num_arcs}, got {tuple(value.shape)}")
            self._other_attrs.pop(name, None)
            self._tensor_attrs[name] = value
        else:
            self._tensor_attrs.pop(name, None)
            self._other_attrs[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        d = self.__dict__
        if name in d.get("_tensor_attrs", {}):
            return d["_tensor_attrs"][name]
        if name in d.get("_other_attrs", {}):
            return d["_other_attrs"][name]
        raise AttributeError(f"Fsa has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if name in self._tensor_attrs:
            del self._tensor_attrs[name]
        elif name in self._other_attrs:
            del self._other_attrs[name]
        else:
            object.__delattr__(self, name)

    def has_attr(self, name: str) -> bool:
        return name in self._tensor_attrs or name in self._other_attrs

    def tensor_attr_names(self) -> list[str]:
        """Names of the extra per-arc tensor attributes (not ``arcs``/``scores``)."""
        return list(self._tensor_attrs)

    @property
    def labels(self) -> torch.Tensor:
        """int32 ``[A]``: a view of ``arcs[:, 2]``."""
        return self.arcs[:, 2]

    @labels.setter
    def labels(self, value: torch.Tensor) -> None:
        arcs = self.arcs.clone()
        arcs[:, 2] = value.to(torch.int32)
        object.__setattr__(self, "arcs", arcs)
        self._cache.clear()

    # ------------------------------------------------------------------ shape
    @property
    def is_vec(self) -> bool:
        return self._is_vec

    @property
    def device(self) -> torch.device:
        return self.arcs.device

    @property
    def num_arcs(self) -> int:
        return self.arcs.shape[0]

    @property
    def num_fsas(self) -> int:
        return self._arc_splits.numel() - 1

    @property
    def arc_splits(self) -> torch.Tensor:
        """int64 ``[N+1]``: arcs of FSA i are ``arc_splits[i]:arc_splits[i+1]``."""
        return self._arc_splits

    @property
    def num_states_per_fsa(self) -> torch.Tensor:
        """int64 ``[N]``."""
        return self._num_states

    @property
    def num_states(self) -> int:
        """Total number of states (over all FSAs of an FsaVec)."""
        return int(self._num_states.sum())

    @property
    def shape(self):
        if self._is_vec:
            return (self.num_fsas, None, None)
        return (int(self._num_states[0]), None)

    @property
    def state_offsets(self) -> torch.Tensor:
        """int64 ``[N+1]``: global index of each FSA's state 0 (exclusive cumsum)."""
        if "state_offsets" not in self._cache:
            z = torch.zeros(1, dtype=torch.int64, device=self.device)
            self._cache["state_offsets"] = torch.cat([z, self._num_states.cumsum(0)])
        return self._cache["state_offsets"]

    @property
    def arc_fsa(self) -> torch.Tensor:
        """int64 ``[A]``: index of the FSA each arc belongs to."""
        if "arc_fsa" not in self._cache:
            counts = self._arc_splits[1:] - self._arc_splits[:-1]
            self._cache["arc_fsa"] = torch.repeat_interleave(
                torch.arange(self.num_fsas, device=self.device), counts,
                output_size=self.num_arcs)
        return self._cache["arc_fsa"]

    @property
    def src_global(self) -> torch.Tensor:
        """int64 ``[A]``: source state of each arc, numbered over the whole FsaVec."""
        if "src_global" not in self._cache:
            self._cache["src_global"] = self.arcs[:, 0].long() + torch.index_select(
                self.state_offsets, 0, self.arc_fsa)
        return self._cache["src_global"]

    @property
    def dst_global(self) -> torch.Tensor:
        """int64 ``[A]``: destination state of each arc over the whole FsaVec."""
        if "dst_global" not in self._cache:
            self._cache["dst_global"] = self.arcs[:, 1].long() + torch.index_select(
                self.state_offsets, 0, self.arc_fsa)
        return self._cache["dst_global"]

    @property
    def final_states(self) -> torch.Tensor:
        """int64 ``[N]``: global index of each FSA's final state (-1 for an empty FSA)."""
        ns = self._num_states
        return torch.where(ns > 0, self.state_offsets[1:] - 1, torch.full_like(ns, -1))

    @property
    def start_states(self) -> torch.Tensor:
        """int64 ``[N]``: global index of each FSA's start state (-1 for an empty FSA)."""
        ns = self._num_states
        return torch.where(ns > 0, self.state_offsets[:-1], torch.full_like(ns, -1))

    def state_fsa(self) -> torch.Tensor:
        """int64 ``[S]``: the FSA each (global) state belongs to."""
        if "state_fsa" not in self._cache:
            self._cache["state_fsa"] = torch.repeat_interleave(
                torch.arange(self.num_fsas, device=self.device), self._num_states,
                output_size=self.num_states)
        return self._cache["state_fsa"]

    # ------------------------------------------------------------------ validation
    def _validate_and_sort(self) -> None:
        if self.num_arcs == 0:
            return
        fsa = self.arc_fsa
        ns = self._num_states[fsa]
        src, dst, lab = (self.arcs[:, i].long() for i in range(3))
        where = "" if not self._is_vec else " (FsaVec)"
        bad = (src < 0) | (src >= ns) | (dst < 0) | (dst >= ns)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"arc {i}{where}: state out of range: {self.arcs[i].tolist()}, "
                             f"FSA has {int(ns[i])} states")
        final = ns - 1
        bad = (lab == -1) != (dst == final)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"arc {i}{where}: label -1 must be used exactly on arcs entering the "
                             f"final state {int(final[i])}: {self.arcs[i].tolist()}")
        bad = src == final
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"arc {i}{where}: the final state {int(final[i])} has a leaving arc")
        bad = lab < -1
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"arc {i}{where}: negative label {int(lab[i])}")
        key = fsa * (int(ns.max()) + 1) + src
        if bool((key[1:] < key[:-1]).any()):
            order = torch.sort(key, stable=True).indices
            self._permute_arcs(order)

    def _permute_arcs(self, order: torch.Tensor) -> None:
        object.__setattr__(self, "arcs", self.arcs[order])
        object.__setattr__(self, "scores", self.scores[order])
        for k, v in list(self._tensor_attrs.items()):
            self._tensor_attrs[k] = v[order]
        self._cache.clear()

    # ------------------------------------------------------------------ construction helpers
    def index_arcs(self, arc_map: torch.Tensor, arcs: torch.Tensor,
                   arc_splits: torch.Tensor | None, num_states, *,
                   scores: torch.Tensor | None = None, validate: bool = False) -> Fsa:
        """A new Fsa whose arc ``i`` comes from ``self``'s arc ``arc_map[i]`` (-1: no source arc).

        Scores (unless given) and every per-arc attribute are gathered through ``arc_map``, so they
        follow the operation; gradients flow back into ``self.scores``. Entries with
        ``arc_map == -1`` get score 0 and attribute 0 (-1 for label-like attributes on arcs
        entering the final state is the caller's business).
        """
        arc_map = arc_map.long()
        valid = arc_map >= 0
        safe = arc_map.clamp(min=0)
        all_valid = bool(valid.all()) if arc_map.numel() else True

        def gather(t: torch.Tensor) -> torch.Tensor:
            if t.shape[0] == 0:
                return t.new_zeros((arc_map.shape[0],) + tuple(t.shape[1:]))
            g = t[safe]
            if not all_valid:
                mask = valid.view((-1,) + (1,) * (g.dim() - 1))
                g = torch.where(mask, g, torch.zeros_like(g))
            return g

        if scores is None:
            scores = gather(self.scores)
        attrs = {k: gather(v) for k, v in self._tensor_attrs.items()}
        attrs.update(self._other_attrs)
        return Fsa(arcs, scores, num_states=num_states, arc_splits=arc_splits,
                   validate=validate, **attrs)

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, i: int) -> Fsa:
        """The i-th FSA of an FsaVec, as a single Fsa (attributes kept)."""
        if not self._is_vec:
            raise TypeError("indexing is for FsaVec; this is a single FSA")
        n = self.num_fsas
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"FSA index {i} out of range for an FsaVec of {n}")
        a0, a1 = int(self._arc_splits[i]), int(self._arc_splits[i + 1])
        arc_map = torch.arange(a0, a1, device=self.device)
        return self.index_arcs(arc_map, self.arcs[a0:a1], None, int(self._num_states[i]))

    def __len__(self) -> int:
        return self.num_fsas

    def __iter__(self):
        if not self._is_vec:
            yield self
            return
        for i in range(self.num_fsas):
            yield self[i]

    def as_vec(self) -> Fsa:
        """This FSA as an FsaVec of one (no copy of tensors)."""
        if self._is_vec:
            return self
        arc_map = torch.arange(self.num_arcs, device=self.device)
        return self.index_arcs(arc_map, self.arcs, self._arc_splits, self._num_states,
                               scores=self.scores)

    # ------------------------------------------------------------------ device, grad
    def _map_tensors(self, fn) -> Fsa:
        attrs = {k: fn(v) for k, v in self._tensor_attrs.items()}
        attrs.update(self._other_attrs)
        if self._is_vec:
            return Fsa(fn(self.arcs), fn(self.scores), num_states=fn(self._num_states),
                       arc_splits=fn(self._arc_splits), validate=False, **attrs)
        return Fsa(fn(self.arcs), fn(self.scores), num_states=int(self._num_states[0]),
                   validate=False, **attrs)

    def to(self, device: str | torch.device) -> Fsa:
        device = torch.device(device)
        if device == self.device:
            return self
        return self._map_tensors(lambda t: t.to(device))

    def detach(self) -> Fsa:
        return self._map_tensors(lambda t: t.detach())

    def clone(self) -> Fsa:
        return self._map_tensors(lambda t: t.clone())

    def requires_grad_(self, requires_grad: bool = True) -> Fsa:
        self.scores.requires_grad_(requires_grad)
        return self

    @property
    def requires_grad(self) -> bool:
        return self.scores.requires_grad

    @property
    def grad(self) -> torch.Tensor | None:
        return self.scores.grad

    # ------------------------------------------------------------------ properties
    def state_levels(self) -> torch.Tensor:
        """int64 ``[S]``: longest-path depth of each global state from its start state.

        Raises ValueError if some FSA is not acyclic. States unreachable from the start get
        levels consistent with a topological order too (Kahn's algorithm over all states).
        """
        if "levels" not in self._cache:
            self._cache["levels"] = _kahn_levels(self.num_states, self.src_global,
                                                 self.dst_global)
        lv = self._cache["levels"]
        if lv is None:
            raise ValueError("the FSA is not acyclic (it has a cycle or a self-loop)")
        return lv

    def set_state_levels(self, levels: torch.Tensor, check: bool = True) -> None:
        """Give :meth:`state_levels` (and so the forward-backward sweeps) a topological
        layering of the states instead of having it computed.

        ``levels``: int ``[S]`` (global state numbering), non-negative, with every arc going
        from a lower to a strictly higher level: the longest-path depth when the builder knows
        it (an RNN-T lattice: ``t + u``), or any such layering (the sweeps then run one step
        per level used). Saves Kahn's algorithm, a loop over the depth of the FSA. Kept until
        the arcs change. ``check``: verify that every arc goes up (ValueError otherwise).
        """
        levels = levels.to(self.device, torch.int64)
        if levels.shape != (self.num_states,):
            raise ValueError(f"levels must have shape [{self.num_states}], got "
                             f"{tuple(levels.shape)}")
        if check and levels.numel():
            up = torch.index_select(levels, 0, self.dst_global) > torch.index_select(
                levels, 0, self.src_global)
            if not bool(up.all()) or int(levels.min()) < 0:
                raise ValueError("levels must be >= 0 and increase along every arc")
        self._cache["levels"] = levels

    def is_acyclic(self) -> bool:
        try:
            self.state_levels()
            return True
        except ValueError:
            return False

    def is_top_sorted(self) -> bool:
        """Every arc goes from a lower to a higher state number."""
        return bool((self.arcs[:, 0] < self.arcs[:, 1]).all()) if self.num_arcs else True

    def is_arc_sorted(self) -> bool:
        """Arcs leaving each state are sorted by (label, dst), as OpenFst's ilabel sort."""
        if self.num_arcs < 2:
            return True
        big = int(self.num_states) + 2
        lab = self.arcs[:, 2].long()
        top = int(lab.max()) + 1
        lab = torch.where(lab < 0, torch.full_like(lab, top), lab)  # -1 sorts last, as in k2
        key = (self.src_global * (top + 1) + lab) * big + self.arcs[:, 1].long()
        return bool((key[1:] >= key[:-1]).all())

    def has_epsilons(self) -> bool:
        return bool((self.labels == 0).any())

    def properties(self) -> dict[str, bool]:
        return {"acyclic": self.is_acyclic(), "top_sorted": self.is_top_sorted(),
                "arc_sorted": self.is_arc_sorted(), "epsilon_free": not self.has_epsilons()}

    @property
    def properties_str(self) -> str:
        return "|".join(k for k, v in self.properties().items() if v)

    def __repr__(self) -> str:
        kind = f"FsaVec(num_fsas={self.num_fsas}, " if self._is_vec else "Fsa("
        extra = ", ".join(self.tensor_attr_names())
        return (f"{kind}num_states={self.num_states}, num_arcs={self.num_arcs}, "
                f"device={self.device}{', attrs=[' + extra + ']' if extra else ''})")

    def __str__(self) -> str:
        """k2's text format (:func:`wfst_asr.fsa.io.to_str`, registered in
        :data:`TEXT_FORMAT`)."""
        fmt = TEXT_FORMAT.get("to_str")
        return fmt(self) if fmt is not None else repr(self)


def _kahn_levels(num_states: int, src: torch.Tensor, dst: torch.Tensor
                 ) -> torch.Tensor | None:
    """Longest-path levels of a DAG by frontier-parallel Kahn; None when there is a cycle.

    The frontier loop runs in TorchScript (:func:`._levels.kahn_levels`)."""
    from ._levels import kahn_levels_jit  # late import: keeps this module light to import

    if num_states == 0:
        return torch.zeros(0, dtype=torch.int64, device=src.device)
    level, done = kahn_levels_jit(num_states, src, dst)
    return level if int(done) == num_states else None


def create_fsa_vec(fsas: Iterable[Fsa]) -> Fsa:
    """Concatenate FSAs (single or FsaVec) into one FsaVec; attributes must agree in name."""
    fsas = [f.as_vec() for f in fsas]
    if not fsas:
        raise ValueError("create_fsa_vec needs at least one FSA")
    device = fsas[0].device
    names = set(fsas[0].tensor_attr_names())
    for i, f in enumerate(fsas):
        if set(f.tensor_attr_names()) != names:
            raise ValueError(f"FSA {i} has attributes {sorted(f.tensor_attr_names())}, "
                             f"expected {sorted(names)}")
    arcs = torch.cat([f.arcs.to(device) for f in fsas])
    scores = torch.cat([f.scores.to(device) for f in fsas])
    counts = torch.cat([(f.arc_splits[1:] - f.arc_splits[:-1]).to(device) for f in fsas])
    splits = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), counts.cumsum(0)])
    num_states = torch.cat([f.num_states_per_fsa.to(device) for f in fsas])
    attrs = {k: torch.cat([getattr(f, k).to(device) for f in fsas]) for k in names}
    for k, v in fsas[0]._other_attrs.items():
        attrs[k] = v
    return Fsa(arcs, scores, num_states=num_states, arc_splits=splits, validate=False, **attrs)


def linear_fsa(labels: Sequence[int] | Sequence[Sequence[int]],
               device: str | torch.device | None = None) -> Fsa:
    """A linear acceptor for a label sequence (or an FsaVec for a list of sequences).

    ``[a, b]`` gives ``0 -a-> 1 -b-> 2 -(-1)-> 3``; scores are 0.
    """
    if len(labels) and isinstance(labels[0], (list, tuple)):
        return create_fsa_vec([linear_fsa(x, device) for x in labels])
    n = len(labels)
    src = torch.arange(n + 1, dtype=torch.int32)
    lab = torch.tensor(list(labels) + [-1], dtype=torch.int32)
    arcs = torch.stack([src, src + 1, lab], dim=1)
    return Fsa(arcs.to(device), num_states=n + 2)
