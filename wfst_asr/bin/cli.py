"""The ``wfst-asr`` command line (also ``python -m wfst_asr.bin.cli``).

Every sub-command answers a bad input (a missing, unreadable or malformed file, a bad value, a
full disk, ...) with one line ``wfst-asr CMD: error: FILE[:LINE]: what`` on stderr and exit code
2; ``wfst-asr --debug CMD ...`` shows the traceback instead. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import errno
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
                   "lattice_cmd", "nnlm_cmd", "decode_cmd", "gmm_cmd", "rescore_cmd", "g2p_cmd",
                   "align_cmd", "textlm_cmd", "export_cmd")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with one sub-parser per command."""
    import importlib
    import importlib.util

    parser = argparse.ArgumentParser(prog="wfst-asr", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars (they are drawn only on a terminal anyway); "
                             "also WFST_ASR_QUIET=1")
    parser.add_argument("--debug", action="store_true", dest="global_debug",
                        help="on an error, show the traceback instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print versions and available devices")
    info.set_defaults(func=cmd_info)
    for name in COMMAND_MODULES:
        full = f"wfst_asr.bin.{name}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full).add_commands(sub)
    return parser


#: errno values of an OSError that come from the input or the place of the output, not from
#: a bug: reported in one line like a ValueError.
BAD_INPUT_ERRNOS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EEXIST,
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG,
    errno.ENOTEMPTY, errno.EXDEV, errno.EIO})


def is_bad_input(e: BaseException) -> bool:
    """True for the errors a bad input raises: ValueError (UnicodeDecodeError included), the
    OSErrors of :data:`BAD_INPUT_ERRNOS` and the project's own error classes (any ``...Error``
    defined in ``wfst_asr``, such as CheckpointError, LatticeError, ConfigError, DecodeError)."""
    if isinstance(e, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                      PermissionError, FileExistsError)):
        return True
    if isinstance(e, OSError):
        return e.errno in BAD_INPUT_ERRNOS
    return any(c.__module__.startswith("wfst_asr.") and c.__name__.endswith("Error")
               for c in type(e).__mro__)


def error_message(e: BaseException) -> str:
    """``e`` as one line: ``FILE: what`` for an OSError with a file name (the strerror in lower
    case), else ``str(e)`` with its lines joined by ``; ``."""
    if isinstance(e, UnicodeDecodeError):
        msg = f"not valid UTF-8 text ({e.reason} at byte {e.start})"
    elif isinstance(e, OSError) and e.strerror:
        what = e.strerror[:1].lower() + e.strerror[1:]
        names = [str(n) for n in (e.filename, e.filename2) if n is not None]
        msg = what if not names or names[0] in what else f"{' -> '.join(names)}: {what}"
    else:
        msg = str(e) or type(e).__name__
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    return "; ".join(lines) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen command.

    A bad input (:func:`is_bad_input`) is one line ``wfst-asr CMD: error: ...`` on stderr and
    exit code 2 (``--debug``, global or the command's own: the traceback); Ctrl-C is 130.
    """
    args = build_parser().parse_args(argv)
    debug = bool(args.global_debug or getattr(args, "debug", False))
    args.debug = debug
    if args.quiet:
        from wfst_asr.progress import set_quiet

        set_quiet()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        return 130
    except Exception as e:
        if debug or not is_bad_input(e):
            raise
        print(f"wfst-asr {args.command}: error: {error_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
