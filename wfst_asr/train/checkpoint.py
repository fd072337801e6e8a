"""Training checkpoints: atomic save, safe load (``weights_only=True``), averaging.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` can read: tensors,
numbers, strings, lists and dicts only (RNG states are stored as tensors and lists)::

    {"model": state_dict, "optimizer": ..., "scheduler": ... | None, "sampler": ... | None,
     "epoch": completed epochs, "step_in_epoch": batches done in that epoch,
     "global_step": optimizer steps so far, "best_dev_loss": float, "history": [per epoch],
     "rng": {"torch", "cuda", "python", "numpy"}, "config": cfg.to_dict()}
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wfst_asr.atomic import atomic_output
from wfst_asr.fsa.io import torch_load_reason

__all__ = [
    "CheckpointError",
    "average_checkpoints",
    "average_readable_checkpoints",
    "find_checkpoints",
    "get_rng_state",
    "init_model_from",
    "latest_checkpoint",
    "load_checkpoint",
    "sampler_state",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

_EPOCH_RE = re.compile(r"^epoch-(\d+)\.pt$")


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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save(state, path)`` atomically (:func:`~wfst_asr.atomic.atomic_output`: a
    temporary file, fsync'd, renamed over ``path``)."""
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


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


def latest_checkpoint(exp_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable ``epoch-N.pt`` and its contents (unreadable ones are skipped with a
    warning), or None."""
    for path in reversed(find_checkpoints(exp_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping unreadable checkpoint: %s", e)
    return None


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
