#!/usr/bin/env python3
"""TIMIT data preparation (stage 0): lhotse manifests per split.

Reads either layout:

* ``ldc`` -- the full LDC corpus: ``TRAIN/DR1/FCJF0/SI1027.{WAV,PHN,WRD,TXT}`` and ``TEST/...``
  (upper- or lower-case names; the folder holding ``TRAIN``/``TEST`` may be the given folder or
  one or two levels below it), NIST SPHERE audio;
* ``nltk`` -- the NLTK sample: ``dr1-fvmh0/si1466.{wav,phn,wrd,txt}`` (16 training speakers,
  160 utterances, RIFF audio).

and writes, for each split ``train``/``dev``/``test``, gzipped JSONL manifests (each written to a
temporary name, then renamed)::

    <out_dir>/timit_recordings_<split>.jsonl.gz   RecordingSet (ids "<speaker>_<utt>", e.g.
                                                  "fcjf0_si1027"; absolute audio paths)
    <out_dir>/timit_supervisions_<split>.jsonl.gz SupervisionSet, one segment per recording
    <out_dir>/timit_cuts_<split>.jsonl.gz         CutSet: one MonoCut per recording, with the
                                                  same id, holding its supervision

Each supervision covers its whole recording (start 0, the recording's duration) and has
``text`` = the words of the ``.wrd`` file (lower case, space-separated), ``speaker``
(``fcjf0``), ``gender`` (``F``/``M``), ``language`` ``English``, ``custom`` = ``{"phones_61",
"phones_48", "phones_39"`` (space-separated phone strings: the ``.phn`` labels, folded by
``phones.60-48-39.map``; ``q`` disappears in the 48/39 sets), ``"orthography"`` (the ``.txt``
sentence), ``"dialect"`` (``dr1``), ``"corpus_part"`` (``train``/``test``: the LDC folder),
``"sentence_type"`` (``sa``/``si``/``sx``)``}`` and ``alignment`` = ``{"phone": [...], "word":
[...]}``: lhotse ``AlignmentItem`` lists of the ``.phn`` labels (61-phone set, as labelled) and
``.wrd`` words, start and duration in seconds.

Splits:

* ``ldc``: ``train`` = the 3696 utterances of the 462 ``TRAIN`` speakers without the SA
  sentences; ``dev`` = the 400 utterances (no SA) of the 50 ``TEST`` speakers of
  ``dev_spk.list`` (the development set of Kaldi's TIMIT recipe); ``test`` = the 192-utterance
  core test set: the 24 speakers of ``test_spk.list`` (Table 1 of TIMIT's ``testset.doc``), no
  SA. The other 104 ``TEST`` speakers are in no split.
* ``nltk``: the sample's 16 speakers (one female, one male per dialect region, all TIMIT
  training speakers) are split by speaker, balanced by sex: 12 ``train``, 2 ``dev`` (one F, one
  M), 2 ``test`` (one F, one M), chosen by :func:`speaker_split` (deterministic: speakers of each
  sex ranked by the SHA-1 of their id, held-out speakers from four different dialect regions).
  On the sample: ``test`` = faem0 (dr2, F), mbgt0 (dr5, M); ``dev`` = fapb0 (dr6, F), madc0
  (dr3, M) (:data:`NLTK_SPLIT`); 120/20/20 utterances. SA sentences are kept (all 160
  utterances are used), since the sample is too small to drop 20% of it; note that the two SA
  texts are read by every speaker, so they occur in all three splits.

``include_sa`` overrides the SA rule for either layout.

Bad input never stops a run: an utterance with a missing or unreadable audio file
(``audio``), a missing or malformed ``.phn``/``.wrd``/``.txt`` (``labels``), label times that
run past the end of the audio (``times_past_audio``), an empty transcript (no phones, no
words or no sentence: ``empty_transcript``) or a phone missing from the folding table
(``unknown_phone``) is logged by name and skipped; :class:`PrepResult` counts them per reason
and the command line prints the counts.

SPHERE audio: lhotse reads uncompressed NIST SPHERE PCM through soundfile (libsndfile), so
``Recording.from_file`` is used for both formats. Before that, :func:`sphere_header` checks a
SPHERE header (16-bit PCM, not ``shorten``-compressed, the file holds ``sample_count``
samples); :func:`read_sphere` is a small reader of such files (no lhotse) used to cross-check.

Usage::

    python egs/timit/local/prepare_timit.py --timit-dir ../shared/data/timit_nltk_sample \\
        --out-dir data/manifests
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lhotse import (
    CutSet,
    MonoCut,
    Recording,
    RecordingSet,
    SupervisionSegment,
    SupervisionSet,
    validate_recordings_and_supervisions,
)
from lhotse.supervision import AlignmentItem

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timit_lexicon import MAP_61_TO_39, MAP_61_TO_48

from wfst_asr.atomic import atomic_output
from wfst_asr.data.features import wav_truncation
from wfst_asr.progress import progress as progress_bar

__all__ = [
    "DEV_SPK_FILE", "NLTK_SPLIT", "SKIP_REASONS", "SPLITS", "TEST_SPK_FILE", "PrepResult",
    "SkipUtterance", "Utterance", "assign_splits", "detect_layout", "find_utterances",
    "make_manifests", "prepare_timit", "read_speaker_list", "read_sphere", "speaker_split",
    "sphere_header", "write_manifests",
]

log = logging.getLogger("prepare_timit")

HERE = Path(__file__).resolve().parent
#: The 50 dev speakers (Kaldi's TIMIT recipe, conf/dev_spk.list).
DEV_SPK_FILE = HERE / "dev_spk.list"
#: The 24 core-test speakers (TIMIT testset.doc, Table 1).
TEST_SPK_FILE = HERE / "test_spk.list"
SPLITS = ("train", "dev", "test")

#: Why an utterance is skipped.
SKIP_REASONS = {
    "audio": "missing or unreadable audio file",
    "labels": "missing or malformed .phn/.wrd/.txt file",
    "empty_transcript": "empty transcript (no phones, words or sentence)",
    "unknown_phone": "phone missing from phones.60-48-39.map",
    "truncated_audio": "audio file shorter than its header declares (copied or written in part)",
    "times_past_audio": ".phn/.wrd times run past the end of the audio",
    "duplicate": "utterance id seen before",
}

#: The held-out speakers :func:`speaker_split` picks on the NLTK sample (the rest is train).
NLTK_SPLIT = {
    "dev": ["fapb0", "madc0"],  # dr6 F, dr3 M
    "test": ["faem0", "mbgt0"],  # dr2 F, dr5 M
}

_EXTS = (".wav", ".phn", ".wrd", ".txt")
_DR_RE = re.compile(r"dr\d+", re.IGNORECASE)
_NLTK_SPK_RE = re.compile(r"(dr\d+)-(\w+)", re.IGNORECASE)


class SkipUtterance(Exception):
    """An utterance that cannot be used: ``reason`` (a key of SKIP_REASONS) and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Utterance:
    """One utterance found on disk (its files by lower-case extension; some may be missing)."""

    speaker: str  # "fcjf0"
    name: str  # "si1027"
    dialect: str  # "dr1"
    part: str  # "train" / "test": the LDC folder ("train" for the NLTK sample)
    files: dict[str, Path]  # ".wav"/".phn"/".wrd"/".txt" -> path

    @property
    def utt_id(self) -> str:
        return f"{self.speaker}_{self.name}"

    @property
    def gender(self) -> str | None:
        return {"f": "F", "m": "M"}.get(self.speaker[:1])

    @property
    def sentence_type(self) -> str:
        return self.name[:2]


@dataclass
class PrepResult:
    """What :func:`prepare_timit` did."""

    layout: str
    root: Path
    #: split -> {"recordings", "supervisions", "cuts"} (only splits with utterances)
    manifests: dict[str, dict] = field(default_factory=dict)
    #: (utterance id, reason, detail) of every skipped utterance
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    excluded_sa: int = 0  # SA utterances left out
    unassigned: int = 0  # utterances of speakers in no split (LDC TEST outside dev/core test)
    written: list[Path] = field(default_factory=list)

    @property
    def skip_counts(self) -> Counter:
        return Counter(reason for _, reason, _ in self.skipped)

    def summary(self) -> str:
        lines = [f"TIMIT ({self.layout} layout) at {self.root}"]
        for split, m in self.manifests.items():
            sups = m["supervisions"]
            hours = sum(s.duration for s in sups) / 3600
            lines.append(f"  {split:5s}: {len(sups):5d} utterances, "
                         f"{len({s.speaker for s in sups}):3d} speakers, {hours:.3f} h")
        lines.append(f"  SA utterances excluded: {self.excluded_sa}; utterances in no split: "
                     f"{self.unassigned}")
        counts = self.skip_counts
        lines.append(f"  skipped: {sum(counts.values())}")
        for reason, text in SKIP_REASONS.items():
            if counts[reason]:
                lines.append(f"    {reason}: {counts[reason]} ({text})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- SPHERE


def sphere_header(path: str | os.PathLike) -> dict[str, str | int]:
    """The fields of a NIST SPHERE header (``header_size`` included); ValueError for a file
    that is not SPHERE, or not uncompressed 16-bit PCM, or shorter than its ``sample_count``."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1024)
        if not head.startswith(b"NIST_1A"):
            raise ValueError(f"{path}: not a NIST SPHERE file")
        lines = head.split(b"\n")
        try:
            size = int(lines[1])
        except (IndexError, ValueError):
            raise ValueError(f"{path}: bad SPHERE header size line") from None
        if size > len(head):
            head += f.read(size - len(head))
    fields: dict[str, str | int] = {"header_size": size}
    for line in head[:size].split(b"\n")[2:]:
        line = line.decode("ascii", errors="replace").strip()
        if line == "end_head":
            break
        parts = line.split(None, 2)
        if len(parts) == 3:
            key, kind, value = parts
            fields[key] = int(value) if kind == "-i" else value
    else:
        raise ValueError(f"{path}: SPHERE header has no end_head")
    coding = str(fields.get("sample_coding", "pcm"))
    if coding != "pcm":
        raise ValueError(f"{path}: SPHERE sample_coding {coding!r} not supported "
                         "(uncompress shorten files with sph2pipe first)")
    if fields.get("sample_n_bytes", 2) != 2:
        raise ValueError(f"{path}: SPHERE sample_n_bytes {fields.get('sample_n_bytes')} != 2")
    if str(fields.get("sample_byte_format", "01")) not in ("01", "10", "1"):
        raise ValueError(f"{path}: SPHERE sample_byte_format {fields['sample_byte_format']!r}")
    missing = [k for k in ("sample_count", "sample_rate") if not isinstance(fields.get(k), int)]
    if missing:
        raise ValueError(f"{path}: SPHERE header lacks integer field(s) {missing}")
    channels = int(fields.setdefault("channel_count", 1))
    need = size + 2 * channels * int(fields["sample_count"])
    have = path.stat().st_size
    if have < need:
        raise ValueError(f"{path}: truncated SPHERE file ({have} bytes, header says {need})")
    return fields


def read_sphere(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Samples ``[channels, samples]`` (int16) and sampling rate of a 16-bit PCM SPHERE file."""
    hdr = sphere_header(path)
    dtype = ">i2" if str(hdr.get("sample_byte_format")) == "10" else "<i2"
    channels, count = int(hdr["channel_count"]), int(hdr["sample_count"])
    with open(path, "rb") as f:
        f.seek(int(hdr["header_size"]))
        data = np.frombuffer(f.read(2 * channels * count), dtype=dtype)
    return data.reshape(count, channels).T.astype(np.int16), int(hdr["sample_rate"])


# ----------------------------------------------------------------------------- discovery


def detect_layout(timit_dir: str | os.PathLike) -> tuple[str, Path]:
    """``("ldc", folder holding TRAIN/TEST)`` or ``("nltk", folder holding dr<N>-<spk>)``.

    Looks in ``timit_dir`` and one and two levels below it; ValueError when neither is found.
    """
    root = Path(os.path.abspath(timit_dir))  # recordings then hold absolute paths
    if not root.is_dir():
        raise FileNotFoundError(f"TIMIT folder {root} not found")
    level = [root]
    for _ in range(3):
        nxt: list[Path] = []
        for cand in level:
            subdirs = sorted(d for d in cand.iterdir() if d.is_dir())
            if any(d.name.lower() in ("train", "test")
                   and any(_DR_RE.fullmatch(x.name) for x in d.iterdir() if x.is_dir())
                   for d in subdirs):
                return "ldc", cand
            if any(_NLTK_SPK_RE.fullmatch(d.name) for d in subdirs):
                return "nltk", cand
            nxt.extend(subdirs)
        level = nxt
    raise ValueError(f"{root}: neither an LDC TIMIT tree (TRAIN/TEST/DR*/<speaker>/) nor the "
                     "NLTK sample layout (dr<N>-<speaker>/)")


def _speaker_utterances(spk_dir: Path, speaker: str, dialect: str, part: str
                        ) -> list[Utterance]:
    groups: dict[str, dict[str, Path]] = {}
    for f in sorted(spk_dir.iterdir()):
        stem, ext = os.path.splitext(f.name)
        if ext.lower() in _EXTS and "." not in stem and f.is_file():
            groups.setdefault(stem.lower(), {}).setdefault(ext.lower(), f)
    return [Utterance(speaker, name, dialect, part, files) for name, files in sorted(groups.items())]


def find_utterances(root: str | os.PathLike, layout: str) -> list[Utterance]:
    """Every utterance (any file stem with a .wav/.phn/.wrd/.txt) under ``root``, sorted."""
    root = Path(root)
    out: list[Utterance] = []
    if layout == "ldc":
        for part_dir in sorted(d for d in root.iterdir() if d.is_dir()):
            part = part_dir.name.lower()
            if part not in ("train", "test"):
                continue
            for dr_dir in sorted(d for d in part_dir.iterdir() if d.is_dir()):
                if not _DR_RE.fullmatch(dr_dir.name):
                    continue
                for spk_dir in sorted(d for d in dr_dir.iterdir() if d.is_dir()):
                    out += _speaker_utterances(spk_dir, spk_dir.name.lower(),
                                               dr_dir.name.lower(), part)
    elif layout == "nltk":
        for spk_dir in sorted(d for d in root.iterdir() if d.is_dir()):
            m = _NLTK_SPK_RE.fullmatch(spk_dir.name)
            if m:
                out += _speaker_utterances(spk_dir, m.group(2).lower(), m.group(1).lower(),
                                           "train")
    else:
        raise ValueError(f"unknown layout {layout!r} (ldc or nltk)")
    return sorted(out, key=lambda u: u.utt_id)


# ----------------------------------------------------------------------------- splits


def read_speaker_list(path: str | os.PathLike) -> list[str]:
    """Speaker ids (lower case), one a line; blank lines and ``#`` comments ignored."""
    with open(path, encoding="utf-8") as f:
        return [line.split("#", 1)[0].strip().lower() for line in f
                if line.split("#", 1)[0].strip()]


def speaker_split(speakers: dict[str, tuple[str | None, str]], n_dev: int = 1,
                  n_test: int = 1) -> dict[str, str]:
    """Speaker-disjoint split balanced by sex: ``{speaker: "train" | "dev" | "test"}``.

    ``speakers`` maps a speaker id to ``(gender, dialect)``. For each gender (sorted), speakers
    are ranked by the SHA-1 of their id; ``test`` takes ``n_test`` of each gender, then ``dev``
    ``n_dev`` of each, going down the ranking and passing over a speaker whose dialect region
    already has a held-out speaker while another is left; the rest is ``train``. At least one
    speaker of each gender stays in ``train``.
    """
    by_gender: dict[str, list[str]] = {}
    for spk, (gender, _) in speakers.items():
        by_gender.setdefault(gender or "?", []).append(spk)
    for spks in by_gender.values():
        spks.sort(key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    out = {spk: "train" for spk in speakers}
    used_regions: set[str] = set()
    for split, n in (("test", n_test), ("dev", n_dev)):
        for gender in sorted(by_gender):
            for _ in range(n):
                free = [s for s in by_gender[gender] if out[s] == "train"]
                if len(free) <= 1:
                    break
                pick = next((s for s in free if speakers[s][1] not in used_regions), free[0])
                out[pick] = split
                used_regions.add(speakers[pick][1])
    return out


def assign_splits(utts: Sequence[Utterance], layout: str, include_sa: bool | None = None,
                  dev_speakers: Iterable[str] | None = None,
                  test_speakers: Iterable[str] | None = None
                  ) -> tuple[dict[str, list[Utterance]], int, int]:
    """``({split: utterances}, SA utterances excluded, utterances in no split)``.

    ``include_sa`` defaults to False for ``ldc`` and True for ``nltk``; the speaker lists
    (LDC only) default to :data:`DEV_SPK_FILE` / :data:`TEST_SPK_FILE`.
    """
    if include_sa is None:
        include_sa = layout == "nltk"
    if layout == "ldc":
        dev = set(read_speaker_list(DEV_SPK_FILE) if dev_speakers is None else dev_speakers)
        test = set(read_speaker_list(TEST_SPK_FILE) if test_speakers is None else test_speakers)
        spk_split = {}
        for u in utts:
            if u.part == "train":
                spk_split[u.speaker] = "train"
            else:
                spk_split[u.speaker] = ("dev" if u.speaker in dev
                                        else "test" if u.speaker in test else None)
    else:
        spk_split = speaker_split({u.speaker: (u.gender, u.dialect) for u in utts})
    out: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    n_sa = n_none = 0
    for u in utts:
        split = spk_split[u.speaker]
        if split is None:
            n_none += 1
        elif u.sentence_type == "sa" and not include_sa:
            n_sa += 1
        else:
            out[split].append(u)
    return out, n_sa, n_none


# ----------------------------------------------------------------------------- one utterance


def _read_labels(path: Path | None, what: str) -> list[tuple[int, int, str]]:
    if path is None:
        raise SkipUtterance("labels", f"no {what} file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SkipUtterance("labels", f"{path.name}: {e}") from None
    out = []
    for no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 3:
                raise ValueError
            start, end = int(fields[0]), int(fields[1])
        except ValueError:
            raise SkipUtterance("labels", f"{path.name}:{no}: expected 'start end label', "
                                          f"got {line!r}") from None
        if not 0 <= start <= end:
            raise SkipUtterance("labels", f"{path.name}:{no}: bad times {start} {end}")
        out.append((start, end, fields[2]))
    return out


def _read_sentence(path: Path | None) -> str:
    if path is None:
        raise SkipUtterance("labels", "no .txt file")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SkipUtterance("labels", f"{path.name}: {e}") from None
    fields = text.split(None, 2)
    if not fields:
        return ""
    if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
        raise SkipUtterance("labels", f"{path.name}: expected '<start> <end> <sentence>'")
    return fields[2].strip() if len(fields) == 3 else ""


def _one_line(e: Exception, limit: int = 300) -> str:
    """An exception as one line (lhotse's audio errors span several lines), shortened."""
    lines = [x.strip() for x in str(e).splitlines()
             if x.strip() and not x.startswith("Set LHOTSE_")]
    text = f"{type(e).__name__}: {' | '.join(lines)}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _recording(u: Utterance) -> Recording:
    audio = u.files.get(".wav")
    if audio is None:
        raise SkipUtterance("audio", "no audio file")
    try:
        with open(audio, "rb") as f:
            is_sphere = f.read(7) == b"NIST_1A"
        hdr = sphere_header(audio) if is_sphere else None
    except ValueError as e:
        reason = "truncated_audio" if "truncated" in str(e) else "audio"
        raise SkipUtterance(reason, f"{audio.name}: {_one_line(e)}") from None
    except OSError as e:
        raise SkipUtterance("audio", f"{audio.name}: {_one_line(e)}") from None
    if not is_sphere and (why := wav_truncation(audio)) is not None:
        raise SkipUtterance("truncated_audio", f"{audio.name}: {why.split(': ', 2)[-1]}")
    try:
        rec = Recording.from_file(audio, recording_id=u.utt_id)
    except Exception as e:  # noqa: BLE001 -- whatever the reader raises, skip this file
        raise SkipUtterance("audio", f"{audio.name}: {_one_line(e)}") from None
    if rec.num_samples == 0:
        raise SkipUtterance("audio", f"{audio.name}: no samples")
    if hdr is not None and rec.num_samples != hdr["sample_count"]:
        raise SkipUtterance("truncated_audio", f"{audio.name}: {rec.num_samples} samples read, "
                                               f"header says {hdr['sample_count']}")
    return rec


def make_manifests(u: Utterance) -> tuple[Recording, SupervisionSegment]:
    """The Recording and SupervisionSegment of one utterance; SkipUtterance when it is bad."""
    phn = _read_labels(u.files.get(".phn"), ".phn")
    wrd = _read_labels(u.files.get(".wrd"), ".wrd")
    sentence = _read_sentence(u.files.get(".txt"))
    empty = [what for what, x in ((".phn", phn), (".wrd", wrd), (".txt", sentence)) if not x]
    if empty:
        raise SkipUtterance("empty_transcript", f"empty {'/'.join(empty)}")
    phones = [p for _, _, p in phn]
    unknown = sorted({p for p in phones if p not in MAP_61_TO_48})
    if unknown:
        raise SkipUtterance("unknown_phone", f"phones {unknown} not in phones.60-48-39.map")
    phones48 = [m for m in (MAP_61_TO_48[p] for p in phones) if m is not None]
    phones39 = [m for m in (MAP_61_TO_39[p] for p in phones) if m is not None]
    if not phones48:
        raise SkipUtterance("empty_transcript", "no phones left after folding")
    rec = _recording(u)
    for what, labels in ((".phn", phn), (".wrd", wrd)):
        end = max(e for _, e, _ in labels)
        if end > rec.num_samples:
            raise SkipUtterance("times_past_audio", f"{what} ends at sample {end}, the audio "
                                                    f"has {rec.num_samples}")
    sr = rec.sampling_rate

    def items(labels: list[tuple[int, int, str]]) -> list[AlignmentItem]:
        return [AlignmentItem(symbol=sym, start=s / sr, duration=(e - s) / sr)
                for s, e, sym in labels]

    sup = SupervisionSegment(
        id=u.utt_id, recording_id=u.utt_id, start=0.0, duration=rec.duration, channel=0,
        text=" ".join(w for _, _, w in wrd), language="English", speaker=u.speaker,
        gender=u.gender,
        custom={"phones_61": " ".join(phones), "phones_48": " ".join(phones48),
                "phones_39": " ".join(phones39), "orthography": sentence,
                "dialect": u.dialect, "corpus_part": u.part, "sentence_type": u.sentence_type},
        alignment={"phone": items(phn), "word": items(wrd)},
    )
    return rec, sup


# ----------------------------------------------------------------------------- driver


def write_manifests(manifests: dict[str, dict], out_dir: str | os.PathLike,
                    prefix: str = "timit") -> list[Path]:
    """Write ``<prefix>_{recordings,supervisions,cuts}_<split>.jsonl.gz`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, m in manifests.items():
        for kind in ("recordings", "supervisions", "cuts"):
            path = out / f"{prefix}_{kind}_{split}.jsonl.gz"
            with atomic_output(path) as tmp:  # tmp ends in the same ".jsonl.gz"
                m[kind].to_file(tmp)
            written.append(path)
    return written


def prepare_timit(timit_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                  include_sa: bool | None = None, dev_speakers: Iterable[str] | None = None,
                  test_speakers: Iterable[str] | None = None, prefix: str = "timit",
                  progress: bool = True) -> PrepResult:
    """Find, split and check the utterances of ``timit_dir``; build (and, given ``out_dir``,
    write) the manifests of every non-empty split. See the module docstring."""
    layout, root = detect_layout(timit_dir)
    log.info("%s: %s layout at %s", timit_dir, layout, root)
    utts = find_utterances(root, layout)
    splits, n_sa, n_none = assign_splits(utts, layout, include_sa, dev_speakers, test_speakers)
    result = PrepResult(layout, root, excluded_sa=n_sa, unassigned=n_none)
    seen: set[str] = set()
    for split in SPLITS:
        recs, sups = [], []
        for u in progress_bar(splits[split], desc=f"TIMIT {split}", disable=not progress,
                              leave=False):
            try:
                if u.utt_id in seen:
                    raise SkipUtterance("duplicate", "utterance id seen before")
                seen.add(u.utt_id)
                rec, sup = make_manifests(u)
            except SkipUtterance as e:
                log.warning("skipping %s (%s): %s", u.utt_id, e.reason, e.detail)
                result.skipped.append((u.utt_id, e.reason, e.detail))
                continue
            recs.append(rec)
            sups.append(sup)
        if not recs:
            if splits[split]:
                log.warning("split %s: every utterance was skipped", split)
            continue
        recordings = RecordingSet.from_recordings(recs)
        supervisions = SupervisionSet.from_segments(sups)
        validate_recordings_and_supervisions(recordings, supervisions)
        cuts = CutSet.from_cuts(
            MonoCut(id=sup.id, start=0.0, duration=rec.duration, channel=0, recording=rec,
                    supervisions=[sup]) for rec, sup in zip(recs, sups))
        result.manifests[split] = {"recordings": recordings, "supervisions": supervisions,
                                   "cuts": cuts}
    if out_dir is not None:
        result.written = write_manifests(result.manifests, out_dir, prefix)
    log.info("%s", result.summary())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timit-dir", required=True,
                        help="full LDC TIMIT (TRAIN/TEST) or the NLTK sample")
    parser.add_argument("--out-dir", default="data/manifests")
    parser.add_argument("--include-sa", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the SA sentences (default: no for LDC, yes for the sample)")
    parser.add_argument("--prefix", default="timit", help="manifest file name prefix")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    result = prepare_timit(args.timit_dir, args.out_dir, include_sa=args.include_sa,
                           prefix=args.prefix, progress=not args.no_progress)
    print(result.summary())
    for path in result.written:
        print(f"wrote {path}")
    return 0 if result.manifests else 1


if __name__ == "__main__":
    sys.exit(main())
