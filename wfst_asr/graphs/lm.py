"""The grammar G from an ARPA language model (through kaldilm), and token LMs.

* :func:`arpa_to_fst` -- ARPA -> G over the ids of ``words.txt``, as Kaldi's ``arpa2fst``
  (kaldilm): one state per history, word arcs, back-off arcs ``#0:<eps>`` (input ``#0``, output
  epsilon) towards the shorter history, ``<s>`` / ``</s>`` turned into the start state and final
  weights. Returned as an :class:`~wfst_asr.fsa.Fsa` transducer: ``labels`` = input side (words
  and ``#0``), ``aux_labels`` = output side (words, 0 on back-off arcs), ``scores`` =
  ``ln(10) * log10 values`` (OpenFst cost = -score). Optionally written as an OpenFst binary
  ``G.fst`` and ``G.pt`` (:func:`wfst_asr.fsa.save`), both atomically. The states that have
  nothing but their back-off arc are then removed (:func:`remove_backoff_only_states`).
* :func:`remove_backoff_only_states` -- exact removal of G's states whose only arc is the
  back-off arc (arcs entering them go straight to the back-off target, its weight added).
* :func:`make_token_lm` -- an n-gram LM over token sequences (TIMIT phone bigram, the LF-MMI
  denominator phone LM P) written as ARPA.
* :func:`ngram_acceptor` -- a back-off n-gram as a deterministic, epsilon-free acceptor over
  token ids, every back-off resolved (the LF-MMI phone LM ``P``: each state has an arc for
  every word, scored with the exact back-off probability, and a final arc for ``</s>``).

OOV policy: every word of the ARPA file must be in ``words.txt``, else ``ValueError`` naming
the ARPA file and the words. Words are never mapped to ``<unk>`` here: mapping would merge
n-grams whose probabilities no longer sum to one; estimate the LM with
``estimate_ngram(..., vocab=words, unk="<UNK>")`` instead. (kaldilm itself silently *drops*
n-grams with unknown words, and aborts the whole process on a malformed ARPA file, so the file
is fully validated with :func:`~wfst_asr.graphs.ngram.read_arpa` first.)
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from wfst_asr.atomic import atomic_output
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.fsa.io import read_fst, save, write_fst

from .ngram import BOS, EOS, NgramModel, estimate_ngram, read_arpa

__all__ = ["arpa_to_fst", "g_pt_path", "make_token_lm", "ngram_acceptor",
           "remove_backoff_only_states"]

PathLike = str | os.PathLike


def g_pt_path(fst_path: PathLike) -> Path:
    """The torch file written next to an FST: ``G.fst`` -> ``G.pt``."""
    p = Path(fst_path)
    return p.with_suffix(".pt") if p.suffix == ".fst" else p.with_name(p.name + ".pt")


def _check_words(arpa_path: str, model: NgramModel, table: SymbolTable, words_txt: str,
                 disambig_symbol: str) -> None:
    """Every ARPA word must be in ``words.txt`` (``<s>``/``</s>`` too without a disambig)."""
    special = {BOS, EOS} if disambig_symbol else set()
    missing = [w for w in model.vocab if w not in table and w not in special]
    if missing:
        shown = ", ".join(repr(w) for w in missing[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ValueError(f"{arpa_path}: {len(missing)} word(s) of the ARPA file are not in "
                         f"{words_txt}: {shown}{more}")
    if disambig_symbol and disambig_symbol not in table:
        raise ValueError(f"{words_txt}: no disambiguation symbol {disambig_symbol!r}")
    if not disambig_symbol:
        for sym in (BOS, EOS):
            if sym not in table:
                raise ValueError(f"{words_txt}: no {sym!r} (needed as a label without a "
                                 "disambiguation symbol)")


def arpa_to_fst(arpa_path: PathLike, words_txt: PathLike, out_path: PathLike | None = None,
                disambig_symbol: str = "#0", max_order: int | None = None, *,
                remove_backoff_only: bool = True) -> Fsa:
    """Compile an ARPA LM into G over the word ids of ``words_txt`` (kaldilm's arpa2fst).

    Args:
      arpa_path: the ARPA file (validated strictly first, see the module docstring).
      words_txt: ``symbol id`` lines; must hold every ARPA word and ``disambig_symbol``.
      out_path: if given, G is written there as an OpenFst binary (vector FST, tropical) and as
        :func:`g_pt_path` ``(out_path)`` (``G.pt``), both atomically.
      disambig_symbol: input label of back-off arcs (``#0``); ``""``: back-off arcs are epsilon
        and ``<s>`` / ``</s>`` stay as labels (then both must be in ``words_txt``).
      max_order: use n-grams up to this order only (default: all). Done here by truncating
        the model (:meth:`NgramModel.truncated`), not by kaldilm's ``max_order``, which keeps
        the back-off weights of the ``max_order``-grams (one more back-off state level), so its
        G is not normalised.
      remove_backoff_only: remove the states whose only arc is their back-off arc
        (:func:`remove_backoff_only_states`: the same weighted language, fewer states; what
        a pruned LM leaves behind). False: kaldilm's G as it is.

    Returns:
      G as a transducer :class:`Fsa` with ``labels_sym`` = ``aux_labels_sym`` = the word table.
    """
    arpa_path, words_txt = os.fspath(arpa_path), os.fspath(words_txt)
    out = os.fspath(out_path) if out_path is not None else None
    table = SymbolTable.from_file(words_txt)
    model = read_arpa(arpa_path)
    _check_words(arpa_path, model, table, words_txt, disambig_symbol)
    if max_order is not None and not 1 <= max_order <= model.order:
        raise ValueError(f"max_order must be in 1..{model.order} for {arpa_path}, got {max_order}")
    backoff = int(table[disambig_symbol]) if disambig_symbol else 0
    with tempfile.TemporaryDirectory() as folder:
        if max_order is not None and max_order < model.order:
            arpa_path = os.path.join(folder, "truncated.arpa")
            model.truncated(max_order).write_arpa(arpa_path)
        del model
        with contextlib.ExitStack() as stack:
            # the output folder is checked (atomic_output) before kaldilm runs
            tmp = stack.enter_context(atomic_output(out)) if out is not None else None
            fsa = _compile(arpa_path, words_txt, os.path.join(folder, "G.fst"),
                           disambig_symbol, table)
            if remove_backoff_only:
                fsa = remove_backoff_only_states(fsa, backoff)
            if tmp is not None:
                write_fst(fsa, tmp, attach_symbols=False)  # as kaldilm's G: no symbol tables
    if out is not None:
        save(fsa, g_pt_path(out))
    return fsa


def _compile(arpa_path: str, words_txt: str, fst_path: str, disambig_symbol: str,
             table: SymbolTable) -> Fsa:
    """Run kaldilm's arpa2fst into ``fst_path`` and read the result back as an Fsa."""
    from wfst_asr import _kaldi

    _kaldi.kaldilm().arpa2fst(input_arpa=arpa_path, output_fst=fst_path,
                              disambig_symbol=disambig_symbol, read_symbol_table=words_txt,
                              max_arpa_warnings=30)
    fsa = read_fst(fst_path, acceptor=False)
    fsa.labels_sym = table
    fsa.aux_labels_sym = table
    return fsa


def remove_backoff_only_states(G: Fsa, backoff_label: int) -> Fsa:
    """G without its *back-off-only* states: the same weighted language, fewer states.

    kaldilm's arpa2fst makes a state for every n-gram below the highest order, even one that
    no longer has a successor (after pruning, most bigrams whose trigrams were all pruned):
    such a state ``q`` has one arc, its back-off arc ``q -> b`` (weight ``v``), is not final
    and is not the start state. Every path through ``q`` enters it by some arc ``e`` and leaves
    by that back-off arc, so ``e`` is redirected to ``b`` with score ``e.score + v`` (along a
    chain of such states to the first state that is kept, all weights added) and ``q`` is
    deleted. Paths of the old and the new G correspond one to one with the same labels and the
    same total score (up to float32 rounding of the sums): an exact change, in any semiring,
    also for the ARPA back-off reading of G (``#0`` taken only when no word arc matches), since
    ``q`` has no word arc. Decoding graphs gain most: RmEpsilon of LG would copy the arcs of
    ``b`` (the whole unigram lexicon, when ``b`` is the unigram state) into a copy of ``q``.

    Args:
      G: a single FSA (acceptor or transducer); a back-off arc has label ``backoff_label``
        (and aux_label 0 in a transducer).
      backoff_label: the id of ``#0`` (0 when back-off arcs are epsilon).

    Returns:
      the new G (states renumbered in their old order, arcs in their old order, other
      attributes kept); ``G`` itself when no state is back-off-only.
    """
    if G.is_vec:
        raise ValueError("remove_backoff_only_states takes a single FSA")
    n = G.num_states
    a = G.arcs.cpu().numpy()
    src, dst, lab = a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2]
    is_bo = lab == backoff_label
    if G.has_attr("aux_labels"):
        is_bo &= G.aux_labels.cpu().numpy() == 0
    drop = (np.bincount(src, minlength=n) == 1) & (np.bincount(src[is_bo], minlength=n) == 1)
    if n:
        drop[0] = False  # the start state stays
    if not drop.any():
        return G
    bo_arc = np.zeros(n, dtype=np.int64)
    bo_arc[src[is_bo]] = np.flatnonzero(is_bo)
    scores = G.scores.detach().cpu().numpy()
    while True:
        # target (first kept state down the back-off chain) and summed weight of each state
        tgt, w = np.arange(n), np.zeros(n, dtype=np.float64)
        tgt[drop] = dst[bo_arc[drop]]
        w[drop] = scores[bo_arc[drop]]
        for _ in range(max(n, 2).bit_length() + 1):  # pointer jumping: chains halve each time
            if not drop[tgt].any():
                break
            w, tgt = w + w[tgt], tgt[tgt]
        on_cycle = drop[tgt]  # a loop of back-off-only states (no G makes one): kept as is
        if not on_cycle.any():
            break
        drop &= ~on_cycle
    if not drop.any():
        return G
    into = drop[dst]
    new_scores = scores.astype(np.float64)
    new_scores[into] += w[dst[into]]
    new_dst = np.where(into, tgt[dst], dst)
    keep = ~drop[src]
    ren = np.cumsum(~drop) - 1
    arcs = np.stack([ren[src[keep]], ren[new_dst[keep]], lab[keep]], axis=1).astype(np.int32)
    keep_t = torch.from_numpy(keep)
    attrs = {k: v[keep_t] for k, v in G._tensor_attrs.items()}
    out = Fsa(torch.from_numpy(arcs), torch.from_numpy(new_scores[keep].astype(np.float32)),
              num_states=int(n - drop.sum()), **attrs)
    for k, v in G._other_attrs.items():
        setattr(out, k, v)
    return out


def make_token_lm(transcripts: Iterable[Sequence[str | int]], order: int,
                  out_arpa: PathLike | None = None, method: str = "kneser_ney",
                  vocab: Sequence[str] | None = None) -> NgramModel:
    """An n-gram LM over token sequences (phones, BPE pieces; ints are turned into str).

    E.g. TIMIT's phone bigram (``order=2``) or the phone LM P of the LF-MMI denominator graph.
    With ``vocab`` (e.g. every phone), unseen tokens still get a unigram. The ARPA file is
    written atomically when ``out_arpa`` is given; compile it with :func:`arpa_to_fst` and a
    ``tokens.txt`` that holds the tokens, ``<s>``, ``</s>`` and the disambiguation symbol.
    """
    sentences = ([str(t) for t in seq] for seq in transcripts)
    model = estimate_ngram(sentences, order, method=method,
                           vocab=[str(t) for t in vocab] if vocab is not None else None)
    if out_arpa is not None:
        model.write_arpa(out_arpa)
    return model


def ngram_acceptor(lm: NgramModel | PathLike, symbols: SymbolTable | Mapping[str, int] | PathLike,
                   terms: bool = False) -> Fsa:
    """A back-off n-gram LM as a deterministic, epsilon-free acceptor over ``symbols``' ids.

    Unlike G (:func:`arpa_to_fst`, back-off arcs ``#0``), every back-off is resolved: each state
    is a history and has one arc per word of the LM's vocabulary (``<s>``, ``</s>`` excepted),
    scored ``ln P(word | history)`` with the ARPA back-off rule, plus a final arc (label -1)
    scored ``ln P(</s> | history)``. So the score of a path is the LM log-probability of its
    sentence (with ``</s>``) and the arcs leaving each state are a distribution: what the
    LF-MMI denominator needs as the phone LM ``P``
    (:class:`~wfst_asr.graphs.training.MmiTrainingGraphCompiler`), where kaldilm's G, after
    RmEpsilon and Determinize in the tropical semiring, would keep the larger of the direct and
    the back-off score of a word instead.

    States: the start state 0 is the history ``<s>``; the state reached by a word is the longest
    suffix (at most order - 1 words) of the history so far that is a *context* of the model:
    the empty history, a proper prefix of an n-gram, or an n-gram with a non-zero back-off
    weight. Any other suffix contributes no n-gram and no back-off weight, so the
    distributions of a history and of its context are the same. The final state comes last.
    Size: (number of contexts reached) x (vocabulary + 1) arcs, e.g. 49 x 49 for TIMIT's
    48-phone bigram.

    Args:
      lm: an :class:`~wfst_asr.graphs.ngram.NgramModel` or the path of an ARPA file.
      symbols: ``word -> id`` (a :class:`SymbolTable`, a dict, or a ``tokens.txt`` /
        ``words.txt`` path); every LM word other than ``<s>`` / ``</s>`` must be in it, with an
        id >= 1.
      terms: also give every arc the model's values its score sums (attribute ``lm_terms``,
        int64 ``[A, order]``: indices into :meth:`NgramModel.param_values`, back-off weights
        then the probability, -1 padded), for LM weights that train
        (:class:`~wfst_asr.graphs.trainable.NgramScores`).

    Returns:
      the acceptor (``labels`` = ids of ``symbols``, scores = natural-log probabilities).
    """
    model = read_arpa(os.fspath(lm)) if not isinstance(lm, NgramModel) else lm
    if not isinstance(symbols, (SymbolTable, Mapping)):
        symbols = SymbolTable.from_file(os.fspath(symbols))
    vocab = model.vocab
    words = [i for i, w in enumerate(vocab) if w not in (BOS, EOS)]
    missing = [vocab[i] for i in words if vocab[i] not in symbols]
    if missing:
        raise ValueError(f"ngram_acceptor: {len(missing)} LM word(s) are not in the symbol "
                         f"table: {missing[:10]}")
    label = {i: int(symbols[vocab[i]]) for i in words}
    if any(v < 1 for v in label.values()):
        raise ValueError("ngram_acceptor: LM words need ids >= 1 (0 is epsilon)")
    bos, eos = model.word_id(BOS), model.word_id(EOS)
    ln10 = math.log(10.0)
    start = model.context((bos,))
    state_id = {start: 0}
    queue = [start]
    values = model.param_values()
    src, dst, lab, sc, tm = [], [], [], [], []
    fin_src, fin_sc, fin_tm = [], [], []

    def arc_terms(w: int, h: tuple[int, ...], out: list) -> float:
        t = model.backoff_terms(w, h)
        if terms:
            out.append(t + [-1] * (model.order - len(t)))
        return ln10 * sum(float(values[k]) for k in t)
    while queue:
        h = queue.pop(0)
        s = state_id[h]
        for w in words:
            nxt = model.context(h + (w,))
            if nxt not in state_id:
                state_id[nxt] = len(state_id)
                queue.append(nxt)
            src.append(s)
            dst.append(state_id[nxt])
            lab.append(label[w])
            sc.append(arc_terms(w, h, tm))
        fin_src.append(s)
        fin_sc.append(arc_terms(eos, h, fin_tm))
    final = len(state_id)
    arcs = torch.tensor([src + fin_src, dst + [final] * len(fin_src), lab + [-1] * len(fin_src)],
                        dtype=torch.int64).T
    order = torch.argsort(arcs[:, 0], stable=True)
    scores = torch.tensor(sc + fin_sc, dtype=torch.float32)[order]
    extra = {"lm_terms": torch.tensor(tm + fin_tm, dtype=torch.int64)[order]} if terms else {}
    return Fsa(arcs[order].to(torch.int32), scores, num_states=final + 1, **extra)
