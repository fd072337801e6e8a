"""Drawing FSAs with Graphviz.

:func:`to_dot` returns DOT source (pure Python, no Graphviz needed); :func:`draw` writes it to a
``.dot``/``.gv`` file or renders ``.png``/``.svg``/``.pdf`` with the ``dot`` program (Debian
package ``graphviz``).

Pictures: states are circles labelled with their number, the start state (0) is bold, the final
state (the last one) is a double circle. Arcs are labelled ``label/score`` for an acceptor and
``label:aux_label/score`` for a transducer (``aux_labels``), with symbols instead of numbers when
symbol tables are given or attached to the FSA as ``labels_sym`` / ``aux_labels_sym``. Scores are
log-weights (higher is better), printed with ``%g``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ..atomic import atomic_output, atomic_write_text
from .fsa import Fsa
from .symbol_table import SymbolTable

__all__ = ["draw", "to_dot"]

_RENDERED = ("png", "svg", "pdf")


def _quote(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _sym(table: SymbolTable | None, i: int) -> str:
    if table is not None and i in table:
        return str(table[i])
    return str(i)


def _fsa_body(fsa: Fsa, prefix: str, labels_sym: SymbolTable | None,
              aux_labels_sym: SymbolTable | None, indent: str) -> list[str]:
    """Node and edge statements of one (single) FSA."""
    ns = fsa.num_states
    lines = []
    for q in range(ns):
        attrs = [f"label = {_quote(str(q))}"]
        if q == ns - 1 and ns > 1:
            attrs.append("shape = doublecircle")
        if q == 0:
            attrs.append("style = bold")
        lines.append(f"{indent}{prefix}{q} [{', '.join(attrs)}];")
    aux = fsa.aux_labels.tolist() if fsa.has_attr("aux_labels") else None
    scores = fsa.scores.detach().cpu().tolist()
    for i, (src, dst, lab) in enumerate(fsa.arcs.tolist()):
        text = _sym(labels_sym, lab)
        if aux is not None:
            text += ":" + _sym(aux_labels_sym, aux[i])
        text += f"/{scores[i]:g}"
        lines.append(f"{indent}{prefix}{src} -> {prefix}{dst} [label = {_quote(text)}];")
    return lines


def _table(fsa: Fsa, given: SymbolTable | None, name: str) -> SymbolTable | None:
    if given is not None:
        return given
    v = fsa._other_attrs.get(name)
    return v if isinstance(v, SymbolTable) else None


def to_dot(fsa: Fsa, title: str | None = None, labels_sym: SymbolTable | None = None,
           aux_labels_sym: SymbolTable | None = None) -> str:
    """DOT source for ``fsa`` (an FsaVec gives one cluster per FSA, nodes ``f{i}_{state}``).

    Args:
      fsa: an Fsa or FsaVec.
      title: a graph label shown on top.
      labels_sym, aux_labels_sym: symbol tables for labels / aux_labels (default: the FSA's
        ``labels_sym`` / ``aux_labels_sym`` attributes). Ids missing from a table (e.g. -1) are
        printed as numbers.
    """
    labels_sym = _table(fsa, labels_sym, "labels_sym")
    aux_labels_sym = _table(fsa, aux_labels_sym, "aux_labels_sym")
    lines = ["digraph FSA {", "  rankdir = LR;", "  node [shape = circle];"]
    if title is not None:
        lines += [f"  label = {_quote(title)};", "  labelloc = t;"]
    if not fsa.is_vec:
        lines += _fsa_body(fsa, "", labels_sym, aux_labels_sym, "  ")
    else:
        for i, f in enumerate(fsa):
            lines.append(f"  subgraph cluster_{i} {{")
            lines.append(f"    label = {_quote(f'FSA {i}')};")
            lines += _fsa_body(f, f"f{i}_", labels_sym, aux_labels_sym, "    ")
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(fsa: Fsa, path: str | os.PathLike, title: str | None = None,
         labels_sym: SymbolTable | None = None,
         aux_labels_sym: SymbolTable | None = None) -> str:
    """Write ``fsa`` to ``path``: DOT source for ``.dot``/``.gv``, else rendered by ``dot``.

    The output format is the file suffix: ``dot``, ``gv``, ``png``, ``svg`` or ``pdf``. The file
    is written atomically (temp file in the same folder, then renamed). Returns the DOT source.

    Raises:
      ValueError: for another suffix.
      RuntimeError: when rendering is asked for and the ``dot`` program is not installed, or
        ``dot`` fails.
    """
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    source = to_dot(fsa, title=title, labels_sym=labels_sym, aux_labels_sym=aux_labels_sym)
    if fmt in ("dot", "gv"):
        atomic_write_text(path, source)
        return source
    if fmt not in _RENDERED:
        raise ValueError(f"draw: unsupported file suffix {fmt!r} in {path!r}; use .dot, .gv, "
                         f"{', '.join('.' + f for f in _RENDERED)}")
    _render(source, fmt, path)
    return source


def _render(source: str, fmt: str, path: str) -> None:
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("draw: rendering needs the Graphviz 'dot' program, which is not "
                           "installed (Debian/Ubuntu: apt-get install graphviz); to_dot() and "
                           "writing a .dot file work without it")
    with atomic_output(path) as tmp:
        proc = subprocess.run([exe, f"-T{fmt}", "-o", tmp], input=source.encode("utf-8"),
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"draw: dot failed ({proc.returncode}): "
                               f"{proc.stderr.decode('utf-8', 'replace').strip()}")
