"""``wfst-asr train``: train a registered experiment or a config file (:mod:`wfst_asr.train`).

::

    wfst-asr train --config egs/timit/conf/ctc_blstm.yaml --set lr=5e-4 --set model.hidden=128 \\
        --exp-dir exp/ctc_blstm [--resume]
    wfst-asr train --config ctc_blstm --set train_cuts=... --set tokens=... --set token_field=...
    torchrun --nproc_per_node 4 -m wfst_asr.bin.cli train --config ...   # data-parallel

A configuration that cannot be used (an unknown name or key, a required key left empty, a
feature or output size that does not match the data) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path


def build(cfg, rank: int = 0, world: int = 1):
    """(model, loss, train_dl, dev_dl, token_table) for ``cfg``."""
    from wfst_asr.train.build import build_model_and_loss, make_loader

    model, loss, table = build_model_and_loss(cfg)
    train_dl = make_loader(cfg, cfg.train_cuts, True, rank, world)
    dev_dl = make_loader(cfg, cfg.dev_cuts, False, rank, world) if cfg.dev_cuts else None
    return model, loss, train_dl, dev_dl, table


def cmd_train(args: argparse.Namespace) -> int:
    """Build everything from the configuration and run :meth:`Trainer.fit`."""
    import torch

    from wfst_asr.train import Trainer, apply_overrides, init_distributed, load_config
    from wfst_asr.train.lock import ExpDirLock
    from wfst_asr.train.trainer import seed_everything

    # a bad configuration or input raises: wfst_asr.bin.cli.main reports it in one line (exit 2)
    cfg = apply_overrides(load_config(args.config), args.set or [])
    if args.exp_dir:
        cfg.exp_dir = args.exp_dir
    cfg.check_required()
    rank, world = init_distributed()
    # one process: lock the exp dir before anything is written there (train.log included);
    # data-parallel: Trainer.fit locks it on rank 0 and tells the other ranks
    with ExpDirLock(cfg.exp_dir, what=" ".join(sys.argv)[:300]) if world == 1 \
            else contextlib.nullcontext():
        _setup_logging(cfg.exp_dir, rank)
        seed_everything(cfg.seed)
        model, loss, train_dl, dev_dl, table = build(cfg, rank, world)
        device = (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                  else torch.device("cpu"))
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
    from wfst_asr.train.config import list_configs

    p = sub.add_parser(
        "train", help="train a registered experiment or a config file",
        description="Train the experiment --config (a registered name or a .yaml/.json config "
        "file, e.g. egs/timit/conf/ctc_blstm.yaml), with key=value overrides; checkpoints, logs "
        "and TensorBoard go to the exp dir. Under torchrun it trains data-parallel.")
    p.add_argument("--config", required=True, metavar="NAME|FILE",
                   help=f"registered: {', '.join(list_configs())}; or a config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field (repeatable): lr=1e-3, model.hidden=128, ...")
    p.add_argument("--exp-dir", help="experiment folder (overrides exp_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in the exp dir")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=cmd_train)
