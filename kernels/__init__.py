"""Triton kernels for TopK SAEs and their pure-torch references (imported as workbench.kernels)."""

if __name__ == "kernels":
    # This folder is workbench.kernels. Run from the repository root (`python app.py`,
    # `python -m pytest`, a REPL), sys.path holds the root, so `import kernels` finds this folder
    # and shadows the PyPI package `kernels` that transformers >= 5.25 depends on and imports at
    # start-up. Hand the name to the installed package: a module may replace itself in sys.modules
    # while it runs, and the import statement returns the replacement.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None or _spec.loader is None:
        raise ImportError(
            f"{os.path.dirname(__file__)} is workbench.kernels (import it by that name); "
            "no installed package `kernels` was found outside the repository root"
        )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)
