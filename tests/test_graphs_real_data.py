"""Decoding graphs on real data: the TIMIT sample (../shared/data/timit_nltk_sample).

* phone level: the 48-phone lang (each phone its own word) with a Kneser-Ney phone bigram from
  the sample's ``.phn`` transcripts -> HLG (ctc); sizes, and decoding of fake network outputs
  that spell reference phone sequences gives those sequences back;
* word level: the sample's words with CMUdict pronunciations (ARPAbet tokens) and a word bigram
  -> HLG; a sentence spelled through its CMUdict pronunciations decodes into its words.

Skipped (with the reason printed) when ../shared/data is absent.
"""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import REPO_ROOT, shared_data_dir

from wfst_asr.fsa import DenseFsaVec, Fsa, SymbolTable, intersect_dense_pruned, shortest_path
from wfst_asr.graphs.compile import compile_graph

UTTS = ("dr1-fvmh0/sa1", "dr1-fvmh0/sa2", "dr1-fvmh0/si1466")


def _local():
    """The TIMIT recipe helpers of egs/timit/local."""
    path = str(REPO_ROOT / "egs" / "timit" / "local")
    if path not in sys.path:
        sys.path.insert(0, path)
    import timit_graphs
    import timit_text

    return timit_graphs, timit_text


@pytest.fixture(name="timit_dir", scope="module")
def timit_dir_fixture():
    d = shared_data_dir() / "timit_nltk_sample"
    if not (d / "timitdic.txt").is_file():
        pytest.skip(f"TIMIT sample not found in {d}")
    return d


@pytest.fixture(name="one_thread")
def one_thread_fixture():
    """Decode with one torch thread: the per-frame tensors are tiny, and two OpenMP threads on
    a busy 2-core machine make intersect_dense_pruned 10-50x slower (spin-waiting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(name="phone_hlg", scope="module")
def phone_hlg_fixture(timit_dir, tmp_path_factory):
    tg, _ = _local()
    d = tmp_path_factory.mktemp("phone48")
    tg.prepare_phone_lang(timit_dir, d, order=2)
    hlg, stats = compile_graph(d, "HLG", "ctc")
    return hlg, stats, SymbolTable.from_file(d / "tokens.txt"), \
        SymbolTable.from_file(d / "words.txt")


def _decode(hlg: Fsa, token_ids: list[int], num_outputs: int) -> list[int]:
    """Words (aux_labels > 0) of the best path for log-probs spelling ``token_ids``: a blank
    frame, then 3 frames of each token followed by a blank; 0 for the intended output, -10 for
    the others, log_softmax-normalised."""
    frames = [0]
    for t in token_ids:
        frames += [t, t, t, 0]
    x = torch.full((1, len(frames), num_outputs), -10.0)
    x[0, torch.arange(len(frames)), torch.tensor(frames)] = 0.0
    dense = DenseFsaVec(x.log_softmax(-1), torch.tensor([[0, 0, len(frames)]],
                                                        dtype=torch.int32))
    best = shortest_path(intersect_dense_pruned(hlg, dense, 20.0, 8.0, 30, 10000))
    assert best.num_arcs > 0, "no path found"
    return [w for w in best.aux_labels.tolist() if w > 0]


def test_phone_hlg_sizes(phone_hlg) -> None:
    hlg, stats, tokens, words = phone_hlg
    n = 48
    assert len(words) == n + 4 and tokens["#0"] == n + 1  # <eps> 48 phones #0 <s> </s>
    # a bigram over 48 phones: one LG state per history (+ the back-off state), every
    # phone-to-phone transition present (interpolated KN)
    assert n <= stats["LG_states"] <= n + 2
    assert n * n <= stats["LG_arcs"] <= (n + 2) * (n + 1)
    # CTC H o LG: about a blank state and a token state per LG state, arcs ~ 2x LG's
    assert 2 * n <= stats["HLG_states"] <= 4 * (n + 2)
    assert 2 * n * n <= stats["HLG_arcs"] <= 4 * (n + 2) * (n + 1)
    assert int(hlg.labels.max()) == n and int(hlg.labels.min()) == -1
    assert set(hlg.labels[hlg.labels > 0].tolist()) == set(range(1, n + 1))
    assert int(hlg.aux_labels.max()) <= n
    assert 0 < stats["kaldifst_s"] <= stats["total_s"]


def test_phone_hlg_decodes_reference(phone_hlg, timit_dir, one_thread) -> None:
    hlg, _, tokens, words = phone_hlg
    tg, tt = _local()
    utts = tt.utterances(timit_dir)
    for utt in UTTS:
        ref = tg.map_phones(tt.read_phn(utts[utt]), "48")
        got = _decode(hlg, [int(tokens[p]) for p in ref], int(tokens["#0"]))
        assert [words[w] for w in got] == ref, utt


def test_cmudict_word_hlg_decodes(timit_dir, tmp_path, one_thread) -> None:
    tg, tt = _local()
    lang = tg.prepare_cmudict_lang(timit_dir, tmp_path, order=2)
    assert len(lang.word_table) == 666 + 4  # all the sample's word types are in CMUdict
    hlg, stats = compile_graph(tmp_path, "HLG", "ctc")
    assert stats["HLG_states"] > stats["LG_states"] > 666
    tokens = SymbolTable.from_file(tmp_path / "tokens.txt")
    words = SymbolTable.from_file(tmp_path / "words.txt")
    assert "AH" in tokens and "AH0" not in tokens and "SIL" in tokens  # ARPAbet, no stress
    ref = tt.read_wrd(tt.utterances(timit_dir)[UTTS[0]])
    pron = {}
    for w, _, p in lang.lexicon:
        pron.setdefault(w, p)  # CMUdict's first pronunciation
    spelled = [int(tokens[p]) for w in ref for p in pron[w]]
    got = _decode(hlg, spelled, int(tokens["#0"]))
    assert [words[w] for w in got] == ref
