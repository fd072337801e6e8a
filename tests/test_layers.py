"""The package's layer order, read from the source (every import, function-local ones and
``TYPE_CHECKING`` blocks included):

    _kaldi, atomic, progress  ->  fsa  ->  graphs, data, scoring  ->  losses, decode
        ->  models, gmm, g2p  ->  train  ->  bin  ->  (egs, tools, examples)

A module may import its own package and the layers below its own; packages of one layer do not
import each other; ``models`` imports nothing of wfst_asr but ``models`` (plain ``nn.Module`` s
on torch); no two modules import each other, directly or in a circle; ``tools/`` imports only
the library (no ``sys.path`` tricks to reach a recipe's code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "wfst_asr"

#: lowest first; a unit is a sub-package or top-level module of wfst_asr.
LAYERS: list[set[str]] = [
    {"_kaldi", "atomic", "progress"},
    {"fsa"},
    {"graphs", "data", "scoring"},
    {"losses", "decode"},
    {"models", "gmm", "g2p"},
    {"train"},
    {"bin"},
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _modules()


def _imports(path: Path, name: str) -> list[tuple[int, str]]:
    """``(line, imported wfst_asr module)`` of every import in ``path``: ``from pkg import x``
    counts as an import of ``pkg.x`` when that is a module, else of ``pkg``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "wfst_asr"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "wfst_asr":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else mod))
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    return {m: {t for _, t in _imports(p, m) if t in MODULES and t != m}
            for m, p in MODULES.items()}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES} - {""}
    assert units <= set(LAYER_OF), f"add {sorted(units - set(LAYER_OF))} to LAYERS"


def test_imports_only_go_down():
    bad = []
    for m, path in MODULES.items():
        src = _unit(m)
        if not src:
            continue
        for line, target in _imports(path, m):
            dst = _unit(target)
            if dst == src:
                continue
            rel = f"{path.relative_to(ROOT)}:{line}: {m} imports {target}"
            if src == "models":
                bad.append(rel + " (models import only torch)")
            elif dst and LAYER_OF[dst] >= LAYER_OF[src]:
                kind = "a peer" if LAYER_OF[dst] == LAYER_OF[src] else "an upper layer"
                bad.append(f"{rel} ({kind}: {dst} is layer {LAYER_OF[dst]}, {src} "
                           f"{LAYER_OF[src]})")
            elif not dst and LAYER_OF[src] <= LAYER_OF["fsa"]:
                bad.append(rel + " (the package root imports the engine)")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_tools_import_only_the_library():
    """tools/ may share helpers between its own scripts, but reaches no recipe code: no import
    of a module that lives under egs/ (or the old top-level local/), no sys.path entry there."""
    recipe_mods = {p.stem for d in ("egs", "local") if (ROOT / d).is_dir()
                   for p in (ROOT / d).rglob("*.py")}
    tool_mods = {p.stem for p in (ROOT / "tools").rglob("*.py")}
    bad = []
    for path in sorted((ROOT / "tools").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Call) and "sys.path" in (ast.get_source_segment(text, node)
                                                             or ""):
                seg = ast.get_source_segment(text, node) or ""
                if any(s in seg for s in ("egs", "local", "parent", "..")):
                    bad.append(f"{where}:{node.lineno}: {seg}")
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top == "egs" or (top in recipe_mods and top not in tool_mods):
                    bad.append(f"{where}:{node.lineno}: imports {name} (recipe code)")
    assert not bad, "tools/ must import only wfst_asr:\n" + "\n".join(bad)


@pytest.mark.parametrize("bad,needle", [
    ("from wfst_asr.train import Trainer\n", "upper layer"),
    ("from wfst_asr.decode import one_best\n", "peer"),
])
def test_the_check_catches_an_upward_import(tmp_path, monkeypatch, bad, needle):
    """The checker itself: a losses module importing train (above) or decode (a peer) fails,
    also as a function-local import."""
    fake = PKG / "losses" / "ctc.py"
    text = fake.read_text(encoding="utf-8") + "\n\ndef _probe():\n    " + bad
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None, _t=text, _p=fake:
                        _t if self == _p else Path.open(self, encoding=encoding).read())
    with pytest.raises(AssertionError, match=needle):
        test_imports_only_go_down()
