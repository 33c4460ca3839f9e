"""The shape of the code itself: short functions, and a read wing that only reads."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
MAX_FUNCTION_LINES = 80


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_app_is_longer_than_80_lines():
    """A function a reader cannot take in at once hides its steps: each is kept to
    ``MAX_FUNCTION_LINES`` lines, docstring included."""
    too_long = []
    for path in sorted(APP.rglob("*.py")):
        for node in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                too_long.append(f"{path.relative_to(APP.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "functions over 80 lines:\n" + "\n".join(too_long)
