"""Best paths of acyclic FsaVecs (tropical semiring)."""

from __future__ import annotations

import torch

from .forward_backward import best_arcs
from .fsa import Fsa


def shortest_path(fsas: Fsa) -> Fsa:
    """The best path of each FSA as an FsaVec of linear FSAs (k2's ``shortest_path``).

    Scores, labels and every per-arc attribute (e.g. ``aux_labels``) are those of the chosen
    arcs, so ``get_tot_scores`` of the result gives the best total and gradients flow back to
    the input's scores. An FSA without a complete path gives an empty FSA (no states).
    Ties are broken towards the lowest arc index.
    """
    fsas = fsas.as_vec()
    device = fsas.device
    N = fsas.num_fsas
    alpha, best = best_arcs(fsas)
    final = fsas.final_states
    ok = (final >= 0)
    ok[ok.clone()] = torch.isfinite(alpha[final[ok]])
    cur = torch.where(ok, final, torch.zeros_like(final))
    steps = []
    active = ok.clone()
    start = fsas.start_states
    src_g = fsas.src_global
    while bool(active.any()):
        arc = best[cur[active]]
        path_arc = torch.full((N,), -1, dtype=torch.int64, device=device)
        path_arc[active] = arc
        steps.append(path_arc)
        cur = cur.clone()
        cur[active] = src_g[arc]
        active = active & (cur != start)
    if steps:
        mat = torch.stack(steps[::-1], dim=1)  # [N, L], -1 padded at the front
    else:
        mat = torch.full((N, 0), -1, dtype=torch.int64, device=device)
    lens = (mat >= 0).sum(1)
    arc_map = mat[mat >= 0]  # row-major: FSA by FSA, path order
    splits = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), lens.cumsum(0)])
    fsa_of = torch.repeat_interleave(torch.arange(N, device=device), lens,
                                     output_size=arc_map.numel())
    pos = torch.arange(arc_map.numel(), device=device) - splits[fsa_of]
    labels = fsas.labels[arc_map].long()
    arcs = torch.stack([pos, pos + 1, labels], dim=1).to(torch.int32)
    num_states = torch.where(lens > 0, lens + 1, lens)
    return fsas.index_arcs(arc_map, arcs, splits, num_states)
