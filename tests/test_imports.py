"""No import circle anywhere in the `workbench` package (kernels/ ships as workbench.kernels).

Every module's imports are read with `ast` (nothing is executed) and resolved to the package's
own modules. Counted: imports that run when the module is imported, i.e. statements at module
level, including those nested in module-level `if`/`try`/`with` blocks and class bodies.
Left out: imports inside function bodies (they run at call time, after every module has loaded,
which is how a module defers an optional or heavy dependency) and in `if TYPE_CHECKING:` blocks
(read by type checkers only, never run). Importing `a.b.c` also runs the
packages `a` and `a.b`, so an import of a submodule counts as an import of each package above it
too, except the importer's own packages (those are always mid-import when it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"workbench": ROOT / "workbench", "workbench.kernels": ROOT / "kernels"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is_package) for every .py file of the package."""
    mods = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts]
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            if prefix == "workbench" and parts[:1] == ["kernels"]:
                continue  # not the shipped kernels
            mods[name] = (path, is_pkg)
    return mods


def _top_level_imports(tree: ast.Module):
    """Import nodes executed at import time: not inside a function body."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            stack.extend(node.orelse)  # the body never runs (annotations only)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _edges(mods: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        here = name if is_pkg else name.rpartition(".")[0]  # the package relative imports start from
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets = set()
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = here
            for _ in range(node.level - 1 if node.level else 0):
                base = base.rpartition(".")[0]
            mod = node.module or ""
            full = (f"{base}.{mod}" if mod else base) if node.level else mod
            targets.add(full)
            targets.update(f"{full}.{a.name}" for a in node.names)  # `from pkg import submodule`
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):  # the module and every package above it
                dep = ".".join(parts[:i])
                if dep in mods and dep != name and dep not in own_packages:
                    graph[name].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_the_package():
    graph = _edges(_modules())
    assert "workbench.sae.model" in graph and "workbench.kernels.autograd" in graph
    assert "workbench.sae.config" in graph["workbench.sae.model"]  # `from .config import SAEConfig`
    assert "workbench.kernels.topk_encoder" in graph["workbench.kernels.autograd"]


def test_a_planted_circle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_circle_in_the_package():
    cycles = _cycles(_edges(_modules()))
    assert not cycles, "import circles (module-level imports): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_topk_helpers_are_a_leaf():
    """workbench.sae.topk (top-k helpers, the cross-rank merge) imports nothing of the package."""
    graph = _edges(_modules())
    assert graph["workbench.sae.topk"] == set()
