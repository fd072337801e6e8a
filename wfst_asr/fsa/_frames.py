"""The per-frame loops of the dense sweeps, compiled with TorchScript when available.

A frame costs a handful of small tensor operations; in a Python loop their dispatch cost is
about half of the time and holds the GIL, so two threads cannot overlap. TorchScript runs the
same loop without the Python interpreter and releases the GIL, which lets the two halves of a
batch run on two cores. If scripting fails (e.g. a PyTorch without TorchScript), the same
functions run as plain Python.

Arc terms per bucket (``kind``): 0 none (all graph scores 0, state mode), 1 a constant ``[K*n]``
(graph scores, state mode), 2 a per-frame block ``[C, K*n]`` (arc mode).
"""


import warnings
from typing import List, Optional

import torch
from torch import Tensor


def _reduce(x: Tensor, K: int, log_semiring: bool, out: Tensor) -> None:
    """``out = (+)_k x[k]`` over the rows of ``x [K, n]``; -inf stays -inf."""
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
        torch.logsumexp(x, 0, out=out)
    else:
        torch.amax(x, 0, out=out)


def _one_frame(cur: Tensor, nxt: Tensor, c: int, others: List[Tensor], offs: List[int],
               ns: List[int], Ks: List[int], kinds: List[int], terms: List[Tensor],
               log_semiring: bool, bp: Optional[Tensor]) -> None:
    for b in range(len(others)):
        K, n, off = Ks[b], ns[b], offs[b]
        x = torch.index_select(cur, 0, others[b]).view(K, n)
        if kinds[b] == 1:
            x.add_(terms[b].view(K, n))
        elif kinds[b] == 2:
            x.add_(terms[b][c].view(K, n))
        if bp is not None:
            v, k = torch.max(x, 0)
            nxt[off:off + n] = v
            bp[off:off + n] = k
        else:
            _reduce(x, K, log_semiring, nxt[off:off + n])


def forward_frames(alpha: Tensor, t0: int, t1: int, others: List[Tensor], offs: List[int],
                   ns: List[int], Ks: List[int], kinds: List[int], terms: List[Tensor],
                   lp_states: Optional[Tensor], log_semiring: bool,
                   bp: Optional[Tensor]) -> None:
    """``alpha[t+1] = step(alpha[t])`` for t in [t0, t1); ``lp_states[t-t0]`` is added after."""
    for t in range(t0, t1):
        nxt = alpha[t + 1]
        bpt: Optional[Tensor] = None
        if bp is not None:
            bpt = bp[t + 1]
        _one_frame(alpha[t], nxt, t - t0, others, offs, ns, Ks, kinds, terms, log_semiring, bpt)
        if lp_states is not None:
            nxt.add_(lp_states[t - t0])


def backward_frames(beta: Tensor, t0: int, t1: int, others: List[Tensor], offs: List[int],
                    ns: List[int], Ks: List[int], kinds: List[int], terms: List[Tensor],
                    lp_states: Optional[Tensor], log_semiring: bool, end_ts: List[int],
                    end_states: List[Tensor], beta_final: Tensor) -> None:
    """``beta[c] = step(beta[c+1] (+ lp_states[c]))`` for c = t1-t0-1 .. 0 (frame t0+c).

    After frame ``t`` is computed, segments ending at ``t`` (``end_ts``/``end_states``) get their
    final scores ``beta_final``.
    """
    for c in range(t1 - t0 - 1, -1, -1):
        src = beta[c + 1]
        if lp_states is not None:
            src = src + lp_states[c]
        cur = beta[c]
        _one_frame(src, cur, c, others, offs, ns, Ks, kinds, terms, log_semiring, None)
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
