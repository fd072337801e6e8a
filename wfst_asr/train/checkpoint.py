"""Training checkpoints: atomic save, safe load (``weights_only=True``), averaging.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` can read: tensors,
numbers, strings, lists and dicts only (RNG states are stored as tensors and lists)::

    {"model": state_dict, "optimizer": ..., "scheduler": ... | None, "sampler": ... | None,
     "epoch": completed epochs, "step_in_epoch": batches done in that epoch,
     "global_step": optimizer steps so far, "best_dev_loss": float, "history": [per epoch],
     "rng": {"torch", "cuda", "python", "numpy"}, "config": cfg.to_dict()}

A mid-epoch checkpoint (``step-G.pt``, G the global step) has ``"mid_epoch": True``, ``epoch``
the epoch in progress, ``step_in_epoch`` the batches of it done and ``epoch_sums`` the loss
sums of those batches (:func:`progress_key` orders both kinds).

Every checkpoint the trainer writes (:func:`save_checkpoint` with ``marker=True``) gets a
completion marker ``NAME.done`` (JSON: size, SHA-256, epoch, global step) written after the
checkpoint itself: a reader on another machine (``wfst-asr eval --watch``) takes a checkpoint only when its marker is there
and matches the file (:func:`checkpoint_complete`), never a half-copied one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wfst_asr.atomic import atomic_output, atomic_write_text
from wfst_asr.fsa.io import torch_load_reason

__all__ = [
    "CheckpointError",
    "average_checkpoints",
    "average_readable_checkpoints",
    "checkpoint_complete",
    "find_checkpoints",
    "find_step_checkpoints",
    "get_rng_state",
    "init_model_from",
    "latest_checkpoint",
    "load_checkpoint",
    "marker_path",
    "progress_key",
    "remove_checkpoint",
    "sampler_state",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

_EPOCH_RE = re.compile(r"^epoch-(\d+)\.pt$")
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (corrupted, truncated, or not a checkpoint)."""


# --------------------------------------------------------------------------- RNG


def get_rng_state() -> dict[str, Any]:
    """torch / CUDA / Python / NumPy RNG states as tensors and lists (``weights_only``-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------- save / load


def _plain(x: Any) -> Any:
    """Tuples -> lists, recursively, so that ``weights_only`` loading needs nothing special."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def marker_path(path: str | os.PathLike) -> Path:
    """The completion marker of checkpoint ``path``: ``path`` + ``.done``."""
    return Path(os.fspath(path) + ".done")


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], marker: bool = False
                    ) -> None:
    """``torch.save(state, path)`` atomically (:func:`~wfst_asr.atomic.atomic_output`: a
    temporary file, fsync'd, renamed over ``path``); with ``marker`` (the trainer's
    checkpoints, which other jobs watch) then its completion marker (:func:`marker_path`; an
    earlier marker of ``path`` is removed first)."""
    done = marker_path(path)
    done.unlink(missing_ok=True)
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    if not marker:
        return
    info = {"file": Path(path).name, "bytes": os.path.getsize(path), "sha256": _sha256(path),
            "epoch": state.get("epoch"), "global_step": state.get("global_step"),
            "mid_epoch": bool(state.get("mid_epoch", False))}
    atomic_write_text(done, json.dumps(info) + "\n")


def checkpoint_complete(path: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of checkpoint ``path`` when the checkpoint is complete: the marker exists and
    the file's size and SHA-256 are the marker's; None otherwise (no marker yet, a file being
    copied or replaced, a corrupted file)."""
    marker = marker_path(path)
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        if os.path.getsize(path) != info["bytes"] or _sha256(path) != info["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Remove checkpoint ``path`` and its marker (the marker first: a reader never sees a
    marker without its file)."""
    marker_path(path).unlink(missing_ok=True)
    Path(path).unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; :class:`CheckpointError` naming the file if
    it is missing, corrupted, truncated or not a checkpoint dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, unpickling, EOF errors ... all mean "bad file"
        raise CheckpointError(f"cannot load checkpoint {path} ({os.path.getsize(path)} bytes): "
                              f"corrupted or truncated ({torch_load_reason(e)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a wfst_asr checkpoint (no 'model' entry)")
    return state


def init_model_from(model: torch.nn.Module, path: str | os.PathLike,
                    rules: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Copy into ``model`` every parameter and buffer of checkpoint ``path`` (an ``epoch-N.pt``,
    ``best.pt`` or ``averaged.pt``) whose name and shape match; the others keep their values.

    This is a warm start (e.g. a BPE model from a phone model's encoder: the output layer
    differs). ``rules`` rename on the way, as Lingvo's ``init_from_checkpoint_rules``: each is
    ``"REGEX->TEMPLATE"``; a name of ``model`` that ``REGEX`` matches in full is looked up in the
    checkpoint as ``TEMPLATE`` with the groups filled in (``re.Match.expand``: ``\\1``), the
    first rule that matches wins, other names are looked up as they are. E.g. a CTC BLSTM's
    ``layers.*`` into an attention model's ``encoder.layers.*``:
    ``["encoder\\.(layers\\..*)->\\1"]``.

    Returns ``(copied names of model, names of model left as they were)``; ``ValueError`` for a
    malformed rule, :class:`CheckpointError` for an unreadable file or when nothing matches.
    """
    compiled = []
    for rule in rules:
        pattern, sep, template = str(rule).partition("->")
        if not sep or not pattern:
            raise ValueError(f"init_from rule {rule!r}: expected 'REGEX->TEMPLATE'")
        try:
            compiled.append((re.compile(pattern), template))
        except re.error as e:
            raise ValueError(f"init_from rule {rule!r}: bad regular expression: {e}") from None

    def source(name: str) -> str:
        for regex, template in compiled:
            if m := regex.fullmatch(name):
                return m.expand(template)
        return name

    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    take = {k: state[src] for k in own if (src := source(k)) in state
            and tuple(state[src].shape) == tuple(own[k].shape)}
    if not take:
        raise CheckpointError(f"{os.fspath(path)}: no parameter matches the model in name and "
                              "shape: nothing to initialise from")
    model.load_state_dict(take, strict=False)
    return sorted(take), sorted(k for k in own if k not in take)


def find_checkpoints(exp_dir: str | os.PathLike) -> list[Path]:
    """``exp_dir/epoch-N.pt`` files, by increasing N."""
    folder = Path(exp_dir)
    found = [(int(m.group(1)), p) for p in folder.glob("epoch-*.pt")
             if (m := _EPOCH_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_step_checkpoints(exp_dir: str | os.PathLike) -> list[Path]:
    """``exp_dir/step-G.pt`` files (mid-epoch checkpoints), by increasing global step G."""
    found = [(int(m.group(1)), p) for p in Path(exp_dir).glob("step-*.pt")
             if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def progress_key(state: dict[str, Any]) -> tuple[int, int]:
    """How far training had got when ``state`` was saved: ``(completed epochs, batches of the
    next epoch done)``; orders epoch-end and mid-epoch checkpoints together."""
    epoch = int(state.get("epoch", 0))
    if state.get("mid_epoch"):
        return epoch - 1, int(state.get("step_in_epoch", 0))
    return epoch, 0


def latest_checkpoint(exp_dir: str | os.PathLike, mid_epoch: bool = True
                      ) -> tuple[Path, dict[str, Any]] | None:
    """The readable checkpoint that got furthest (:func:`progress_key`) among the newest
    readable ``epoch-N.pt`` and, with ``mid_epoch``, the ``step-G.pt`` files, and its contents;
    unreadable ones are skipped with a warning. None when there is none."""
    best: tuple[Path, dict[str, Any]] | None = None
    for group in (find_checkpoints(exp_dir), find_step_checkpoints(exp_dir) if mid_epoch else []):
        for path in reversed(group):
            try:
                state = load_checkpoint(path)
            except CheckpointError as e:
                log.warning("skipping unreadable checkpoint: %s", e)
                continue
            if best is None or progress_key(state) > progress_key(best[1]):
                best = path, state
            break
    return best


# --------------------------------------------------------------------------- averaging


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Model ``state_dict`` averaged over the checkpoints ``paths``: the mean of every
    floating-point entry (accumulated in float64, cast back); integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are taken from the last checkpoint. An unreadable checkpoint is a
    :class:`CheckpointError` (:func:`average_readable_checkpoints` skips it instead)."""
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")
    avg, _ = _average(paths, skip_unreadable=False)
    assert avg is not None
    return avg


def average_readable_checkpoints(paths: Sequence[str | os.PathLike], key: str = "model"
                                 ) -> tuple[dict[str, torch.Tensor] | None,
                                            list[tuple[Path, int | None]]]:
    """:func:`average_checkpoints` over the readable ones of ``paths``: each unreadable one is
    skipped with a warning (as :func:`latest_checkpoint` does). Returns ``(averaged state_dict
    or None when none is readable, [(path, its "epoch" or None)] of those averaged)``. ``key``:
    the state dict averaged (``"criterion"``: a criterion's own parameters)."""
    return _average(paths, skip_unreadable=True, key=key)


def _average(paths: Sequence[str | os.PathLike], skip_unreadable: bool, key: str = "model"
             ) -> tuple[dict[str, torch.Tensor] | None, list[tuple[Path, int | None]]]:
    sums: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    used: list[tuple[Path, int | None]] = []
    for path in paths:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            if not skip_unreadable:
                raise
            log.warning("averaging: skipping unreadable checkpoint: %s", e)
            continue
        if key not in state:
            raise CheckpointError(f"{path}: no {key!r} entry to average")
        model = state[key]
        if used and set(model) != set(last):
            raise CheckpointError(f"{path}: its {key} entries differ from those of "
                                  f"{used[0][0]}: cannot average them")
        last = model
        used.append((Path(path), int(state["epoch"]) if "epoch" in state else None))
        for k, v in last.items():
            if v.is_floating_point():
                sums[k] = sums[k] + v.double() if k in sums else v.double().clone()
    if not used:
        return None, used
    n = len(used)
    return {k: (sums[k] / n).to(v.dtype) if k in sums else v for k, v in last.items()}, used


def sampler_state(sampler: Any) -> dict[str, Any] | None:
    """``sampler.state_dict()`` (tuples as lists) when the sampler has one, else None."""
    fn = getattr(sampler, "state_dict", None)
    return _plain(fn()) if callable(fn) else None
