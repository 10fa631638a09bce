"""The import graph of service/: no cycle, and the engine depends on no HTTP-layer package.

A cycle makes import order matter and hides which module owns what; an arrow from the engine to
`cdshooks/`, `auth/`, `feedback/` or `ops/` would tie the generic engine to one way of serving it.
Read from the source (an AST walk), so a lazy import inside a function counts too."""

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


def _imported(module: str, file: Path) -> Iterator[str]:
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
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


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    return {
        module: {target for target in _imported(module, file) if target in modules} - {module}
        for module, file in modules.items()
    }


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


def test_the_walk_sees_the_imports() -> None:
    # Guards the guard: a walk that found nothing would pass both checks below.
    assert "service.engine.apply" in GRAPH["service.cdshooks.routes"] | GRAPH["service.engine"]
    assert "service.engine.knowledge" in GRAPH["service.engine"]


def test_no_import_cycle_in_service() -> None:
    assert cycles(GRAPH) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith(ENGINE)))
def test_the_engine_does_not_import_the_http_layer(module: str) -> None:
    assert not {t for t in GRAPH[module] if t.startswith(HTTP_LAYER)}
