"""The library stays readable: small modules, short functions, one home per stage.

Limits from the one-home redesign: no module in minigpt/ over 500 lines, no function over 60 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minigpt"
MAX_MODULE_LINES = 500
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


def test_no_module_over_500_lines():
    big = [f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p in _modules()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not big, "split these modules: " + ", ".join(big)


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
                   "report", "export", "plots", "chat", "train_worker"}, sorted(top)
    for sub in ("data", "model", "train", "infer", "ui"):
        assert (PACKAGE / sub / "__init__.py").is_file(), sub
