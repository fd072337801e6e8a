#!/usr/bin/env python3
"""Attention encoder-decoder vs the CTC BLSTM: training step time and peak memory on the same
batch, decoding speed (utterances / s) of greedy, beam 4, beam 8, beam 4 with joint CTC prefix
scoring and beam 4 with shallow fusion, and the offline soft-label pass (tokens / s).

Shapes: B=16 utterances of T=300 fbank frames (80 dims, stacked by 3 -> 100 encoder frames),
U=40 tokens, V=49 (48 TIMIT phones + blank): the TIMIT recipe's models (``ctc_blstm`` encoder
3x256; the attention model adds a 2-layer Transformer decoder, d_model 256). The LM of fusion is
a 2-layer transformer LM (d_model 128, the recipe's); soft labels: an MLM of the same size over
200 transcripts of 40 tokens, k = 8. The models are untrained (random weights) and the
decoder's ``<eos>`` is made improbable, so that every search runs exactly ``max_len`` = U = 40
steps (equal work for every method; a real hypothesis stops at its ``<eos>``). Each figure is the
median of ``--rounds`` rounds; peak memory is the RSS growth of a fresh subprocess.

    python tools/bench/bench_seq2seq.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

from wfst_asr.decode.attention import attention_beam_search, attention_greedy
from wfst_asr.losses import CtcLoss
from wfst_asr.losses.attention import AttentionLoss
from wfst_asr.models import Blstm, BlstmAttention
from wfst_asr.models.attention import decoder_io
from wfst_asr.models.textlm import MaskedLm, TransformerLm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _children import measure, parent_or_child

B, T, F, U, V = 16, 300, 80, 40, 49
ENC = {"hidden": 256, "num_layers": 3, "dropout": 0.3, "subsampling": 3, "subsample_after": 0}
LM = {"d_model": 128, "num_layers": 2, "dim_feedforward": 512}


def make_case(name: str):
    """``(run, items)``: the case's callable and what one call processes (utterances or
    tokens)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, lens = torch.randn(B, T, F, generator=gen), torch.full((B,), T)
    seqs = torch.randint(1, V, (B, U), generator=gen).tolist()
    if name == "train_ctc":
        model, loss = Blstm(F, V, **ENC), CtcLoss(reduction="sum")

        def run():
            model.zero_grad(set_to_none=True)
            lp, n = model(x, lens)
            loss(lp, n, seqs)[0].backward()
        return run, B
    model = BlstmAttention(F, V, **ENC)
    if name == "train_attention":
        att = AttentionLoss()

        def run():
            model.zero_grad(set_to_none=True)
            mem, n = model(x, lens)
            ys_in, ys_out = decoder_io(seqs)
            logits = model.decoder(mem, n, ys_in)
            att(logits, ys_out, model.ctc_log_probs(mem), n, seqs)[0].backward()
        return run, B
    if name == "soft_labels":
        from wfst_asr.train.distill import make_soft_labels

        mlm = MaskedLm(V, **LM).eval()
        texts = torch.randint(1, V, (200, U), generator=gen).tolist()
        tmp = Path(tempfile.mkdtemp())
        (tmp / "teacher.pt").write_bytes(b"teacher")

        def run():
            make_soft_labels(mlm, tmp / "teacher.pt", [f"u{i}" for i in range(200)], texts,
                             tmp / "soft.pt", k=8, progress=False)
        return run, 200 * U
    model.eval()
    with torch.no_grad():  # no <eos> before max_len: every search runs exactly U steps
        model.decoder.output.bias[0] = -1e4
        mem, n = model(x, lens)
        ctc = model.ctc_log_probs(mem)
    lm = TransformerLm(V, **LM).eval()
    dec = model.decoder
    searches = {
        "greedy": lambda: attention_greedy(dec, mem, n, max_len=U),
        "beam4": lambda: attention_beam_search(dec, mem, n, beam=4, max_len=U),
        "beam8": lambda: attention_beam_search(dec, mem, n, beam=8, max_len=U),
        "beam4_ctc": lambda: attention_beam_search(dec, mem, n, beam=4, max_len=U,
                                                   ctc_log_probs=ctc, ctc_weight=0.3),
        "beam4_fusion": lambda: attention_beam_search(dec, mem, n, beam=4, max_len=U, lm=lm,
                                                      lm_weight=0.3),
    }
    return searches[name], B


CASES = ("train_ctc", "train_attention", "greedy", "beam4", "beam8", "beam4_ctc",
         "beam4_fusion", "soft_labels")


def child(name: str, rounds: int, threads: int) -> dict:
    run, items = make_case(name)
    with torch.no_grad() if not name.startswith("train") else torch.enable_grad():
        return {**measure(run, rounds, threads), "items": items}


def main() -> None:
    got = parent_or_child(__doc__, __file__, CASES, child, rounds=3)
    if got is None:
        return
    res, args = got
    ctc = res["train_ctc"]["seconds"]
    print(f"B={B} T={T} U={U} V={V}, {args.threads} threads, median of {args.rounds}")
    print(f"{'case':16s} {'seconds':>8s} {'x CTC step':>10s} {'rate':>14s} {'peak MiB':>9s}")
    for name, r in res.items():
        unit = "tok/s" if name == "soft_labels" else ("" if name.startswith("train") else "utt/s")
        rate = f"{r['items'] / r['seconds']:.1f} {unit}" if unit else ""
        print(f"{name:16s} {r['seconds']:8.3f} {r['seconds'] / ctc:10.2f} {rate:>14s} "
              f"{r['peak_mib']:9.0f}")


if __name__ == "__main__":
    main()
