"""``wfst-asr decode`` / ``wfst-asr score``: decode data sets with a trained model, then score
the hypotheses, as Kaldi splits decoding and scoring (:mod:`wfst_asr.train.decoder`,
:mod:`wfst_asr.scoring.decode_dir`).

::

    wfst-asr decode --exp-dir exp/ctc_blstm --lang-dir data/lang_phone \\
        --dev-cuts data/fbank/cuts_dev.jsonl.gz --test-cuts data/fbank/cuts_test.jsonl.gz \\
        --metric PER --map phones.60-48-39.map --map-from 48 --map-to 39
    wfst-asr score --decode-dir exp/ctc_blstm/decode

``decode`` runs the model once per set, decodes with every method of its loss (``--methods``),
tunes the graph methods' lm_scale x word penalty on dev and writes ``OUT/<method>/<set>.hyp``,
``OUT/ref/<set>.ref``, the sweep tables and ``OUT/settings.json``. ``score`` writes Kaldi-style
reports ``OUT/<metric>_<method>_<set>.txt`` and ``OUT/results.txt``. An unusable input (a
missing exp dir, a lang dir of other tokens, an unknown method, ...) is one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _fail(cmd: str, args: argparse.Namespace, e: Exception) -> int:
    from wfst_asr.bin.cli import error_message

    if getattr(args, "debug", False):
        raise e
    print(f"wfst-asr {cmd}: error: {error_message(e)}", file=sys.stderr)
    return 2


def _fold(args: argparse.Namespace):
    """The :class:`~wfst_asr.scoring.Fold` of ``--map/--map-from/--map-to``, or None."""
    from wfst_asr.scoring import Fold

    given = [args.map, args.map_from, args.map_to]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("--map, --map-from and --map-to go together")
    if not Path(args.map).is_file():
        raise ValueError(f"{args.map}: no such map file")
    return Fold.load(args.map, args.map_from, args.map_to)


def _sets(args: argparse.Namespace) -> dict[str, str]:
    sets: dict[str, str] = {}
    pairs = [("dev", args.dev_cuts), ("test", args.test_cuts)]
    for item in args.cuts or []:
        name, sep, path = item.partition("=")
        if not sep:  # a bare path: named after the file (cuts_test.jsonl.gz: cuts_test)
            from wfst_asr.train.jobs import set_name

            name, path = set_name(item), item
        if not name or not path:
            raise ValueError(f"--cuts takes PATH or NAME=PATH, got {item!r}")
        pairs.append((name, path))
    for name, path in pairs:
        if path is None:
            continue
        if name in sets:
            raise ValueError(f"set {name!r} given twice")
        if "/" in name or name in ("ref", ".", ".."):
            raise ValueError(f"bad set name {name!r}")
        sets[name] = path
    return sets


def cmd_decode(args: argparse.Namespace) -> int:
    from wfst_asr.decode.grid import parse_grid
    from wfst_asr.train.decoder import DecodeOptions, Decoder

    try:
        methods = [m for m in args.methods.split(",") if m.strip()] if args.methods else None
        opts = DecodeOptions(methods=methods, lm_scales=parse_grid(args.lm_scales),
                             word_penalties=parse_grid(args.word_penalties),
                             search_beam=args.search_beam, max_active=args.max_active,
                             max_duration=args.max_duration,
                             beam_size=args.beam_size, max_states=args.max_states,
                             max_contexts=args.max_contexts, metric=args.metric,
                             fold=_fold(args), tune_set=args.tune_set, ref_field=args.ref_field,
                             prior_scale=args.prior_scale, acoustic_scale=args.acoustic_scale,
                             device=args.device, forced_best=args.forced_best,
                             text_lm=args.text_lm, mlm=args.mlm, ctc_weight=args.ctc_weight,
                             max_len_ratio=args.max_len_ratio, dbd_config=args.dbd_config,
                             dbd_max_active=[int(k) for k in parse_grid(args.dbd_max_active)],
                             checkpoint=args.checkpoint, task=args.task)
        sets = _sets(args)
        if args.watch:
            return _watch(args, opts, sets)
        out_dir = Path(args.out_dir) if args.out_dir else Path(args.exp_dir) / "decode"
        dec = Decoder(args.exp_dir, args.lang_dir, args.graph, opts)
        settings = dec.run(sets, out_dir)
    except (ValueError, OSError) as e:
        return _fail("decode", args, e)
    chosen = [f"{m}: {', '.join(f'{k} {v:g}' for k, v in i['setting'].items())}"
              for m, i in settings["methods"].items() if i.get("setting")]
    print(f"decoded {', '.join(sets)} with {', '.join(settings['methods'])} -> {out_dir}"
          + (f" ({'; '.join(chosen)})" if chosen else ""))
    return 0


def _watch(args: argparse.Namespace, opts, sets: dict[str, str]) -> int:
    """``decode --watch``: every new checkpoint of the exp dir (:mod:`wfst_asr.train.jobs`)."""
    import dataclasses
    import logging

    from wfst_asr.train.decoder import DecodeError, Decoder
    from wfst_asr.train.jobs import run_decode_job

    if args.checkpoint:
        raise DecodeError("--watch decodes every checkpoint: no --checkpoint with it")
    if not sets:
        raise DecodeError("no cuts to decode (give --dev-cuts / --test-cuts / --cuts)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.exp_dir) / "decode_watch"

    def make(path: Path) -> Decoder:
        return Decoder(args.exp_dir, args.lang_dir, args.graph,
                       dataclasses.replace(opts, checkpoint=str(path)))

    table = run_decode_job(args.exp_dir, sets, out_dir, make, watch=True, poll=args.poll,
                           max_wait=args.max_wait)
    print(f"results per checkpoint in {table}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from wfst_asr.scoring import score_decode_dir

    try:
        _, text = score_decode_dir(args.decode_dir, args.metric, _fold(args))
    except (ValueError, OSError) as e:
        return _fail("score", args, e)
    print(text, end="")
    print(f"reports and results.txt in {args.decode_dir}")
    return 0


def _add_map_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", metavar="FILE",
                   help="a folding table (e.g. TIMIT's phones.60-48-39.map) applied to "
                        "references and hypotheses before scoring")
    p.add_argument("--map-from", metavar="COLUMN",
                   help="the table column of the symbols (a '# a b c' header names the "
                        "columns, else 61 48 39 for three, else 1 2 ...)")
    p.add_argument("--map-to", metavar="COLUMN", help="the column they are folded to")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``decode`` and ``score`` to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser(
        "decode", help="decode data sets with a trained model (hypotheses, no scores)",
        description="Run the model of an experiment directory once over each set and decode "
        "with every method of its loss (ctc: greedy,hlg,kaldi; hmm/mmi: greedy,hclg (hlg for "
        "a CTC topology),kaldi; transducer: greedy,beam,fast_beam,fast_beam_lg[,aux_ctc]; a "
        "GMM dir with gmm.pt: hclg,kaldi). Graph methods tune lm_scale x word penalty on the "
        "tune set and decode the others once at that setting; kaldi decodes at the engine "
        "method's setting. Writes OUT/<method>/<set>.hyp, OUT/ref/<set>.{ref,utt2spk}, "
        "OUT/<method>/sweep_<tune set>.txt and OUT/settings.json; `wfst-asr score` scores them.")
    p.add_argument("--exp-dir", required=True,
                   help="config.json + averaged.pt/best.pt of `wfst-asr train`, or a GMM dir "
                        "with gmm.pt")
    p.add_argument("--dev-cuts", help="the dev set (name 'dev', the default tune set)")
    p.add_argument("--test-cuts", help="the test set (name 'test')")
    p.add_argument("--cuts", action="append", metavar="[NAME=]PATH",
                   help="another set (repeatable; named after the file without NAME=)")
    p.add_argument("--lang-dir", help="lang dir of the graphs (its tokens must be the model's)")
    p.add_argument("--graph", metavar="FILE",
                   help="a compiled HLG / HCLG / LG (.pt or .fst) instead of the lang dir's")
    p.add_argument("--methods", help="comma-separated (default: all that apply)")
    p.add_argument("--lm-scales", default="0.1,0.2,0.3,0.5,0.7,1.0")
    p.add_argument("--word-penalties", default="-2,-1,0,1",
                   help="word insertion penalties tried with every lm scale (negative: bonus)")
    p.add_argument("--tune-set", default="dev", help="the set the graph methods are tuned on")
    p.add_argument("--search-beam", type=float, default=20.0)
    p.add_argument("--max-active", type=int, default=10000,
                   help="active states per utterance and frame (engine and Kaldi's decoder)")
    p.add_argument("--max-duration", type=float, default=200.0, help="seconds per batch")
    p.add_argument("--beam-size", type=int, default=4, help="transducer modified beam search")
    p.add_argument("--max-states", type=int, default=64, help="transducer fast beam search")
    p.add_argument("--max-contexts", type=int, default=8, help="transducer fast beam search")
    p.add_argument("--ref-field",
                   help="supervision field of the references ('text': the supervision text; "
                        "default: the model's token_field)")
    p.add_argument("--prior-scale", type=float,
                   help="HMM models: alpha of log p(s|x) - alpha log p(s) (default: the "
                        "model's loss.prior_scale)")
    p.add_argument("--acoustic-scale", type=float,
                   help="GMM: the log-likelihood scale (default: its training option)")
    _add_map_args(p)
    p.add_argument("--metric", default="WER", type=str.upper, choices=("WER", "CER", "PER"),
                   help="the error rate the tuning minimises (default WER)")
    p.add_argument("--forced-best", action="store_true",
                   help="after the engine's graph method, score each wrong utterance's "
                   "reference and 1-best in the graph: search errors (the reference scores "
                   "higher) vs model errors, per set in settings.json and "
                   "METHOD/forced_best_SET.tsv")
    p.add_argument("--dbd-config", metavar="YAML",
                   help="method dbd for a CTC model: the decoding graph and beams of this "
                   "config of loss dbd (its LM with the ARPA's weights)")
    p.add_argument("--dbd-max-active", default="", metavar="K,K,...",
                   help="method dbd also with at most K active states each (methods dbd_K): "
                   "the error rate against the beam")
    p.add_argument("--text-lm", metavar="TEXTLM_PT",
                   help="attention models: a left-to-right LM over the model's tokens "
                   "(wfst-asr train-mlm --objective causal) for methods fusion and rescore_lm")
    p.add_argument("--mlm", metavar="TEXTLM_PT",
                   help="attention models: a masked LM over the model's tokens (wfst-asr "
                   "train-mlm) for method rescore_mlm")
    p.add_argument("--ctc-weight", type=float, default=0.3,
                   help="attention method beam_ctc: weight of the CTC prefix score")
    p.add_argument("--max-len-ratio", type=float, default=1.0,
                   help="attention methods: at most this many tokens per encoder frame")
    p.add_argument("--out-dir", help="the decode directory (default EXP/decode; with --watch "
                   "EXP/decode_watch, one folder per checkpoint and results.tsv)")
    p.add_argument("--task", help="a multi-task experiment: the task whose head decodes "
                   "(default: its first task)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="decode with this checkpoint of the run (epoch-N.pt, step-G.pt) "
                   "instead of averaged.pt / best.pt")
    p.add_argument("--watch", action="store_true",
                   help="a decoder job: decode every new complete checkpoint of the exp dir "
                   "as training writes them, until the trainer's training-done; error rates "
                   "per checkpoint step in OUT/results.tsv and TensorBoard OUT/tensorboard")
    p.add_argument("--poll", type=float, default=30.0, help="--watch: seconds between looks")
    p.add_argument("--max-wait", type=float,
                   help="--watch: stop after this many seconds without a new checkpoint")
    p.add_argument("--device", help="where the model runs (default: cuda if available)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=cmd_decode)

    s = sub.add_parser(
        "score", help="score a decode directory (per-speaker reports, results.txt)",
        description="Score every OUT/<method>/<set>.hyp against OUT/ref/<set>.ref: Kaldi-style "
        "reports OUT/<metric>_<method>_<set>.txt (per-speaker breakdown) and OUT/results.txt "
        "(one line per method x set with the chosen setting, and the share of identical "
        "1-best hypotheses of kaldi and the engine). --metric and --map default to those "
        "decode used.")
    s.add_argument("--decode-dir", required=True)
    _add_map_args(s)
    s.add_argument("--metric", type=str.upper, choices=("WER", "CER", "PER"),
                   help="default: decode's")
    s.add_argument("--debug", action="store_true", help="show the traceback of an error")
    s.set_defaults(func=cmd_score)
