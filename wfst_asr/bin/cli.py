"""The ``wfst-asr`` command line (also ``python -m wfst_asr.bin.cli``)."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence


def cmd_info(args: argparse.Namespace) -> int:
    """Print the versions of wfst_asr, Python, torch and the Kaldi packages, and the devices."""
    import torch

    import wfst_asr
    from wfst_asr import _kaldi

    print(f"wfst_asr {wfst_asr.__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    devices = ["cpu"]
    if cuda:
        n = torch.cuda.device_count()
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(n)]
    print(f"cuda available: {cuda}; devices: {', '.join(devices)}")
    for name, version in _kaldi.versions().items():
        print(f"{name} {version}")
    return 0


#: Modules of wfst_asr.bin that contribute sub-commands: each has ``add_commands(sub)``, which
#: adds its sub-parsers (with ``set_defaults(func=...)``) to the ``wfst-asr`` command.
COMMAND_MODULES = ("data_cmd", "lang_cmd", "lm_cmd", "graph_cmd", "fst_cmd", "train_cmd",
                   "lattice_cmd", "nnlm_cmd", "decode_cmd", "gmm_cmd")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with one sub-parser per command."""
    import importlib
    import importlib.util

    parser = argparse.ArgumentParser(prog="wfst-asr", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars (they are drawn only on a terminal anyway); "
                             "also WFST_ASR_QUIET=1")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print versions and available devices")
    info.set_defaults(func=cmd_info)
    for name in COMMAND_MODULES:
        full = f"wfst_asr.bin.{name}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen command."""
    args = build_parser().parse_args(argv)
    if args.quiet:
        from wfst_asr.progress import set_quiet

        set_quiet()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
