#!/usr/bin/env python3
"""Build a lang directory from a lexicon (same as ``wfst-asr compile-lang``).

Example::

    python local/prepare_lang.py --lang-dir data/lang_phone --lexicon data/lexicon.txt \\
        --sil-token SIL --sil-prob 0.5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wfst_asr.bin.lang_cmd import DESCRIPTION, add_lang_arguments, run_prepare_lang


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lang_arguments(parser)
    return run_prepare_lang(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
