"""Word pieces (sentencepiece BPE / unigram models) as the tokens of a lang directory.

A BPE lang dir is an ordinary lang dir (:func:`~wfst_asr.graphs.lang.prepare_lang`) whose
lexicon spells each word in pieces, as icefall's ``lang_bpe_500``: ``bpe.model`` (the
sentencepiece model), ``lexicon.txt`` (``word ▁pi eces``), ``tokens.txt`` (``<blk> 0`` and the
pieces), ``words.txt``, L. The first piece of a word carries the word-boundary mark ``▁``
(U+2581), so a piece sequence reads back as words without a lexicon (:func:`pieces_to_words`).

* :func:`train_bpe` -- a sentencepiece model on text files (unigram by default, as icefall);
* :func:`bpe_lexicon` -- lexicon entries of words in that model's pieces;
* :func:`pieces_to_words` -- pieces (e.g. a greedy CTC output) to words;
* :func:`is_piece_table` -- whether a token list is word pieces.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from wfst_asr.atomic import atomic_output, iter_text_lines

__all__ = ["WORD_BOUNDARY", "bpe_lexicon", "is_piece_table", "load_bpe", "pieces_to_words",
           "train_bpe"]

#: sentencepiece's word-boundary mark, at the start of a word's first piece.
WORD_BOUNDARY = "\u2581"


def _spm():
    import sentencepiece

    return sentencepiece


def train_bpe(texts: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              vocab_size: int = 500, model_type: str = "unigram",
              skip_first_field: bool = False, character_coverage: float = 1.0,
              seed_sentences: int = 1_000_000) -> Path:
    """Train a sentencepiece model on the lines of ``texts``; write ``out_dir/bpe.model`` and
    ``bpe.vocab`` atomically and return the model's path.

    ``skip_first_field``: lines start with an utterance id (Kaldi ``text``). ``<unk>`` is the
    only special piece (no ``<s>``/``</s>``: the graphs add sentence ends). A text without a
    word, or a ``vocab_size`` the text cannot fill, is a ValueError naming the input.
    """
    out = Path(out_dir)
    lines: list[str] = []
    for path in texts:
        for line in iter_text_lines(path):
            words = line.split()[1 if skip_first_field else 0:]
            if words:
                lines.append(" ".join(words))
    if not lines:
        raise ValueError(f"{', '.join(map(str, texts))}: no words to train a BPE model on")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-bpe-") as tmp:
        text = Path(tmp) / "text"
        text.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
        prefix = str(Path(tmp) / "bpe")
        try:
            _spm().SentencePieceTrainer.train(
                input=str(text), model_prefix=prefix, vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage,
                input_sentence_size=seed_sentences, shuffle_input_sentence=True,
                bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2)
        except RuntimeError as e:  # e.g. "Vocabulary size too high (500). Please set it <= 88."
            raise ValueError(f"{', '.join(map(str, texts))}: sentencepiece: "
                             f"{str(e).splitlines()[-1]}") from None
        for ext in ("model", "vocab"):
            with atomic_output(out / f"bpe.{ext}") as dst:
                os.replace(f"{prefix}.{ext}", dst)
    return out / "bpe.model"


def load_bpe(model: str | os.PathLike):
    """A ``sentencepiece.SentencePieceProcessor`` of ``model`` (ValueError naming it when it is
    not a sentencepiece model)."""
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    sp = _spm().SentencePieceProcessor()
    try:
        sp.load(path)
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{path}: not a sentencepiece model ({str(e).splitlines()[-1]})") from None
    return sp


def bpe_lexicon(words: Iterable[str], model: str | os.PathLike
                ) -> list[tuple[str, float | None, list[str]]]:
    """One lexicon entry per word: its pieces under ``model`` (the most likely segmentation).
    Words are taken in order, each once."""
    sp = load_bpe(model)
    out = []
    for w in dict.fromkeys(words):
        out.append((w, None, list(sp.encode(w, out_type=str))))
    return out


def pieces_to_words(pieces: Sequence[str]) -> list[str]:
    """Words of a piece sequence: a piece starting with ``▁`` starts a word, others continue
    the current one (a sequence starting mid-word makes that fragment a word)."""
    words: list[str] = []
    for p in pieces:
        if p.startswith(WORD_BOUNDARY) or not words:
            words.append(p.lstrip(WORD_BOUNDARY))
        else:
            words[-1] += p
    return [w for w in words if w]


def is_piece_table(tokens: Iterable[str]) -> bool:
    """True when the tokens are word pieces (some start with ``▁``)."""
    return any(str(t).startswith(WORD_BOUNDARY) for t in tokens)
