"""A trained model over a data set, for decoding scripts: the model of an experiment directory
(:func:`load_model`), its outputs over a cut manifest batch by batch (:func:`run_model`), and
the references of a manifest (:func:`read_references`).

Corpus-free: the reference field is the configuration's ``token_field`` (or the one given);
nothing here knows a corpus, a phone set or a recipe. Errors are exceptions whose message is
one line naming the experiment directory or file.

::

    model, cfg, ckpt = load_model("exp/ctc_blstm", device)
    for ids, speakers, refs, log_probs, lens in run_model(model, "cuts_dev.jsonl.gz", cfg,
                                                          device, max_duration=200.0):
        hyps = greedy_ctc(log_probs, lens)           # row b belongs to ids[b]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from wfst_asr.train.build import build_model_from_config
from wfst_asr.train.checkpoint import CheckpointError, load_checkpoint

__all__ = ["CHECKPOINT_NAMES", "ModelOutputs", "load_model", "read_references", "run_model"]

#: the checkpoints :func:`load_model` looks for, in order of preference
CHECKPOINT_NAMES = ("averaged.pt", "best.pt")

PathLike = str | os.PathLike


class ModelOutputs(NamedTuple):
    """One batch of :func:`run_model`; row ``b`` of every field belongs to ``ids[b]``."""

    ids: list[str]
    """``[B]`` supervision ids."""
    speakers: list[str | None]
    """``[B]`` their speakers."""
    refs: list[list]
    """``[B]`` their references: the reference field as a list (a string split at spaces)."""
    log_probs: torch.Tensor
    """float32 ``[B, T, V]`` on the CPU: the model's output (log-probs, blank = column 0, for
    CTC / HMM models; a transducer's encoder output, V its dimension); frames at and past
    ``lens[b]`` are padding."""
    lens: torch.Tensor
    """int64 ``[B]`` on the CPU: the number of valid output frames of each row."""


def load_model(exp_dir: PathLike, device: torch.device | str = "cpu",
               checkpoint: PathLike | None = None, task: str | None = None
               ) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """The trained model of an experiment directory, in eval mode on ``device``.

    The weights come from ``checkpoint`` when given (any checkpoint of the run, e.g.
    ``epoch-3.pt``), else ``<exp_dir>/averaged.pt``, else ``<exp_dir>/best.pt``; the network is
    rebuilt (:func:`~wfst_asr.train.build.build_model_from_config`) from
    ``<exp_dir>/config.json``, else from the checkpoint's ``config`` entry.

    A multi-task experiment (``tasks`` in its configuration) gives the shared encoder with the
    head of ``task`` (default: its first task), and that task's configuration
    (:func:`~wfst_asr.train.tasks.inference_model`).

    Returns:
      ``(model, config dict, checkpoint path)``.

    Raises:
      FileNotFoundError: no checkpoint in ``exp_dir``.
      ValueError: no configuration, or an unreadable ``config.json``.
      CheckpointError: an unreadable checkpoint, or weights that do not fit the configured
        network.
    """
    exp = Path(exp_dir)
    if checkpoint is not None:
        ckpt: Path | None = Path(checkpoint)
    else:
        ckpt = next((exp / n for n in CHECKPOINT_NAMES if (exp / n).is_file()), None)
    if ckpt is None:
        raise FileNotFoundError(f"no {' or '.join(CHECKPOINT_NAMES)} in {exp}")
    state = load_checkpoint(ckpt)
    cfg_path = exp / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {cfg_path}: {e}") from e
    else:
        cfg = state.get("config")
    if not isinstance(cfg, dict) or not cfg:
        raise ValueError(f"no config.json in {exp} and no configuration in {ckpt}")
    if cfg.get("tasks"):  # multi-task: the shared encoder with the task's head
        from wfst_asr.train.tasks import inference_model

        model, cfg = inference_model(cfg, task)
    elif task is not None:
        raise ValueError(f"{exp} is not a multi-task experiment (no tasks in its "
                         f"configuration): no task {task!r}")
    else:
        model = build_model_from_config(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"the weights of {ckpt} do not fit the model of its "
                              f"configuration ({cfg.get('model')}): {first}") from e
    return model.to(device).eval(), cfg, ckpt


def _token_field(cfg: dict[str, Any], token_field: str | None) -> str:
    field = token_field or cfg.get("token_field")
    if not field:
        raise ValueError("the configuration has no token_field (give token_field)")
    return str(field)


def _as_list(ref: object) -> list:
    return ref.split() if isinstance(ref, str) else list(ref)  # type: ignore[call-overload]


@torch.no_grad()
def run_model(model: torch.nn.Module, cuts_path: PathLike, cfg: dict[str, Any],
              device: torch.device | str, max_duration: float,
              token_field: str | None = None) -> list[ModelOutputs]:
    """The model over every cut of a manifest, in batches of at most ``max_duration``
    seconds (no shuffling, no bucketing; features normalised with the configuration's
    ``cmvn`` as in training, no SpecAugment).

    Args:
      model: ``model(features [B, T, F], feature_lens [B]) -> (out [B, T', V], lens [B])``
        (e.g. :func:`load_model`'s, in eval mode).
      cuts_path: a lhotse cut manifest with features (or a Shar directory of them, see
        :func:`~wfst_asr.data.dataset.open_cuts`), one supervision per cut.
      cfg: the model's configuration (``cmvn``, ``token_field``).
      device: where the model runs.
      max_duration: seconds of audio per batch.
      token_field: the supervision field of the references (default ``cfg["token_field"]``).

    Returns:
      One :class:`ModelOutputs` ``(ids, speakers, refs, log_probs [B, T', V], lens [B])`` per
      batch, tensors on the CPU.

    Raises:
      ValueError: no ``token_field``, or a supervision without it (naming the manifest).
    """
    from wfst_asr.data import AsrDataset, make_dataloader, make_sampler
    from wfst_asr.data.dataset import open_cuts

    field = _token_field(cfg, token_field)
    cuts = open_cuts(cuts_path)  # lazy: .jsonl[.gz] cut by cut, a Shar directory by shard
    sampler = make_sampler(cuts, max_duration, shuffle=False, bucketing=False)
    dataset = AsrDataset(cmvn=cfg.get("cmvn") or None, spec_augment=False)
    out: list[ModelOutputs] = []
    for batch in make_dataloader(dataset, sampler):
        if batch["features"].shape[0] == 0:
            continue
        lp, lens = model(batch["features"].to(device), batch["feature_lens"].to(device))
        sup = batch["supervisions"]
        B = lp.shape[0]
        ids, spk, refs = [""] * B, [None] * B, [[]] * B
        values = sup.get(field)
        for i, seq in enumerate(sup["sequence_idx"].tolist()):
            ref = values[i] if values is not None else None
            if ref is None:
                raise ValueError(f"{cuts_path}: supervision {sup['id'][i]} has no "
                                 f"{field!r} field (token_field)")
            ids[seq], spk[seq], refs[seq] = sup["id"][i], sup["speaker"][i], _as_list(ref)
        out.append(ModelOutputs(ids, spk, refs, lp.float().cpu(), lens.cpu()))
    return out


def read_references(cuts_path: PathLike, field: str
                    ) -> tuple[dict[str, list], dict[str, str | None]]:
    """``({supervision id: reference}, {supervision id: speaker})`` of a cut manifest, the
    reference being the supervision's ``field`` as a list (a string split at spaces).

    Raises:
      ValueError: a supervision without ``field`` (naming the manifest).
    """
    from wfst_asr.data.dataset import open_cuts

    refs: dict[str, list] = {}
    spk: dict[str, str | None] = {}
    for cut in open_cuts(cuts_path, metadata_only=True):
        for sup in cut.supervisions:
            ref = (sup.custom or {}).get(field)
            if ref is None:
                raise ValueError(f"{cuts_path}: supervision {sup.id} has no {field!r} field")
            refs[sup.id] = _as_list(ref)
            spk[sup.id] = sup.speaker
    return refs, spk
