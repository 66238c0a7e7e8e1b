"""The packages' layering: tasks <- strategies <- bench. A lower package never imports a higher one,
and no module imports itself back through others (no import cycle), counting every import: at the
top of a module, inside a function, and under TYPE_CHECKING alike."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LAYERS = ("tasks", "strategies", "bench")  # lowest first


def _module_name(path: Path) -> str:
    """The installed name: bench/x.py is mtlbench.bench.x (pyproject's package-dir)."""
    parts = ("mtlbench", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (a `from package import module` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    known = set(paths)
    return {name: _imports(path, known) - {name} for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None. A package's own modules importing
    their package's __init__ (bench.executors.inline -> bench.executors) do not count: Python runs a
    package's __init__ before any of its modules."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if module.startswith(target + "."):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_package_imports_one_above_it():
    upward = sorted(f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
                    if _layer(target) > _layer(module))
    assert upward == []


def test_no_import_cycle():
    assert _cycle(import_graph()) is None


@pytest.mark.parametrize("graph, cycle", [
    ({"bench.a": {"bench.b"}, "bench.b": {"bench.c"}, "bench.c": {"bench.a"}}, ["bench.a", "bench.b", "bench.c", "bench.a"]),
    ({"bench.a": {"bench.b"}, "bench.b": set()}, None),
    ({"bench.x": {"bench.x.y"}, "bench.x.y": {"bench.x"}}, None),  # a package and its module
])
def test_the_cycle_finder_finds_cycles(graph, cycle):
    assert _cycle(graph) == cycle


def test_the_import_graph_sees_imports_inside_functions_and_names_from_packages():
    graph = import_graph()
    assert "mtlbench.bench.single_run" in graph["mtlbench.bench.executors.inline"]  # inside InlineExecutor.run
    assert "mtlbench.tasks.registry" in graph["mtlbench.bench.config"]  # `from ...tasks import registry as ...`
