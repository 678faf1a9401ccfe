"""The house rules: commands at the package root, the library in rooms that only import rooms
below them, no import cycles, thin entry points."""

from __future__ import annotations

import ast
from pathlib import Path

from bloodcells.core.hydra import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "bloodcells"
ROOMS = ["core", "cleaning", "data", "models", "inference", "callbacks", "reporting", "serving", "sweeps", "runs"]
COMMANDS = {
    "train",
    "evaluate",
    "predict",
    "ensemble",
    "explain",
    "export",
    "clean",
    "audit",
    "preview",
    "summarize",
    "checkpoints",
    "serve",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every bloodcells module a file imports, at top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bloodcells"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from bloodcells.core import compat`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bloodcells"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "commands" if parts[-1] in COMMANDS else "package"


def test_the_package_root_holds_only_commands_and_the_rooms():
    files = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert files == COMMANDS
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ROOMS)
    for name in COMMANDS:
        text = (PACKAGE / f"{name}.py").read_text()
        assert len(text.splitlines()) < 80 and "def main(" in text, name


def test_a_lower_room_never_imports_a_higher_one():
    rank = {r: i for i, r in enumerate(ROOMS)}
    bad = []
    for importer, imported in graph().items():
        for target in imported:
            here, there = room(importer), room(target)
            if here == "commands" or there == "package":
                continue  # commands may import anything; CLASS_NAMES lives in the package
            if there == "commands" or (here in rank and rank[there] > rank[here]):
                bad.append(f"{importer} -> {target}")
    assert not bad, bad


def test_no_import_cycles():
    edges, state, cycle = graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycle.append(" -> ".join([*path, node, nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for module in edges:
        if module not in state:
            visit(module, [])
    assert not cycle, cycle


def test_every_room_says_what_it_is_for_and_what_it_may_import():
    for name in ROOMS:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
        assert "import" in doc.lower() and len(doc.splitlines()) <= 3, name
