"""The shape of the code, as a contributor expects it (``CONTRIBUTING.md``): ruff's lint and
format, the type checker, functions and classes a reader can hold in their head, and private
names of other projects only where the project says it relies on them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "engine", ROOT / "runner", ROOT / "hydra_plugins"]
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 200
# The modules that may use what a library does not publish, each with its checked versions and
# a contract test (docs/architecture.md).
COMPAT_MODULES = {ROOT / "runner" / "tracking" / "compat.py", ROOT / "runner" / "hydra_app" / "compat.py"}
THIRD_PARTY = ("mlflow", "hydra", "omegaconf", "optuna", "ray", "submitit")
UNDOCUMENTED_MLFLOW = ("mlflow.utils", "mlflow.server", "mlflow.store")


def python_files() -> list[Path]:
    return sorted(path for folder in SOURCES for path in folder.rglob("*.py"))


def test_ruff_finds_nothing_to_fix_or_reformat() -> None:
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    layout = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert layout.returncode == 0, layout.stdout + layout.stderr


def test_the_type_checker_finds_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr


def test_no_function_or_class_is_too_long_to_read() -> None:
    too_long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > limit:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines (> {limit})")
    assert not too_long, "\n".join(too_long)


def private_uses(path: Path) -> list[str]:
    """Imports of another project's private or undocumented names in ``path``, and attribute
    accesses ``module._name`` on a module it imported."""
    found = []
    modules: set[str] = set()  # local names bound to third-party modules
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in THIRD_PARTY:
                    modules.add(alias.asname or alias.name.split(".")[0])
                    found += _private_module(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in THIRD_PARTY:
            found += _private_module(node.module, node.lineno)
            found += [
                f"line {node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if _private(alias.name)
            ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_module(module: str, line: int) -> list[str]:
    if any(_private(part) for part in module.split(".")) or module.startswith(UNDOCUMENTED_MLFLOW):
        return [f"line {line}: {module}"]
    return []


def test_private_names_of_other_projects_are_used_only_in_the_compat_modules() -> None:
    uses = {
        str(path.relative_to(ROOT)): found
        for path in python_files()
        if path not in COMPAT_MODULES and (found := private_uses(path))
    }
    assert not uses, uses


def test_the_private_name_check_sees_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import hydra\nfrom hydra._internal import callbacks\nfrom mlflow.utils.rest_utils import http_request\n"
        "from optuna import _imports\nhydra.core._private_thing\nimport os\nos._exit\n"
    )
    assert [use.partition(": ")[2] for use in private_uses(sample)] == [
        "hydra._internal",
        "mlflow.utils.rest_utils",
        "from optuna import _imports",
        "hydra.core._private_thing",
    ]


def test_every_import_inside_a_function_says_why_it_is_lazy() -> None:
    """An import inside a function keeps a command fast or a heavy library out of a process;
    docs/architecture.md promises each one is marked ``(lazy: reason)``, on its line or in the
    comment just above it."""
    unmarked = []
    for path in python_files():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and not _marked_lazy(lines, inner.lineno):
                    unmarked.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not unmarked, "\n".join(sorted(set(unmarked)))


def _marked_lazy(lines: list[str], number: int) -> bool:
    """Whether line ``number`` (1-based), or the comment lines or imports right above it, say
    ``(lazy``: one comment may cover a group of imports."""
    index = number - 1
    while index >= 0:
        text = lines[index].strip()
        if "(lazy" in text:
            return True
        if text and not (text.startswith(("#", "import ", "from ")) or index == number - 1):
            return False
        index -= 1
    return False
