"""Feature extraction with kaldi-native-fbank, lhotse feature storage and global CMVN.

lhotse 1.33 ships no extractor backed by kaldi-native-fbank (its ``Fbank``/``Mfcc`` are
torch re-implementations and ``KaldifeatFbank`` needs the separate ``kaldifeat`` package), so
:class:`KnfFbank` and :class:`KnfMfcc` here wrap ``kaldi_native_fbank.OnlineFbank`` /
``OnlineMfcc`` as lhotse :class:`~lhotse.features.base.FeatureExtractor` s. They are registered
with lhotse (names ``knf-fbank`` / ``knf-mfcc``), so feature manifests and
``FeatureExtractor.from_dict`` know them.

Conventions:

- Samples are lhotse's float32 in ``[-1, 1]``, multiplied by ``waveform_scale`` (1.0 by
  default; 32768.0 gives numbers equal to Kaldi's ``compute-fbank-feats`` on int16 audio).
- ``snip_edges=False`` (as in lhotse), so ``num_frames = (num_samples + hop // 2) // hop``,
  the count ``lhotse.utils.compute_num_frames`` expects for a manifest to validate.
- ``dither=0.0`` by default: features are deterministic.

:func:`compute_features` writes the archives with a lhotse ``FeaturesWriter``
(``LilcomChunkyWriter`` when ``lilcom`` is installed, else ``NumpyFilesWriter``) and returns
the cuts with features attached; a cut whose audio cannot be read or featurised is skipped and
reported (never a crash), the reason first (:meth:`FeatureResult.reasons` counts them). Audio
shorter than it should be (a WAV file whose data chunk is shorter than its header declares, or
a file with fewer samples than the recording's manifest) is skipped as truncated audio
(:class:`TruncatedAudioError`, :func:`check_audio_length`): lhotse would pad or cut it
silently. Archives are referenced only by the manifest, which
:func:`compute_features` writes atomically at the end when ``manifest_path`` is given, so a
crash leaves no manifest pointing at half-written data.

:func:`compute_global_cmvn` accumulates per-dimension mean and standard deviation over all
frames of a cut set; :func:`save_cmvn` / :func:`load_cmvn` keep them in a small ``.pt`` file.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import struct
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import kaldi_native_fbank as knf
import numpy as np
import torch
from lhotse import CutSet
from lhotse.features.base import FeatureExtractor, register_extractor
from lhotse.features.io import FeaturesWriter, LilcomChunkyWriter, NumpyFilesWriter

from wfst_asr.atomic import atomic_output
from wfst_asr.progress import progress as progress_bar

__all__ = [
    "MIN_MEL_HALF_WIDTH",
    "FeatureResult",
    "KnfFbank",
    "KnfFbankConfig",
    "KnfMfcc",
    "KnfMfccConfig",
    "MelBinsCheck",
    "TruncatedAudioError",
    "apply_cmvn",
    "check_audio_length",
    "check_mel_bins",
    "compute_features",
    "compute_global_cmvn",
    "default_writer",
    "load_cmvn",
    "make_extractor",
    "save_cmvn",
    "wav_truncation",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- extractors


@dataclass
class _FrameConfig:
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    preemph_coeff: float = 0.97
    remove_dc_offset: bool = True
    window_type: str = "povey"
    round_to_power_of_two: bool = True
    snip_edges: bool = False
    # mel banks (Kaldi semantics: high_freq <= 0 is an offset from Nyquist)
    low_freq: float = 20.0
    high_freq: float = 0.0
    waveform_scale: float = 1.0
    # energy (used by both; use_energy itself differs per extractor)
    energy_floor: float = 0.0
    raw_energy: bool = True


@dataclass
class KnfFbankConfig(_FrameConfig):
    """Options of :class:`KnfFbank` (kaldi-native-fbank's ``FbankOptions``, flattened)."""

    num_mel_bins: int = 80
    use_energy: bool = False
    use_log_fbank: bool = True
    use_power: bool = True


@dataclass
class KnfMfccConfig(_FrameConfig):
    """Options of :class:`KnfMfcc` (kaldi-native-fbank's ``MfccOptions``, flattened)."""

    num_ceps: int = 13
    num_mel_bins: int = 23
    use_energy: bool = True
    cepstral_lifter: float = 22.0


def _set_frame_opts(opts, cfg: _FrameConfig, sampling_rate: int) -> None:
    """Frame, mel and energy options shared by the fbank and MFCC extractors."""
    opts.use_energy = cfg.use_energy
    opts.energy_floor = cfg.energy_floor
    opts.raw_energy = cfg.raw_energy
    f = opts.frame_opts
    f.samp_freq = float(sampling_rate)
    f.frame_length_ms = cfg.frame_length_ms
    f.frame_shift_ms = cfg.frame_shift_ms
    f.dither = cfg.dither
    f.preemph_coeff = cfg.preemph_coeff
    f.remove_dc_offset = cfg.remove_dc_offset
    f.window_type = cfg.window_type
    f.round_to_power_of_two = cfg.round_to_power_of_two
    f.snip_edges = cfg.snip_edges
    m = opts.mel_opts
    m.num_bins = cfg.num_mel_bins
    m.low_freq = cfg.low_freq
    m.high_freq = cfg.high_freq


def _mono(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.numpy()
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        if samples.shape[0] != 1:
            raise ValueError(f"expected mono audio, got {samples.shape[0]} channels")
        samples = samples[0]
    if samples.ndim != 1:
        raise ValueError(f"expected samples [N] or [1, N], got {samples.shape}")
    return samples


def _run_online(computer, samples: np.ndarray, sampling_rate: int, dim: int) -> np.ndarray:
    computer.accept_waveform(float(sampling_rate), samples)
    computer.input_finished()
    n = computer.num_frames_ready
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(n):
        out[i] = computer.get_frame(i)
    return out


class _KnfExtractor(FeatureExtractor):
    """Common part of the kaldi-native-fbank extractors (``_options`` and ``_online`` differ)."""

    @property
    def frame_shift(self) -> float:
        return self.config.frame_shift_ms / 1000.0

    def _options(self, sampling_rate: int):
        raise NotImplementedError

    def _online(self, opts):
        raise NotImplementedError

    def extract(self, samples: np.ndarray | torch.Tensor, sampling_rate: int) -> np.ndarray:
        """Features ``[num_frames, feature_dim]`` (float32) of mono ``samples`` (``[N]``/``[1, N]``)."""
        x = _mono(samples)
        if self.config.waveform_scale != 1.0:
            x = x * np.float32(self.config.waveform_scale)
        return _run_online(self._online(self._options(sampling_rate)), x, sampling_rate,
                           self.feature_dim(sampling_rate))


@register_extractor
class KnfFbank(_KnfExtractor):
    """Log-mel filter-bank features (80 bins by default) from kaldi-native-fbank."""

    name = "knf-fbank"
    config_type = KnfFbankConfig

    def feature_dim(self, sampling_rate: int) -> int:
        return self.config.num_mel_bins + int(self.config.use_energy)

    def _options(self, sampling_rate: int):
        cfg = self.config
        opts = knf.FbankOptions()
        _set_frame_opts(opts, cfg, sampling_rate)
        opts.use_log_fbank = cfg.use_log_fbank
        opts.use_power = cfg.use_power
        return opts

    def _online(self, opts):
        return knf.OnlineFbank(opts)


@register_extractor
class KnfMfcc(_KnfExtractor):
    """MFCC features (13 cepstra by default, c0 replaced by log energy as in Kaldi)."""

    name = "knf-mfcc"
    config_type = KnfMfccConfig

    def feature_dim(self, sampling_rate: int) -> int:
        return self.config.num_ceps

    def _options(self, sampling_rate: int):
        cfg = self.config
        opts = knf.MfccOptions()
        _set_frame_opts(opts, cfg, sampling_rate)
        opts.num_ceps = cfg.num_ceps
        opts.cepstral_lifter = cfg.cepstral_lifter
        return opts

    def _online(self, opts):
        return knf.OnlineMfcc(opts)


def make_extractor(kind: str = "fbank", **options) -> _KnfExtractor:
    """``make_extractor("fbank", num_mel_bins=80)`` or ``make_extractor("mfcc", num_ceps=13)``."""
    if kind == "fbank":
        return KnfFbank(KnfFbankConfig(**options))
    if kind == "mfcc":
        return KnfMfcc(KnfMfccConfig(**options))
    raise ValueError(f"unknown feature kind {kind!r} (expected 'fbank' or 'mfcc')")


# --------------------------------------------------------------------------- mel-bin check

#: The smallest sensible width of the narrowest (lowest) mel filter, from its left edge to its
#: centre, in FFT bins. kaldi-native-fbank itself refuses a configuration only when some filter
#: holds no FFT bin at all ("You may have set num_mel_bins too large"), which happens near 0.45;
#: below about 0.6 the lowest filters each catch a single FFT bin, mostly near their edges, and
#: repeat their neighbours. With a 25 ms window, 80 bins give 0.72 at 16 kHz (fine) but 0.54 at
#: 8 kHz, where 71 is the most that meets 0.6.
MIN_MEL_HALF_WIDTH = 0.6


def _mel(freq):
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def _inverse_mel(mel):
    return 700.0 * np.expm1(np.asarray(mel, dtype=np.float64) / 1127.0)


class MelBinsCheck(NamedTuple):
    """What :func:`check_mel_bins` finds about ``num_mel_bins`` at one sampling rate."""

    num_bins: int
    sampling_rate: int
    half_width: float
    """Width (left edge to centre) of the narrowest mel filter, in FFT bins."""
    fft_bin_hz: float
    """Spacing of the FFT bins (sampling rate / padded window length)."""
    max_bins: int
    """The most mel bins whose narrowest filter is :data:`MIN_MEL_HALF_WIDTH` FFT bins wide."""
    rejected: bool
    """kaldi-native-fbank refuses the configuration (a filter holds no FFT bin)."""

    @property
    def ok(self) -> bool:
        return not self.rejected and self.half_width >= MIN_MEL_HALF_WIDTH

    def message(self) -> str:
        """One line saying what is wrong and which value would work ("" when :attr:`ok`)."""
        if self.ok:
            return ""
        why = ("kaldi-native-fbank rejects them (a mel filter holds no FFT bin)" if self.rejected
               else "they duplicate their neighbours")
        return (f"{self.num_bins} mel bins are too many at {self.sampling_rate} Hz: the lowest "
                f"filters are {self.half_width:.2f} FFT bins wide (FFT bins of "
                f"{self.fft_bin_hz:.1f} Hz), below the sensible minimum of "
                f"{MIN_MEL_HALF_WIDTH}, and {why}; use --num-mel-bins {self.max_bins} or fewer")


def check_mel_bins(config: _FrameConfig, sampling_rate: int) -> MelBinsCheck:
    """Whether ``config.num_mel_bins`` suits ``sampling_rate`` (see :data:`MIN_MEL_HALF_WIDTH`).

    The filter bank is laid out as kaldi-native-fbank (Kaldi's ``MelBanks``) does it: FFT of the
    window padded to a power of two (``round_to_power_of_two``), ``num_bins + 2`` equally spaced
    mel points from ``low_freq`` to ``high_freq`` (``<= 0``: an offset from Nyquist).
    """
    window = int(sampling_rate * 0.001 * config.frame_length_ms)
    padded = 1 << max(window - 1, 0).bit_length() if config.round_to_power_of_two else window
    fft_bin_hz = sampling_rate / padded
    fft_mel = _mel(np.arange(padded // 2) * fft_bin_hz)
    nyquist = 0.5 * sampling_rate
    high = nyquist + config.high_freq if config.high_freq <= 0 else config.high_freq
    mel_low, mel_high = float(_mel(config.low_freq)), float(_mel(high))

    def half_width(n: int) -> float:
        delta = (mel_high - mel_low) / (n + 1)
        return float(_inverse_mel(mel_low + delta) - config.low_freq) / fft_bin_hz

    def rejected(n: int) -> bool:
        delta = (mel_high - mel_low) / (n + 1)
        left = mel_low + np.arange(n) * delta
        inside = (fft_mel[None, :] > left[:, None]) & (fft_mel[None, :] < left[:, None] + 2 * delta)
        return not bool(inside.any(axis=1).all())

    def good(n: int) -> bool:
        return half_width(n) >= MIN_MEL_HALF_WIDTH and not rejected(n)

    # the largest n with half_width(n) >= MIN (half_width falls with n), then exact steps
    min_delta = float(_mel(config.low_freq + MIN_MEL_HALF_WIDTH * fft_bin_hz)) - mel_low
    best = max(int((mel_high - mel_low) / min_delta) - 1, 1)
    while best > 1 and not good(best):
        best -= 1
    while good(best + 1):
        best += 1
    n = config.num_mel_bins
    return MelBinsCheck(n, int(sampling_rate), half_width(n), fft_bin_hz, best, rejected(n))


# --------------------------------------------------------------------------- storage


def default_writer() -> type[FeaturesWriter]:
    """``LilcomChunkyWriter`` (lossy, compact) when ``lilcom`` is installed, else
    ``NumpyFilesWriter`` (one lossless ``.npy`` per cut)."""
    try:
        import lilcom  # noqa: F401
    except ImportError:
        return NumpyFilesWriter
    return LilcomChunkyWriter


class FeatureResult(NamedTuple):
    """What :func:`compute_features` returns."""

    cuts: CutSet
    """The cuts whose features were computed, in input order, with ``Features`` attached."""
    skipped: list[tuple[str, str]]
    """``(cut id, "Reason: message")`` of each cut whose audio could not be read or featurised
    (the reason: ``TruncatedAudioError`` for truncated audio, else the error's class)."""

    def reasons(self) -> Counter[str]:
        """Skipped cuts counted by reason (the part of their message before the first ':')."""
        return Counter(why.split(":", 1)[0] for _, why in self.skipped)


class TruncatedAudioError(ValueError):
    """An audio file shorter than its header or its manifest says (copied or written only in
    part, a full disk, ...)."""


def wav_truncation(path: str | os.PathLike) -> str | None:
    """For a RIFF/RIFX WAVE file whose data chunk is shorter than its header declares, a
    message naming the file and both lengths; None for a complete file, a file that is not
    WAVE, or a header that gives no length (streamed WAV: size 0 or 0xFFFFFFFF)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        end = "<" if head[:4] == b"RIFF" else ">"
        size = os.fstat(f.fileno()).st_size
        pos, block_align = 12, 0
        while pos + 8 <= size:
            f.seek(pos)
            cid, n = struct.unpack(end + "4sI", f.read(8))
            if cid == b"fmt ":
                fmt = f.read(min(n, 16))
                if len(fmt) >= 14:
                    block_align = struct.unpack(end + "H", fmt[12:14])[0]
            elif cid == b"data":
                if n in (0, 0xFFFFFFFF):
                    return None
                have = size - (pos + 8)
                if have >= n:
                    return None
                if block_align:
                    return (f"{path}: truncated audio: the WAV header declares "
                            f"{n // block_align} samples ({n} bytes), the file holds "
                            f"{have // block_align} ({have} bytes)")
                return (f"{path}: truncated audio: the WAV header declares {n} data bytes, "
                        f"the file holds {have}")
            pos += 8 + n + (n & 1)
    return None


def check_audio_length(cut) -> None:
    """:class:`TruncatedAudioError` when an audio file of ``cut``'s recording is truncated:
    a WAV file shorter than its header (:func:`wav_truncation`), or a one-file recording
    whose file holds fewer samples than its manifest says (soundfile's count; not checked for
    a recording with transforms such as speed perturbation, whose count is the transformed
    one)."""
    rec = getattr(cut, "recording", None)
    if rec is None:
        return
    files = [src.source for src in rec.sources if src.type == "file"]
    for path in files:
        if not os.path.isfile(path):
            continue  # lhotse's own error names a missing file
        msg = wav_truncation(path)
        if msg is not None:
            raise TruncatedAudioError(msg)
    if len(files) == 1 and len(rec.sources) == 1 and os.path.isfile(files[0]) \
            and not rec.transforms:
        import soundfile as sf

        try:
            frames = sf.info(files[0]).frames
        except Exception:  # noqa: BLE001 -- not a format soundfile reads: lhotse decides
            return
        tolerance = int(0.025 * rec.sampling_rate)  # lhotse's duration mismatch tolerance
        if 0 < frames < rec.num_samples - tolerance:
            raise TruncatedAudioError(f"{files[0]}: truncated audio: the manifest of recording "
                                      f"{rec.id} says {rec.num_samples} samples, the file "
                                      f"holds {frames}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


_STAGE = ".tmp-feats-"


def _remove_dead_stages(folder: Path) -> None:
    """Remove the staging folders left by killed extractions (their process is gone)."""
    for p in folder.glob(f"{_STAGE}*-*"):
        pid = p.name[len(_STAGE):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True)


def _compute_chunk(cuts: list, extractor: FeatureExtractor, storage_path: str,
                   writer_type: type[FeaturesWriter], progress: bool = False
                   ) -> tuple[list, list[tuple[str, str]]]:
    """Features of ``cuts`` into the archive ``storage_path``: written in a staging folder
    next to it and renamed over it when complete (a killed run leaves no truncated archive
    under the final name); the cuts returned point at the final name."""
    done, skipped = [], []
    folder, name = os.path.split(storage_path)
    stage = tempfile.mkdtemp(dir=folder or ".", prefix=f"{_STAGE}{os.getpid()}-")
    try:
        with writer_type(os.path.join(stage, name)) as storage:
            for cut in progress_bar(cuts, desc="features", unit="cut", disable=not progress):
                try:
                    check_audio_length(cut)
                    done.append(cut.compute_and_store_features(extractor=extractor,
                                                               storage=storage))
                except Exception as e:  # noqa: BLE001 -- bad audio of any kind: report
                    skipped.append((cut.id, f"{type(e).__name__}: {_first_line(e)}"))
            written = Path(storage.storage_path)
        if not done:  # nothing to keep: no archive under the final name
            return done, skipped
        final = Path(folder) / written.name
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(written, final)
        for cut in done:
            cut.features.storage_path = str(final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return done, skipped


def compute_features(cuts: CutSet, storage_dir: str | os.PathLike,
                     extractor: FeatureExtractor | None = None, num_jobs: int = 1,
                     storage_type: type[FeaturesWriter] | None = None,
                     manifest_path: str | os.PathLike | None = None,
                     storage_name: str = "feats") -> FeatureResult:
    """Compute and store features of every cut; return the cuts with features and the skips.

    Args:
      cuts: cuts with recordings attached.
      storage_dir: folder for the archives (created): ``{storage_name}`` with one job, or
        ``{storage_name}-{k}`` for the k-th chunk with several.
      extractor: default :class:`KnfFbank` (80-dim log-mel).
      num_jobs: worker processes (``spawn``); each chunk of cuts gets its own archive.
      storage_type: a lhotse ``FeaturesWriter`` class; default :func:`default_writer`.
      manifest_path: if given, the resulting cuts are also written there (atomically), e.g.
        ``data/fbank/cuts_train.jsonl.gz``.

    A cut that fails (unreadable, corrupt or truncated audio, too short for one frame, ...) is
    skipped: its id is logged as a warning and listed in ``result.skipped``.

    Crash safety: ``manifest_path`` is removed first (it may point into the archives about to
    be rewritten) and written atomically last; each archive is written under a staging folder
    and renamed into place when complete. A run killed at any point leaves no manifest, or a
    complete one whose archives are complete; rerun it.
    """
    extractor = extractor if extractor is not None else KnfFbank()
    writer_type = storage_type if storage_type is not None else default_writer()
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    _remove_dead_stages(storage_dir)
    if manifest_path is not None:
        Path(manifest_path).unlink(missing_ok=True)
    cut_list = list(cuts)
    log.info("computing %s features of %d cuts into %s (%s, %d jobs)", extractor.name,
             len(cut_list), storage_dir, writer_type.__name__, num_jobs)
    done: list = []
    skipped: list[tuple[str, str]] = []
    if num_jobs <= 1 or len(cut_list) <= 1:
        done, skipped = _compute_chunk(cut_list, extractor, str(storage_dir / storage_name),
                                       writer_type, progress=True)
    else:
        n_chunks = min(len(cut_list), 4 * num_jobs)
        size = math.ceil(len(cut_list) / n_chunks)
        chunks = [cut_list[i:i + size] for i in range(0, len(cut_list), size)]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(num_jobs, mp_context=ctx) as ex, \
                progress_bar(total=len(cut_list), desc="features", unit="cut") as bar:
            futures = [ex.submit(_compute_chunk, chunk, extractor,
                                 str(storage_dir / f"{storage_name}-{k}"), writer_type)
                       for k, chunk in enumerate(chunks)]
            for fut, chunk in zip(futures, chunks):
                d, s = fut.result()
                done.extend(d)
                skipped.extend(s)
                bar.update(len(chunk))
    for cut_id, why in skipped:
        log.warning("skipped cut %s: %s", cut_id, why)
    out = CutSet.from_cuts(done)
    result = FeatureResult(out, skipped)
    if skipped:
        log.warning("skipped %d of %d cuts (bad audio: %s)", len(skipped), len(cut_list),
                    _reason_summary(result))
    if cut_list and not done:
        raise ValueError(f"{manifest_path or storage_dir}: no cut has features: all "
                         f"{len(cut_list)} skipped ({_reason_summary(result)}), e.g. "
                         f"{skipped[0][0]}: {skipped[0][1]}")
    if manifest_path is not None:
        with atomic_output(manifest_path) as tmp:
            out.to_file(tmp)
    return result


def _reason_summary(result: FeatureResult) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(result.reasons().items()))


# --------------------------------------------------------------------------- CMVN


def compute_global_cmvn(cuts: CutSet, path: str | os.PathLike | None = None,
                        max_cuts: int | None = None, std_floor: float = 1e-5
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation ``[D]`` (float32) over all frames of ``cuts``.

    Cuts must have features (precomputed). Sums are accumulated in float64; the standard
    deviation is floored at ``std_floor``. Cuts whose features cannot be loaded are skipped and
    counted (warning). ``max_cuts`` limits the estimate to the first cuts. With ``path`` the
    result is also saved (:func:`save_cmvn`).
    """
    total = None
    total_sq = None
    frames = 0
    bad: list[str] = []
    for i, cut in enumerate(progress_bar(cuts, desc="cmvn", unit="cut")):
        if max_cuts is not None and i >= max_cuts:
            break
        try:
            feats = np.asarray(cut.load_features(), dtype=np.float64)
        except Exception as e:  # noqa: BLE001 -- skip and report, never crash
            log.warning("cmvn: skipped cut %s: %s: %s", cut.id, type(e).__name__,
                        _first_line(e))
            bad.append(cut.id)
            continue
        if total is None:
            total = np.zeros(feats.shape[1])
            total_sq = np.zeros(feats.shape[1])
        total += feats.sum(axis=0)
        total_sq += np.square(feats).sum(axis=0)
        frames += feats.shape[0]
    if bad:
        log.warning("cmvn: skipped %d cuts whose features could not be read", len(bad))
    if frames == 0:
        raise ValueError("compute_global_cmvn: no frames (empty cut set or no readable features)")
    mean = total / frames
    var = np.maximum(total_sq / frames - mean**2, 0.0)
    std = np.maximum(np.sqrt(var), std_floor)
    mean_t = torch.from_numpy(mean).float()
    std_t = torch.from_numpy(std).float()
    if path is not None:
        save_cmvn(path, mean_t, std_t)
    return mean_t, std_t


def save_cmvn(path: str | os.PathLike, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Write ``{"mean": [D], "std": [D]}`` with ``torch.save``, atomically."""
    with atomic_output(path) as tmp:
        torch.save({"mean": mean.detach().cpu().float(), "std": std.detach().cpu().float()}, tmp)


def load_cmvn(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``(mean, std)`` written by :func:`save_cmvn` (``weights_only=True``)."""
    d = torch.load(path, map_location="cpu", weights_only=True)
    return d["mean"], d["std"]


def apply_cmvn(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(features - mean) / std`` over the last dimension."""
    return (features - mean.to(features)) / std.to(features)
