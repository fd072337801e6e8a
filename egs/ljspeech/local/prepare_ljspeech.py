#!/usr/bin/env python3
"""Stage 0 of egs/ljspeech/run.sh: lhotse manifests of LJ Speech (part 1) and the LM text.

The corpus folder holds ``metadata.csv`` (``ID|raw text|normalized text`` for all 13,100 clips
of LJ Speech 1.1) and ``flac/ID.flac`` for some of them. lhotse's ``prepare_ljspeech`` expects
the full corpus's ``wavs/*.wav``, so this is the thin version for FLAC and a subset.

Split (the corpus README's, by position in the book, one speaker):
train ``LJ001-*`` and ``LJ002-0001`` .. ``LJ002-0120``; dev ``LJ002-0121`` .. ``LJ002-0160``;
test ``LJ002-0161`` .. ``LJ002-0200``.

Text: the normalized column, lower-cased; hyphens and dashes split words; every character that
is neither a letter nor an apostrophe is a word boundary; apostrophes at a word's ends (quotes)
are removed (``king's`` stays). Letters outside a-z (``müller``) are kept: the lexicon stage
reports them.

Writes, atomically, into ``--out-dir``:

* ``ljspeech_cuts_{train,dev,test}.jsonl.gz``: one supervision per clip (``text``: the words);
* ``text_{train,dev,test}``: Kaldi ``text`` files (``utt w1 w2 ...``);
* ``lm_text``: the sentences of every clip of ``metadata.csv`` except the dev and test clips,
  one per line without ids (the LM training text: the train clips' sentences are in it);
  ``lm_text_utt``: the same as a Kaldi text (``utt w1 w2 ...``), whose ids give the chapter
  and the order of the sentences (the masked LM's context);
* ``skipped.tsv``: ``utt reason detail`` of every clip left out (a split id whose audio is
  missing or does not decode, an empty transcript), also counted on stdout.

    python local/prepare_ljspeech.py --corpus-dir ../../../shared/data/ljspeech_part1 \\
        --out-dir data/manifests
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from wfst_asr.atomic import atomic_output, atomic_write_text, iter_text_lines

SPLITS = ("train", "dev", "test")
_ID_RE = re.compile(r"LJ(\d{3})-(\d{4})\Z")


def split_of(utt: str) -> str | None:
    """The split of a clip id (the corpus README's), None for clips in no split."""
    m = _ID_RE.match(utt)
    if m is None:
        return None
    chapter, n = int(m.group(1)), int(m.group(2))
    if chapter == 1 or (chapter == 2 and n <= 120):
        return "train"
    if chapter == 2 and n <= 160:
        return "dev"
    if chapter == 2 and n <= 200:
        return "test"
    return None


def normalize(text: str) -> list[str]:
    """The words of a normalized transcript (see the module docstring)."""
    text = re.sub(r"[-\u2010-\u2015]", " ", text.lower()).replace("\u2019", "'")
    words = (w.strip("'") for w in re.split(r"[^\w']+|_|\d", text))
    return [w for w in words if w]


def read_metadata(path: Path) -> list[tuple[str, list[str]]]:
    """``(id, words)`` per line of ``metadata.csv``; a malformed line is a ValueError naming
    the file and line."""
    out = []
    for no, line in enumerate(iter_text_lines(path), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 3 or not fields[0]:
            raise ValueError(f"{path}:{no}: expected 'ID|raw text|normalized text', got "
                             f"{len(fields)} field(s)")
        out.append((fields[0], normalize(fields[2])))
    return out


def write_cuts(cuts: CutSet, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp_gz = tmp + ".jsonl.gz"  # lhotse picks the format from the name
        cuts.to_file(tmp_gz)
        Path(tmp_gz).replace(tmp)


def _one_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return f"{type(e).__name__}: {' | '.join(lines)}"[:200]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus-dir", type=Path, required=True,
                   help="the folder with metadata.csv and flac/")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    args.corpus_dir = args.corpus_dir.resolve()  # manifests usable from any folder
    meta = args.corpus_dir / "metadata.csv"
    if not meta.is_file():
        print(f"prepare_ljspeech: error: {meta}: not found (pass --corpus-dir)", file=sys.stderr)
        return 2
    try:
        entries = read_metadata(meta)
    except (ValueError, OSError) as e:
        print(f"prepare_ljspeech: error: {e}", file=sys.stderr)
        return 2
    seen: set[str] = set()
    recs: dict[str, list[Recording]] = {s: [] for s in SPLITS}
    sups: dict[str, list[SupervisionSegment]] = {s: [] for s in SPLITS}
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    lm_lines: list[str] = []
    lm_ids: list[str] = []
    skipped: list[tuple[str, str, str]] = []
    for utt, words in entries:
        if utt in seen:
            skipped.append((utt, "duplicate", "id seen before in metadata.csv"))
            continue
        seen.add(utt)
        split = split_of(utt)
        if split not in ("dev", "test") and words:
            lm_lines.append(" ".join(words))
            lm_ids.append(utt)
        if split is None:
            continue
        if not words:
            skipped.append((utt, "empty_transcript", "no words"))
            continue
        audio = args.corpus_dir / "flac" / f"{utt}.flac"
        if not audio.is_file():
            skipped.append((utt, "no_audio", f"{audio}: not found"))
            continue
        try:
            rec = Recording.from_file(audio, recording_id=utt)
            rec.load_audio()  # decodes: a corrupt FLAC is found here, not in stage 1
        except Exception as e:  # noqa: BLE001 -- whatever the decoder raises: skip this clip
            skipped.append((utt, "bad_audio", f"{audio}: {_one_line(e)}"))
            continue
        recs[split].append(rec)
        sups[split].append(SupervisionSegment(
            id=utt, recording_id=utt, start=0.0, duration=rec.duration, channel=0,
            text=" ".join(words), language="English", speaker="LJ"))
        texts[split].append(f"{utt} {' '.join(words)}\n")
    if not any(recs.values()):
        print(f"prepare_ljspeech: error: {args.corpus_dir}: no clip of any split has usable "
              f"audio ({len(skipped)} skipped)", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs[split]),
                                     supervisions=SupervisionSet.from_segments(sups[split]))
        write_cuts(cuts, args.out_dir / f"ljspeech_cuts_{split}.jsonl.gz")
        atomic_write_text(args.out_dir / f"text_{split}", "".join(texts[split]))
        print(f"{split}: {len(recs[split])} clips, "
              f"{sum(r.duration for r in recs[split]) / 60:.1f} min")
    atomic_write_text(args.out_dir / "lm_text", "".join(f"{x}\n" for x in lm_lines))
    atomic_write_text(args.out_dir / "lm_text_utt",
                      "".join(f"{u} {x}\n" for u, x in zip(lm_ids, lm_lines)))
    atomic_write_text(args.out_dir / "skipped.tsv",
                      "".join(f"{u}\t{r}\t{d}\n" for u, r, d in skipped))
    n_words = sum(len(x.split()) for x in lm_lines)
    print(f"LM text: {len(lm_lines)} sentences, {n_words} words (dev and test clips left out) "
          f"-> {args.out_dir / 'lm_text'}")
    counts = Counter(r for _, r, _ in skipped)
    print(f"skipped {len(skipped)} clips" + (": " + ", ".join(
        f"{r} {n}" for r, n in sorted(counts.items())) if skipped else ""))
    for utt, reason, detail in skipped[:10]:
        print(f"  {utt} {reason}: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
