"""What the head-roles page and its APIs share: the shape checks of results.json's fields (a
hand-edited file can hold anything; each fault is named by file and field), the query-argument
parsers of the head APIs, and the "not computed" placeholder of an absent optional section."""

from __future__ import annotations

import html

from ..kinds.heads import HeadsRunResult
from ..probes.heads_data import ExplorerData
from ..runs import RESULTS_FILE
from .store import ApiError

SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)  # what malformed data raises


class DataError(ValueError):
    """A field of the run's results.json that does not have the shape the page needs; the message
    names the file and the field."""


def _shape(value) -> str:
    """What a value from results.json is, briefly (for an error message)."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"{type(value).__name__} {str(value)[:40]!r}"


def _number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def check_grid(field: str, grid, L: int, H: int, cell=None, cell_kind: str = "") -> None:
    """DataError naming `field` unless `grid` is L rows (layers) of H cells (heads), each passing
    `cell` when given (`cell_kind` says what a cell must be)."""
    if not isinstance(grid, list) or len(grid) != L:
        raise DataError(f"{RESULTS_FILE}: {field} must hold {L} rows (one per layer), got {_shape(grid)}")
    for layer, row in enumerate(grid):
        if not isinstance(row, list) or len(row) != H:
            raise DataError(f"{RESULTS_FILE}: {field}[{layer}] must hold {H} values (one per head), got {_shape(row)}")
        for h, v in enumerate(row):
            if cell is not None and not cell(v):
                raise DataError(f"{RESULTS_FILE}: {field}[{layer}][{h}] must be {cell_kind}, got {_shape(v)}")


def _pair(v) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v))


def check_roles(res: HeadsRunResult) -> None:
    """Every [layer][head] field of results.json's roles has the layers × heads of its retrieval scores."""
    r = res.roles
    L, H = res.n_layers, res.n_heads
    check_grid("roles.retrieval", r.retrieval, L, H, _number, "a number")
    check_grid("roles.streaming", r.streaming, L, H, _number, "a number")
    check_grid("roles.labels", r.labels, L, H)
    check_grid("roles.delta_loss", r.delta_loss, L, H, _number, "a number")
    if r.retrieval_hits:
        check_grid("roles.retrieval_hits", r.retrieval_hits, L, H, _number, "a number")
    for field in ("retrieval_ci", "streaming_ci"):
        if getattr(r, field):
            check_grid(f"roles.{field}", getattr(r, field), L, H, _pair, "a [low, high] pair")
    if r.too_few_copied and not isinstance(r.config.get("min_copied_steps"), (int, float)):
        raise DataError(f"{RESULTS_FILE}: roles.config.min_copied_steps must be a number (too_few_copied is set)")


def check_section(res: HeadsRunResult, *fields: str) -> None:
    """DataError with the fault of the first of results.json's `fields` that did not type-check."""
    for f in fields:
        if f in res.unreadable:
            raise DataError(res.unreadable[f])


def check_explorer(data: ExplorerData) -> tuple[int, int]:
    """(layers, heads) of results.json's explorer data once every field the explorer reads has
    their shape (each field's type is checked on reading: these are the grids' sizes); DataError
    naming the first field that does not."""
    L, H = data.n_layers, data.n_heads
    for key, v in (("n_layers", L), ("n_heads", H)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise DataError(f"{RESULTS_FILE}: explorer.{key} must be a positive integer, got {_shape(v)}")
    if not isinstance(data.metrics, dict):
        raise DataError(f"{RESULTS_FILE}: explorer.metrics must be an object of [layer][head] grids")
    for m, grid in data.metrics.items():
        check_grid(f"explorer.metrics[{m!r}]", grid, L, H, _number, "a number")
    for m, grid in (data.intervals or {}).items():
        if grid:
            check_grid(f"explorer.intervals[{m!r}]", grid, L, H, _pair, "a [low, high] pair")
    if data.labels is not None:
        check_grid("explorer.labels", data.labels, L, H)
    for c, ctx in (data.contexts or {}).items():
        where = f"explorer.contexts[{c!r}]"
        if not isinstance(ctx, dict) or not isinstance(ctx.get("tokens"), list):
            raise DataError(f"{RESULTS_FILE}: {where} must be an object with tokens and patterns")
        T = len(ctx["tokens"])
        if ctx.get("ids") is not None and (not isinstance(ctx["ids"], list) or len(ctx["ids"]) != T):
            raise DataError(f"{RESULTS_FILE}: {where}.ids must hold {T} ids (one per token), got {_shape(ctx['ids'])}")
        if ctx.get("patterns") is None and data.patterns_file:
            continue  # in the run's patterns file, read (and checked) one head at a time
        square = lambda p: isinstance(p, list) and len(p) == T and all(isinstance(q, list) and len(q) == T for q in p)  # noqa: E731
        check_grid(f"{where}.patterns", ctx.get("patterns"), L, H, square, f"a {T} × {T} pattern")
    curve = data.gate_curve
    if curve:
        if not isinstance(curve, dict):
            raise DataError(f"{RESULTS_FILE}: explorer.gate_curve must be an object with step and alpha")
        steps, alpha = curve.get("step"), curve.get("alpha")
        if not isinstance(steps, list) or not isinstance(alpha, list) or len(steps) != len(alpha):
            raise DataError(f"{RESULTS_FILE}: explorer.gate_curve must hold as many alpha grids as steps")
        for i, grid in enumerate(alpha):
            check_grid(f"explorer.gate_curve.alpha[{i}]", grid, L, H, _number, "a number")
    return L, H


def not_computed(title: str, field: str, anchor: str) -> str:
    """A section whose optional result is absent: said so, with the field results.json lacks."""
    return (
        f'<h2>{html.escape(title)}</h2><p class="empty" id="{anchor}-missing">Not computed for this run '
        f"(results.json has no {html.escape(field)}; the demo computes it, see workbench.demo).</p>"
    )


def _int_arg(query: dict, key: str, default: int | None = None) -> int:
    """Query parameter `key` as an integer; ApiError(400) naming it when missing or not one."""
    if key not in query:
        if default is None:
            raise ApiError(400, f"{key} is required (an integer)")
        return default
    try:
        return int(query[key])
    except ValueError:
        raise ApiError(400, f"{key} must be an integer, got {str(query[key])[:40]!r}") from None


def _choice(query: dict, key: str, options: list[str], default: str) -> str:
    value = query.get(key, default)
    if value not in options:
        raise ApiError(400, f"{key} must be one of {options}, got {str(value)[:60]!r}")
    return value
