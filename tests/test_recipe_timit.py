"""The TIMIT recipe, every stage, on the NLTK sample with a tiny model and 1 epoch.

Checks that egs/timit/run.sh runs stages 0-5 end to end (the figures are meaningless at this
size), that every stage leaves its marker and outputs, that the PER reports are written, and
that a second run skips every stage; for CTC and, with ``--loss hmm`` / ``--loss mmi``, for
the HMM (HCLG decoding) and LF-MMI (CTC topology, HLG decoding) criteria. Skipped with a
printed reason without ../shared/data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import shared_data_dir

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], timeout: int = 900) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(["bash", str(ROOT / "egs/timit/run.sh"), *args], cwd=ROOT, env=env,
                          check=False,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_timit_recipe_all_stages(tmp_path):
    timit = shared_data_dir() / "timit_nltk_sample"
    if not timit.is_dir():
        pytest.skip(f"{timit} not found: the TIMIT sample is needed for the recipe test")
    args = ["--timit-dir", str(timit), "--data-dir", str(tmp_path / "data"),
            "--exp-dir", str(tmp_path / "exp"), "--lm-scales", "0.3", "--word-penalties", "0,1",
            "--set", "num_epochs=1", "--set", "model.hidden=16", "--set", "model.num_layers=1"]
    out = _run(args)
    for n in range(5):
        assert f"stage {n}:" in out
    for m in (".timit_stage0.done", ".timit_stage1.done", ".timit_stage2.ctc.done"):
        assert (tmp_path / "data" / m).is_file()
    assert (tmp_path / "data" / "lang_phone" / "HLG.fst").is_file()
    exp = tmp_path / "exp"
    assert (exp / "epoch-1.pt").is_file() and (exp / "config.json").is_file()
    for dec in ("greedy", "hlg", "kaldi"):
        for split in ("dev", "test"):
            report = (exp / f"per_{dec}_{split}.txt").read_text()
            rate = re.search(r"%PER ([0-9.]+)", report)
            assert rate is not None and 0.0 <= float(rate.group(1)) <= 200.0
    assert "word_penalty" in (exp / "results.txt").read_text()
    # every stage timed, with its peak memory and exit status
    rows = [ln.split("\t") for ln in (exp / "stage_times.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == [f"stage {n}" for n in range(5)]
    assert all(float(r[1]) > 0 and float(r[2]) > 50 and r[3] == "0" for r in rows)
    # a second run finds every stage done
    again = _run(args)
    assert again.count("already done") == 5


@pytest.mark.parametrize("loss,graph", [("hmm", "hclg"), ("mmi", "hlg")])
def test_timit_recipe_hmm_mmi(tmp_path, loss, graph):
    timit = shared_data_dir() / "timit_nltk_sample"
    if not timit.is_dir():
        pytest.skip(f"{timit} not found: the TIMIT sample is needed for the recipe test")
    exp = tmp_path / "exp"
    args = ["--loss", loss, "--timit-dir", str(timit), "--data-dir", str(tmp_path / "data"),
            "--exp-dir", str(exp), "--lm-scales", "0.3", "--word-penalties", "0,1",
            "--set", "num_epochs=1", "--set", "model.hidden=16", "--set", "model.num_layers=1"]
    out = _run(args)
    for n in range(5):
        assert f"stage {n}:" in out
    assert f"loss {loss} (timit.{loss}_blstm)" in out
    for m in (".timit_stage0.done", ".timit_stage1.done", f".timit_stage2.{loss}.done"):
        assert (tmp_path / "data" / m).is_file()
    lang = tmp_path / "data" / "lang_phone"
    assert (lang / "HLG.fst").is_file()
    if loss == "hmm":
        assert (lang / "hmm-1state" / "HCLG.fst").is_file()
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["loss"] == loss and cfg["num_classes"] == 49
    assert (exp / "epoch-1.pt").is_file() and (exp / ".stage45.done").is_file()
    for dec in ("greedy", graph, "kaldi"):
        for split in ("dev", "test"):
            report = (exp / f"per_{dec}_{split}.txt").read_text()
            rate = re.search(r"%PER ([0-9.]+)", report)
            assert rate is not None and 0.0 <= float(rate.group(1)) <= 200.0
    results = (exp / "results.txt").read_text()
    assert f"loss {loss}, topology" in results and "word_penalty" in results
    assert re.search(rf"{graph.upper()} one_best and kaldi_one_best agree: \d+/20", results)
    rows = [ln.split("\t") for ln in (exp / "stage_times.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == [f"stage {n}" for n in range(5)]
    assert all(r[3] == "0" for r in rows)
    again = _run(args)
    assert again.count("already done") == 5


def test_timit_recipe_transducer(tmp_path):
    timit = shared_data_dir() / "timit_nltk_sample"
    if not timit.is_dir():
        pytest.skip(f"{timit} not found: the TIMIT sample is needed for the recipe test")
    exp = tmp_path / "exp"
    args = ["--loss", "transducer", "--timit-dir", str(timit), "--data-dir",
            str(tmp_path / "data"), "--exp-dir", str(exp), "--lm-scales", "0.3",
            "--word-penalties", "0,1", "--set", "num_epochs=1", "--set", "model.hidden=16",
            "--set", "model.num_layers=1", "--set", "model.encoder_dim=16", "--set",
            "model.decoder_dim=16", "--set", "model.joiner_dim=16"]
    out = _run(args)
    for n in range(5):
        assert f"stage {n}:" in out
    assert "loss transducer (timit.transducer_blstm)" in out
    for m in (".timit_stage0.done", ".timit_stage1.done", ".timit_stage2.transducer.done"):
        assert (tmp_path / "data" / m).is_file()
    assert (tmp_path / "data" / "lang_phone" / "LG.fst").is_file()
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["loss"] == "transducer" and cfg["model"] == "blstm_transducer"
    assert cfg["num_classes"] == 49
    assert (exp / "epoch-1.pt").is_file() and (exp / ".stage45.done").is_file()
    for dec in ("greedy", "beam", "fast", "lg", "ctc"):
        for split in ("dev", "test"):
            report = (exp / f"per_{dec}_{split}.txt").read_text()
            rate = re.search(r"%PER ([0-9.]+)", report)
            assert rate is not None and 0.0 <= float(rate.group(1)) <= 200.0
    results = (exp / "results.txt").read_text()
    assert "LG tuned on dev: lm_scale 0.3" in results and "word_penalty" in results
    assert re.search(r"^lg +test PER", results, re.MULTILINE)
    rows = [ln.split("\t") for ln in (exp / "stage_times.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == [f"stage {n}" for n in range(5)]
    assert all(float(r[1]) > 0 and float(r[2]) > 50 and r[3] == "0" for r in rows)
    again = _run(args)
    assert again.count("already done") == 5
