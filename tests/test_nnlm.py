"""The LSTM LM (wfst_asr.models.lm) and n-best rescoring with it (wfst_asr.decode.nnlm,
``wfst-asr lattice-rescore --mode nbest-nnlm``), against references written here: a
hand-written LSTM recurrence, a brute-force sweep with its own edit distance."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_lattice import make_case
from tests.test_lattice_cmd import GOOD, WORDS, _check_skips, _words, data  # noqa: F401
from wfst_asr.bin.cli import main
from wfst_asr.decode.lattice import best_word_sequences
from wfst_asr.decode.lattice_io import symbol_table_checksum
from wfst_asr.decode.nbest import Nbest, nbest_one
from wfst_asr.decode.nnlm import add_nnlm_scores, error_rate, rescore, sweep
from wfst_asr.models.lm import LstmLm
from wfst_asr.train.checkpoint import save_checkpoint
from wfst_asr.train.lm import load_lm, train_lm


# ----------------------------------------------------------------------------- references
def _ref_seq_logprob(lm: LstmLm, seq: list[int]) -> float:
    """log P(seq </s>) by the LSTM equations, one step at a time, in float64."""
    p = {k: v.detach().double() for k, v in lm.state_dict().items()}
    L, H = lm.kwargs["num_layers"], lm.kwargs["hidden_dim"]
    h = [torch.zeros(H, dtype=torch.float64) for _ in range(L)]
    c = [torch.zeros(H, dtype=torch.float64) for _ in range(L)]
    total = 0.0
    prev = lm.bos
    for target in list(seq) + [lm.eos]:
        x = p["embed.weight"][prev]
        for k in range(L):
            g = (p[f"lstm.weight_ih_l{k}"] @ x + p[f"lstm.bias_ih_l{k}"]
                 + p[f"lstm.weight_hh_l{k}"] @ h[k] + p[f"lstm.bias_hh_l{k}"])
            i, f, gg, o = g.split(H)
            c[k] = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(gg)
            h[k] = torch.sigmoid(o) * torch.tanh(c[k])
            x = h[k]
        logits = p["out.weight"] @ x + p["out.bias"]
        m = float(logits.max())
        lse = m + math.log(sum(math.exp(float(v) - m) for v in logits))
        total += float(logits[target]) - lse
        prev = target
    return total


def _edit_distance(r, h) -> int:
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)]


def _brute_error(refs, hyps) -> float:
    return 100.0 * sum(_edit_distance(r, h) for r, h in zip(refs, hyps)) / \
        sum(len(r) for r in refs)


class _RiggedLm:
    """Scores 0 for one word sequence, -1000 for any other."""

    def __init__(self, liked: list[int]) -> None:
        self.liked = liked
        self.calls = 0

    def score(self, seqs, batch_size=256):
        self.calls += 1
        return torch.tensor([0.0 if list(s) == self.liked else -1000.0 for s in seqs],
                            dtype=torch.float64)


# ----------------------------------------------------------------------------- the LM
def test_score_equals_stepwise_lstm():
    torch.manual_seed(0)
    lm = LstmLm(7, embed_dim=5, hidden_dim=6, num_layers=2, dropout=0.3)
    lm.train()  # score() must switch dropout off by itself (and restore the mode)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 7, (n,), generator=g).tolist() for n in (3, 0, 6, 1, 4, 4, 9)]
    got = lm.score(seqs, batch_size=3)
    assert lm.training and got.dtype == torch.float64 and got.shape == (len(seqs),)
    want = torch.tensor([_ref_seq_logprob(lm, s) for s in seqs], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # batched or not, in any order: the same numbers
    torch.testing.assert_close(lm.score(seqs[::-1], batch_size=1), want.flip(0), atol=1e-5,
                               rtol=1e-5)
    # a proper distribution over sequences: all sequences of length <= 2 over a 2-word vocab
    small = LstmLm(2, embed_dim=3, hidden_dim=4, num_layers=1, dropout=0.0)
    every = [[]] + [[a] for a in range(2)] + [[a, b] for a in range(2) for b in range(2)]
    p_len = small.score(every).exp()
    # P(len 0) + P(len 1) + P(len 2) = 1 - P(longer than 2) < 1
    assert 0 < float(p_len.sum()) < 1
    with pytest.raises(ValueError, match="outside the LM's vocabulary"):
        lm.score([[1, 7]])


def test_train_lm_lowers_dev_perplexity(tmp_path):
    sents = [[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 1], [6, 5, 4, 3, 2, 1]]
    corpus = sents * 10
    dev = [[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]]
    lm, hist = train_lm(corpus, 7, tmp_path, dev_sequences=dev, epochs=6, batch_size=6, lr=0.02,
                        model_kwargs={"embed_dim": 16, "hidden_dim": 24, "num_layers": 1,
                                      "dropout": 0.0}, words_checksum="abc")
    ppl = [r["dev_ppl"] for r in hist]
    assert len(ppl) == 6 and min(ppl) < 0.5 * ppl[0] and min(ppl) < 3.0  # uniform: 8
    assert not lm.training
    # best on dev: the returned model has the lowest dev perplexity of the run
    dev_lp = lm.score(dev)
    n_sym = sum(len(s) + 1 for s in dev)
    assert math.exp(-float(dev_lp.sum()) / n_sym) == pytest.approx(min(ppl), rel=1e-4)
    # the corpus sentence ranks above a shuffled one
    shuffled = [4, 1, 6, 2, 5, 3]
    s = lm.score([sents[0], shuffled])
    assert float(s[0]) > float(s[1]) + 5
    # lm.pt loads back (weights_only) with the same scores and the checksum
    again = load_lm(tmp_path / "lm.pt")
    assert again.words_checksum == "abc"
    torch.testing.assert_close(again.score(dev), dev_lp)
    for name in ("best.pt", "epoch-6.pt", "config.json"):
        assert (tmp_path / name).is_file()
    assert not list(tmp_path.glob(".tmp-*"))
    assert load_lm(tmp_path / "best.pt").score(dev).allclose(dev_lp)
    # no dev set given: a held-out part of the corpus; resume continues after epoch 1
    kw = {"batch_size": 6, "model_kwargs": {"embed_dim": 4, "hidden_dim": 4, "num_layers": 1}}
    _, h1 = train_lm(corpus, 7, tmp_path / "split", epochs=1, **kw)
    _, h2 = train_lm(corpus, 7, tmp_path / "split", epochs=2, resume=True, **kw)
    assert [r["epoch"] for r in h2] == [1, 2] and h2[0]["dev_loss"] == h1[0]["dev_loss"]
    with pytest.raises(ValueError, match="outside the LM's vocabulary"):
        train_lm([[1, 2], [3, 9]], 7, tmp_path / "bad")


def test_load_lm_bad_files(tmp_path):
    from wfst_asr.train.checkpoint import CheckpointError

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_lm(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "am.pt", {"model": {}, "config": {"model": "blstm"}})
    with pytest.raises(CheckpointError, match="not an LSTM LM"):
        load_lm(tmp_path / "am.pt")


# ----------------------------------------------------------------------------- rescoring
@pytest.fixture(scope="module")
def lists():
    c = make_case(21, T=6)
    lat = c["lat"]
    return lat, [nbest_one(lat[b], 8) for b in range(lat.num_fsas)]


def test_nnlm_weight_zero_gives_first_best(lists):
    lat, nbs = lists
    assert all(len(nb) >= 2 for nb in nbs)
    torch.manual_seed(3)
    lm = LstmLm(4, embed_dim=4, hidden_dim=5, num_layers=1)
    add_nnlm_scores(nbs, lm, batch_size=3)
    for nb in nbs:
        torch.testing.assert_close(nb.extra_scores["nnlm"], lm.score(nb.word_seqs))
    assert rescore(nbs, nnlm_scale=0.0) == best_word_sequences(lat)
    # the same with the lists' own scales given explicitly
    assert rescore(nbs, nbs[0].lm_scale, 0.0, nbs[0].word_penalty) == best_word_sequences(lat)


def test_rigged_lm_wins(lists):
    _, nbs = lists
    for nb in nbs:
        liked = nb.word_seqs[-1]  # the worst entry of the list
        rig = _RiggedLm(liked)
        add_nnlm_scores([nb], rig)
        assert rig.calls == 1
        assert rescore([nb], nnlm_scale=1.0) == [liked]
        assert nb.reranked(weights={"nnlm": 1.0}).word_seqs[0] == liked
        assert rescore([nb], nnlm_scale=0.0) == [nb.word_seqs[0]] != [liked]


def _random_lists(seed: int, n_utt: int = 6, k: int = 5) -> tuple[list[Nbest], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    nbs, refs = [], []
    for _ in range(n_utt):
        seqs = [torch.randint(1, 4, (int(torch.randint(1, 6, (1,), generator=g)),),
                              generator=g).tolist() for _ in range(k)]
        am, lm, nn = (torch.randn(k, generator=g, dtype=torch.float64) * 3 for _ in range(3))
        nb = Nbest(seqs, am, lm, [[0]] * k, 0.7, 0.2)
        nb.add_scores("nnlm", nn)
        nbs.append(nb)
        refs.append(torch.randint(1, 4, (4,), generator=g).tolist())
    return nbs, refs


def test_sweep_matches_brute_force():
    nbs, refs = _random_lists(5)
    lm_scales, nn_scales, wps = [0.0, 0.5, 1.0, 2.0], [0.0, 0.5, 1.5], [-1.0, 0.0, 1.0]
    res = sweep(nbs, refs, lm_scales, nn_scales, wps)
    brute = []  # grid_search's sweep order: lm_scale, word_penalty, nnlm_scale innermost
    for s in lm_scales:
        for wp in wps:
            for w in nn_scales:
                hyps = []
                for nb in nbs:
                    tot = [float(nb.am_scores[i]) + s * float(nb.lm_scores[i])
                           - wp * len(nb.word_seqs[i]) + w * float(nb.extra_scores["nnlm"][i])
                           for i in range(len(nb))]
                    hyps.append(nb.word_seqs[max(range(len(nb)), key=lambda i: tot[i])])
                brute.append((s, wp, w, _brute_error(refs, hyps)))
    assert res.names == ("lm_scale", "word_penalty", "nnlm_scale")
    assert [r[:3] for r in res.table] == [r[:3] for r in brute]
    for a, b in zip(res.table, brute):
        assert a[3] == pytest.approx(b[3])

    def rule(r):  # the lowest error, then lm_scale, |penalty|, penalty, nnlm_scale
        return (round(r[3], 9), r[0], abs(r[1]), r[1], r[2])

    best = min(brute, key=rule)
    assert res.best == {"lm_scale": best[0], "word_penalty": best[1], "nnlm_scale": best[2]}
    assert res.error == pytest.approx(best[3])
    assert len({round(b[3], 6) for b in brute}) > 1  # the grid matters on this data
    text = res.format_table().splitlines()
    assert len(text) == 1 + len(brute) and "%ER" in text[0]
    assert text[1 + brute.index(best)].endswith("<- best")
    assert sum("<- best" in t for t in text) == 1
    # a custom error function; mappings utt -> list / words
    res2 = sweep({f"u{i}": nb for i, nb in enumerate(nbs)},
                 {f"u{i}": r for i, r in enumerate(refs)}, lm_scales, nn_scales, wps,
                 error_fn=lambda rs, hs: -_brute_error(rs, hs))
    worst = min(brute, key=lambda r: (-round(r[3], 9), *rule(r)[1:]))
    assert tuple(res2.best.values()) == worst[:3]
    with pytest.raises(ValueError, match="empty grid"):
        sweep(nbs, refs, lm_scales, [], wps)


def test_error_rate():
    assert error_rate([[1, 2, 3], [4]], [[1, 3], [4, 5]]) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        error_rate([[1]], [])


# ----------------------------------------------------------------------------- the tool
def _save_lm(path, words_checksum, seed=7):
    torch.manual_seed(seed)
    lm = LstmLm(4, embed_dim=4, hidden_dim=5, num_layers=1)
    save_checkpoint(path, {"model": lm.state_dict(), "lm_kwargs": lm.kwargs,
                           "words_checksum": words_checksum})
    return lm.eval()


def test_lattice_rescore_nbest_nnlm(data, capsys, tmp_path):  # noqa: F811
    lm = _save_lm(tmp_path / "lm.pt", symbol_table_checksum(WORDS))
    best = tmp_path / "best.txt"
    tsv = tmp_path / "nbest.tsv"
    args = ["lattice-rescore", str(data["dir"]), "--mode", "nbest-nnlm", "--lm-model",
            str(tmp_path / "lm.pt"), "--nnlm-scale", "2.5", "--n", "5", "--utt-batch", "2",
            "--best-path", str(best), "--nbest-out", str(tsv), "--no-progress"]
    assert main(args) == 0
    _check_skips(capsys.readouterr().err, "lattice-rescore")
    want = []
    for u in GOOD:
        nb = nbest_one(data["want"][u], 5)
        nb.add_scores("nnlm", lm.score(nb.word_seqs))
        want.append(f"{u} {_words(nb.best(weights={'nnlm': 2.5}))}".rstrip())
    assert best.read_text().splitlines() == want
    rows = tsv.read_text().splitlines()
    assert rows[0].split("\t")[:6] == ["utt", "rank", "total", "am", "lm", "nnlm"]
    assert {r.split("\t")[0] for r in rows[1:]} == set(GOOD)
    # an LM over another word table: a clear error, nothing written
    _save_lm(tmp_path / "lm_other.pt", "0" * 64)
    never = tmp_path / "never.txt"
    assert main(args[:5] + [str(tmp_path / "lm_other.pt"), "--best-path", str(never),
                            "--no-progress"]) == 2
    assert "another word table" in capsys.readouterr().err
    assert not never.exists()
    # no --lm-model / a broken one
    assert main(["lattice-rescore", str(data["dir"]), "--mode", "nbest-nnlm", "--best-path",
                 str(never)]) == 2
    assert "needs --lm-model" in capsys.readouterr().err
    (tmp_path / "broken.pt").write_bytes(b"xx")
    assert main(args[:5] + [str(tmp_path / "broken.pt"), "--best-path", str(never)]) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert not never.exists()


def test_train_nnlm_and_sweep_tools(data, capsys, tmp_path):  # noqa: F811
    words_txt = tmp_path / "words.txt"
    words_txt.write_text(WORDS.to_str())
    text = tmp_path / "text"
    text.write_text("".join(f"u{i} a b c a\n" for i in range(12)) + "bad a z\n")
    exp = tmp_path / "nnlm"
    assert main(["train-nnlm", str(text), str(words_txt), str(exp), "--epochs", "2",
                 "--batch-size", "4", "--lr", "0.02", "--embed-dim", "4", "--hidden-dim", "6",
                 "--num-layers", "1"]) == 0
    cap = capsys.readouterr()
    assert "skipped 1 lines" in cap.err and "best dev ppl" in cap.out
    lm = load_lm(exp / "lm.pt")
    assert lm.vocab_size == 4 and lm.words_checksum == symbol_table_checksum(WORDS)
    assert main(["train-nnlm", str(text), str(words_txt), str(tmp_path / "x"), "--oov",
                 "error", "--epochs", "1"]) == 2
    assert "text:13: word 'z'" in capsys.readouterr().err
    # the sweep on the lattice directory, against the library on the same lists
    refs = {"ok1": ["a", "b"], "ok2": ["c"], "ok3": ["a", "c", "b"], "empty": ["a"]}
    ref_txt = tmp_path / "ref.txt"
    ref_txt.write_text("".join(f"{u} {' '.join(w)}\n" for u, w in refs.items()))
    out = tmp_path / "best.json"
    assert main(["nnlm-sweep", str(data["dir"]), str(ref_txt), "--lm-model", str(exp / "lm.pt"),
                 "--n", "5", "--lm-scales", "0.5,1,2", "--nnlm-scales", "0,1,3",
                 "--word-penalties=-1,0,1", "--out", str(out), "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "3 lattices done, 3 skipped" in cap.err and "<- best" in cap.out
    nbs = {u: nbest_one(data["want"][u], 5) for u in GOOD}
    add_nnlm_scores(list(nbs.values()), lm)
    ids = {u: [WORDS[w] for w in ws] for u, ws in refs.items()}
    want = sweep(nbs, ids, [0.5, 1, 2], [0, 1, 3], [-1, 0, 1])
    import json
    got = json.loads(out.read_text())
    assert got == pytest.approx(want.as_dict())


@pytest.mark.parametrize("cmd", ["train-nnlm", "nnlm-sweep", "lattice-rescore"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "nnlm" in capsys.readouterr().out
