"""The house rules a newcomer relies on: small files, short lines, and no import circle inside kit/.

Imports inside functions count: a circle that only closes at call time still means two modules that cannot be
understood (or tested) one without the other.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent / "kit"
MAX_LINES = 450
MAX_WIDTH = 120


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for every .py file under kit/ (a package is its __init__)."""
    out = {}
    for path in sorted(KIT.rglob("*.py")):
        parts = path.relative_to(KIT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kit modules ``name`` imports anywhere in its file (the most specific module each import names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # kit.x.y where y is a function: the module is kit.x
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_file_is_too_long_or_too_wide():
    long = {str(p.relative_to(KIT.parent)): n for p in KIT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    wide = [f"{p.relative_to(KIT.parent)}:{i}" for p in KIT.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > MAX_WIDTH]
    assert not long, f"files over {MAX_LINES} lines: {long}; cut them by responsibility"
    assert not wide, f"lines over {MAX_WIDTH} characters: {wide[:10]}"


def test_no_import_circle():
    mods = _modules()
    graph = {m: _imports(m, p, set(mods)) for m, p in mods.items()}
    # a package's __init__ re-exporting its submodules is no circle with them: submodule -> own package is
    # what the re-export would close, so edges from a submodule to its own package (or above) are left out
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_the_checker_sees_a_circle(tmp_path, monkeypatch):
    """The circle check itself can fail: two modules importing each other inside functions are caught."""
    pkg = tmp_path / "kit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("def g():\n    from kit import a\n")
    monkeypatch.setattr(sys.modules[__name__], "KIT", pkg)
    try:
        test_no_import_circle()
    except AssertionError as exc:
        assert "kit.a -> kit.b -> kit.a" in str(exc)
    else:
        raise AssertionError("the circle kit.a <-> kit.b was not seen")
