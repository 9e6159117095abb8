"""The shape of the code: the core imports no app, and no app imports another app."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = "gateway_project"
APPS = ("proxy", "limits", "breakers")


def _imports(path: Path) -> set[str]:
    """The top-level project packages a module imports (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & {CORE, *APPS}


def _modules(package: str):
    for path in sorted((REPO / package).rglob("*.py")):
        if "migrations" not in path.parts:
            yield path


@pytest.mark.parametrize("package", [CORE, *APPS])
def test_a_package_imports_only_itself_and_the_core(package):
    allowed = {package, CORE}
    offenders = {
        str(path.relative_to(REPO)): sorted(_imports(path) - allowed)
        for path in _modules(package)
        if _imports(path) - allowed
    }
    assert not offenders, f"{package} reaches into other apps: {offenders}"
