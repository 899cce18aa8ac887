"""The layers, read from the source of every module: engine/ knows nothing of Gradio, SQLite or the app; the store
knows nothing of Gradio, torch or the engine; the app reaches the engine only through its public names; and no two
of our packages import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "app")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, relative imports resolved, at any place in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            # "from . import render" names a module; "from engine import stream" a name of a package
            out |= {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
    return out


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def roots(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_every_package_is_read():
    assert {"engine", "engine.generate", "app", "app.store", "app.store.fields", "app.ui", "app.ui.chat",
            "app.turns", "app.conversations"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.split(".")[0] == "engine"))
def test_the_engine_knows_nothing_of_the_page_or_the_store(name):
    assert not roots(GRAPH[name]) & {"gradio", "sqlite3", "sqlite_utils", "app", "fastapi", "starlette"}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("app.store")))
def test_the_store_knows_nothing_of_the_page_torch_or_the_engine(name):
    assert not roots(GRAPH[name]) & {"gradio", "torch", "engine", "transformers", "fastapi"}
    assert all(n.startswith("app.store") for n in GRAPH[name] if n.split(".")[0] == "app")


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("app")))
def test_the_app_uses_the_engines_public_names(name):
    assert not {n for n in GRAPH[name] if n.startswith("engine.")}, "import engine and use its public names"


def test_no_import_cycles_between_our_modules():
    ours = {name: {m for m in deps if m in MODULES and m != name} for name, deps in GRAPH.items()}
    # A package's __init__ imports its modules; a module importing its own package's __init__ is not a cycle.
    ours = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in ours.items()}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in ours[name]:
            if state.get(dep) == 1:
                raise AssertionError(" -> ".join(path[path.index(dep):] + [dep]) if dep in path else dep)
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(ours):
        if name not in state:
            visit(name, [name])
