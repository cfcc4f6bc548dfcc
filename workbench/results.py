"""What a run's results.json holds, per run kind, and the only code that writes or reads it.

    results.json = {"kind": <config.json's kind>, "schema": <the kind's SCHEMA>, <the dataclass's fields>}

One dataclass per kind (`SAERunResult`, `SparsityRunResult`, `HeadsRunResult`, `ArrowRunResult`),
registered by its KIND in `KINDS`; `write_results(run, result)` writes one and `read_results(run)`
gives back the dataclass of the kind that the run's config.json names. The probes' own result
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .probes.arrow_data import ArrowResult
from .probes.heads_data import AttentionExample, HeadRoles
from .probes.sparsity_data import SparsityOverTraining, SparsityResult, TopKIntervention
from .runs import CONFIG_FILE, RESULTS_FILE, RunDir, atomic_write_json


class ResultsError(ValueError):
    """results.json (or the config.json that names its kind) is missing, corrupt, of an unknown
    kind or of a schema this workbench cannot read; the message names the file."""


T = TypeVar("T")
KINDS: dict[str, type] = {}  # kind name -> its run-result dataclass


def register(cls: type[T]) -> type[T]:
    """Class decorator: a new run kind (a dataclass with KIND, SCHEMA, from_dict, to_dict)."""
    for attr in ("KIND", "SCHEMA", "from_dict", "to_dict"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} lacks {attr}: a run kind needs KIND, SCHEMA, from_dict and to_dict")
    if cls.KIND in KINDS and KINDS[cls.KIND] is not cls:
        raise ValueError(f"run kind {cls.KIND!r} is already registered by {KINDS[cls.KIND].__name__}")
    KINDS[cls.KIND] = cls
    return cls


# --- building dataclasses from JSON, with errors that name the field ------------------------------

_SCALARS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _type_ok(value: Any, annotation: Any) -> bool:
    """A shallow check of a JSON value against a field's annotation (containers by their outer type)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    options = [t.strip() for t in text.split("|")]
    for t in options:
        if t == "None" and value is None:
            return True
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


# --- the kinds ---------------------------------------------------------------------------------------


@register
@dataclass
class SAERunResult:
    """An SAE run's evaluation on held-out text: `reconstruction_metrics` and `splice_metrics` of
    workbench.sae.evaluate, and where it was measured. The feature table is features.safetensors and
    the sparse probing / absorption-style scores usefulness.json, beside it."""

    KIND: ClassVar[str] = "sae"
    SCHEMA: ClassVar[int] = 1

    fvu: float  # fraction of variance unexplained
    explained_variance: float  # 1 - fvu
    l0: float  # mean active latents per token
    l0_hist: list[int]  # tokens with exactly i active latents, i = 0, 1, ...
    dead_frac: float  # latents firing on no evaluated token
    dense_frac: float  # latents firing on more than DENSE_ABOVE of the tokens
    log10_density: list[float]  # [F] log10 of each latent's firing rate (floored at 1e-10)
    cos_sim: float  # mean cosine(x, x_hat)
    l2_ratio: float  # mean |x_hat| / |x|
    n_tokens: int  # tokens the reconstruction was measured on
    ce_clean: float  # the model's CE loss (nats/token)
    ce_sae: float  # with the SAE spliced in at its hook
    ce_zero_ablation: float
    ce_mean_ablation: float
    ce_loss_recovered: float | None  # (CE_zero - CE_sae) / (CE_zero - CE_clean); None where undefined
    ce_loss_recovered_vs_mean: float | None  # the same against mean ablation
    kl_sae: float  # KL(clean || spliced) per token
    eval_split: str = "validation"  # the corpus split the windows came from
    eval_windows: int | None = None  # held-out windows the splice and the feature table used

    @classmethod
    def from_metrics(cls, reconstruction: dict, splice: dict, **extra: Any) -> SAERunResult:
        """From `reconstruction_metrics(...)` and `splice_metrics(...)` (keys they add later and
        this class does not know are left out)."""
        return take(cls, {**reconstruction, **splice, **extra}, "SAE metrics")

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> SAERunResult:
        return take(cls, d, where)

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:
        return d  # schema 0 was the same flat object


@register
@dataclass
class SparsityRunResult:
    """MLP activation sparsity of a model: at the end of training, over its checkpoints, and the
    top-k intervention."""

    KIND: ClassVar[str] = "sparsity"
    SCHEMA: ClassVar[int] = 1

    final: SparsityResult
    over_training: SparsityOverTraining | None = None  # None: no checkpoints measured
    topk: TopKIntervention | None = None  # None: not measured

    def to_dict(self) -> dict:
        return {
            "final": self.final.to_dict(),
            "over_training": None if self.over_training is None else dataclasses.asdict(self.over_training),
            "topk": None if self.topk is None else dataclasses.asdict(self.topk),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> SparsityRunResult:
        if not isinstance(d, dict) or "final" not in d:
            raise ResultsError(f"{where} lacks final (a SparsityRunResult)")
        over, topk = d.get("over_training"), d.get("topk")
        return cls(
            final=take(SparsityResult, d["final"], f"{where}.final"),
            over_training=take(SparsityOverTraining, over, f"{where}.over_training") if over else None,
            topk=take(TopKIntervention, topk, f"{where}.topk") if topk else None,
        )

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:
        return d  # schema 0: the same keys, with {} for "not measured"


@register
@dataclass
class HeadsRunResult:
    """Attention-head roles (`probes.heads.head_roles`), example patterns, and the optional
    measurements of issue 21, each stored as its result class's to_dict() (the viewer shows what is
    present): DuoAttention gates (probes.duo.DuoResult), RazorAttention scores
    (probes.razor.RazorResult), the KV-cache trade-off (probes.kv_tradeoff.TradeoffResult), the rank
    agreement of the head rankings (probes.head_agreement), the scores over training
    (probes.heads_over_training) and the head explorer's data (probes.head_explorer.explorer_data)."""

    KIND: ClassVar[str] = "heads"
    SCHEMA: ClassVar[int] = 1

    roles: HeadRoles
    examples: list[AttentionExample] = field(default_factory=list)
    duo: dict | None = None
    razor: dict | None = None
    kv_tradeoff: dict | None = None
    agreement: dict | None = None
    over_training: dict | None = None
    explorer: dict | None = None  # probes.head_explorer.explorer_data(...): the head explorer's scores and patterns

    @property
    def n_layers(self) -> int:
        return len(self.roles.retrieval)

    @property
    def n_heads(self) -> int:
        return len(self.roles.retrieval[0]) if self.roles.retrieval else 0

    def to_dict(self) -> dict:
        return {
            **_plain(self),
            "roles": self.roles.to_dict(),
            "examples": [dataclasses.asdict(e) for e in self.examples],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> HeadsRunResult:
        if not isinstance(d, dict) or "roles" not in d:
            raise ResultsError(f"{where} lacks roles (a HeadsRunResult)")
        examples = d.get("examples") or []
        if not isinstance(examples, list):
            raise ResultsError(f"{where}.examples must be a list, got {type(examples).__name__}")
        out = take(cls, {k: v for k, v in d.items() if k not in ("roles", "examples")} | {"roles": None}, where)
        out.roles = take(HeadRoles, d["roles"], f"{where}.roles")
        out.examples = [take(AttentionExample, e, f"{where}.examples[{i}]") for i, e in enumerate(examples)]
        return out

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:
        if schema == 0:  # HeadRoles' fields, example_tokens and example_patterns, all at the top
            rest = {k: v for k, v in d.items() if k not in ("example_tokens", "example_patterns")}
            tokens, patterns = d.get("example_tokens") or [], d.get("example_patterns") or []
            d = {
                "roles": rest,
                "examples": [{"name": "needle", "tokens": tokens, "patterns": patterns}] if patterns else [],
            }
        return d


@register
@dataclass
class ArrowRunResult:
    """The arrow of time (`probes.arrow.arrow_over_seeds`) on each data set, by its name."""

    KIND: ClassVar[str] = "arrow"
    SCHEMA: ClassVar[int] = 1

    datasets: dict[str, ArrowResult]

    def to_dict(self) -> dict:
        return {"datasets": {k: v.to_dict() for k, v in self.datasets.items()}}

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> ArrowRunResult:
        if not isinstance(d, dict) or not isinstance(d.get("datasets"), dict):
            raise ResultsError(f"{where} lacks datasets (an ArrowRunResult)")
        return cls({k: take(ArrowResult, v, f"{where}.datasets[{k!r}]") for k, v in d["datasets"].items()})

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:
        if schema == 0 and "datasets" not in d and "gaps" in d:
            raise ResultsError(
                "it holds a one-seed arrow result (gaps and curves, from before seeds), which has "
                "no seed-level interval and no verdict; delete it and rebuild the run"
            )
        return d


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


def result_class(kind: str, where: str = "config.json") -> type:
    if kind not in KINDS:
        raise ResultsError(f"{where}: unknown run kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[kind]


def write_results(run: RunDir | str | Path, result: Any) -> Path:
    """Write `result` (a registered run kind's dataclass) as the run's results.json, atomically.
    Its kind must be the one config.json names, when the run has a config.json."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    kind = getattr(type(result), "KIND", None)
    if kind not in KINDS or not isinstance(result, KINDS[kind]):
        raise TypeError(
            f"result must be one of {', '.join(c.__name__ for c in KINDS.values())}, got {type(result).__name__}"
        )
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
    try:
        for s in range(schema, cls.SCHEMA):
            body = cls.migrate(body, s)
    except ResultsError as e:
        raise ResultsError(f"{where}: {e}") from e
    return cls.from_dict(body, where)
