"""The package reads as its layers: contracts, no cycles, a small root, small modules.

Counted from the source (every ``import`` between regiontrt modules, module- or function-level,
``TYPE_CHECKING`` blocks included), as ``docs/architecture.md`` describes.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import regiontrt as rt

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "regiontrt"
LAYERS = ("graph", "data", "shapes", "calibration", "precision", "backends", "runtime", "build",
          "deploy", "serve", "report", "cli")


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_import_contracts_hold() -> None:
    pytest.importorskip("importlinter", reason="needs import-linter (pip install '.[test]')")
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports; "
                           "raise SystemExit(lint_imports())"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "BROKEN" not in done.stdout


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def test_no_import_cycles_counting_every_import() -> None:
    grimp = pytest.importorskip("grimp", reason="needs grimp (import-linter's graph)")
    graph = grimp.build_graph("regiontrt")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _strongly_connected(edges) == []
    # the check can fail: a cycle made by hand is found
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) != []


def test_the_root_is_small_and_everything_else_is_one_level_down() -> None:
    assert len(rt.__all__) <= 30
    for name in rt.__all__:
        getattr(rt, name)
    for layer in LAYERS:
        module = importlib.import_module(f"regiontrt.{layer}")
        assert (module.__doc__ or "").strip(), f"regiontrt.{layer} has no docstring"
        if layer != "serve":  # rt.serve is the function that serves, from that package
            assert getattr(rt, layer) is module
    assert "TYPE_CHECKING" not in dir(rt) and "importlib" not in dir(rt)


def test_old_paths_still_resolve_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="regiontrt.runtime.engine"):
        old = importlib.import_module("regiontrt.engine")
    assert old.Engine is rt.Engine
    with pytest.warns(DeprecationWarning, match="regiontrt.errors.BuildError"):
        assert rt.BuildError is rt.errors.BuildError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rt.Engine is importlib.import_module("regiontrt.runtime.engine").Engine


def test_modules_and_functions_stay_small() -> None:
    big, long = [], []
    for path in _sources():
        text = path.read_text()
        if text.count("\n") > 400:
            big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines}")
    assert big == [] and long == []
