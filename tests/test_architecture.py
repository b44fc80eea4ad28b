"""The layers point one way and nothing imports in a circle.

The import graph is read from the source with `ast`, counting imports inside functions too, so a
lazy import cannot hide a cycle or a dependency on Ray or MLflow. A subprocess check confirms that
importing the core really leaves Ray and MLflow out of `sys.modules`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("blueberry", "pipelines", "studies")
HEAVY = ("ray", "mlflow")  # what only the platform (and its tools) may bring in


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module `path` imports, anywhere in the file: project modules by full name (with the
    packages whose `__init__` the import runs), other libraries by their top-level name."""
    found: set[str] = set()

    def add(name: str) -> None:
        if name.split(".")[0] not in PACKAGES:
            found.add(name.split(".")[0])
            return
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            if ".".join(parts[:i]) in modules:
                found.add(".".join(parts[:i]))

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            add(node.module)
            for alias in node.names:  # `from package import module`
                if f"{node.module}.{alias.name}" in modules:
                    add(f"{node.module}.{alias.name}")
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports_inside_functions(graph):
    # cli/train.py imports the loop inside main_body (start-up speed); the graph must still see it.
    assert "blueberry.core.loop" in graph["blueberry.cli.train"]
    assert "ray" in graph["blueberry.platform.sweep"]  # imported inside functions only


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_cycle_detection_finds_a_planted_cycle(graph):
    planted = {**graph, "blueberry.core.hooks": graph["blueberry.core.hooks"] | {"blueberry.core.loop"}}
    assert any({"blueberry.core.hooks", "blueberry.core.loop"} <= set(c) for c in cycles(planted))


# What each layer may import from the project (besides itself, blueberry.errors and blueberry.files).
ALLOWED = {
    "blueberry.core": ("blueberry.core",),
    "blueberry.data": ("blueberry.data",),
    "pipelines": ("pipelines", "blueberry.data"),
    "blueberry.models": ("blueberry.models", "blueberry.core", "blueberry.data"),
    "blueberry.speedrun": ("blueberry.speedrun",),
    "blueberry.platform": ("blueberry.platform", "blueberry.speedrun", "blueberry.models", "blueberry.core",
                           "blueberry.data"),
    "blueberry.scaling": ("blueberry.scaling", "blueberry.platform", "blueberry.models", "blueberry.core"),
    "blueberry.cli": ("blueberry.cli", "blueberry.speedrun", "blueberry.scaling", "blueberry.platform",
                      "blueberry.models", "blueberry.core", "blueberry.data"),
    "blueberry.bench": ("blueberry.bench", "blueberry.scaling", "blueberry.platform", "blueberry.models",
                        "blueberry.core", "blueberry.data"),
    "studies": ("studies", "blueberry.cli", "blueberry.speedrun", "blueberry.scaling", "blueberry.platform",
                "blueberry.models", "blueberry.core", "blueberry.data"),
}
DOOR = "blueberry.platform.data"  # the one module of blueberry that imports pipelines


def layer_of(module: str) -> str | None:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len,
               default=None)


def layer_violations(graph):
    wrong = []
    for module, targets in graph.items():
        layer = layer_of(module)
        if layer is None:
            continue
        allowed = ALLOWED[layer] + ("blueberry.errors", "blueberry.files") + (("pipelines",) if module == DOOR else ())
        for target in targets:
            # The package itself (`blueberry/__init__`) is open to all; a prefix match on it would open everything.
            if target.split(".")[0] in PACKAGES and target != "blueberry" and not any(
                    target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} -> {target}")
    return wrong


def test_layers_point_one_way(graph):
    assert layer_violations(graph) == []


def test_the_layer_check_sees_a_planted_upward_import(graph):
    planted = {**graph, "blueberry.core.loop": graph["blueberry.core.loop"] | {"blueberry.platform.sweep"}}
    assert layer_violations(planted) == ["blueberry.core.loop -> blueberry.platform.sweep"]


@pytest.mark.parametrize("layer", ["blueberry.core", "blueberry.data", "blueberry.models", "blueberry.speedrun"])
def test_below_the_platform_nothing_reaches_ray_or_mlflow(graph, layer):
    offenders = {module: sorted(set(HEAVY) & reachable(graph, module)) for module in graph if layer_of(module) == layer}
    assert {module: heavy for module, heavy in offenders.items() if heavy} == {}


# The machinery every model kind shares: it reaches a kind only through the registry and RunConfig.
KIND_FREE = ("blueberry.core", "blueberry.data", "blueberry.platform", "blueberry.cli.study")


def test_the_shared_machinery_names_no_model_kind(graph):
    named = sorted(f"{module} -> {target}" for module, targets in graph.items()
                   if module.startswith(KIND_FREE) for target in targets
                   if target.startswith("blueberry.models.") and target not in ("blueberry.models.registry",
                                                                                "blueberry.models.run"))
    assert named == []


def test_the_reachability_check_sees_a_lazy_import(graph):
    planted = {**graph, "blueberry.core.hardware": graph["blueberry.core.hardware"] | {"blueberry.platform.tracking"}}
    assert "mlflow" in reachable(planted, "blueberry.core.loop")


def test_importing_the_core_and_models_loads_neither_ray_nor_mlflow():
    core = [m for m in project_modules() if m.startswith(("blueberry.core", "blueberry.data", "blueberry.models"))]
    code = (f"import sys\nfor m in {core!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
