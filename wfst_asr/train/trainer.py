"""The trainer every recipe uses: epochs, checkpoints, resume, dev loss, averaging, DDP.

::

    seed_everything(cfg.seed)
    model = build_model(...)
    trainer = Trainer(cfg, model, CtcLoss(), train_dl, dev_dl, device)
    history = trainer.fit(resume=True)     # [{"epoch", "train_loss", "dev_loss", ...}, ...]

Per epoch: a tqdm bar, TensorBoard scalars (``exp_dir/tensorboard``), the dev loss,
``exp_dir/epoch-N.pt`` (atomic), ``best.pt`` when the dev loss improves; at the end the
readable checkpoints among the last ``cfg.average_last`` epochs are averaged into
``averaged.pt`` (an unreadable one is skipped with a warning; ``averaged_from`` lists the files
and epochs used). ``fit(resume=True)`` continues after the newest readable ``epoch-N.pt`` with
the model, optimizer, scheduler and RNG states restored, so the result equals an uninterrupted
run (same seed, deterministic kernels).

Mid-epoch checkpoints: with ``cfg.save_every_n`` = N > 0, ``step-G.pt`` (G: the global step) is
written every N batches (at the first optimizer-step boundary after them, with
``cfg.accum_grad``), the last ``cfg.keep_last_n`` kept. It holds the batches done in the epoch
and their loss sums; a resume from it fast-forwards the sampler over those batches (without
loading them) and restores the RNG state after the data loader's iterator is made, so a run
killed at any point loses at most N batches and, with ``num_workers=0``, ends equal to an
uninterrupted run (with workers the batches are the same; the workers' augmentation draws are
not). Every checkpoint has a completion marker (:func:`~.checkpoint.save_checkpoint`), and
``exp_dir/training-done`` (JSON: last epoch and step) is written when ``fit`` ends: what the
watching jobs (``wfst-asr eval --watch``) wait for.

``cfg.accum_grad`` = K sums the gradients of K batches (each batch's per-frame loss divided by
K) into one optimizer step; ``cfg.amp`` (``bf16``, ``fp16``) runs the network under
``torch.autocast`` (fp16 with a gradient scaler, checkpointed) while the losses, and so the
graph sums, stay in float32 or float64.

``fit`` holds an exclusive lock on the experiment directory (:class:`~.lock.ExpDirLock`,
``exp_dir/.lock``) from start to end: a second run into the same directory fails at once with
:class:`~.lock.ExpDirLockedError` naming the holder (pid, host, since). Outputs of an earlier
run never look like this run's: ``averaged.pt`` is removed when a run starts (it is rewritten
at the end); a fresh start moves an earlier run's ``epoch-N.pt`` and ``best.pt`` to
``earlier-run-TIME/``; a resume removes a ``best.pt`` that is unreadable or newer than the
checkpoint resumed from.

The loss function is called ``loss_fn(log_probs, out_lens, token_seqs) -> (loss, info)`` with
``info["num_utts"]``, ``info["num_excluded"]`` and ``info["frames"]`` (as
:class:`~wfst_asr.losses.CtcLoss`); a ``"sum"`` loss is divided by ``info["frames"]`` before
``backward()``, and losses are reported per output frame. A batch with no usable utterance is
skipped (counted in ``skipped_batches``); a step whose loss or gradients are not finite is
skipped by :func:`~wfst_asr.losses.nan_guard` (counted in ``skipped_steps``).

Distributed data-parallel: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment),
:func:`init_distributed` starts the process group (gloo on CPU, nccl on CUDA), the model is
wrapped in ``DistributedDataParallel``, the samplers shard by rank (build them with
``world_size``/``rank``), losses are summed over ranks, and only rank 0 writes files; every
checkpoint holds each rank's RNG state (``rng_ranks``), so a resume with the same world size
continues every rank's stream as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from wfst_asr.atomic import atomic_write_text
from wfst_asr.losses import nan_guard
from wfst_asr.progress import progress
from wfst_asr.train.checkpoint import (
    CheckpointError,
    average_readable_checkpoints,
    find_checkpoints,
    find_step_checkpoints,
    get_rng_state,
    init_model_from,
    latest_checkpoint,
    load_checkpoint,
    marker_path,
    remove_checkpoint,
    sampler_state,
    save_checkpoint,
    set_rng_state,
)
from wfst_asr.train.config import ExperimentConfig
from wfst_asr.train.lock import ExpDirLock, ExpDirLockedError

__all__ = [
    "Trainer",
    "batch_targets",
    "build_optimizer",
    "build_scheduler",
    "init_distributed",
    "seed_everything",
]

log = logging.getLogger(__name__)

#: written into the experiment directory when :meth:`Trainer.fit` ends
TRAINING_DONE = "training-done"

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: environment variable: seconds :func:`init_distributed` waits for the process group
DIST_TIMEOUT_ENV = "WFST_ASR_DIST_TIMEOUT"


class DistributedInitError(RuntimeError):
    """The process group could not be started (a peer that never came, an unreachable
    ``MASTER_ADDR:MASTER_PORT``, a timeout); the message is one line naming the endpoint."""


def _dist_timeout(timeout: float | None) -> float | None:
    """``timeout`` if given, else :data:`DIST_TIMEOUT_ENV` (seconds), else None (torch's
    default); a ValueError naming the variable when it is not a positive number."""
    if timeout is None:
        raw = os.environ.get(DIST_TIMEOUT_ENV, "").strip()
        if not raw:
            return None
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"{DIST_TIMEOUT_ENV}={raw!r}: not a number of seconds") from None
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"{DIST_TIMEOUT_ENV}={raw!r}: must be a positive number of seconds")
    elif not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"init_distributed: timeout must be positive seconds, got {timeout}")
    return timeout


def init_distributed(timeout: float | None = None) -> tuple[int, int]:
    """``(rank, world_size)``; with ``WORLD_SIZE`` > 1 (torchrun) also start the process
    group: nccl when CUDA is available (and select ``cuda:LOCAL_RANK``), else gloo.

    ``timeout`` (seconds; default ``$WFST_ASR_DIST_TIMEOUT``, else torch's default) bounds the
    wait for the other processes and is the process group's timeout for every collective
    afterwards. A timeout or connection failure raises :class:`DistributedInitError`, one line
    naming the backend, the rank and ``MASTER_ADDR:MASTER_PORT``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        import datetime

        seconds = _dist_timeout(timeout)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if cuda else "gloo"
        kwargs = {} if seconds is None else {"timeout": datetime.timedelta(seconds=seconds)}
        try:
            dist.init_process_group(backend, **kwargs)
        except (RuntimeError, TimeoutError, ConnectionError) as e:
            endpoint = (f"{os.environ.get('MASTER_ADDR', '?')}:"
                        f"{os.environ.get('MASTER_PORT', '?')}")
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()),
                         type(e).__name__)
            wait = f"{seconds:g} s" if seconds is not None else "torch's default timeout"
            raise DistributedInitError(
                f"could not start the {backend} process group (rank "
                f"{os.environ.get('RANK', '?')} of {world}, MASTER_ADDR:MASTER_PORT {endpoint}, "
                f"waited up to {wait}; set {DIST_TIMEOUT_ENV} to change): {first}") from e
    return dist.get_rank(), dist.get_world_size()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _token_ids(value: Any, table: dict[str, int] | None, field: str) -> list[int]:
    if value is None:
        raise ValueError(f"a supervision has no {field!r} field (set token_field)")
    if isinstance(value, str):
        value = value.split()
    out = []
    for t in value:
        if isinstance(t, str) and not t.lstrip("-").isdigit():
            if table is None or t not in table:
                raise ValueError(f"token {t!r} of field {field!r} is not in the token table")
            out.append(table[t])
        else:
            out.append(int(t))
    return out


class TokenSeqs(list):
    """A list of token-id lists that also knows each sequence's cut id (``cut_ids``, None
    where the batch has none): the key of per-utterance side data such as soft labels."""

    cut_ids: list[str | None]


def batch_targets(batch: dict, field: str = "tokens",
                  table: dict[str, int] | None = None) -> TokenSeqs:
    """One token-id list per sequence of ``batch``: the supervisions' ``field`` (ids, or
    symbols mapped through ``table``), concatenated per cut in order (a :class:`TokenSeqs`)."""
    sup = batch["supervisions"]
    if field not in sup and len(sup.get("sequence_idx", [])):
        raise ValueError(f"supervisions have no field {field!r}; fields: {sorted(sup)}")
    n = batch["features"].shape[0]
    seqs = TokenSeqs([] for _ in range(n))
    seqs.cut_ids = [None] * n
    idx = torch.as_tensor(sup.get("sequence_idx", [])).tolist()
    for s, value in zip(idx, sup.get(field, [])):
        seqs[s].extend(_token_ids(value, table, field))
    for s, cid in zip(idx, sup.get("cut_id", [])):
        seqs.cut_ids[s] = cid
    return seqs


def _excluded_names(batch: dict, info: dict) -> str:
    """``cut (reason), ...`` of the utterances a loss excluded from a batch (``info``'s
    ``excluded`` sequence indices, and ``reasons`` where the loss gives them)."""
    sup = batch.get("supervisions", {})
    ids = {}
    for s, cid in zip(torch.as_tensor(sup.get("sequence_idx", [])).tolist(),
                      sup.get("cut_id", [])):
        ids.setdefault(s, cid)
    reasons = info.get("reasons") or {}
    return ", ".join(f"{ids.get(b, f'#{b}')}" + (f" ({reasons[b]})" if b in reasons else "")
                     for b in info.get("excluded", []))


def build_optimizer(cfg: ExperimentConfig, params) -> torch.optim.Optimizer:
    """Adam or SGD (momentum) with ``cfg.lr`` and ``cfg.weight_decay``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adam, sgd)")


def build_scheduler(cfg: ExperimentConfig, optimizer: torch.optim.Optimizer):
    """``none`` (None), ``noam`` (per step: linear warm-up to ``lr`` over ``warmup_steps``,
    then ``1/sqrt(step)``), ``exponential`` (per epoch, gamma ``decay``) or ``plateau`` (per
    epoch on the dev loss: times ``decay`` after ``patience`` epochs without improvement)."""
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "noam":
        w = max(cfg.warmup_steps, 1)

        def noam(step: int) -> float:
            s = step + 1
            return min(s ** -0.5, s * w ** -1.5) * w ** 0.5

        return torch.optim.lr_scheduler.LambdaLR(optimizer, noam)
    if cfg.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.decay)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.decay,
                                                          patience=cfg.patience)
    raise ValueError(f"unknown schedule {cfg.schedule!r} (none, noam, exponential, plateau)")


def _all_reduce(values: Sequence[float], op=None) -> list[float]:
    if not _distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def _average_grads(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks, a missing one counting as zeros
    (DDP does the model's, except for an accumulation window cut short by an epoch's end)."""
    if not (_distributed() and params):
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def _set_epoch(dl, epoch: int) -> None:
    sampler = getattr(dl, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _fast_forward(sampler: Any, epoch: int, batches: int) -> None:
    """Put a lhotse sampler where it was after yielding ``batches`` batches of ``epoch``: the
    epoch's order is re-drawn (``set_epoch``) and that many batches are drawn and dropped
    (cut manifests only: no feature or audio is read). The next ``iter(sampler)`` (the data
    loader's) continues from there (lhotse's ``_just_restored_state``, as its own
    ``load_state_dict`` leaves it)."""
    if sampler is None or not hasattr(sampler, "set_epoch"):
        raise ValueError("a mid-epoch resume needs a lhotse sampler (train_dl.sampler)")
    sampler.set_epoch(epoch)
    it = iter(sampler)
    for i in range(batches):
        try:
            next(it)
        except StopIteration:
            raise CheckpointError(f"the sampler of epoch {epoch} has {i} batches, fewer than "
                                  f"the {batches} the checkpoint has done (other data or "
                                  "batch settings than the run resumed?)") from None
    sampler._just_restored_state = True


# --------------------------------------------------------------------------- trainer


class Trainer:
    """See the module doc. ``targets(batch) -> list[list[int]]`` defaults to
    :func:`batch_targets` with ``cfg.token_field`` and ``token_table``."""

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, loss_fn: nn.Module,
                 train_dl, dev_dl=None, device: str | torch.device = "cpu",
                 token_table: dict[str, int] | None = None,
                 targets: Callable[[dict], list[list[int]]] | None = None) -> None:
        self.cfg, self.loss_fn = cfg, loss_fn
        self.train_dl, self.dev_dl = train_dl, dev_dl
        self.device = torch.device(device)
        self.raw_model = model.to(self.device)
        self.rank = dist.get_rank() if _distributed() else 0
        self.is_main = self.rank == 0
        self.model = self._wrap(self.raw_model)
        self.targets = targets or (lambda b: batch_targets(b, cfg.token_field, token_table))
        # a criterion's own parameters (e.g. the LM weights of a trainable decoding graph)
        # train with the model's, are checkpointed under "criterion" and averaged with it
        # (their learning rate: cfg.lr times the criterion's ``lr_scale``, default 1)
        self.criterion_params = [p for p in loss_fn.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": list(self.raw_model.parameters())}]
        if self.criterion_params:
            groups.append({"params": self.criterion_params,
                           "lr": cfg.lr * float(getattr(loss_fn, "lr_scale", 1.0))})
        self.optimizer = build_optimizer(cfg, groups)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.exp_dir = Path(cfg.exp_dir)
        if cfg.accum_grad < 1:
            raise ValueError(f"accum_grad must be >= 1, got {cfg.accum_grad}")
        if cfg.amp not in _AMP:
            raise ValueError(f"unknown amp {cfg.amp!r} ({', '.join(_AMP)})")
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp=fp16 needs CUDA (on CPU, use amp=bf16 or none)")
        self.amp_dtype = _AMP[cfg.amp]
        self.scaler = (torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None)
        self._pending = 0            # batches whose gradients wait for the optimizer step
        self._window_ok = True       # their losses were all finite
        self._mid_resume: dict[str, Any] | None = None
        self.global_step = 0
        self.best_dev_loss = math.inf
        self.history: list[dict[str, Any]] = []
        self.skipped_batches = 0
        self.skipped_steps = 0
        self.step_in_epoch = 0
        self._tb = None

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not _distributed():
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ------------------------------------------------------------------ fit

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train ``cfg.num_epochs`` epochs (after the latest checkpoint with ``resume``);
        return the per-epoch history. The experiment directory is locked throughout (rank 0;
        :class:`~.lock.ExpDirLockedError` at once, on every rank, if another run holds it)."""
        lock = ExpDirLock(self.exp_dir, what=" ".join(sys.argv)[:300])
        error: ExpDirLockedError | None = None
        if self.is_main:
            try:
                lock.acquire()
            except ExpDirLockedError as e:
                error = e
        ok = _all_reduce([float(error is None)], dist.ReduceOp.MIN if _distributed() else None)
        if ok[0] <= 0:
            raise error or ExpDirLockedError(f"{self.exp_dir}: locked by another run (rank 0 "
                                             "could not take the lock)")
        try:
            return self._fit(resume)
        finally:
            lock.release()

    def _fit(self, resume: bool) -> list[dict[str, Any]]:
        start = self.resume() if resume else self._fresh_start()
        if self.is_main:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            (self.exp_dir / TRAINING_DONE).unlink(missing_ok=True)
            self._remove_stale_outputs(start - 1)
            self.cfg.log(log)
            self.cfg.save(self.exp_dir / "config.json")
        try:
            for epoch in range(start, self.cfg.num_epochs + 1):
                t0 = time.perf_counter()
                train_loss = self.train_epoch(epoch)
                dev_loss = self.evaluate()
                self._end_epoch(epoch, train_loss, dev_loss, time.perf_counter() - t0)
                if self.should_stop_early():
                    break
            if self.is_main:
                self.average()
                done = {"epoch": self.history[-1]["epoch"] if self.history else start - 1,
                        "global_step": self.global_step, "time": time.time()}
                atomic_write_text(self.exp_dir / TRAINING_DONE, json.dumps(done) + "\n")
        finally:
            if self._tb is not None:
                self._tb.close()
        return self.history

    def _fresh_start(self) -> int:
        seed_everything(self.cfg.seed + self.rank)
        if self.cfg.init_from:  # a warm start: the matching parameters of another model
            copied, kept = init_model_from(self.raw_model, self.cfg.init_from,
                                           self.cfg.init_from_rules)
            log.info("initialised %d tensors from %s; %d keep their initialisation%s",
                     len(copied), self.cfg.init_from, len(kept),
                     f" ({', '.join(kept[:6])}{' ...' if len(kept) > 6 else ''})" if kept else "")
        return 1

    def _remove_stale_outputs(self, done: int) -> None:
        """Before training on after epoch ``done`` (0: a fresh start): remove ``averaged.pt``
        (this run writes its own at the end) and the temporary files of a killed run's atomic
        writes. On a fresh start, an earlier run's ``epoch-N.pt`` and ``best.pt`` are moved to
        ``earlier-run-TIME/`` (kept, but never mistaken for this run's, e.g. by a later
        ``--resume`` or averaging); on a resume, a ``best.pt`` that is unreadable or from a
        later epoch than ``done`` is removed."""
        remove_checkpoint(self.exp_dir / "averaged.pt")
        for name in ("epoch-*.pt", "step-*.pt", "best.pt", "averaged.pt", "config.json",
                     "*.pt.done", TRAINING_DONE):
            for tmp in self.exp_dir.glob(f".tmp-*-{name}"):  # a killed run's (we hold the lock)
                tmp.unlink(missing_ok=True)
        best = self.exp_dir / "best.pt"
        if done == 0:
            old = (find_checkpoints(self.exp_dir) + find_step_checkpoints(self.exp_dir)
                   + ([best] if best.exists() else []))
            if old:
                stamp, k = time.strftime("earlier-run-%Y%m%d-%H%M%S"), 0
                while (keep := self.exp_dir / (stamp + (f"-{k}" if k else ""))).exists():
                    k += 1
                keep.mkdir()
                for path in old:
                    if marker_path(path).exists():
                        os.replace(marker_path(path), keep / marker_path(path).name)
                    os.replace(path, keep / path.name)
                log.warning("fresh start in %s: %s of an earlier run moved to %s (pass --resume "
                            "/ resume=True to continue that run instead)", self.exp_dir,
                            ", ".join(p.name for p in old), keep)
            return
        if not best.exists():
            return
        why = ""
        try:
            epoch = int(load_checkpoint(best).get("epoch", 0))
        except CheckpointError as e:
            why = f"unreadable: {e}"
        else:
            if epoch > done:
                why = f"it is from epoch {epoch}, after epoch {done} resumed from"
        if why:
            log.warning("removing %s of an earlier run (%s)", best, why)
            remove_checkpoint(best)

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int) -> float:
        """One pass over ``train_dl`` (the rest of it after a mid-epoch resume); the loss per
        output frame over the whole epoch (over all ranks)."""
        self.model.train()
        tot_loss = tot_frames = 0.0
        self.step_in_epoch = 0
        mid, self._mid_resume = self._mid_resume, None
        if mid is not None and mid["epoch"] == epoch:
            _fast_forward(getattr(self.train_dl, "sampler", None), epoch,
                                 mid["step_in_epoch"])
            self.step_in_epoch = mid["step_in_epoch"]
            tot_loss, tot_frames = mid["sums"] if self.is_main else (0.0, 0.0)
        else:
            mid = None
            _set_epoch(self.train_dl, epoch)
        batches = iter(self.train_dl)
        if mid is not None:  # the state saved after the batch the run was killed past
            if mid["rng"] is not None:
                set_rng_state(mid["rng"])
            else:  # no state saved for this rank (another world size): its own stream
                seed_everything(self.cfg.seed + self.rank + 7919 * self.global_step)
        bar = progress(batches, desc=f"epoch {epoch}", unit="batch",
                       disable=not self.is_main, leave=False, initial=self.step_in_epoch)
        since_save = 0
        for batch in bar:
            self.step_in_epoch += 1
            since_save += 1
            stats = self.train_step(batch)
            if stats is not None:
                tot_loss += stats[0]
                tot_frames += stats[1]
                bar.set_postfix(loss=f"{tot_loss / max(tot_frames, 1):.4f}")
                if self.global_step % max(self.cfg.log_every, 1) == 0:
                    self._scalar("train/batch_loss", stats[0] / max(stats[1], 1))
            n = self.cfg.save_every_n
            if n > 0 and since_save >= n and self._pending == 0:
                self.save_mid_epoch(epoch, _all_reduce([tot_loss, tot_frames]))
                since_save = 0
        if self._pending:  # the last, partial accumulation window
            self._step()
        tot_loss, tot_frames = _all_reduce([tot_loss, tot_frames])
        return tot_loss / max(tot_frames, 1)

    def _select_task(self, batch: dict) -> None:
        """A multi-task batch (``batch["task"]``, :mod:`wfst_asr.train.multitask`): tell the
        model and the criterion which task it is (their ``set_task(name)``)."""
        task = batch.get("task")
        if task is None:
            return
        for part in (self.raw_model, self.loss_fn):
            if hasattr(part, "set_task"):
                part.set_task(task)

    def _inputs(self, batch: dict):
        self._select_task(batch)
        feats, lens = batch["features"], batch["feature_lens"]
        targets = self.targets(batch) if feats.shape[0] else []
        dummy = feats.shape[0] == 0 and _distributed()
        if dummy:  # keep DDP ranks in step: a zero-weight forward/backward
            n = 16 * max(getattr(self.raw_model, "subsampling_factor", 1), 1)
            feats = torch.zeros(1, n, getattr(self.raw_model, "num_features", feats.shape[2]))
            lens, targets = torch.tensor([n]), [[]]
        return feats.to(self.device), lens.to(self.device), targets, dummy

    def forward(self, feats: torch.Tensor, lens: torch.Tensor, model: nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's ``(output [B, T', V], lens [B])``, under autocast with ``cfg.amp``;
        a floating output is returned in float32 (the losses' graph sums never run in 16 bits).
        """
        model = model or self.model
        if self.amp_dtype is None:
            return model(feats, lens)
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            out, out_lens = model(feats, lens)
        return (out.float() if out.is_floating_point() else out), out_lens

    def train_step(self, batch: dict) -> tuple[float, float] | None:
        """Forward and backward of one batch; the (guarded) optimizer step once ``accum_grad``
        batches are in. ``(loss sum, frames)``, or None if the batch was skipped."""
        feats, lens, targets, dummy = self._inputs(batch)
        if feats.shape[0] == 0:
            self.skipped_batches += 1
            return None
        last = self._pending + 1 >= self.cfg.accum_grad
        sync = (last or not _distributed() or not hasattr(self.model, "no_sync"))
        with contextlib.nullcontext() if sync else self.model.no_sync():
            log_probs, out_lens = self.forward(feats, lens)
            loss, info = self.loss_fn(log_probs, out_lens, targets)
            usable = info["num_utts"] > info["num_excluded"] and not dummy
            if not usable and not dummy and info["num_utts"]:
                log.warning("a batch with nothing to train on, skipped: %s",
                            _excluded_names(batch, info))
            if not usable:
                self.skipped_batches += 1
                if not _distributed():
                    return None
                loss = loss * 0.0
            frames = max(int(info["frames"]), 1) if usable else 1
            scale = frames if getattr(self.loss_fn, "reduction", "sum") == "sum" else 1
            if not last and not bool(torch.isfinite(loss.detach()).all()):
                self._window_ok = False  # (the window's last loss: nan_guard checks it)
            obj = loss / (scale * self.cfg.accum_grad)
            (self.scaler.scale(obj) if self.scaler is not None else obj).backward()
        self._pending += 1
        if last:
            self._step(loss)
        return (float(loss.detach()), float(frames)) if usable else None

    def _params(self) -> list[nn.Parameter]:
        return [*self.raw_model.parameters(), *self.criterion_params]

    def _reduce_criterion_grads(self) -> None:
        """DDP averages the model's gradients; the criterion's are averaged here."""
        _average_grads(self.criterion_params)

    def _step(self, loss: torch.Tensor | None = None) -> None:
        """The optimizer step of the accumulated gradients, on every rank or on none: skipped
        (counted) when a loss or a gradient is not finite on any rank."""
        if loss is None:  # an epoch's last window, shorter than accum_grad: DDP did not sync
            _average_grads(list(self.raw_model.parameters()))
        self._reduce_criterion_grads()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        ok = self._window_ok and nan_guard(loss if loss is not None else torch.zeros(()),
                                           self._params(), zero_grad=False)
        ok = _all_reduce([float(ok)], dist.ReduceOp.MIN if _distributed() else None)[0] > 0
        if ok:
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self._params(), self.cfg.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.global_step += 1
            if self.cfg.schedule == "noam":
                self.scheduler.step()
        else:
            self.skipped_steps += 1
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._pending, self._window_ok = 0, True

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Loss per output frame on ``dev_dl`` (over all ranks), or None without one."""
        if self.dev_dl is None:
            return None
        self.raw_model.eval()
        tot_loss = tot_frames = 0.0
        for batch in self.dev_dl:
            if batch["features"].shape[0] == 0:
                continue
            self._select_task(batch)
            feats, lens = batch["features"].to(self.device), batch["feature_lens"].to(self.device)
            log_probs, out_lens = self.forward(feats, lens, self.raw_model)
            loss, info = self.loss_fn(log_probs, out_lens, self.targets(batch))
            if info["frames"] > 0:
                mean = getattr(self.loss_fn, "reduction", "sum") == "mean"
                tot_loss += float(loss) * (info["frames"] if mean else 1)
                tot_frames += info["frames"]
        tot_loss, tot_frames = _all_reduce([tot_loss, tot_frames])
        return tot_loss / tot_frames if tot_frames else None

    # ------------------------------------------------------------------ epoch end

    def _end_epoch(self, epoch: int, train_loss: float, dev_loss: float | None,
                   seconds: float) -> None:
        self._epoch_scheduler(dev_loss if dev_loss is not None else train_loss)
        record = {"epoch": epoch, "train_loss": train_loss, "dev_loss": dev_loss,
                  "lr": self.optimizer.param_groups[0]["lr"], "global_step": self.global_step,
                  "skipped_batches": self.skipped_batches, "skipped_steps": self.skipped_steps,
                  "seconds": seconds}
        self.history.append(record)
        is_best = dev_loss is not None and dev_loss < self.best_dev_loss
        if is_best:
            self.best_dev_loss = dev_loss
        rngs = self._gather_rngs()
        if self.is_main:
            log.info("epoch %d: train loss %.4f, dev loss %s, lr %.3g, %d steps, skipped "
                     "%d batches / %d steps, %.1f s", epoch, train_loss,
                     "n/a" if dev_loss is None else f"{dev_loss:.4f}", record["lr"],
                     self.global_step, self.skipped_batches, self.skipped_steps, seconds)
            for key in ("train_loss", "dev_loss", "lr", "skipped_steps"):
                if record[key] is not None:
                    self._scalar(f"epoch/{key}", record[key], epoch)
            self.save(epoch, is_best, rngs)
        if _distributed():
            dist.barrier()

    def should_stop_early(self) -> bool:
        """True when ``cfg.early_stop`` > 0 and the dev loss has not improved on its best for
        that many epochs (the history, restored on resume, decides: the same on every rank)."""
        n = self.cfg.early_stop
        dev = [(r["dev_loss"], r["epoch"]) for r in self.history if r["dev_loss"] is not None]
        if n <= 0 or len(dev) <= n:
            return False
        best_at = min(range(len(dev)), key=lambda i: dev[i][0])
        if len(dev) - 1 - best_at < n:
            return False
        if self.is_main:
            log.info("early stop: no dev loss improvement for %d epochs (best %.4f at epoch "
                     "%d)", n, *dev[best_at])
        return True

    def _epoch_scheduler(self, metric: float) -> None:
        if self.cfg.schedule == "plateau":
            self.scheduler.step(metric)
        elif self.cfg.schedule == "exponential":
            self.scheduler.step()

    def _scalar(self, tag: str, value: float, step: int | None = None) -> None:
        if not (self.is_main and self.cfg.tensorboard):
            return
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.exp_dir / "tensorboard"))
        self._tb.add_scalar(tag, value, self.global_step if step is None else step)

    # ------------------------------------------------------------------ checkpoints

    def _gather_rngs(self) -> list[dict[str, Any]] | None:
        """Every rank's RNG state, on rank 0 (a collective: all ranks call it); None when not
        distributed. Saved as ``rng_ranks``, so that a resume restores each rank's stream."""
        if not _distributed():
            return None
        out: list[Any] | None = [None] * dist.get_world_size() if self.is_main else None
        dist.gather_object(get_rng_state(), out, dst=0)
        return out

    def state_dict(self, epoch: int, step_in_epoch: int,
                   rng_ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything :meth:`resume` needs (``weights_only``-loadable); ``rng_ranks``: every
        rank's RNG state (:meth:`_gather_rngs`)."""
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "sampler": sampler_state(getattr(self.train_dl, "sampler", None)),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
            "best_dev_loss": self.best_dev_loss, "history": self.history,
            "skipped_batches": self.skipped_batches, "skipped_steps": self.skipped_steps,
            "rng": get_rng_state(), "config": self.cfg.to_dict(),
        } | ({"rng_ranks": rng_ranks} if rng_ranks else {}) | ({"criterion": self.loss_fn.state_dict()} if self.criterion_params else {}) | (
            {"scaler": self.scaler.state_dict()} if self.scaler is not None else {})

    def save(self, epoch: int, is_best: bool = False,
             rng_ranks: list[dict[str, Any]] | None = None) -> Path:
        """Write ``epoch-N.pt`` (and ``best.pt``), atomically."""
        state = self.state_dict(epoch, self.step_in_epoch, rng_ranks)
        path = self.exp_dir / f"epoch-{epoch}.pt"
        save_checkpoint(path, state, marker=True)
        if is_best:
            save_checkpoint(self.exp_dir / "best.pt", state, marker=True)
        return path

    def save_mid_epoch(self, epoch: int, sums: Sequence[float]) -> Path | None:
        """Write ``step-G.pt`` (rank 0): the state after ``step_in_epoch`` batches of
        ``epoch``, with the loss ``sums`` (over all ranks) of those batches; then remove the
        mid-epoch checkpoints beyond the last ``cfg.keep_last_n``."""
        rngs = self._gather_rngs()
        if not self.is_main:
            return None
        state = self.state_dict(epoch, self.step_in_epoch, rngs) | {
            "mid_epoch": True, "epoch_sums": [float(x) for x in sums]}
        path = self.exp_dir / f"step-{self.global_step}.pt"
        save_checkpoint(path, state, marker=True)
        keep = self.cfg.keep_last_n
        if keep > 0:
            for old in find_step_checkpoints(self.exp_dir)[:-keep]:
                remove_checkpoint(old)
        return path

    def resume(self) -> int:
        """Restore the newest readable checkpoint; return the first epoch still to run."""
        found = latest_checkpoint(self.exp_dir)
        if found is None:
            log.info("no checkpoint in %s: starting from scratch", self.exp_dir)
            return self._fresh_start()
        path, state = found
        self._check_config(state.get("config", {}))
        self._check_sampler(state.get("sampler"))
        self.raw_model.load_state_dict(state["model"])
        if self.criterion_params:
            if "criterion" not in state:
                raise CheckpointError(f"{path}: no 'criterion' entry for the criterion's own "
                                      "parameters (a checkpoint of another loss?)")
            self.loss_fn.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.global_step, self.best_dev_loss = state["global_step"], state["best_dev_loss"]
        self.history = list(state["history"])
        self.skipped_batches = state["skipped_batches"]
        self.skipped_steps = state["skipped_steps"]
        rngs = state.get("rng_ranks") or []
        world = dist.get_world_size() if _distributed() else 1
        rng = rngs[self.rank] if len(rngs) == world else (None if self.rank else state["rng"])
        if state.get("mid_epoch"):  # restored by train_epoch, after the loader's iterator
            self._mid_resume = {"epoch": int(state["epoch"]), "rng": rng,
                                "step_in_epoch": int(state["step_in_epoch"]),
                                "sums": tuple(state.get("epoch_sums", (0.0, 0.0)))}
            log.info("resumed from %s (epoch %d, %d batches in, step %d)", path,
                     state["epoch"], state["step_in_epoch"], self.global_step)
            return int(state["epoch"])
        if rng is not None:
            set_rng_state(rng)
        else:  # no state saved for this rank (another world size): its own stream
            seed_everything(self.cfg.seed + self.rank + 1000003 * state["epoch"])
        log.info("resumed from %s (epoch %d done, step %d)", path, state["epoch"],
                 self.global_step)
        return state["epoch"] + 1

    def _check_sampler(self, saved: dict[str, Any] | None) -> None:
        """A lhotse sampler's order depends only on (seed, epoch, world size): ``set_epoch``
        (and the fast-forward of a mid-epoch resume) restores it; warn if those differ."""
        now = sampler_state(getattr(self.train_dl, "sampler", None))
        if saved is None or now is None:
            return
        diff = {k: (saved.get(k), now.get(k)) for k in ("seed", "world_size", "shuffle")
                if saved.get(k) != now.get(k)}
        if diff and self.is_main:
            log.warning("resuming with a different sampler (saved, now): %s: the batches "
                        "will differ from an uninterrupted run", diff)

    def _check_config(self, saved: dict[str, Any]) -> None:
        now = self.cfg.to_dict()
        diff = {k: (saved.get(k), v) for k, v in now.items()
                if k not in ("num_epochs", "exp_dir") and saved.get(k, v) != v}
        if diff and self.is_main:
            log.warning("resuming with a different configuration (saved, now): %s", diff)

    def average(self) -> Path | None:
        """Average the checkpoints of the last ``cfg.average_last`` epochs of this run
        (``epoch-N.pt``, N up to the last epoch trained) into ``averaged.pt``, atomically.
        Missing and unreadable ones are skipped with a warning; ``averaged_from`` records the
        ``{"file", "epoch"}`` of each one averaged (``averaged``: the file names). None (and no
        ``averaged.pt``) when none is readable or ``average_last`` is 0."""
        out = self.exp_dir / "averaged.pt"
        n = self.cfg.average_last
        if n <= 0:
            return None
        last = int(self.history[-1]["epoch"]) if self.history else self.cfg.num_epochs
        paths = []
        for epoch in range(max(1, last - n + 1), last + 1):
            path = self.exp_dir / f"epoch-{epoch}.pt"
            if path.is_file():
                paths.append(path)
            else:
                log.warning("averaging: %s not found, skipped", path)
        avg, used = average_readable_checkpoints(paths)
        if avg is None:
            log.warning("averaging: no readable checkpoint among the last %d epochs: no %s",
                        n, out)
            out.unlink(missing_ok=True)
            return None
        names = [p.name for p, _ in used]
        extra = {}
        if self.criterion_params:
            extra["criterion"] = average_readable_checkpoints([p for p, _ in used],
                                                              key="criterion")[0]
        save_checkpoint(out, extra | {"model": avg, "averaged": names,
                              "averaged_from": [{"file": p.name, "epoch": e} for p, e in used],
                              "config": self.cfg.to_dict()}, marker=True)
        log.info("averaged %s into %s", ", ".join(names), out)
        return out
