"""The TIMIT recipe, every stage, on the NLTK sample with a tiny model and 1 epoch.

Checks that egs/timit/run.sh runs stages 0-6 end to end (the figures are meaningless at this
size), and for CTC the rescoring stages 7-9 (lattices, 3-gram / LSTM LM on the training
transcripts, 1-best / 3-gram / LSTM-LM / oracle PER: the oracle never above the others), that
every stage leaves its marker and outputs, that the PER reports are written, and
that a second run skips every stage while an explicit ``--stage N`` reruns N; for CTC and, with ``--loss hmm`` / ``--loss mmi``, for
the HMM (a quick monophone GMM, frame CE on its alignments, HCLG decoding) and LF-MMI (CTC
topology, HLG decoding) criteria. Skipped with a
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
            "--set", "num_epochs=1", "--set", "model.hidden=16", "--set", "model.num_layers=1",
            "--nnlm-epochs", "2", "--lattice-args", "--output-beam 3 --max-active-states 500",
            "--rescore-args", "--nbest 10"]
    out = _run(args)
    for n in range(10):
        assert f"stage {n}:" in out
    assert "stage 3: the monophone GMM is for --loss hmm only: skipped" in out
    for m in (".stage0.done", ".stage1.done", ".stage2.ctc.done"):
        assert (tmp_path / "data" / m).is_file()
    assert (tmp_path / "data" / "lang_phone" / "HLG.fst").is_file()
    exp = tmp_path / "exp"
    assert (exp / "epoch-1.pt").is_file() and (exp / "config.json").is_file()
    for dec in ("greedy", "hlg", "kaldi"):
        for split in ("dev", "test"):
            report = (exp / "decode" / f"per_{dec}_{split}.txt").read_text()
            rate = re.search(r"%PER ([0-9.]+)", report)
            assert rate is not None and 0.0 <= float(rate.group(1)) <= 200.0
    assert "word_penalty" in (exp / "decode" / "results.txt").read_text()
    _check_rescoring_stages(exp)
    # every stage timed, with its peak memory and exit status
    rows = [ln.split("\t") for ln in (exp / "stage_times.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == [f"stage {n}" for n in (0, 1, 2, 4, 5, 7, 8, 9)]
    assert all(float(r[1]) > 0 and float(r[2]) > 50 and r[3] == "0" for r in rows)
    # a second run finds every stage done; an explicit --stage reruns it
    again = _run(args)
    assert again.count("already done") == 9
    again = _run(args + ["--stage", "6", "--stop-stage", "6"])
    assert "already done" not in again and "stage 6: score" in again
    assert "%PER" in again or "PER" in again


def _per(path: Path) -> tuple[float, int]:
    """(PER %, errors) of a PER report."""
    m = re.search(r"%PER ([0-9.]+) \[ (\d+) / \d+", path.read_text())
    assert m is not None, path
    return float(m.group(1)), int(m.group(2))


def _check_rescoring_stages(exp: Path) -> None:
    """Stages 7-9: lattice directories, LMs on the training transcripts only, PER reports of
    the 1-best / 3-gram / LSTM-LM / oracle, sweeps and settings from the dev grid."""
    from wfst_asr.decode.lattice_io import LatticeReader

    for split in ("dev", "test"):
        reader = LatticeReader(exp / "lats" / split)
        assert len(reader) == 20 and reader.meta["output_beam"] > 0
    train_ids = {ln.split()[0] for ln in (exp / "lm" / "text_train").read_text().splitlines()}
    assert len(train_ids) == 120
    for split in ("dev", "test"):  # no dev / test transcript in the LMs' training text
        assert not train_ids & set(LatticeReader(exp / "lats" / split).utt_ids)
    assert "\\3-grams:" in (exp / "lm" / "3gram.arpa").read_text()
    assert (exp / "lm" / "nnlm" / "lm.pt").is_file()
    res = exp / "rescore"  # a decode dir of `wfst-asr rescore`, scored
    for split in ("dev", "test"):
        rates = {m: _per(res / f"per_{m}_{split}.txt")
                 for m in ("lat1best", "3gram", "nnlm", "oracle")}
        assert all(0.0 <= r <= 200.0 for r, _ in rates.values())
        # every hypothesis is a lattice path's: the oracle is never worse than any of them
        assert all(rates["oracle"][1] <= e for _, e in rates.values()), rates
        assert (res / "lat1best" / f"{split}.hyp").is_file()
    settings = json.loads((res / "settings.json").read_text())
    assert settings["metric"] == "PER" and settings["tune_set"] == "dev"
    methods = settings["methods"]
    for name in ("lat1best", "3gram"):
        setting = methods[name]["setting"]
        assert setting["lm_scale"] == 0.3 and setting["word_penalty"] in (0, 1)
        rows = [ln.split() for ln in (res / name / "sweep_dev.txt").read_text().splitlines()
                if ln.strip() and ln.split()[0][0].isdigit()]
        assert len(rows) == 2  # the dev grid: 1 scale x 2 penalties
        assert float(methods[name]["tune_error"]) == pytest.approx(
            min(float(r[2]) for r in rows), abs=0.006)  # 2 decimals
    assert methods["nnlm"]["setting"]["nnlm_scale"] in (0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    text = (res / "results.txt").read_text()
    assert re.search(r"^oracle +test PER", text, re.MULTILINE) and "skipped:" in text


@pytest.mark.parametrize("loss,graph", [("hmm", "hclg"), ("mmi", "hlg")])
def test_timit_recipe_hmm_mmi(tmp_path, loss, graph):
    timit = shared_data_dir() / "timit_nltk_sample"
    if not timit.is_dir():
        pytest.skip(f"{timit} not found: the TIMIT sample is needed for the recipe test")
    exp = tmp_path / "exp"
    args = ["--loss", loss, "--timit-dir", str(timit), "--data-dir", str(tmp_path / "data"),
            "--exp-dir", str(exp), "--lm-scales", "0.3", "--word-penalties", "0,1",
            "--set", "num_epochs=1", "--set", "model.hidden=16", "--set", "model.num_layers=1"]
    if loss == "hmm":  # a quick monophone GMM: 3 EM iterations, realigned once
        args += ["--gmm-args", "--num-iters 3 --max-iter-inc 2 --tot-gauss 200 --realign-iters 1",
                 "--gmm-lm-scales", "1", "--gmm-word-penalties", "0"]
    out = _run(args)
    for n in range(7):
        assert f"stage {n}:" in out
    assert f"loss {loss} (conf/{loss}_blstm.yaml)" in out
    for m in (".stage0.done", ".stage1.done", f".stage2.{loss}.done"):
        assert (tmp_path / "data" / m).is_file()
    lang = tmp_path / "data" / "lang_phone"
    assert (lang / "HLG.fst").is_file()
    if loss == "hmm":
        assert (lang / "hmm-1state" / "HCLG.fst").is_file()
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["loss"] == loss and cfg["num_classes"] == 49
    assert (exp / "epoch-1.pt").is_file() and (exp / ".stage5.done").is_file()
    for dec in ("greedy", graph, "kaldi"):
        for split in ("dev", "test"):
            report = (exp / "decode" / f"per_{dec}_{split}.txt").read_text()
            rate = re.search(r"%PER ([0-9.]+)", report)
            assert rate is not None and 0.0 <= float(rate.group(1)) <= 200.0
    results = (exp / "decode" / "results.txt").read_text()
    assert f"loss {loss}, topology" in results and "word_penalty" in results
    assert (exp / "align" / "test.ctm").is_file()
    assert "dev boundary accuracy: 10 ms" in (exp / "align" / "boundaries.txt").read_text()
    assert re.search(rf"test utterances where {graph} and kaldi agree: \d+/20", results)
    rows = [ln.split("\t") for ln in (exp / "stage_times.tsv").read_text().splitlines()]
    stages = [f"stage {n}" for n in (0, 1, 2, 4, 5)]
    if loss == "hmm":  # the GMM: its alignments in the cuts the hybrid trained on, its PER
        gmm = tmp_path / "mono"
        assert (gmm / ".stage3.done").is_file() and (gmm / "ali_train.pt").is_file()
        assert cfg["train_cuts"] == str(gmm / "cuts_train.jsonl.gz")
        assert cfg["token_field"] == "gmm_ali"
        assert re.search(r"hclg +test PER", (gmm / "decode" / "results.txt").read_text())
        assert "test boundary accuracy: 10 ms" in (gmm / "align" / "boundaries.txt").read_text()
        stages.insert(3, "stage 3")
    assert [r[0] for r in rows] == stages
    assert all(r[3] == "0" for r in rows)
    again = _run(args)
    assert again.count("already done") == (7 if loss == "hmm" else 6)


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
    for n in range(7):
        assert f"stage {n}:" in out
    assert "loss transducer (conf/transducer_blstm.yaml)" in out
    for m in (".stage0.done", ".stage1.done", ".stage2.transducer.done"):
        assert (tmp_path / "data" / m).is_file()
    assert (tmp_path / "data" / "lang_phone" / "LG.fst").is_file()
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["loss"] == "transducer" and cfg["model"] == "blstm_transducer"
    assert cfg["num_classes"] == 49
    assert (exp / "epoch-1.pt").is_file() and (exp / ".stage5.done").is_file()
    for dec in ("greedy", "beam", "fast_beam", "fast_beam_lg", "aux_ctc"):
        for split in ("dev", "test"):
            report = (exp / "decode" / f"per_{dec}_{split}.txt").read_text()
            rate = re.search(r"%PER ([0-9.]+)", report)
            assert rate is not None and 0.0 <= float(rate.group(1)) <= 200.0
    results = (exp / "decode" / "results.txt").read_text()
    assert "lm_scale 0.3" in results and "word_penalty" in results
    assert re.search(r"^fast_beam_lg +test PER", results, re.MULTILINE)
    rows = [ln.split("\t") for ln in (exp / "stage_times.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == [f"stage {n}" for n in (0, 1, 2, 4, 5)]
    assert all(float(r[1]) > 0 and float(r[2]) > 50 and r[3] == "0" for r in rows)
    again = _run(args)
    assert again.count("already done") == 6


def test_timit_recipe_segmental(tmp_path):
    """--loss segmental: the .phn frame labels (stage 3), each of the four losses end to end,
    and the two-stage chain (frame CE, theta only, fine-tuning), a tiny model for 1 epoch each;
    best-path decoding and the alignments' boundary accuracy."""
    timit = shared_data_dir() / "timit_nltk_sample"
    if not timit.is_dir():
        pytest.skip(f"{timit} not found: the TIMIT sample is needed for the recipe test")
    data = tmp_path / "data"
    tiny = ["--set", "num_epochs=1", "--set", "model.hidden=16", "--set", "model.num_layers=1",
            "--set", "model.max_duration=10"]
    base = ["--loss", "segmental", "--timit-dir", str(timit), "--data-dir", str(data),
            "--lm-scales", "0.3", "--word-penalties", "0,1", *tiny]
    out = _run([*base, "--exp-dir", str(tmp_path / "marginal_log")])
    for n in range(7):
        assert f"stage {n}:" in out
    assert (data / ".stage3.frames.done").is_file()
    frames = data / "frames" / "timit_cuts_train.jsonl.gz"
    assert frames.is_file()
    runs = {"marginal_log": []}
    for kind in ("hinge", "log", "latent_hinge"):
        runs[kind] = ["--set", f"loss.kind={kind}"]
    chain = {"frame_ce": ["--config", "conf/segmental_frame_ce.yaml"],
             "two_stage": ["--config", "conf/segmental_two_stage.yaml", "--set",
                           f"init_from={tmp_path / 'frame_ce' / 'averaged.pt'}"],
             "finetune": ["--config", "conf/segmental_finetune.yaml", "--set",
                          f"init_from={tmp_path / 'two_stage' / 'averaged.pt'}"]}
    for name, extra in {**runs, **chain}.items():
        exp = tmp_path / name
        if name != "marginal_log":
            _run([*base, "--stage", "4", "--stop-stage", "6", "--exp-dir", str(exp), *extra])
        cfg = json.loads((exp / "config.json").read_text())
        assert cfg["loss"] == "segmental" and cfg["model"] == "blstm_segmental", name
        assert cfg["token_field"] == "phones_48_frames" and cfg["train_cuts"] == str(frames)
        if name in runs:
            assert cfg["loss_kwargs"]["kind"] == name
        for split in ("dev", "test"):
            report = (exp / "decode" / f"per_best_path_{split}.txt").read_text()
            rate = re.search(r"%PER ([0-9.]+)", report)
            # (a 1-epoch model may insert many short segments: above 100%)
            assert rate is not None and 0.0 <= float(rate.group(1)) < 1000.0, name
        assert "test boundary accuracy" in (exp / "align" / "boundaries.txt").read_text()
    # the segment lattice with the lang dir's phone bigram, tuned on dev
    results = (tmp_path / "marginal_log" / "decode" / "results.txt").read_text()
    assert re.search(r"^best_path_lm +test PER", results, re.MULTILINE)
    assert re.search(r"^greedy +test PER", results, re.MULTILINE)
    log = (tmp_path / "two_stage" / "train.log").read_text()
    assert "initialised" in log  # warm start from the frame-CE model
    again = _run([*base, "--exp-dir", str(tmp_path / "marginal_log")])
    assert again.count("already done") == 7



def test_timit_recipe_attention(tmp_path):
    """--loss attention: the text teachers and their soft labels (stage 3), a tiny joint
    CTC / attention model for 1 epoch decoded by every attention method (greedy, beam, joint
    CTC beam, greedy CTC, LM fusion, LM / MLM n-best rescoring), its CTC branch's lattices
    rescored (3-gram, LSTM LM, attention decoder; stages 7-9), then the same model distilled
    from the MLM's soft labels (--distill mlm, stages 4-6) reusing stage 3."""
    timit = shared_data_dir() / "timit_nltk_sample"
    if not timit.is_dir():
        pytest.skip(f"{timit} not found: the TIMIT sample is needed for the recipe test")
    exp = tmp_path / "exp"
    tiny_text = "--epochs 1 --d-model 16 --nhead 2 --num-layers 1 --dim-feedforward 32"
    base = ["--loss", "attention", "--timit-dir", str(timit), "--data-dir",
            str(tmp_path / "data"), "--set", "num_epochs=1",
            "--set", "model.hidden=16", "--set", "model.num_layers=1", "--set",
            "model.d_model=16", "--set", "model.nhead=2", "--set",
            "model.dim_feedforward=32", "--mlm-args", tiny_text, "--tlm-args", tiny_text,
            "--att-lm-scales", "0,0.3", "--att-word-penalties", "0", "--lm-scales", "0.3",
            "--word-penalties", "0", "--nnlm-epochs", "1",
            "--lattice-args", "--output-beam 3 --max-active-states 500",
            "--rescore-args", "--nbest 10 --nnlm-scales 0,0.5 --attention-scales 0,0.5"]
    out = _run([*base, "--exp-dir", str(exp)])
    for n in range(10):
        assert f"stage {n}:" in out
    assert "pseudo-perplexity" in out and "perplexity" in out
    for teacher in ("mlm", "lm"):
        assert (tmp_path / "text_lm" / teacher / "textlm.pt").is_file()
        assert (tmp_path / "data" / "fbank" / f"timit_cuts_train.soft_{teacher}.pt").is_file()
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["loss"] == "attention" and cfg["model"] == "blstm_attention"
    for dec in ("greedy", "beam", "beam_ctc", "aux_ctc", "fusion", "rescore_lm",
                "rescore_mlm"):
        for split in ("dev", "test"):
            report = (exp / "decode" / f"per_{dec}_{split}.txt").read_text()
            rate = re.search(r"%PER ([0-9.]+)", report)
            assert rate is not None and 0.0 <= float(rate.group(1)) < 1000.0
    # stages 7-9: lattices of the CTC branch, attention-decoder rescoring among the others
    results = (exp / "rescore" / "results.txt").read_text()
    for method in ("lat1best", "attention", "oracle"):
        assert re.search(rf"^{method} +test PER", results, re.MULTILINE), results
    # lattice-rescore --mode attention at the setting stage 9 chose: the same test 1-best
    chosen = json.loads((exp / "rescore" / "settings.json").read_text())
    setting = chosen["methods"]["attention"]["setting"]
    best = tmp_path / "att_best.txt"
    lat_args = ["lattice-rescore", str(exp / "lats" / "test"), "--mode", "attention",
                "--n", "10", "--best-path", str(best), "--no-progress",
                "--lm-scale", str(setting["lm_scale"]),
                "--word-penalty", str(setting["word_penalty"]),
                "--attention-scale", str(setting["attention_scale"])]
    from wfst_asr.bin import cli

    assert cli.main(lat_args) == 2  # no --exp-dir / --cuts: one error line
    assert cli.main([*lat_args, "--exp-dir", str(exp), "--cuts",
                     str(tmp_path / "data" / "fbank" / "timit_cuts_test.jsonl.gz")]) == 0
    mine = {x.split()[0]: x.split()[1:] for x in best.read_text().splitlines()}
    stage9 = {x.split()[0]: x.split()[1:]
              for x in (exp / "rescore" / "attention" / "test.hyp").read_text().splitlines()}
    assert mine == stage9
    distilled = tmp_path / "exp_mlm"
    out = _run([*base, "--exp-dir", str(distilled), "--distill", "mlm", "--stop-stage", "6"])
    assert "already done" in out.split("stage 4:")[0]  # stage 3 is shared
    cfg = json.loads((distilled / "config.json").read_text())
    assert cfg["loss_kwargs"]["distill_weight"] == pytest.approx(0.3)
    assert cfg["loss_kwargs"]["soft_labels"].endswith("timit_cuts_train.soft_mlm.pt")
    assert (distilled / "decode" / "per_beam_test.txt").is_file()
