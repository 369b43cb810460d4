"""The layering rule, read from the code's own import statements (`ast`, nothing imported):
the core package `src/selfexplain` never imports Prefect, tasks/, flows/, cli/ or bench/, and its
modules import each other without a cycle. Lazy imports inside functions count: a cycle through
one is still a cycle, only deferred. `if TYPE_CHECKING:` imports do not (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "src" / "selfexplain"
FORBIDDEN = ("prefect", "tasks", "flows", "cli", "bench")
"""Top-level packages the core must never reach up to."""


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(source: str, module: str) -> set[str]:
    """Every module name an import statement in `source` (the module `module`) names, absolute,
    lazy imports included, `if TYPE_CHECKING:` blocks left out."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path, package: str = "selfexplain") -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (`root` holds the package folder)."""
    paths = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        named = imported_modules(path.read_text(encoding="utf-8"), name
                                 if path.name != "__init__.py" else f"{name}.__init__")
        graph[name] = {m for m in named if m in paths and m != name and m != package}
    return graph


def forbidden_imports(root: Path, package: str = "selfexplain") -> list[str]:
    """`module imports name` for every import of a forbidden top-level package."""
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(path, root)
        for imported in sorted(imported_modules(path.read_text(encoding="utf-8"), name)):
            if imported.split(".")[0] in FORBIDDEN:
                bad.append(f"{name} imports {imported}")
    return sorted(set(bad))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def test_core_never_imports_prefect_tasks_flows_cli_or_bench():
    assert forbidden_imports(ROOT / "src") == []


def test_core_has_no_import_cycle():
    assert cycles(import_graph(ROOT / "src")) == []


def test_the_checker_sees_what_it_must(tmp_path):
    """A synthetic package with a forbidden import (lazy), a cycle through a lazy import and a
    TYPE_CHECKING-only back edge (not a cycle): the checker must report the first two only."""
    package = tmp_path / "selfexplain"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from selfexplain import b\n")
    (package / "b.py").write_text("def f():\n    from selfexplain.a import thing\n"
                                  "    from prefect import flow\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from selfexplain.d import D\n")
    (package / "d.py").write_text("from selfexplain import c\nimport tasks.store\n")
    (package / "sub" / "e.py").write_text("from ..a import x\nfrom . import f\n")
    (package / "sub" / "f.py").write_text("from .e import y\n")
    graph = import_graph(tmp_path)
    assert graph["selfexplain.sub.e"] == {"selfexplain.a", "selfexplain.sub", "selfexplain.sub.f"}
    assert cycles(graph) == [["selfexplain.a", "selfexplain.b"],
                             ["selfexplain.sub.e", "selfexplain.sub.f"]]
    assert forbidden_imports(tmp_path) == ["selfexplain.b imports prefect",
                                           "selfexplain.b imports prefect.flow",
                                           "selfexplain.d imports tasks.store"]


LAYERS = ("tasks", "flows", "cli")
"""Top to bottom below cli: cli -> flows -> tasks -> core. A layer imports only those below it."""


def test_layers_above_the_core_have_no_cycle_and_never_reach_up():
    for depth, package in enumerate(LAYERS):
        assert cycles(import_graph(ROOT, package)) == [], package
        above = LAYERS[depth + 1:]
        reaching_up = sorted(
            f"{module_name(path, ROOT)} imports {imported}"
            for path in (ROOT / package).rglob("*.py")
            for imported in imported_modules(path.read_text(encoding="utf-8"),
                                             module_name(path, ROOT))
            if imported.split(".")[0] in above)
        assert reaching_up == [], package
