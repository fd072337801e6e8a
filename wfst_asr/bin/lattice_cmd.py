"""``wfst-asr lattice-*``: tools that stream over a lattice directory.

A lattice directory is what :class:`wfst_asr.decode.lattice_io.LatticeWriter` writes
(``meta.json``, ``index.tsv``, ``words.txt``, ``lat.*.pt``). Every tool reads it utterance by
utterance with a progress bar; a lattice that cannot be used (truncated or corrupt file, a word
table other than the expected one, an empty lattice) is reported with its utterance id, skipped
and counted. Outputs are written atomically: text files appear complete or not at all, and an
output lattice directory gets its ``index.tsv`` only when the tool finishes (its files are
staged and swapped in then, so the output may be the input directory itself, with
``--overwrite``). Exit status 0 when at least one lattice was processed (or there were none),
1 when every lattice was skipped; a bad input (a missing or corrupt directory, an existing
output without ``--overwrite``, a G over another word table) is raised, and ``wfst-asr``
reports it in one line with exit status 2.

* ``lattice-info``: sizes (frames, states, arcs, arcs per frame) and the bad lattices.
* ``lattice-prune``: keep arcs within a beam of the best path (new lattice directory).
* ``lattice-best-path``: the best word sequence of each utterance (text: ``utt w1 w2 ...``).
* ``lattice-nbest``: the n best distinct word sequences with their scores (TSV).
* ``lattice-to-ctm``: CTM with per-word confidences (frame-level word posteriors).
* ``lattice-rescore``: whole-lattice rescoring with a new G / ARPA LM (new lattice directory
  and/or best paths), or n-best rescoring with a neural LM (``--mode nbest-nnlm``: best paths
  and/or the scored n-best lists).
* ``lattice-to-kaldi``: a Kaldi lattice archive (Lattice or CompactLattice, binary or text).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_COMMON_HELP = ("Reads a lattice directory written by wfst_asr (meta.json, index.tsv, words.txt, "
                "lat.*.pt). Bad lattices (truncated or corrupt file, another word table, empty "
                "lattice) are reported with their utterance id, skipped and counted; outputs are "
                "written atomically.")


_DIR_FILES = ("index.tsv", "meta.json", "words.txt", "tokens.txt")


class _Run:
    """Iterate a lattice directory with a progress bar, counting the bad lattices."""

    def __init__(self, cmd: str, args: argparse.Namespace) -> None:
        from wfst_asr.decode.lattice_io import LatticeReader

        self.cmd = cmd
        self.reader = LatticeReader(args.lat_dir, words=getattr(args, "words", None))
        self.bad: Counter[str] = Counter()
        self.done = 0
        self.progress = not getattr(args, "no_progress", False)
        self.start = time.perf_counter()
        self._bar: Any = None

    def lattices(self) -> Iterator[tuple[str, Any]]:
        from wfst_asr.decode.lattice_io import LatticeError
        from wfst_asr.progress import progress

        bar = progress(total=len(self.reader), desc=self.cmd, unit="utt", file=sys.stderr,
                       disable=not self.progress, mininterval=0.5)
        self._bar = bar
        try:
            for utt, lat in self.reader:
                bar.update(1)
                if isinstance(lat, LatticeError):
                    self.skip(lat.kind, str(lat))
                    continue
                yield utt, lat
        finally:
            bar.close()
            self._bar = None

    def skip(self, kind: str, message: str) -> None:
        self.bad[kind] += 1
        self.note(f"skipping {message}")

    def note(self, message: str) -> None:
        text = f"{self.cmd}: {message}"
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def finish(self, what: str = "") -> int:
        n_bad = sum(self.bad.values())
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(self.bad.items()))
        secs = time.perf_counter() - self.start
        print(f"{self.cmd}: {self.done} lattices done, {n_bad} skipped"
              f"{' (' + kinds + ')' if kinds else ''} in {secs:.1f} s{what}", file=sys.stderr)
        return 0 if self.done > 0 or n_bad == 0 else 1


@contextmanager
def _text_output(path: str, r: _Run) -> Iterator[TextIO]:
    """``path`` written atomically ('-': stdout); refused when it is a file of the input
    lattice directory (``index.tsv``, ``lat.N.pt``, ...), which it would destroy."""
    from pathlib import Path

    from wfst_asr.atomic import atomic_output

    if path == "-":
        yield sys.stdout
        return
    out = Path(path).resolve()
    if out.parent == r.reader.dir.resolve() and (out.name in _DIR_FILES or (
            out.name.startswith("lat.") and out.suffix == ".pt")):
        raise ValueError(f"{path}: a file of the input lattice directory {r.reader.dir}; write "
                         "the output elsewhere")
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


def _word_str(words, ids: list[int], as_ids: bool) -> str:
    if words is None or as_ids:
        return " ".join(str(w) for w in ids)
    return " ".join(str(words.get(w)) if w in words else f"<{w}>" for w in ids)


def _scaled(args: argparse.Namespace, lat):
    from wfst_asr.decode.lattice import _scales, rescale

    if args.lm_scale is None and args.word_penalty is None:
        return lat
    s, wp = _scales(lat)
    return rescale(lat, s if args.lm_scale is None else args.lm_scale,
                   wp if args.word_penalty is None else args.word_penalty)


def _guard(source: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; a KeyError (a field missing from the input ``source``) becomes a ValueError
    naming it. Errors are raised: :func:`wfst_asr.bin.cli.main` reports a bad input in one line
    ``wfst-asr CMD: error: SOURCE: ...`` (exit 2)."""
    try:
        return fn()
    except KeyError as e:
        raise ValueError(f"{source}: missing entry {e}") from e


# ---------------------------------------------------------------------- commands
def cmd_lattice_info(args: argparse.Namespace) -> int:
    def run() -> int:
        import torch

        from wfst_asr.decode.lattice import best_word_sequences, lattice_stats

        r = _Run("lattice-info", args)
        tot = Counter()
        words_in_best = 0
        densities = []
        with _text_output(args.per_utt, r) if args.per_utt else _nullctx() as out:
            if out is not None:
                print("utt\tframes\tstates\tarcs\tarcs_per_frame\tbest_path_words", file=out)
            for utt, lat in r.lattices():
                st = {k: v[0] for k, v in lattice_stats(lat).items()}
                nw = len(best_word_sequences(lat)[0])
                tot.update({k: int(st[k]) for k in ("frames", "states", "arcs")})
                densities.append(float(st["arcs_per_frame"]))
                words_in_best += nw
                r.done += 1
                if out is not None:
                    print(f"{utt}\t{int(st['frames'])}\t{int(st['states'])}\t{int(st['arcs'])}\t"
                          f"{float(st['arcs_per_frame']):.2f}\t{nw}", file=out)
        meta = r.reader.meta
        print(f"lattice directory: {args.lat_dir}")
        print(f"utterances: {len(r.reader)} ({r.done} usable, {sum(r.bad.values())} skipped"
              + (": " + ", ".join(f"{v} {k}" for k, v in sorted(r.bad.items()))
                 if r.bad else "") + ")")
        print(f"lm_scale {meta.get('lm_scale')}, word_penalty {meta.get('word_penalty')}; "
              f"word table checksum {str(meta.get('words_checksum'))[:12]}")
        if r.done:
            d = torch.tensor(densities, dtype=torch.float64)
            print(f"frames: {tot['frames']}, states: {tot['states']}, arcs: {tot['arcs']}")
            print(f"arcs per frame: overall {tot['arcs'] / max(tot['frames'], 1):.2f}, "
                  f"per utterance mean {float(d.mean()):.2f} / median "
                  f"{float(d.median()):.2f} / max {float(d.max()):.2f}")
            print(f"words on the best paths: {words_in_best}")
        return r.finish()
    return _guard(args.lat_dir, run)


@contextmanager
def _nullctx():
    yield None


def _write_lattice_dir(r: _Run, out_dir: str, overwrite: bool, batch_size: int,
                       fn: Callable[[str, Any], Any]) -> None:
    """Apply ``fn(utt, lattice) -> new lattice or None (skipped, message already given)`` to
    every lattice and write the results as a new lattice directory. The output may be the
    input directory itself (with ``--overwrite``): :class:`LatticeWriter` stages the new files
    and swaps them in only when every lattice has been read and written."""
    from pathlib import Path

    from wfst_asr.decode.lattice_io import LatticeWriter
    from wfst_asr.fsa import create_fsa_vec

    if (Path(out_dir) / "index.tsv").exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds lattices (index.tsv); choose another "
                              "--out-dir or pass --overwrite to replace them")

    meta = {k: v for k, v in r.reader.meta.items()
            if k not in ("format", "version", "num_utterances", "num_files", "words_checksum",
                         "tokens_checksum", "lm_scale", "word_penalty")}
    tokens = None
    if (r.reader.dir / "tokens.txt").is_file():
        from wfst_asr.fsa import SymbolTable
        tokens = SymbolTable.from_file(r.reader.dir / "tokens.txt")
    ids: list[str] = []
    lats: list[Any] = []
    with LatticeWriter(out_dir, words=r.reader.words, tokens=tokens, meta=meta,
                       overwrite=overwrite) as w:
        for utt, lat in r.lattices():
            new = fn(utt, lat)
            if new is None:
                continue
            ids.append(utt)
            lats.append(new)
            r.done += 1
            if len(ids) >= batch_size:
                w.write(ids, create_fsa_vec(lats))
                ids, lats = [], []
        if ids:
            w.write(ids, create_fsa_vec(lats))


def cmd_lattice_prune(args: argparse.Namespace) -> int:
    def run() -> int:
        from wfst_asr.decode.lattice import prune

        r = _Run("lattice-prune", args)
        before = after = 0

        def fn(utt, lat):
            nonlocal before, after
            out = prune(_scaled(args, lat), args.beam)
            before += lat.num_arcs
            after += out.num_arcs
            return out
        _write_lattice_dir(r, args.out_dir, args.overwrite, args.batch_size, fn)
        kept = 100.0 * after / max(before, 1)
        return r.finish(f"; kept {after} of {before} arcs ({kept:.1f}%) -> {args.out_dir}")
    return _guard(args.lat_dir, run)


def cmd_lattice_best_path(args: argparse.Namespace) -> int:
    def run() -> int:
        from wfst_asr.decode.lattice import best_paths
        from wfst_asr.decode.lattice_io import LatticeError

        r = _Run("lattice-best-path", args)
        with _text_output(args.out, r) as out:
            for utt, lat in r.lattices():
                path = best_paths(_scaled(args, lat))
                if path.num_arcs == 0:
                    r.skip("empty", str(LatticeError(utt, "empty", "no complete path")))
                    continue
                ws = [int(x) for x in path.aux_labels.tolist() if x > 0]
                line = f"{utt} {_word_str(r.reader.words, ws, args.ids)}".rstrip()
                if args.scores:
                    line += (f"\t{float(path.scores.double().sum()):.4f}\t"
                             f"{float(path.am_scores.double().sum()):.4f}\t"
                             f"{float(path.lm_scores.double().sum()):.4f}")
                print(line, file=out)
                r.done += 1
        return r.finish(f" -> {args.out}")
    return _guard(args.lat_dir, run)


def cmd_lattice_nbest(args: argparse.Namespace) -> int:
    def run() -> int:
        from wfst_asr.decode.nbest import nbest_one

        r = _Run("lattice-nbest", args)
        inexact = 0
        with _text_output(args.out, r) as out:
            print("utt\trank\ttotal\tam\tlm\tnum_words\twords", file=out)
            for utt, lat in r.lattices():
                try:
                    nb = nbest_one(_scaled(args, lat), args.n, beam=args.beam,
                                   max_states=args.max_states)
                except RuntimeError as e:
                    r.skip("too-large", f"utterance {utt}: {e}")
                    continue
                if not nb.exact:
                    inexact += 1
                    r.note(f"utterance {utt}: the n-best list is not proven exact (the word-level "
                           f"determinization outgrew --max-states {args.max_states})")
                tot = nb.total_scores()
                for i, ws in enumerate(nb.word_seqs):
                    print(f"{utt}\t{i + 1}\t{float(tot[i]):.4f}\t{float(nb.am_scores[i]):.4f}\t"
                          f"{float(nb.lm_scores[i]):.4f}\t{len(ws)}\t"
                          f"{_word_str(r.reader.words, ws, args.ids)}", file=out)
                r.done += 1
        return r.finish(f"; {inexact} lists not proven exact -> {args.out}")
    return _guard(args.lat_dir, run)


def cmd_lattice_to_ctm(args: argparse.Namespace) -> int:
    def run() -> int:
        from wfst_asr.decode.lattice import lattice_to_ctm

        r = _Run("lattice-to-ctm", args)
        meta = r.reader.meta
        shift = args.frame_shift if args.frame_shift is not None else float(
            meta.get("frame_shift", 0.01))
        sub = args.subsampling if args.subsampling is not None else int(
            meta.get("subsampling", 1))
        with _text_output(args.out, r) as out:
            for utt, lat in r.lattices():
                lines = lattice_to_ctm(_scaled(args, lat), utt, frame_shift=shift,
                                       subsampling=sub,
                                       words=None if args.ids else r.reader.words,
                                       confidence=not args.no_confidence,
                                       posterior_scale=args.posterior_scale)
                for line in lines:
                    print(line, file=out)
                r.done += 1
        return r.finish(f" -> {args.out} (frame shift {shift:g} s x subsampling {sub})")
    return _guard(args.lat_dir, run)


def cmd_lattice_rescore(args: argparse.Namespace) -> int:
    if args.mode == "nbest-nnlm":
        return _rescore_nnlm(args)
    if args.mode == "attention":
        return _rescore_attention(args)
    if not args.lm:
        raise ValueError("--mode whole-lattice needs --lm (ARPA, G.pt or G.fst)")
    if not args.out_dir and not args.best_path:
        raise ValueError("give --out-dir and/or --best-path")

    def run() -> int:
        from wfst_asr.decode.lattice import best_paths
        from wfst_asr.decode.lattice_io import LatticeError
        from wfst_asr.decode.rescore import check_g_words, load_g, rescore_lattice

        r = _Run("lattice-rescore", args)
        g = load_g(args.lm, words=r.reader.words)
        check_g_words(g, r.reader.words)
        results: list[tuple[str, list[int]]] = []

        def fn(utt, lat):
            out = rescore_lattice(lat, g, args.lm_scale, args.word_penalty, prepared=True)
            if out.num_arcs == 0:
                r.skip("no-path-in-G", str(LatticeError(
                    utt, "no-path-in-G", "no path of the lattice is accepted by the new G "
                    "(do G and the lattices share words.txt?)")))
                return None
            if args.best_path:
                path = best_paths(out)
                results.append((utt, [int(x) for x in path.aux_labels.tolist() if x > 0]))
            return out[0]

        if args.out_dir:
            _write_lattice_dir(r, args.out_dir, args.overwrite, args.batch_size, fn)
        else:
            for utt, lat in r.lattices():
                if fn(utt, lat) is not None:
                    r.done += 1
        if args.best_path:
            with _text_output(args.best_path, r) as out:
                for utt, ws in results:
                    print(f"{utt} {_word_str(r.reader.words, ws, args.ids)}".rstrip(), file=out)
        dest = " -> " + ", ".join(x for x in (args.out_dir, args.best_path) if x)
        return r.finish(dest)
    return _guard(args.lat_dir, run)


def _rescore_nbest(args: argparse.Namespace, name: str, scale: float, setup: Callable) -> int:
    """The n-best modes of ``lattice-rescore``: the n-best list of each lattice, scored in
    batches of ``--utt-batch`` utterances by ``score(pending)`` (``setup(r)`` returns
    ``(score, check)``; ``check(utt, nb)`` gives a skip reason or None), reranked by ``am +
    lm_scale * lm - word_penalty * words + scale * <name>``; best paths (and the scored lists)
    written atomically."""
    if not args.best_path and not args.nbest_out:
        raise ValueError(f"--mode {args.mode} writes --best-path and/or --nbest-out (no "
                         "lattices)")

    def run() -> int:
        from wfst_asr.decode.lattice_io import LatticeError
        from wfst_asr.decode.nbest import nbest_one

        r = _Run("lattice-rescore", args)
        words = r.reader.words
        score, check = setup(r)
        weights = {name: scale}
        pending: list[tuple[str, Any, Any]] = []
        inexact = 0

        def flush(best_out, nbest_out) -> None:
            score(pending)
            for utt, nb, _lat in pending:
                ranked = nb.reranked(weights=weights)
                if best_out is not None:
                    ws = ranked.word_seqs[0]
                    print(f"{utt} {_word_str(words, ws, args.ids)}".rstrip(), file=best_out)
                if nbest_out is not None:
                    tot = ranked.total_scores(weights=weights)
                    for i, ws in enumerate(ranked.word_seqs):
                        print(f"{utt}\t{i + 1}\t{float(tot[i]):.4f}\t"
                              f"{float(ranked.am_scores[i]):.4f}\t"
                              f"{float(ranked.lm_scores[i]):.4f}\t"
                              f"{float(ranked.extra_scores[name][i]):.4f}\t{len(ws)}\t"
                              f"{_word_str(words, ws, args.ids)}", file=nbest_out)
                r.done += 1
            pending.clear()

        with _text_output(args.best_path, r) if args.best_path else _nullctx() as best_out, \
                _text_output(args.nbest_out, r) if args.nbest_out else _nullctx() as nbest_out:
            if nbest_out is not None:
                print(f"utt\trank\ttotal\tam\tlm\t{name}\tnum_words\twords", file=nbest_out)
            for utt, lat in r.lattices():
                try:
                    nb = nbest_one(_scaled(args, lat), args.n, beam=args.nbest_beam,
                                   max_states=args.max_states)
                except RuntimeError as e:
                    r.skip("too-large", f"utterance {utt}: {e}")
                    continue
                if len(nb) == 0:
                    r.skip("empty", str(LatticeError(utt, "empty", "no complete path")))
                    continue
                bad = check(utt, nb)
                if bad is not None:
                    r.skip(bad[0], str(LatticeError(utt, *bad)))
                    continue
                if not nb.exact:
                    inexact += 1
                pending.append((utt, nb, lat))
                if len(pending) >= args.utt_batch:
                    flush(best_out, nbest_out)
            if pending:
                flush(best_out, nbest_out)
        dest = " -> " + ", ".join(x for x in (args.best_path, args.nbest_out) if x)
        return r.finish(f"; {name} scale {scale:g}, {inexact} lists not proven exact{dest}")
    return _guard(args.lat_dir, run)


def _rescore_nnlm(args: argparse.Namespace) -> int:
    """``lattice-rescore --mode nbest-nnlm``: the n-best lists scored by the neural LM."""
    if not args.lm_model:
        raise ValueError("--mode nbest-nnlm needs --lm-model (lm.pt from "
                         "wfst_asr.models.lm.train_lm)")

    def setup(r: _Run):
        from wfst_asr.decode.lattice_io import symbol_table_checksum
        from wfst_asr.decode.nnlm import add_nnlm_scores
        from wfst_asr.train.checkpoint import CheckpointError
        from wfst_asr.train.lm import load_lm

        try:
            lm = load_lm(args.lm_model)
        except CheckpointError as e:
            raise ValueError(str(e)) from e
        words = r.reader.words
        if lm.words_checksum is not None and words is not None and \
                lm.words_checksum != symbol_table_checksum(words):
            raise ValueError(f"the LM {args.lm_model} was trained over another word table than "
                             f"the lattices' ({args.words or args.lat_dir + '/words.txt'})")

        def check(_utt, nb):
            oov = [w for ws in nb.word_seqs for w in ws if not 0 <= w < lm.vocab_size]
            if not oov:
                return None
            return ("out-of-vocabulary",
                    f"word id {oov[0]} is outside the LM's vocabulary 0..{lm.vocab_size - 1}")

        def score(pending):
            add_nnlm_scores([nb for _, nb, _ in pending], lm, batch_size=args.nnlm_batch_size)
        return score, check
    return _rescore_nbest(args, "nnlm", args.nnlm_scale, setup)


def _rescore_attention(args: argparse.Namespace) -> int:
    """``lattice-rescore --mode attention``: each entry's tokens (its lattice path's CTC labels,
    collapsed) scored by an attention decoder on the utterance's encoder output (the encoder
    runs over ``--cuts``)."""
    if not args.exp_dir or not args.cuts:
        raise ValueError("--mode attention needs --exp-dir (the attention model) and --cuts "
                         "(the lattices' utterances)")

    def setup(r: _Run):
        from wfst_asr.train.decoder import DecodeOptions, Decoder
        from wfst_asr.train.rescoring import attention_memory, ctc_collapse

        dec = Decoder(args.exp_dir, options=DecodeOptions(device="cpu"), log=None)
        if dec.loss != "attention":
            raise ValueError(f"{args.exp_dir}: --mode attention needs an attention model, got "
                             f"loss {dec.loss!r}")
        mem = attention_memory(dec, args.cuts)

        def check(utt, _nb):
            return None if utt in mem else ("no-audio", f"not in {args.cuts}")

        def score(pending):
            for utt, nb, lat in pending:
                seqs = [ctc_collapse(nb.alignment(lat, i)["labels"]) for i in range(len(nb))]
                e, k = mem[utt]
                nb.add_scores("attention", dec.model.decoder.sequence_log_probs(e, k, seqs))
        return score, check
    return _rescore_nbest(args, "attention", args.attention_scale, setup)


def cmd_lattice_to_kaldi(args: argparse.Namespace) -> int:
    def run() -> int:
        from wfst_asr.decode.kaldi_lattice import write_kaldi_lattices

        r = _Run("lattice-to-kaldi", args)

        def items():
            for utt, lat in r.lattices():
                r.done += 1
                yield utt, lat
        n = write_kaldi_lattices(args.out, items(), compact=args.compact,
                                 text=True if args.text else None,
                                 ilabel_offset=args.ilabel_offset)
        kind = "CompactLattice" if args.compact else "Lattice"
        return r.finish(f" -> {args.out} ({n} {kind} entries)")
    return _guard(args.lat_dir, run)


# ---------------------------------------------------------------------- parsers
def _common(p: argparse.ArgumentParser, scales: bool = True) -> None:
    p.add_argument("lat_dir", help="input lattice directory")
    p.add_argument("--words", default=None,
                   help="the word table the lattices must have been written with (default: "
                        "the directory's words.txt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if scales:
        p.add_argument("--lm-scale", type=float, default=None,
                       help="scale of the LM (graph) scores (default: the lattices' own)")
        p.add_argument("--word-penalty", type=float, default=None,
                       help="word insertion penalty (default: the lattices' own)")


def _out_dir(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--out-dir", required=required, default=None,
                   help="output lattice directory")
    p.add_argument("--overwrite", action="store_true",
                   help="allow an output directory that already holds lattices")
    p.add_argument("--batch-size", type=int, default=100,
                   help="lattices per output file (default 100)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``lattice-*`` tools to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser("lattice-info", help="sizes of the lattices of a lattice directory",
                       description="Print the number of utterances, frames, states and arcs "
                       "(and arcs per frame) of a lattice directory, and the lattices that cannot "
                       "be used. " + _COMMON_HELP)
    _common(p, scales=False)
    p.add_argument("--per-utt", default=None, metavar="TSV",
                   help="also write one line per utterance to this file ('-': stdout)")
    p.set_defaults(func=cmd_lattice_info)

    p = sub.add_parser("lattice-prune", help="prune lattices by beam",
                       description="Keep the arcs on a path within --beam of the best path "
                       "(forward-backward, tropical) and write a new lattice directory. "
                       + _COMMON_HELP)
    _common(p)
    p.add_argument("--beam", type=float, required=True, help="beam (log-score units)")
    _out_dir(p)
    p.set_defaults(func=cmd_lattice_prune)

    p = sub.add_parser("lattice-best-path", help="best word sequence of each lattice",
                       description="Write 'utt word1 word2 ...' for the best path of each "
                       "lattice (scores = lm_scale * LM + acoustic - word_penalty * words). "
                       + _COMMON_HELP)
    _common(p)
    p.add_argument("out", help="output text file ('-': stdout)")
    p.add_argument("--ids", action="store_true", help="print word ids instead of words")
    p.add_argument("--scores", action="store_true",
                   help="append total, acoustic and LM scores (tab separated)")
    p.set_defaults(func=cmd_lattice_best_path)

    p = sub.add_parser("lattice-nbest", help="n best distinct word sequences per lattice",
                       description="Write the --n best distinct word sequences of each lattice as "
                       "TSV (utt, rank, total, am, lm, num_words, words): exact n-best of the "
                       "word-determinized lattice, the scores of each sequence's best path. "
                       + _COMMON_HELP)
    _common(p)
    p.add_argument("out", help="output TSV file ('-': stdout)")
    p.add_argument("--n", type=int, default=10, help="entries per utterance (default 10)")
    p.add_argument("--beam", type=float, default=4.0,
                   help="first pruning beam of the word-level determinization, widened until "
                        "the list is provably exact (default 4)")
    p.add_argument("--max-states", type=int, default=10000,
                   help="stop widening when the determinization outgrows this (default 10000)")
    p.add_argument("--ids", action="store_true", help="print word ids instead of words")
    p.set_defaults(func=cmd_lattice_nbest)

    p = sub.add_parser("lattice-to-ctm", help="CTM of the best paths, with confidences",
                       description="Write a CTM file (utt channel start duration word "
                       "confidence) for the best path of each lattice; times in seconds = frames x "
                       "frame shift x subsampling; confidence = the largest frame-level posterior "
                       "of the word over its frames (paths weighted by exp(posterior_scale * "
                       "score)). " + _COMMON_HELP)
    _common(p)
    p.add_argument("out", help="output CTM file ('-': stdout)")
    p.add_argument("--frame-shift", type=float, default=None,
                   help="seconds per input frame (default: meta.json's frame_shift, else 0.01)")
    p.add_argument("--subsampling", type=int, default=None,
                   help="input frames per network output frame (default: meta.json's "
                        "subsampling, else 1)")
    p.add_argument("--posterior-scale", type=float, default=1.0,
                   help="scale of the scores in the posteriors (Kaldi's acoustic scale "
                        "analogue; default 1)")
    p.add_argument("--no-confidence", action="store_true", help="leave out the confidences")
    p.add_argument("--ids", action="store_true", help="print word ids instead of words")
    p.set_defaults(func=cmd_lattice_to_ctm)

    p = sub.add_parser("lattice-rescore", help="rescore lattices with a new LM",
                       description="Whole-lattice rescoring (--mode whole-lattice): drop the "
                       "lattices' LM scores, compose them with a new G on the word labels and "
                       "keep G's scores; write the rescored lattices (--out-dir) and/or their "
                       "best paths (--best-path). --lm: an ARPA file (compiled over the "
                       "lattices' words.txt with exact back-off), or G.pt / G.fst over the same "
                       "word table. --mode nbest-nnlm: the --n best distinct word sequences of each lattice "
                       "reranked by am + lm_scale * lm - word_penalty * words + nnlm_scale * "
                       "log P_nnlm(words) with a neural LM (--lm-model), best paths to "
                       "--best-path and/or the scored lists to --nbest-out. --mode attention: "
                       "the same lists reranked with + attention_scale * log P_att(tokens "
                       "<eos>) of an attention decoder (--exp-dir, the model whose CTC branch "
                       "made the lattices; its encoder runs over --cuts): each entry's tokens "
                       "are its lattice path's CTC labels (icefall's attention rescoring; "
                       "`wfst-asr rescore --attention` tunes the scales on dev). "
                       + _COMMON_HELP)
    _common(p)
    p.add_argument("--mode", choices=("whole-lattice", "nbest-nnlm", "attention"),
                   default="whole-lattice")
    p.add_argument("--lm", default=None,
                   help="whole-lattice: new LM: ARPA file, G.pt or G.fst (required)")
    p.add_argument("--best-path", default=None, help="write the best paths here")
    p.add_argument("--ids", action="store_true", help="best paths as word ids")
    p.add_argument("--lm-model", default=None,
                   help="nbest-nnlm: the neural LM (lm.pt from wfst_asr.models.lm.train_lm, "
                        "over the lattices' word ids; required)")
    p.add_argument("--nnlm-scale", type=float, default=1.0,
                   help="nbest-nnlm: weight of the neural LM log-probability (default 1)")
    p.add_argument("--n", type=int, default=100,
                   help="nbest-nnlm: n-best entries per utterance (default 100)")
    p.add_argument("--nbest-beam", type=float, default=4.0,
                   help="nbest-nnlm: first beam of the exact n-best search (default 4)")
    p.add_argument("--max-states", type=int, default=10000,
                   help="nbest-nnlm: determinization size limit of the n-best search")
    p.add_argument("--exp-dir", default=None, help="attention: the attention model's exp dir")
    p.add_argument("--cuts", default=None, help="attention: the cuts of the lattices' utterances")
    p.add_argument("--attention-scale", type=float, default=1.0,
                   help="attention: weight of the decoder's log-probability (default 1)")
    p.add_argument("--nbest-out", default=None,
                   help="nbest-nnlm: write the reranked lists as TSV (utt, rank, total, am, lm, "
                        "nnlm, num_words, words)")
    p.add_argument("--utt-batch", type=int, default=16,
                   help="nbest-nnlm: utterances whose lists are scored in one LM batch")
    p.add_argument("--nnlm-batch-size", type=int, default=256,
                   help="nbest-nnlm: sequences per LM forward pass")
    _out_dir(p, required=False)
    p.set_defaults(func=cmd_lattice_rescore)

    p = sub.add_parser("lattice-to-kaldi", help="write a Kaldi lattice archive",
                       description="Write the lattices as a Kaldi archive of Lattice (default) "
                       "or CompactLattice entries, weights (graph cost, acoustic cost) = (-LM "
                       "score, -acoustic score), unscaled; input labels = token + "
                       "--ilabel-offset. " + _COMMON_HELP)
    _common(p, scales=False)
    p.add_argument("out", help="output archive: a path, 'ark:PATH' or 'ark,t:PATH' (text)")
    p.add_argument("--compact", action="store_true", help="CompactLattice entries")
    p.add_argument("--text", action="store_true", help="text archive (as ark,t:)")
    p.add_argument("--ilabel-offset", type=int, default=1,
                   help="added to the token ids (default 1: Kaldi's 0 is epsilon)")
    p.set_defaults(func=cmd_lattice_to_kaldi)
