"""``wfst-asr train-nnlm`` / ``nnlm-sweep``: the neural LM of n-best rescoring.

``train-nnlm`` trains the LSTM LM on transcripts; ``nnlm-sweep`` tunes the LM scale, the neural
LM scale and the word penalty on a dev lattice directory (a table of error rates, the best
setting as JSON), to be given to ``lattice-rescore --mode nbest-nnlm`` on the test set.

The LM is word-level over a word table (the lattices' ``words.txt``; for TIMIT the words are
phones): each line of the text (``utt w1 w2 ...``, Kaldi's ``text``) becomes the ids of its
words. Lines with a word not in the table are skipped and counted (``--oov error``: a fatal
error naming the line). ``EXP_DIR/lm.pt`` is what ``wfst-asr lattice-rescore --mode
nbest-nnlm --lm-model`` reads; it records the word table's checksum.
"""

from __future__ import annotations

import argparse
import math
import sys


def read_text_ids(path: str, words, utt_ids: bool = True, oov: str = "skip"
                  ) -> tuple[list[list[int]], int]:
    """``(sequences, skipped)``: the word ids of each line of a text file (first field an
    utterance id when ``utt_ids``); ``oov``: ``skip`` lines with a word not in ``words``, or
    ``error`` (ValueError naming the line)."""
    from wfst_asr.atomic import iter_text_lines

    seqs: list[list[int]] = []
    skipped = 0
    for n, line in enumerate(iter_text_lines(path), start=1):
        toks = line.split()
        if utt_ids:
            toks = toks[1:]
        bad = [t for t in toks if t not in words]
        if bad:
            if oov == "error":
                raise ValueError(f"{path}:{n}: word {bad[0]!r} is not in the word table")
            skipped += 1
            continue
        seqs.append([words[t] for t in toks])
    return seqs, skipped


def cmd_train_nnlm(args: argparse.Namespace) -> int:
    from wfst_asr.decode.lattice_io import symbol_table_checksum
    from wfst_asr.fsa import SymbolTable
    from wfst_asr.train.lm import train_lm

    try:
        words = SymbolTable.from_file(args.words)
        train, skipped = read_text_ids(args.text, words, not args.no_utt_id, args.oov)
        dev = None
        if args.dev_text:
            dev, dskip = read_text_ids(args.dev_text, words, not args.no_utt_id, args.oov)
            skipped += dskip
        if skipped:
            print(f"train-nnlm: skipped {skipped} lines with words not in {args.words}",
                  file=sys.stderr)
        model_kwargs = {"embed_dim": args.embed_dim, "hidden_dim": args.hidden_dim,
                        "num_layers": args.num_layers, "dropout": args.dropout}
        _, hist = train_lm(train, max(words.ids) + 1, args.exp_dir, dev, epochs=args.epochs,
                           batch_size=args.batch_size, lr=args.lr, model_kwargs=model_kwargs,
                           dev_fraction=args.dev_fraction, seed=args.seed,
                           device=args.device, resume=args.resume,
                           words_checksum=symbol_table_checksum(words))
    except RuntimeError as e:  # a checkpoint that cannot be resumed, a device, ...: one line
        if getattr(args, "debug", False):
            raise
        raise ValueError(str(e)) from e
    for r in hist:
        dev_ppl = "n/a" if r["dev_ppl"] is None else f"{r['dev_ppl']:.3f}"
        print(f"epoch {r['epoch']}: train ppl {r['train_ppl']:.3f}, dev ppl {dev_ppl}")
    best = min((r for r in hist if r["dev_ppl"] is not None), key=lambda r: r["dev_ppl"],
               default=None)
    if best is not None and math.isfinite(best["dev_ppl"]):
        print(f"best dev ppl {best['dev_ppl']:.3f} (epoch {best['epoch']}) -> "
              f"{args.exp_dir}/lm.pt")
    return 0


def cmd_nnlm_sweep(args: argparse.Namespace) -> int:
    from wfst_asr.bin.lattice_cmd import _guard, _Run, _scaled
    from wfst_asr.decode.grid import parse_grid
    from wfst_asr.decode.lattice_io import symbol_table_checksum
    from wfst_asr.decode.nbest import nbest_one
    from wfst_asr.decode.nnlm import add_nnlm_scores, error_rate, sweep
    from wfst_asr.train.checkpoint import CheckpointError
    from wfst_asr.train.lm import load_lm

    def run() -> int:
        import json

        from wfst_asr.atomic import atomic_write_text

        try:
            lm = load_lm(args.lm_model)
        except CheckpointError as e:
            raise ValueError(str(e)) from e
        refs: dict[str, list[str]] = {}
        with open(args.ref, encoding="utf-8") as f:
            for line in f:
                if line.split():
                    refs[line.split()[0]] = line.split()[1:]
        r = _Run("nnlm-sweep", args)
        words = r.reader.words
        if words is None:
            raise ValueError(f"{args.lat_dir} has no words.txt (give --words)")
        if lm.words_checksum is not None and lm.words_checksum != symbol_table_checksum(words):
            raise ValueError(f"the LM {args.lm_model} was trained over another word table than "
                             "the lattices'")
        nbests = {}
        for utt, lat in r.lattices():
            if utt not in refs:
                r.note(f"utterance {utt} has no reference: left out")
                continue
            try:
                nb = nbest_one(_scaled(args, lat), args.n, beam=args.nbest_beam,
                               max_states=args.max_states)
            except RuntimeError as e:
                r.skip("too-large", f"utterance {utt}: {e}")
                continue
            if any(not 0 <= w < lm.vocab_size for ws in nb.word_seqs for w in ws):
                r.skip("out-of-vocabulary", f"utterance {utt}: a word outside the LM's "
                       "vocabulary")
                continue
            nbests[utt] = nb
            r.done += 1
        add_nnlm_scores(list(nbests.values()), lm, batch_size=args.nnlm_batch_size)
        # utterances without a usable lattice count as all deletions
        def err(rs, hs):
            return error_rate(rs, [[str(words[w]) for w in h] for h in hs])
        res = sweep(nbests, refs, parse_grid(args.lm_scales), parse_grid(args.nnlm_scales),
                    parse_grid(args.word_penalties), error_fn=err, metric=args.metric)
        print(res.format_table(), end="")
        print(f"best: {res.describe()}: %{args.metric} {res.error:.2f}")
        if args.out:
            atomic_write_text(args.out, json.dumps(res.as_dict(), indent=2) + "\n")
        return r.finish(f" -> {args.out}" if args.out else "")
    return _guard("nnlm-sweep", run)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train-nnlm`` to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser("train-nnlm", help="train the LSTM LM for n-best rescoring",
                       description="Train a word-level LSTM LM (wfst_asr.models.lm) on a text "
                       "file with the project's trainer (Adam, dev perplexity, best-on-dev); "
                       "writes EXP_DIR/lm.pt for 'lattice-rescore --mode nbest-nnlm'.")
    p.add_argument("text", help="training text: 'utt w1 w2 ...' per line")
    p.add_argument("words", help="word table (the lattices' words.txt)")
    p.add_argument("exp_dir", help="output directory (checkpoints, lm.pt)")
    p.add_argument("--dev-text", default=None,
                   help="dev text (default: a random --dev-fraction of the training text)")
    p.add_argument("--dev-fraction", type=float, default=0.1)
    p.add_argument("--no-utt-id", action="store_true", help="lines have no utterance id")
    p.add_argument("--oov", choices=("skip", "error"), default="skip",
                   help="lines with a word not in the table: skip (counted) or error")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true",
                   help="continue after the newest epoch checkpoint in EXP_DIR")
    p.set_defaults(func=cmd_train_nnlm)

    p = sub.add_parser("nnlm-sweep", help="tune LM / neural LM scales and word penalty on dev",
                       description="Rerank the n-best lists of a dev lattice directory under "
                       "every (lm_scale, nnlm_scale, word_penalty) of the grid, print the error "
                       "rate of each setting against the reference text, and write the best "
                       "setting (ties: the smallest lm_scale, |word_penalty|, nnlm_scale) as "
                       "JSON (apply it with 'lattice-rescore --mode nbest-nnlm "
                       "--lm-scale S --nnlm-scale W --word-penalty P' on the test set). The "
                       "grid's lm_scale / word_penalty rescale the n-best scores; --lm-scale / "
                       "--word-penalty rescale the lattices before the n-best search.")
    p.add_argument("lat_dir", help="dev lattice directory")
    p.add_argument("ref", help="reference text: 'utt w1 w2 ...' per line")
    p.add_argument("--lm-model", required=True, help="lm.pt from train-nnlm")
    p.add_argument("--words", default=None, help="word table (default: the directory's)")
    p.add_argument("--lm-scales", default="0.5,1,1.5", help="comma-separated grid")
    p.add_argument("--nnlm-scales", default="0,0.25,0.5,1", help="comma-separated grid")
    p.add_argument("--word-penalties", default="0",
                   help="comma-separated grid (negative first: --word-penalties=-1,0,1)")
    p.add_argument("--lm-scale", type=float, default=None,
                   help="scale the lattices' LM scores before the n-best search")
    p.add_argument("--word-penalty", type=float, default=None,
                   help="word penalty of the lattices before the n-best search")
    p.add_argument("--n", type=int, default=100, help="n-best entries per utterance")
    p.add_argument("--nbest-beam", type=float, default=4.0)
    p.add_argument("--max-states", type=int, default=10000)
    p.add_argument("--nnlm-batch-size", type=int, default=256)
    p.add_argument("--metric", default="WER", help="name of the error rate in the table")
    p.add_argument("--out", default=None, help="write the best setting here (JSON)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_nnlm_sweep)
