"""Import hygiene of the worker: no cycles among its modules, and the job lifecycle
(worker/runner.py, worker/webhooks.py, worker/kinds/) loads without the Celery app.

The app's module includes worker.tasks, which imports the runner; a lifecycle module
that imported the app back made a cycle that only import order kept working.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, here: str, is_package: bool) -> list[str]:
    """Module names one import statement names (``from a import b``: ``a.b`` too, in case
    ``b`` is a module); relative imports resolved against ``here``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = here.split(".") if is_package else here.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(package: str = "worker") -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports anywhere in its body (function-level
    imports included), each with its parent packages, which Python imports first."""
    paths = {_module(path): path for path in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node, name, path.name == "__init__.py"):
                parts = target.split(".")
                for end in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:end])
                    if prefix in paths and prefix != name:
                        edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_cycles_and_resolves_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    tree = ast.parse("from . import progress\nfrom .engines.errors import Canceled")
    relative = [n for node in tree.body for n in _imported(node, "worker.runner", False)]
    assert relative[:3] == ["worker", "worker.progress", "worker.engines.errors"]
    graph = import_graph()
    assert "worker.progress" in graph["worker.runner"]
    assert "worker.celery_app" in graph["worker.tasks"]
    assert "worker.kinds" in graph["worker.kinds.style_transfer"]


def test_no_import_cycle_among_worker_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_lifecycle_needs_neither_the_celery_app_nor_torch():
    """In a fresh interpreter: the runner, webhooks and kinds registry load without the
    worker's Celery app (and its tasks), and without torch, which a built-in kind's
    runner loads only when one of its jobs runs."""
    probe = """
import json, sys
import worker.runner, worker.webhooks, worker.progress, worker.kinds
before = sorted(sys.modules)
kinds = ("style_transfer", "fine_tune", "predict")
runners = [worker.kinds.runner_for(kind) is not None for kind in kinds]
print(json.dumps({"before": before, "after": sorted(sys.modules), "runners": runners}))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["runners"] == [True, True, True]
    for loaded in (seen["before"], seen["after"]):
        assert "worker.celery_app" not in loaded and "worker.tasks" not in loaded
        assert "torch" not in loaded
    assert "worker.kinds.style_transfer" not in seen["before"]  # imported on first use
    assert "worker.kinds.style_transfer" in seen["after"]
