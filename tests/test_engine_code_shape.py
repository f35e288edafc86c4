"""The engine stays readable: no function over 80 lines, no class over 200 (docstrings included)."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
LIMITS = {ast.FunctionDef: 80, ast.AsyncFunctionDef: 80, ast.ClassDef: 200}


def test_no_function_or_class_of_the_engine_is_too_long() -> None:
    too_long = []
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            limit = LIMITS.get(type(node))
            if limit is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines (at most {limit})")
    assert not too_long, too_long
