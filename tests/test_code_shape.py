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


# The modules that write results or run the job: the read wing imports none of them.
WRITING_SIDE = {
    "app.cli", "app.job", "app.pipeline", "app.writer", "app.themes", "app.ingest", "app.corpus", "app.llm",
    "app.naming", "app.claims", "app.demo", "app.sample", "app.estimate", "app.update",
}


def _imported(tree: ast.AST) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_read_wing_imports_nothing_of_the_writing_side():
    """``app/read/`` only reads: none of its modules imports one that writes results or
    runs the job, not even inside a function."""
    found = []
    for path in sorted((APP / "read").rglob("*.py")):
        for name in sorted(_imported(ast.parse(path.read_text(encoding="utf-8"))) & WRITING_SIDE):
            found.append(f"{path.relative_to(APP.parent)} imports {name}")
    assert not found, "\n".join(found)
