"""Data at scale: lazy manifests, Shar shards (``wfst-asr export-shar``), the lazy usable-cuts
filter and the bucketing sampler on a 1,000-hour manifest.

Checked against independent references: the lazy loader's batches equal those of the eager
loader (``CutSet.from_file`` + the list filter, as ``make_loader`` was) for the same seed; the
Shar round trip gives the original cut ids, bit-identical features (numpy storage) and audio
(flac), and the loader over the Shar directory the same batches as over the manifest; features
computed on the fly from Shar audio in DataLoader workers equal those computed in-process from
the original files. Damaged shards give a ValueError naming the shard file. The scale test
writes a 1,000-hour manifest of the LJ clips repeated with new ids (about 15 s) and checks
that resident memory stays flat over 100k sampled cuts and that the sampler's time to the
first batch does not grow with the corpus (slow: skipped with WFST_ASR_SKIP_SLOW=1). Every test
needs ../shared/data (LJ Speech) and skips without it.
"""

from __future__ import annotations

import logging
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, shared_data_dir
from lhotse import CutSet
from lhotse.features.io import NumpyFilesWriter

from wfst_asr.bin import cli
from wfst_asr.data import AsrDataset, KnfFbank, compute_features, make_dataloader, make_sampler
from wfst_asr.data.dataset import open_cuts
from wfst_asr.train import ExperimentConfig, make_loader
from wfst_asr.train.build import _usable_cuts, data_feature_dim

sys.path.insert(0, str(REPO_ROOT / "tools" / "bench"))
from bench_data import OOV, lj_cuts, pipeline_pass, write_synthetic, write_tokens

N_CLIPS = 12


@pytest.fixture(scope="module")
def lj(tmp_path_factory) -> dict:
    """12 LJ clips with lossless (numpy) fbank; the second cut's letters carry an OOV."""
    lj_dir = shared_data_dir() / "ljspeech_part1"
    folder = tmp_path_factory.mktemp("lj")
    cuts = lj_cuts(lj_dir, limit=N_CLIPS)
    tokens = write_tokens(folder / "tokens.txt", cuts)
    sup = cuts[1].supervisions[0]
    sup.custom["letters"] = f"{OOV} {sup.custom['letters']}"
    res = compute_features(cuts, folder / "fbank", KnfFbank(), storage_type=NumpyFilesWriter)
    assert not res.skipped
    feats = res.cuts
    feats.to_file(folder / "cuts.jsonl.gz")
    feats.to_file(folder / "cuts.json")  # an eager format
    cuts.to_file(folder / "audio.jsonl.gz")
    return {"dir": folder, "tokens": tokens, "jsonl": folder / "cuts.jsonl.gz",
            "json": folder / "cuts.json", "audio": folder / "audio.jsonl.gz"}


def _cfg(lj: dict, **kw) -> ExperimentConfig:
    base = {"train_cuts": str(lj["jsonl"]), "tokens": str(lj["tokens"]),
            "token_field": "letters", "max_duration": 20.0, "num_buckets": 3, "seed": 3}
    return ExperimentConfig(**{**base, **kw})


def _batches(loader, epochs=(1, 2)) -> list[tuple[list[str], torch.Tensor]]:
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out += [(list(b["supervisions"]["cut_id"]), b["features"]) for b in loader]
    return out


def _same_batches(a: list, b: list) -> None:
    assert [ids for ids, _ in a] == [ids for ids, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))


def _export(src: Path, out: Path, *extra: str) -> int:
    return cli.main(["export-shar", "--cuts", str(src), "--out", str(out), *extra])


# --------------------------------------------------------------------------- lazy manifests


def test_open_cuts_formats_and_bad_paths(lj, tmp_path):
    """jsonl lazy, an eager format seen lazily, the same cuts; a missing path, a folder without
    shards and a ``shar:`` path that is none are one ValueError naming the path."""
    lazy, eager = open_cuts(lj["jsonl"]), open_cuts(lj["json"])
    assert lazy.is_lazy and eager.is_lazy
    assert [c.id for c in lazy] == [c.id for c in eager] == [c.id for c in
                                                             CutSet.from_file(lj["jsonl"])]
    assert len(lazy) == len(eager) == N_CLIPS
    for bad, what in [(tmp_path / "nope.jsonl.gz", "no such cuts manifest"),
                      (tmp_path, "a directory without Shar shards"),
                      (f"shar:{tmp_path}", "not a lhotse Shar directory")]:
        with pytest.raises(ValueError, match=what) as e:
            open_cuts(bad)
        assert str(tmp_path) in str(e.value)
    broken = tmp_path / "broken.jsonl"
    lines = Path(lj["jsonl"]).read_bytes()
    import gzip

    text = gzip.decompress(lines).decode().splitlines()
    broken.write_text("\n".join(text[:3] + ["{not json"] + text[3:]) + "\n")
    with pytest.raises(ValueError, match=f"{broken}:4: .*not a readable lhotse cut manifest"):
        list(iter(open_cuts(broken)))


@pytest.mark.parametrize("train", [True, False])
def test_lazy_loader_yields_the_eager_batches(lj, train):
    """make_loader over the .jsonl.gz (lazy) and over the .json (eager file) gives, epoch after
    epoch, the batches of the eager pipeline it replaced (CutSet.from_file, the list filter,
    the bucketing sampler over the eager CutSet), the OOV cut left out."""
    cfg = _cfg(lj)
    lazy = _batches(make_loader(cfg, str(lj["jsonl"]), train))
    assert len(lazy) >= 6  # several batches an epoch
    _same_batches(lazy, _batches(make_loader(cfg, str(lj["json"]), train)))
    eager_cuts = _usable_cuts(CutSet.from_file(lj["jsonl"]), cfg, str(lj["jsonl"]))
    sampler = make_sampler(eager_cuts, cfg.max_duration, shuffle=train, num_buckets=3,
                           seed=cfg.seed)
    _same_batches(lazy, _batches(make_dataloader(AsrDataset(), sampler)))
    ids = sorted(i for ids, _ in lazy for i in ids)  # two epochs
    assert ids == sorted(2 * [c.id for c in eager_cuts]) and len(ids) == 2 * (N_CLIPS - 1)


def test_lazy_filter_warns_and_raises(lj, tmp_path, caplog):
    """The lazy filter names the first skipped cuts as they come and counts them once a pass
    is complete; a lazy manifest with no usable cut fails in make_loader, naming it."""
    cfg = _cfg(lj)
    with caplog.at_level(logging.WARNING):
        cuts = _usable_cuts(open_cuts(lj["jsonl"]), cfg, str(lj["jsonl"]))
        assert cuts.is_lazy
        assert [c.id for c in cuts] == [c.id for c in CutSet.from_file(lj["jsonl"])
                                        if not c.supervisions[0].custom["letters"].startswith(OOV)]
        list(iter(cuts))  # a second pass: no second summary
    bad_id = CutSet.from_file(lj["jsonl"])[1].id
    assert f"skipped cut {bad_id} ('{OOV}')" in caplog.text
    assert caplog.text.count(f"1 of {N_CLIPS} cuts skipped") == 1
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blk> 0\nx 1\n")
    with pytest.raises(ValueError, match=f"{lj['jsonl']}: every cut has a symbol"):
        make_loader(_cfg(lj, tokens=str(tokens)), str(lj["jsonl"]), False)


# --------------------------------------------------------------------------- Shar


def test_export_shar_round_trip(lj, tmp_path):
    """export-shar (numpy features + flac audio) gives the same cut ids, features and audio;
    make_loader over the Shar directory (found as such, or as shar:DIR) gives the manifest's
    batches; data_feature_dim reads its metadata; lilcom features stay within lilcom's error."""
    out = tmp_path / "shar"
    assert _export(lj["jsonl"], out, "--shard-size", "5", "--fields", "features", "recording",
                   "--features-format", "numpy") == 0
    assert sorted(p.name for p in out.glob("cuts.*")) == [f"cuts.00000{i}.jsonl.gz"
                                                         for i in range(3)]
    assert not list(tmp_path.glob(".tmp-shar-*"))
    orig, back = list(CutSet.from_file(lj["jsonl"])), list(open_cuts(out))
    assert [c.id for c in back] == [c.id for c in orig]
    for a, b in zip(orig, back):
        assert np.array_equal(a.load_features(), b.load_features())
        assert np.array_equal(a.load_audio(), b.load_audio())
        assert a.supervisions[0].custom == b.supervisions[0].custom
    cfg = _cfg(lj)
    ref = _batches(make_loader(cfg, str(lj["jsonl"]), False))
    _same_batches(ref, _batches(make_loader(cfg, str(out), False)))
    _same_batches(ref, _batches(make_loader(cfg, f"shar:{out}", False)))
    assert data_feature_dim(str(out)) == 80
    lil = tmp_path / "lilcom"
    assert _export(lj["jsonl"], lil) == 0  # default: features, lilcom
    assert sorted({p.name.split(".")[0] for p in lil.iterdir()}) == ["cuts", "features"]
    for a, b in zip(orig, open_cuts(lil)):
        x, y = a.load_features(), b.load_features()
        assert x.shape == y.shape and np.abs(x - y).max() < 0.05


def test_shar_training_order_follows_the_epoch(lj, tmp_path):
    """Training shuffles the shards by the sampler's epoch: a new loader set to epoch 2 (a
    resumed run) gives the batches of epoch 2 of a loader that ran epoch 1; every usable cut
    once an epoch; another epoch, another order."""
    out = tmp_path / "shar"
    assert _export(lj["jsonl"], out, "--shard-size", "2") == 0
    cfg = _cfg(lj)
    both = _batches(make_loader(cfg, str(out), True), epochs=(1, 2))
    second = _batches(make_loader(cfg, str(out), True), epochs=(2,))
    first = both[:len(both) - len(second)]
    _same_batches(both[len(first):], second)
    ids = [sorted(i for b, _ in part for i in b) for part in (first, second)]
    assert ids[0] == ids[1] and len(ids[0]) == N_CLIPS - 1
    assert [b for b, _ in first] != [b for b, _ in second]


def test_export_shar_is_atomic(lj, tmp_path, capsys):
    """A cut without the requested field fails with one line naming it, leaving nothing; an
    existing Shar directory is replaced, another folder is not."""
    out = tmp_path / "shar"
    assert _export(lj["audio"], out, "--fields", "features") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(lj["audio"]) in err[0] and "has no features" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".*"))
    assert _export(lj["jsonl"], out, "--shard-size", "100") == 0
    assert _export(lj["jsonl"], out, "--shard-size", "4") == 0  # replaced
    assert len(list(out.glob("cuts.*"))) == 3 and len(list(open_cuts(out))) == N_CLIPS
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert _export(lj["jsonl"], other) == 2
    assert "is not a Shar directory" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def _tar_boundary(path: Path, items: int) -> int:
    """The byte offset where the ``items``-th (data, metadata) pair of a Shar tar ends."""
    with tarfile.open(path) as tar:
        member = tar.getmembers()[2 * items - 1]
    return member.offset_data + -(-member.size // 512) * 512


@pytest.mark.parametrize("damage", ["mid_member", "member_boundary", "cuts_gzip"])
def test_damaged_shard_is_named(lj, tmp_path, damage):
    """A tar shard truncated inside a member or between members (lhotse stops silently
    there) or a truncated cuts shard: iterating the loader raises a ValueError naming it."""
    out = tmp_path / "shar"
    assert _export(lj["jsonl"], out, "--shard-size", "5") == 0
    if damage == "cuts_gzip":
        victim = out / "cuts.000001.jsonl.gz"
        victim.write_bytes(victim.read_bytes()[:-12])
    else:
        victim = out / "features.000001.tar"
        data = victim.read_bytes()
        cut = _tar_boundary(victim, 2) + (700 if damage == "mid_member" else 0)
        victim.write_bytes(data[:cut])
    with pytest.raises(ValueError) as e:
        _batches(make_loader(_cfg(lj, train_cuts=str(out)), str(out), False), epochs=(1,))
    msg = str(e.value)
    assert msg.startswith(f"{victim}: ") and "\n" not in msg
    if damage == "member_boundary":
        assert "2 of 5 items (truncated Shar shard)" in msg


def test_on_the_fly_features_from_shar_audio_in_workers(lj, tmp_path):
    """Fbank computed on the fly in 2 DataLoader workers from Shar flac audio equals fbank
    computed in this process from the original audio files."""
    out = tmp_path / "shar"
    assert _export(lj["audio"], out, "--shard-size", "4") == 0
    assert {p.name.split(".")[0] for p in out.iterdir()} == {"cuts", "recording"}
    ref = make_dataloader(AsrDataset(extractor=KnfFbank()),
                          make_sampler(open_cuts(lj["audio"]), 20.0, bucketing=False))
    got = make_dataloader(AsrDataset(extractor=KnfFbank()),
                          make_sampler(open_cuts(out), 20.0, bucketing=False), num_workers=2)
    a, b = _batches(ref, (1,)), _batches(got, (1,))
    assert len(a) > 1
    _same_batches(a, b)


# --------------------------------------------------------------------------- scale

RSS_GROWTH_MB = 50  # bound on the RSS growth from 1k to 100k sampled cuts
START_RATIO = 3.0   # bound on (1,000-h start) / (10k-cut start)


@pytest.mark.skipif(os.environ.get("WFST_ASR_SKIP_SLOW") == "1",
                    reason="slow (about 40 s): WFST_ASR_SKIP_SLOW=1")
def test_slow_1000_hours_flat_memory_and_start(tmp_path):
    """A 1,000-hour manifest (the 385 LJ clips repeated, ~550k cuts, 1% unusable) through
    make_loader's lazy manifest -> lazy filter -> DynamicBucketingSampler: RSS after 1k, 10k
    and 100k sampled cuts grows by less than RSS_GROWTH_MB, and the time to the first batch
    is at most START_RATIO times that of a 10k-cut manifest."""
    cuts = lj_cuts(shared_data_dir() / "ljspeech_part1")
    tokens = write_tokens(tmp_path / "tokens.txt", cuts)
    small, big = tmp_path / "small.jsonl.gz", tmp_path / "big.jsonl.gz"
    write_synthetic(small, cuts, num_cuts=10000)
    t0 = time.perf_counter()
    n, hours = write_synthetic(big, cuts, hours=1000)
    write_s = time.perf_counter() - t0
    assert hours >= 1000 and n > 500000
    start_small = min(pipeline_pass(small, tokens, limit=1)["first_batch_s"] for _ in range(2))
    res = pipeline_pass(big, tokens, (1000, 10000, 100000), limit=100000)
    rss = res["rss_at"]
    print(f"\n1,000 h: {n} cuts written in {write_s:.1f} s; first batch {res['first_batch_s']:.2f}"
          f" s (10k cuts: {start_small:.2f} s); {res['cuts_per_s']:.0f} cuts/s; RSS "
          f"{res['rss_start']:.0f} MB before, {rss[1000]:.0f} / {rss[10000]:.0f} / "
          f"{rss[100000]:.0f} MB at 1k / 10k / 100k cuts")
    assert res["cuts"] >= 100000
    assert max(rss.values()) - rss[1000] < RSS_GROWTH_MB
    assert res["first_batch_s"] < START_RATIO * start_small + 0.5
