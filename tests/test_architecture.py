"""The project's shape rules (docs/architecture.md), checked on the source so a change that breaks
one fails the suite: no import cycles, serving never imports training or evaluation code, training
and evaluation not mutually dependent, classifiers/ on guard's basics only, nobody outside
guard/engines/ inspects an engine's class, no module-level caches, and modules of one job."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guard", "classifiers")
BASICS = ("guard.errors", "guard.paths", "guard.atomic", "guard.policy", "guard.config", "guard.devices",
          "guard.artifacts")
SERVING = ("guard.engines", "guard.interventions", "guard.serving", "guard.pipeline", "guard.api", "guard.app",
           "guard.protocol")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of this project that ``name`` imports at run time (``TYPE_CHECKING`` blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph``, or [] (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_no_import_cycle() -> None:
    assert _cycle(GRAPH) == []


def test_the_cycle_search_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_walk_sees_imports() -> None:
    """The rules below are only as good as the import walk: it must see real edges."""
    assert "guard.engines.base" in GRAPH["guard.engines.local"]
    assert "classifiers.names" in GRAPH["classifiers.keyword"]


def test_serving_imports_no_training_or_evaluation_code() -> None:
    bad = [f"{m} -> {d}" for m in GRAPH if m.startswith(SERVING) for d in GRAPH[m]
           if d.startswith(("guard.train", "guard.eval"))]
    assert bad == []


def test_training_and_evaluation_not_mutually_dependent() -> None:
    train_uses_eval = any(d.startswith("guard.eval") for m in GRAPH if m.startswith("guard.train") for d in GRAPH[m])
    eval_uses_train = any(d.startswith("guard.train") for m in GRAPH if m.startswith("guard.eval") for d in GRAPH[m])
    assert not (train_uses_eval and eval_uses_train)


def test_classifiers_use_only_guards_basics() -> None:
    bad = [f"{m} -> {d}" for m in GRAPH if m.startswith("classifiers") for d in GRAPH[m]
           if d.startswith("guard") and d != "guard" and not d.startswith(BASICS)]
    assert bad == []


ENGINE_REACH = re.compile(r"isinstance\([^)]*(VllmEngine|LocalEngine)|getattr\(\s*(self\.)?engine\b|\._translate\(")
MODULE_CACHE = re.compile(r"^_?[A-Za-z_]*(CACHE|_SCORER|_cache)\w*\s*(:[^=]+)?=\s*(\{|dict\(|None|OrderedDict|\[\])")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_no_caller_reaches_around_the_engine_contract() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}" for m, p in MODULES.items() if not m.startswith("guard.engines")
            for i, line in enumerate(_lines(p), 1) if ENGINE_REACH.search(line)]
    assert hits == []


def test_no_module_level_cache_or_global() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in MODULES.values() for i, line in enumerate(_lines(p), 1)
            if MODULE_CACHE.match(line) or re.match(r"^\s+global\s", line)]
    assert hits == []


@pytest.mark.parametrize("pattern", ["_CACHE = {}", "_cache: dict[str, int] = {}", "_SCORER = None"])
def test_the_cache_rule_catches_a_module_cache(pattern: str) -> None:
    assert MODULE_CACHE.match(pattern)


def test_modules_have_one_job() -> None:
    big = [f"{p.relative_to(ROOT)} ({len(_lines(p))})" for p in MODULES.values()
           if len(_lines(p)) > MAX_LINES and "long on purpose" not in p.read_text(encoding="utf-8")[:2000]]
    assert big == []
