"""The house rules a reviewer would otherwise check by hand: data flows one way (no import cycle, counting imports
inside functions and under TYPE_CHECKING), a rank loads nothing of the planner, modules stay small, and the tree is
formatted and linted as pyproject.toml configures ruff."""

import ast
import subprocess
import sys

import pytest

from .conftest import ROOT

PACKAGES = {
    "llamafactory_fp8": ROOT / "entrypoint" / "llamafactory_fp8",
    "llamafactory_fp8_healthcheck": ROOT / "healthcheck" / "llamafactory_fp8_healthcheck",
}
MAX_MODULE_LINES = 400
PLANNER = {
    "policy",
    "precision",
    "fit",
    "plan",
    "inspection",
    "launcher",
    "memory",
    "report",
    "cli",
    "model_facts",
    "request",
}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, wherever in the file the import statement sits."""
    graph = {}
    for package, folder in PACKAGES.items():
        for path in folder.glob("*.py"):
            name = f"{package}.{path.stem}"
            graph[name] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    base = package if node.level else ""
                    target = f"{base}.{node.module}" if node.level and node.module else (node.module or package)
                    names = [f"{target}.{alias.name}" for alias in node.names] + [target]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                graph[name] |= {n for n in names if n.split(".")[0] in PACKAGES and n.count(".") == 1}
    return {module: {t for t in targets if t in graph and t != module} for module, targets in graph.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_is_read_from_the_tree():
    graph = import_graph()
    assert "llamafactory_fp8.plan" in graph["llamafactory_fp8.launcher"]
    assert "llamafactory_fp8.runtime_patches" in graph["llamafactory_fp8.rank"]  # imported inside a function


def test_no_module_imports_itself_back():
    graph = import_graph()
    cycles = sorted(module for module in graph if module in reachable(graph, module))
    assert cycles == []


def test_a_rank_loads_nothing_of_the_planner():
    loaded = {name.split(".")[-1] for name in reachable(import_graph(), "llamafactory_fp8.rank")}
    assert loaded & PLANNER == set()


@pytest.mark.parametrize("folder", list(PACKAGES.values()), ids=list(PACKAGES))
def test_modules_stay_small(folder):
    long = {
        path.name: n for path in folder.glob("*.py") if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_passes(command):
    result = subprocess.run([sys.executable, "-m", "ruff", *command, str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
