"""What the demo build is doing, in a form the viewer's build page can show while it runs.

A `BuildStatus` is a thread-safe registry of stages (models, the SAE, each probe): each is pending,
running, done, failed or skipped, with its error and its seconds. The progress inside the running
stage is read from tqdm's own registry of live bars, so the page shows the very numbers the
terminal's bars show (n, total, rate, elapsed, and the bar's own text), without the stages having to
report anything. This module imports nothing heavy: the viewer reads it before torch is loaded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from tqdm.std import tqdm as std_tqdm

STATES = ("pending", "running", "done", "failed", "skipped")
PHASES = ("loading", "building", "finished", "stopped")  # loading: heavy imports; finished: every stage ended


class BuildStopped(BaseException):
    """Raised between stages when a stop was requested (Ctrl-C); the unfinished runs stay unfinished.
    A BaseException, like KeyboardInterrupt, so that a stage's `except Exception` never records it
    as that stage's failure."""


@dataclass
class Stage:
    name: str  # what the page calls it: "models", "sae-topk", ...
    run: str | None  # the run folder it writes (None for the language models)
    state: str = "pending"  # one of STATES
    error: str | None = None  # "ExceptionType: message" when failed, the reason when skipped
    seconds: float | None = None  # wall time once it ended
    reused: bool = False  # done because its results.json already existed
    _start: float | None = field(default=None, repr=False)


def live_bars() -> list[dict]:
    """Every live (enabled) tqdm bar of this process, as its own format_dict numbers plus its text.

    tqdm keeps its live bars in a class-level WeakSet shared by tqdm.auto and tqdm.std; reading it
    under tqdm's lock is how tqdm itself walks it (for bar positions)."""
    with std_tqdm.get_lock():
        bars = sorted(std_tqdm._instances, key=lambda b: getattr(b, "pos", 0))
    out = []
    for bar in bars:
        try:
            d = bar.format_dict
            out.append(
                {
                    "desc": d.get("prefix") or "",
                    "n": d["n"],
                    "total": d.get("total"),
                    "rate": d.get("rate"),
                    "elapsed": d.get("elapsed"),
                    "unit": d.get("unit", "it"),
                    "text": str(bar),
                }
            )
        except Exception:  # a bar closed by its thread while we read it: skip it this time
            continue
    return out


class BuildStatus:
    """The demo build's stages and phase; every method is safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, Stage] = {}
        self.phase = "loading"
        self.error: str | None = None  # a failure outside every stage (e.g. an import)
        self.stop = threading.Event()  # set by Ctrl-C: the build ends before its next stage

    def begin(self, stages: list[tuple[str, str | None]]) -> None:
        """Declare the stages (name, run folder) in build order; the build phase starts."""
        with self._lock:
            for name, run in stages:
                self._stages.setdefault(name, Stage(name, run))
            self.phase = "building"

    def _set(self, name: str, **changes) -> None:
        with self._lock:
            if name not in self._stages:
                raise KeyError(f"stage {name!r} was not declared (declared: {list(self._stages)})")
            st = self._stages[name]
            for k, v in changes.items():
                setattr(st, k, v)
            if changes.get("state") == "running":
                st._start = time.perf_counter()
            elif st._start is not None and changes.get("state") in ("done", "failed"):
                st.seconds = time.perf_counter() - st._start

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise BuildStopped("the build was stopped")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one stage: running on entry, done on exit, failed (and re-raised) on an exception."""
        self.check_stop()
        self._set(name, state="running", error=None)
        try:
            yield
        except Exception as e:
            self._set(name, state="failed", error=f"{type(e).__name__}: {e}")
            raise
        except BaseException:  # KeyboardInterrupt, BuildStopped from a bar: the stage did not finish
            self._set(name, state="pending")
            raise
        self._set(name, state="done")

    def reused(self, name: str) -> None:
        self._set(name, state="done", reused=True, seconds=0.0)

    def skip(self, name: str, reason: str) -> None:
        self._set(name, state="skipped", error=reason)

    def finish(self, phase: str = "finished", error: str | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        with self._lock:
            self.phase, self.error = phase, error or self.error

    def state_of(self, run: str) -> str | None:
        """The state of the stage that writes run folder `run` (None: no stage writes it)."""
        with self._lock:
            return next((s.state for s in self._stages.values() if s.run == run), None)

    def snapshot(self) -> dict:
        """JSON-ready: phase, error, and each stage with the live bars of the running one."""
        with self._lock:
            stages = [{k: v for k, v in asdict(s).items() if not k.startswith("_")} for s in self._stages.values()]
            phase, error = self.phase, self.error
        bars = live_bars()
        for s in stages:
            s["bars"] = bars if s["state"] == "running" else []
        return {"phase": phase, "error": error, "stages": stages}
