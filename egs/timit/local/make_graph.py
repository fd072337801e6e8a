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

#: criterion -> function(lang_dir) building the graphs it needs beyond the CTC HLG (None: none)
EXTRA_GRAPHS: dict[str, Callable[[Path], None] | None] = {
    "ctc": None,
    # hmm / mmi
    # transducer
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
