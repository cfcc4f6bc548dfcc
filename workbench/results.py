"""The base of every run kind's results.json: the only code that writes or reads it.

    results.json = {"kind": <config.json's kind>, "schema": <the kind's SCHEMA>, <the dataclass's fields>}

Each run kind (`workbench.kinds`: one module per kind) owns its result dataclass (`SAERunResult`,
`SparsityRunResult`, `HeadsRunResult`, `ArrowRunResult`, a user's own) and registers it in
`workbench.kinds.registry`; `write_results(run, result)` writes one and `read_results(run)` gives
back the dataclass of the kind that the run's config.json names. This module imports no kind: the
old names (`from workbench.results import HeadsRunResult`) are looked up in the registry (for one
release; import them from `workbench.kinds.<kind>`). The probes' own result
classes (`SparsityResult`, `HeadRoles`, `ArrowResult`, ...) are embedded as they are; they live in
the light modules `probes.sparsity_data`, `probes.heads_data` and `probes.arrow_data`, so that reading
a run of any kind never imports TransformerLens.

Compatibility rules:
- adding an optional field (with a default) keeps the schema: an older reader ignores keys it does
  not know, a newer reader fills the default in for files that lack it;
- renaming, removing or changing a field raises the kind's SCHEMA and adds a step to its `migrate`,
  so files written before still read; a file from a newer schema fails with a message saying so.
Files written before schemas existed (no "schema" key) are schema 0 and migrate.

Every failure is a `ResultsError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .kinds import registry
from .probes.arrow_data import ArrowResult as ArrowResult
from .probes.heads_data import AttentionExample as AttentionExample
from .probes.heads_data import HeadRoles as HeadRoles
from .probes.sparsity_data import SparsityOverTraining as SparsityOverTraining
from .probes.sparsity_data import SparsityResult as SparsityResult
from .probes.sparsity_data import TopKIntervention as TopKIntervention
from .runs import CONFIG_FILE, RESULTS_FILE, RunDir, atomic_write_json


class ResultsError(ValueError):
    """results.json (or the config.json that names its kind) is missing, corrupt, of an unknown
    kind or of a schema this workbench cannot read; the message names the file."""


T = TypeVar("T")


class _ResultClasses(Mapping):
    """kind name -> its result dataclass, read from the registry of kinds (the old `KINDS` dict)."""

    def __getitem__(self, kind: str) -> type:
        k = registry.get_kind(kind)
        if k is None:
            raise KeyError(kind)
        return k.result

    def __iter__(self):
        return iter(registry.kind_names())

    def __len__(self) -> int:
        return len(registry.kind_names())

    def pop(self, kind: str, *default):
        k = registry.KINDS.pop(kind, None)
        if k is None:
            if default:
                return default[0]
            raise KeyError(kind)
        return k.result


KINDS = _ResultClasses()


def _no_build(*args, **kwargs):
    raise NotImplementedError("this run kind was registered with results.register only: it has no build")


def register(cls: type[T]) -> type[T]:
    """Class decorator: a run kind that only has a result (a dataclass with KIND, SCHEMA, from_dict,
    to_dict); `workbench.kinds.registry.register_kind` registers a whole kind (config, build, page)."""
    for attr in ("KIND", "SCHEMA", "from_dict", "to_dict"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} lacks {attr}: a run kind needs KIND, SCHEMA, from_dict and to_dict")
    registry.register_kind(registry.Kind(cls.KIND, type(None), cls, _no_build, cls.KIND))
    return cls


# --- building dataclasses from JSON, with errors that name the field ------------------------------

_SCALARS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _type_ok(value: Any, annotation: Any) -> bool:
    """A shallow check of a JSON value against a field's annotation (containers by their outer type)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    options = [t.strip() for t in text.split("|")]
    for t in options:
        if t == "None":  # not a type to fall through to the nested-dataclass branch
            if value is None:
                return True
            continue
        base = t.split("[", 1)[0]
        if base in _SCALARS:
            if isinstance(value, bool) and base != "bool":
                continue
            if isinstance(value, _SCALARS[base]):
                return True
        elif base in ("list", "tuple"):
            if isinstance(value, list):
                return True
        elif base == "dict":
            if isinstance(value, dict):
                return True
        else:
            return True  # a nested dataclass or Any: converted (and checked) by its own from_dict
    return False


def take(cls: type[T], data: Any, where: str) -> T:
    """`cls(**data)` for a dataclass: keys it does not know are ignored (a newer writer's optional
    fields), a missing required field or a value of the wrong type is a ResultsError at `where`."""
    if not isinstance(data, dict):
        raise ResultsError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = dataclasses.fields(cls)
    missing = [
        f.name
        for f in fields
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ResultsError(f"{where} lacks {', '.join(missing)} (a {cls.__name__})")
    values = {}
    for f in fields:
        if f.name in data:
            if not _type_ok(data[f.name], f.type):
                raise ResultsError(
                    f"{where}.{f.name} must be {f.type}, got {type(data[f.name]).__name__} {str(data[f.name])[:40]!r}"
                )
            values[f.name] = data[f.name]
    return cls(**values)


def _plain(obj: Any) -> dict:
    """A result dataclass as a JSON-ready dict (nested dataclasses included)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# --- files -----------------------------------------------------------------------------------------


def run_kind(run: RunDir | str | Path) -> str:
    """The kind that the run's config.json names."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    path = run.file(CONFIG_FILE)
    try:
        kind = json.loads(path.read_text())["kind"]
    except FileNotFoundError:
        raise ResultsError(f"{path} is missing: not a run folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} is not valid JSON: {e}") from e
    except (KeyError, TypeError):
        raise ResultsError(f'{path} has no "kind"') from None
    if not isinstance(kind, str):
        raise ResultsError(f'{path}: "kind" must be a string, got {type(kind).__name__}')
    return kind


def result_class(kind: str, where: str = CONFIG_FILE) -> type:
    k = registry.get_kind(kind)
    if k is None:
        raise ResultsError(f"{where}: unknown run kind {kind!r} (known: {', '.join(registry.kind_names())})")
    return k.result


def write_results(run: RunDir | str | Path, result: Any) -> Path:
    """Write `result` (a registered run kind's dataclass) as the run's results.json, atomically.
    Its kind must be the one config.json names, when the run has a config.json."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    kind = getattr(type(result), "KIND", None)
    known = registry.get_kind(kind) if isinstance(kind, str) else None
    if known is None or not isinstance(result, known.result):
        names = ", ".join(k.result.__name__ for k in registry.all_kinds().values())
        raise TypeError(f"result must be one of {names}, got {type(result).__name__}")
    if run.file(CONFIG_FILE).exists() and (named := run_kind(run)) != kind:
        raise ResultsError(f"{run.file('config.json')} names kind {named!r}, but the result is a {kind!r} result")
    path = run.file(RESULTS_FILE)
    atomic_write_json(path, {"kind": kind, "schema": type(result).SCHEMA, **result.to_dict()}, indent=None)
    return path


def read_results(run: RunDir | str | Path, kind: str | None = None) -> Any:
    """The run's results.json as its kind's dataclass; the kind comes from config.json unless given."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    kind = run_kind(run) if kind is None else kind
    cls = result_class(kind, str(run.file(CONFIG_FILE)))
    path = run.file(RESULTS_FILE)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path} is missing: the run has not finished (or was interrupted)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} is not valid JSON: {e}") from e
    return results_from_json(data, cls, str(path))


def results_from_json(data: Any, cls: type, where: str) -> Any:
    """A results.json object (already parsed) as `cls`, migrated from an older schema."""
    if not isinstance(data, dict):
        raise ResultsError(f"{where} must hold a JSON object, got {type(data).__name__}")
    schema = data.get("schema", 0)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 0:
        raise ResultsError(f'{where}: "schema" must be a non-negative integer, got {schema!r}')
    if schema > cls.SCHEMA:
        raise ResultsError(
            f"{where} has schema {schema}, newer than this workbench reads for {cls.KIND!r} runs "
            f"(up to {cls.SCHEMA}): upgrade workbench to read it"
        )
    found = data.get("kind", cls.KIND)
    if found != cls.KIND:
        raise ResultsError(f"{where} holds a {found!r} result, but config.json says the run is {cls.KIND!r}")
    body = {k: v for k, v in data.items() if k not in ("kind", "schema")}
    migrate = getattr(cls, "migrate", lambda d, schema: d)
    try:
        for s in range(schema, cls.SCHEMA):
            body = migrate(body, s)
    except ResultsError as e:
        raise ResultsError(f"{where}: {e}") from e
    return cls.from_dict(body, where)


_MOVED = {"SAERunResult": "sae", "SparsityRunResult": "sparsity", "HeadsRunResult": "heads", "ArrowRunResult": "arrow"}


def __getattr__(name: str):
    """The built-in kinds' result classes under their old names (one release): read from the registry
    (no import of the kinds here: they import this module)."""
    if name in _MOVED:
        kind = registry.get_kind(_MOVED[name])
        if kind is not None:
            return kind.result
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
