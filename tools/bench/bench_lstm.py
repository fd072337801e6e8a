#!/usr/bin/env python3
"""The encoders' LSTM: packed sequences against per-direction runs on the padded batch.

``wfst_asr.models.encoders._run_lstm`` runs each layer and direction of an ``nn.LSTM`` on the
padded batch (the backward direction on each sequence reversed in place), which gives the
outputs of the packed LSTM (tests/test_models.py) while keeping PyTorch's fused CPU kernel;
the packed input it replaced falls back to a slower one. This times both, forward + backward
(training mode), on the LJ Speech recipe's shape: a 2-layer BLSTM (one ``nn.LSTM`` per layer,
as ``Blstm`` builds it), 160 cells per direction, 240 inputs (80 fbank x 3 stacked), a batch of
6 utterances of 170-220 frames. Each figure is the median of ``--rounds`` rounds, the two
interleaved round by round.

    python tools/bench/bench_lstm.py [--threads 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from wfst_asr.models.encoders import _run_lstm


def packed(layers: nn.ModuleList, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The former path: each layer on packed sequences."""
    for lstm in layers:
        p = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        x = pad_packed_sequence(lstm(p)[0], batch_first=True, total_length=x.shape[1])[0]
    return x


def padded(layers: nn.ModuleList, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    for lstm in layers:
        x = _run_lstm(lstm, x, lens)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=160)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers = nn.ModuleList([nn.LSTM(240, args.hidden, batch_first=True, bidirectional=True),
                            nn.LSTM(2 * args.hidden, args.hidden, batch_first=True,
                                    bidirectional=True)]).train()
    lens = torch.tensor([220, 210, 200, 190, 180, 170])
    x = torch.randn(len(lens), int(lens.max()), 240, requires_grad=True)
    times: dict[str, list[float]] = {"packed": [], "padded": []}
    for r in range(args.rounds + 1):
        for name, fn in (("packed", packed), ("padded", padded)):
            t0 = time.perf_counter()
            fn(layers, x, lens).sum().backward()
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"threads {args.threads}: packed {med['packed'] * 1e3:.0f} ms, padded "
          f"{med['padded'] * 1e3:.0f} ms per forward + backward: "
          f"{med['packed'] / med['padded']:.1f}x")


if __name__ == "__main__":
    main()
