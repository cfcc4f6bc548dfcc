"""The viewer's access to one folder of run directories: finding a run by name, its kind and typed
results, and the heavier things pages and APIs need (feature table, tokenizer, model and SAE),
cached. Every failure is a `RunError` whose message names the file at fault."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..results import ResultsError, read_results, run_kind
from ..runs import (
    ATTENTION_FILE,
    CONFIG_FILE,
    EXPLORER_PATTERNS_FILE,
    FEATURES_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    OUTPUT_SCORES_FILE,
    RESULTS_FILE,
    SAE_CONFIG_FILE,
    SAE_WEIGHTS_FILE,
    USEFULNESS_FILE,
    RunDir,
    iter_runs,
)
from ..sae.ladder import LADDER_FILE, LADDER_META_FILE

# Every file of a run folder the viewer opens. Each is checked before any is read: a FIFO, a device
# or a socket in place of one would block the reading thread forever (open() on a FIFO waits for a
# writer), and a symlink out of the runs folder would let the viewer read whatever it points to.
RUN_FILES = (
    CONFIG_FILE,
    RESULTS_FILE,
    METRICS_FILE,
    FEATURES_FILE,
    ATTENTION_FILE,
    EXPLORER_PATTERNS_FILE,
    OUTPUT_SCORES_FILE,
    USEFULNESS_FILE,
    SAE_WEIGHTS_FILE,
    SAE_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    MODEL_CONFIG_FILE,
    LADDER_FILE,
    LADDER_META_FILE,
)
CACHED = 8  # loaded run files kept (feature tables, attention tables, output scores)


class RunError(Exception):
    """A run's file is missing or unreadable; the message names the file and what is wrong."""


class ApiError(Exception):
    """An API request that cannot be answered: its HTTP status, and the message the page shows."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def file_type(mode: int) -> str:
    """What a stat mode is, in words (for the error that refuses it)."""
    for test, name in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: Path) -> os.stat_result | None:
    """`path`'s stat when it is a regular file (following symlinks), None when it does not exist;
    RunError naming it when it is anything else. Only stat is called: nothing is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, a symlink loop
        raise RunError(f"{path.name} cannot be read: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RunError(f"{path.name} is {file_type(st.st_mode)}, not a regular file: refused")
    return st


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
        self._loaded: dict[tuple[str, str], tuple[tuple, Any]] = {}  # (name, file) -> (file state, object)
        self._tokenizers: dict[str, Any] = {}
        self._models: dict[str, tuple[Any, Any]] = {}  # name -> (model, SAE); the last two runs

    def runs(self) -> list[RunDir]:
        return list(iter_runs(self.root))

    def locate(self, name: str) -> Path:
        """The resolved run folder called `name` (never a path built from the request); RunError when
        there is none, or when it resolves outside the runs folder (a symlinked run folder)."""
        for run in iter_runs(self.root):
            if run.name == name:
                d = run.path.resolve()
                if not d.is_relative_to(self.root):
                    raise RunError(f"the run folder {name!r} is a link out of the runs folder: not served")
                return d
        raise RunError(f"no run named {name!r}")

    def path(self, name: str) -> Path | None:
        """`locate(name)`, or None when there is no such run inside the runs folder."""
        try:
            return self.locate(name)
        except RunError:
            return None

    def check_files(self, name: str) -> Path:
        """The run's folder, once every file the viewer reads from it (RUN_FILES) is a regular file
        inside the runs folder or absent; RunError naming the first that is not."""
        d = self.locate(name)
        for file in RUN_FILES:
            path = d / file
            if regular_file(path) is not None and not path.resolve().is_relative_to(self.root):
                raise RunError(f"{file} is a link out of the runs folder: refused")
        return d

    def fingerprint(self, name: str) -> tuple:
        """The state of every file the viewer reads from the run (RUN_FILES: inode, size and
        modification time, or None where absent): a page drawn from the same fingerprint is the same
        page. Only stat is called."""
        d = self.check_files(name)
        out = []
        for file in RUN_FILES:
            st = regular_file(d / file)
            out.append(None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def kind(self, name: str) -> str:
        self.check_files(name)
        try:
            return run_kind(self.root / name)
        except ResultsError as e:
            raise RunError(str(e)) from e

    def results(self, name: str) -> Any:
        """The run's results.json as its kind's dataclass (workbench.results)."""
        self.check_files(name)
        try:
            return read_results(self.root / name)
        except ResultsError as e:
            raise RunError(str(e)) from e

    def has_results(self, name: str) -> bool:
        return os.path.lexists(self.root / name / RESULTS_FILE)  # a FIFO or link counts: results() names it

    def metrics(self, name: str) -> list[dict]:
        self.check_files(name)
        return RunDir(self.root / name).metrics()

    def evals(self, name: str) -> dict | None:
        """usefulness.json (sparse probing, absorption-style), or None where it was not computed."""
        from ..sae.saebench_json import read_run_evals

        return read_run_evals(self.check_files(name))

    def loaded(self, name: str, file: str, load: Callable[[Path], Any]) -> Any | None:
        """`load(path)` of the run's `file`, re-read only when the file changes (its inode, size or
        modification time); None when it is absent. RunError naming it when it is a link out of the
        runs folder, not a regular file, or unreadable. The last CACHED loads are kept."""
        path = self.check_files(name) / file
        st = regular_file(path)
        if st is None:
            return None
        if not path.resolve().is_relative_to(self.root):  # a file outside RUN_FILES gets the same check
            raise RunError(f"{file} is a link out of the runs folder: refused")
        key, state = (name, file), (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._loaded.get(key)
        if hit is not None and hit[0] == state:
            return hit[1]
        try:
            obj = load(path)
        except Exception as e:
            raise RunError(f"{file} is unreadable: {e}") from e
        with self._lock:
            self._loaded.pop(key, None)
            self._loaded[key] = (state, obj)
            while len(self._loaded) > CACHED:
                del self._loaded[next(iter(self._loaded))]
        return obj

    def feature_table(self, name: str):
        """features.safetensors, reloaded when the file changes (an evaluation from the viewer)."""
        from ..sae.evaluate import FeatureTable

        table = self.loaded(name, FEATURES_FILE, FeatureTable.load)
        if table is None:
            raise RunError(f"{FEATURES_FILE} is missing")
        return table

    def output_scores(self, name: str):
        """output_scores.safetensors (`steer.directions.OutputScores`), or None for a run evaluated
        before it existed, or whose SAE has no output score (a decoder that does not write into the
        residual stream)."""
        from ..steer.directions import load_output_scores

        return self.loaded(name, OUTPUT_SCORES_FILE, load_output_scores)

    def tokenizer(self, name: str):
        """The run's own tokenizer: bytes for workbench models, the recorded Hugging Face one otherwise
        (workbench.hub.tokenizer_for_run)."""
        with self._lock:
            if name in self._tokenizers:
                return self._tokenizers[name]
        self.check_files(name)
        from ..hub import tokenizer_for_run

        try:
            tok = tokenizer_for_run(self.root / name)
        except Exception as e:
            raise RunError(f"config.json: the run's tokenizer could not be loaded: {type(e).__name__}: {e}") from e
        with self._lock:
            self._tokenizers[name] = tok
        return tok

    def model_and_sae(self, name: str):
        """The run's model (workbench.hub.model_for_run) and SAE, with errors naming the files."""
        d = self.check_files(name)
        if not (d / SAE_WEIGHTS_FILE).exists():
            raise RunError(f"run {name!r} has no SAE ({SAE_WEIGHTS_FILE} is missing): the prompt API needs an SAE run")
        with self._lock:
            if name in self._models:
                return self._models[name]
        for file in (SAE_WEIGHTS_FILE, MODEL_WEIGHTS_FILE):  # a recorded model has no model.safetensors
            if file == SAE_WEIGHTS_FILE or (d / file).exists():
                check_safetensors(d / file)
        from ..hub import model_for_run
        from ..sae.io import load_sae

        try:
            pair = model_for_run(d)[0], load_sae(d)
        except Exception as e:
            raise RunError(
                f"its model or SAE could not be loaded ({SAE_WEIGHTS_FILE}, {SAE_CONFIG_FILE}, "
                f"{MODEL_WEIGHTS_FILE}, {MODEL_CONFIG_FILE}): {type(e).__name__}: {e}"
            ) from e
        with self._lock:
            self._models = {**{k: v for k, v in list(self._models.items())[-1:]}, name: pair}
        return pair
