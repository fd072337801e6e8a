#!/usr/bin/env python3
"""TIMIT CTC training throughput of a registered config, split into network and loss time.

Measured per training step, with ``time.perf_counter`` around each part (batches are loaded
beforehand, so data loading is not timed; medians over the steps after 2 warm-up steps):

1. ``fwd``: the network forward to log-probs (training mode: dropout on);
2. ``loss``: the CTC loss on ``lp = log_probs.detach().requires_grad_()`` and its
   ``backward()``: the whole cost of the FSA engine's graph intersection, forward + backward;
3. ``rest``: ``log_probs.backward(lp.grad)`` through the network, then the trainer's step
   (non-finite guard, gradient clipping, optimizer step, zero_grad).

Reported: input frames/s (feature frames before subsampling, summed over the utterances,
per second of the whole step), output frames/s, the loss share and the network share
(fwd + rest) of the step in %, and the loss time as a ratio to the project's reference, timed
in the same run right before each step: torch's ``ctc_loss`` forward + backward on B=16,
T=500, V=500, U=100 (``case_torch_ctc`` of ``bench_fsa.py``).

Model, loss and optimizer are built as ``wfst-asr train`` builds them, from the registered
config (``egs/timit/conf/ctc_blstm.yaml`` unless ``--config``) with ``--set`` overrides. Batches: the
recipe's training loader (sampler, CMVN, SpecAugment as configured) over the TIMIT features
when ``train_cuts`` and ``cmvn`` exist, else (or with ``--synthetic``) random features of
B=16 x T=300 frames with random transcripts of T/subsampling/3 tokens. Without the tokens
file, ``num_classes`` defaults to 49 and phone symbols get ids in sorted order.

    python tools/bench/bench_train.py                         # 10 steps, 2 threads
    python tools/bench/bench_train.py --set max_duration=100 --json exp/bench_train.json
    python tools/bench/bench_train.py --quick [--synthetic]   # small model, 3 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fsa import _time, case_torch_ctc

from wfst_asr.atomic import atomic_write_text
from wfst_asr.train import ExperimentConfig, Trainer

WARMUP = 2
REF = {"B": 16, "T": 500, "V": 500, "U": 100}
SYNTH_B, SYNTH_T = 16, 300
DEFAULT_CLASSES = 49  # 48 TIMIT phones + blank, when the tokens file is missing
QUICK_SETS = ["model.hidden=64", "model.num_layers=1"]

#: (features [B, T, F], feature_lens [B], one token-id list per utterance)
Batch = tuple[torch.Tensor, torch.Tensor, list[list[int]]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="egs/timit/conf/ctc_blstm.yaml",
                   help="registered config name or config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for `wfst-asr train` (repeatable)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--synthetic", action="store_true", help="random batches, not TIMIT")
    p.add_argument("--batch", type=int, default=SYNTH_B, help="--synthetic: utterances per batch")
    p.add_argument("--frames", type=int, default=SYNTH_T, help="--synthetic: input frames each")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: 3 steps, overrides {' '.join(QUICK_SETS)} first")
    p.add_argument("--json", help="write the results (with every step) to this file")
    return p.parse_args(argv)


def make_config(name: str, overrides: list[str]) -> ExperimentConfig:
    """The registered config with ``overrides``; without its tokens file, num_classes 49."""
    from wfst_asr.train import apply_overrides, load_config

    cfg = apply_overrides(load_config(name), overrides)
    if cfg.tokens and not os.path.exists(cfg.tokens):
        print(f"note: no tokens file {cfg.tokens}: num_classes "
              f"{cfg.num_classes or DEFAULT_CLASSES}, phone ids in sorted order")
        cfg.tokens = ""
        cfg.num_classes = cfg.num_classes or DEFAULT_CLASSES
    cfg.dev_cuts = ""  # not needed: no dev loader
    return cfg


def has_data(cfg: ExperimentConfig) -> bool:
    return bool(cfg.train_cuts and os.path.exists(cfg.train_cuts)
                and cfg.cmvn and os.path.exists(cfg.cmvn))


def build(cfg: ExperimentConfig, with_data: bool):
    """(model, loss, train loader or None, token table or None), as ``wfst-asr train`` builds
    them (:mod:`wfst_asr.train.build`)."""
    from wfst_asr.train import build_model_and_loss, make_loader

    if not with_data:
        cfg.train_cuts = ""  # synthetic batches: nothing to take the feature size from
    model, loss, table = build_model_and_loss(cfg)
    train_dl = make_loader(cfg, cfg.train_cuts, True) if with_data else None
    return model, loss, train_dl, table


def _symbol_table(batches: list[dict], field: str) -> dict[str, int] | None:
    """Ids 1.. for the symbols of ``field`` in sorted order (None if the field holds ids)."""
    values = [v for b in batches for v in b["supervisions"].get(field, []) if v is not None]
    syms = {t for v in values for t in (v.split() if isinstance(v, str) else v)}
    if not any(isinstance(t, str) and not t.lstrip("-").isdigit() for t in syms):
        return None
    return {t: i for i, t in enumerate(sorted(syms), start=1)}


def real_batches(cfg: ExperimentConfig, train_dl, table: dict[str, int] | None,
                 n: int) -> list[Batch]:
    """The first ``n`` non-empty batches of the training loader (epochs 1, 2, ...)."""
    from wfst_asr.train import batch_targets

    raw: list[dict] = []
    epoch = 0
    while len(raw) < n:
        epoch += 1
        train_dl.sampler.set_epoch(epoch)
        got = [b for b in train_dl if b["features"].shape[0]]
        if not got:
            raise RuntimeError(f"no batch in {cfg.train_cuts}")
        raw.extend(got[:n - len(raw)])
    table = table or _symbol_table(raw, cfg.token_field)
    if table and max(table.values()) >= cfg.num_classes:
        raise ValueError(f"{len(table)} token symbols for num_classes={cfg.num_classes}")
    return [(b["features"], b["feature_lens"], batch_targets(b, cfg.token_field, table))
            for b in raw]


def synthetic_batches(cfg: ExperimentConfig, n: int, B: int = SYNTH_B,
                      T: int = SYNTH_T) -> list[Batch]:
    """``n`` batches of B random utterances of T frames, transcripts of T/subsampling/3."""
    g = torch.Generator().manual_seed(cfg.seed)
    U = max(T // max(cfg.subsampling, 1) // 3, 1)
    return [(torch.randn(B, T, cfg.num_features, generator=g), torch.full((B,), T),
             torch.randint(1, cfg.num_classes, (B, U), generator=g).tolist())
            for _ in range(n)]


def timed_step(trainer: Trainer, batch: Batch) -> dict[str, float]:
    """One training step as the trainer's, timed in three parts (seconds) plus frame counts."""
    feats, lens, targets = batch
    t0 = time.perf_counter()
    log_probs, out_lens = trainer.model(feats, lens)
    t1 = time.perf_counter()
    lp = log_probs.detach().requires_grad_()
    loss, info = trainer.loss_fn(lp, out_lens, targets)
    sums = getattr(trainer.loss_fn, "reduction", "sum") == "sum"
    (loss / (max(int(info["frames"]), 1) if sums else 1)).backward()
    t2 = time.perf_counter()
    log_probs.backward(lp.grad)
    trainer._step(loss)  # nan_guard, clip, optimizer step, zero_grad: as Trainer.train_step
    t3 = time.perf_counter()
    return {"utts": feats.shape[0], "in_frames": int(lens.sum()),
            "out_frames": int(out_lens.sum()), "excluded": int(info["num_excluded"]),
            "fwd": t1 - t0, "loss": t2 - t1, "rest": t3 - t2, "total": t3 - t0,
            "loss_value": float(loss.detach()) / max(int(info["frames"]), 1)}


def derived(row: dict[str, float], ref: float) -> dict[str, float]:
    """Rates and shares of one step; ``ref``: the reference time before it."""
    t = row["total"]
    return {**row, "ref": ref, "in_fps": row["in_frames"] / t, "out_fps": row["out_frames"] / t,
            "loss_pct": 100 * row["loss"] / t, "net_pct": 100 * (row["fwd"] + row["rest"]) / t,
            "loss_ratio": row["loss"] / ref}


def run_steps(trainer: Trainer, batches: list[Batch], ref_fn: Callable[[], None]
              ) -> list[dict[str, float]]:
    """Every step (warm-up included), each right after one timing of the reference."""
    trainer.model.train()
    ref_fn()
    rows = []
    for batch in batches:
        ref = _time(ref_fn)
        rows.append(derived(timed_step(trainer, batch), ref))
    return rows


COLUMNS = [("utts", "utts", "{:.0f}"), ("in_frames", "in frames", "{:.0f}"),
           ("fwd", "fwd ms", "ms"), ("loss", "loss ms", "ms"), ("rest", "rest ms", "ms"),
           ("total", "step ms", "ms"), ("in_fps", "in frames/s", "{:.0f}"),
           ("out_fps", "out frames/s", "{:.0f}"), ("loss_pct", "loss %", "{:.1f}"),
           ("net_pct", "network %", "{:.1f}"), ("loss_ratio", "loss / ref", "{:.2f}")]


def _cell(value: float, fmt: str) -> str:
    return f"{value * 1e3:.1f}" if fmt == "ms" else fmt.format(value)


def print_table(rows: list[dict[str, float]], median: dict[str, float]) -> None:
    print("| step | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for i, r in enumerate(rows, start=1):
        tag = f"{i} (warm-up)" if i <= WARMUP else str(i)
        print(f"| {tag} | " + " | ".join(_cell(r[k], f) for k, _, f in COLUMNS) + " |")
    print("| **median** | " + " | ".join(f"**{_cell(median[k], f)}**" for k, _, f in COLUMNS)
          + " |")


def aggregate(rows: list[dict[str, float]]) -> dict[str, float]:
    """Rates and shares over all ``rows`` together (sums of frames and of times)."""
    tot = {k: sum(r[k] for r in rows) for k in ("in_frames", "out_frames", "fwd", "loss",
                                                "rest", "total")}
    t = tot["total"]
    return {"in_fps": tot["in_frames"] / t, "out_fps": tot["out_frames"] / t,
            "loss_pct": 100 * tot["loss"] / t, "net_pct": 100 * (tot["fwd"] + tot["rest"]) / t}


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = 3 if a.quick else a.steps
    overrides = (QUICK_SETS if a.quick else []) + a.set
    cfg = make_config(a.config, overrides)
    real = has_data(cfg) and not a.synthetic
    from wfst_asr.train import seed_everything

    seed_everything(cfg.seed)
    model, loss_fn, train_dl, table = build(cfg, real)
    n = WARMUP + steps
    batches = (real_batches(cfg, train_dl, table, n) if real
               else synthetic_batches(cfg, n, a.batch, a.frames))
    trainer = Trainer(cfg, model, loss_fn, None)
    rows = run_steps(trainer, batches, case_torch_ctc(**REF))
    med = medians(rows[WARMUP:])
    params = sum(p.numel() for p in model.parameters())
    data = f"TIMIT {cfg.train_cuts}" if real else f"synthetic B={a.batch} T={a.frames}"
    print(f"torch {torch.__version__}, {a.threads} threads; config {cfg.name} "
          f"{' '.join(overrides)}; model {cfg.model} {cfg.model_kwargs}, {params:,} params, "
          f"subsampling {cfg.subsampling}, {cfg.num_classes} classes; data: {data}")
    print(f"reference torch ctc_loss fwd+bwd {REF}: median {med['ref'] * 1e3:.1f} ms; "
          f"medians over steps {WARMUP + 1}..{n}")
    print_table(rows, med)
    agg = aggregate(rows[WARMUP:])
    print(f"over steps {WARMUP + 1}..{n}: {agg['in_fps']:.0f} input frames/s, "
          f"{agg['out_fps']:.0f} output frames/s, loss {agg['loss_pct']:.1f}% of the time, "
          f"network {agg['net_pct']:.1f}%")
    summary = {"config": cfg.name, "overrides": overrides, "data": data,
               "threads": a.threads, "torch": torch.__version__, "params": params,
               "warmup": WARMUP, "steps": steps, "reference": REF, "median": med,
               "aggregate": agg}
    import resource
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the process: {summary['peak_rss_mb']:.0f} MB")
    print(json.dumps(summary))
    if a.json:
        full = {**summary, "config_values": cfg.to_dict(), "per_step": rows}
        atomic_write_text(a.json, json.dumps(full, indent=2) + "\n")


if __name__ == "__main__":
    main()
