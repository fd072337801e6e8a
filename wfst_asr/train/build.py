"""Everything an experiment configuration builds: token table, model, loss, data loaders.

One place for the rules, used by ``wfst-asr train``, ``wfst-asr decode``, the recipes and the
benchmarks:

* :func:`token_table`: ``tokens.txt`` -> ``{symbol: id}`` (ids from 1; 0 is the blank);
* :func:`build_model_and_loss`: the network and the criterion of a configuration (sets
  ``cfg.num_features`` from the training data and ``cfg.num_classes`` from the token table or
  the loss topology when they are 0, and checks them against those otherwise); the loss comes
  from the registry :mod:`wfst_asr.train.criteria`;
* :func:`build_model_from_config`: the network alone, from a config object or the ``dict``
  saved in ``config.json`` (decoding);
* :func:`make_loader`: a lhotse-sampled ``DataLoader`` over a cuts file, as training uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lhotse import CutSet
from torch import nn

from wfst_asr.data import AsrDataset, make_dataloader, make_sampler
from wfst_asr.data.dataset import (
    SharCuts,
    SpecAugment,
    TimeFreqMask,
    duration_bins,
    open_cuts,
    shar_dir,
)
from wfst_asr.graphs.lang import read_token_list
from wfst_asr.models import build_model
from wfst_asr.train.config import ExperimentConfig
from wfst_asr.train.criteria import (
    build_loss,
    check_num_classes,
    get_loss,
    num_outputs,
    on_words,
    target_table,
)

log = logging.getLogger(__name__)

__all__ = ["build_model_and_loss", "build_model_from_config", "data_feature_dim", "make_loader",
           "token_table"]

def token_table(path: str) -> dict[str, int]:
    """``{symbol: id}`` of the tokens in ``path`` (``tokens.txt``; ids from 1, blank = 0)."""
    return {tok: i for i, tok in enumerate(read_token_list(path), start=1)}


def build_model_from_config(cfg: ExperimentConfig | dict[str, Any]) -> nn.Module:
    """The network of ``cfg`` (an :class:`ExperimentConfig` or its ``to_dict()``), untrained.

    ``cfg.num_classes`` must be set (> 0); the configuration's ``subsampling`` is passed to the
    model unless ``model_kwargs`` sets it.
    """
    c = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    if int(c["num_classes"]) <= 0:
        raise ValueError("num_classes is not set in the configuration (set it or `tokens`)")
    kwargs = dict(c.get("model_kwargs") or {})
    kwargs.setdefault("subsampling", c.get("subsampling", 1))
    return build_model(c["model"], c["num_features"], c["num_classes"],
                       num_tokens=c["num_classes"], **kwargs)


def data_feature_dim(cuts_path: str) -> int:
    """The feature dimension of the first cut of ``cuts_path`` (a lhotse cuts manifest with
    features attached, or a Shar directory: its metadata only is read); ValueError naming the
    file when it is missing or has no features."""
    if not Path(cuts_path).is_file() and shar_dir(cuts_path) is None:
        raise ValueError(f"{cuts_path}: no such cuts file (train_cuts)")
    for cut in open_cuts(cuts_path, metadata_only=True):  # only the first cut is read
        if not cut.has_features:
            raise ValueError(f"{cuts_path}: cut {cut.id} has no features (run "
                             "`wfst-asr compute-features` first)")
        return int(cut.num_features)
    raise ValueError(f"{cuts_path}: no cuts")


def build_model_and_loss(cfg: ExperimentConfig
                         ) -> tuple[nn.Module, nn.Module, dict[str, int] | None]:
    """``(model, loss, target table or None)`` of ``cfg``; the target table maps the
    transcripts' symbols to the loss's ids (:func:`~wfst_asr.train.criteria.target_table`: the
    tokens, or the words for CTC with ``loss.lexicon``).

    * ``num_features``: 0 takes the feature dimension of the training cuts; another value must
      equal it (ValueError naming both);
    * ``num_classes``: 0 takes the outputs the loss topology needs (hmm, mmi), else blank + the
      token table's ids; another value is checked against them;
    * the loss is the one registered as ``cfg.loss`` (:mod:`wfst_asr.train.criteria`).
    """
    get_loss(cfg.loss)  # an unknown loss fails before anything is read
    if cfg.train_cuts:
        dim = data_feature_dim(cfg.train_cuts)
        if cfg.num_features <= 0:
            cfg.num_features = dim
        elif cfg.num_features != dim:
            raise ValueError(f"num_features is {cfg.num_features} but the features of "
                             f"{cfg.train_cuts} have {dim} dimensions (set num_features={dim} "
                             "or 0 to take it from the data)")
    if cfg.num_features <= 0:
        raise ValueError("num_features is 0 and there are no train_cuts to take it from")
    table = token_table(cfg.tokens) if cfg.tokens else None
    fixed = num_outputs(cfg)  # hmm / mmi: from the topology
    if cfg.num_classes <= 0:
        if fixed is not None:
            cfg.num_classes = fixed
        elif table is not None:
            cfg.num_classes = max(table.values()) + 1
        else:
            raise ValueError("set num_classes or tokens")
    model = build_model_from_config(cfg)
    if table is not None and fixed is None:  # ctc, transducer: blank + tokens
        top = max(table.values())
        check_num_classes(cfg.to_dict(), model, top + 1,
                          f"the token table {cfg.tokens} (blank 0 + ids up to {top})")
    return model, build_loss(cfg, model), target_table(cfg)


def _spec_augment(cfg: ExperimentConfig):
    """``None``, ``True`` (defaults) or the augmenter built from ``spec_augment_kwargs``."""
    if not cfg.spec_augment:
        return None
    if not cfg.spec_augment_kwargs:
        return True
    factory = SpecAugment if SpecAugment is not None else TimeFreqMask
    return factory(**cfg.spec_augment_kwargs)


def make_loader(cfg: ExperimentConfig, cuts_path: str, train: bool, rank: int = 0,
                world: int = 1):
    """A ``DataLoader`` over ``cuts_path`` with the configuration's batching (bucketing,
    ``max_duration``, shuffling and SpecAugment only when ``train``; one shard per rank).

    The manifest is read lazily (:func:`~wfst_asr.data.dataset.open_cuts`: ``.jsonl[.gz]``
    cut by cut, a Shar directory shard by shard, its shards shuffled when ``train``), through
    the lazy :func:`_usable_cuts` filter, so memory and start-up time do not grow with the
    corpus; the bucketing sampler holds ``cfg.bucket_buffer_size`` cuts."""
    source = open_cuts(cuts_path, shuffle_shards=train, seed=cfg.seed)
    cuts = _usable_cuts(source, cfg, cuts_path)
    sampler = make_sampler(cuts, cfg.max_duration, shuffle=train, bucketing=cfg.bucketing,
                           num_buckets=cfg.num_buckets, seed=cfg.seed, world_size=world,
                           rank=rank, max_cuts=cfg.max_cuts, buffer_size=cfg.bucket_buffer_size,
                           bins=_shar_bins(cfg, cuts_path))
    if isinstance(source.data, SharCuts):  # shard order by the sampler's epoch (resume)
        source.data.follow(sampler)
    dataset = AsrDataset(cmvn=cfg.cmvn or None, spec_augment=_spec_augment(cfg) if train else None)
    return make_dataloader(dataset, sampler, num_workers=cfg.num_workers)


def _shar_bins(cfg: ExperimentConfig, cuts_path: str) -> list[float] | None:
    """The bucket bins of a Shar directory from its cuts shards alone (the sampler would read
    the first cuts' audio/features to estimate them), the same as from the whole cuts; None
    for other manifests or without bucketing."""
    if not cfg.bucketing or shar_dir(cuts_path) is None:
        return None
    meta = _usable_cuts(open_cuts(cuts_path, metadata_only=True), cfg, cuts_path, quiet=True)
    return duration_bins(meta, cfg.num_buckets, cfg.max_duration, cfg.max_cuts)


def _unknown_symbols(cut, field: str, table: dict[str, int]) -> list[str]:
    out = []
    for sup in cut.supervisions:
        value = sup.text if field == "text" else (sup.custom or {}).get(field)
        if isinstance(value, str):
            value = value.split()
        out += [t for t in value or () if isinstance(t, str) and not t.lstrip("-").isdigit()
                and t not in table]
    return out


def _usable_cuts(cuts: CutSet, cfg: ExperimentConfig, path: str, quiet: bool = False
                 ) -> CutSet:
    """``cuts`` without those whose transcript (``cfg.token_field``) has a symbol the loss
    cannot map (e.g. a dev word outside the lexicon); a ValueError naming ``path`` when none
    is left.

    An eager ``cuts`` is filtered at once, with one warning that counts the skipped cuts and
    names a few. A lazy one is filtered on the fly (:class:`UsableCuts`: the first few
    skipped cuts are named as they come, the count once a pass is complete); its first usable
    cut is looked for here, so a manifest with none fails now. ``quiet``: no warnings.
    """
    table = target_table(cfg)
    if table is None:
        return cuts
    what = f"a symbol of {cfg.token_field!r} outside the {_table_name(cfg)}"
    usable = UsableCuts(cuts, table, cfg.token_field, path, what, quiet=quiet)
    if not cuts.is_lazy:
        usable.early_warnings = 0
        kept = list(usable)
        return cuts if len(kept) == len(cuts) else CutSet.from_cuts(kept)
    next(iter(usable), None)  # raises when no cut is usable
    return CutSet(usable)


class UsableCuts:
    """A lazy filter of the cuts whose transcript maps through ``table`` (see
    :func:`_usable_cuts`). Until the first complete pass, the first ``early_warnings``
    skipped cuts are named in warnings as they come; at its end, one warning counts them
    (``PATH: S of N cuts skipped, with WHAT: ...``). A complete pass that skipped cuts and
    kept none raises ValueError naming ``path``."""

    def __init__(self, cuts: CutSet, table: dict[str, int], field: str, path: str, what: str,
                 quiet: bool = False, early_warnings: int = 5) -> None:
        self.cuts, self.table, self.field, self.path, self.what = cuts, table, field, path, what
        self.quiet, self.early_warnings = quiet, early_warnings
        self.warned = 0
        self.summarised = False

    def __iter__(self) -> Iterator:
        kept = skipped = 0
        bad: list[str] = []  # the first five skipped cuts
        for cut in self.cuts:
            unknown = _unknown_symbols(cut, self.field, self.table)
            if not unknown:
                kept += 1
                yield cut
                continue
            skipped += 1
            what = f"{cut.id} ({', '.join(repr(t) for t in unknown[:3])})"
            if len(bad) < 5:
                bad.append(what)
            if not (self.quiet or self.summarised) and self.warned < self.early_warnings:
                self.warned += 1
                log.warning("%s: skipped cut %s, with %s", self.path, what, self.what)
        self._end_of_pass(kept, skipped, bad)

    def _end_of_pass(self, kept: int, skipped: int, bad: list[str]) -> None:
        if skipped and not kept:
            raise ValueError(f"{self.path}: every cut has {self.what}, e.g. {bad[0]}")
        if skipped and not self.quiet and not self.summarised:
            self.summarised = True
            log.warning("%s: %d of %d cuts skipped, with %s: %s%s", self.path, skipped,
                        skipped + kept, self.what, "; ".join(bad[:5]),
                        " ..." if skipped > 5 else "")


def _table_name(cfg: ExperimentConfig) -> str:
    return f"words of {cfg.lang_dir}/words.txt" if on_words(cfg) else f"tokens of {cfg.tokens}"
