"""The shape of service/: the request path reads top-down through the packages, with no import circle.

Layers, top to bottom: `__main__` (wiring) -> `split` (split mode's processes, beside the protocols) ->
`api` (protocols) -> `core` (admission, router, executor)
-> `lifecycle` (models over time) -> `runtime` and `preprocess` (running graphs, preparing images).
A package may import from its own layer and those below it, never above; the top-level shared modules
(settings, errors, metrics and the statistics it feeds, logs, model spec, names, schemas) sit under
everything. `client` talks to a server over the network and imports none of the server's layers."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
LAYERS = ["__main__", "split", "api", "core", "lifecycle", "runtime", "preprocess"]
RANK = {"__main__": 0, "split": 1, "api": 1, "core": 2, "lifecycle": 3, "runtime": 4, "preprocess": 4}
SHARED = {
    "settings", "errors", "metrics", "statistics", "logs", "model_spec", "names", "schemas", "_generated",
    "protogen",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVICE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def service_modules() -> dict[str, Path]:
    return {module_name(path): path for path in SERVICE.rglob("*.py") if "_generated" not in path.parts}


def imports_of(path: Path) -> set[str]:
    """Every service module this file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("service"))
    return found


def graph() -> dict[str, set[str]]:
    modules = service_modules()
    return {
        name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()
    }


def layer_of(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_import_circle() -> None:
    edges = graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import circle: " + " -> ".join(
            [*visiting[visiting.index(module) :], module]
        )
        visiting.append(module)
        for target in sorted(edges[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, targets in graph().items():
        source = layer_of(module)
        for target in targets:
            goal = layer_of(target)
            if goal in SHARED or goal == source:
                continue
            if source == "__main__" and goal == "client":
                continue  # `python -m service classify` starts the client
            if source == "client" or goal == "client":
                wrong.append(f"{module} -> {target} (client is separate from the server)")
            elif source in SHARED:
                if goal not in ("runtime",):  # settings reads the provider names (runtime.providers)
                    wrong.append(f"{module} -> {target} (a shared module reaches into a layer)")
            elif RANK[goal] < RANK[source]:
                wrong.append(f"{module} -> {target} (upwards)")
    assert not wrong, wrong


def test_modules_stay_small() -> None:
    lines = {name: len(path.read_text().splitlines()) for name, path in service_modules().items()}
    big = {name: count for name, count in lines.items() if count > 450}
    assert not big, f"split these by job: {big}"
