"""One run of a kind into a folder: the loop the demo, the CLI and the benchmarks share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results import write_results
from ..runs import CONFIG_FILE, RunDir
from .registry import Kind, ModelInput


def build_run(kind: Kind, cfg: Any, model: ModelInput, data: Any, out: str | Path | RunDir, *, progress: bool = True):
    """`kind.build(cfg, model, data, run)` into `out`, then its config.json (unless the build wrote
    its own, as the SAE trainer does) and results.json, written last: the run counts as done once it
    exists. Returns the result."""
    if not isinstance(cfg, kind.config):
        raise TypeError(f"cfg: a {kind.name!r} run takes a {kind.config.__name__}, got {type(cfg).__name__}")
    run = out if isinstance(out, RunDir) else RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    result = kind.build(cfg, model, data, run, progress=progress)
    if not run.file(CONFIG_FILE).exists():
        run.write_config(cfg, kind=kind.name)
    write_results(run, result)
    return result
