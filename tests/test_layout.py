"""The library stays readable: short functions, one home per stage, no import cycles.

A module is one idea, whatever its length (no module-length limit); no function over 60 lines. The import graph
counts every import: at the top, inside functions and under TYPE_CHECKING.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minigpt"
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES, root: Path = PACKAGE.parent) -> list[str]:
    """'file:line name (N lines)' for each function or method longer than `limit` lines (decorators excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_over_60_lines():
    long = [f for p in _modules() for f in long_functions(p)]
    assert not long, "shorten these functions:\n" + "\n".join(long)


def test_the_checker_sees_a_long_function(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n" + "    x = 1\n" * 70 + "\n\ndef g():\n    return 1\n")
    assert long_functions(src, 60, root=tmp_path) == ["m.py:1 f (71 lines)"]


def test_the_flat_package_holds_only_tooling_and_entry_points():
    """Stages live in data/, model/, train/, infer/, ui/; the top level keeps tooling and `python -m` entry points."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__", "atomic", "bench", "ci_timer", "config", "demo", "devices", "monitor", "params",
                   "report", "export", "plots", "chat", "train_worker", "native", "convert"}, sorted(top)
    for sub in ("data", "model", "train", "infer", "ui"):
        assert (PACKAGE / sub / "__init__.py").is_file(), sub


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, from the AST of every file: imports at the top, inside
    functions and under TYPE_CHECKING all count. `from pkg import name` is an edge to pkg.name when that is a
    module, else to pkg. A package is not an edge of its own submodules (Python runs it first, but that is
    not a dependency of the submodule's code)."""
    root = package.parent
    files = {_module_name(p, root): p for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for a in node.names:
                    deps.add(f"{module}.{a.name}" if f"{module}.{a.name}" in files else module)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_trainers_subclasses_and_builders_import_it():
    """Nothing the training loop calls imports Trainer back: only SFTTrainer's module (DPO and GRPO subclass it) and
    the builders that make one (pretrain, the memory bench). Deferred and TYPE_CHECKING imports count."""
    graph = import_graph(PACKAGE)
    importers = sorted(m for m, deps in graph.items() if "minigpt.train.trainer" in deps)
    assert importers == ["minigpt.bench.train", "minigpt.train.pretrain", "minigpt.train.sft"], importers


def test_the_data_layer_does_not_import_inference():
    graph = import_graph(PACKAGE)
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith("minigpt.data")
                 for d in deps if d.startswith("minigpt.infer"))
    assert not bad, bad


@pytest.mark.parametrize("where", ["top", "function", "type_checking"])
def test_the_checker_sees_a_cycle_wherever_the_import_is(tmp_path, where):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    back = {"top": "from ..a import x\n",
            "function": "def f():\n    from pkg import a\n    return a\n",
            "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import Thing\n"}[where]
    (pkg / "sub" / "c.py").write_text(back)
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None
