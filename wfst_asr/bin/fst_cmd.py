"""``wfst-asr fst-info`` and ``wfst-asr fst-draw``: look at an FST file.

Files: OpenFst binary (``vector`` or ``const``, tropical), OpenFst text (``fstprint`` output:
``src dst ilabel [olabel] [weight]`` and ``state [weight]`` lines), k2 text, or a ``.pt`` file
written by :func:`wfst_asr.fsa.save`. ``--format auto`` picks ``pt`` for a ``.pt`` suffix,
``binary`` when the file starts with OpenFst's magic number, else ``openfst-text``.

A file that cannot be read (missing, not an FST, corrupt, with a state id far beyond its size)
is one line ``wfst-asr fst-info: error: FILE[:LINE]: what`` and exit code 2 (see
:func:`wfst_asr.bin.cli.main`); ``fst-draw --max-states`` is checked before the states are
allocated.
"""

from __future__ import annotations

import argparse
import os

import torch

from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.fsa._fstbin import FST_MAGIC_BYTES

FORMATS = ("auto", "binary", "openfst-text", "k2-text", "pt")
_MAX_LISTED = 10
FORMAT_HELP = ("Files: OpenFst binary (vector or const, tropical), OpenFst text (fstprint output), "
               "k2 text, or .pt (wfst_asr.fsa.save). States are counted as in k2: OpenFst's "
               "states plus one final state; scores are -OpenFst weights.")


def detect_format(path: str) -> str:
    """``pt``, ``binary`` or ``openfst-text`` (see the module docstring)."""
    if path.endswith(".pt"):
        return "pt"
    with open(path, "rb") as f:
        head = f.read(4)
    return "binary" if head == FST_MAGIC_BYTES else "openfst-text"


def read_any(path: str, fmt: str = "auto", max_states: int | None = None) -> Fsa:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`); more states than
    ``max_states`` (k2 numbering): :class:`wfst_asr.fsa.io.TooManyStatesError`, raised before
    the states are allocated (for ``.pt`` files: after loading)."""
    import errno

    from wfst_asr.fsa import io

    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a directory (expected an FST file)", path)
        raise FileNotFoundError(errno.ENOENT, "no such file", path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "pt":
        fsa = io.load(path)
        if max_states is not None and fsa.num_states > max_states:
            raise io.TooManyStatesError(path, fsa.num_states, max_states)
        return fsa
    if fmt == "binary":
        return io.read_fst(path, max_states=max_states)
    if fmt == "k2-text":
        return io.from_file(path, max_states=max_states)
    return io.from_openfst_file(path, max_states=max_states)


def _regular(fsa: Fsa) -> torch.Tensor:
    """Indexes of the arcs that do not enter the final state (label != -1)."""
    return (fsa.labels != -1).nonzero().squeeze(1)


def _is_input_deterministic(fsa: Fsa, idx: torch.Tensor) -> bool:
    """No state has two arcs with the same input label (epsilon counts as a label)."""
    if idx.numel() < 2:
        return True
    key = fsa.src_global[idx] * (int(fsa.labels.max()) + 1) + fsa.labels[idx].long()
    return torch.unique(key).numel() == idx.numel()


def fsa_properties(fsa: Fsa) -> dict[str, bool]:
    """acceptor, input/output epsilon-free, input-deterministic, acyclic, arc/top sorted."""
    idx = _regular(fsa)
    lab = fsa.labels[idx]
    aux = fsa.aux_labels[idx] if fsa.has_attr("aux_labels") else lab
    props = {
        "acceptor": bool((aux == lab).all()),
        "input epsilon-free": not bool((lab == 0).any()),
        "output epsilon-free": not bool((aux == 0).any()),
        "input-deterministic": _is_input_deterministic(fsa, idx),
        "acyclic": fsa.is_acyclic(),
        "arc-sorted": fsa.is_arc_sorted(),
        "top-sorted": fsa.is_top_sorted(),
    }
    return props


def _range(t: torch.Tensor) -> str:
    if t.numel() == 0:
        return "none"
    return f"[{int(t.min())}, {int(t.max())}], {torch.unique(t).numel()} distinct"


def _symbols_line(name: str, table: SymbolTable | None, labels: torch.Tensor) -> str:
    if table is None:
        return f"{name}: none"
    missing = sorted(set(torch.unique(labels).tolist()) - set(table.ids))
    miss = f"; labels not in it: {missing[:_MAX_LISTED]}" if missing else ""
    return f"{name}: {len(table)} symbols, max id {table.max_id}{miss}"


def fsa_info_lines(fsa: Fsa, isymbols: SymbolTable | None = None,
                   osymbols: SymbolTable | None = None) -> list[str]:
    """The report printed by ``fst-info``."""
    idx = _regular(fsa)
    transducer = fsa.has_attr("aux_labels")
    fin = (fsa.labels == -1).nonzero().squeeze(1)
    fin_states = fsa.src_global[fin].tolist()
    shown = ", ".join(f"{q} ({float(s):g})" for q, s in
                      zip(fin_states[:_MAX_LISTED], fsa.scores.detach()[fin].tolist()))
    more = ", ..." if len(fin_states) > _MAX_LISTED else ""
    lines = []
    if fsa.is_vec:
        lines.append(f"FsaVec of {fsa.num_fsas} FSAs (states numbered over the whole vector)")
    lines += [
        f"type: {'transducer (labels:aux_labels)' if transducer else 'acceptor'}",
        f"states: {fsa.num_states} (k2 numbering: includes the one final state)",
        (f"arcs: {fsa.num_arcs} ({idx.numel()} regular, {fin.numel()} with label -1 into "
         "the final state)"),
        f"start state: {fsa.start_states.tolist() if fsa.is_vec else 0}",
        f"k2 final state: {fsa.final_states.tolist() if fsa.is_vec else fsa.num_states - 1}",
        f"final states (OpenFst sense, score): {len(fin_states)}: {shown}{more}",
    ]
    for name, ok in fsa_properties(fsa).items():
        lines.append(f"{name}: {'yes' if ok else 'no'}")
    lab = fsa.labels[idx]
    lines.append(f"input labels: {_range(lab)}")
    if transducer:
        lines.append(f"output labels: {_range(fsa.aux_labels[idx])}")
    isym = isymbols or fsa._other_attrs.get("labels_sym")
    lines.append(_symbols_line("input symbols", isym, lab))
    if transducer:
        osym = osymbols or fsa._other_attrs.get("aux_labels_sym")
        lines.append(_symbols_line("output symbols", osym, fsa.aux_labels[idx]))
    return lines


def _load(args: argparse.Namespace, max_states: int | None = None
          ) -> tuple[Fsa, SymbolTable | None, SymbolTable | None]:
    """The FST of ``args.file`` and the optional symbol tables (errors: to ``cli.main``)."""
    fsa = read_any(args.file, args.format, max_states)
    isym = SymbolTable.from_file(args.isymbols) if args.isymbols else None
    osym = SymbolTable.from_file(args.osymbols) if args.osymbols else None
    return fsa, isym, osym


def cmd_fst_info(args: argparse.Namespace) -> int:
    """Print :func:`fsa_info_lines` of ``args.file``."""
    fsa, isym, osym = _load(args)
    print(f"file: {args.file}")
    print("\n".join(fsa_info_lines(fsa, isym, osym)))
    return 0


def cmd_fst_draw(args: argparse.Namespace) -> int:
    """Draw ``args.file`` to ``args.out`` (refusing graphs over ``--max-states``)."""
    from wfst_asr.fsa import draw
    from wfst_asr.fsa.io import TooManyStatesError

    try:
        fsa, isym, osym = _load(args, args.max_states)
    except TooManyStatesError as e:
        raise ValueError(f"{args.file} has {e.num_states} states, more than --max-states "
                         f"{args.max_states}; a picture would be unreadable (raise --max-states "
                         "to draw it anyway)") from e
    try:
        draw(fsa, args.out, title=args.title, labels_sym=isym, aux_labels_sym=osym)
    except RuntimeError as e:  # Graphviz's dot missing or failing
        raise ValueError(f"{args.out}: {e}") from e
    print(f"wrote {args.out} ({fsa.num_states} states, {fsa.num_arcs} arcs)")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="input format (default auto: .pt suffix -> pt, OpenFst magic number -> "
                        "binary, else OpenFst text)")
    p.add_argument("--isymbols", default=None,
                   help="input symbol table (tokens.txt); default: the one in the file")
    p.add_argument("--osymbols", default=None,
                   help="output symbol table (words.txt); default: the one in the file")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``fst-info`` and ``fst-draw`` to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser("fst-info", help="print sizes and properties of an FST file",
                       description="Print the number of states and arcs, start and final states, "
                                   "properties (acceptor, epsilon-free, input-deterministic, "
                                   "acyclic, sorted), label ranges and symbol tables of an FST "
                                   "file. " + FORMAT_HELP)
    p.add_argument("file", help="OpenFst binary/text, k2 text or .pt file")
    _add_common(p)
    p.set_defaults(func=cmd_fst_info)

    p = sub.add_parser("fst-draw", help="draw an FST with Graphviz (.dot/.svg/.png/.pdf)",
                       description="Draw an FST file to OUT; the suffix picks the format: .dot/.gv "
                                   "(DOT source) or .svg/.png/.pdf (rendered by Graphviz's dot). "
                                   "Arcs read label:aux_label/score (score = -OpenFst weight).")
    p.add_argument("file", help="OpenFst binary/text, k2 text or .pt file")
    p.add_argument("out", help="output file: .dot, .gv, .svg, .png or .pdf")
    _add_common(p)
    p.add_argument("--max-states", type=int, default=200,
                   help="refuse FSTs with more states than this (default 200)")
    p.add_argument("--title", default=None, help="title drawn on top")
    p.set_defaults(func=cmd_fst_draw)
