"""The layers point one way, nothing imports in a circle, and nothing outside the registry tells kinds apart
by name.

The import graph is read from the source with `ast`, counting imports inside functions too, so a
lazy import cannot hide a cycle or a dependency on Ray or MLflow. A subprocess check confirms that
importing everything below the platform really leaves Ray and MLflow out of `sys.modules`, and that
`blueberry-generate --help` imports no model kind. Comparisons of a kind with a kind's name (`kind ==
"lm"`) are found in the syntax tree: a command or a layer that switches on kind names is one a new kind
would have to edit.
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


# What each layer may import from the project (besides itself, blueberry.errors and blueberry.files), bottom up:
# the shard contract and tokenizers; the core; what image kinds share; the kinds; inference, evaluation and
# export; the platform (Ray, MLflow); commands, benchmarks and studies.
BELOW_KINDS = ("blueberry.vision", "blueberry.core", "blueberry.data")
INFERENCE = ("blueberry.inference", "blueberry.evals", "blueberry.export")
BELOW_PLATFORM = (*INFERENCE, "blueberry.models", *BELOW_KINDS)
ALLOWED = {
    "blueberry.core": ("blueberry.core",),
    "blueberry.data": ("blueberry.data",),
    "pipelines": ("pipelines", "blueberry.data"),
    "blueberry.vision": BELOW_KINDS,
    "blueberry.models": ("blueberry.models", *BELOW_KINDS),
    **{layer: BELOW_PLATFORM for layer in INFERENCE},
    "blueberry.speedrun": ("blueberry.speedrun",),
    "blueberry.platform": ("blueberry.platform", "blueberry.speedrun", *BELOW_PLATFORM),
    "blueberry.scaling": ("blueberry.scaling", "blueberry.platform", "blueberry.models", "blueberry.core"),
    "blueberry.cli": ("blueberry.cli", "blueberry.speedrun", "blueberry.scaling", "blueberry.platform",
                      *BELOW_PLATFORM),
    "blueberry.bench": ("blueberry.bench", "blueberry.scaling", "blueberry.platform", *BELOW_PLATFORM),
    "studies": ("studies", "blueberry.cli", "blueberry.speedrun", "blueberry.scaling", "blueberry.platform",
                *BELOW_PLATFORM),
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


@pytest.mark.parametrize("layer", ["blueberry.core", "blueberry.data", "blueberry.vision", "blueberry.models",
                                   *INFERENCE, "blueberry.speedrun"])
def test_below_the_platform_nothing_reaches_ray_or_mlflow(graph, layer):
    offenders = {module: sorted(set(HEAVY) & reachable(graph, module)) for module in graph if layer_of(module) == layer}
    assert {module: heavy for module, heavy in offenders.items() if heavy} == {}


# The machinery every model kind shares: it reaches a kind only through the registry and RunConfig.
KIND_FREE = ("blueberry.core", "blueberry.data", "blueberry.vision", *INFERENCE, "blueberry.platform",
             "blueberry.cli.study", "blueberry.cli.generate", "blueberry.cli.eval", "blueberry.cli.export",
             "blueberry.cli.runs")


def test_the_shared_machinery_names_no_model_kind(graph):
    named = sorted(f"{module} -> {target}" for module, targets in graph.items()
                   if module.startswith(KIND_FREE) for target in targets
                   if target.startswith("blueberry.models.") and target not in ("blueberry.models.registry",
                                                                                "blueberry.models.run"))
    assert named == []


def test_the_reachability_check_sees_a_lazy_import(graph):
    planted = {**graph, "blueberry.core.hardware": graph["blueberry.core.hardware"] | {"blueberry.platform.tracking"}}
    assert "mlflow" in reachable(planted, "blueberry.core.loop")


def test_the_kinds_borrow_nothing_from_each_other(graph):
    """A kind's folder imports the shared layers, never another kind's folder: what two kinds share (the
    image judge, FID, pixels) lives in `blueberry.vision`."""
    def kind_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 3 and parts[:2] == ["blueberry", "models"] else None

    borrowed = sorted(f"{module} -> {target}" for module, targets in graph.items() if kind_of(module)
                      for target in targets if kind_of(target) not in (None, kind_of(module)))
    assert borrowed == []


def test_importing_everything_below_the_platform_loads_neither_ray_nor_mlflow():
    below = ("blueberry.core", "blueberry.data", "blueberry.vision", "blueberry.models", *INFERENCE)
    core = [m for m in project_modules() if m.startswith(below) and m != "blueberry.evals.harness"]
    code = (f"import sys\nfor m in {core!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_blueberry_generate_help_imports_no_model_kind():
    code = ("import sys\nfrom blueberry.cli.generate import main\nassert main(['--help']) == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith(('blueberry.models', 'pipelines', 'ray', 'mlflow'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# Where a kind may be named: the registry that lists the kinds, and each kind's own folder.
KIND_NAMES_ALLOWED = ("blueberry.models.registry",)


def kind_comparisons(path: Path, kinds: set[str]) -> list[str]:
    """`line: source` of each comparison in `path` that tells kinds apart by name: a `kind` (a name or an
    attribute `.kind`) compared with a string, or anything compared with a registered kind's name."""
    def is_kind(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "kind") or (isinstance(node, ast.Attribute)
                                                                      and node.attr == "kind")

    def strings(node: ast.AST) -> set[str]:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return {item.value for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)}

    text = path.read_text()
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        named = set().union(*(strings(o) for o in operands))
        if (any(map(is_kind, operands)) and named) or named & kinds:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.get_source_segment(text, node)}")
    return found


def kind_string_violations(modules: dict[str, Path], kinds: set[str]) -> list[str]:
    return [hit for module, path in sorted(modules.items())
            if not module.startswith(KIND_NAMES_ALLOWED) and not _inside_a_kind(module)
            for hit in kind_comparisons(path, kinds)]


def _inside_a_kind(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 3 and parts[:2] == ["blueberry", "models"]


@pytest.fixture(scope="module")
def kinds() -> set[str]:
    from blueberry.models.registry import task_kinds

    return set(task_kinds())


def test_no_kind_string_comparisons_outside_the_registry(kinds):
    assert kind_string_violations(project_modules(), kinds) == []


def test_the_kind_check_finds_planted_comparisons(tmp_path, kinds):
    planted = REPO / "blueberry" / "cli" / "_planted_kind_check.py"
    planted.write_text('def f(run, saved):\n    if run.task.kind == "dit":\n        return 1\n'
                       '    return saved.task in ("lm", "vqvae")\n')
    try:
        found = kind_string_violations({"blueberry.cli._planted_kind_check": planted}, kinds)
    finally:
        planted.unlink()
    assert [hit.split(": ", 1)[1] for hit in found] == ['run.task.kind == "dit"', 'saved.task in ("lm", "vqvae")']
