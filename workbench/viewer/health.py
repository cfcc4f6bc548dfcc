"""The live training-health pane of a run being trained: its page body and its JSON API.

    GET /api/run/<name>/health?since=<step>   the health figures, alarms and latest report, or
                                              {"changed": false} when no report is newer than `since`

The run's metrics.jsonl is read incrementally (MetricsTail): each poll reads only the bytes appended
since the last one, so a long run's pane costs the same on its millionth step as on its first. The
page polls every POLL_MS and redraws with Plotly.react; figures come from the one builder
workbench.figures.health.health_figures (the widget and notebooks draw the same).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..figures.health import FIGURES, alarms_html, health_figures, health_lines
from ..runs import METRICS_FILE, SAE_WEIGHTS_FILE
from .api import url_int
from .pages import js_literal, on_ready
from .store import ApiError, RunError, RunStore

POLL_MS = 2000
TAILS = 16  # runs whose metrics the API keeps in memory (the least recently polled goes first)


class MetricsTail:
    """metrics.jsonl read from where the last read stopped. A file replaced (a resumed run truncates
    its metrics with an atomic rewrite: a new inode) or shortened is read again from the start; a
    torn last line waits for its newline. Lines without a health report keep their scalars only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset, self.inode = 0, None
        self.lines: list[dict] = []
        self.lock = threading.Lock()

    def read(self) -> list[dict]:
        """Every line so far (the same list object, extended)."""
        with self.lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self.offset, self.inode, self.lines = 0, None, []
                return self.lines
            if st.st_ino != self.inode or st.st_size < self.offset:
                self.offset, self.inode, self.lines = 0, st.st_ino, []
            if st.st_size > self.offset:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read(st.st_size - self.offset)
                whole = data[: data.rfind(b"\n") + 1]
                self.offset += len(whole)
                self.lines.extend(_parse(whole))
            return self.lines


def _parse(data: bytes) -> list[dict]:
    out = []
    for raw in data.splitlines():
        try:
            line = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(line, dict):
            continue
        if not isinstance(line.get("health"), dict):  # the curves' scalars only: a long run stays small
            line = {k: v for k, v in line.items() if k in ("step", "tokens", "fvu", "l0", "dead_frac", "alarms")}
        out.append(line)
    return out


_tails: OrderedDict[Path, MetricsTail] = OrderedDict()
_tails_lock = threading.Lock()


def tail_of(path: Path) -> MetricsTail:
    """The shared MetricsTail of one metrics file (at most TAILS kept)."""
    with _tails_lock:
        tail = _tails.pop(path, None) or MetricsTail(path)
        _tails[path] = tail
        while len(_tails) > TAILS:
            _tails.popitem(last=False)
        return tail


def _since(query: dict) -> int:
    # url_int, not str.isdigit: "--5" passed that check and then failed in int() (a 500)
    return url_int(query.get("since", "-1"), "since must be an integer step (the last report the page has)")


def health(store: RunStore, name: str, query: dict) -> dict[str, Any]:
    """The pane's state: {"step": the latest report's step (-1: none), "changed", "training"
    (no sae.safetensors yet), and when changed "figures" (plotly JSON, keyed as FIGURES),
    "alarms_html", "alarms" (every raised alarm with its step) and "latest" (the report's scalars)}."""
    since = _since(query)
    try:
        d = store.check_files(name)
    except RunError as e:
        raise ApiError(404, f"no such run: {e}") from None
    lines = tail_of(d / METRICS_FILE).read()
    reports = health_lines(lines)
    step = reports[-1].get("step", -1) if reports else -1
    out: dict[str, Any] = {"step": step, "changed": step > since, "training": not (d / SAE_WEIGHTS_FILE).exists()}
    if not out["changed"]:
        return out
    figs = health_figures(reports)
    latest = {k: v for k, v in reports[-1]["health"].items() if not isinstance(v, (list, dict))}
    alarms = [{"step": m.get("step"), **a} for m in lines for a in m.get("alarms") or [] if isinstance(a, dict)]
    return out | {
        "figures": {k: json.loads(f.to_json()) for k, f in figs.items()},
        "alarms_html": alarms_html(lines),
        "alarms": alarms,
        "latest": latest,
    }


def body(name: str) -> str:
    """The pane's HTML body: status, alarms and the figures, redrawn from the API every POLL_MS
    while the run trains (polling stops once it has finished and the last report is drawn)."""
    divs = "".join(f'<div id="health-{k}" class="fig"></div>' for k in FIGURES)
    js = f"""
const URL_ = `/api/run/${{encodeURIComponent({js_literal(name)})}}/health`;
const status = document.getElementById("health-status");
const alarms = document.getElementById("health-alarm-list");
let since = -1;
async function poll() {{
  let d;
  try {{ d = await (await fetch(`${{URL_}}?since=${{since}}`)).json(); }}
  catch (e) {{ status.textContent = "viewer unreachable; retrying"; setTimeout(poll, {POLL_MS}); return; }}
  if (d.error) {{ status.textContent = d.error; setTimeout(poll, {POLL_MS}); return; }}
  if (d.changed) {{
    since = d.step;
    for (const [k, f] of Object.entries(d.figures))
      Plotly.react(`health-${{k}}`, f.data, f.layout, {{responsive: true, displaylogo: false}});
    alarms.innerHTML = d.alarms_html;  // built and escaped by the server
  }}
  status.textContent = (d.training ? "training" : "finished") +
    (d.step >= 0 ? `: last health report at step ${{d.step}}` : ": no health report yet");
  status.dataset.step = d.step;
  if (d.training || d.changed) setTimeout(poll, {POLL_MS});
}}
poll();
"""
    return (
        '<section id="health"><h2>Training health</h2>'
        '<p id="health-status" class="note">loading…</p>'
        f'<div id="health-alarm-list">{alarms_html([])}</div>{divs}</section>' + on_ready(js)
    )
