#!/usr/bin/env python3
"""Stage 2 of egs/timit/run.sh: the 48-phone lang dir (phone bigram G) and its CTC HLG.

By default the phone LM is estimated on the TRAIN split only (the ``phones_48`` field of
``<manifest_dir>/timit_supervisions_train.jsonl.gz``), so no dev/test transcript leaks into G.
``--lm-data all`` uses :func:`timit_graphs.prepare_phone_lang` as is (every ``.phn`` file under
``--timit-dir``, test included: only for comparisons).

    python egs/timit/local/make_graph.py --manifest-dir data/manifests --lang-dir data/lang_phone
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lhotse import SupervisionSet
from timit_graphs import _lm, prepare_phone_lang
from timit_lexicon import phone_lexicon, phone_set

from wfst_asr.graphs.compile import compile_graph
from wfst_asr.graphs.lang import prepare_lang, write_lexicon

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def hmm_mmi_graphs(loss: str) -> Callable[[Path], None]:
    """The graphs of ``--loss hmm`` / ``mmi`` for the topology of ``conf/<loss>_blstm.yaml``: an
    HMM topology's HCLG (over the same L and bigram G, cached in ``<lang_dir>/<topology>/``:
    ``wfst-asr decode`` loads it, or compiles the one of another topology the model was trained
    with); a CTC topology decodes with the HLG above. For mmi, also the phone LM P of the
    denominator (built from ``lm.arpa`` when the loss is built; here only its size is shown)."""
    def build(lang_dir: Path) -> None:
        from wfst_asr.graphs.lm import ngram_acceptor
        from wfst_asr.train import load_config
        from wfst_asr.train.criteria import loss_options, loss_topology

        cfg = load_config(CONF_DIR / f"{loss}_blstm.yaml").to_dict()
        cfg.update(tokens=str(lang_dir / "tokens.txt"), lang_dir=str(lang_dir))
        opts = loss_options(cfg)
        if loss == "mmi":
            P = ngram_acceptor(lang_dir / opts["phone_lm"], lang_dir / "tokens.txt")
            print(f"P (LF-MMI phone LM, {opts['phone_lm']}): {P.num_states} states, "
                  f"{P.num_arcs} arcs")
        topo = loss_topology(cfg)
        if topo.is_ctc:
            print(f"{loss}: topology {topo.name}, decoded with the HLG")
            return
        out = lang_dir / topo.name
        _, stats = compile_graph(lang_dir, kind="HCLG", topo=topo.name, out_dir=out,
                                 transition_scale=opts["transition_scale"],
                                 self_loop_scale=opts["self_loop_scale"])
        print(f"HCLG ({topo.name}, {topo.num_pdfs} pdfs): {stats.get('HCLG_states')} states, "
              f"{stats.get('HCLG_arcs')} arcs, {stats.get('total_s', 0.0):.2f} s"
              f"{' (cached)' if stats.get('cached') else ''} -> {out / 'HCLG.fst'}")
    return build


def transducer_graphs(lang_dir: Path) -> None:
    """``--loss transducer``: the LG of fast beam search (tokens in, the phones as words out),
    compiled and cached as ``<lang_dir>/LG.fst`` (``wfst-asr decode`` loads it)."""
    lg, _ = compile_graph(lang_dir, kind="LG")
    print(f"LG (transducer fast beam search): {lg.num_states} states, {lg.num_arcs} arcs -> "
          f"{lang_dir / 'LG.fst'}")


#: criterion -> function(lang_dir) building the graphs it needs beyond the CTC HLG (None: none)
EXTRA_GRAPHS: dict[str, Callable[[Path], None] | None] = {
    "ctc": None,
    "hmm": hmm_mmi_graphs("hmm"),
    "mmi": hmm_mmi_graphs("mmi"),
    "transducer": transducer_graphs,
    "segmental": None,  # decoded by the segment lattice's best path (no graph of its own)
    "attention": None,  # decoded by its own searches
    "dbd": None,  # its trainable H o G is built with the criterion, from lm.arpa
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_phone"))
    parser.add_argument("--lm-data", choices=("train", "all"), default="train")
    parser.add_argument("--timit-dir", help="needed with --lm-data all")
    parser.add_argument("--order", type=int, default=2)
    parser.add_argument("--prefix", default="timit")
    parser.add_argument("--loss", choices=sorted(EXTRA_GRAPHS), default="ctc",
                        help="also build the graphs this criterion needs (ctc: HLG only)")
    args = parser.parse_args(argv)

    out = args.lang_dir
    if args.lm_data == "all":
        if not args.timit_dir:
            parser.error("--lm-data all needs --timit-dir")
        prepare_phone_lang(args.timit_dir, out, order=args.order)
        print(f"lang dir {out}: phone {args.order}-gram over all .phn files of {args.timit_dir}")
    else:
        sups = SupervisionSet.from_file(args.manifest_dir
                                        / f"{args.prefix}_supervisions_train.jsonl.gz")
        sents = [s.custom["phones_48"].split() for s in sups]
        out.mkdir(parents=True, exist_ok=True)
        phones = phone_set("48")
        write_lexicon(out / "lexicon.txt", phone_lexicon(phones))
        lang = prepare_lang(out, out / "lexicon.txt", tokens=phones, sil_prob=0.0)
        _lm(out, lang, sents, args.order, phones)
        print(f"lang dir {out}: {len(phones)} phones, phone {args.order}-gram over "
              f"{len(sents)} train utterances")
    _, stats = compile_graph(out, kind="HLG", topo="ctc", force=True)
    print(f"HLG: {stats.get('HLG_states')} states, {stats.get('HLG_arcs')} arcs, "
          f"{stats.get('total_s', 0.0):.2f} s -> {out / 'HLG.fst'}")
    extra = EXTRA_GRAPHS[args.loss]
    if extra is not None:
        extra(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
