"""The bench modules import one another without a circle (bench.explain and bench.run once did: each
needed the other, so which one Python loaded first decided what worked)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every bench module `path` imports, at the top or inside a function (TYPE_CHECKING included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "bench":
                found |= {f"bench.{alias.name}" for alias in node.names}
            elif node.module.startswith("bench."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bench.")}
    return found


def test_no_bench_module_imports_itself_through_others() -> None:
    graph = {f"bench.{path.stem}": imports_of(path) for path in BENCH.glob("*.py") if path.stem != "__init__"}
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
