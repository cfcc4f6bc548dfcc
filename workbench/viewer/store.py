"""The viewer's access to one folder of run directories: finding a run by name, its kind and typed
results, and the heavier things pages and APIs need (feature table, tokenizer, model and SAE),
cached. Every failure is a `RunError` whose message names the file at fault."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ..results import ResultsError, read_results, run_kind
from ..runs import RunDir, iter_runs


class RunError(Exception):
    """A run's file is missing or unreadable; the message names the file and what is wrong."""


class ApiError(Exception):
    """An API request that cannot be answered: its HTTP status, and the message the page shows."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_safetensors(path: Path) -> None:
    """RunError naming the file unless `path` is a readable safetensors file (reads only its header)."""
    if not path.exists():
        raise RunError(f"{path.name} is missing")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:
        raise RunError(f"{path.name} is unreadable: {e}") from e


class RunStore:
    """Runs directly under `root` (folders with a config.json), looked up by their folder name only,
    so that no request can reach outside them."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self._lock = threading.Lock()
        self._tables: dict[str, tuple[float, Any]] = {}  # name -> (mtime, FeatureTable)
        self._tokenizers: dict[str, Any] = {}
        self._models: dict[str, tuple[Any, Any]] = {}  # name -> (model, SAE); the last two runs

    def runs(self) -> list[RunDir]:
        return list(iter_runs(self.root))

    def path(self, name: str) -> Path | None:
        """The run folder called `name`, or None (never a path built from the request)."""
        for run in iter_runs(self.root):
            if run.name == name:
                return run.path.resolve()
        return None

    def kind(self, name: str) -> str:
        try:
            return run_kind(self.root / name)
        except ResultsError as e:
            raise RunError(str(e)) from e

    def results(self, name: str) -> Any:
        """The run's results.json as its kind's dataclass (workbench.results)."""
        try:
            return read_results(self.root / name)
        except ResultsError as e:
            raise RunError(str(e)) from e

    def has_results(self, name: str) -> bool:
        return (self.root / name / "results.json").exists()

    def metrics(self, name: str) -> list[dict]:
        return RunDir(self.root / name).metrics()

    def feature_table(self, name: str):
        """features.safetensors, reloaded when the file changes (an evaluation from the viewer)."""
        from ..sae.evaluate import FeatureTable

        path = self.root / name / "features.safetensors"
        if not path.exists():
            raise RunError("features.safetensors is missing")
        mtime = os.path.getmtime(path)
        with self._lock:
            cached = self._tables.get(name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            table = FeatureTable.load(path)
        except Exception as e:
            raise RunError(f"features.safetensors is unreadable: {e}") from e
        with self._lock:
            self._tables = {**{k: v for k, v in list(self._tables.items())[-7:]}, name: (mtime, table)}
        return table

    def tokenizer(self, name: str):
        """The run's own tokenizer: bytes for workbench models, the recorded Hugging Face one otherwise
        (workbench.pretrained.tokenizer_for_run)."""
        with self._lock:
            if name in self._tokenizers:
                return self._tokenizers[name]
        from ..pretrained import tokenizer_for_run

        try:
            tok = tokenizer_for_run(self.root / name)
        except Exception as e:
            raise RunError(f"config.json: the run's tokenizer could not be loaded: {type(e).__name__}: {e}") from e
        with self._lock:
            self._tokenizers[name] = tok
        return tok

    def model_and_sae(self, name: str):
        """The run's model (workbench.pretrained.model_for_run) and SAE, with errors naming the files."""
        d = self.root / name
        if not (d / "sae.safetensors").exists():
            raise RunError(f"run {name!r} has no SAE (sae.safetensors is missing): the prompt API needs an SAE run")
        with self._lock:
            if name in self._models:
                return self._models[name]
        for file in ("sae.safetensors", "model.safetensors"):  # a recorded model has no model.safetensors
            if file == "sae.safetensors" or (d / file).exists():
                check_safetensors(d / file)
        from ..pretrained import model_for_run
        from ..sae.io import load_sae

        try:
            pair = model_for_run(d)[0], load_sae(d)
        except Exception as e:
            raise RunError(
                f"its model or SAE could not be loaded (sae.safetensors, sae_config.json, "
                f"model.safetensors, model_config.json): {type(e).__name__}: {e}"
            ) from e
        with self._lock:
            self._models = {**{k: v for k, v in list(self._models.items())[-1:]}, name: pair}
        return pair
