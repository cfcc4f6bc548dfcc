"""Lazy package exports (PEP 562): `from workbench.probes import duo_gates` imports probes.duo only,
so importing one module of a package never pulls in every other's dependencies."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, tuple[str, ...]], namespace: dict
) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """`__all__`, `__getattr__` and `__dir__` for `package`, whose names live in its submodules
    (`exports`: submodule -> names); a name is imported on first use and then cached in `namespace`."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        module = where.get(name)
        if module is None:  # a submodule not imported yet: `from package import submodule` imports it
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return sorted(where), __getattr__, __dir__
