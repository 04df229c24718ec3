"""The package's import graph: no cycles among raydf modules, and training never reaches extraction.

Function-local imports count (they hide cycles otherwise). Extraction and training meet only at
``raydf/schema.py`` (and the config dataclasses): a training module importing the extraction module,
directly or through another module, fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raydf"
TRAINING = {"raydf.train", "raydf.splits", "raydf.scoring", "raydf.report", "raydf.tune", "raydf.protocol", "raydf.bundle",
            "raydf.mlflow_model", "raydf.compare", "raydf.evaluate", "raydf.recipe"}  # fmt: skip
EXTRACTION = "raydf.extract"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> tuple[dict[str, set[str]], dict[str, int]]:
    """raydf module -> the raydf modules it imports (top-level and function-local), and the count of
    function-local raydf imports per module."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    local: dict[str, int] = {m: 0 for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("raydf"):
                base = node.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("raydf")]
            for t in targets:
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    graph[name].add(t)
                    if id(node) not in top:
                        local[name] += 1
    return graph, local


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    queue, seen = [[start]], {start}
    while queue:
        path = queue.pop(0)
        for n in sorted(graph[path[-1]]):
            if n == goal:
                return path + [n]
            if n not in seen:
                seen.add(n)
                queue.append(path + [n])
    return None


def test_the_module_graph_has_no_cycle_and_training_never_reaches_extraction(capsys):
    graph, local = import_graph()
    with capsys.disabled():  # the module map, in the test's output
        print("\nraydf module graph (function-local raydf imports in brackets):")
        for m in sorted(graph):
            print(f"  {m} [{local[m]}] -> {', '.join(sorted(graph[m])) or '-'}")
    assert not _cycles(graph), _cycles(graph)
    for m in sorted(TRAINING & set(graph)):
        path = _reaches(graph, m, EXTRACTION)
        assert path is None, f"training module {m} reaches the extraction module: {' -> '.join(path)}"


def test_the_graph_walker_sees_function_local_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "raydf"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from raydf import b\n")
    (pkg / "b.py").write_text("from raydf.a import f\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", pkg)
    graph, local = import_graph()
    assert graph["raydf.a"] == {"raydf.b"} and local["raydf.a"] == 1
    assert _cycles(graph)


@pytest.mark.parametrize("module", sorted(TRAINING))
def test_training_modules_exist(module):
    assert (PACKAGE / (module.split(".", 1)[1].replace(".", "/") + ".py")).is_file(), module
