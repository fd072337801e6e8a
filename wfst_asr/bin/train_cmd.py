"""``wfst-asr train``: train a registered experiment or a config file (:mod:`wfst_asr.train`);
``wfst-asr eval``: the evaler job that follows it (:mod:`wfst_asr.train.jobs`).

::

    wfst-asr train --config egs/timit/conf/ctc_blstm.yaml --set lr=5e-4 --set model.hidden=128 \\
        --exp-dir exp/ctc_blstm [--resume]
    wfst-asr train --config ctc_blstm --set train_cuts=... --set tokens=... --set token_field=...
    wfst-asr train --config egs/timit/conf/distill_ctc_blstm.yaml --set tasks.phones.weight=2
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
    """(model, loss, train_dl, dev_dl, token_table) for ``cfg``. A configuration with
    ``tasks`` builds the multi-task model, criterion and loaders
    (:func:`wfst_asr.train.multitask.build_multitask`; token table None: give the trainer
    ``targets=loss.batch_targets``)."""
    from wfst_asr.train.build import build_model_and_loss, make_loader

    if cfg.tasks:
        from wfst_asr.train.multitask import build_multitask

        return (*build_multitask(cfg, rank, world), None)
    model, loss, table = build_model_and_loss(cfg)
    train_dl = make_loader(cfg, cfg.train_cuts, True, rank, world)
    dev_dl = make_loader(cfg, cfg.dev_cuts, False, rank, world) if cfg.dev_cuts else None
    return model, loss, train_dl, dev_dl, table


def cmd_train(args: argparse.Namespace) -> int:
    """Build everything from the configuration and run :meth:`Trainer.fit`."""
    import torch

    from wfst_asr.train import Trainer, apply_overrides, init_distributed, load_config
    from wfst_asr.train.lock import ExpDirLock
    from wfst_asr.train.multitask import apply_task_overrides
    from wfst_asr.train.trainer import seed_everything

    # a bad configuration or input raises: wfst_asr.bin.cli.main reports it in one line (exit 2)
    cfg = load_config(args.config)
    cfg = apply_overrides(cfg, apply_task_overrides(cfg, args.set or []))
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
        Trainer(cfg, model, loss, train_dl, dev_dl, device, token_table=table,
                targets=getattr(loss, "batch_targets", None)).fit(args.resume)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """The evaler job (:func:`wfst_asr.train.jobs.run_eval_job`)."""
    from wfst_asr.train.jobs import run_eval_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    table = run_eval_job(args.exp_dir, args.cuts, args.name, args.out_dir, args.watch,
                         args.poll, args.max_wait, args.device, args.max_duration,
                         task=args.task)
    print(f"results per checkpoint in {table}")
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

    e = sub.add_parser(
        "eval", help="the loss of a run's checkpoints on a data set (an evaler job)",
        description="Compute the experiment's loss per output frame on --cuts with its newest "
        "complete checkpoint, or, with --watch, with every new complete checkpoint as "
        "training writes them, until the trainer writes training-done. Results per "
        "checkpoint step in OUT/results.tsv (a restarted job skips those done) and "
        "TensorBoard OUT/tensorboard.")
    e.add_argument("--exp-dir", required=True, help="the trainer's experiment folder")
    e.add_argument("--cuts", required=True, help="the data set (a cuts manifest)")
    e.add_argument("--name", help="the set's name (default: the file name without suffixes)")
    e.add_argument("--out-dir", help="default EXP/eval_NAME")
    e.add_argument("--watch", action="store_true", help="evaluate every new checkpoint")
    e.add_argument("--poll", type=float, default=30.0, help="seconds between looks")
    e.add_argument("--max-wait", type=float,
                   help="--watch: stop after this many seconds without a new checkpoint")
    e.add_argument("--task", help="a multi-task experiment: the task evaluated (its head and "
                   "loss; default: the first task)")
    e.add_argument("--device", help="default: cuda if available")
    e.add_argument("--max-duration", type=float, help="seconds per batch (default: the "
                   "config's)")
    e.add_argument("--debug", action="store_true", help="show the traceback of an error")
    e.set_defaults(func=cmd_eval)
