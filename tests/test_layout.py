"""The library's layers: every import of rljax points down, runner modules stay short, and only
the declaration in rljax/agents/__init__.py looks an agent's capabilities up."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rljax"
# Lower layers never import higher ones; a package may import itself and anything below.
LAYERS = {
    "agents": 0,  # imports nothing of rljax (the declaration in __init__ imports its own files)
    "solvers": 0,
    "envs": 1,
    "data": 1,
    "runner": 2,
    "meta": 2,
    "generate": 3,
    "cli": 4,
    "__init__": 4,
}
MODULES = sorted(p for p in ROOT.rglob("*.py"))


def _package(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _rljax_imports(path: Path) -> list[tuple[str, int]]:
    """(imported package, line) of every rljax import outside an ``if __name__`` block."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_main=False):
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            in_main = True
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "rljax":
                names = [f"rljax.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("rljax.") and not in_main:
                found.append((name.split(".")[1], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, in_main)

    visit(tree)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    package = _package(path)
    for imported, line in _rljax_imports(path):
        if imported == package:
            continue
        assert LAYERS[package] > LAYERS[imported], (
            f"{path.relative_to(ROOT)}:{line} ({package}) imports rljax.{imported}"
        )


def test_agents_import_nothing_of_rljax():
    for path in (ROOT / "agents").glob("*.py"):
        if path.name != "__init__.py":
            assert _rljax_imports(path) == [], path.name


def test_runner_modules_stay_short():
    for path in (ROOT / "runner").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path.name


def test_only_the_declaration_looks_capabilities_up():
    """Outside rljax/agents/__init__.py nothing asks an agent module what it has."""
    for path in MODULES:
        if path == ROOT / "agents" / "__init__.py":
            continue
        text = path.read_text()
        for probe in (
            "inspect.signature",
            "hasattr(agent",
            "getattr(agent",
            "hasattr(program.agent",
        ):
            assert probe not in text, f"{path.relative_to(ROOT)} uses {probe}"
