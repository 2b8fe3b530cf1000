"""The package's layering, checked from the source: no import cycle and no import up the layers.

Every import counts: top-level, function-local and ``if TYPE_CHECKING:`` ones (a type-only import up
the layers is still a lower layer knowing a higher one). The layer order is declared once, here.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hubdask"

# bottom to top; a module may import its own layer (without a cycle) and any layer below it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "config", "names", "scheduler")),
    ("storage", ("storage", "storage.root", "storage.files", "storage.forked", "storage.retry",
                 "storage.public", "storage.publish")),
    ("cache", ("storage.cache",)),
    ("versioning", ("versioning", "versioning.*")),
    ("array engine", ("grid", "source", "shards", "chunkio", "view", "spec", "daskgraph", "compute", "progress")),
    ("write path and locks", ("locks", "write", "grow")),
    ("adapters", ("viz", "viz.*", "integrations", "integrations.stream", "integrations.handoff", "integrations.torch",
                  "integrations.tensorflow", "integrations.xarray_view")),
    ("Array", ("history", "array", "dataset", "export")),
    ("entry points", ("api", "mapblocks", "serve", "cli", "demo", "integrations.ingest",
                      "integrations.xarray", "")),  # "": the package itself, hubdask/__init__
]


def module_name(path: Path) -> str:
    """``hubdask/viz/html.py`` -> ``viz.html``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module``'s layer (KeyError for a module no layer names)."""
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return i
    raise KeyError(module)


def imported(path: Path, module: str, known: set[str]) -> set[tuple[str, int]]:
    """The package modules that ``module`` imports anywhere in its source, with the line of each."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                target = f"hubdask.{target}" if target else "hubdask"
            else:
                target = node.module or ""
            # "from hubdask.viz import html" imports the submodule; "from hubdask.viz import show" the package
            subs = [f"{target}.{a.name}" for a in node.names]
            targets = [t for t in subs if t.removeprefix("hubdask").lstrip(".") in known] or [target]
        else:
            continue
        for t in targets:
            if t != "hubdask" and not t.startswith("hubdask."):
                continue
            name = t.removeprefix("hubdask").lstrip(".")
            while name and name not in known:  # "import hubdask.viz.html.x" and the like: the module it is in
                name = name.rpartition(".")[0]
            if name != module:
                out.add((name, node.lineno))
    return out


def graph() -> dict[str, set[tuple[str, int]]]:
    mods = modules()
    return {m: imported(p, m, set(mods)) for m, p in mods.items()}


def test_every_module_has_a_layer():
    unplaced = [m or "hubdask" for m in modules() if not _placed(m)]
    assert not unplaced, f"modules in no layer of tests/test_layers.py LAYERS: {unplaced}"


def _placed(module: str) -> bool:
    try:
        layer_of(module)
    except KeyError:
        return False
    return True


def test_no_import_goes_up_a_layer():
    bad = []
    for m, edges in graph().items():
        for target, line in sorted(edges):
            if _placed(m) and _placed(target) and layer_of(target) > layer_of(m):
                bad.append(f"hubdask.{m}:{line} ({LAYERS[layer_of(m)][0]}) imports hubdask.{target} "
                           f"({LAYERS[layer_of(target)][0]})")
    assert not bad, "imports up the layers:\n" + "\n".join(bad)


def test_no_import_cycle():
    edges = {m: {t for t, _ in e} for m, e in graph().items()}
    cycles = _cycles(edges)
    assert not cycles, "import cycles (a shortest cycle, then every module of its tangle):\n" + "\n".join(
        " -> ".join(c + c[:1]) + f"   [{', '.join(sorted(members))}]" for c, members in cycles)


def _cycles(edges: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """(a cycle, the modules of its tangle) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append((_one_cycle(sorted(component), edges), sorted(component)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _one_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, for a readable message."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & members):
                if w == start:
                    return paths[v]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


@pytest.mark.parametrize("source, expected", [
    ("from hubdask.viz import html\n", {("viz.html", 1)}),
    ("from hubdask.viz import show\n", {("viz", 1)}),
    ("def f():\n    from ..array import Array\n", {("array", 2)}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import hubdask.grid\n", {("grid", 3)}),
])
def test_the_checker_sees_every_form_of_import(tmp_path, source, expected):
    """The parser itself: submodule vs package imports, relative and function-local, type-only."""
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imported(path, "storage.m", {"viz", "viz.html", "array", "grid", "storage.m"}) == expected


def test_the_checker_finds_a_cycle_and_an_upward_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [(["a", "b", "c"], ["a", "b", "c"])]
    assert layer_of("storage.cache") < layer_of("versioning.store") < layer_of("array") < layer_of("api")
