"""The template recipe, egs/yesno/run.sh, every stage on the real yesno corpus (under a minute),
and the template's promise: a new isolated-word corpus needs only its stage-0 script and a
config file (a synthetic corpus of tone "words", run with an unchanged copy of run.sh).

Skipped with a printed reason without ../shared/data (the yesno test; the synthetic corpus
needs nothing but the checkout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import recipe_wer, shared_data_dir

ROOT = Path(__file__).resolve().parent.parent
YESNO = ROOT / "egs" / "yesno"


def _run(script: Path, args: list[str], timeout: int = 600) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", WFST_ASR_ROOT=str(ROOT))
    proc = subprocess.run(["bash", str(script), *args], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout




def test_yesno_recipe_all_stages(tmp_path):
    waves = shared_data_dir() / "yesno" / "waves_yesno"
    if not waves.is_dir():
        pytest.skip(f"{waves} not found: the yesno corpus is needed for the recipe test")
    data, exp = tmp_path / "data", tmp_path / "exp"
    args = ["--corpus-dir", str(waves), "--data-dir", str(data), "--exp-dir", str(exp)]
    out = _run(YESNO / "run.sh", args)
    for n in range(6):
        assert f"stage {n}:" in out
    assert (data / "lang" / "HLG.fst").is_file() and (exp / "averaged.pt").is_file()
    assert (data / "local" / "lexicon.txt").read_text().split("\n")[:2] == ["NO N OW",
                                                                            "YES Y EH S"]
    results = exp / "decode" / "results.txt"
    assert recipe_wer(results, "hlg", "test") <= 10.0 and recipe_wer(results, "kaldi", "test") <= 10.0
    for split in ("dev", "test"):
        assert (exp / "decode" / f"wer_hlg_{split}.txt").is_file()
    assert _run(YESNO / "run.sh", args).count("already done") == 6


# --------------------------------------------------------------------------- a new corpus
WORDS = {"UP": (300, 900), "DOWN": (900, 300), "LEFT": (500, 500), "RIGHT": (1200, 1200)}
PREPARE = '''\
"""Stage 0 of a new corpus: isolated words, the label in the file name (<word>_<n>.wav)."""
import argparse
from pathlib import Path

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

p = argparse.ArgumentParser()
p.add_argument("--corpus-dir", type=Path, required=True)
p.add_argument("--out-dir", type=Path, required=True)
args = p.parse_args()
args.out_dir.mkdir(parents=True, exist_ok=True)
for split in ("train", "dev", "test"):
    recs = [Recording.from_file(w) for w in sorted((args.corpus_dir / split).glob("*.wav"))]
    sups = [SupervisionSegment(r.id, r.id, 0.0, r.duration, text=r.id.split("_")[0])
            for r in recs]
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recs),
                                 SupervisionSet.from_segments(sups))
    cuts.to_file(args.out_dir / f"tones_cuts_{split}.jsonl.gz")
    if split == "train":
        (args.out_dir / "text_train").write_text(
            "".join(f"{s.id} {s.text}\\n" for s in sups))
'''


def _tone_corpus(folder: Path, counts: dict[str, int], seed: int = 0) -> None:
    """8 kHz isolated "words": a chirp between two frequencies (0.3-0.5 s) in 0.15 s of
    silence each side, with a little noise."""
    rng = np.random.default_rng(seed)
    sr = 8000
    for split, n in counts.items():
        (folder / split).mkdir(parents=True)
        for i in range(n):
            word = list(WORDS)[i % len(WORDS)]
            f0, f1 = WORDS[word]
            dur = rng.uniform(0.3, 0.5)
            t = np.arange(int(dur * sr)) / sr
            freq = f0 + (f1 - f0) * t / dur
            tone = 0.5 * np.sin(2 * np.pi * np.cumsum(freq) / sr)
            pad = np.zeros(int(0.15 * sr))
            x = np.concatenate([pad, tone, pad]) + 0.01 * rng.standard_normal(len(tone) + 2 * len(pad))
            sf.write(folder / split / f"{word}_{split}{i}.wav", x.astype(np.float32), sr,
                     subtype="PCM_16")


def test_new_isolated_word_corpus_needs_only_stage0_and_a_config(tmp_path):
    recipe = tmp_path / "egs" / "tones"
    (recipe / "local").mkdir(parents=True)
    (recipe / "conf").mkdir()
    shutil.copy(YESNO / "run.sh", recipe / "run.sh")           # unchanged
    (recipe / "local" / "prepare_tones.py").write_text(PREPARE)
    conf = (YESNO / "conf" / "ctc_tdnn.yaml").read_text().replace("yesno", "tones")
    conf = conf.replace("max_duration: 10.0", "max_duration: 3.0")  # short words: more steps
    conf = conf.replace("num_epochs: 15", "num_epochs: 30")
    assert "max_duration: 3.0" in conf and "num_epochs: 30" in conf
    (recipe / "conf" / "ctc_tdnn.yaml").write_text(conf)
    _tone_corpus(tmp_path / "wavs", {"train": 48, "dev": 8, "test": 12})
    out = _run(recipe / "run.sh", ["--corpus", "tones", "--corpus-dir", str(tmp_path / "wavs"),
                                   "--lm-order", "1"])
    assert "stage 5:" in out
    lexicon = (recipe / "data" / "local" / "lexicon.txt").read_text()
    assert "RIGHT R AY T" in lexicon and "UP AH P" in lexicon
    results = recipe / "exp" / "ctc_tdnn" / "decode" / "results.txt"
    assert recipe_wer(results, "hlg", "test") <= 25.0, results.read_text()
    assert textwrap.dedent(PREPARE).count("tones_cuts") == 1  # the only corpus-specific name
