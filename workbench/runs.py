"""Run directories: one folder per run holding its config, metrics and artifacts.

    runs/<name>/
        config.json        what produced the run (a dataclass, as JSON)
        metrics.jsonl      one JSON object per logged step, appended
        results.json       final numbers a figure or table reads (workbench.results: one dataclass per kind)
        *.safetensors      weights and arrays
        checkpoint.pt      latest training state (tensors and plain values only)

Every whole-file write goes to a temporary file in the same folder and is renamed into place,
so a reader (the viewer, a notebook) sees either the old file or the new one, never half.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

# The run folder's file names: the writer and every reader use these, never the literal.
CONFIG_FILE = "config.json"  # {"kind": <run kind>, "config": <what produced the run>}
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step
RESULTS_FILE = "results.json"  # the kind's typed result (workbench.results), written last
CHECKPOINT_FILE = "checkpoint.pt"  # latest training state, read with weights_only=True
SAE_WEIGHTS_FILE = "sae.safetensors"
SAE_CONFIG_FILE = "sae_config.json"
FEATURES_FILE = "features.safetensors"  # the SAE's feature table
ATTENTION_FILE = "attention.safetensors"  # a hook_z SAE's head shares and DFA (sae.attention.AttentionTable)
EXPLORER_PATTERNS_FILE = "explorer_patterns.safetensors"  # the head explorer's contexts, [L, H, T, T] each
OUTPUT_SCORES_FILE = "output_scores.safetensors"  # every latent's output score (steer.directions.OutputScores)
USEFULNESS_FILE = "usefulness.json"  # sparse probing and absorption-style scores
MODEL_WEIGHTS_FILE = "model.safetensors"  # a workbench language model's weights
MODEL_CONFIG_FILE = "model_config.json"  # ... and its ModelConfig


def _atomic_replace(path: str | Path, write: Callable[[str], None]) -> None:
    """Have `write(tmp)` fill a temporary file beside `path`, then rename it into place: a reader
    sees the old file or the new one, never half; a failed write leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _atomic_replace(path, write)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The file's sha256 (hex), read in chunks (a 100 MB GGUF or a shipped weights file is never
    held whole in memory)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def jsonable(obj: Any) -> Any:
    """`obj` as JSON gives it back: dataclasses and dicts as dicts, tuples and tensors as lists, paths
    as strings, non-finite floats as None (so results and configs round-trip through files)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; the viewer treats null as missing
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """`indent=None` writes compact JSON (results full of [L][H][q][k] patterns are 3x smaller)."""
    atomic_write_bytes(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False).encode())


def atomic_save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_replace(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def atomic_torch_save(path: str | Path, state: dict[str, Any]) -> None:
    """Save a dict of tensors and plain values; read it back with `load_state`."""
    _atomic_replace(path, lambda tmp: torch.save(state, tmp))


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or was written by something else."""


def load_state(path: str | Path, *, kind: str) -> dict[str, Any]:
    """Load a checkpoint written by `atomic_torch_save` with weights_only=True (no pickle code runs).

    `kind` must match the checkpoint's own "kind" entry, so an SAE checkpoint is never taken for
    a language model's.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a workbench checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} holds {found!r}, expected a {kind!r} checkpoint")
    return state


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(path)
    except Exception as e:
        raise CheckpointError(f"weights file {path} is corrupt or not safetensors: {e}") from e


class RunDir:
    """A run's folder. Creating one makes the folder; nothing else is written until asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: Any, kind: str) -> None:
        atomic_write_json(self.file(CONFIG_FILE), {"kind": kind, "config": config})

    def read_config(self) -> dict[str, Any]:
        return json.loads(self.file(CONFIG_FILE).read_text())

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one line; a crash mid-write leaves at most one partial last line, which
        `metrics()` skips."""
        line = json.dumps(jsonable(metrics), allow_nan=False) + "\n"
        with open(self.file(METRICS_FILE), "a") as f:
            f.write(line)
            f.flush()

    def metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS_FILE)
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted run
        return out

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric lines past a checkpoint's step, so a resumed run does not log twice."""
        kept = [m for m in self.metrics() if m.get("step", -1) <= after_step]
        atomic_write_bytes(self.file(METRICS_FILE), "".join(json.dumps(m) + "\n" for m in kept).encode())


def iter_runs(root: str | Path) -> Iterator[RunDir]:
    """Run folders directly under root (those with a config.json), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        if p.is_dir() and (p / CONFIG_FILE).exists():
            yield RunDir(p)
