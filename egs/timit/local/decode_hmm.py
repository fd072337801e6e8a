#!/usr/bin/env python3
"""Stages 4-5 of egs/timit/run.sh for HMM (``--loss hmm``) and LF-MMI (``--loss mmi``) models:
decode dev and test with the graph of the training topology and score PER.

The topology is the one the model was trained with (``loss_kwargs.topology`` of its
``config.json``, :func:`wfst_asr.train.criteria.loss_topology`), over the lang dir's phone
bigram G:

* an HMM topology (``hmm-1state``, ``hmm-3state``, ``chain``; the ``hmm`` loss, or ``mmi`` with
  such a topology): the HCLG (:func:`wfst_asr.graphs.compile.compile_graph`, cached in
  ``<lang_dir>/<topology>/``), its transition-ids relabelled with the network's output columns
  ``pdf + 1`` (:func:`wfst_asr.graphs.topo.pdf_output_graph`; no input epsilon). Greedy:
  per-frame argmax over the pdf columns, pdf -> phone, runs of the same phone merged (an HMM has
  no blank, so two equal phones in a row come out as one);
* a CTC topology (``mmi`` by default): the CTC HLG of the lang dir (as ``decode_timit.py``) and
  greedy CTC decoding.

An HMM model with ``loss.prior_scale`` alpha > 0 is decoded, greedy included, with the scaled
likelihoods ``log p(s|x) - alpha * log p(s)`` (``--prior-scale`` overrides alpha). The prior:
for a hybrid trained on given alignments (``loss.ali_topology``, e.g. the GMM-aligned
``timit.hmm_blstm``), the relative frequencies of its training targets (the alignments of the
training cuts at the output rate, :func:`wfst_asr.losses.align.alignment_prior`), as classic
hybrids do; otherwise the mean softmax output of the model over the TRAINING cuts. Such a
hybrid's ``token_field`` holds alignments, so the references come from ``--ref-field``
(default ``phones_48``).

Then, as ``decode_timit.py`` (whose pieces this script imports): ``one_best`` with ``lm_scale`` x
phone insertion penalty tuned on DEV only, the chosen setting on test, ``kaldi_one_best`` at
that setting as a cross-check (kaldi-decoder's ``DecodableCtc`` reads graph label ``k`` from
network column ``k``, after the +1 shift of :func:`wfst_asr.decode.kaldi_ctc_graph`), the share
of identical test 1-bests, and PER on the 39-phone set with per-speaker reports:
``<exp_dir>/per_{greedy,hclg|hlg,kaldi}_{dev,test}.txt`` and ``<exp_dir>/results.txt``.

    python egs/timit/local/decode_hmm.py --loss hmm --exp-dir exp/hmm_blstm \\
        --lang-dir data/lang_phone
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from decode_timit import (
    Evaluation,
    decode_all,
    decode_graph,
    load_exp_model,
    parse_args,
    write_results,
)

from wfst_asr.decode import greedy_ctc
from wfst_asr.fsa import SymbolTable
from wfst_asr.graphs.compile import compile_graph
from wfst_asr.graphs.lang import read_token_list
from wfst_asr.graphs.topo import Topology, pdf_output_graph
from wfst_asr.losses import HmmLoss, alignment_prior
from wfst_asr.train.criteria import alignment_criterion, loss_options, loss_topology
from wfst_asr.train.inference import run_model


def pdf_to_phone(topo: Topology) -> torch.Tensor:
    """int64 ``[num_pdfs + 1]``: the token (phone id) of each network column ``pdf + 1``
    (column 0, unused: 0)."""
    tm = topo.transition_model
    out = torch.zeros(topo.num_pdfs + 1, dtype=torch.int64)
    for tid in range(1, tm.num_transition_ids + 1):
        out[int(topo.tid2pdf[tid]) + 1] = tm.transition_id_to_phone(tid)
    return out


def greedy_hmm(log_probs: torch.Tensor, lens: torch.Tensor, phone_of: torch.Tensor
               ) -> list[list[int]]:
    """Per-frame argmax over the pdf columns (1..), mapped to phones, runs merged."""
    best = log_probs[..., 1:].argmax(-1) + 1
    phones = phone_of[best]
    out = []
    for row, n in zip(phones, lens.tolist()):
        seq = row[:n]
        keep = torch.ones_like(seq, dtype=torch.bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append(seq[keep].tolist())
    return out


def decoding_graph(topo: Topology, cfg: dict, lang_dir: Path):
    """``(graph, name, compile stats)``: the HCLG relabelled to pdf + 1 columns, or the CTC
    HLG (``compile_graph`` reuses a cached graph of the same topology and options)."""
    if topo.is_ctc:
        out = lang_dir if topo.name == "ctc" else lang_dir / topo.name
        hlg, stats = compile_graph(lang_dir, kind="HLG", topo=topo.name, out_dir=out)
        return hlg, "HLG", stats
    opts = loss_options(cfg)
    hclg, stats = compile_graph(lang_dir, kind="HCLG", topo=topo.name, out_dir=lang_dir / topo.name,
                                transition_scale=opts["transition_scale"],
                                self_loop_scale=opts["self_loop_scale"])
    return pdf_output_graph(hclg, topo.tid2pdf), "HCLG", stats


def train_prior(model, cfg: dict, device: torch.device, max_duration: float) -> torch.Tensor:
    """float64 ``[V]``: the model's mean softmax output over the frames of the training cuts."""
    total, frames = None, 0
    for _, _, _, lp, lens in run_model(model, cfg["train_cuts"], cfg, device, max_duration):
        n = int(lens.sum())
        part = HmmLoss.estimate_prior(lp, lens) * n
        total = part if total is None else total + part
        frames += n
    return total / max(frames, 1)


def counts_prior(cfg: dict, topo: Topology) -> torch.Tensor:
    """float64 ``[V]``: the prior of the training targets of a hybrid trained on alignments
    (``cfg["token_field"]`` of the training cuts, at the model's output rate)."""
    from lhotse import CutSet

    crit = alignment_criterion(cfg, HmmLoss(topo, mode="ce"), topo)
    field = cfg["token_field"]
    alis = [s.custom[field] for c in CutSet.from_file(cfg["train_cuts"]) for s in c.supervisions
            if s.custom and field in s.custom]
    if not alis:
        raise SystemExit(f"error: no {field!r} alignments in {cfg['train_cuts']}")
    targets = crit.targets([a.split() if isinstance(a, str) else a for a in alis])
    return alignment_prior(targets, crit.num_outputs)


def _extra_args(parser) -> None:
    parser.add_argument("--ref-field", default="phones_48",
                        help="supervision field of the references when the model's token_field "
                             "holds alignments (loss.ali_topology set)")
    parser.add_argument("--prior-scale", type=float, default=None,
                        help="alpha of log p(s|x) - alpha * log p(s) (HMM topologies; default: "
                             "the model's loss.prior_scale)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__, losses=("hmm", "mmi"), extra=_extra_args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, ckpt = load_exp_model(args.exp_dir, device)
    if cfg.get("loss") != args.loss:
        raise SystemExit(f"error: {args.exp_dir} holds a {cfg.get('loss')!r} model, not "
                         f"{args.loss!r}")
    topo = loss_topology(cfg)
    print(f"model {cfg['model']} ({cfg['loss']}, topology {topo.name}) from {ckpt} on {device}")
    tokens = read_token_list(cfg["tokens"])            # id k (>= 1) = tokens[k - 1]
    words = SymbolTable.from_file(args.lang_dir / "words.txt")
    graph, name, stats = decoding_graph(topo, cfg, args.lang_dir)
    print(f"{name} ({topo.name}): {graph.num_states} states, {graph.num_arcs} arcs"
          f"{' (cached)' if stats.get('cached') else ''}")
    opts = loss_options(cfg)
    aligned = bool(opts.get("ali_topology"))
    ev = Evaluation(model, {**cfg, "token_field": args.ref_field} if aligned else cfg, args,
                    device)
    alpha = args.prior_scale
    if alpha is None:
        alpha = float(opts.get("prior_scale", 0.0))
    prior_note = []
    if alpha and not topo.is_ctc:
        prior = (counts_prior(cfg, topo) if aligned
                 else train_prior(model, cfg, device, args.max_duration))
        shift = (alpha * prior.clamp(min=1e-20).log()).float()
        shift[0] = 0.0
        for split in ev.data:
            ev.data[split] = [(i, s, r, lp - shift, n) for i, s, r, lp, n in ev.data[split]]
        prior_note = [(f"scaled likelihoods: log p(s|x) - {alpha:g} * log p(s), prior "
                       f"{'of the alignment counts' if aligned else 'of the mean posteriors'} "
                       f"over {cfg['train_cuts']}")]
        print(prior_note[0])

    def tok_str(ids: list[int]) -> list[str]:
        return [tokens[i - 1] for i in ids]

    def word_str(ids: list[int]) -> list[str]:
        return [str(words.get(i)) for i in ids]

    if topo.is_ctc:
        greedy = greedy_ctc
    else:
        phone_of = pdf_to_phone(topo)

        def greedy(lp, n):
            return greedy_hmm(lp, n, phone_of)

    results: dict[str, dict[str, object]] = {}
    for split in ("dev", "test"):
        hyps = decode_all(ev.data[split], greedy)
        results.setdefault("greedy", {})[split] = ev.per(split, {u: tok_str(h)
                                                                for u, h in hyps.items()})
    graph_results, header, footer = decode_graph(ev, graph, args, word_str, name)
    results.update(graph_results)
    header = [f"loss {cfg['loss']}, topology {topo.name}, {name} from {args.lang_dir}",
              *prior_note, *header]
    print(write_results(args.exp_dir, ckpt, results, header, [footer]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
