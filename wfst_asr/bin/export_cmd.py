"""``wfst-asr export`` / ``wfst-asr transcribe``: a trained CTC model as one self-contained
directory, and transcribing audio files with it (:mod:`wfst_asr.train.export`).

::

    wfst-asr export --exp-dir exp/ctc_tdnn --out model_dir --lang-dir data/lang \\
        --graph data/lang/HLG.pt
    wfst-asr transcribe --model model_dir a.wav b.flac            # FILE<TAB>words
    wfst-asr transcribe --model model_dir --ctm a.wav             # FILE 1 start dur word

A file that cannot be transcribed (missing, not audio, ...) is one line
``wfst-asr transcribe: error: FILE: what`` on stderr; the other files are still transcribed
and the exit code is 2.
"""

from __future__ import annotations

import argparse
import sys


def cmd_export(args: argparse.Namespace) -> int:
    from wfst_asr.train.export import export_model

    m = export_model(args.exp_dir, args.out, checkpoint=args.checkpoint, task=args.task,
                     lang_dir=args.lang_dir,
                     graph=args.graph, device=args.device, force=args.force,
                     lm_scale=args.lm_scale, word_penalty=args.word_penalty)
    extra = [x for x in ("lang dir" if m["lang"] else "", f"graph {m['graph']}" if m["graph"]
                         else "") if x]
    print(f"exported {m['model']} ({m['export']}d for {m['device']}) from {m['checkpoint']} "
          f"-> {args.out}; features {m['features_from']}"
          + (f"; with {', '.join(extra)}" if extra else ""))
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from wfst_asr.bin.cli import error_message, is_bad_input
    from wfst_asr.train.export import load_exported

    model = load_exported(args.model, args.device)
    if args.graph:
        model.set_graph(args.graph)

    def warn(msg: str) -> None:
        print(f"wfst-asr transcribe: warning: {msg}", file=sys.stderr)

    failed = 0
    for path in args.files:
        try:
            t = model.transcribe(path, warn, args.lm_scale, args.word_penalty)
        except Exception as e:
            if args.debug or not is_bad_input(e):
                raise
            print(f"wfst-asr transcribe: error: {error_message(e)}", file=sys.stderr)
            failed += 1
            continue
        lines = t.ctm(path) if args.ctm else [f"{path}\t{' '.join(t.words)}"]
        if lines:
            print("\n".join(lines), flush=True)
    return 2 if failed else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``transcribe`` to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser(
        "export", help="a trained CTC model as one self-contained directory",
        description="Write OUT: the network as TorchScript (model.pt), the feature extractor "
        "of the training features and its settings, the CMVN stats, config.json, the token "
        "table, and with --lang-dir / --graph the lang dir's text files and a decoding graph "
        "(export.json lists them). Written atomically: an error leaves no OUT.")
    p.add_argument("--exp-dir", required=True, help="config.json + averaged.pt / best.pt")
    p.add_argument("--out", required=True, help="the export directory to write")
    p.add_argument("--checkpoint", help="this checkpoint instead of averaged.pt / best.pt")
    p.add_argument("--task", help="a multi-task experiment: the task whose head is exported "
                   "(default: its first task)")
    p.add_argument("--lang-dir", help="a lang dir of the model's tokens (its *.txt are copied)")
    p.add_argument("--graph", metavar="HLG.pt",
                   help="a decoding graph (.pt or .fst) that transcribe uses by default")
    p.add_argument("--lm-scale", type=float,
                   help="graph decoding (default: EXP/decode/settings.json's tuned hlg "
                        "setting, else 1)")
    p.add_argument("--word-penalty", type=float,
                   help="graph decoding (default: the tuned setting, else 0)")
    p.add_argument("--device", default="cpu",
                   help="the device a traced network runs on (default cpu)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=cmd_export)

    t = sub.add_parser(
        "transcribe", help="transcribe audio files with an exported model",
        description="Read each audio file (wav, flac, ...; resampled to the model's rate with "
        "a warning), compute the training features, apply CMVN, run the network and print "
        "FILE<TAB>words (greedy CTC tokens without a graph, the graph's 1-best words with "
        "one), or Kaldi CTM lines with --ctm. A file that cannot be read is one error line; "
        "the others are still transcribed and the exit code is 2.")
    t.add_argument("--model", required=True, help="a directory of `wfst-asr export`")
    t.add_argument("--graph", metavar="HLG.pt",
                   help="decode with this graph (default: the export's graph, if any)")
    t.add_argument("--ctm", action="store_true", help="CTM lines: FILE 1 start duration word")
    t.add_argument("--lm-scale", type=float, help="graph decoding (default: the export's)")
    t.add_argument("--word-penalty", type=float, help="graph decoding (default: the export's)")
    t.add_argument("--device", help="where the network runs (default: the export's device)")
    t.add_argument("--debug", action="store_true", help="show the traceback of an error")
    t.add_argument("files", nargs="+", metavar="AUDIO", help="audio files")
    t.set_defaults(func=cmd_transcribe)
