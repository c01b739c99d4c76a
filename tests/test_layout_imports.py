"""The package layout: no import circle between ``medvit`` modules, counting function-level imports.

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
