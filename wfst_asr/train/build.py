"""Everything an experiment configuration builds: token table, model, loss, data loaders.

One place for the rules, used by ``wfst-asr train``, the recipes' decoding scripts and the
benchmarks:

* :func:`token_table`: ``tokens.txt`` -> ``{symbol: id}`` (ids from 1; 0 is the blank);
* :func:`build_model_and_loss`: the network and the criterion of a configuration (sets
  ``cfg.num_classes`` from the token table when it is 0);
* :func:`build_model_from_config`: the network alone, from a config object or the ``dict``
  saved in ``config.json`` (decoding);
* :func:`make_loader`: a lhotse-sampled ``DataLoader`` over a cuts file, as training uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from wfst_asr.train.config import ExperimentConfig

__all__ = ["LOSSES", "build_model_and_loss", "build_model_from_config", "make_loader",
           "register_loss", "token_table"]

#: loss name (``cfg.loss``) -> ``(builder, signature source)``. ``builder(cfg, model) ->
#: nn.Module`` is the criterion the :class:`~wfst_asr.train.Trainer` calls as
#: ``loss_fn(model_output, out_lens, token_seqs) -> (loss, info)``; the signature source is a
#: zero-argument function returning the class or function whose parameters are the valid
#: ``loss.KEY`` overrides (``cfg.loss_kwargs``; lazy, so that no loss module is imported early).
LOSSES: dict[str, tuple[Callable[[ExperimentConfig, nn.Module], nn.Module], Callable]] = {}


def register_loss(name: str, signature: Callable):
    """Decorator: register ``builder(cfg, model) -> criterion`` as the loss ``name``; the
    parameters of ``signature()`` are its ``loss.KEY`` overrides (see :data:`LOSSES`)."""
    def add(builder: Callable[[ExperimentConfig, nn.Module], nn.Module]):
        LOSSES[name] = (builder, signature)
        return builder
    return add


def _ctc_class():
    from wfst_asr.losses import CtcLoss

    return CtcLoss


def _build_ctc(cfg: ExperimentConfig, model: nn.Module) -> nn.Module:
    return _ctc_class()(**{"reduction": "sum", **cfg.loss_kwargs})


register_loss("ctc", _ctc_class)(_build_ctc)


def token_table(path: str) -> dict[str, int]:
    """``{symbol: id}`` of the tokens in ``path`` (``tokens.txt``; ids from 1, blank = 0)."""
    from wfst_asr.graphs.lang import read_token_list

    return {tok: i for i, tok in enumerate(read_token_list(path), start=1)}


def build_model_from_config(cfg: ExperimentConfig | dict[str, Any]) -> nn.Module:
    """The network of ``cfg`` (an :class:`ExperimentConfig` or its ``to_dict()``), untrained.

    ``cfg.num_classes`` must be set (> 0); the configuration's ``subsampling`` is passed to the
    model unless ``model_kwargs`` sets it.
    """
    from wfst_asr.models import build_model

    c = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    if int(c["num_classes"]) <= 0:
        raise ValueError("num_classes is not set in the configuration (set it or `tokens`)")
    kwargs = dict(c.get("model_kwargs") or {})
    kwargs.setdefault("subsampling", c.get("subsampling", 1))
    return build_model(c["model"], c["num_features"], c["num_classes"],
                       num_tokens=c["num_classes"], **kwargs)


def build_model_and_loss(cfg: ExperimentConfig
                         ) -> tuple[nn.Module, nn.Module, dict[str, int] | None]:
    """``(model, loss, token table or None)`` of ``cfg``: the loss registered as ``cfg.loss``
    (:data:`LOSSES`); CTC sums over utterances (``reduction="sum"``, the trainer divides by
    frames) unless ``loss_kwargs`` says else."""
    table = token_table(cfg.tokens) if cfg.tokens else None
    if cfg.num_classes <= 0:
        if table is None:
            raise ValueError("set num_classes or tokens")
        cfg.num_classes = max(table.values()) + 1
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; registered: {sorted(LOSSES)}")
    model = build_model_from_config(cfg)
    loss = LOSSES[cfg.loss][0](cfg, model)
    return model, loss, table


def _spec_augment(cfg: ExperimentConfig):
    """``None``, ``True`` (defaults) or the augmenter built from ``spec_augment_kwargs``."""
    if not cfg.spec_augment:
        return None
    if not cfg.spec_augment_kwargs:
        return True
    from wfst_asr.data.dataset import SpecAugment, TimeFreqMask

    factory = SpecAugment if SpecAugment is not None else TimeFreqMask
    return factory(**cfg.spec_augment_kwargs)


def make_loader(cfg: ExperimentConfig, cuts_path: str, train: bool, rank: int = 0,
                world: int = 1):
    """A ``DataLoader`` over ``cuts_path`` with the configuration's batching (bucketing,
    ``max_duration``, shuffling and SpecAugment only when ``train``; one shard per rank)."""
    from lhotse import CutSet

    from wfst_asr.data import AsrDataset, make_dataloader, make_sampler

    cuts = CutSet.from_file(cuts_path)
    sampler = make_sampler(cuts, cfg.max_duration, shuffle=train, bucketing=cfg.bucketing,
                           num_buckets=cfg.num_buckets, seed=cfg.seed, world_size=world,
                           rank=rank, max_cuts=cfg.max_cuts)
    dataset = AsrDataset(cmvn=cfg.cmvn or None, spec_augment=_spec_augment(cfg) if train else None)
    return make_dataloader(dataset, sampler, num_workers=cfg.num_workers)


# --------------------------------------------------------------------------- hmm / mmi losses


# --------------------------------------------------------------------------- transducer loss
