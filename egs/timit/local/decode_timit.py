#!/usr/bin/env python3
"""Stages 4-5 of egs/timit/run.sh: decode dev and test with a trained CTC model and score PER.

* loads ``<exp_dir>/averaged.pt`` (else ``best.pt``) and rebuilds the model from its saved
  configuration (``config.json``) with :func:`wfst_asr.models.build_model`;
* runs it once over the dev and test cuts (CMVN as in training) and keeps the log-probs;
* decodes with ``greedy_ctc``, with the HLG (``one_best``; ``lm_scale`` and the phone
  insertion penalty tuned on DEV over ``--lm-scales`` x ``--word-penalties``, then applied to
  test) and with ``kaldi_one_best`` at the chosen setting;
* reports the share of test utterances whose two graph 1-bests are identical;
* scores PER on the 39-phone set (48 -> 39 folding) with a per-speaker breakdown, writing
  ``<exp_dir>/per_{greedy,hlg,kaldi}_{dev,test}.txt`` (atomically) and printing a summary.

    python egs/timit/local/decode_timit.py --exp-dir exp/ctc_blstm --lang-dir data/lang_phone
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lhotse import CutSet

from wfst_asr.atomic import atomic_write_text
from wfst_asr.data import AsrDataset, make_dataloader, make_sampler
from wfst_asr.decode import greedy_ctc, kaldi_ctc_graph, kaldi_one_best, one_best
from wfst_asr.fsa import SymbolTable
from wfst_asr.graphs.compile import compile_graph
from wfst_asr.graphs.lang import read_token_list
from wfst_asr.scoring import PhoneMap, score
from wfst_asr.train import build_model_from_config, load_checkpoint

MAP_FILE = Path(__file__).resolve().parent / "phones.60-48-39.map"


def load_model(exp_dir: Path, device: torch.device) -> tuple[torch.nn.Module, dict, Path]:
    ckpt = next((exp_dir / n for n in ("averaged.pt", "best.pt") if (exp_dir / n).is_file()),
                None)
    if ckpt is None:
        raise SystemExit(f"error: no averaged.pt or best.pt in {exp_dir} (run stage 3)")
    state = load_checkpoint(ckpt)
    cfg_path = exp_dir / "config.json"
    cfg = (json.loads(cfg_path.read_text()) if cfg_path.is_file() else state.get("config"))
    if not cfg:
        raise SystemExit(f"error: no config.json in {exp_dir} and none in {ckpt}")
    model = build_model_from_config(cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, ckpt


@torch.no_grad()
def run_model(model, cuts_path: str, cfg: dict, device: torch.device, max_duration: float):
    """[(utt ids, speakers, refs(48), log_probs cpu [B,T,V], lens [B])] per batch, where row b of
    log_probs belongs to ids[b]."""
    cuts = CutSet.from_file(cuts_path)
    sampler = make_sampler(cuts, max_duration, shuffle=False, bucketing=False)
    dataset = AsrDataset(cmvn=cfg.get("cmvn") or None, spec_augment=False)
    out = []
    field = cfg.get("token_field", "phones_48")
    for batch in make_dataloader(dataset, sampler):
        if batch["features"].shape[0] == 0:
            continue
        lp, lens = model(batch["features"].to(device), batch["feature_lens"].to(device))
        sup = batch["supervisions"]
        B = lp.shape[0]
        ids, spk, refs = [None] * B, [None] * B, [None] * B
        for i, seq in enumerate(sup["sequence_idx"].tolist()):
            ids[seq] = sup["id"][i]
            spk[seq] = sup["speaker"][i]
            ref = sup[field][i]
            refs[seq] = ref.split() if isinstance(ref, str) else list(ref)
        out.append((ids, spk, refs, lp.float().cpu(), lens.cpu()))
    return out


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def decode_all(batches, fn) -> dict[str, list[int]]:
    hyps: dict[str, list[int]] = {}
    for ids, _, _, lp, lens in batches:
        for uid, h in zip(ids, fn(lp, lens)):
            hyps[uid] = h
    return hyps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", type=Path, required=True)
    parser.add_argument("--loss", choices=("ctc",), default="ctc",
                        help="the criterion the model was trained with (this script: CTC)")
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_phone"))
    parser.add_argument("--dev-cuts", default="data/fbank/timit_cuts_dev.jsonl.gz")
    parser.add_argument("--test-cuts", default="data/fbank/timit_cuts_test.jsonl.gz")
    parser.add_argument("--lm-scales", default="0.1,0.2,0.3,0.5,0.7,1.0")
    parser.add_argument("--word-penalties", default="-2,-1,0,1",
                        help="word (here: phone) insertion penalties tried on dev with every "
                             "lm scale, Kaldi's --word-ins-penalty (negative = bonus)")
    parser.add_argument("--search-beam", type=float, default=20.0)
    parser.add_argument("--max-duration", type=float, default=200.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, ckpt = load_model(args.exp_dir, device)
    print(f"model {cfg['model']} from {ckpt} on {device}")
    tokens = read_token_list(cfg["tokens"])            # id k (>= 1) = tokens[k - 1]
    words = SymbolTable.from_file(args.lang_dir / "words.txt")
    hlg, _ = compile_graph(args.lang_dir, kind="HLG", topo="ctc")
    pmap = PhoneMap.from_file(MAP_FILE)

    def fold(seq: list[str]) -> list[str]:
        return pmap.fold(seq, to="39", source="48")

    def tok_str(ids: list[int]) -> list[str]:
        return [tokens[i - 1] for i in ids]

    def word_str(ids: list[int]) -> list[str]:
        return [str(words.get(i)) for i in ids]

    data, refs39, speaker_of = {}, {}, {}
    for split, path in (("dev", args.dev_cuts), ("test", args.test_cuts)):
        t0 = time.perf_counter()
        data[split] = run_model(model, path, cfg, device, args.max_duration)
        refs39[split] = {u: fold(r) for ids, _, refs, _, _ in data[split]
                         for u, r in zip(ids, refs)}
        speaker_of.update({u: s for ids, spk, _, _, _ in data[split] for u, s in zip(ids, spk)})
        print(f"{split}: {len(refs39[split])} utterances through the model "
              f"({time.perf_counter() - t0:.1f} s)")

    def per(split: str, hyps_str: dict[str, list[str]]):
        return score(refs39[split], {u: fold(h) for u, h in hyps_str.items()}, speaker_of,
                     metric="PER")

    results: dict[str, dict[str, object]] = {}
    # greedy
    for split in ("dev", "test"):
        hyps = decode_all(data[split], greedy_ctc)
        results.setdefault("greedy", {})[split] = per(split, {u: tok_str(h)
                                                             for u, h in hyps.items()})
    # HLG: tune (lm_scale, word_penalty) on dev only, then apply to test
    scales = _floats(args.lm_scales)
    penalties = _floats(args.word_penalties)
    tuning = []
    for s in scales:
        for wp in penalties:
            hyps = decode_all(data["dev"], lambda lp, n, s=s, wp=wp: one_best(
                hlg, lp, n, search_beam=args.search_beam, lm_scale=s, word_penalty=wp))
            rep = per("dev", {u: word_str(h) for u, h in hyps.items()})
            tuning.append((s, wp, rep))
            print(f"  HLG dev lm_scale={s:<4g} word_penalty={wp:<5g} PER {rep.rate:.2f}%  "
                  f"({rep.summary()})")
    best_scale, best_wp, best_dev = min(tuning, key=lambda t: (t[2].rate, t[0], abs(t[1])))
    print(f"chosen lm_scale {best_scale:g}, word_penalty {best_wp:g} "
          f"(dev PER {best_dev.rate:.2f}%)")
    results["hlg"] = {"dev": best_dev}
    hlg_test = decode_all(data["test"], lambda lp, n: one_best(
        hlg, lp, n, search_beam=args.search_beam, lm_scale=best_scale, word_penalty=best_wp))
    results["hlg"]["test"] = per("test", {u: word_str(h) for u, h in hlg_test.items()})
    # kaldi at the chosen setting
    kgraph = kaldi_ctc_graph(hlg, lm_scale=best_scale, word_penalty=best_wp)
    kaldi_hyps = {}
    for split in ("dev", "test"):
        kaldi_hyps[split] = decode_all(data[split], lambda lp, n: kaldi_one_best(
            kgraph, lp, n, beam=args.search_beam))
        results.setdefault("kaldi", {})[split] = per(
            split, {u: word_str(h) for u, h in kaldi_hyps[split].items()})
    same = sum(hlg_test[u] == kaldi_hyps["test"][u] for u in hlg_test)
    agree = 100.0 * same / max(len(hlg_test), 1)

    args.exp_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"TIMIT PER (39 phones, folded from 48), model {ckpt}",
             (f"HLG tuned on dev: lm_scale {best_scale:g} (of {scales}), word_penalty "
              f"{best_wp:g} (of {penalties})")]
    for method in ("greedy", "hlg", "kaldi"):
        for split in ("dev", "test"):
            rep = results[method][split]
            path = args.exp_dir / f"per_{method}_{split}.txt"
            rep.write(path)
            lines.append(f"{method:6s} {split:4s} PER {rep.rate:6.2f}%  ({rep.summary()})  "
                         f"-> {path}")
    lines.append(f"test utterances where HLG one_best and kaldi_one_best agree: "
                 f"{same}/{len(hlg_test)} ({agree:.1f}%)")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.exp_dir / "results.txt", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
