"""Decoding of the monophone GMM (``train_mono.py``): HCLG of the GMM's topology, PER.

The GMM log-likelihoods of each pdf, times the acoustic scale, fill network-style
``[B, T, num_pdfs + 1]`` scores (column 0 unused, :func:`wfst_asr.graphs.topo.
pdf_output_graph`), and ``decode_timit.decode_graph`` does the rest as for the neural models:
``one_best`` with ``lm_scale`` x phone insertion penalty tuned on DEV, ``kaldi_one_best`` at
that setting, PER on 39 phones -> ``<out_dir>/per_{hclg,kaldi}_{dev,test}.txt`` and
``<out_dir>/results.txt``.
"""

from __future__ import annotations

import argparse
import time

import torch
from decode_timit import MAP_FILE, Evaluation, decode_graph, write_results

from wfst_asr.fsa import SymbolTable
from wfst_asr.gmm import MonoGmm
from wfst_asr.graphs.compile import compile_graph
from wfst_asr.graphs.topo import Topology, pdf_output_graph
from wfst_asr.scoring import PhoneMap


class GmmEvaluation(Evaluation):
    """:class:`decode_timit.Evaluation` whose "model outputs" are the GMM's scaled
    log-likelihoods (one batch per split)."""

    def __init__(self, model: MonoGmm, data: dict, token_field: str, acoustic_scale: float
                 ) -> None:
        self.pmap = PhoneMap.from_file(MAP_FILE)
        self.data, self.refs39, self.speaker_of = {}, {}, {}
        for split in ("dev", "test"):
            fb, feats, _, spk = data[split]
            ids = sorted(feats)
            refs = {c.id: c.supervisions[0].custom[token_field].split() for c in fb}
            lens = torch.tensor([feats[u].shape[0] for u in ids])
            lp = torch.zeros(len(ids), int(lens.max()), model.am.num_pdfs + 1)
            for i, u in enumerate(ids):
                lp[i, :lens[i], 1:] = (acoustic_scale * model.log_likelihoods(feats[u])).float()
            self.data[split] = [(ids, [spk[u] for u in ids], [refs[u] for u in ids], lp, lens)]
            self.refs39[split] = {u: self.fold(refs[u]) for u in ids}
            self.speaker_of.update({u: spk[u] for u in ids})


def decode_gmm(model: MonoGmm, topo: Topology, data: dict, args: argparse.Namespace) -> str:
    """Decode dev and test with the GMM (module docstring); return the results text."""
    t0 = time.perf_counter()
    hclg, stats = compile_graph(args.lang_dir, kind="HCLG", topo=topo.name,
                                out_dir=args.out_dir / "graph",
                                transition_scale=1.0, self_loop_scale=args.self_loop_scale)
    graph = pdf_output_graph(hclg, topo.tid2pdf)
    print(f"HCLG ({topo.name}, self_loop_scale {args.self_loop_scale:g}): {graph.num_states} "
          f"states, {graph.num_arcs} arcs{' (cached)' if stats.get('cached') else ''}")
    words = SymbolTable.from_file(args.lang_dir / "words.txt")
    ev = GmmEvaluation(model, data, args.token_field, args.acoustic_scale)
    results, header, footer = decode_graph(ev, graph, args,
                                           lambda ids: [str(words.get(i)) for i in ids], "HCLG")
    header = [(f"monophone GMM ({topo.name}, {model.num_gauss} Gaussians), acoustic scale "
              f"{args.acoustic_scale:g}, HCLG from {args.lang_dir}"), *header]
    text = write_results(args.out_dir, args.out_dir / "gmm.pt", results, header, [footer])
    print(text, end="")
    print(f"GMM decoding took {time.perf_counter() - t0:.1f} s")
    return text
