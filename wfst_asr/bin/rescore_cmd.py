"""``wfst-asr make-lattices`` / ``wfst-asr rescore`` / ``wfst-asr cuts-text``: lattices of a
trained model and their second passes (lattice 1-best, n-gram whole-lattice rescoring, LSTM-LM
n-best rescoring, oracle), each setting tuned on dev and applied once to test
(:mod:`wfst_asr.train.rescoring`); ``cuts-text`` writes the transcripts the LMs train on.

::

    wfst-asr make-lattices --exp-dir exp/ctc --lang-dir data/lang \\
        --dev-cuts data/fbank/cuts_dev.jsonl.gz --test-cuts data/fbank/cuts_test.jsonl.gz \\
        --out-dir exp/ctc/lats
    wfst-asr cuts-text --cuts data/fbank/cuts_train.jsonl.gz --out exp/ctc/lm/text_train
    wfst-asr rescore --lat-dir exp/ctc/lats --lang-dir data/lang \\
        --dev-cuts data/fbank/cuts_dev.jsonl.gz --test-cuts data/fbank/cuts_test.jsonl.gz \\
        --ngram-arpa exp/ctc/lm/4gram.arpa --nnlm exp/ctc/lm/nnlm/lm.pt --out-dir exp/ctc/rescore

``rescore`` writes a decode directory (``OUT/<method>/<set>.hyp``, ``OUT/ref/<set>.ref``, the
sweep tables, ``settings.json``) and scores it as ``wfst-asr score`` does (reports
``OUT/<metric>_<method>_<set>.txt``, ``OUT/results.txt``). A bad input (a missing lattice
directory, a lang dir of another word table, a missing LM, ...) is one line on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wfst_asr.bin.decode_cmd import _add_map_args, _fold, _sets


def cmd_make_lattices(args: argparse.Namespace) -> int:
    from wfst_asr.train.rescoring import LatticeOptions, make_lattices

    opts = LatticeOptions(search_beam=args.search_beam, output_beam=args.output_beam,
                          max_active_states=args.max_active_states, lm_scale=args.lm_scale,
                          word_penalty=args.word_penalty, max_duration=args.max_duration,
                          ref_field=args.ref_field, device=args.device)
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.exp_dir) / "lats"
    make_lattices(args.exp_dir, _sets(args), out_dir, args.lang_dir, args.graph, opts)
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from wfst_asr.decode.grid import parse_grid
    from wfst_asr.train.rescoring import RescoreOptions, Rescorer, set_references

    opts = RescoreOptions(
        lm_scales=parse_grid(args.lm_scales), word_penalties=parse_grid(args.word_penalties),
        nbest=args.nbest, nbest_beam=args.nbest_beam, max_states=args.max_states,
        nnlm_lm_scales=parse_grid(args.nnlm_lm_scales) if args.nnlm_lm_scales else None,
        nnlm_scales=parse_grid(args.nnlm_scales),
        nnlm_word_penalties=(parse_grid(args.nnlm_word_penalties)
                             if args.nnlm_word_penalties else None),
        attention_scales=parse_grid(args.attention_scales),
        metric=args.metric, fold=_fold(args), tune_set=args.tune_set)
    if not opts.lm_scales or not opts.word_penalties or not opts.nnlm_scales:
        raise ValueError("empty --lm-scales, --word-penalties or --nnlm-scales")
    for path in (args.ngram_arpa, args.nnlm):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
    refs, spk = set_references(_sets(args), args.ref_field)
    rescorer = Rescorer(args.lat_dir, args.lang_dir, refs, spk, opts)
    out_dir = args.out_dir or str(Path(args.lat_dir).parent / "rescore")
    _, text = rescorer.run(out_dir, ngram=args.ngram_arpa, nnlm=args.nnlm,
                           attention=args.attention, cuts=_sets(args))
    print(text, end="")
    print(f"reports and results.txt in {out_dir}")
    return 0


def cmd_cuts_text(args: argparse.Namespace) -> int:
    from wfst_asr.atomic import atomic_write_text
    from wfst_asr.train.rescoring import set_references

    refs, _ = set_references({"cuts": args.cuts}, args.field)
    lines = [" ".join([u, *r]) + "\n" for u, r in refs["cuts"].items()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, "".join(lines))
    print(f"{len(lines)} transcripts ({args.field}) of {args.cuts} -> {args.out}",
          file=sys.stderr)
    return 0


def _add_set_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--dev-cuts", help=f"the dev set (name 'dev', the default tune set){what}")
    p.add_argument("--test-cuts", help=f"the test set (name 'test'){what}")
    p.add_argument("--cuts", action="append", metavar="NAME=PATH",
                   help="another set (repeatable)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``make-lattices``, ``rescore`` and ``cuts-text`` to the ``wfst-asr`` commands."""
    p = sub.add_parser(
        "make-lattices", help="lattices of a trained model with its HLG / HCLG",
        description="Run the model of an experiment directory (as `wfst-asr decode` loads it: "
        "CTC / HMM / MMI models, GMM dirs) once over each set and write its lattices with the "
        "lang dir's graph (or --graph), acoustic and graph scores kept per arc, to "
        "OUT/<set> (a lattice directory, replaced when it exists).")
    p.add_argument("--exp-dir", required=True, help="the experiment (or GMM) directory")
    p.add_argument("--lang-dir", required=True, help="lang dir (words.txt, tokens.txt, graph)")
    p.add_argument("--graph", metavar="FILE", help="a compiled HLG / HCLG (.pt or .fst)")
    _add_set_args(p, "")
    p.add_argument("--out-dir", help="default EXP/lats")
    p.add_argument("--search-beam", type=float, default=20.0)
    p.add_argument("--output-beam", type=float, default=6.0,
                   help="lattice beam (log-score units at --lm-scale)")
    p.add_argument("--max-active-states", type=int, default=10000)
    p.add_argument("--lm-scale", type=float, default=0.5,
                   help="graph-score scale of the search (rescore rescales the lattices)")
    p.add_argument("--word-penalty", type=float, default=0.0)
    p.add_argument("--max-duration", type=float, default=200.0, help="seconds per batch")
    p.add_argument("--ref-field", help="as decode's (a hybrid trained on alignments needs it)")
    p.add_argument("--device", help="where the model runs (default: cuda if available)")
    p.set_defaults(func=cmd_make_lattices)

    r = sub.add_parser(
        "rescore", help="lattice 1-best / n-gram / LSTM-LM rescoring and oracle, tuned on dev",
        description="On the lattices LAT_DIR/<set> of make-lattices: their best path "
        "(lat1best) over --lm-scales x --word-penalties; with --ngram-arpa, the lattices "
        "rescored with it (<N>gram, same grid); with --nnlm, the --nbest best word sequences "
        "at lat1best's setting reranked with the LSTM LM (nnlm, grid x --nnlm-scales); the "
        "lattice oracle. Every setting is chosen on the tune set only and applied once to the "
        "other sets. Writes OUT/<method>/<set>.hyp, OUT/ref/<set>.ref, "
        "OUT/<method>/sweep_<tune set>.txt and OUT/settings.json (the layout of `wfst-asr "
        "decode`), then scores them as `wfst-asr score` (OUT/<metric>_<method>_<set>.txt, "
        "OUT/results.txt).")
    r.add_argument("--lat-dir", required=True, help="the folder of the sets' lattice dirs")
    r.add_argument("--lang-dir", required=True,
                   help="its words.txt (the lattices' word table) gives the hypotheses' words")
    _add_set_args(r, ": its cuts hold the references; its lattices are LAT_DIR/<name>")
    r.add_argument("--ngram-arpa", metavar="FILE",
                   help="an n-gram LM (ARPA, or a G .pt / .fst) for whole-lattice rescoring")
    r.add_argument("--nnlm", metavar="FILE", help="lm.pt of `wfst-asr train-nnlm`")
    r.add_argument("--attention", metavar="EXP_DIR",
                   help="attention-decoder rescoring of the n-best lists with this attention "
                   "model (the one whose CTC branch made the lattices; its encoder runs on "
                   "each set's cuts)")
    r.add_argument("--attention-scales", default="0,0.1,0.2,0.3,0.5,0.7,1.0",
                   help="the attention scores' weights tried (with lm scale x penalty)")
    r.add_argument("--lm-scales", default="0.1,0.2,0.3,0.5,0.7,1.0")
    r.add_argument("--word-penalties", default="-2,-1,0,1",
                   help="word insertion penalties tried with every lm scale (negative: bonus)")
    r.add_argument("--nbest", type=int, default=50, help="n-best entries per utterance")
    r.add_argument("--nbest-beam", type=float, default=1.0,
                   help="starting beam of the n-best search (widened until the list is exact)")
    r.add_argument("--max-states", type=int, default=20000, help="n-best determinization")
    r.add_argument("--nnlm-lm-scales", help="lm scales of the n-best sweep (default --lm-scales)")
    r.add_argument("--nnlm-scales", default="0,0.1,0.2,0.3,0.5,0.7,1.0")
    r.add_argument("--nnlm-word-penalties",
                   help="penalties of the n-best sweep (default --word-penalties)")
    r.add_argument("--tune-set", default="dev", help="the set every setting is chosen on")
    r.add_argument("--ref-field", default="text",
                   help="supervision field of the references ('text': the supervision text)")
    _add_map_args(r)
    r.add_argument("--metric", default="WER", type=str.upper, choices=("WER", "CER", "PER"),
                   help="the error rate the tuning minimises (default WER)")
    r.add_argument("--out-dir", help="the decode directory (default LAT_DIR/../rescore)")
    r.set_defaults(func=cmd_rescore)

    t = sub.add_parser(
        "cuts-text", help="the references of a cuts manifest as a Kaldi text file",
        description="Write 'utt w1 w2 ...' lines (manifest order) of a supervision field of "
        "every cut, e.g. the training transcripts of estimate-lm / train-nnlm.")
    t.add_argument("--cuts", required=True, help="a lhotse cuts manifest")
    t.add_argument("--field", default="text",
                   help="supervision field ('text': the supervision text; else a custom field)")
    t.add_argument("--out", required=True, help="the text file (written atomically)")
    t.set_defaults(func=cmd_cuts_text)
