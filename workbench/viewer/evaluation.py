"""Evaluating an SAE run from the viewer, in a background thread: a run trained with --no-eval gets
its results.json, feature table and (byte-level models) usefulness.json through
`workbench.sae.run_eval.evaluate_recorded_run`, with its stages and tqdm bars shown on the run's
page as the demo build's are. One evaluation at a time: on a small machine two would only halve
each other's speed."""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

from .build_status import BuildStatus


class Evaluations:
    """The viewer's evaluation jobs, by run name; thread-safe."""

    def __init__(self, n_windows: int | None = None) -> None:
        self.n_windows = n_windows  # held-out windows per evaluation (None: the run's own, else 32)
        self._lock = threading.Lock()
        self._jobs: dict[str, BuildStatus] = {}
        self._running: str | None = None

    def snapshot(self, name: str) -> dict | None:
        """The run's evaluation (running, or its last one) as a BuildStatus snapshot, or None."""
        with self._lock:
            job = self._jobs.get(name)
        return job.snapshot() if job is not None else None

    def running(self, name: str) -> bool:
        with self._lock:
            return self._running == name

    def start(self, name: str, run_dir: Path) -> dict:
        """Start evaluating `run_dir`; returns its snapshot. RuntimeError when one is already running."""
        with self._lock:
            if self._running is not None:
                raise RuntimeError(f"the evaluation of run {self._running!r} is still running; one runs at a time")
            job = BuildStatus()
            self._jobs[name], self._running = job, name
        threading.Thread(target=self._run, args=(name, run_dir, job), name=f"evaluate-{name}", daemon=True).start()
        return job.snapshot()

    def _run(self, name: str, run_dir: Path, job: BuildStatus) -> None:
        from ..sae.run_eval import evaluate_recorded_run

        error = None
        try:
            evaluate_recorded_run(run_dir, self.n_windows, status=job)
        except Exception as e:  # shown on the page; the run stays unevaluated and can be tried again
            traceback.print_exc()
            error = f"{type(e).__name__}: {e}"
        finally:
            with self._lock:  # before the phase ends, so a poll that sees it finished also sees it evaluated
                self._running = None
            job.finish(error=error)
