"""TIMIT data preparation (egs/timit/local/prepare_timit.py).

* the NLTK sample (../shared/data/timit_nltk_sample; skipped with the reason printed when
  absent): manifests written, loaded back with lhotse, 160 utterances, speaker-disjoint splits,
  48-phone strings inside the 48 set, alignments inside the recordings;
* a synthetic corpus in the LDC layout (tmp_path): layout detection, SPHERE reading, SA
  exclusion, dev / core-test speakers, and bad utterances skipped and counted per reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, shared_data_dir
from lhotse import load_manifest

_LOCAL = str(REPO_ROOT / "egs" / "timit" / "local")
if _LOCAL not in sys.path:
    sys.path.insert(0, _LOCAL)

import prepare_timit as pt
from timit_lexicon import MAP_61_TO_48, PHONES_39, PHONES_48, PHONES_61

KINDS = ("recordings", "supervisions", "cuts")


# ----------------------------------------------------------------------------- NLTK sample


@pytest.fixture(name="nltk_prep", scope="module")
def nltk_prep_fixture(tmp_path_factory):
    timit = shared_data_dir() / "timit_nltk_sample"
    if not timit.is_dir():
        reason = f"TIMIT sample not found in {timit}"
        print(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("manifests")
    result = pt.prepare_timit(timit, out, progress=False)
    print(result.summary())
    loaded = {split: {kind: load_manifest(out / f"timit_{kind}_{split}.jsonl.gz")
                      for kind in KINDS} for split in pt.SPLITS}
    return result, loaded, out


def test_phone_map_file() -> None:
    assert len(PHONES_61) == 61 and len(PHONES_48) == 48 and len(PHONES_39) == 39
    assert MAP_61_TO_48["q"] is None and MAP_61_TO_48["h#"] == "sil"


def test_nltk_sample(nltk_prep) -> None:
    result, loaded, out = nltk_prep
    assert result.layout == "nltk"
    assert not result.skipped and result.excluded_sa == 0 and result.unassigned == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"timit_{k}_{s}.jsonl.gz" for k in KINDS for s in pt.SPLITS)  # no temporary files left
    sizes = {s: len(loaded[s]["supervisions"]) for s in pt.SPLITS}
    assert sizes == {"train": 120, "dev": 20, "test": 20}
    assert sum(sizes.values()) == 160
    speakers = {s: {sup.speaker for sup in loaded[s]["supervisions"]} for s in pt.SPLITS}
    assert speakers["dev"] == set(pt.NLTK_SPLIT["dev"])
    assert speakers["test"] == set(pt.NLTK_SPLIT["test"])
    assert len(speakers["train"]) == 12
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"]
                or speakers["dev"] & speakers["test"])
    for s in ("dev", "test"):
        assert sorted(sup.gender for sup in loaded[s]["supervisions"]) == ["F"] * 10 + ["M"] * 10
    ok48 = set(PHONES_48)
    for split in pt.SPLITS:
        recs, sups, cuts = (loaded[split][k] for k in KINDS)
        assert len(recs) == len(sups) == len(cuts)
        for sup in sups:
            rec = recs[sup.recording_id]
            assert sup.start == 0 and sup.duration == pytest.approx(rec.duration, abs=1e-9)
            assert rec.sampling_rate == 16000
            phones61 = sup.custom["phones_61"].split()
            phones48 = sup.custom["phones_48"].split()
            assert set(phones48) <= ok48
            assert phones48 == [MAP_61_TO_48[p] for p in phones61 if p != "q"]
            assert set(sup.custom["phones_39"].split()) <= set(PHONES_39)
            ali = sup.alignment["phone"]
            assert [a.symbol for a in ali] == phones61
            assert [a.symbol for a in sup.alignment["word"]] == sup.text.split()
            for a in ali + sup.alignment["word"]:
                assert a.start >= 0 and a.duration >= 0
                assert a.start + a.duration <= rec.duration + 1e-6
        for cut in cuts:
            assert len(cut.supervisions) == 1
            assert cut.duration == pytest.approx(cut.supervisions[0].duration, abs=1e-9)
    sup = loaded["train"]["supervisions"]["fvmh0_sa1"]
    assert sup.text.startswith("she had your dark suit")
    assert sup.custom["orthography"].startswith("She had your dark suit")
    assert sup.custom["dialect"] == "dr1" and sup.gender == "F"


# ----------------------------------------------------------------------------- synthetic LDC


def _sphere(path: Path, samples: np.ndarray, big_endian: bool = False,
            count: int | None = None) -> None:
    fields = [
        "database_id -s5 TIMIT", "database_version -s3 1.0", "channel_count -i 1",
        f"sample_count -i {len(samples) if count is None else count}", "sample_rate -i 16000",
        "sample_n_bytes -i 2", f"sample_byte_format -s2 {'10' if big_endian else '01'}",
        "sample_sig_bits -i 16", "end_head",
    ]
    head = ("NIST_1A\n   1024\n" + "\n".join(fields) + "\n").encode("ascii")
    data = samples.astype(">i2" if big_endian else "<i2").tobytes()
    path.write_bytes(head + b" " * (1024 - len(head)) + data)


def _utt(folder: Path, name: str, n: int, phn: str, wrd: str, txt: str,
         audio: str | None = "ok", ext_case=str.upper, seed: int = 0) -> np.ndarray:
    """Write one utterance (``n`` samples of noise); returns the samples."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).integers(-3000, 3000, n).astype(np.int16)

    def f(ext: str) -> Path:
        return folder / ext_case(f"{name}.{ext}")

    if audio == "ok":
        _sphere(f("wav"), x)
    elif audio == "big":
        _sphere(f("wav"), x, big_endian=True)
    elif audio == "truncated":
        _sphere(f("wav"), x, count=n + 500)
    f("phn").write_text(phn)
    f("wrd").write_text(wrd)
    f("txt").write_text(txt)
    return x


GOOD_PHN = "0 800 h#\n800 1600 sh\n1600 2400 iy\n2400 2800 q\n2800 3200 h#\n"
GOOD_WRD = "800 2400 she\n"
GOOD_TXT = "0 3200 She.\n"


@pytest.fixture(name="ldc")
def ldc_fixture(tmp_path: Path):
    """A tiny LDC-layout corpus below tmp_path/TIMIT; returns (folder, {utt_id: samples})."""
    root = tmp_path / "TIMIT"
    train = root / "TRAIN" / "DR1" / "FCJF0"
    samples = {
        "fcjf0_si1027": _utt(train, "si1027", 3200, GOOD_PHN, GOOD_WRD, GOOD_TXT, seed=1),
        "fcjf0_sa1": _utt(train, "sa1", 3200, GOOD_PHN, GOOD_WRD, GOOD_TXT, seed=2),
    }
    # bad utterances, one per reason
    _utt(train, "sx127", 3000, GOOD_PHN, GOOD_WRD, GOOD_TXT)  # .phn ends at 3200 > 3000
    _utt(train, "sx217", 3200, GOOD_PHN.replace(" sh", " xx"), GOOD_WRD, GOOD_TXT)
    _utt(train, "sx307", 3200, "", GOOD_WRD, GOOD_TXT)  # empty .phn
    _utt(train, "sx37", 3200, GOOD_PHN, GOOD_WRD, GOOD_TXT, audio=None)  # no audio
    _utt(train, "sx397", 3200, GOOD_PHN, GOOD_WRD, GOOD_TXT, audio="truncated")
    (train / "SX47.WAV").write_bytes(b"RIFF not really a wav file")
    for ext in ("PHN", "WRD", "TXT"):
        (train / f"SX47.{ext}").write_text({"PHN": GOOD_PHN, "WRD": GOOD_WRD,
                                            "TXT": GOOD_TXT}[ext])
    # test part in lower case: a dev speaker, a core-test speaker (big-endian SPHERE), a speaker
    # of the complete test set that is in no split
    dev = root / "test" / "dr1" / "faks0"
    samples["faks0_si1573"] = _utt(dev, "si1573", 4000, GOOD_PHN, GOOD_WRD, GOOD_TXT,
                                   ext_case=str.lower, seed=3)
    _utt(dev, "sa2", 3200, GOOD_PHN, GOOD_WRD, GOOD_TXT, ext_case=str.lower)
    core = root / "test" / "dr1" / "mdab0"
    samples["mdab0_si1446"] = _utt(core, "si1446", 3300, GOOD_PHN, GOOD_WRD, GOOD_TXT,
                                   audio="big", ext_case=str.lower, seed=4)
    _utt(root / "test" / "dr1" / "mxyz0", "si1", 3200, GOOD_PHN, GOOD_WRD, GOOD_TXT,
         ext_case=str.lower)
    return root, samples


EXPECTED_SKIPS = {
    "fcjf0_sx127": "times_past_audio",
    "fcjf0_sx217": "unknown_phone",
    "fcjf0_sx307": "empty_transcript",
    "fcjf0_sx37": "audio",
    "fcjf0_sx397": "truncated_audio",
    "fcjf0_sx47": "audio",
}


def test_ldc_layout_and_sphere(ldc) -> None:
    root, samples = ldc
    assert pt.detect_layout(root.parent) == ("ldc", root)
    assert pt.detect_layout(root) == ("ldc", root)
    x, sr = pt.read_sphere(root / "TRAIN" / "DR1" / "FCJF0" / "SI1027.WAV")
    assert sr == 16000 and x.shape == (1, 3200) and np.array_equal(x[0], samples["fcjf0_si1027"])
    x, _ = pt.read_sphere(root / "test" / "dr1" / "mdab0" / "si1446.wav")  # big-endian
    assert np.array_equal(x[0], samples["mdab0_si1446"])
    with pytest.raises(ValueError, match="truncated"):
        pt.sphere_header(root / "TRAIN" / "DR1" / "FCJF0" / "SX397.WAV")
    with pytest.raises(ValueError, match="not a NIST"):
        pt.sphere_header(root / "TRAIN" / "DR1" / "FCJF0" / "SX47.WAV")


def test_truncated_riff_wav_is_truncated_audio(tmp_path: Path) -> None:
    """A RIFF wav cut to half with its header intact: skipped as truncated audio (not as
    label times past the audio, which is what the short audio would otherwise look like)."""
    import soundfile as sf

    wav = tmp_path / "SA1.WAV"
    sf.write(wav, np.zeros(3200, dtype=np.int16), 16000, subtype="PCM_16")
    data = wav.read_bytes()
    wav.write_bytes(data[: 44 + 3200])  # the header (44 bytes) and half the samples
    u = pt.Utterance("fxyz0", "sa1", "dr1", "train", {".wav": wav})
    with pytest.raises(pt.SkipUtterance) as got:
        pt._recording(u)
    assert got.value.reason == "truncated_audio", got.value
    assert "SA1.WAV" in str(got.value) and "3200" in str(got.value) and "1600" in str(got.value)


def test_ldc_prepare(ldc, tmp_path: Path, capsys) -> None:
    root, samples = ldc
    out = tmp_path / "manifests"
    assert pt.main(["--timit-dir", str(tmp_path), "--out-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for line in ("times_past_audio: 1", "unknown_phone: 1", "empty_transcript: 1", "audio: 2",
                 "truncated_audio: 1", "SA utterances excluded: 2; utterances in no split: 1"):
        assert line in printed, printed
    result = pt.prepare_timit(tmp_path, progress=False)
    assert result.layout == "ldc" and result.root == root
    assert {u: r for u, r, _ in result.skipped} == EXPECTED_SKIPS
    assert result.excluded_sa == 2 and result.unassigned == 1
    expected = {"train": ["fcjf0_si1027"], "dev": ["faks0_si1573"], "test": ["mdab0_si1446"]}
    for split, ids in expected.items():
        recs = load_manifest(out / f"timit_recordings_{split}.jsonl.gz")
        sups = load_manifest(out / f"timit_supervisions_{split}.jsonl.gz")
        cuts = load_manifest(out / f"timit_cuts_{split}.jsonl.gz")
        assert sorted(recs.ids) == ids and sorted(cuts.ids) == ids
        for rec in recs:
            audio = rec.load_audio()  # lhotse reads the SPHERE file itself
            assert np.array_equal(np.round(audio[0] * 32768).astype(np.int16), samples[rec.id])
        sup = sups[ids[0]]
        assert sup.custom["phones_61"] == "h# sh iy q h#"
        assert sup.custom["phones_48"] == "sil sh iy sil"
        assert sup.custom["corpus_part"] == ("train" if split == "train" else "test")
        assert sup.text == "she" and sup.custom["orthography"] == "She."
        assert sup.alignment["phone"][1].start == pytest.approx(0.05)
        assert sup.alignment["phone"][1].duration == pytest.approx(0.05)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_speaker_split_balanced() -> None:
    spk = {f"{g}sp{i}0": (g.upper(), f"dr{i}") for g in "fm" for i in range(1, 9)}
    split = pt.speaker_split(spk)
    held = {s: [k for k, v in split.items() if v == s] for s in ("dev", "test")}
    assert all(sorted(x[0] for x in v) == ["f", "m"] for v in held.values())
    regions = [spk[k][1] for v in held.values() for k in v]
    assert len(set(regions)) == 4
    assert split == pt.speaker_split(dict(reversed(spk.items())))  # order-independent
