"""The registry of run kinds: a leaf that imports nothing of the workbench (as SAELens'
`registry.py` does, to avoid circular imports).

A run kind is what a run folder's config.json names ("sae", "heads", ...). Its `Kind` bundles
everything the workbench needs to make and show one: the config dataclass (its fields are the flags
of `workbench run <kind>`), the typed result (results.json), the build function, the folder a run
of it gets by default, and the viewer page that shows it (named lazily, so reading a run never
imports the viewer).

The built-in kinds are registered by `workbench.kinds.builtin`, which this module imports by name
on the first lookup (the results base, which every kind imports, reads this registry, so it cannot
import the kinds themselves); users' kinds register when their module is imported
(`load_plugin("my_module")`, the CLI's `--plugin my_module`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

BUILTIN = "workbench.kinds.builtin"  # the module that registers the built-in kinds


class ModelInput(NamedTuple):
    """The model a build runs on, and what is known of where it came from."""

    model: Any  # a TransformerLens HookedTransformer
    name: str  # what --model named: "workbench-tiny", a folder, a TransformerLens name
    config: Any = None  # its workbench ModelConfig, when it is a workbench-trained model
    run_dir: Path | None = None  # its training run (checkpoints/, metrics.jsonl); None: not known


class Page(NamedTuple):
    """How the viewer shows a kind: `summary(result) -> str` (the run list's line) and
    `render(name, result) -> str` (the run's page body, HTML)."""

    summary: Callable[[Any], str]
    render: Callable[[str, Any], str]


@dataclass(frozen=True)
class Kind:
    """One run kind. `build(cfg, model: ModelInput, data: TokenData, run: RunDir, *, progress)`
    writes the run's files and returns its result (the caller writes results.json)."""

    name: str  # config.json's "kind" and the CLI's `workbench run <name>`
    config: type  # its config dataclass (fields declared with fielddoc.doc: they are the flags)
    result: type  # its typed result: KIND, SCHEMA, to_dict, from_dict (and migrate(d, schema) past schema 1)
    build: Callable[..., Any]
    folder: str  # the folder a run of this kind gets in the demo (and by default)
    # the viewer page: a dotted module path whose module has summary(result) and render(name,
    # result), imported only when a page is drawn; or a Page of two callables (a test's kind)
    page: str | Page | None = None
    help: str = ""  # one line for `workbench run --help`

    def viewer_page(self) -> Page | None:
        """The page's two functions (importing the page module now)."""
        if self.page is None or isinstance(self.page, Page):
            return self.page
        mod = importlib.import_module(self.page)
        return Page(mod.summary, mod.render)


KINDS: dict[str, Kind] = {}
_loaded = False


def register_kind(kind: Kind) -> Kind:
    """Add a kind; registering the same name twice is refused unless it is the same Kind (a module
    imported again)."""
    for attr in ("KIND", "SCHEMA", "from_dict", "to_dict"):  # migrate(d, schema) is optional
        if not hasattr(kind.result, attr):
            raise TypeError(
                f"{kind.result.__name__} lacks {attr}: a run kind's result needs KIND, SCHEMA, to_dict and from_dict"
            )
    if kind.result.KIND != kind.name:
        raise ValueError(f"kind {kind.name!r}: its result {kind.result.__name__} says KIND={kind.result.KIND!r}")
    old = KINDS.get(kind.name)
    if old is not None and old != kind and old.result is not kind.result:
        raise ValueError(f"run kind {kind.name!r} is already registered (result {old.result.__name__})")
    KINDS[kind.name] = kind
    return kind


def _ensure_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module(BUILTIN)


def get_kind(name: str) -> Kind | None:
    """The kind registered under `name`, None if there is none."""
    _ensure_builtin()
    return KINDS.get(name)


def kind_names() -> list[str]:
    _ensure_builtin()
    return sorted(KINDS)


def all_kinds() -> dict[str, Kind]:
    _ensure_builtin()
    return dict(KINDS)


def load_plugin(module: str) -> None:
    """Import a user's module by its dotted path; it registers its kinds with `register_kind`."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"--plugin {module}: cannot import it ({e}); give a module on sys.path (a.b.c)") from e
