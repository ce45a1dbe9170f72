"""Import layering: no import cycles inside ``steadyserve.transport`` and
``steadyserve.protocol`` (function-level imports included: a lazy import hides a cycle, it does
not remove it). Issue 10: ``transport/errors.py`` and ``protocol/raw_tensor.py`` broke the
auth/http/middleware and v2/v2_binary cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import steadyserve

PACKAGE = Path(steadyserve.__file__).parent


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, node.module])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph(subpackage: str) -> dict[str, set[str]]:
    modules = {
        f"steadyserve.{subpackage}.{p.stem}": p
        for p in (PACKAGE / subpackage).glob("*.py")
        if p.stem != "__init__"
    }
    return {name: _imports(path, name) & set(modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("subpackage", ["transport", "protocol"])
def test_no_import_cycles(subpackage: str) -> None:
    assert _cycle(_graph(subpackage)) is None


def test_the_error_and_raw_tensor_modules_are_leaves() -> None:
    transport = _graph("transport")
    assert transport["steadyserve.transport.errors"] <= {"steadyserve.transport.common"}
    protocol = _graph("protocol")
    assert protocol["steadyserve.protocol.raw_tensor"] == set()
