"""CTC topologies and per-utterance CTC graphs (names and conventions as in k2).

Label 0 is blank on the input side (``labels``) and epsilon on the output side (``aux_labels``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .fsa import Fsa


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
