#!/usr/bin/env python3
"""Data pipeline at scale: lazy manifests, the bucketing sampler, DataLoader workers.

1. **Pipeline** (``--sizes``, default 1k / 10k / 100k cuts, plus the 1,000-hour manifest's
   start): synthetic manifests of the LJ Speech clips of ../shared/data repeated with new cut
   ids (written lazily with lhotse's ``SequentialJsonlWriter`` as ``.jsonl.gz``; 1 cut in 100
   has a symbol outside the token table), iterated as training iterates them:
   ``make_loader``'s lazy manifest -> the lazy usable-cuts filter -> ``DynamicBucketingSampler``
   (shuffling, 20,000-cut buffer), no audio or features read. Each size runs in a fresh
   subprocess; reported: the time to the first batch (sampler construction included: the
   duration bins from the first 10,000 cuts, the buffer), cuts/s over the whole pass, and the
   resident memory (psutil, else VmRSS) before the manifest is opened, after the first batch
   and at the end of the pass.
2. **Training** (``--train``): steps/s of a tiny BLSTM CTC over letters (64 cells, 1 layer) on
   the real LJ clips' 80-dim fbank, batches of ``--max-duration`` s, with 0, 1 and 2
   DataLoader workers, from (a) the ``.jsonl.gz`` manifest with numpy feature files, (b) a
   Shar directory of lilcom features (``wfst-asr export-shar``), (c) a Shar directory of flac
   recordings with fbank computed on the fly in the workers. Each case runs in a fresh
   subprocess; the rate is over ``--steps`` steps after 2 warm-up steps (worker start-up and
   the first batches excluded), data loading included.

    python tools/bench/bench_data.py                      # pipeline 1k/10k/100k + 1,000 h
    python tools/bench/bench_data.py --train --steps 20   # and the training rates
    python tools/bench/bench_data.py --quick              # 1k/10k, 100 h, no training

Features, Shar directories and manifests go to ``--work`` (default exp/bench_data), reused
when present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_synthetic_lm import vm_kib

REPO = Path(__file__).resolve().parents[2]
LJ_DIR = REPO.parent / "shared" / "data" / "ljspeech_part1"
SPACE = "|"
OOV = "@"  # a letter outside the token table: the cuts carrying it are skipped
WARMUP = 2
MAX_CUTS_TRAIN = 200  # the LJ clips used for the training rates (all 385 take longer)


# --------------------------------------------------------------------------- manifests


def rss_mb() -> float:
    """Resident memory of this process in MB (psutil when installed, else VmRSS)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return vm_kib("VmRSS") / 1024


def letters(text: str) -> str:
    """``"a b c | d e"``: the lower-case letters and apostrophes of ``text``, ``|`` between
    words (other characters dropped)."""
    words = ["".join(ch for ch in w if ch.isalpha() or ch == "'") for w in text.lower().split()]
    return f" {SPACE} ".join(" ".join(w) for w in words if w)


def lj_transcripts(lj_dir: Path = LJ_DIR) -> dict[str, str]:
    """``{clip id: normalized transcript}`` of ``metadata.csv``."""
    rows = (line.split("|") for line in (lj_dir / "metadata.csv").read_text().splitlines())
    return {r[0]: r[2].strip() for r in rows if len(r) >= 3}


def lj_cuts(lj_dir: Path = LJ_DIR, limit: int | None = None):
    """A ``CutSet`` of the LJ clips (one supervision each, ``text`` the normalized transcript,
    ``custom["letters"]`` its :func:`letters`)."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    text = lj_transcripts(lj_dir)
    cuts = []
    for path in sorted((lj_dir / "flac").glob("*.flac"))[:limit]:
        rec = Recording.from_file(path)
        sup = SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0,
                                 duration=rec.duration, text=text[rec.id], speaker="LJ",
                                 custom={"letters": letters(text[rec.id])})
        cuts.append(MonoCut(id=rec.id, start=0.0, duration=rec.duration, channel=0,
                            recording=rec, supervisions=[sup]))
    return CutSet.from_cuts(cuts)


def write_tokens(path: Path, cuts) -> Path:
    """``tokens.txt`` (``<blk> 0``, then the letters of ``cuts`` in sorted order)."""
    syms = sorted({t for c in cuts for s in c.supervisions for t in s.custom["letters"].split()})
    path.write_text("<blk> 0\n" + "".join(f"{t} {i}\n" for i, t in enumerate(syms, 1)))
    return path


def write_synthetic(path: Path, cuts, num_cuts: int | None = None, hours: float | None = None,
                    oov_every: int = 100) -> tuple[int, float]:
    """Write ``cuts`` repeated with new ids (``syn0000042-LJ001-0001``) to ``path`` (lhotse's
    lazy ``SequentialJsonlWriter``, one line at a time) until ``num_cuts`` cuts or ``hours``
    of audio; every ``oov_every``-th cut's letters get :data:`OOV` (0: none). Returns
    ``(cuts, hours)`` written."""
    from lhotse.serialization import SequentialJsonlWriter

    templates = [(c.to_dict(), c.supervisions[0].custom["letters"]) for c in cuts]
    limit_s = hours * 3600 if hours is not None else float("inf")
    n, total = 0, 0.0
    with SequentialJsonlWriter(path) as writer:
        while (num_cuts is None or n < num_cuts) and total < limit_s:
            d, text = templates[n % len(templates)]
            cid = f"syn{n:07d}-{d['id']}"
            if oov_every and n % oov_every == oov_every - 1:
                text = f"{OOV} {text}"
            sup = {**d["supervisions"][0], "id": cid, "custom": {"letters": text}}
            writer.write({**d, "id": cid, "supervisions": [sup]})
            n += 1
            total += d["duration"]
    return n, total / 3600


def pipeline_config(manifest: Path, tokens: Path, max_duration: float = 200.0):
    """The training configuration of the pipeline runs (CTC over the letters, bucketing)."""
    from wfst_asr.train import ExperimentConfig

    return ExperimentConfig(train_cuts=str(manifest), tokens=str(tokens), token_field="letters",
                            max_duration=max_duration, bucketing=True, num_buckets=10, seed=0)


def pipeline_pass(manifest: Path, tokens: Path, checkpoints: tuple[int, ...] = (),
                  limit: int | None = None) -> dict:
    """Iterate the training sampler of ``make_loader`` over ``manifest`` (no data loaded):
    ``{"first_batch_s", "cuts", "seconds", "cuts_per_s", "rss_start", "rss_first",
    "rss_end", "rss_at": {n: MB once n cuts were yielded}}``; stops after ``limit`` cuts."""
    from wfst_asr.train import make_loader

    rss_start = rss_mb()
    t0 = time.perf_counter()
    sampler = make_loader(pipeline_config(manifest, tokens), str(manifest), True).sampler
    batches = iter(sampler)
    n = len(next(batches))
    first = time.perf_counter() - t0
    rss_first, rss_at, todo = rss_mb(), {}, sorted(checkpoints)
    while (batch := next(batches, None)) is not None:  # iter() again would restart the epoch
        n += len(batch)
        while todo and n >= todo[0]:
            rss_at[todo.pop(0)] = rss_mb()
        if limit is not None and n >= limit:
            break
    seconds = time.perf_counter() - t0
    return {"first_batch_s": first, "cuts": n, "seconds": seconds, "cuts_per_s": n / seconds,
            "rss_start": rss_start, "rss_first": rss_first, "rss_end": rss_mb(),
            "rss_at": rss_at}


# --------------------------------------------------------------------------- training


def prepare_lj(work: Path) -> dict[str, Path]:
    """LJ features (numpy files, CMVN), the letters' tokens, Shar directories of lilcom
    features and of flac recordings, under ``work`` (made once)."""
    from wfst_asr.bin import cli

    work.mkdir(parents=True, exist_ok=True)
    raw, fbank = work / "lj_cuts.jsonl.gz", work / "fbank"
    paths = {"jsonl": fbank / raw.name, "cmvn": fbank / "cmvn.pt",
             "shar_feats": work / "shar_feats", "shar_audio": work / "shar_audio",
             "tokens": work / "tokens.txt"}
    if not raw.exists():
        cuts = lj_cuts(limit=MAX_CUTS_TRAIN)
        cuts.to_file(raw)
        write_tokens(paths["tokens"], cuts)
    steps = [(paths["jsonl"], ["compute-features", "--cuts", str(raw), "--out-dir", str(fbank),
                               "--storage", "numpy", "--num-jobs", "2"]),
             (paths["shar_feats"], ["export-shar", "--cuts", str(paths["jsonl"]), "--out",
                                    str(paths["shar_feats"]), "--fields", "features"]),
             (paths["shar_audio"], ["export-shar", "--cuts", str(raw), "--out",
                                    str(paths["shar_audio"]), "--fields", "recording"])]
    for out, argv in steps:
        if not out.exists() and cli.main(argv) != 0:
            raise RuntimeError(f"wfst-asr {' '.join(argv)} failed")
    return paths


def train_loader(source: str, paths: dict[str, Path], cfg):
    """The training loader of ``source``: ``make_loader`` over the features (jsonl or Shar),
    or on-the-fly fbank from the Shar recordings."""
    from wfst_asr.data import AsrDataset, KnfFbank, make_dataloader, make_sampler
    from wfst_asr.data.dataset import open_cuts
    from wfst_asr.train import make_loader

    if source != "shar_audio":
        return make_loader(cfg, str(paths[source]), True)
    cuts = open_cuts(paths["shar_audio"], shuffle_shards=True, seed=cfg.seed)
    sampler = make_sampler(cuts, cfg.max_duration, shuffle=True, seed=cfg.seed)
    dataset = AsrDataset(extractor=KnfFbank(), cmvn=str(paths["cmvn"]))
    return make_dataloader(dataset, sampler, num_workers=cfg.num_workers)


def train_rate(source: str, workers: int, steps: int, max_duration: float, work: Path) -> dict:
    """``{"steps_per_s", "frames_per_s", "first_batch_s"}`` of the tiny BLSTM CTC training
    from ``source`` with ``workers`` DataLoader workers."""
    import torch

    from wfst_asr.train import ExperimentConfig, Trainer, build_model_and_loss

    paths = prepare_lj(work)
    cfg = ExperimentConfig(train_cuts=str(paths["jsonl"]), tokens=str(paths["tokens"]),
                           token_field="letters", cmvn=str(paths["cmvn"]), model="blstm",
                           model_kwargs={"hidden": 64, "num_layers": 1}, lr=1e-3,
                           max_duration=max_duration, num_workers=workers, seed=0)
    torch.manual_seed(0)
    model, loss, table = build_model_and_loss(cfg)
    loader = train_loader(source, paths, cfg)
    trainer = Trainer(cfg, model, loss, loader, token_table=table)
    t0 = time.perf_counter()
    done, frames, epoch, t_warm, first = 0, 0, 0, 0.0, 0.0
    while done < WARMUP + steps:
        epoch += 1
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if done == 0:
                first = time.perf_counter() - t0
            trainer.train_step(batch)
            done += 1
            if done == WARMUP:
                t_warm = time.perf_counter()
            elif done > WARMUP:
                frames += int(batch["feature_lens"].sum())
            if done == WARMUP + steps:
                break
    seconds = time.perf_counter() - t_warm
    return {"steps_per_s": steps / seconds, "frames_per_s": frames / seconds,
            "first_batch_s": first}


# --------------------------------------------------------------------------- driver


def child(argv: list[str]) -> dict:
    """One case in this (fresh) process: ``pipeline MANIFEST TOKENS`` or
    ``train SOURCE WORKERS STEPS MAX_DURATION WORK``."""
    import torch

    torch.set_num_threads(1)
    if argv[0] == "pipeline":
        limit = int(argv[3]) if len(argv) > 3 else None
        return pipeline_pass(Path(argv[1]), Path(argv[2]), (1000, 10000), limit)
    source, workers, steps, max_duration, work = argv[1:6]
    return train_rate(source, int(workers), int(steps), float(max_duration), Path(work))


def run_child(*args: object) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_pipeline(a: argparse.Namespace, work: Path) -> list[dict]:
    """The pipeline rows (each size, then the big manifest's start)."""
    cuts = lj_cuts()
    tokens = write_tokens(work / "tokens_all.txt", cuts)
    rows = []
    for size in a.sizes:
        path = work / f"synthetic_{size}.jsonl.gz"
        n, hours = write_synthetic(path, cuts, num_cuts=size)
        res = run_child("pipeline", path, tokens)
        rows.append({"manifest": f"{n:,} cuts ({hours:.0f} h)", **res})
    path = work / f"synthetic_{a.hours:g}h.jsonl.gz"
    t0 = time.perf_counter()
    n, hours = write_synthetic(path, cuts, hours=a.hours)
    write_s = time.perf_counter() - t0
    res = run_child("pipeline", path, tokens, 1)  # the first batch only
    rows.append({"manifest": f"{n:,} cuts ({hours:.0f} h, written in {write_s:.0f} s)", **res,
                 "cuts_per_s": None})
    return rows


def print_pipeline(rows: list[dict]) -> None:
    print("| manifest | first batch s | cuts/s (whole pass) | RSS MB: before | after the 1st batch"
          " | after 1k / 10k sampled cuts | at the end |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        at = " / ".join(f"{r['rss_at'][k]:.0f}" if k in r["rss_at"] else "-"
                        for k in ("1000", "10000"))
        rate = f"{r['cuts_per_s']:,.0f}" if r["cuts_per_s"] else "-"
        print(f"| {r['manifest']} | {r['first_batch_s']:.2f} | {rate} | {r['rss_start']:.0f} | "
              f"{r['rss_first']:.0f} | {at} | {r['rss_end']:.0f} |")


def run_training(a: argparse.Namespace, work: Path) -> list[dict]:
    prepare_lj(work)
    rows = []
    for source in ("jsonl", "shar_feats", "shar_audio"):
        for workers in (0, 1, 2):
            res = run_child("train", source, workers, a.steps, a.max_duration, work)
            rows.append({"source": source, "workers": workers, **res})
    return rows


SOURCES = {"jsonl": "jsonl.gz + numpy feature files", "shar_feats": "Shar, lilcom features",
           "shar_audio": "Shar flac, fbank on the fly"}


def print_training(rows: list[dict]) -> None:
    print("| batches from | workers | steps/s | input frames/s | first batch s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {SOURCES[r['source']]} | {r['workers']} | {r['steps_per_s']:.2f} | "
              f"{r['frames_per_s']:,.0f} | {r['first_batch_s']:.2f} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000],
                   help="pipeline manifest sizes in cuts (default 1000 10000 100000)")
    p.add_argument("--hours", type=float, default=1000.0,
                   help="the big manifest's hours (its time to the first batch)")
    p.add_argument("--train", action="store_true", help="also the training rates")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per case")
    p.add_argument("--max-duration", type=float, default=40.0, help="seconds per batch")
    p.add_argument("--work", default="exp/bench_data", help="folder of the data it makes")
    p.add_argument("--quick", action="store_true", help="1k/10k cuts, 100 h, no training")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child)))
        return
    if not LJ_DIR.is_dir():
        sys.exit(f"bench_data: {LJ_DIR} not found (the LJ Speech sample of ../shared/data)")
    if a.quick:
        a.sizes, a.hours, a.train = [1000, 10000], 100.0, False
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    import lhotse
    import torch

    print(f"torch {torch.__version__}, lhotse {lhotse.__version__}, 1 thread per process; "
          f"{os.cpu_count()} CPUs")
    rows = run_pipeline(a, work)
    print_pipeline(rows)
    train = run_training(a, work) if a.train else []
    if train:
        print(f"\ntiny BLSTM CTC (64 cells, 1 layer) on {MAX_CUTS_TRAIN} LJ clips, batches of "
              f"{a.max_duration:g} s; rates over {a.steps} steps after {WARMUP}")
        print_training(train)
    summary = {"pipeline": rows, "training": train}
    print(json.dumps(summary))
    if a.json:
        from wfst_asr.atomic import atomic_write_text

        atomic_write_text(a.json, json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
