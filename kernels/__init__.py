"""Triton kernels for TopK SAEs and their pure-torch references (imported as workbench.kernels)."""

if __name__ == "kernels":
    # This folder is workbench.kernels. Run from the repository root (`python app.py`,
    # `python -m pytest`, a REPL), sys.path holds the root, so `import kernels` finds this folder
    # and shadows the PyPI package `kernels` that transformers >= 5.25 depends on and imports at
    # start-up. Hand the name to the installed package: CPython's import returns whatever the module
    # put in sys.modules under its name while it ran. With no such package installed this stays an
    # empty module without __version__, which transformers reads as "kernels not available".
    import importlib.machinery
    import importlib.util
    import os
    import sys

    def _workbench_copy(origin: str | None) -> bool:
        # any checkout's kernels/ (two on sys.path would otherwise hand the name to each other forever)
        return origin is not None and os.path.isfile(os.path.join(os.path.dirname(origin), "topk_encoder.py"))

    def _installed_spec():
        for finder in sys.meta_path:
            if finder is importlib.machinery.PathFinder:
                specs = (finder.find_spec("kernels", [entry]) for entry in sys.path)
            else:  # e.g. an editable install's finder
                find = getattr(finder, "find_spec", None)
                specs = (find("kernels", None),) if find is not None else ()
            for spec in specs:
                if spec is not None and spec.loader is not None and not _workbench_copy(spec.origin):
                    return spec
        return None

    _spec = _installed_spec()
    if _spec is not None:
        _module = importlib.util.module_from_spec(_spec)
        _spec._initializing = True  # another thread's `import kernels` waits for the module lock meanwhile
        sys.modules["kernels"] = _module
        try:
            _spec.loader.exec_module(_module)
        except BaseException:
            del sys.modules["kernels"]
            raise
        finally:
            _spec._initializing = False
