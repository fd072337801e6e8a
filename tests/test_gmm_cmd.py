"""``wfst-asr train-mono`` (wfst_asr.bin.gmm_cmd, wfst_asr.gmm.recipe) end to end on a tiny
synthetic corpus made here, and its optional-silence training graphs against brute force.

* corpus: "phones" A, B, C are sine tones (500, 1500, 3000 Hz), silence is faint noise;
  words X = A B, Y = C, Z = B C; every utterance starts and ends with silence and has pauses
  between some words, but the transcripts have no silence. The truth of every frame is known;
* graphs: with ``--optional-silence`` the training graph of a transcript has, path for path,
  the HMM paths of every way to put the silence at the start and after each word (token), with
  score ``log sil_prob`` / ``log(1 - sil_prob)`` per place (Kaldi's L), enumerated by hand;
* the command: outputs exist, one pdf per frame (the frame count of the cut's features when
  it has some), the phones of each alignment are the transcript's in order, silence frames
  are aligned to the silence and tone frames to the phones, unalignable cuts are left out and
  counted, and bad input is one line ``wfst-asr train-mono: error: FILE[:LINE]: ...``, exit 2.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO_ROOT

try:
    from tests import reference as ref
except ImportError:  # pragma: no cover - run from inside tests/
    import reference as ref

from wfst_asr.bin.cli import main
from wfst_asr.fsa import SymbolTable
from wfst_asr.gmm.recipe import InputError, parse_set, set_name
from wfst_asr.graphs import hmm_output_id, hmm_topo
from wfst_asr.graphs.lang import lexicon_to_fst, prepare_lang, read_token_list
from wfst_asr.graphs.topo import make_topology, phone_pdfs
from wfst_asr.graphs.training import HmmTrainingGraphCompiler

SR = 16000
FREQS = {"A": 500.0, "B": 1500.0, "C": 3000.0}
LEXICON = {"X": ["A", "B"], "Y": ["C"], "Z": ["B", "C"]}
PHONE_S, PAUSE_S, EDGE_S = 0.15, 0.25, 0.3


# ---------------------------------------------------------------------------- graphs
def _hmm_paths(seq: list[int], n: int, p: float, T: int) -> list[tuple[tuple[int, ...], float]]:
    """(output ids, score) of every way through the HMM states of ``seq`` in T frames, by
    hmm_topo's rules: stay ``log p``, next state (and leaving the last) ``log(1 - p)``."""
    ids = [hmm_output_id(t, j, n) for t in seq for j in range(n)]
    found = []

    def walk(k: int, labels: tuple[int, ...], score: float) -> None:
        labels = labels + (ids[k],)
        if len(labels) == T:
            if k == len(ids) - 1:
                found.append((labels, score + math.log(1 - p)))
            return
        walk(k, labels, score + math.log(p))
        if k + 1 < len(ids):
            walk(k + 1, labels, score + math.log(1 - p))

    if ids:
        walk(0, (), 0.0)
    return found


def _with_silence(prons: list[list[list[int]]], sil: int, q: float):
    """(tokens, L score) for every pronunciation choice and silence at the start and after
    each word (or not)."""
    out = [([], 0.0)]
    for k in range(len(prons) + 1):
        out = [(toks + [sil], s + math.log(q)) for toks, s in out] + \
              [(toks, s + math.log(1 - q)) for toks, s in out]
        if k < len(prons):
            out = [(toks + pron, s) for toks, s in out for pron in prons[k]]
    return out


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("words", [True, False])
def test_optional_silence_graphs_path_by_path(n, words):
    """Graphs of HmmTrainingGraphCompiler with an L from lexicon_to_fst (sil_token, sil_prob)
    have exactly the paths (output ids and scores) enumerated by hand, for T = 1..8 frames;
    with words = False every token is its own word (token transcripts)."""
    q, p = 0.3, 0.4
    tokens = SymbolTable({"<blk>": 0, "a": 1, "b": 2, "c": 3, "SIL": 4})
    if words:
        table = SymbolTable({"<eps>": 0, "x": 1, "y": 2})
        lexicon = [("x", None, ["a", "b"]), ("y", None, ["c"]), ("y", None, ["b", "c"])]
        prons = {1: [[1, 2]], 2: [[3], [2, 3]]}
        texts = [[1, 2], [2], [], [1, 1]]
    else:
        table = tokens
        lexicon = [(t, None, [t]) for t in ("a", "b", "c", "SIL")]
        prons = {i: [[i]] for i in range(1, 5)}
        texts = [[1, 2], [3, 4], []]
    L = lexicon_to_fst(lexicon, tokens, table, sil_token="SIL", sil_prob=q)
    graphs = HmmTrainingGraphCompiler(hmm_topo(4, n, math.log(p)), lexicon=L).compile(texts)
    for i, text in enumerate(texts):
        g = graphs[i]
        for T in range(1, 9):
            want = sorted((lab, s + s_l) for toks, s_l in _with_silence(
                [prons[w] for w in text], 4, q) for lab, s in _hmm_paths(toks, n, p, T))
            got = sorted(ref.graph_paths(g, T))
            assert [lab for lab, _ in got] == [lab for lab, _ in want], (text, T)
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


# ---------------------------------------------------------------------------- the corpus
def _utterance(words: list[str], pauses: list[bool], gen: np.random.Generator
               ) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Audio and the true segments ``(start, end, phone or SIL)``."""
    parts, segs, t = [], [], 0.0

    def add(seconds: float, what: str) -> None:
        nonlocal t
        k = round(seconds * SR)
        if what == "SIL":
            x = 0.001 * gen.standard_normal(k)
        else:
            x = 0.3 * np.sin(2 * np.pi * FREQS[what] * np.arange(k) / SR + gen.uniform(0, 6))
        parts.append(x)
        segs.append((t, t + k / SR, what))
        t += k / SR

    add(EDGE_S, "SIL")
    for w, pause in zip(words, pauses):
        for ph in LEXICON[w]:
            add(PHONE_S * gen.uniform(0.8, 1.3), ph)
        if pause:
            add(PAUSE_S, "SIL")
    add(EDGE_S, "SIL")
    return np.concatenate(parts).astype(np.float32), segs


def _make_cuts(folder, name: str, num: int, seed: int, extra: dict[str, str] | None = None):
    """Write ``num`` utterances (and ``extra`` ones: id -> transcript on 0.1 s of noise) as a
    cut set ``<folder>/toy_cuts_<name>.jsonl.gz``; return its path and the true segments."""
    from lhotse import CutSet, Recording, SupervisionSegment

    gen = np.random.default_rng(seed)
    cuts, truth, items = [], {}, []
    for i in range(num):
        words = [str(w) for w in gen.choice(list(LEXICON), size=int(gen.integers(2, 5)))]
        audio, segs = _utterance(words, [bool(gen.integers(0, 2)) for _ in words[:-1]] + [False],
                                 gen)
        items.append((f"{name}{i:02d}", words, audio))
        truth[f"{name}{i:02d}"] = segs
    for uid, text in (extra or {}).items():
        items.append((uid, text.split(), 0.001 * gen.standard_normal(SR // 10)))
    for uid, words, audio in items:
        wav = folder / f"{uid}.wav"
        sf.write(wav, audio, SR, subtype="PCM_16")
        cut = Recording.from_file(wav, recording_id=uid).to_cut()
        cut.id = uid
        phones = " ".join(ph for w in words for ph in LEXICON.get(w, [w]))
        cut.supervisions = [SupervisionSegment(uid, uid, 0.0, cut.duration, text=" ".join(words),
                                               speaker="spk" + uid[-1],
                                               custom={"phones": phones})]
        cuts.append(cut)
    path = folder / f"toy_cuts_{name}.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    return path, truth


@pytest.fixture(scope="module", name="toy")
def toy_fixture(tmp_path_factory):
    """The corpus: 24 training cuts (+1 unalignable), 6 dev cuts with fbank features (+1
    unalignable), and a lang dir with SIL."""
    from lhotse import CutSet

    from wfst_asr.data import compute_features

    d = tmp_path_factory.mktemp("toy")
    train, truth = _make_cuts(d, "train", 24, 0, {"trainlong": "X Z X Z X Z X Z"})
    dev_raw, dev_truth = _make_cuts(d, "devraw", 6, 1, {"devlong": "Z X Z X Z X Z X"})
    dev = d / "fb_cuts_dev.jsonl.gz"
    compute_features(CutSet.from_file(dev_raw), d / "fbank", manifest_path=dev)
    (d / "lexicon.txt").write_text("".join(f"{w} {' '.join(p)}\n" for w, p in LEXICON.items()))
    prepare_lang(d / "lang", d / "lexicon.txt", sil_token="SIL")
    return {"train": train, "dev": dev, "lang": d / "lang", "truth": {**truth, **dev_truth}}


def _run(*args: str) -> int:
    return main(["train-mono", *map(str, args)])


QUICK = ("--num-iters", "6", "--max-iter-inc", "3", "--tot-gauss", "40", "--realign-iters",
         "1,2,3,4,5")


def _phone_of(topology: str, lang) -> dict[int, tuple[str, int]]:
    tokens = read_token_list(lang / "tokens.txt")
    topo = make_topology(topology, len(tokens))
    return {q: (tokens[ph - 1], j) for ph, qs in phone_pdfs(topo).items()
            for j, q in enumerate(qs)}


def _phone_instances(ali: list[int], pdf_phone: dict[int, tuple[str, int]]) -> list[str]:
    """Phones of an alignment, one per HMM pass (a new one where state 0 is entered)."""
    out, prev = [], None
    for q in ali:
        ph, j = pdf_phone[q]
        if prev is None or ph != prev[0] or (j == 0 and prev[1] != 0):
            out.append(ph)
        prev = (ph, j)
    return out


def test_train_mono_words_with_optional_silence(toy, tmp_path, capsys):
    from lhotse import CutSet

    out = tmp_path / "mono"
    assert _run("--train-cuts", toy["train"], "--align-cuts", toy["dev"], "--lang-dir",
                toy["lang"], "--token-field", "text", "--optional-silence", "SIL", "--out-dir",
                out, *QUICK) == 0
    log = capsys.readouterr().out
    for f in ("gmm.pt", "train_log.tsv", "summary.json", "cuts_train.jsonl.gz", "ali_train.pt",
              "cuts_dev.jsonl.gz", "ali_dev.pt"):
        assert (out / f).is_file(), f
    assert "[train] 24 of 25 cuts aligned" in log and "1 left out" in log and "trainlong" in log
    assert "[dev] 6 of 7 cuts aligned" in log and "devlong" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sets"]["train"]["left_out"] == ["trainlong"]
    assert summary["sets"]["dev"]["left_out"] == ["devlong"]
    assert summary["sets"]["dev"]["frames_adjusted"] == 0
    assert summary["optional_silence"] == "SIL" and summary["sil_prob"] == 0.5
    saved = torch.load(out / "gmm.pt")
    assert saved["topology"] == "hmm-3state" and saved["num_tokens"] == 4
    assert {"params", "self_loop_scale", "options"} <= set(saved)
    rows = (out / "train_log.tsv").read_text().splitlines()
    assert len(rows) == 7 and float(rows[-1].split("\t")[2]) > float(rows[1].split("\t")[2])

    pdf_phone = _phone_of("hmm-3state", toy["lang"])
    alis = {**torch.load(out / "ali_train.pt"), **torch.load(out / "ali_dev.pt")}
    hits = total = 0
    for s in ("train", "dev"):
        cuts = list(CutSet.from_file(out / f"cuts_{s}.jsonl.gz"))
        assert len(cuts) == (24 if s == "train" else 6)
        for c in cuts:
            sup = c.supervisions[0]
            ali = [int(x) for x in sup.custom["gmm_ali"].split()]
            assert ali == alis[c.id].tolist()
            frames = c.num_frames if c.has_features else round(c.duration * 100)
            assert len(ali) == frames, c.id
            phones = _phone_instances(ali, pdf_phone)
            assert [p for p in phones if p != "SIL"] == sup.custom["phones"].split(), c.id
            assert phones[0] == "SIL" and phones[-1] == "SIL"
            for start, end, what in toy["truth"][c.id]:  # frames 60 ms or more from an edge
                for t in range(int(start * 100) + 6, min(int(end * 100) - 6, len(ali))):
                    total += 1
                    hits += (pdf_phone[ali[t]][0] == "SIL") == (what == "SIL")
    assert hits / total > 0.97, (hits, total)


def test_train_mono_tokens_named_sets(toy, tmp_path, capsys):
    """Token transcripts (a custom field) with optional silence after every token, 1-state
    topology, sets named NAME=PATH, another alignment field."""
    from lhotse import CutSet

    out = tmp_path / "mono1"
    assert _run("--train-cuts", f"tr={toy['train']}", "--align-cuts", f"d1={toy['dev']}",
                "--lang-dir", toy["lang"], "--token-field", "phones", "--optional-silence",
                "SIL", "--sil-prob", "0.3", "--topology", "hmm-1state", "--ali-field", "ali1",
                "--out-dir", out, *QUICK) == 0
    assert "[tr] 24 of 25 cuts aligned" in capsys.readouterr().out
    pdf_phone = _phone_of("hmm-1state", toy["lang"])

    def runs(phones: list[str]) -> list[str]:  # one state per phone: repeats merge
        return [p for k, p in enumerate(phones) if k == 0 or p != phones[k - 1]]

    for c in CutSet.from_file(out / "cuts_d1.jsonl.gz"):
        ali = [pdf_phone[int(x)][0] for x in c.supervisions[0].custom["ali1"].split()]
        assert ali[0] == "SIL" and ali[-1] == "SIL"
        assert runs([p for p in ali if p != "SIL"]) == runs(
            c.supervisions[0].custom["phones"].split())
    assert torch.load(out / "gmm.pt")["topology"] == "hmm-1state"


def test_set_names():
    assert set_name("data/fbank/timit_cuts_dev.jsonl.gz") == "dev"
    assert set_name("cuts_train.jsonl.gz") == "train"
    assert set_name("yesno.jsonl") == "yesno"
    assert parse_set("held=a/b_c.jsonl.gz") == ("held", Path("a/b_c.jsonl.gz"))
    assert parse_set("x/y=z/cuts_dev.json")[0] == "dev"


def _error(capsys, *args: str) -> str:
    assert _run(*args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("wfst-asr train-mono: error: ")
    return err


def test_errors(toy, tmp_path, capsys):
    from lhotse import CutSet, RecordingSet

    base = ("--lang-dir", toy["lang"], "--out-dir", tmp_path / "o", *QUICK)
    missing = tmp_path / "nope_cuts_train.jsonl.gz"
    err = _error(capsys, "--train-cuts", missing, "--token-field", "text", *base)
    assert f"error: {missing}: no such file" in err
    # a token not in tokens.txt, a word not in the lexicon: FILE:LINE: cut ID
    cuts = list(CutSet.from_file(toy["train"]))
    sup = cuts[2].supervisions[0]
    sup.custom = {**sup.custom, "phones": "A Q B"}
    sup.text = "X W"
    bad = tmp_path / "bad_cuts_train.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(bad)
    err = _error(capsys, "--train-cuts", bad, "--token-field", "phones", *base)
    assert f"error: {bad}:3: cut {cuts[2].id}: token 'Q'" in err and "tokens.txt" in err
    err = _error(capsys, "--train-cuts", bad, "--token-field", "text", *base)
    assert f"error: {bad}:3: cut {cuts[2].id}: word 'W' is not in the lexicon" in err
    recs = tmp_path / "recs.jsonl.gz"
    RecordingSet.from_recordings(c.recording for c in cuts).to_file(recs)
    err = _error(capsys, "--train-cuts", recs, "--token-field", "text", *base)
    assert f"error: {recs}:1: a Recording, not a cut" in err
    err = _error(capsys, "--train-cuts", toy["train"], "--token-field", "nofield", *base)
    assert f"error: {toy['train']}:1: cut " in err and "no field 'nofield'" in err
    err = _error(capsys, "--train-cuts", toy["train"], "--token-field", "text",
                 "--optional-silence", "SPN", *base)
    assert "tokens.txt: has no optional-silence token 'SPN'" in err
    err = _error(capsys, "--train-cuts", toy["train"], "--align-cuts", toy["train"],
                 "--token-field", "text", *base)
    assert "a second cut set named 'train'" in err
    assert not (tmp_path / "o" / "gmm.pt").exists()
    with pytest.raises(InputError, match="no such file"):
        _run("--train-cuts", missing, "--token-field", "text", "--debug", *base)


def test_error_exit_code_of_the_command(tmp_path):
    """The installed command: exit 2, one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "wfst_asr.bin.cli", "train-mono",
                           "--train-cuts", str(tmp_path / "x.jsonl.gz"), "--lang-dir",
                           str(tmp_path), "--token-field", "text", "--out-dir",
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO_ROOT,
                          check=False)
    assert proc.returncode == 2
    want = f"wfst-asr train-mono: error: {tmp_path}/tokens.txt: no such file"
    assert proc.stderr.splitlines() == [want]
