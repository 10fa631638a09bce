"""The import graph of service/: no cycle, and the engine depends on no HTTP-layer package.

A cycle makes import order matter and hides which module owns what; an arrow from the engine to
`cdshooks/`, `auth/`, `feedback/` or `ops/` would tie the generic engine to one way of serving it.
Read from the source (an AST walk), so a lazy import inside a function counts too. Between
packages, the imports made at run time have no cycle either; imports for typing only (`if
TYPE_CHECKING:`) are left out there, since the composition root (`runtime.py`) names every
package's components for the type checker while each package's handlers import it."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = "service.engine"
HTTP_LAYER = ("service.cdshooks", "service.auth", "service.feedback", "service.ops")


def _modules() -> dict[str, Path]:
    modules = {}
    for file in sorted((ROOT / "service").rglob("*.py")):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = file
    return modules


MODULES = _modules()


def _typing_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST, typing: bool) -> Iterator[ast.AST]:
    """Every node, or (typing False) every node outside `if TYPE_CHECKING:` blocks."""
    for child in ast.iter_child_nodes(tree):
        if typing or not _typing_only(child):
            yield child
            yield from _nodes(child, typing)


def _imported(module: str, file: Path, typing: bool = True) -> Iterator[str]:
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    for node in _nodes(ast.parse(file.read_text(encoding="utf-8")), typing):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from service.engine import apply` imports a module; `import Subject`, a name.
                full = f"{base}.{alias.name}"
                yield full if full in MODULES else base


def import_graph(modules: Mapping[str, Path], typing: bool = True) -> dict[str, set[str]]:
    return {
        module: {target for target in _imported(module, file, typing) if target in modules}
        - {module}
        for module, file in modules.items()
    }


def package_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """Arrows between the packages of service/ (`service.cdshooks`, ...); a module directly in
    service/ (app, cli, runtime, ...) is its own node."""

    def package(module: str) -> str:
        parts = module.split(".")
        if len(parts) > 1 and (ROOT / "service" / parts[1]).is_dir():
            return ".".join(parts[:2])
        return module

    packages: dict[str, set[str]] = {package(module): set() for module in graph}
    for module, targets in graph.items():
        packages[package(module)] |= {package(t) for t in targets} - {package(module)}
    return packages


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


GRAPH = import_graph(MODULES)
RUN_TIME_GRAPH = import_graph(MODULES, typing=False)


def test_the_walk_sees_the_imports() -> None:
    # Guards the guard: a walk that found nothing would pass both checks below.
    assert "service.engine.apply" in GRAPH["service.cdshooks.routes"] | GRAPH["service.engine"]
    assert "service.engine.knowledge" in GRAPH["service.engine"]


def test_no_import_cycle_in_service() -> None:
    assert cycles(GRAPH) == []


def test_no_cycle_between_packages_at_run_time() -> None:
    packages = package_graph(RUN_TIME_GRAPH)
    assert "service.feedback" in packages["service.cdshooks"]  # the walk sees package arrows
    assert cycles(packages) == []


def test_typing_only_imports_are_told_apart() -> None:
    assert "service.feedback.store" in GRAPH["service.runtime"]
    assert "service.feedback.store" not in RUN_TIME_GRAPH["service.runtime"]


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith(ENGINE)))
def test_the_engine_does_not_import_the_http_layer(module: str) -> None:
    assert not {t for t in GRAPH[module] if t.startswith(HTTP_LAYER)}
