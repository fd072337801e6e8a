"""``wfst-asr train``: train a registered experiment (:mod:`wfst_asr.train`).

::

    wfst-asr train --config timit.ctc_blstm --set lr=5e-4 --set model.hidden=128 \\
        --exp-dir exp/ctc_blstm [--resume]
    torchrun --nproc_per_node 4 -m wfst_asr.bin.cli train --config ...   # data-parallel
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _token_table(path: str) -> dict[str, int]:
    from wfst_asr.graphs.lang import read_token_list

    return {tok: i for i, tok in enumerate(read_token_list(path), start=1)}


def _loader(cfg, cuts_path: str, train: bool, rank: int, world: int):
    from lhotse import CutSet

    from wfst_asr.data import AsrDataset, make_dataloader, make_sampler

    cuts = CutSet.from_file(cuts_path)
    sampler = make_sampler(cuts, cfg.max_duration, shuffle=train, bucketing=cfg.bucketing,
                           num_buckets=cfg.num_buckets, seed=cfg.seed, world_size=world,
                           rank=rank, max_cuts=cfg.max_cuts)
    dataset = AsrDataset(cmvn=cfg.cmvn or None, spec_augment=cfg.spec_augment and train)
    return make_dataloader(dataset, sampler, num_workers=cfg.num_workers)


def build(cfg, rank: int = 0, world: int = 1):
    """(model, loss, train_dl, dev_dl, token_table) for ``cfg``."""
    from wfst_asr.losses import CtcLoss
    from wfst_asr.models import build_model

    table = _token_table(cfg.tokens) if cfg.tokens else None
    if cfg.num_classes <= 0:
        if table is None:
            raise ValueError("set num_classes or tokens")
        cfg.num_classes = max(table.values()) + 1
    if cfg.loss != "ctc":
        raise ValueError(f"unknown loss {cfg.loss!r} (only 'ctc' for now)")
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("subsampling", cfg.subsampling)
    model = build_model(cfg.model, cfg.num_features, cfg.num_classes,
                        num_tokens=cfg.num_classes, **kwargs)
    loss = CtcLoss(**{"reduction": "sum", **cfg.loss_kwargs})
    train_dl = _loader(cfg, cfg.train_cuts, True, rank, world)
    dev_dl = _loader(cfg, cfg.dev_cuts, False, rank, world) if cfg.dev_cuts else None
    return model, loss, train_dl, dev_dl, table


def cmd_train(args: argparse.Namespace) -> int:
    """Build everything from the configuration and run :meth:`Trainer.fit`."""
    import torch

    from wfst_asr.train import Trainer, apply_overrides, get_config, init_distributed
    from wfst_asr.train.trainer import seed_everything

    cfg = apply_overrides(get_config(args.config), args.set or [])
    if args.exp_dir:
        cfg.exp_dir = args.exp_dir
    rank, world = init_distributed()
    _setup_logging(cfg.exp_dir, rank)
    device = (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
              else torch.device("cpu"))
    seed_everything(cfg.seed)
    model, loss, train_dl, dev_dl, table = build(cfg, rank, world)
    Trainer(cfg, model, loss, train_dl, dev_dl, device, token_table=table).fit(args.resume)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def _setup_logging(exp_dir: str, rank: int) -> None:
    fmt = f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        Path(exp_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(exp_dir) / "train.log"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=fmt,
                        handlers=handlers, force=True)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser(
        "train", help="train a registered experiment configuration",
        description="Train the experiment registered as --config (wfst_asr.train.config), "
        "with key=value overrides; checkpoints, logs and TensorBoard go to the exp dir. "
        "Under torchrun it trains data-parallel.")
    p.add_argument("--config", required=True, help="registered name, e.g. timit.ctc_blstm")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field (repeatable): lr=1e-3, model.hidden=128, ...")
    p.add_argument("--exp-dir", help="experiment folder (overrides exp_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in the exp dir")
    p.set_defaults(func=cmd_train)
