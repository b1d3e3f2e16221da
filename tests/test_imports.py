"""The project's import structure: no import cycle among its modules at import time, and the layers
point one way: `dinoflow` (the library) < `components` (KFP components) < `pipelines` (the DAG and
`dinoflow pipeline`). The library never imports the deployment layer, not even lazily; the CLI
reaches `pipelines.cli` through its table of delegated subcommands (a name, resolved when run).

Inside the library the packages are layered too (`LAYERS`, bottom first, as docs/architecture.md
draws them): a module imports only from its own package or from a lower layer, at import time or
inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dinoflow": ROOT / "src" / "dinoflow", "components": ROOT / "components", "pipelines": ROOT / "pipelines"}


def _modules() -> dict[str, Path]:
    mods = {}
    for name, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The absolute names an import statement imports (`from a import b` gives a.b and a)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                pkg = pkg.rpartition(".")[0]
            base = f"{pkg}.{base}".strip(".")
        return [base, *(f"{base}.{a.name}" for a in node.names)]
    return []


def _graph(import_time_only: bool) -> dict[str, set[str]]:
    mods = _modules()

    def own(name: str) -> str | None:  # the project module an imported name lives in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        if import_time_only:  # statements run at import: the module body, `if`/`try` blocks in it (not TYPE_CHECKING)
            body = [t for t in tree.body if not (isinstance(t, ast.If) and "TYPE_CHECKING" in ast.unparse(t.test))]
            nodes = [n for top in body for n in ([top] if not isinstance(top, (ast.If, ast.Try)) else ast.walk(top))]
        else:
            nodes = list(ast.walk(tree))
        deps = {own(n) for node in nodes for n in _imported(node, module, path.name == "__init__.py")}
        # importing a.b.c runs a and a.b first; the importer's own packages are already being imported
        deps |= {_ancestor(d, i) for d in deps if d for i in range(1, d.count(".") + 1)}
        graph[module] = {d for d in deps if d and d != module} - _ancestors(module)
    return graph


def _ancestor(module: str, levels: int) -> str:
    return module.rsplit(".", levels)[0]


def _ancestors(module: str) -> set[str]:
    return {_ancestor(module, i) for i in range(1, module.count(".") + 1)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_at_import_time():
    graph = _graph(import_time_only=True)
    assert len(graph) > 100 and "dinoflow.config" in graph["dinoflow.cli"]  # the scan sees the project
    assert _cycles(graph) == []


def test_the_library_never_imports_the_deployment_layer():
    graph = _graph(import_time_only=False)
    upward = {
        (m, d)
        for m, deps in graph.items()
        if m.startswith("dinoflow")
        for d in deps
        if d.split(".")[0] in ("components", "pipelines")
    }
    assert upward == set()
    below = {
        (m, d) for m, deps in graph.items() if m.startswith("components") for d in deps if d.startswith("pipelines")
    }
    assert below == set()


# bottom first; a module belongs to the longest entry that prefixes its name. The root modules are
# small utilities at the bottom; the demo command is an entry point beside the CLI.
LAYERS: list[tuple[str, ...]] = [
    ("dinoflow", "dinoflow.errors", "dinoflow.io", "dinoflow.digest", "dinoflow.writer_lock")
    + ("dinoflow.interrupts", "dinoflow.memory"),
    ("dinoflow.config",),
    ("dinoflow.distributed",),
    ("dinoflow.data",),
    ("dinoflow.models",),
    ("dinoflow.losses",),
    ("dinoflow.tracking",),
    ("dinoflow.demo",),
    ("dinoflow.curation",),
    ("dinoflow.train",),
    ("dinoflow.evaluation",),
    ("dinoflow.embedding",),
    ("dinoflow.registry",),
    ("dinoflow.stages",),
    ("dinoflow.launch",),
    ("dinoflow.cli", "dinoflow.__main__", "dinoflow.demo.command"),
]


def _layer(module: str) -> tuple[int, str]:
    """(rank, the layer entry) of a library module."""
    best = max((p for group in LAYERS for p in group if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, group in enumerate(LAYERS) if best in group), best


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    found = []
    for m, deps in graph.items():
        if not m.startswith("dinoflow"):
            continue
        rank = _layer(m)[0]
        for d in deps:
            if d.startswith("dinoflow"):
                drank = _layer(d)[0]
                if drank > rank:
                    found.append((m, d))
    return sorted(found)


def test_library_imports_run_down_the_layers():
    graph = _graph(import_time_only=False)
    assert {p for group in LAYERS for p in group} <= set(graph), "every layer names a module of the library"
    assert _upward(graph) == []


def test_the_layer_check_finds_an_upward_import():
    graph = {"dinoflow.data.demo": {"dinoflow.tracking"}, "dinoflow.demo.command": {"dinoflow.stages"}}
    assert _upward(graph) == [("dinoflow.data.demo", "dinoflow.tracking")]


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
