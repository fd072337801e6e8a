"""The frame-rate rule of a network: how many output frames ``T`` input frames give.

It belongs to the model (every encoder has ``subsampling_factor``, ``subsampling_mode`` and
``output_lengths(lens)``); the data pipeline asks the model
(:func:`wfst_asr.data.supervision_segments` takes it) instead of repeating the rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["subsampled_lengths"]


def subsampled_lengths(lengths: torch.Tensor, subsampling_factor: int = 1,
                       mode: str | Callable[[torch.Tensor], torch.Tensor] = "floor"
                       ) -> torch.Tensor:
    """Number of output frames of a network that subsamples ``lengths`` input frames.

    ``mode`` must match the model:

    - ``"floor"``: ``T // s`` (e.g. frame stacking / pooling that drops the remainder);
    - ``"ceil"``: ``(T + s - 1) // s`` (strided layers with "same" padding);
    - ``"conv"``: ``log2(s)`` stride-2 convolutions of kernel 3 with no padding,
      ``T -> (T - 1) // 2`` each, i.e. ``((T - 1) // 2 - 1) // 2`` for ``s = 4`` (icefall's
      classic ``Conv2dSubsampling``); ``s`` must be a power of two;
    - a callable ``lengths -> lengths`` for anything else.

    With ``subsampling_factor=1`` every built-in mode is the identity. Results are clamped at 0.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    s = int(subsampling_factor)
    if s < 1:
        raise ValueError(f"subsampling_factor must be >= 1, got {s}")
    if callable(mode):
        out = mode(lengths)
    elif s == 1:
        out = lengths
    elif mode == "floor":
        out = lengths // s
    elif mode == "ceil":
        out = (lengths + s - 1) // s
    elif mode == "conv":
        if s & (s - 1):
            raise ValueError(f"mode='conv' needs a power-of-two factor, got {s}")
        out = lengths
        while s > 1:
            out = torch.div(out - 1, 2, rounding_mode="floor")
            s //= 2
    else:
        raise ValueError(f"unknown subsampling mode {mode!r}")
    return torch.clamp(torch.as_tensor(out, dtype=torch.int64), min=0)
