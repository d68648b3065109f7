"""The layout is the architecture: each floor imports only the floors below it.

Floors, bottom to top: errors and version; checkpoints; ops; evaluators; merges; soups;
store; analysis; jobs; cli (and the package's own ``__init__``, which re-exports).
Within a floor, modules may import each other but not in a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "modelsoup"
FLOORS = ["checkpoints", "ops", "evaluators", "merges", "soups", "store", "analysis", "jobs", "cli"]
BASE = {"errors", "version"}  # below every floor


def _module(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _imports(path: Path) -> set[str]:
    """Every modelsoup module ``path`` imports, at module level or inside a function."""
    mod, package = _module(path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if package else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "modelsoup" or name.startswith("modelsoup."):
                # `from . import x` names submodules; `from .x import y` names x
                out |= {f"{name}.{a.name}" for a in node.names} if not node.module else {name}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("modelsoup")}
    return out


def _floor(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself
    if parts[1] in BASE:
        return -1
    if parts[1] in FLOORS:
        return FLOORS.index(parts[1])
    return None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _floor(_module(p)[0]) is not None)


def test_every_module_is_on_a_floor():
    top = {p.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py")}
    top = {t.removesuffix(".py") for t in top}
    assert top <= set(FLOORS) | BASE | {"__init__", "__main__"}, top - set(FLOORS) - BASE


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_goes_up_a_floor(path):
    here = _floor(_module(path)[0])
    up = [m for m in _imports(path) if (_floor(m) is None or _floor(m) > here)]
    assert not up, f"{_module(path)[0]} (floor {here}) imports {up} from above"


def test_no_circle_within_a_floor():
    graph = {}
    for p in MODULES:
        mod, _ = _module(p)
        graph[mod] = {m for m in _imports(p) if m in {_module(q)[0] for q in MODULES}}
    seen, stack = set(), []

    def visit(m: str) -> None:
        if m in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(m) :] + [m]))
        if m in seen:
            return
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n != m.rsplit(".", 1)[0]:  # a module may use its own package's __init__
                visit(n)
        stack.pop()
        seen.add(m)

    for m in sorted(graph):
        visit(m)


def test_each_floor_imports_with_the_floors_above_it_blocked():
    """The real import machinery, in a fresh interpreter: a finder refuses every module
    above the floor under test while that floor's modules are imported, floor by floor
    from the bottom (the floors below are then already imported, as they would be)."""
    floors = [
        (FLOORS[k:], [_module(p)[0] for p in MODULES if _floor(_module(p)[0]) == k])
        for k in range(len(FLOORS))
    ]
    code = f"""
import importlib, importlib.abc, sys, types
BLOCKED = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is above the floor under test")
        return None
sys.meta_path.insert(0, Block())
# the floors' modules, without running the package's __init__ (which imports them all)
pkg = types.ModuleType("modelsoup")
pkg.__path__ = [{str(PACKAGE)!r}]
sys.modules["modelsoup"] = pkg
for floor, mine in {floors!r}:
    BLOCKED[:] = ["modelsoup." + f for f in floor[1:]]
    for m in mine:
        importlib.import_module(m)
    print(floor[0], len(mine))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = dict(line.split() for line in r.stdout.splitlines())
    assert list(counts) == FLOORS and all(int(n) > 0 for n in counts.values()), counts


def test_functions_and_files_stay_small():
    """Every function of the packages is at most 80 lines and every module at most 450:
    what grows past that is split (small dataclasses instead of long parameter lists)."""
    import ast

    src = Path(__file__).parents[1] / "src"
    long = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 450:
            long.append(f"{path.relative_to(src)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(src)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)
