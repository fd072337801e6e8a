"""The totals (and arc posteriors) of transducer grid lattices by a direct anti-diagonal DP.

The lattices of :mod:`wfst_asr.losses.transducer` are regular: utterance ``n`` has the states
``(t, u)``, ``t < T_n``, ``u <= U_n``, a blank arc ``(t, u) -> (t+1, u)`` scored
``blank[n, t, u]``, a label arc ``(t, u) -> (t, u+1)`` scored ``label[n, t, u]`` and the final
arc of ``(T_n-1, U_n)`` scored ``blank[n, T_n-1, U_n]``. Every arc raises ``t + u`` by one, so
the forward scores of anti-diagonal ``d = t + u`` follow from those of ``d - 1`` by two adds
and one ``logaddexp`` over all utterances at once: ``T + U`` small steps in a TorchScript loop,
with no arc list, no sort and no level plan (what the generic engine builds for an FsaVec).

The backward scores are the forward scores of the reversed lattices. Each utterance's grid is
first extended to the batch's common last cell by a path of 0-scored arcs after its final arc,
so every total is the forward score of that one cell and the reversed lattices are the grids
flipped in both axes, whatever the lengths: both directions start at ``(0, 0)`` and run in the
same sweep, stacked along the batch. Every layout change (the skew onto anti-diagonals, the
flip, reading a cell's forward and backward scores back) is a strided view of a padded buffer,
copied once: no index tensor, no sort, nothing built arc by arc. The arc posteriors
``exp(alpha + score + beta(destination) - total)`` are computed in the forward pass and kept
for the backward (the occupation of :func:`~wfst_asr.losses.simple_transducer_loss` is their
sum per state).

The pruned lattice (windows of ``s_range`` label positions per frame) is the same grid with
every cell outside its frame's window scored -inf (``transducer._dense_window_scores``). The
semiring is log; the float dtype is that of the scores (float64 for double scores).
"""

import torch
from torch import Tensor

from wfst_asr.fsa._frames import _script, _unoptimized

NEG_INF = float("-inf")
# exp(x) as exp2(x * LOG2E): torch.exp on CPU takes a slow path (up to 20x) for -inf and for
# results that underflow, exp2 does not (see wfst_asr.fsa._frames)
LOG2E = 1.4426950408889634


def _diag_sweep(alpha: Tensor, blank: Tensor, label: Tensor) -> None:
    """``alpha[d, :, 1:] = logaddexp(alpha[d-1, :, 1:] + blank[d-1], alpha[d-1, :, :-1] +
    label[d-1])`` for ``d = 1 .. D-1``.

    ``alpha [D, M, W+1]``: the forward scores by anti-diagonal ``d`` and label position ``u``
    (column ``u + 1``; column 0 is a -inf sentinel), filled in place from ``alpha[0]``.
    ``blank [D, M, W]``: ``blank[d, m, u]`` scores the blank arc leaving cell ``(d-u, u)``;
    ``label [D, M, W]``: ``label[d, m, u]`` the label arc entering ``(d+1-u, u)`` from
    ``(d+1-u, u-1)``; -inf where no such arc (or cell) exists.
    """
    W = blank.shape[2]
    hi = alpha.narrow(2, 1, W).unbind(0)
    lo = alpha.narrow(2, 0, W).unbind(0)
    bl = blank.unbind(0)
    la = label.unbind(0)
    tmp = torch.empty_like(bl[0])
    for d in range(1, len(hi)):
        cur = hi[d]
        torch.add(hi[d - 1], bl[d - 1], out=cur)
        torch.add(lo[d - 1], la[d - 1], out=tmp)
        torch.logaddexp(cur, tmp, out=cur)


_diag_sweep_jit = _unoptimized(_script(_diag_sweep))


def _grid_dp(blank: Tensor, label: Tensor, keep: Tensor, T_n: Tensor, U_n: Tensor, both: bool,
             want_occ: bool) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``(tot [N], pb, pl [N, Tm, W], occ [B, T, Wf])`` for :class:`_GridTotals` (``both``:
    the reversed sweep and the arc posteriors ``pb`` (blank and final), ``pl`` (label); else
    ``None``; ``occ``: with ``want_occ``). Run under ``torch.inference_mode`` (cheaper
    dispatch for its ~800 small operations); the caller copies what it keeps out of it.

    Layout: each utterance's grid is extended to the common end ``(Tm, W-1)`` (``Tm``, ``W``:
    the largest ``T_n``, ``U_n + 1``) by a path of 0-scored arcs, blank from ``(T_n, U_n)``
    (the final arc's destination) to ``(Tm, U_n)``, then label to ``(Tm, W-1)``: every total is
    the forward score of that cell, and the reversed lattices are the grids flipped in both
    axes, the same for all utterances. The grids are stored transposed, ``X[kind, n, 1+u,
    pt+t]`` (kind 0 blank, 1 label) with -inf margins, so that every anti-diagonal layout the
    sweep reads is one strided view (copied once).
    """
    B, T, Wf = blank.shape
    dev, dt = blank.device, blank.dtype
    N = T_n.numel()
    Tm = int(T_n.max())
    W = int(U_n.max()) + 1
    D = Tm + W  # anti-diagonals of the extended grid, rows 0 .. Tm
    M = 2 * N if both else N
    pt = W + 1  # margin rows before (and after) the grid rows
    Tp = Tm + 2 * pt
    C = W + 2  # column 0 and W+1 are margins

    def kept(x: Tensor) -> Tensor:
        if N != B or not bool((keep == torch.arange(B, device=dev)).all()):
            x = x.index_select(0, keep)
        return x.narrow(1, 0, Tm).narrow(2, 0, W)

    # the arcs of each cell (t, u): blank (or final) for lo_b[t] <= u <= U_n, label for
    # u <= hi_l[t] (per-row bounds, so each mask is one comparison of broadcast tensors)
    t = torch.arange(Tm, device=dev).view(1, Tm, 1)
    u = torch.arange(W, device=dev).view(1, 1, W)
    Tv, Uv = T_n.view(N, 1, 1), U_n.view(N, 1, 1)
    lo_b = torch.where(t < Tv - 1, 0, torch.where(t == Tv - 1, Uv, W))
    hi_l = torch.where(t < Tv, Uv - 1, -1)
    in_b = (u >= lo_b) & (u <= Uv)
    in_l = u <= hi_l
    neg = blank.new_full((), NEG_INF)
    X = blank.new_full((2, N, C, Tp), NEG_INF)
    xb = X[0].narrow(1, 1, W).narrow(2, pt, Tm).transpose(1, 2)  # [N, Tm, W] views
    xl = X[1].narrow(1, 1, W).narrow(2, pt, Tm).transpose(1, 2)
    torch.where(in_b, kept(blank.detach()), neg, out=xb)
    torch.where(in_l, kept(label.detach()), neg, out=xl)
    # the 0-scored path to the common end: blank (t, U_n) for T_n <= t < Tm, label (Tm, u)
    # for U_n <= u < W-1
    nn_ = torch.arange(N, device=dev)
    ns = nn_.view(N, 1)
    rows = (pt + torch.arange(Tm, device=dev)).view(1, Tm)
    cols = (U_n + 1).view(N, 1)
    cur = X[0][ns, cols, rows]
    X[0][ns, cols, rows] = torch.where(rows - pt >= T_n.view(N, 1), 0.0, cur)
    uu = torch.arange(W - 1, device=dev).view(1, W - 1)
    X[1][ns, uu + 1, pt + Tm] = torch.where(uu >= U_n.view(N, 1), 0.0, NEG_INF).to(dt)

    # anti-diagonal e, position u (see _diag_sweep): the blank arc leaving (e-u, u) is
    # X[0, n, u+1, pt+e-u], the label arc entering (e+1-u, u) is X[1, n, u, pt+e+1-u]. The
    # reversed lattice (cell (t', u') = (Tm-t, W-1-u)) reads Y = X flipped in both axes,
    # Y[k, n, c, r] = X[k, n, W+1-c, Tp-1-r]: its blank arc leaving (t', u') is the blank
    # arc entering (Tm-t', W-1-u'), X[0, n, W-u', pt+Tm-1-t'] = Y[0, n, u'+1, pt+t'] (as
    # Tp = Tm + 2 pt); its label arc entering (t', u') is the label arc leaving
    # (Tm-t', W-1-u'), X[1, n, W-u', pt+Tm-t'] = Y[1, n, u'+1, pt+t'-1]: with t' = e+1-u'
    # both are at Y[k, n, u'+1, pt+e-u'].
    def skew(Z: Tensor, cu: int, ct: int) -> Tensor:
        return Z.as_strided((D, N, W), (1, C * Tp, Tp - 1),
                            Z.storage_offset() + cu * Tp + pt + ct)

    sk = blank.new_empty((2, D, M, W))
    sk[0, :, :N] = skew(X[0], 1, 0)
    sk[1, :, :N] = skew(X[1], 0, 1)
    if both:
        Y = X.flip(2, 3)
        sk[0, :, N:] = skew(Y[0], 1, 0)
        sk[1, :, N:] = skew(Y[1], 1, 0)
        del Y
    # alpha[d] = buf[d + 1]; buf[0], an all -inf diagonal "-1", lets the reversed scores be
    # read back with a sentinel column (below)
    buf = blank.new_full((D + 1, M, W + 1), NEG_INF)
    buf[1, :, 1] = 0.0
    _diag_sweep_jit(buf[1:], sk[0], sk[1])
    tot = buf[D, :N, W]
    if not both:
        return tot, None, None, None

    # forward scores of cell (t, u), A[n, t, u] = buf[t+u+1, n, u+1]; the reversed grid's,
    # with its sentinel column, R[n, t', j] = buf[t'+j, N+n, j] (j = u'+1, j = 0: -inf);
    # beta of cell (t, u) = reversed (Tm-t, W-1-u): beta[n, t, u] = R[n, Tm-t, W-u], -inf
    # at u = W. Posteriors exp(alpha + score + beta(destination) - total).
    W1 = W + 1
    A = buf.as_strided((N, Tm, W), (W1, M * W1, M * W1 + 1), M * W1 + 1)
    R = buf.as_strided((N, Tm + 1, W + 1), (W1, M * W1, M * W1 + 1), N * W1)
    beta = R.flip(1, 2)  # [N, Tm+1, W+1]
    fin = torch.isfinite(tot)
    all_fin = bool(fin.all())
    a = A - torch.where(fin, tot, torch.zeros_like(tot)).view(N, 1, 1)
    zero = blank.new_zeros(())
    if not all_fin:
        in_b = in_b & fin.view(N, 1, 1)
        in_l = in_l & fin.view(N, 1, 1)
    pb = (a + xb).add_(beta.narrow(1, 1, Tm).narrow(2, 0, W)).mul_(LOG2E).exp2_()
    pb = torch.where(in_b, pb, zero)
    pl = (a + xl).add_(beta.narrow(1, 0, Tm).narrow(2, 1, W)).mul_(LOG2E).exp2_()
    pl = torch.where(in_l, pl, zero)
    occ = _scatter(pb + pl, keep, B, T, Wf) if want_occ else None
    return tot, pb, pl, occ


class _GridTotals(torch.autograd.Function):
    """Totals ``[N]`` of the grid lattices of the utterances ``keep`` of ``[B, T, Wf]`` score
    grids (``T_n`` frames, ``U_n`` labels); with ``want_occ`` also the state occupation
    ``[B, T, Wf]`` (no grad). The backward scores and posteriors are computed in the forward
    pass whenever a gradient or the occupation is wanted (one sweep for both directions,
    :func:`_grid_dp`)."""

    @staticmethod
    def forward(ctx, blank: Tensor, label: Tensor, keep: Tensor, T_n: Tensor, U_n: Tensor,
                want_occ: bool):
        both = want_occ or ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.inference_mode():
            tot, pb, pl, occ = _grid_dp(blank, label, keep, T_n, U_n, both, want_occ)
        # copies outside inference mode: ordinary tensors, as autograd needs
        tot = tot.clone()
        ctx.dims = (*blank.shape, T_n.numel())
        ctx.keep = keep
        if not both:
            ctx.save_for_backward()
            return tot, blank.new_zeros(0)
        pb, pl = pb.clone(), pl.clone()
        ctx.save_for_backward(pb, pl)
        if want_occ:
            occ = occ.clone()
            ctx.mark_non_differentiable(occ)
            return tot, occ
        return tot, blank.new_zeros(0)

    @staticmethod
    def backward(ctx, g_tot: Tensor, _g_occ):
        B, T, Wf, N = ctx.dims
        pb, pl = ctx.saved_tensors
        g = g_tot.to(pb.dtype).view(N, 1, 1)
        gb = _scatter(pb * g, ctx.keep, B, T, Wf) if ctx.needs_input_grad[0] else None
        gl = _scatter(pl * g, ctx.keep, B, T, Wf) if ctx.needs_input_grad[1] else None
        return gb, gl, None, None, None, None


def _scatter(x: Tensor, keep: Tensor, B: int, T: int, Wf: int) -> Tensor:
    """``x [N, Tm, W]`` into a zero ``[B, T, Wf]`` grid at the utterances ``keep`` (``x``
    itself when that is the whole grid)."""
    N, Tm, W = x.shape
    if (N, Tm, W) == (B, T, Wf) and bool((keep == torch.arange(B, device=keep.device)).all()):
        return x
    out = x.new_zeros(B, T, Wf)
    out.narrow(1, 0, Tm).narrow(2, 0, W).index_copy_(0, keep, x)
    return out


def grid_totals(blank: Tensor, label: Tensor, keep: Tensor, T_n: Tensor, U_n: Tensor,
                want_occupation: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-semiring totals ``[N]`` (differentiable w.r.t. ``blank`` and ``label``) of the grid
    lattices (module doc) of the utterances ``keep [N]`` of the score grids ``blank``,
    ``label`` ``[B, T, W]``, with ``1 <= T_n <= T`` frames and ``U_n <= W - 1`` labels each
    (int64, on the grids' device); scores outside each utterance's arcs are never read. With
    ``want_occupation`` also the occupation ``[B, T, W]`` of each state (sum of the posteriors
    of its blank or final and its label arc; 0 outside the kept utterances' grids and for
    totals that are not finite), else ``None``. Memory: a few ``[N, T + 2 U, U]`` buffers
    (``T``, ``U``: the longest ``T_n``, ``U_n``)."""
    tot, occ = _GridTotals.apply(blank, label, keep, T_n, U_n, want_occupation)
    return tot, (occ if want_occupation else None)
