"""Jobs that watch a trainer's experiment directory (Lingvo's evaler and decoder jobs).

The trainer (``wfst-asr train``) writes ``epoch-N.pt`` and ``step-G.pt`` with completion
markers and, when it ends, ``training-done``. A job polls the directory and processes each new
complete checkpoint once, in training order::

    wfst-asr eval   --exp-dir exp/ctc --cuts data/cuts_dev.jsonl.gz --watch
    wfst-asr decode --exp-dir exp/ctc --cuts data/cuts_test.jsonl.gz --graph HLG.pt --watch

Several jobs can run at once (one per data set, on other machines sharing the file system);
each writes into its own folder a results table keyed by checkpoint step (``results.tsv``,
rewritten atomically; a restarted job skips the checkpoints already in it) and TensorBoard
scalars at the checkpoint's global step.

* :func:`watch_checkpoints` yields the checkpoints: only complete ones (marker present and
  matching, :func:`~.checkpoint.checkpoint_complete`); one still incomplete at the next poll
  is reported once (a warning) and retried; one that cannot be loaded although complete is
  retried on later polls and given up after ``retries`` failures. It returns when
  ``training-done`` is there and nothing is left, or after ``max_wait`` seconds without a new
  checkpoint.
* :func:`run_eval_job` (:class:`Evaler`): the configuration's loss on a data set per output
  frame, computed as the trainer's dev loss, with each checkpoint's weights.
* :func:`run_decode_job`: :class:`~.decoder.Decoder` with each checkpoint's weights, scored
  (:func:`~wfst_asr.scoring.score_decode_dir`); every checkpoint's decode directory is kept.
* :class:`ResultsTable`: the ``results.tsv`` of a job.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wfst_asr.atomic import atomic_write_text
from wfst_asr.train.checkpoint import (
    CheckpointError,
    checkpoint_complete,
    find_checkpoints,
    find_step_checkpoints,
    load_checkpoint,
    marker_path,
)
from wfst_asr.train.trainer import TRAINING_DONE

__all__ = ["Evaler", "ResultsTable", "Summaries", "WatchedCheckpoint", "process_checkpoints",
           "run_decode_job", "run_eval_job", "set_name", "training_done", "watch_checkpoints"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass(frozen=True)
class WatchedCheckpoint:
    """A complete checkpoint of the watched directory."""

    path: Path
    step: int
    """Its global step (optimizer steps done)."""
    epoch: int
    """The epoch done (epoch-end checkpoint) or in progress (``mid_epoch``)."""
    mid_epoch: bool

    @property
    def order(self) -> tuple[int, int, str]:
        return self.step, int(not self.mid_epoch), self.path.name


def _announced(path: Path) -> WatchedCheckpoint | None:
    """What the completion marker of ``path`` says (not yet checked against the file: see
    :func:`~.checkpoint.checkpoint_complete`), or None without a readable marker."""
    try:
        info = json.loads(marker_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    return WatchedCheckpoint(path, int(info.get("global_step") or 0),
                             int(info.get("epoch") or 0), bool(info.get("mid_epoch")))


def training_done(exp_dir: PathLike) -> dict[str, Any] | None:
    """The trainer's ``training-done`` record (last epoch, global step), or None."""
    try:
        return json.loads((Path(exp_dir) / TRAINING_DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def watch_checkpoints(exp_dir: PathLike, skip: Callable[[Path], bool] = lambda _p: False,
                      watch: bool = True, poll: float = 30.0, max_wait: float | None = None,
                      sleep: Callable[[float], None] = time.sleep,
                      ) -> Iterator[WatchedCheckpoint]:
    """The complete checkpoints of ``exp_dir`` that ``skip`` does not reject (asked again at
    every poll: those done, those given up), in training order.

    Without ``watch``: only the newest complete one, then return. With it: poll every
    ``poll`` seconds until ``training-done`` exists and nothing is left (or ``max_wait``
    seconds pass without a new checkpoint: a warning). A checkpoint still incomplete at its
    second poll is reported once (a warning) and retried at every poll."""
    exp = Path(exp_dir)
    incomplete: set[str] = set()
    last_new = time.monotonic()
    while True:
        done = training_done(exp) if watch else None  # read before listing: no race
        ready, waiting = [], []
        for path in find_checkpoints(exp) + find_step_checkpoints(exp):
            if skip(path):
                continue
            c = _announced(path)
            if c is None:
                waiting.append(path)
            else:
                ready.append(c)
        # in training order; once: the newest first, and only the first complete one is taken
        # (the checksum is computed only for the checkpoint about to be processed)
        ready.sort(key=lambda c: c.order, reverse=not watch)
        taken = []
        for c in ready:
            if checkpoint_complete(c.path) is None:
                waiting.append(c.path)
                continue
            incomplete.discard(c.path.name)
            last_new = time.monotonic()
            taken.append(c)
            yield c
            if not watch:
                break
        for path in waiting:
            if path.name in incomplete:  # a second poll and still no (matching) marker
                log.warning("%s: not complete (no completion marker, or its size/checksum "
                            "does not match): skipped, retried at the next poll", path)
            incomplete.add(path.name)
        if not watch:
            return
        if done is not None and not taken and not waiting:
            log.info("%s: training done (epoch %s, step %s), every checkpoint processed",
                     exp, done.get("epoch"), done.get("global_step"))
            return
        if max_wait is not None and time.monotonic() - last_new > max_wait:
            log.warning("%s: no new checkpoint for %.0f s and no %s: stopping", exp,
                        max_wait, TRAINING_DONE)
            return
        sleep(poll)


def process_checkpoints(exp_dir: PathLike, table: ResultsTable,
                        fn: Callable[[WatchedCheckpoint], list[dict[str, Any]]],
                        watch: bool, poll: float, max_wait: float | None, retries: int = 3,
                        sleep: Callable[[float], None] = time.sleep) -> int:
    """Run ``fn`` (rows of results) on every checkpoint :func:`watch_checkpoints` yields that
    ``table`` does not have yet; append its rows (saved at once). A checkpoint ``fn`` cannot
    read (:class:`~.checkpoint.CheckpointError`) is skipped with a warning and retried at the
    next polls, given up after ``retries`` failures. Returns how many were processed."""
    failures: dict[str, int] = {}

    def skip(path: Path) -> bool:
        return table.has(path) or failures.get(path.name, 0) >= retries

    n = 0
    for c in watch_checkpoints(exp_dir, skip, watch, poll, max_wait, sleep):
        try:
            rows = fn(c)
        except CheckpointError as e:
            if not c.path.exists():  # the trainer removed it (keep_last_n) meanwhile
                log.info("%s: removed before it could be processed (keep_last_n)", c.path)
                failures[c.path.name] = retries
                continue
            failures[c.path.name] = failures.get(c.path.name, 0) + 1
            left = retries - failures[c.path.name]
            log.warning("%s: skipped (%s); %s", c.path, e,
                        f"retried at the next poll ({left} more)" if left > 0 and watch
                        else "given up")
            continue
        table.add(c, rows)
        n += 1
    return n


# --------------------------------------------------------------------------- results table


class ResultsTable:
    """``results.tsv`` of a job: one row per checkpoint (and result key), columns ``step``,
    ``epoch``, ``checkpoint``, then the job's; rewritten atomically after every checkpoint,
    read back when a job restarts (its checkpoints are then skipped)."""

    BASE = ("step", "epoch", "checkpoint")

    def __init__(self, path: PathLike, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = [*self.BASE, *columns]
        self.rows: list[dict[str, str]] = []
        if self.path.is_file():
            with open(self.path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t")
                if reader.fieldnames != self.columns:
                    raise ValueError(f"{self.path}: columns {reader.fieldnames}, expected "
                                     f"{self.columns} (another job's table? use another "
                                     "--name or folder)")
                self.rows = list(reader)
        self._names = {r["checkpoint"] for r in self.rows}

    def has(self, path: Path) -> bool:
        """Whether checkpoint ``path`` (by file name) has rows."""
        return path.name in self._names

    def add(self, c: WatchedCheckpoint, rows: list[dict[str, Any]]) -> None:
        for r in rows or [{}]:
            self.rows.append({"step": str(c.step), "epoch": str(c.epoch),
                              "checkpoint": c.path.name,
                              **{k: _cell(r.get(k)) for k in self.columns[3:]}})
        self._names.add(c.path.name)
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(sorted(self.rows, key=lambda r: (int(r["step"]), r["checkpoint"])))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, buf.getvalue())


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class Summaries:
    """TensorBoard scalars of a job (created on first use)."""

    def __init__(self, folder: PathLike, enabled: bool = True) -> None:
        self.folder, self.enabled, self._w = Path(folder), enabled, None

    def add(self, tag: str, value: float, step: int) -> None:
        if not self.enabled:
            return
        if self._w is None:
            from torch.utils.tensorboard import SummaryWriter
            self._w = SummaryWriter(str(self.folder))
        self._w.add_scalar(tag, value, step)
        self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


# --------------------------------------------------------------------------- the evaler


def _config(exp_dir: Path):
    from wfst_asr.train.config import ExperimentConfig

    path = exp_dir / "config.json"
    try:
        return ExperimentConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (not a `wfst-asr train` experiment, or not "
                         "started yet)") from None
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


class Evaler:
    """The configuration's model, loss and a data set, built once; :meth:`__call__` loads a
    checkpoint's weights (and criterion parameters) and returns the loss per output frame."""

    def __init__(self, exp_dir: PathLike, cuts: PathLike, device: str | None = None,
                 max_duration: float | None = None, task: str | None = None) -> None:
        from wfst_asr.train.build import build_model_and_loss, make_loader
        from wfst_asr.train.trainer import Trainer

        self.exp_dir = Path(exp_dir)
        cfg = _config(self.exp_dir)
        if not Path(cuts).exists():
            raise ValueError(f"{cuts}: no such cuts file")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if cfg.tasks:  # multi-task: the task's head and its own loss (no distillation term)
            model, loss, table, cfg = _task_model_and_loss(cfg, task)
        elif task is not None:
            raise ValueError(f"{self.exp_dir} is not a multi-task experiment: no task {task!r}")
        else:
            model, loss, table = build_model_and_loss(cfg)
        if max_duration:
            cfg.max_duration = max_duration
        dl = make_loader(cfg, str(cuts), False)
        self.trainer = Trainer(cfg, model, loss, None, dl, self.device, token_table=table)

    def __call__(self, path: PathLike) -> dict[str, Any]:
        t0 = time.perf_counter()
        state = load_checkpoint(path)
        try:
            self.trainer.raw_model.load_state_dict(state["model"])
            if self.trainer.criterion_params and "criterion" in state:
                self.trainer.loss_fn.load_state_dict(state["criterion"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: its weights do not fit the model of "
                                  f"{self.exp_dir}/config.json: "
                                  f"{str(e).splitlines()[0]}") from None
        loss = self.trainer.evaluate()
        return {"loss": loss, "seconds": round(time.perf_counter() - t0, 2)}


def _task_model_and_loss(cfg, task: str | None):
    """``(model, loss, target table, the task's config)`` of a multi-task configuration."""
    from wfst_asr.train.config import ExperimentConfig
    from wfst_asr.train.criteria import build_loss, target_table
    from wfst_asr.train.tasks import inference_model

    model, tcd = inference_model(cfg.to_dict(), task)
    tc = ExperimentConfig.from_dict({k: v for k, v in tcd.items() if k != "task"})
    return model, build_loss(tc, model), target_table(tc), tc


def run_eval_job(exp_dir: PathLike, cuts: PathLike, name: str | None = None,
                 out_dir: PathLike | None = None, watch: bool = False, poll: float = 30.0,
                 max_wait: float | None = None, device: str | None = None,
                 max_duration: float | None = None, tensorboard: bool = True,
                 sleep: Callable[[float], None] = time.sleep, task: str | None = None) -> Path:
    """``wfst-asr eval``: the loss on ``cuts`` of each new checkpoint of ``exp_dir`` (the
    newest only without ``watch``), into ``out_dir`` (default ``exp_dir/eval_<name>``, name:
    the cuts file's stem): ``results.tsv`` (step, epoch, checkpoint, loss, seconds) and
    TensorBoard ``eval/<name>/loss``. A multi-task experiment: the loss of ``task`` (default:
    its first), its distillation term left out. Returns the table's path."""
    name = name or set_name(cuts)
    out = Path(out_dir) if out_dir else Path(exp_dir) / f"eval_{name}"
    table = ResultsTable(out / "results.tsv", ["loss", "seconds"])
    if watch:  # started with the trainer: its config.json comes first
        _wait_for(Path(exp_dir) / "config.json", poll, max_wait, sleep)
    evaler = Evaler(exp_dir, cuts, device, max_duration, task)
    tb = Summaries(out / "tensorboard", tensorboard)

    def one(c: WatchedCheckpoint) -> list[dict[str, Any]]:
        r = evaler(c.path)
        log.info("%s %s (step %d, epoch %d): loss %s per frame (%.1f s)", name, c.path.name,
                 c.step, c.epoch, "n/a" if r["loss"] is None else f"{r['loss']:.4f}",
                 r["seconds"])
        if r["loss"] is not None:
            tb.add(f"eval/{name}/loss", r["loss"], c.step)
        return [r]

    try:
        n = process_checkpoints(exp_dir, table, one, watch, poll, max_wait, sleep=sleep)
    finally:
        tb.close()
    if n == 0 and not watch:
        log.warning("%s: no new complete checkpoint to evaluate", exp_dir)
    return table.path


def _wait_for(path: Path, poll: float, max_wait: float | None,
              sleep: Callable[[float], None]) -> None:
    """Return once ``path`` exists (polling), or after ``max_wait`` seconds (the caller then
    reports it missing)."""
    t0 = time.monotonic()
    if not path.exists():
        log.info("waiting for %s", path)
    while not path.exists() and (max_wait is None or time.monotonic() - t0 <= max_wait):
        sleep(poll)


def set_name(cuts: PathLike) -> str:
    """``cuts_dev`` of ``data/cuts_dev.jsonl.gz``."""
    base = Path(cuts).name
    for ext in (".gz", ".jsonl", ".json", ".yaml"):
        base = base.removesuffix(ext)
    return base or "data"


# --------------------------------------------------------------------------- the decoder job


def run_decode_job(exp_dir: PathLike, sets: dict[str, PathLike], out_dir: PathLike,
                   make_decoder: Callable[[Path], Any], watch: bool = False,
                   poll: float = 30.0, max_wait: float | None = None, tensorboard: bool = True,
                   sleep: Callable[[float], None] = time.sleep) -> Path:
    """``wfst-asr decode --watch``: for each new checkpoint of ``exp_dir`` (the newest only
    without ``watch``), ``make_decoder(checkpoint)`` (a :class:`~.decoder.Decoder` with its
    weights) decodes ``sets`` into ``out_dir/<checkpoint stem>/``, which is scored; the error
    rate of every method and set goes to ``out_dir/results.tsv`` (step, epoch, checkpoint,
    method, set, metric, rate, setting) and TensorBoard ``<metric>/<method>/<set>``."""
    from wfst_asr.scoring import score_decode_dir
    from wfst_asr.train.decoder import DecodeError

    out = Path(out_dir)
    table = ResultsTable(out / "results.tsv", ["method", "set", "metric", "rate", "setting"])
    tb = Summaries(out / "tensorboard", tensorboard)

    def one(c: WatchedCheckpoint) -> list[dict[str, Any]]:
        try:
            dec = make_decoder(c.path)
        except DecodeError as e:
            if isinstance(e.__cause__, CheckpointError):
                raise CheckpointError(str(e)) from e
            raise
        folder = out / c.path.stem
        settings = dec.run(sets, folder)
        reports, _ = score_decode_dir(folder)
        metric = settings["metric"]
        rows = []
        for method, per_set in reports.items():
            setting = (settings["methods"].get(method) or {}).get("setting") or {}
            for name, rep in per_set.items():
                rows.append({"method": method, "set": name, "metric": metric,
                             "rate": round(rep.rate, 2),
                             "setting": " ".join(f"{k}={v:g}" for k, v in setting.items())})
                tb.add(f"{metric}/{method}/{name}", rep.rate, c.step)
                log.info("%s (step %d): %s %s %s %.2f%%", c.path.name, c.step, method, name,
                         metric, rep.rate)
        return rows

    try:
        process_checkpoints(exp_dir, table, one, watch, poll, max_wait, sleep=sleep)
    finally:
        tb.close()
    return table.path
