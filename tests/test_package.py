"""The package's floor plan: imports inside ``helpers/`` run one way (down the layers of helpers.LAYERS) and
never in a circle. Imports are read from the source (module level and inside functions alike)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import LAYERS

PACKAGE = Path(__file__).resolve().parents[1] / "helpers"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``helpers/train/loop.py`` -> ``helpers.train.loop``; ``__init__.py`` names its package."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def helpers_imports(path: Path) -> set[str]:
    """The ``helpers`` modules that ``path`` imports (``from helpers import x`` counts as ``helpers.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "helpers"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "helpers":
            found.add(node.module)
            if node.module == "helpers":
                found |= {f"helpers.{a.name}" for a in node.names if a.name not in ("LAYERS", "CLASS_NAMES")}
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of ``package`` and the package modules it imports (itself and ``helpers`` excluded)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in helpers_imports(path):
            while target not in modules and "." in target:  # from helpers.plots import data -> the module
                target = target.rsplit(".", 1)[0]
            if target not in (name, "helpers"):
                targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer(module: str) -> int:
    """Layer of ``helpers.<top>[.<sub>...]`` from :data:`helpers.LAYERS`."""
    return LAYERS[module.split(".")[1]]


def test_no_import_cycle_in_helpers():
    assert find_cycle(import_graph()) is None


def test_every_module_has_a_layer():
    tops = {name.split(".")[1] for name in import_graph() if name != "helpers"}
    assert tops == set(LAYERS)


def test_imports_run_down_the_layers():
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in import_graph().items()
        if name != "helpers"
        for target in targets
        if layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_cycle_is_found(tmp_path: Path):
    package = write_package(
        tmp_path / "helpers",
        {
            "__init__.py": "",
            "a.py": "from helpers.b import x\n",
            "b.py": "def f():\n    from helpers import c\n",
            "c.py": "import helpers.a\n",
            "d.py": "from helpers.a import y\n",
        },
    )
    graph = import_graph(package)
    assert graph["helpers.d"] == {"helpers.a"}
    assert find_cycle(graph) == ["helpers.a", "helpers.b", "helpers.c", "helpers.a"]


@pytest.mark.parametrize("text", ["", "from helpers.b import x\n"])
def test_no_cycle_when_imports_run_one_way(tmp_path: Path, text: str):
    package = write_package(
        tmp_path / "helpers", {"__init__.py": "", "a.py": text, "b.py": "import os\n", "c/__init__.py": ""}
    )
    assert find_cycle(import_graph(package)) is None
