"""wfst_asr.data: kaldi-native-fbank features, storage, CMVN, dataset, segments."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import shared_data_dir
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.features.io import LilcomChunkyWriter, NumpyFilesWriter

from wfst_asr.data import (
    AsrDataset,
    KnfFbank,
    KnfMfcc,
    TimeFreqMask,
    compute_features,
    compute_global_cmvn,
    load_cmvn,
    make_dataloader,
    make_extractor,
    make_sampler,
    supervision_segments,
)
from wfst_asr.fsa import DenseFsaVec

SR = 16000
DURATIONS = [0.50, 0.73, 1.01, 0.64]


def _synthetic_cuts(folder, corrupt: bool = False) -> CutSet:
    """Sine / noise wavs with one supervision each (custom tokens); optionally a corrupt one."""
    rng = np.random.default_rng(0)
    recs, sups = [], []
    for i, dur in enumerate(DURATIONS):
        n = int(dur * SR)
        t = np.arange(n) / SR
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(n)
        path = folder / f"utt{i}.wav"
        sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")
        rec = Recording.from_file(path, recording_id=f"utt{i}")
        recs.append(rec)
        sups.append(SupervisionSegment(id=f"utt{i}", recording_id=f"utt{i}", start=0.0,
                                       duration=rec.duration, text=f"w{i} w{i + 1}",
                                       speaker=f"spk{i % 2}",
                                       custom={"tokens": list(range(1, i + 3))}))
    if corrupt:
        path = folder / "bad.wav"
        sf.write(path, np.zeros(SR // 2, dtype=np.float32), SR, subtype="PCM_16")
        rec = Recording.from_file(path, recording_id="bad")
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(50))  # now unreadable
        recs.append(rec)
        sups.append(SupervisionSegment(id="bad", recording_id="bad", start=0.0,
                                       duration=rec.duration, text="x"))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs),
                                 supervisions=SupervisionSet.from_segments(sups))


def _knf_direct(samples: np.ndarray, sr: int, mfcc: bool = False) -> np.ndarray:
    opts = knf.MfccOptions() if mfcc else knf.FbankOptions()
    opts.frame_opts.samp_freq = sr
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    if not mfcc:
        opts.mel_opts.num_bins = 80
    comp = knf.OnlineMfcc(opts) if mfcc else knf.OnlineFbank(opts)
    comp.accept_waveform(sr, samples.tolist())
    comp.input_finished()
    return np.stack([np.array(comp.get_frame(i)) for i in range(comp.num_frames_ready)])


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """Features of the synthetic set (lossless numpy storage), and the corrupt cut skipped."""
    folder = tmp_path_factory.mktemp("data")
    cuts = _synthetic_cuts(folder, corrupt=True)
    res = compute_features(cuts, folder / "fbank", KnfFbank(), storage_type=NumpyFilesWriter,
                           manifest_path=folder / "cuts.jsonl.gz")
    return folder, cuts, res


def test_extractor_matches_knf_directly(computed):
    _, _, res = computed
    assert len(res.cuts) == len(DURATIONS)
    for cut in res.cuts:
        samples = cut.load_audio()[0]
        ref = _knf_direct(samples, SR)
        hop = SR // 100
        assert ref.shape == ((len(samples) + hop // 2) // hop, 80)
        feats = cut.load_features()
        assert feats.shape == ref.shape == (cut.num_frames, 80)
        np.testing.assert_allclose(feats, ref, atol=1e-4, rtol=0)
    # MFCC: 13 dims, same frame count, same values
    samples = res.cuts[0].load_audio()[0]
    mfcc = KnfMfcc().extract(samples, SR)
    assert mfcc.shape == (res.cuts[0].num_frames, 13)
    np.testing.assert_allclose(mfcc, _knf_direct(samples, SR, mfcc=True), atol=1e-4, rtol=0)
    assert make_extractor("mfcc").feature_dim(SR) == 13


def test_corrupt_wav_is_skipped_and_counted(computed, caplog):
    folder, cuts, res = computed
    bad = next(c.id for c in cuts if c.recording.id == "bad")
    assert [cut_id for cut_id, _ in res.skipped] == [bad]
    assert bad not in set(res.cuts.ids)
    written = CutSet.from_file(folder / "cuts.jsonl.gz")
    assert sorted(written.ids) == sorted(res.cuts.ids)
    # the same cut through the on-the-fly dataset: skipped, reported, no crash
    ds = AsrDataset(extractor=KnfFbank())
    with caplog.at_level(logging.WARNING):
        batch = ds[cuts]
    assert batch["skipped"] == [bad]
    assert batch["features"].shape[0] == len(DURATIONS)
    assert bad in caplog.text


def test_lilcom_storage(tmp_path):
    pytest.importorskip("lilcom")
    cuts = _synthetic_cuts(tmp_path).subset(first=2)
    res = compute_features(cuts, tmp_path / "fbank", storage_type=LilcomChunkyWriter)
    assert not res.skipped
    for cut in res.cuts:
        ref = KnfFbank().extract(cut.load_audio(), SR)
        np.testing.assert_allclose(cut.load_features(), ref, atol=0.1, rtol=0.02)


def test_global_cmvn(computed):
    folder, _, res = computed
    mean, std = compute_global_cmvn(res.cuts, path=folder / "cmvn.pt")
    assert mean.shape == std.shape == (80,)
    mean2, std2 = load_cmvn(folder / "cmvn.pt")
    assert torch.equal(mean, mean2) and torch.equal(std, std2)
    allf = torch.cat([torch.from_numpy(c.load_features()) for c in res.cuts])
    normed = (allf - mean) / std
    assert normed.mean(0).abs().max() < 1e-3
    assert (normed.std(0, unbiased=False) - 1).abs().max() < 1e-3
    # and through the dataset
    batch = AsrDataset(cmvn=folder / "cmvn.pt")[res.cuts]
    valid = torch.cat([batch["features"][i, :n] for i, n in enumerate(batch["feature_lens"])])
    assert valid.mean(0).abs().max() < 1e-3
    assert (valid.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_dataset_batches_and_segments(computed):
    _, _, res = computed
    cmvn = compute_global_cmvn(res.cuts)
    ds = AsrDataset(cmvn=cmvn, spec_augment=True, return_cuts=True)
    batch = ds[res.cuts]
    feats, lens = batch["features"], batch["feature_lens"]
    expected = sorted((c.num_frames for c in res.cuts), reverse=True)
    assert lens.tolist() == expected
    assert feats.shape == (len(expected), expected[0], 80)
    for i, n in enumerate(lens.tolist()):  # padding is exactly padding_value (0)
        assert torch.all(feats[i, n:] == 0)
    sup = batch["supervisions"]
    assert sup["sequence_idx"].tolist() == list(range(len(expected)))
    assert sup["start_frame"].tolist() == [0] * len(expected)
    assert sup["num_frames"].tolist() == expected
    by_id = {c.id: c for c in res.cuts}
    for cid, toks, spk in zip(sup["cut_id"], sup["tokens"], sup["speaker"]):
        s = by_id[cid].supervisions[0]
        assert toks == s.custom["tokens"] and spk == s.speaker
    assert [c.id for c in batch["cuts"]] == sup["cut_id"]

    # the frame-rate rule comes from the model; these stand-ins write the rules out
    rules = {(1, "floor"): lambda n: n, (4, "floor"): lambda n: n // 4,
             (4, "conv"): lambda n: ((n - 1) // 2 - 1) // 2, (2, "ceil"): lambda n: (n + 1) // 2}
    for (factor, _mode), rule in rules.items():
        model = SimpleNamespace(subsampling_factor=factor, output_lengths=rule)
        segs = supervision_segments(batch, model)
        assert segs.dtype == torch.int32 and segs.shape == (len(expected), 3)
        t_out = int(rule(torch.tensor([feats.shape[1]])))
        assert segs[:, 2].tolist() == [max(int(rule(torch.tensor(n))), 0) for n in lens.tolist()]
        DenseFsaVec(torch.randn(len(expected), t_out, 5).log_softmax(-1), segs)
    assert supervision_segments(batch)[:, 2].tolist() == lens.tolist()
    segs, order = supervision_segments(batch, SimpleNamespace(
        subsampling_factor=4, output_lengths=lambda n: n // 4), sort=True)
    assert torch.all(segs[:-1, 2] >= segs[1:, 2]) and sorted(order.tolist()) == [0, 1, 2, 3]


def test_samplers_and_on_the_fly(computed):
    _, _, res = computed
    total = sum(c.duration for c in res.cuts)
    for bucketing in (True, False):
        sampler = make_sampler(res.cuts, max_duration=1.6, shuffle=True, bucketing=bucketing,
                               num_buckets=2)
        loader = make_dataloader(AsrDataset(), sampler)
        seen = []
        for batch in loader:
            assert batch["features"].shape[0] == len(batch["supervisions"]["id"])
            seen += batch["supervisions"]["cut_id"]
        assert sorted(seen) == sorted(res.cuts.ids)
        assert total > 1.6  # more than one batch was needed
    # on the fly == precomputed
    a = AsrDataset()[res.cuts]
    b = AsrDataset(extractor=KnfFbank())[res.cuts]
    assert torch.equal(a["feature_lens"], b["feature_lens"])
    torch.testing.assert_close(a["features"], b["features"], atol=1e-4, rtol=0)


def test_time_freq_mask():
    x = torch.ones(2, 50, 20)
    segs = torch.tensor([[0, 0, 50], [1, 0, 30]], dtype=torch.int32)
    y = TimeFreqMask(num_freq_masks=2, freq_mask_size=5, num_time_masks=2, time_mask_size=10,
                     p=1.0)(x, segs)
    assert y.shape == x.shape and (y == 0).any() and torch.all(x == 1)


def test_yesno_features(tmp_path):
    folder = shared_data_dir() / "yesno" / "waves_yesno"
    wavs = sorted(folder.glob("*.wav"))[:2]
    recs = RecordingSet.from_recordings(Recording.from_file(p) for p in wavs)
    cuts = CutSet.from_manifests(recordings=recs)
    res = compute_features(cuts, tmp_path / "fbank", make_extractor("fbank", num_mel_bins=23),
                           storage_type=NumpyFilesWriter)
    assert not res.skipped and len(res.cuts) == 2
    for cut in res.cuts:
        samples = cut.load_audio()[0]
        assert cut.sampling_rate == 8000
        feats = cut.load_features()
        assert feats.shape == ((len(samples) + 40) // 80, 23)
        assert np.isfinite(feats).all()
