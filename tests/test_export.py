"""``wfst-asr export`` / ``wfst-asr transcribe`` (wfst_asr.train.export) on real yesno audio.

A tiny TDNN-LSTM CTC model (subsampling 3) is trained for a few seconds on 23-dim fbank of 16
yesno recordings (features stored losslessly, CMVN, tokens N OW Y EH S, a lang dir with the
words YES / NO, a word bigram and its HLG), then exported; two of its training recordings are
transcribed (the model is too small to generalise, and only agreement is tested). Checked against references that do
not go through the export:

* the exported network's log-probs are the checkpoint's model's
  (:func:`~wfst_asr.train.inference.load_model`) on the stored features;
* ``transcribe`` of a wav gives the words of the library's decoding of that utterance's
  precomputed features (:func:`~wfst_asr.train.inference.run_model`, then ``greedy_ctc``
  without a graph and ``one_best`` in the HLG with one);
* its CTM lines are sorted, inside the file, on the output-frame grid, and their words are
  the plain output's;
* a 16 kHz FLAC copy is resampled (one warning) and transcribed as the 8 kHz original;
* bad files (not audio, missing) are one error line each naming the file, exit code 2, and
  the other files are still transcribed; an export without a checkpoint leaves nothing.

Skipped (reason printed) without ../shared/data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import shared_data_dir
from test_train import _one_thread  # noqa: F401 -- its autouse fixture: one intra-op thread

from wfst_asr.bin.cli import main

PHONES = ["N", "OW", "Y", "EH", "S"]
LEXICON = {"NO": ["N", "OW"], "YES": ["Y", "EH", "S"]}


def _cuts(waves: list[Path], out: Path):
    from lhotse import CutSet, Recording, SupervisionSegment

    cuts = []
    for w in waves:
        rec = Recording.from_file(w)
        words = ["YES" if b == "1" else "NO" for b in w.stem.split("_")]
        sup = SupervisionSegment(rec.id, rec.id, 0.0, rec.duration, text=" ".join(words),
                                 custom={"phones": " ".join(p for x in words
                                                            for p in LEXICON[x])})
        cut = rec.to_cut()
        cut.supervisions = [sup]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(out)
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """Features, lang dir + HLG, a trained experiment directory, its export."""
    from lhotse import CutSet
    from lhotse.features.io import NumpyFilesWriter

    from wfst_asr.data import compute_features, compute_global_cmvn, make_extractor
    from wfst_asr.graphs import lang, lm
    from wfst_asr.graphs.compile import compile_graph
    from wfst_asr.graphs.ngram import estimate_ngram
    from wfst_asr.train import ExperimentConfig, Trainer, build_model_and_loss, make_loader
    from wfst_asr.train.trainer import seed_everything

    waves = sorted((shared_data_dir() / "yesno" / "waves_yesno").glob("*.wav"))
    if len(waves) < 10:
        pytest.skip("the yesno corpus (../shared/data/yesno/waves_yesno) is needed")
    root = tmp_path_factory.mktemp("export")
    fbank = root / "fbank"
    ex = make_extractor("fbank", num_mel_bins=23)
    paths = {}
    for name, ws in (("train", waves[:16]), ("test", waves[2:4])):
        raw = _cuts(ws, root / f"raw_{name}.jsonl.gz")
        paths[name] = fbank / f"cuts_{name}.jsonl.gz"
        res = compute_features(CutSet.from_file(raw), fbank, ex, storage_type=NumpyFilesWriter,
                               manifest_path=paths[name], storage_name=f"feats_{name}")
        if name == "train":
            compute_global_cmvn(res.cuts, fbank / "cmvn.pt")
    ld = root / "lang"
    ld.mkdir()
    (ld / "lexicon.txt").write_text("".join(f"{w} {' '.join(p)}\n" for w, p in LEXICON.items()))
    lang.prepare_lang(ld, ld / "lexicon.txt", tokens=PHONES, sil_prob=0.0)
    sents = [c.supervisions[0].text.split() for c in CutSet.from_file(paths["train"])]
    estimate_ngram(sents, 2, vocab=sorted(LEXICON)).write_arpa(ld / "lm.arpa")
    lm.arpa_to_fst(ld / "lm.arpa", ld / "words.txt", out_path=ld / "G.fst")
    compile_graph(ld, kind="HLG")
    exp = root / "exp"
    cfg = ExperimentConfig(
        train_cuts=str(paths["train"]), dev_cuts=str(paths["test"]),
        tokens=str(ld / "tokens.txt"), lang_dir=str(ld), token_field="phones",
        cmvn=str(fbank / "cmvn.pt"), model="tdnn_lstm", subsampling=3,
        model_kwargs={"tdnn_dim": 24, "dilations": [1, 2], "lstm_hidden": 16,
                      "lstm_layers": 1, "dropout": 0.0},
        max_duration=7.0, bucketing=False, lr=1e-2, num_epochs=40, average_last=1,
        tensorboard=False, exp_dir=str(exp), seed=3)
    seed_everything(cfg.seed)
    model, loss, table = build_model_and_loss(cfg)
    Trainer(cfg, model, loss, make_loader(cfg, cfg.train_cuts, True),
            make_loader(cfg, cfg.dev_cuts, False), "cpu", token_table=table).fit()
    out = root / "model"
    assert main(["-q", "export", "--exp-dir", str(exp), "--out", str(out), "--lang-dir",
                 str(ld), "--graph", str(ld / "HLG.pt")]) == 0
    return {"root": root, "exp": exp, "lang": ld, "out": out, "test": paths["test"],
            "waves": {w.stem: w for w in waves[2:4]}}


def _transcribe(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    rc = main(["-q", "transcribe", *argv])
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err.splitlines()


def _library(task) -> dict[str, tuple[list[str], list[str]]]:
    """Per test utterance: (greedy CTC tokens, HLG one_best words) of the checkpoint's model
    over the precomputed features (the decode job's path, not the export's)."""
    from wfst_asr.decode import greedy_ctc, one_best
    from wfst_asr.fsa import SymbolTable, load
    from wfst_asr.train.inference import load_model, run_model

    model, cfg, _ = load_model(task["exp"], "cpu")
    words = SymbolTable.from_file(task["lang"] / "words.txt")
    hlg = load(task["lang"] / "HLG.pt")
    out = {}
    for b in run_model(model, task["test"], cfg, "cpu", max_duration=1000.0):
        greedy = greedy_ctc(b.log_probs, b.lens)
        best = one_best(hlg, b.log_probs, b.lens)
        for i, u in enumerate(b.ids):
            out[u] = ([PHONES[t - 1] for t in greedy[i]], [str(words.get(w)) for w in best[i]])
    return out


def test_manifest_and_files(task):
    m = json.loads((task["out"] / "export.json").read_text())
    assert m["export"] == "trace" and m["model"] == "tdnn_lstm" and m["subsampling_factor"] == 3
    assert m["features"]["type"] == "knf-fbank" and m["sampling_rate"] == 8000
    assert m["features"]["config"]["num_mel_bins"] == 23 and "checked on cut" in m["features_from"]
    for f in ("model.pt", "config.json", "cmvn.pt", "tokens.txt", "lang/words.txt",
              "lang/lexicon.txt", "graph.pt"):
        assert (task["out"] / f).is_file(), f
    assert not [p for p in task["root"].iterdir() if p.name.startswith(".model")]


def test_exported_log_probs_match_checkpoint(task):
    from lhotse import CutSet

    from wfst_asr.data import apply_cmvn, load_cmvn
    from wfst_asr.train.export import load_exported
    from wfst_asr.train.inference import load_model

    model, _, _ = load_model(task["exp"], "cpu")
    exported = load_exported(task["out"])
    mean, std = load_cmvn(task["exp"].parent / "fbank" / "cmvn.pt")
    cuts = list(CutSet.from_file(task["test"]))
    feats = [torch.from_numpy(c.load_features()) for c in cuts]
    x = torch.nn.utils.rnn.pad_sequence([apply_cmvn(f, mean, std) for f in feats], True)
    lens = torch.tensor([f.shape[0] for f in feats])
    with torch.no_grad():
        want, want_lens = model(x, lens)
        got, got_lens = exported.model(x, lens)
    torch.testing.assert_close(got_lens, want_lens)
    torch.testing.assert_close(got, want)
    for c, f, lp, n in zip(cuts, feats, want, want_lens):
        audio = exported.read_audio(task["waves"][c.id])
        torch.testing.assert_close(exported.features(audio), f)  # the stored features
        torch.testing.assert_close(exported.log_probs(f), lp[:int(n)])


def test_transcribe_matches_library_decoding(task, capsys):
    ref = _library(task)
    files = [str(task["waves"][u]) for u in sorted(ref)]
    rc, graph_out, err = _transcribe(capsys, "--model", str(task["out"]), *files)
    assert rc == 0 and err == []
    assert graph_out == [f"{f}\t{' '.join(ref[Path(f).stem][1])}" for f in files]
    assert any(ref[u][1] for u in ref), "the tiny model should output some words"
    greedy_dir = task["root"] / "model_greedy"
    assert main(["-q", "export", "--exp-dir", str(task["exp"]), "--out", str(greedy_dir)]) == 0
    capsys.readouterr()
    rc, greedy_out, err = _transcribe(capsys, "--model", str(greedy_dir), *files)
    assert rc == 0 and err == []
    assert greedy_out == [f"{f}\t{' '.join(ref[Path(f).stem][0])}" for f in files]
    # --graph on the greedy export gives the graph's words again
    rc, again, _ = _transcribe(capsys, "--model", str(greedy_dir), "--graph",
                               str(task["lang"] / "HLG.pt"), *files)
    assert rc == 0 and again == graph_out


@pytest.mark.parametrize("graph", [True, False])
def test_ctm_consistent(task, capsys, graph):
    model = task["out"] if graph else task["root"] / "model_ctm_greedy"
    if not graph and not model.exists():
        assert main(["-q", "export", "--exp-dir", str(task["exp"]), "--out", str(model)]) == 0
        capsys.readouterr()
    for f in task["waves"].values():
        rc, plain, _ = _transcribe(capsys, "--model", str(model), str(f))
        rc2, ctm, err = _transcribe(capsys, "--model", str(model), "--ctm", str(f))
        assert rc == rc2 == 0 and err == []
        duration = sf.info(str(f)).duration
        step = 0.03  # 10 ms frames x subsampling 3
        fields = [ln.split() for ln in ctm]
        assert all(x[:2] == [str(f), "1"] and len(x) == 5 for x in fields)
        starts = [float(x[2]) for x in fields]
        ends = [float(x[2]) + float(x[3]) for x in fields]
        assert starts == sorted(starts) and all(float(x[3]) > 0 for x in fields)
        assert all(e <= s2 + 1e-6 for e, s2 in zip(ends, starts[1:]))  # no overlap
        # inside the file, but for the last output frame, which may pass its end
        assert all(e <= duration + step for e in ends)
        assert all(abs(s / step - round(s / step)) < 1e-4 for s in starts)  # on the grid
        assert [x[4] for x in fields] == plain[0].split("\t")[1].split()


def test_resampled_flac(task, capsys, tmp_path):
    from lhotse.augmentation.resample import Resample

    wav = next(iter(task["waves"].values()))
    samples, rate = sf.read(str(wav), dtype="float32")
    up = Resample(rate, 16000)(torch.from_numpy(samples)[None])[0].numpy()
    flac = tmp_path / "up16k.flac"
    sf.write(str(flac), np.clip(up, -1, 1), 16000)
    rc, out, err = _transcribe(capsys, "--model", str(task["out"]), str(wav), str(flac))
    assert rc == 0
    assert len(err) == 1 and str(flac) in err[0] and "16000 Hz" in err[0] and "8000" in err[0]
    assert err[0].startswith("wfst-asr transcribe: warning:")
    assert out[1].split("\t")[1] == out[0].split("\t")[1] and out[0].split("\t")[1]


def test_bad_files(task, capsys, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n")
    missing = tmp_path / "missing.flac"
    good = str(next(iter(task["waves"].values())))
    rc, out, err = _transcribe(capsys, "--model", str(task["out"]), str(text), good,
                               str(missing))
    assert rc == 2
    assert len(out) == 1 and out[0].startswith(good + "\t")
    assert len(err) == 2
    assert err[0].startswith(f"wfst-asr transcribe: error: {text}")
    assert err[1].startswith(f"wfst-asr transcribe: error: {missing}")
    rc, out, err = _transcribe(capsys, "--model", str(tmp_path), good)
    assert rc == 2 and out == [] and len(err) == 1 and "export.json" in err[0]


def test_export_errors_leave_nothing(task, capsys, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(task["exp"] / "config.json", exp)
    out = tmp_path / "out"
    assert main(["-q", "export", "--exp-dir", str(exp), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(exp) in err[0] and "checkpoint" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    # an existing OUT is kept unless --force
    assert main(["-q", "export", "--exp-dir", str(task["exp"]), "--out", str(exp)]) == 2
    assert "exists" in capsys.readouterr().err and (exp / "config.json").is_file()
    # a graph of other tokens: refused before anything is written
    bad = tmp_path / "bad_graph.pt"
    bad.write_bytes(b"not a graph")
    assert main(["-q", "export", "--exp-dir", str(task["exp"]), "--out", str(out), "--graph",
                 str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_graph.pt", "exp"]


def test_checkpoint_option_and_feature_check(task, capsys, tmp_path):
    from lhotse import CutSet

    from wfst_asr.train.export import load_exported
    from wfst_asr.train.inference import load_model

    # --checkpoint: the weights of that checkpoint, as load_model reads them from an exp dir
    ref_exp = tmp_path / "ref_exp"
    ref_exp.mkdir()
    shutil.copy(task["exp"] / "config.json", ref_exp)
    shutil.copy(task["exp"] / "epoch-1.pt", ref_exp / "averaged.pt")
    out = tmp_path / "epoch1"
    assert main(["-q", "export", "--exp-dir", str(task["exp"]), "--out", str(out),
                 "--checkpoint", str(task["exp"] / "epoch-1.pt")]) == 0
    model, _, _ = load_model(ref_exp, "cpu")
    x, lens = torch.randn(1, 150, 23), torch.tensor([150])
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out).model(x, lens)[0], model(x, lens)[0])
    # training features whose audio no longer gives them: refused, naming the manifest
    cfg = json.loads((task["exp"] / "config.json").read_text())
    cuts = list(CutSet.from_file(cfg["train_cuts"]))
    other = cuts[1].recording.sources[0].source
    cuts[0].recording.sources[0].source = other
    cfg["train_cuts"] = str(tmp_path / "moved.jsonl.gz")
    CutSet.from_cuts(cuts).to_file(cfg["train_cuts"])
    (ref_exp / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["-q", "export", "--exp-dir", str(ref_exp), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "moved.jsonl.gz" in err[0] and "differ" in err[0]
    assert not (tmp_path / "x").exists()
