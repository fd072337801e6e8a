"""``wfst-asr compute-features``, ``wfst-asr lexicon``, ``wfst-asr frame-labels`` and
``wfst-asr export-shar``: data preparation for any corpus."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FEATURES_DESCRIPTION = """\
Compute features of lhotse cut manifests (kaldi-native-fbank log-mel fbank or MFCC) into
OUT_DIR: the archives, OUT_DIR/<file name of each --cuts> (the cuts with features attached,
written atomically) and OUT_DIR/cmvn.pt, the global mean and standard deviation of the cuts of
--cmvn-from. Cuts whose audio cannot be read or featurised are skipped and counted. Warns when
--num-mel-bins is too large for a sampling rate of the cuts (and stops when kaldi-native-fbank
would refuse it).

  wfst-asr compute-features --cuts data/manifests/cuts_train.jsonl.gz \\
      --cuts data/manifests/cuts_test.jsonl.gz --out-dir data/fbank --num-jobs 4"""

LEXICON_DESCRIPTION = """\
Write a Kaldi lexicon.txt ("WORD PH1 PH2 ...", one line per pronunciation) for the words of
word lists, text files or lhotse supervision/cut manifests, from CMUdict (ARPAbet, stress
digits removed). Words are looked up case-insensitively and written as they appear in the
input. Words CMUdict lacks go to the OOV file (most frequent first), and their count to stderr.
With --bpe-model, words are spelled in the pieces of a sentencepiece model instead (a lang dir
of word pieces, as icefall's lang_bpe_500; no OOVs).

  wfst-asr lexicon --supervisions data/manifests/supervisions_train.jsonl.gz \\
      --strip-punctuation --out data/local/lexicon.txt"""

FRAME_LABELS_DESCRIPTION = """\
Add a per-frame label field to the supervisions of a cut manifest with features, from their
lhotse time alignments (wfst_asr.data.frame_labels): frame i takes the label of the alignment
item containing its centre. The result is what reference segmentations are read from (the
segmental losses' loss.frame_targets, boundary accuracy). Symbols that --map sends to nothing,
or does not know, give their frames to the item before them (counted). A supervision without
the alignment is dropped with its cut, named and counted; the output is written atomically.

  wfst-asr frame-labels --cuts data/fbank/timit_cuts_train.jsonl.gz --alignment phone \\
      --map local/phones.60-48-39.map --map-from 61 --map-to 48 --field phones_48_frames \\
      --out data/fbank/timit_cuts_train.jsonl.gz"""

SHAR_DESCRIPTION = """\
Write the cuts of a manifest as lhotse Shar shards in OUT: cuts.NNNNNN.jsonl.gz and, for each
--fields, one tar file per shard of SHARD_SIZE cuts (features as lilcom or numpy arrays,
recordings as flac). Training and decoding read such a directory as they read a manifest
(train_cuts=OUT, or shar:OUT), shard by shard with the data inside: a few large sequential
files instead of one small file per cut. The cuts are read lazily, written in a staging folder
and renamed to OUT when complete (a failure leaves nothing); an existing OUT is replaced only
when it is a Shar directory or empty. A cut without a requested field is an error naming it.

  wfst-asr export-shar --cuts data/fbank/cuts_train.jsonl.gz --out data/shar/train \\
      --fields features --shard-size 1000"""

_MANIFEST_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")


def _bad_manifest_line(path: Path) -> str:
    """``PATH:LINE: what`` of the first line of a JSON-lines manifest that is not a JSON
    object, or ``PATH`` when every line is (or the file is not JSON lines)."""
    import gzip
    import json

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for no, line in enumerate(f, start=1):
                if line.strip() and not isinstance(json.loads(line), dict):
                    return f"{path}:{no}: not a JSON object"
    except json.JSONDecodeError as e:
        return f"{path}:{no}: bad JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        return f"{path}: {e}"
    return str(path)


def load_cuts(path: Path):
    """``CutSet.from_file(path)``; a manifest that cannot be read (not gzip, bad JSON, not cuts)
    is a ValueError naming the file (and the line)."""
    from lhotse import CutSet

    try:
        cuts = CutSet.from_file(path).to_eager()
        for cut in cuts:
            cut.sampling_rate  # noqa: B018 -- a cut without a recording fails here
        return cuts
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError, EOFError) as e:
        raise _manifest_error(path, e) from None


def _manifest_error(path: Path, e: BaseException) -> ValueError:
    where = _bad_manifest_line(path)
    what = "" if ":" in where[len(str(path)):] else f": {type(e).__name__}: {e}"
    return ValueError(f"{where}{what} (not a readable lhotse manifest)")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _MANIFEST_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _pick_cuts(inputs: list[Path], choice: str, option: str = "--cmvn-from") -> Path | None:
    """The ``--cuts`` path named by ``option`` (a path, a file name, "first", "none")."""
    if choice == "none":
        return None
    if choice == "first":
        return inputs[0]
    for p in inputs:
        if p == Path(choice) or p.resolve() == Path(choice).resolve() or p.name == choice:
            return p
    raise ValueError(f"{option} {choice}: not one of the --cuts")


def _factors(text: str) -> list[float]:
    try:
        factors = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        factors = []
    if not factors or any(not 0.5 <= f <= 2.0 or f == 1.0 for f in factors):
        raise ValueError(f"--speed-perturb {text}: expected factors in [0.5, 2] other than 1, "
                         "e.g. 0.9,1.1")
    return factors


def _extractor(args: argparse.Namespace):
    from wfst_asr.data import make_extractor

    options = {}
    if args.num_mel_bins is not None:
        options["num_mel_bins"] = args.num_mel_bins
    if args.num_ceps is not None:
        if args.kind != "mfcc":
            raise ValueError("--num-ceps is for --kind mfcc")
        options["num_ceps"] = args.num_ceps
    return make_extractor(args.kind, **options)


def cmd_compute_features(args: argparse.Namespace) -> int:
    """Features + CMVN of every ``--cuts`` manifest. Bad arguments, an unreadable manifest or
    no CMVN frames raise (one line, exit code 2, through :func:`wfst_asr.bin.cli.main`)."""
    from lhotse.features.io import LilcomChunkyWriter, NumpyFilesWriter

    from wfst_asr.data import check_mel_bins

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    inputs = [Path(p) for p in args.cuts]
    out_dir = Path(args.out_dir)
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise ValueError(f"no such cuts manifest: {', '.join(missing)}")
    names = [p.name for p in inputs]
    if len(set(names)) != len(names):
        raise ValueError("two --cuts have the same file name (their outputs would collide)")
    if any((out_dir / p.name).resolve() == p.resolve() for p in inputs):
        raise ValueError("--out-dir holds the input manifests; choose another folder")
    cmvn_src = _pick_cuts(inputs, args.cmvn_from)
    extractor = _extractor(args)
    storage_type = {"auto": None, "lilcom": LilcomChunkyWriter,
                    "numpy": NumpyFilesWriter}[args.storage]
    cut_sets = [load_cuts(src) for src in inputs]
    which = _pick_cuts(inputs, args.perturb_cuts, "--perturb-cuts")
    if args.speed_perturb and which is not None:
        factors = _factors(args.speed_perturb)
        k = inputs.index(which)
        base = cut_sets[k]
        cut_sets[k] = base + sum((base.perturb_speed(f) for f in factors[1:]),
                                 start=base.perturb_speed(factors[0]))
        print(f"[{which.name}] speed perturbation x{', x'.join(map(str, factors))}: "
              f"{len(base)} -> {len(cut_sets[k])} cuts", flush=True)
    rates = sorted({c.sampling_rate for cuts in cut_sets for c in cuts})
    for check in (check_mel_bins(extractor.config, rate) for rate in rates):
        if check.rejected:
            raise ValueError(check.message())
        if not check.ok:
            print(f"compute-features: warning: {check.message()}", file=sys.stderr)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _compute_all(args, inputs, cut_sets, out_dir, cmvn_src, extractor, storage_type)
    except BaseException:
        if created:  # nothing of a previous run there: leave nothing behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _compute_all(args: argparse.Namespace, inputs: list[Path], cut_sets: list, out_dir: Path,
                 cmvn_src: Path | None, extractor, storage_type) -> int:
    from wfst_asr.data import compute_features, compute_global_cmvn

    all_skipped: list[tuple[str, str, str]] = []
    cmvn_cuts = None
    for src, cuts in zip(inputs, cut_sets):
        dst = out_dir / src.name
        t0 = time.perf_counter()
        print(f"[{src.name}] {len(cuts)} cuts -> {dst}", flush=True)
        res = compute_features(cuts, out_dir, extractor, num_jobs=args.num_jobs,
                               storage_type=storage_type, manifest_path=dst,
                               storage_name=f"feats_{_stem(src)}")
        print(f"[{src.name}] {len(res.cuts)} cuts with features, {len(res.skipped)} skipped "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        all_skipped += [(src.name, cid, why) for cid, why in res.skipped]
        if src == cmvn_src:
            cmvn_cuts = res.cuts
    if all_skipped:
        print(f"skipped cuts ({len(all_skipped)}):")
        for name, cid, why in all_skipped[:20]:
            print(f"  {name} {cid}: {why}")
        if len(all_skipped) > 20:
            print(f"  ... and {len(all_skipped) - 20} more")
    if cmvn_src is None:
        return 0
    if cmvn_cuts is None or len(cmvn_cuts) == 0:
        raise ValueError(f"{cmvn_src}: no cut has features; no CMVN")
    cmvn_path = out_dir / "cmvn.pt"
    mean, _ = compute_global_cmvn(cmvn_cuts, cmvn_path)
    print(f"global CMVN over the {len(cmvn_cuts)} cuts of {cmvn_src.name} ({mean.numel()} dims)"
          f" -> {cmvn_path}")
    return 0


def cmd_lexicon(args: argparse.Namespace) -> int:
    """CMUdict lexicon of the words of the inputs; OOVs to a file. No input, no word, no word
    in CMUdict or an unreadable input raise (one line, exit code 2, through
    :func:`wfst_asr.bin.cli.main`)."""
    import json
    from collections import Counter

    from wfst_asr.atomic import atomic_write_text, check_utf8
    from wfst_asr.graphs.lang import write_lexicon
    from wfst_asr.graphs.lexicon import (
        lookup_cmudict,
        read_word_list,
        words_from_supervisions,
        words_from_text,
    )

    if not (args.words or args.text or args.supervisions):
        raise ValueError("give --words, --text or --supervisions")
    counts: Counter[str] = Counter()
    path = ""
    try:
        for path in args.words:
            counts.update(read_word_list(path))
        for path in args.text:
            counts.update(words_from_text(path, skip_first=args.utt_ids,
                                          strip_punctuation=args.strip_punctuation))
        for path in args.supervisions:
            counts.update(words_from_supervisions(path, args.strip_punctuation))
    except UnicodeDecodeError:
        check_utf8(path)  # raises, naming the file and line
        raise
    except json.JSONDecodeError as e:
        raise _manifest_error(Path(path), e) from None
    except (TypeError, KeyError, EOFError) as e:
        raise ValueError(f"{path}: {type(e).__name__}: {e}") from None
    except OSError as e:
        if e.filename is None:  # e.g. gzip's "not a gzipped file"
            raise ValueError(f"{path}: {e}") from None
        raise
    except ValueError as e:
        raise ValueError(e if path in str(e) else f"{path}: {e}") from None
    if not counts:
        inputs = args.words + args.text + args.supervisions
        raise ValueError(f"no words in the input ({', '.join(inputs)})")
    if args.bpe_model:  # word pieces: every word has a spelling, no OOVs
        from wfst_asr.graphs.bpe import bpe_lexicon

        entries, oovs = bpe_lexicon(sorted(counts), args.bpe_model), []
    else:
        entries, oovs = lookup_cmudict(counts, args.max_prons)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    oov_file = Path(args.oov_file) if args.oov_file else out.with_name(f"{_stem(out)}_oovs.txt")
    oovs.sort(key=lambda w: (-counts[w], w))
    write_lexicon(out, entries)
    atomic_write_text(oov_file, "".join(f"{w}\n" for w in oovs))
    n_words = len(counts) - len(oovs)
    oov_tokens = sum(counts[w] for w in oovs)
    print(f"lexicon: {n_words} words, {len(entries)} pronunciations -> {out}", file=sys.stderr)
    print(f"lexicon: {len(oovs)} of {len(counts)} words are OOVs ({oov_tokens} of "
          f"{sum(counts.values())} tokens) -> {oov_file}", file=sys.stderr)
    if not entries:
        raise ValueError("no word of the input is in CMUdict")
    return 0


def cmd_frame_labels(args: argparse.Namespace) -> int:
    from lhotse import CutSet

    from wfst_asr.atomic import atomic_output
    from wfst_asr.data.frame_labels import FrameLabelError, frame_labels

    try:
        mapping = None
        if args.map:
            from wfst_asr.scoring.text import load_phone_map

            mapping = load_phone_map(args.map).mapping(args.map_to, args.map_from)
        cuts = load_cuts(Path(args.cuts))
    except (OSError, ValueError, KeyError) as e:
        print(f"wfst-asr frame-labels: error: {e}", file=sys.stderr)
        return 2
    out, bad, dropped = [], [], 0
    for cut in cuts:
        if not cut.has_features:
            print(f"wfst-asr frame-labels: error: {args.cuts}: cut {cut.id} has no features "
                  "(run compute-features first)", file=sys.stderr)
            return 2
        try:
            for sup in cut.supervisions:
                items = (sup.alignment or {}).get(args.alignment)
                if not items:
                    raise FrameLabelError(f"no {args.alignment!r} alignment")
                labels, n = frame_labels(items, cut.num_frames, cut.frame_shift, mapping,
                                         offset=sup.start)
                dropped += n
                sup.custom = {**(sup.custom or {}), args.field: " ".join(labels)}
        except FrameLabelError as e:
            bad.append(cut.id)
            print(f"wfst-asr frame-labels: skipping cut {cut.id}: {e}", file=sys.stderr)
            continue
        out.append(cut)
    with atomic_output(args.out) as tmp:
        CutSet.from_cuts(out).to_file(tmp)
    print(f"{len(out)} cuts with {args.field!r} ({dropped} alignment items dropped by the map, "
          f"{len(bad)} cuts skipped) -> {args.out}", file=sys.stderr)
    return 0


def cmd_export_shar(args: argparse.Namespace) -> int:
    """``--cuts`` as Shar shards in ``--out`` (atomically). Bad arguments, an unreadable
    manifest or a cut without a requested field raise (one line, exit code 2, through
    :func:`wfst_asr.bin.cli.main`)."""
    from wfst_asr.data.dataset import open_cuts

    if args.shard_size < 1:
        raise ValueError(f"--shard-size {args.shard_size}: expected a positive number of cuts")
    cuts = open_cuts(args.cuts)
    first = next(iter(cuts), None)
    if first is None:
        raise ValueError(f"{args.cuts}: no cuts")
    fields = _shar_fields(args, first)
    checked = cuts.map(_FieldCheck(args.cuts, list(fields)))
    t0 = time.perf_counter()
    with _staged_dir(Path(args.out)) as stage:
        written = checked.to_shar(stage, fields=fields, shard_size=args.shard_size,
                                  warn_unused_fields=False)
    n = sum(1 for _ in open_cuts(args.out, metadata_only=True))
    print(f"export-shar: {n} cuts in {len(written['cuts'])} shards of at most "
          f"{args.shard_size} ({', '.join(f'{k} as {v}' for k, v in fields.items())}) -> "
          f"{args.out} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


def _shar_fields(args: argparse.Namespace, first) -> dict[str, str]:
    """``{field: format}`` for ``to_shar``: ``--fields``, or the features when the first cut
    has them, else the recording."""
    names = args.fields or ["features" if first.has_features else "recording"]
    fmt = {"features": args.features_format, "recording": args.audio_format}
    return {name: fmt[name] for name in dict.fromkeys(names)}


class _FieldCheck:
    """``cut`` unchanged, or a ValueError naming the manifest and the cut when it lacks one
    of ``fields`` (lhotse would write a shard with a hole)."""

    def __init__(self, path: str, fields: list[str]) -> None:
        self.path, self.fields = path, fields

    def __call__(self, cut):
        for name in self.fields:
            if not getattr(cut, f"has_{name}"):
                raise ValueError(f"{self.path}: cut {cut.id} has no {name} (--fields)")
        return cut


@contextmanager
def _staged_dir(out: Path) -> Iterator[Path]:
    """A new staging folder next to ``out``, renamed to ``out`` when the block succeeds (an
    existing ``out``, a Shar directory or empty, is replaced); removed on an exception."""
    from wfst_asr.atomic import _umask
    from wfst_asr.data.dataset import shar_dir

    parent = out.absolute().parent
    if not parent.is_dir():
        raise FileNotFoundError(2, "no such directory", str(parent))
    if out.exists() and not (out.is_dir() and (shar_dir(out) or not any(out.iterdir()))):
        raise ValueError(f"{out}: exists and is not a Shar directory (not replaced)")
    stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-shar-{os.getpid()}-"))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())
        old = parent / f".old-shar-{os.getpid()}-{out.name}"
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(stage, out)
        except BaseException:
            if old.exists():
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``compute-features``, ``lexicon``, ``frame-labels`` and ``export-shar`` to the
    ``wfst-asr`` sub-commands."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("compute-features", help="fbank/MFCC features + global CMVN of cuts",
                       description=FEATURES_DESCRIPTION, formatter_class=fmt)
    p.add_argument("--cuts", action="append", required=True,
                   help="a lhotse cut manifest with recordings (repeatable)")
    p.add_argument("--out-dir", required=True,
                   help="output folder: archives, the manifests, cmvn.pt")
    p.add_argument("--kind", choices=("fbank", "mfcc"), default="fbank")
    p.add_argument("--num-mel-bins", type=int, default=None,
                   help="mel bins (default 80 for fbank, 23 for mfcc)")
    p.add_argument("--num-ceps", type=int, default=None, help="cepstra of mfcc (default 13)")
    p.add_argument("--cmvn-from", default="first",
                   help="the --cuts (path or file name) whose features give cmvn.pt; 'first' "
                        "(default): the first --cuts; 'none': no CMVN")
    p.add_argument("--storage", choices=("auto", "lilcom", "numpy"), default="auto",
                   help="archive format: lilcom (lossy, compact), numpy (lossless .npy files); "
                        "auto (default): lilcom when installed")
    p.add_argument("--num-jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--speed-perturb", default=None, metavar="F1,F2",
                   help="add speed-perturbed copies (lhotse, ids suffixed _spF) of the cuts of "
                        "--perturb-cuts, e.g. 0.9,1.1 (Kaldi's and icefall's 3-way perturbation)")
    p.add_argument("--perturb-cuts", default="first",
                   help="the --cuts (path or file name) to perturb (default: the first)")
    p.set_defaults(func=cmd_compute_features)

    p = sub.add_parser("lexicon", help="a Kaldi lexicon.txt of words from CMUdict",
                       description=LEXICON_DESCRIPTION, formatter_class=fmt)
    p.add_argument("--words", action="append", default=[],
                   help="a word list: the first field of each line (repeatable)")
    p.add_argument("--text", action="append", default=[],
                   help="a text file: every token is a word (repeatable)")
    p.add_argument("--utt-ids", action="store_true",
                   help="--text lines start with an utterance id (Kaldi text): skip it")
    p.add_argument("--supervisions", action="append", default=[],
                   help="a lhotse supervision or cut manifest: the words of the texts "
                        "(repeatable)")
    p.add_argument("--strip-punctuation", action="store_true",
                   help="drop leading/trailing punctuation (not apostrophes) of text words")
    p.add_argument("--out", "-o", required=True, help="the lexicon.txt to write")
    p.add_argument("--oov-file", default=None,
                   help="where to list the words CMUdict lacks (default: <out stem>_oovs.txt "
                        "next to --out)")
    p.add_argument("--bpe-model", default=None,
                   help="spell the words in the pieces of this sentencepiece model "
                        "(`wfst-asr train-bpe`) instead of CMUdict phones")
    p.add_argument("--max-prons", type=int, default=None,
                   help="at most N pronunciations per word (CMUdict's first; default: all)")
    p.set_defaults(func=cmd_lexicon)

    p = sub.add_parser("frame-labels", help="a per-frame label field from time alignments",
                       description=FRAME_LABELS_DESCRIPTION, formatter_class=fmt)
    p.add_argument("--cuts", required=True, help="a cut manifest with features")
    p.add_argument("--out", required=True, help="the cut manifest to write (may be --cuts)")
    p.add_argument("--alignment", default="phone",
                   help="the supervisions' alignment type (default: phone)")
    p.add_argument("--field", required=True, help="the supervision custom field to write")
    p.add_argument("--map", default=None, help="a symbol map table (columns of symbol sets)")
    p.add_argument("--map-from", default=None, help="the map's column of the alignment symbols")
    p.add_argument("--map-to", default=None, help="the map's column of the labels")
    p.set_defaults(func=cmd_frame_labels)

    p = sub.add_parser("export-shar", help="lhotse Shar shards of a cut manifest",
                       description=SHAR_DESCRIPTION, formatter_class=fmt)
    p.add_argument("--cuts", required=True, help="a cut manifest (or a Shar directory)")
    p.add_argument("--out", required=True, help="the Shar directory to write")
    p.add_argument("--shard-size", type=int, default=1000, help="cuts per shard (default 1000)")
    p.add_argument("--fields", nargs="+", choices=("features", "recording"), default=None,
                   help="what to store with the cuts (default: features when the cuts have "
                        "them, else recording)")
    p.add_argument("--features-format", choices=("lilcom", "numpy"), default="lilcom",
                   help="features as lilcom (lossy, compact; default) or numpy (lossless)")
    p.add_argument("--audio-format", choices=("flac", "wav"), default="flac",
                   help="recordings as flac (lossless, compact; default) or wav")
    p.set_defaults(func=cmd_export_shar)
