"""The package layout: the layers of DESIGN.md, and no import circle between ``medvit`` modules.

Both count function-level imports: a lower layer never imports a higher one, at module level or inside a
function. :data:`LAYERS` lists the packages bottom to top; a package may import any package of a lower
layer, and a package of its own layer only along an edge of :data:`SIDEWAYS`; any other edge fails.

The graph is read from the source with :mod:`ast` (nothing is imported): every ``import`` and
``from ... import`` anywhere in a module (module level, functions, methods) is an edge, plus the
``importlib.import_module(f"medvit.x.{...}")`` of a lazy ``__getattr__`` (its table of sources).
Imports under ``if TYPE_CHECKING:`` are not run and are left out. ``from medvit.a import b`` points at
``medvit.a.b`` when that is a module, else at ``medvit.a``; a submodule's implicit import of its parent
package is not an edge (Python handles that order by design).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "medvit"

# Bottom to top (DESIGN.md "Inside medvit/, by layer"); a top-level module (run_dir.py, cli.py) is its own package.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"medvit", "atomic", "errors", "hashing", "assets", "config_files", "config_schema", "markdown", "run_names"}),
    ("metrics", {"metrics"}),
    ("inputs", {"models", "data", "boundary"}),
    ("runs", {"run_dir"}),
    ("training", {"train", "pretrain", "explain"}),
    ("reporting", {"clinical", "report"}),
    ("workflows", {"workflows", "study"}),
    ("interfaces", {"demo", "commands", "cli"}),
]
# Edges inside one layer. data <-> boundary is the one package pair that imports both ways (no module does:
# boundary.manifest reads data's manifests, data.loaders validates through boundary.manifest; test_no_import_cycle).
SIDEWAYS = {
    ("models", "boundary"),  # checkpoints read weights through boundary.weights
    ("data", "boundary"),  # loaders.create_dataset validates its manifest
    ("boundary", "data"),  # boundary.manifest reads manifests and dataset specs
    ("pretrain", "train"),  # the shared training step, config readers and checkpoints
    ("report", "clinical"),  # the run report embeds the clinical sections
    ("study", "workflows"),  # a study cell is an ordinary train_run
    ("cli", "commands"),
    ("commands", "demo"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names a module imports anywhere, outside ``if TYPE_CHECKING:`` blocks."""
    names: list[str] = []
    lazy_sources: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from a import b`: a.b when that is a module (resolved in import_graph), else a
            names.extend(f"{source}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            argument = node.args[0] if node.args else None
            if isinstance(argument, ast.JoinedStr) and argument.values and isinstance(argument.values[0], ast.Constant):
                lazy_sources.append(str(argument.values[0].value))  # f"medvit.explain.{...}"
            elif isinstance(argument, ast.Constant):
                names.append(str(argument.value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    if lazy_sources:  # a PEP 562 table: every string value naming a submodule of the prefix
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.extend(prefix + node.value for prefix in lazy_sources)
    return names


def import_graph() -> dict[str, set[str]]:
    """``{module: {medvit modules it imports}}`` for every module of the package."""
    files = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            if not name.startswith("medvit"):
                continue
            while name and name not in files:  # `from medvit.a import f`: f is not a module
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_graph_reads_function_level_and_lazy_imports():
    graph = import_graph()
    assert "medvit.models" in graph["medvit.run_dir"]  # `from medvit.models import create_model` in load_run
    assert "medvit.explain.cam" in graph["medvit.explain"]  # the PEP 562 table


def test_find_cycle_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    if cycle is not None:
        pytest.fail("import circle (function-level imports count): " + " -> ".join(cycle))


def package_of(module: str) -> str:
    """``medvit.train.engine`` -> ``train``; ``medvit.run_dir`` -> ``run_dir``; ``medvit`` -> ``medvit``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_edges_not_allowed(graph: dict[str, set[str]]) -> list[str]:
    """Every import (``module -> module``) whose packages are not an allowed edge of :data:`LAYERS`."""
    level = {package: index for index, (_, packages) in enumerate(LAYERS) for package in packages}
    wrong = []
    for module, targets in sorted(graph.items()):
        source = package_of(module)
        for target_module in sorted(targets):
            target = package_of(target_module)
            if source == target or level[target] < level[source] or (source, target) in SIDEWAYS:
                continue
            wrong.append(f"{module} -> {target_module} ({source}: {LAYERS[level[source]][0]}, "
                         f"{target}: {LAYERS[level[target]][0]})")
    return wrong


def test_every_package_has_a_layer():
    packages = {package_of(module) for module in import_graph()}
    placed = set().union(*(members for _, members in LAYERS))
    assert packages == placed, f"no layer: {sorted(packages - placed)}; gone: {sorted(placed - packages)}"
    level = {package: index for index, (_, members) in enumerate(LAYERS) for package in members}
    assert all(level[a] == level[b] for a, b in SIDEWAYS), "a SIDEWAYS edge must stay inside one layer"


def test_every_sideways_edge_is_used():
    used = {(package_of(a), package_of(b)) for a, targets in import_graph().items() for b in targets}
    assert SIDEWAYS <= used, f"allowed but unused (remove them): {sorted(SIDEWAYS - used)}"


def test_layer_check_finds_an_upward_and_an_unlisted_sideways_import():
    graph = {"medvit.train.engine": {"medvit.clinical.calibrate", "medvit.run_dir", "medvit.train.state"},
             "medvit.run_dir": {"medvit.train.config"}, "medvit.explain.cam": {"medvit.train.predict"},
             "medvit.report": {"medvit.clinical.section"}}
    assert layer_edges_not_allowed(graph) == [
        "medvit.explain.cam -> medvit.train.predict (explain: training, train: training)",
        "medvit.run_dir -> medvit.train.config (run_dir: runs, train: training)",
        "medvit.train.engine -> medvit.clinical.calibrate (train: training, clinical: reporting)",
    ]


def test_imports_follow_the_layers():
    wrong = layer_edges_not_allowed(import_graph())
    assert not wrong, "imports against the layers (function-level imports count):\n" + "\n".join(wrong)
