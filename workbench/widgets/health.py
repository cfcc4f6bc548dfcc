"""HealthPane: a run folder's training health, live, in a notebook (the viewer's pane as a widget).

It polls the run's metrics.jsonl from a background thread (reading only what was appended, as the
viewer's API does) and redraws with the same figure builder (workbench.figures.health)."""

from __future__ import annotations

import threading
from pathlib import Path

import ipywidgets as W

from ..figures.health import alarms_html, health_figures, health_lines
from ..runs import METRICS_FILE, SAE_WEIGHTS_FILE
from ..viewer.health import MetricsTail
from .base import FigurePane, _Dashboard


class HealthPane(_Dashboard):
    """`run_dir`: a run folder being trained (or finished). `interval`: seconds between polls;
    `start()` begins polling (it stops by itself once the run has finished), `stop()` ends it,
    `refresh()` polls once and says whether anything new was drawn."""

    def __init__(self, run_dir: str | Path, interval: float = 2.0):
        if interval <= 0:
            raise ValueError(f"interval: expected seconds > 0, got {interval}")
        self.run_dir, self.interval = Path(run_dir), interval
        self.tail = MetricsTail(self.run_dir / METRICS_FILE)
        self.step = -1  # the step of the report drawn
        self.panes = {k: FigurePane(f) for k, f in health_figures([]).items()}
        self.status = W.HTML('<span class="empty">no health report yet</span>')
        self.alarms = W.HTML(alarms_html([]))
        self.widget = W.VBox([self.status, self.alarms, *(p.widget for p in self.panes.values())])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def training(self) -> bool:
        return not (self.run_dir / SAE_WEIGHTS_FILE).exists()

    def refresh(self) -> bool:
        lines = self.tail.read()
        reports = health_lines(lines)
        step = reports[-1].get("step", -1) if reports else -1
        state = "training" if self.training else "finished"
        self.status.value = f"{state}: last health report at step {step}" if reports else state
        if step <= self.step:
            return False
        self.step = step
        for key, fig in health_figures(reports).items():
            self.panes[key].set(fig)
        self.alarms.value = alarms_html(lines)
        return True

    def start(self) -> HealthPane:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, daemon=True, name="health-pane")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval)

    def _poll(self) -> None:
        while not self._stop.is_set():
            finished = not self.training  # read before the refresh: its last lines are drawn
            self.refresh()
            if finished:
                return
            self._stop.wait(self.interval)
