"""``wfst-asr decode`` / ``wfst-asr score`` end to end on a synthetic task (no shared data).

A tiny phone task (tests/test_train.py's: 3-5 phones of {a, b, c, d} per cut, each phone a few
frames of a phone-dependent 8-dim mean plus noise, precomputed features in a lhotse manifest;
speakers s0..s2 added here) with a phone-level lang dir (each phone its own word, a bigram G over
the training transcripts, the CTC HLG), and a 1-layer BLSTM trained for a few epochs by the
Trainer into a real experiment directory. Checked against references written here:

* the dev choice of lm_scale x word penalty is the argmin, with grid_search's tie-break, of
  error rates computed in the test from ``one_best`` outputs and kaldialign edit distances;
* the test hypotheses are ``one_best`` / ``kaldi_one_best`` at that setting, the greedy ones
  ``greedy_ctc``;
* the score reports' totals and per-speaker rows are kaldialign's counts, also through a
  folding map;
* unusable inputs are one ``wfst-asr decode: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import kaldialign
import pytest
import torch
from lhotse import CutSet
from test_train import PHONES
from test_train import _write_cuts as _write_train_cuts

from wfst_asr.bin.cli import main
from wfst_asr.decode import greedy_ctc, kaldi_one_best, one_best
from wfst_asr.fsa import SymbolTable
from wfst_asr.scoring import score_texts

SCALES, PENALTIES = [0.2, 1.0, 3.0], [-3.0, 0.0, 2.0]
GRID = ["--lm-scales=" + ",".join(map(str, SCALES)),
        "--word-penalties=" + ",".join(map(str, PENALTIES))]  # "=": the values may start with -


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _write_cuts(folder: Path, name: str, n: int, seed: int) -> tuple[Path, list[list[str]]]:
    """test_train's synthetic cuts, with speakers ``s0``, ``s1``, ``s2`` in turn."""
    path = _write_train_cuts(folder, name, n, seed)
    cuts = list(CutSet.from_file(path))
    for i, c in enumerate(cuts):
        c.supervisions[0].speaker = f"s{i % 3}"
    CutSet.from_cuts(cuts).to_file(path)
    return path, [c.supervisions[0].custom["phones"].split() for c in cuts]


def _lang(d: Path, tokens: list[str], sents: list[list[str]]) -> Path:
    from wfst_asr.graphs import lang, lm
    from wfst_asr.graphs.ngram import estimate_ngram

    d.mkdir(parents=True, exist_ok=True)
    (d / "lexicon.txt").write_text("".join(f"{p} {p}\n" for p in tokens))
    lang.prepare_lang(d, d / "lexicon.txt", tokens=tokens, sil_prob=0.0)
    estimate_ngram(sents, 2, vocab=tokens).write_arpa(d / "lm.arpa")
    lm.arpa_to_fst(d / "lm.arpa", d / "words.txt", out_path=d / "G.fst")
    return d


def _train(task: dict, name: str, **overrides) -> Path:
    """A trained experiment directory ``<root>/<name>`` (config.json, averaged.pt)."""
    from wfst_asr.train import ExperimentConfig, Trainer, build_model_and_loss, make_loader
    from wfst_asr.train.trainer import seed_everything

    exp = task["root"] / name
    kw = {"train_cuts": str(task["train"]), "dev_cuts": str(task["dev"]),
          "tokens": str(task["lang"] / "tokens.txt"), "lang_dir": str(task["lang"]),
          "token_field": "phones", "model": "blstm",
          "model_kwargs": {"hidden": 16, "num_layers": 1}, "max_duration": 0.8,
          "bucketing": False, "lr": 3e-2, "num_epochs": 15, "average_last": 1,
          "tensorboard": False, "exp_dir": str(exp), "seed": 5, **overrides}
    cfg = ExperimentConfig(**kw)
    seed_everything(cfg.seed)
    model, loss, table = build_model_and_loss(cfg)
    Trainer(cfg, model, loss, make_loader(cfg, cfg.train_cuts, True),
            make_loader(cfg, cfg.dev_cuts, False), "cpu", token_table=table).fit()
    return exp


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """The data, the lang dir and a trained CTC model."""
    root = tmp_path_factory.mktemp("task")
    train, sents = _write_cuts(root, "train", 30, 0)
    dev, _ = _write_cuts(root, "dev", 9, 1)
    test, _ = _write_cuts(root, "test", 9, 2)
    out = {"root": root, "lang": _lang(root / "lang", PHONES, sents), "train": train,
           "dev": dev, "test": test}
    out["exp"] = _train(out, "exp")
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["-q", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _outputs(task, exp: Path | None = None, sets=("dev", "test")
             ) -> dict[str, tuple[list[str], dict[str, str], dict[str, list[str]], tuple]]:
    """Per set: the model's outputs as the test sees them (one batch of all utterances)."""
    from wfst_asr.train.inference import load_model, run_model

    model, cfg, _ = load_model(exp or task["exp"], "cpu")
    out = {}
    for name in sets:
        batches = run_model(model, task[name], cfg, "cpu", max_duration=1000.0)
        assert len(batches) == 1
        b = batches[0]
        out[name] = (b.ids, dict(zip(b.ids, b.speakers)), dict(zip(b.ids, b.refs)),
                     (b.log_probs, b.lens))
    return out


def _errors(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> tuple[int, int, int, int]:
    """(ins, del, sub, reference length) summed with kaldialign."""
    ins = dels = subs = n = 0
    for u, r in refs.items():
        h = hyps[u]
        n += len(r)
        if not r or not h:
            ins, dels = ins + len(h), dels + len(r)
            continue
        e = kaldialign.edit_distance(r, h)
        ins, dels, subs = ins + e["ins"], dels + e["del"], subs + e["sub"]
    return ins, dels, subs, n


def _read_text(path: Path) -> dict[str, list[str]]:
    return {ln.split()[0]: ln.split()[1:] for ln in path.read_text().splitlines() if ln.split()}


def _report_counts(path: Path) -> tuple[float, int, int, int, int, int]:
    m = re.search(r"%(\w+) ([0-9.]+) \[ (\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub \]",
                  path.read_text().splitlines()[0])
    assert m is not None, path
    rate, err, n, i, d, s = (float(m.group(2)), *map(int, m.groups()[2:]))
    return rate, err, n, i, d, s


def _speaker_rows(path: Path) -> dict[str, tuple[int, ...]]:
    """``{speaker: (#utt, #ref, #err, ins, del, sub)}`` of a report's per-speaker table."""
    lines = path.read_text().split("Per speaker:\n")[1].split("\n\n")[0].splitlines()[1:]
    rows = {}
    for ln in lines:
        f = ln.split()
        rows[f[0]] = (int(f[1]), int(f[2]), *map(int, f[4:]))
    return rows


def test_decode_and_score_against_brute_force(task, tmp_path, capsys):
    out_dir = tmp_path / "dec"
    rc, out, err = _run(capsys, "decode", "--exp-dir", str(task["exp"]), "--lang-dir",
                        str(task["lang"]), "--dev-cuts", str(task["dev"]), "--test-cuts",
                        str(task["test"]), *GRID, "--metric", "PER", "--out-dir", str(out_dir))
    assert rc == 0, err
    assert "decoded dev, test with greedy, hlg, kaldi" in out
    settings = json.loads((out_dir / "settings.json").read_text())
    assert list(settings["methods"]) == ["greedy", "hlg", "kaldi"]

    data = _outputs(task)
    words = SymbolTable.from_file(task["lang"] / "words.txt")
    tokens = SymbolTable.from_file(task["lang"] / "tokens.txt")

    def word_str(seqs):
        return [[str(words.get(i)) for i in s] for s in seqs]

    # references and speakers as written
    for name in ("dev", "test"):
        ids, spk, refs, _ = data[name]
        assert _read_text(out_dir / "ref" / f"{name}.ref") == refs
        assert _read_text(out_dir / "ref" / f"{name}.utt2spk") == {u: [s] for u, s in spk.items()}
    # the dev choice: brute force over the grid, rates from kaldialign, grid_search's tie-break
    ids, _, refs, (lp, lens) = data["dev"]
    hlg_graph = _hlg(task)
    table = []
    for s in SCALES:
        for wp in PENALTIES:
            hyps = dict(zip(ids, word_str(one_best(hlg_graph, lp, lens, lm_scale=s,
                                                   word_penalty=wp))))
            i, d, sub, n = _errors(refs, hyps)
            table.append(((i + d + sub) / n, s, abs(wp), wp, hyps))
    best = min(table, key=lambda r: r[:4])
    hlg = settings["methods"]["hlg"]
    assert hlg["setting"] == {"lm_scale": best[1], "word_penalty": best[3]}
    assert hlg["tune_error"] == pytest.approx(100.0 * best[0])
    assert len({r[0] for r in table}) > 1, "the grid should matter on this task"
    assert _read_text(out_dir / "hlg" / "dev.hyp") == best[4]
    sweep = (out_dir / "hlg" / "sweep_dev.txt").read_text().splitlines()
    assert len(sweep) == 1 + len(table) and sum("<- best" in ln for ln in sweep) == 1
    # test: each method at the chosen setting (kaldi at hlg's), greedy CTC on tokens
    ids, _, refs, (lp, lens) = data["test"]
    s, wp = best[1], best[3]
    want = {"hlg": word_str(one_best(hlg_graph, lp, lens, lm_scale=s, word_penalty=wp)),
            "kaldi": word_str(kaldi_one_best(hlg_graph, lp, lens, lm_scale=s, word_penalty=wp)),
            "greedy": [[str(tokens.get(i)) for i in h] for h in greedy_ctc(lp, lens)]}
    assert settings["methods"]["kaldi"]["setting"] == hlg["setting"]
    for m, hyps in want.items():
        assert _read_text(out_dir / m / "test.hyp") == dict(zip(ids, hyps)), m
    same = sum(a == b for a, b in zip(want["kaldi"], want["hlg"]))
    assert settings["methods"]["kaldi"]["same_1best_as"]["hlg"]["test"] == [same, len(ids)]

    # score: totals and per-speaker rows are kaldialign's counts
    rc, out, err = _run(capsys, "score", "--decode-dir", str(out_dir))
    assert rc == 0, err
    for m, hyps in want.items():
        hyp = dict(zip(ids, hyps))
        i, d, sub, n = _errors(refs, hyp)
        rate, e, n2, i2, d2, s2 = _report_counts(out_dir / f"per_{m}_test.txt")
        assert (e, n2, i2, d2, s2) == (i + d + sub, n, i, d, sub)
        assert rate == pytest.approx(round(100.0 * (i + d + sub) / n, 2))
        spk = data["test"][1]
        rows = _speaker_rows(out_dir / f"per_{m}_test.txt")
        for sp in sorted(set(spk.values())):
            utts = [u for u in ids if spk[u] == sp]
            i, d, sub, n = _errors({u: refs[u] for u in utts}, {u: hyp[u] for u in utts})
            assert rows[sp] == (len(utts), n, i + d + sub, i, d, sub)
    results = (out_dir / "results.txt").read_text()
    for m in want:
        for name in ("dev", "test"):
            assert re.search(rf"^{m} +{name} +PER ", results, re.MULTILINE), (m, name)
    same = sum(a == b for a, b in zip(want["hlg"], want["kaldi"]))
    assert f"test utterances where hlg and kaldi agree: {same}/{len(ids)}" in results
    assert "dev utterances where" not in results  # the tune set is not compared


def _hlg(task):
    from wfst_asr.graphs.compile import compile_graph

    return compile_graph(task["lang"], kind="HLG", topo="ctc")[0]


def test_folding_map_and_other_sets(task, tmp_path, capsys):
    """--map folds references and hypotheses before scoring (files stay unfolded); --cuts
    NAME=PATH sets; a single grid point needs no tune set; score --metric overrides."""
    table = tmp_path / "fold.map"
    table.write_text("# full half\na a\nb a\nc c\nd\n")
    out_dir = tmp_path / "dec"
    rc, _, err = _run(capsys, "decode", "--exp-dir", str(task["exp"]), "--lang-dir",
                      str(task["lang"]), "--cuts", f"eval={task['test']}", "--methods",
                      "hlg,greedy", "--lm-scales", "1", "--word-penalties", "0", "--metric",
                      "per", "--map", str(table), "--map-from", "full", "--map-to", "half",
                      "--out-dir", str(out_dir))
    assert rc == 0, err
    settings = json.loads((out_dir / "settings.json").read_text())
    assert settings["sets"] == ["eval"] and list(settings["methods"]) == ["hlg", "greedy"]
    assert settings["map"] == {"file": str(table), "from": "full", "to": "half"}
    refs = _read_text(out_dir / "ref" / "eval.ref")
    assert any("b" in r or "d" in r for r in refs.values())  # written unfolded
    rc, _, err = _run(capsys, "score", "--decode-dir", str(out_dir))
    assert rc == 0, err
    fold = {"a": "a", "b": "a", "c": "c", "d": None}
    folded_refs = {u: [fold[p] for p in r if fold[p]] for u, r in refs.items()}
    for m in ("hlg", "greedy"):
        hyps = _read_text(out_dir / m / "eval.hyp")
        folded = {u: [fold[p] for p in h if fold[p]] for u, h in hyps.items()}
        i, d, sub, n = _errors(folded_refs, folded)
        assert _report_counts(out_dir / f"per_{m}_eval.txt")[1:] == (i + d + sub, n, i, d, sub)
    # without the map, as WER: the unfolded counts
    (out_dir / "settings.json").write_text(json.dumps({**settings, "map": None}))
    rc, _, err = _run(capsys, "score", "--decode-dir", str(out_dir), "--metric", "WER")
    assert rc == 0, err
    hyps = _read_text(out_dir / "hlg" / "eval.hyp")
    i, d, sub, n = _errors(refs, hyps)
    assert _report_counts(out_dir / "wer_hlg_eval.txt")[1:] == (i + d + sub, n, i, d, sub)


@pytest.mark.parametrize("loss", ["hmm", "transducer"])
def test_hmm_and_transducer_models(task, tmp_path, capsys, loss):
    """The default methods of an HMM model (with the prior of its mean posteriors over the
    training cuts) and of a transducer; one method of each against the library's search on
    outputs computed here."""
    from wfst_asr.decode.transducer import greedy_search
    from wfst_asr.graphs.compile import compile_graph
    from wfst_asr.graphs.topo import make_topology, pdf_output_graph
    from wfst_asr.train.inference import load_model

    if loss == "hmm":
        exp = _train(task, "hmm", loss="hmm", num_epochs=4, loss_kwargs={
            "topology": "hmm-1state", "mode": "forward", "prior_scale": 0.3})
        methods = ["greedy", "hclg", "kaldi"]
    else:
        exp = _train(task, "transducer", loss="transducer", model="blstm_transducer",
                     num_epochs=2, loss_kwargs={"ctc_scale": 0.3}, model_kwargs={
                         "hidden": 16, "num_layers": 1, "encoder_dim": 16, "decoder_dim": 16,
                         "joiner_dim": 16, "context_size": 2, "aux_ctc": True})
        methods = ["greedy", "beam", "fast_beam", "fast_beam_lg", "aux_ctc"]
    out_dir = tmp_path / "dec"
    rc, _, err = _run(capsys, "decode", "--exp-dir", str(exp), "--lang-dir", str(task["lang"]),
                      "--dev-cuts", str(task["dev"]), "--test-cuts", str(task["test"]), *GRID,
                      "--out-dir", str(out_dir))
    assert rc == 0, err
    settings = json.loads((out_dir / "settings.json").read_text())
    assert list(settings["methods"]) == methods
    for m in methods:
        for name in ("dev", "test"):
            assert (out_dir / m / f"{name}.hyp").is_file()
    data = _outputs(task, exp, ("test", "train") if loss == "hmm" else ("test",))
    ids, _, _, (lp, lens) = data["test"]
    words = SymbolTable.from_file(task["lang"] / "words.txt")
    if loss == "hmm":
        assert "mean posteriors" in settings["model"]["prior"]
        _, _, _, (tlp, tlens) = data["train"]
        mask = (torch.arange(tlp.shape[1]) < tlens[:, None]).unsqueeze(-1)
        prior = (tlp.double().exp() * mask).sum((0, 1)) / tlens.sum()
        shift = (0.3 * prior.clamp(min=1e-20).log()).float()
        shift[0] = 0.0
        topo = make_topology("hmm-1state", len(PHONES))
        hclg, _ = compile_graph(task["lang"], kind="HCLG", topo="hmm-1state",
                                out_dir=task["lang"] / "hmm-1state")
        st = settings["methods"]["hclg"]["setting"]
        want = one_best(pdf_output_graph(hclg, topo.tid2pdf), lp - shift, lens,
                        lm_scale=st["lm_scale"], word_penalty=st["word_penalty"])
        assert _read_text(out_dir / "hclg" / "test.hyp") == {
            u: [str(words.get(i)) for i in h] for u, h in zip(ids, want)}
    else:
        model, _, _ = load_model(exp, "cpu")
        want = greedy_search(model.decoder, model.joiner, lp, lens)
        assert _read_text(out_dir / "greedy" / "test.hyp") == {
            u: [PHONES[i - 1] for i in h] for u, h in zip(ids, want)}
        assert settings["methods"]["fast_beam_lg"]["setting"] is not None


def test_graph_file_instead_of_lang_dir(task, tmp_path, capsys):
    """--graph HLG.pt without --lang-dir: the words come from the graph's own table; the same
    hypotheses as with the lang dir."""
    hyps = {}
    for how in ("lang", "graph"):
        src = (["--lang-dir", str(task["lang"])] if how == "lang"
               else ["--graph", str(task["lang"] / "HLG.pt")])
        rc, _, err = _run(capsys, "decode", "--exp-dir", str(task["exp"]), *src, "--test-cuts",
                          str(task["test"]), "--methods", "hlg,kaldi", "--lm-scales", "0.5",
                          "--word-penalties", "0", "--out-dir", str(tmp_path / how))
        assert rc == 0, err
        hyps[how] = [_read_text(tmp_path / how / m / "test.hyp") for m in ("hlg", "kaldi")]
    assert hyps["graph"] == hyps["lang"]


def test_word_level_lang_dir(task, tmp_path):
    """A lang dir of real words over the model's tokens: references from the supervision text,
    only the methods that output words by default."""
    from wfst_asr.graphs import lang, lm
    from wfst_asr.graphs.ngram import estimate_ngram
    from wfst_asr.train.decoder import DecodeError, DecodeOptions, Decoder

    d = tmp_path / "words"
    d.mkdir()
    (d / "lexicon.txt").write_text("AB a b\nCD c d\nA a\nDC d c\n")
    lang.prepare_lang(d, d / "lexicon.txt", tokens=PHONES, sil_prob=0.0)
    estimate_ngram([["AB", "CD"], ["A", "DC"]], 2).write_arpa(d / "lm.arpa")
    lm.arpa_to_fst(d / "lm.arpa", d / "words.txt", out_path=d / "G.fst")
    dec = Decoder(task["exp"], d, log=None)
    assert dec.word_level and dec.ref_field == "text" and list(dec.methods) == ["hlg", "kaldi"]
    with pytest.raises(DecodeError, match="do not apply"):
        Decoder(task["exp"], d, options=DecodeOptions(methods=["fast_beam"]), log=None)


def test_score_texts_cer_and_fold():
    refs = {"u1": ["ab", "c"], "u2": ["xy"]}
    hyps = {"u1": ["a", "bd"], "u2": []}
    rep = score_texts(refs, hyps, {"u1": "s"}, "CER")
    # characters, spaces left out: abc vs abd (1 sub), xy vs nothing (2 del)
    assert (rep.total.ref_len, rep.total.subs, rep.total.dels, rep.total.ins) == (5, 1, 2, 0)
    assert list(rep.speakers) == ["s"] and rep.speakers["s"].ref_len == 3


@pytest.mark.parametrize("case", ["no-exp", "other-tokens", "fewer-tokens", "bad-method",
                                  "no-tune-set", "bad-map-column"])
def test_errors_are_one_line_exit_2(task, tmp_path, capsys, case):
    args = ["--exp-dir", str(task["exp"]), "--lang-dir", str(task["lang"]), "--dev-cuts",
            str(task["dev"]), "--out-dir", str(tmp_path / "dec")]
    needle = {"no-exp": "no such experiment directory", "other-tokens": "not the model's",
              "fewer-tokens": "not the model's", "bad-method": "do not apply",
              "no-tune-set": "tune set", "bad-map-column": "no column"}[case]
    if case == "no-exp":
        args[1] = str(tmp_path / "missing")
    elif case in ("other-tokens", "fewer-tokens"):
        toks = ["a", "b", "c", "e"] if case == "other-tokens" else ["a", "b", "c"]
        args[3] = str(_lang(tmp_path / "lang2", toks, [toks, toks[::-1]]))
    elif case == "bad-method":
        args += ["--methods", "greedy,beam"]
    elif case == "no-tune-set":
        args = [a if a != "--dev-cuts" else "--test-cuts" for a in args] + GRID
    else:
        (tmp_path / "m.map").write_text("a a\nb b\nc c\nd d\n")
        args += ["--map", str(tmp_path / "m.map"), "--map-from", "48", "--map-to", "39"]
    rc, _, err = _run(capsys, "decode", *args)
    assert rc == 2
    assert err.startswith("wfst-asr decode: error: ") and err.count("\n") == 1, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "dec" / "settings.json").exists()


def test_score_of_a_missing_dir(tmp_path, capsys):
    rc, _, err = _run(capsys, "score", "--decode-dir", str(tmp_path / "nothing"))
    assert rc == 2 and err.startswith("wfst-asr score: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("beam", [1.0, 20.0])
def test_forced_best_counts_search_and_model_errors(task, tmp_path, capsys, beam):
    """--forced-best: per wrong utterance, the reference's and the 1-best's best path scores
    in the graph; a search error is a reference that scores higher. Checked against the
    forced scores of the references and hypotheses recomputed here, and a full search
    (beam 20 on this tiny graph) has no search error."""
    from wfst_asr.decode.forced import TIE, ForcedBest

    out_dir = tmp_path / "dec"
    rc, _out, err = _run(capsys, "decode", "--exp-dir", str(task["exp"]), "--lang-dir",
                        str(task["lang"]), "--dev-cuts", str(task["dev"]), "--test-cuts",
                        str(task["test"]), "--methods", "hlg", "--lm-scales", "1.0",
                        "--word-penalties", "0", "--search-beam", str(beam), "--max-active",
                        "3" if beam < 2 else "10000", "--forced-best", "--metric", "PER",
                        "--out-dir", str(out_dir))
    assert rc == 0, err
    settings = json.loads((out_dir / "settings.json").read_text())
    counts = settings["methods"]["hlg"]["forced_best"]
    words = SymbolTable.from_file(task["lang"] / "words.txt")
    fb = ForcedBest(_hlg(task), lm_scale=1.0, word_penalty=0.0)
    data = _outputs(task)
    for name in ("dev", "test"):
        ids, _, refs, (lp, lens) = data[name]
        hyps = _read_text(out_dir / "hlg" / f"{name}.hyp")
        rows = [ln.split("\t") for ln in
                (out_dir / "hlg" / f"forced_best_{name}.tsv").read_text().splitlines()[1:]]
        assert [r[0] for r in rows] == ids
        got = {r[0]: (r[1], float(r[2]), float(r[3])) for r in rows}
        want = {"correct": 0, "search": 0, "model": 0, "unreachable": 0}
        for b, u in enumerate(ids):
            ref = [words[w] for w in refs[u]]
            hyp = [words[w] for w in hyps[u]]
            if ref == hyp:
                kind = "correct"
            else:
                rs = fb.scores(lp[b:b + 1], lens[b:b + 1], [ref])[0].item()
                hs = fb.scores(lp[b:b + 1], lens[b:b + 1], [hyp])[0].item()
                assert got[u][1:] == (pytest.approx(rs, abs=2e-3), pytest.approx(hs, abs=2e-3))
                kind = "search" if rs > hs + TIE else "model"
            assert got[u][0] == kind, u
            want[kind] += 1
        assert counts[name] == want
        if beam >= 20:
            assert want["search"] == 0
