"""The per-frame loops of the dense sweeps, compiled with TorchScript when available.

A frame costs a handful of small tensor operations; in a Python loop their dispatch cost is
about half of the time and holds the GIL, so two threads cannot overlap. TorchScript runs the
same loop without the Python interpreter and releases the GIL, which lets the two halves of a
batch run on two cores. If scripting fails (e.g. a PyTorch without TorchScript), the same
functions run as plain Python.

Arc terms per bucket (``kind``): 0 none (all graph scores 0, state mode), 1 a constant ``[K*n]``
(graph scores, state mode), 2 a per-frame block ``[C, K*n]`` (arc mode).

Exponentials are taken as ``exp2(x * log2(e))``: ``torch.exp`` on CPU goes through MKL's vector
math, which on some CPUs (AMD EPYC here) takes a slow path for every -inf (padding, states not
reached) and every result that underflows (improbable arcs), up to 20x its normal cost, while
``exp2`` runs vectorised whatever the input. The two agree to about one float ulp.

Leaky HMM (``leak``, log semiring): between frames, every segment's start state gets
``log(leaky) + logsumexp(alpha_t over the segment's states)`` (Kaldi's leaky-HMM step, see
:mod:`wfst_asr.losses.mmi`); the backward sweep applies the transposed step.
"""


import warnings
from typing import List, Optional

import torch
from torch import Tensor

# TorchScript takes no float globals: the loops spell out 1 / ln(2) = 1.4426950408889634 and
# ln(2) = 0.6931471805599453 (LOG2E, LN2 here, for Python callers)
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def _lse_(x: Tensor, dim: int, out: Tensor) -> Tensor:
    """``out = log sum exp(x)`` along ``dim`` (-inf when all are -inf); ``x`` is overwritten
    with ``exp(x - max)``. Returns the maximum (keepdim, -inf kept)."""
    m = torch.amax(x, dim, keepdim=True)
    ms = m.masked_fill(m.abs() == float("inf"), 0.0)
    x.sub_(ms).mul_(1.4426950408889634).exp2_()
    torch.sum(x, dim, keepdim=False, out=out)
    out.log2_().mul_(0.6931471805599453).add_(ms.squeeze(dim))
    return m


def _reduce(x: Tensor, K: int, log_semiring: bool, out: Tensor) -> None:
    """``out = (+)_k x[k]`` over the rows of ``x [K, n]``; -inf stays -inf. ``x`` may be
    overwritten."""
    if K == 1:
        out.copy_(x[0])
    elif K <= 4:
        if log_semiring:
            acc = x[0]
            for k in range(1, K - 1):
                acc = torch.logaddexp(acc, x[k])
            torch.logaddexp(acc, x[K - 1], out=out)
        else:
            acc = x[0]
            for k in range(1, K - 1):
                acc = torch.maximum(acc, x[k])
            torch.maximum(acc, x[K - 1], out=out)
    elif log_semiring:
        _lse_(x, 0, out)
    else:
        torch.amax(x, 0, out=out)


def _slot_scores(cur: Tensor, c: int, other: Tensor, K: int, n: int, kind: int,
                 term: Tensor) -> Tensor:
    """``[K, n]``: the other end's score of every padded slot of a bucket, plus the slots'
    term (kind 1: per slot; kind 2: per slot and frame ``c``; else none)."""
    x = torch.index_select(cur, 0, other).view(K, n)
    if kind == 1:
        x.add_(term.view(K, n))
    elif kind == 2:
        x.add_(term[c].view(K, n))
    return x


def _one_frame(cur: Tensor, nxt: Tensor, c: int, others: List[Tensor], offs: List[int],
               ns: List[int], Ks: List[int], kinds: List[int], terms: List[Tensor],
               log_semiring: bool, bp: Optional[Tensor]) -> None:
    for b in range(len(others)):
        K, n, off = Ks[b], ns[b], offs[b]
        x = _slot_scores(cur, c, others[b], K, n, kinds[b], terms[b])
        if bp is not None:
            v, k = torch.max(x, 0)
            nxt[off:off + n] = v
            bp[off:off + n] = k
        else:
            _reduce(x, K, log_semiring, nxt[off:off + n])


def _one_frame_post(cur: Tensor, nxt: Tensor, c: int, others: List[Tensor], offs: List[int],
                    ns: List[int], Ks: List[int], kinds: List[int], terms: List[Tensor],
                    alpha_c: Tensor, post_c: Tensor, p_offs: List[int]) -> None:
    """A backward step (log semiring) that also writes the posterior of every padded arc
    slot, ``exp(alpha_t[src] + score_t + beta_{t+1}[dst])``, into ``post_c`` (bucket blocks
    at ``p_offs``): the ``exp(x - max)`` of the reduction times ``exp(alpha_t[s] + max)``."""
    for b in range(len(others)):
        K, n, off = Ks[b], ns[b], offs[b]
        x = _slot_scores(cur, c, others[b], K, n, kinds[b], terms[b])
        m = _lse_(x, 0, nxt[off:off + n])
        f = (alpha_c[off:off + n] + m).mul_(1.4426950408889634).exp2_()
        torch.mul(x, f, out=post_c[p_offs[b]:p_offs[b] + K * n].view(K, n))


def _leak_forward(cur: Tensor, t: int, leak_idx: Tensor, leak_start: Tensor, leak_add: Tensor,
                  leak_pre: Tensor) -> None:
    """Kaldi's leaky-HMM step on ``cur = alpha_t`` (in place): the start state of every segment
    gets ``leak_add[t]`` (log(leaky), or -inf from the segment's end on) plus the logsumexp of
    the segment's states; its value before is kept in ``leak_pre[t]``."""
    N = leak_start.shape[0]
    x = torch.index_select(cur, 0, leak_idx).view(N, -1)
    if x.numel() <= 4096:  # small: one call (its exp's slow cases cost little here)
        tot = torch.logsumexp(x, 1)
    else:
        tot = torch.empty(N, dtype=cur.dtype, device=cur.device)
        _lse_(x, 1, tot)
    tot.add_(leak_add[t])
    sv = leak_pre[t]
    torch.index_select(cur, 0, leak_start, out=sv)
    cur.index_copy_(0, leak_start, torch.logaddexp(sv, tot))


def forward_frames(alpha: Tensor, t0: int, t1: int, others: List[Tensor], offs: List[int],
                   ns: List[int], Ks: List[int], kinds: List[int], terms: List[Tensor],
                   lp_states: Optional[Tensor], log_semiring: bool,
                   bp: Optional[Tensor], leak: Optional[List[Tensor]] = None) -> None:
    """``alpha[t+1] = step(alpha[t])`` for t in [t0, t1); ``lp_states[t-t0]`` is added after.

    With ``leak = [idx [N*M], start [N], add [T, N], pre [T+1, N]]`` (positions in this
    order, M per segment, padding at the sink; ``add[t]``: log(leaky) while the segment runs,
    else -inf), the leaky-HMM step is applied to ``alpha[t]`` first (in place)."""
    for t in range(t0, t1):
        nxt = alpha[t + 1]
        bpt: Optional[Tensor] = None
        if bp is not None:
            bpt = bp[t + 1]
        if leak is not None:
            _leak_forward(alpha[t], t, leak[0], leak[1], leak[2], leak[3])
        _one_frame(alpha[t], nxt, t - t0, others, offs, ns, Ks, kinds, terms, log_semiring, bpt)
        if lp_states is not None:
            nxt.add_(lp_states[t - t0])


def backward_frames(beta: Tensor, t0: int, t1: int, others: List[Tensor], offs: List[int],
                    ns: List[int], Ks: List[int], kinds: List[int], terms: List[Tensor],
                    lp_states: Optional[Tensor], log_semiring: bool, end_ts: List[int],
                    end_states: List[Tensor], beta_final: Tensor,
                    leak: Optional[List[Tensor]] = None, leak_log: float = 0.0,
                    alpha: Optional[Tensor] = None, post: Optional[Tensor] = None,
                    p_offs: Optional[List[int]] = None) -> None:
    """``beta[c] = step(beta[c+1] (+ lp_states[c]))`` for c = t1-t0-1 .. 0 (frame t0+c).

    With ``leak = [start [N], seg [S+1]]`` (bwd positions of the start states, segment of each
    position, N for the sink and final states), the transposed leaky-HMM step follows each
    frame's step. After frame ``t`` is computed, segments ending at ``t``
    (``end_ts``/``end_states``) get their final scores ``beta_final``. With ``alpha [C, S+1]``
    (forward scores of frames t0.., in this order) and ``post [C, P]`` (log semiring), the arc
    posteriors of frame t0+c go to ``post[c]`` (see :func:`_one_frame_post`).
    """
    lk_ext = torch.zeros(0, dtype=beta.dtype, device=beta.device)
    if leak is not None:
        lk_ext = torch.full((leak[0].shape[0] + 1,), float("-inf"), dtype=beta.dtype,
                            device=beta.device)
    for c in range(t1 - t0 - 1, -1, -1):
        src = beta[c + 1]
        if lp_states is not None:
            src = src + lp_states[c]
        cur = beta[c]
        if post is not None and alpha is not None and p_offs is not None:
            _one_frame_post(src, cur, c, others, offs, ns, Ks, kinds, terms, alpha[c], post[c],
                            p_offs)
        else:
            _one_frame(src, cur, c, others, offs, ns, Ks, kinds, terms, log_semiring, None)
        if leak is not None:
            N = leak[0].shape[0]
            torch.index_select(cur, 0, leak[0], out=lk_ext[:N])
            lk_ext[:N].add_(leak_log)
            torch.logaddexp(cur, torch.index_select(lk_ext, 0, leak[1]), out=cur)
        for i in range(len(end_ts)):
            if end_ts[i] == t0 + c:
                st = end_states[i]
                cur.index_copy_(0, st, beta_final.index_select(0, st))


def _script(fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.script(fn)
    except Exception:  # noqa: BLE001 - TorchScript unavailable or failing: plain Python
        return fn


def _unoptimized(fn):
    """Run a scripted function without TorchScript's profiling/optimising executor: the loops
    gain nothing from it, and it re-specialises (slowly) whenever a chunk's shape changes."""
    def call(*args):
        with torch.jit.optimized_execution(False):
            return fn(*args)
    return call


forward_frames_jit = _unoptimized(_script(forward_frames))
backward_frames_jit = _unoptimized(_script(backward_frames))
