"""No import circle anywhere in the `workbench` package (kernels/ ships as workbench.kernels), not
even through an import that runs late.

Every module's imports are read with `ast` (nothing is executed) and resolved to the package's
own modules. Counted: every import statement wherever it stands: at module level, in `if`/`try`
blocks and class bodies, inside functions (they run at call time, and a module that reaches back
up the chain there is as tangled as one that does so at the top), and under `if TYPE_CHECKING:`
(the type checker follows it; a circle there is a circle in the design). Importing `a.b.c` also
runs the packages `a` and `a.b`, so an import of a submodule counts as an import of each package
above it too, except the importer's own packages (they are mid-import whenever it runs and
nothing is read from them). Reading a *name* from one's own package (`from . import helper`,
where `helper` is defined in `__init__.py` and is no submodule) does count: it holds only while
`__init__.py` happens to define `helper` before it imports this module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"workbench": ROOT / "workbench", "workbench.kernels": ROOT / "kernels"}


def _modules(package_dirs: dict[str, Path] = PACKAGE_DIRS) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is_package) for every .py file of the packages."""
    mods = {}
    for prefix, folder in package_dirs.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            if prefix == "workbench" and parts[:1] == ["kernels"]:
                continue  # not the shipped kernels
            mods[".".join([prefix, *parts])] = (path, is_pkg)
    return mods


def _all_imports(tree: ast.Module):
    """Every Import/ImportFrom node of the module: top level, functions, TYPE_CHECKING blocks."""
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def _targets(node: ast.Import | ast.ImportFrom, here: str) -> tuple[set[str], set[str]]:
    """(modules the statement imports, packages it reads a name from) as dotted names; `here` is
    the package relative imports start from. `from p import n` imports p.n if n is a submodule and
    reads n from p otherwise; which it is gets decided against the module table by the caller."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}, set()
    base = here
    for _ in range(node.level - 1 if node.level else 0):
        base = base.rpartition(".")[0]
    mod = node.module or ""
    full = (f"{base}.{mod}" if mod else base) if node.level else mod
    return {full} | {f"{full}.{a.name}" for a in node.names}, {full}


def _edges(mods: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        here = name if is_pkg else name.rpartition(".")[0]
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for node in _all_imports(ast.parse(path.read_text(), str(path))):
            modules, read_from = _targets(node, here)
            for t in modules:
                parts = t.split(".")
                for i in range(1, len(parts) + 1):  # the module and every package above it
                    dep = ".".join(parts[:i])
                    if dep in mods and dep != name and dep not in own_packages:
                        graph[name].add(dep)
            if isinstance(node, ast.ImportFrom):
                for pkg in read_from:  # `from pkg import n` with n defined in pkg itself
                    names = [a.name for a in node.names]
                    if pkg in mods and pkg != name and any(f"{pkg}.{n}" not in mods for n in names):
                        graph[name].add(pkg)
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


def _scan(tmp_path: Path, files: dict[str, str]) -> list[list[str]]:
    """Cycles of a planted package `p` whose files are given as relative path -> source."""
    for rel, src in files.items():
        (tmp_path / "p" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "p" / rel).write_text(src)
    return _cycles(_edges(_modules({"p": tmp_path / "p"})))


def test_the_scan_sees_the_package():
    graph = _edges(_modules())
    assert "workbench.sae.model" in graph and "workbench.kernels.autograd" in graph
    assert "workbench.sae.config" in graph["workbench.sae.model"]  # `from .config import SAEConfig`
    assert "workbench.kernels.topk_encoder" in graph["workbench.kernels.autograd"]
    assert "workbench.models" in graph["workbench.hub"]  # the loader sits above the sources
    assert "workbench.sae.topk" in graph["workbench.sae.selection"]  # `from .topk import ...` (no own package)
    assert "workbench.sae" not in graph["workbench.sae.selection"]


def test_a_planted_circle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    files = {
        "__init__.py": "",
        "a.py": "from .b import B\nA = 1\n",
        "b.py": "B = 2\n\ndef late():\n    from .a import A  # runs at call time\n    return A\n",
    }
    assert _scan(tmp_path, files) == [["p.a", "p.b"]]


def test_a_circle_through_a_type_checking_import_is_found(tmp_path):
    files = {
        "__init__.py": "",
        "a.py": "from .b import B\n",
        "b.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import A\nB = 2\n",
    }
    assert _scan(tmp_path, files) == [["p.a", "p.b"]]


def test_a_circle_through_the_own_parent_package_is_found(tmp_path):
    files = {
        "__init__.py": "def helper():\n    return 1\n\nfrom .child import C  # noqa: E402\n",
        "child.py": "from . import helper\nC = helper()\n",
    }
    assert _scan(tmp_path, files) == [["p", "p.child"]]


def test_a_sibling_import_inside_a_package_is_no_circle(tmp_path):
    """`from .sibling import x` in a submodule of a package whose __init__ imports it: the
    package is mid-import and nothing is read from it, so no edge back to it."""
    files = {
        "__init__.py": "from .one import X\n",
        "one.py": "from .two import Y\nX = Y\n",
        "two.py": "Y = 1\n",
        "sub/__init__.py": "from .deep import Z\n",
        "sub/deep.py": "from ..two import Y\nfrom .. import one\nZ = Y\n",
    }
    assert _scan(tmp_path, files) == []


def test_no_import_circle_in_the_package():
    cycles = _cycles(_edges(_modules()))
    assert not cycles, "import circles (any import, wherever it stands): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_sources_do_not_reach_up():
    """Issue 26's circle (a) is gone: the shipped default imports neither the hub nor the arrow
    probe, the HF-folder loader not the default, and the arrow probe neither the default nor the
    trainer, except in its deprecation `__getattr__` (old names, one release)."""
    graph = _edges(_modules())
    assert not {"workbench.hub", "workbench.probes.arrow"} & graph["workbench.default_model"]
    assert "workbench.default_model" not in graph["workbench.pretrained"]
    arrow = ast.parse((ROOT / "workbench/probes/arrow.py").read_text())
    arrow.body = [n for n in arrow.body if getattr(n, "name", "") != "__getattr__"]
    imported = set().union(*(_targets(n, "workbench.probes")[0] for n in _all_imports(arrow)))
    assert not {"workbench.models", "workbench.default_model"} & imported, imported


def test_topk_helpers_are_a_leaf():
    """workbench.sae.topk (top-k helpers, the cross-rank merge) imports nothing of the package."""
    graph = _edges(_modules())
    assert graph["workbench.sae.topk"] == set()
