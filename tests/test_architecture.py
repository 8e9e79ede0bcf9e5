"""The package's layers point one way: no import cycle (type-only and function-level imports included), the
search imports nothing from the build, and the target registry's data layer imports no plugin code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "deploykit").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every deploykit module `name` imports, wherever the import statement stands."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_no_import_cycle_among_deploykit_modules():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_search_imports_nothing_from_the_build():
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith("deploykit.pareto_search"):
            assert not {module for module in imported if module.startswith("deploykit.pipeline")}, name


def test_targets_are_data_and_schema_without_plugin_code():
    graph = _graph()
    allowed = {"deploykit.errors", "deploykit.user_files"}
    for name, imported in graph.items():
        if name.startswith("deploykit.targets"):
            outside = {module for module in imported if not module.startswith("deploykit.targets")}
            assert outside <= allowed, (name, outside - allowed)


def test_results_and_reports_sit_below_the_build():
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith(("deploykit.report", "deploykit.results", "deploykit.planner", "deploykit.options")):
            assert not {module for module in imported if module.startswith("deploykit.pipeline")}, name


def test_no_module_over_450_lines_and_no_command_function_over_10_parameters():
    for path in (ROOT / "deploykit").rglob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 450, path
        if "cli" not in path.relative_to(ROOT / "deploykit").parts:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                arguments = node.args
                count = len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs)
                assert count <= 10, (path, node.name, count)
