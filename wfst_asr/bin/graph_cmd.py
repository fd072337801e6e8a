"""``wfst-asr compile-graph``: compile LG / HLG (TLG) / HCLG from a lang directory."""

from __future__ import annotations

import argparse
import logging


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``compile-graph`` sub-command."""
    from wfst_asr.graphs.compile import GRAPH_KINDS
    from wfst_asr.graphs.topo import TOPOLOGIES

    p = sub.add_parser(
        "compile-graph",
        help="compile a decoding graph (LG, HLG/TLG, HCLG) from a lang dir",
        description="Compile a decoding graph from LANG_DIR/{L_disambig.fst,G.fst,tokens.txt,"
                    "words.txt}; write <KIND>.fst (OpenFst binary), <KIND>.pt and "
                    "<KIND>.stamp.json (HCLG: also HCLG.tid2pdf.txt). Outputs newer than the "
                    "inputs with unchanged options are reused unless --force.",
)
    p.add_argument("--lang-dir", required=True, help="lang directory (prepare-lang + G.fst)")
    p.add_argument("--kind", default="HLG", choices=GRAPH_KINDS,
                   help="graph: LG; HLG or TLG (CTC topology); HCLG (HMM topology); "
                        "default HLG")
    p.add_argument("--topo", default=None, choices=TOPOLOGIES,
                   help="topology H (ignored for LG; default: ctc for HLG/TLG, hmm-3state for "
                        "HCLG)")
    p.add_argument("--out-dir", default=None, help="output directory (default: --lang-dir)")
    p.add_argument("--force", action="store_true", help="recompile even if up to date")
    p.add_argument("--use-log", action="store_true",
                   help="determinize LG in the log semiring (Kaldi mkgraph) instead of tropical")
    p.add_argument("--transition-scale", type=float, default=1.0,
                   help="HCLG: scale of non-self-loop transition log-probs (default 1.0)")
    p.add_argument("--self-loop-scale", type=float, default=1.0,
                   help="HCLG: scale of self-loop log-probs (default 1.0; Kaldi mkgraph uses "
                        "0.1)")
    p.set_defaults(func=cmd_compile_graph)


def cmd_compile_graph(args: argparse.Namespace) -> int:
    """Run :func:`wfst_asr.graphs.compile.compile_graph` and print sizes and timings."""
    from wfst_asr.graphs.compile import compile_graph

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    topo = args.topo or ("hmm-3state" if args.kind == "HCLG" else "ctc")
    graph, stats = compile_graph(args.lang_dir, kind=args.kind, topo=topo,
                                 out_dir=args.out_dir, force=args.force, use_log=args.use_log,
                                 transition_scale=args.transition_scale,
                                 self_loop_scale=args.self_loop_scale, progress=print)
    n_final = int((graph.labels == -1).sum())
    print(f"{args.kind}: {graph.num_states - 1} states, {graph.num_arcs - n_final} arcs"
          f"{' (cached)' if stats.get('cached') else ''}")
    if not stats.get("cached"):
        print(f"time {stats['total_s']:.3f} s, in kaldifst {stats['kaldifst_s']:.3f} s "
              f"({100 * stats['kaldifst_share']:.0f}%), conversions {stats['convert_s']:.3f} s")
    return 0
