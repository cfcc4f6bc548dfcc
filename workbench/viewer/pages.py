"""The HTML every viewer page shares: the page shell, error box, figure and metrics blocks, and the
demo build's live panel. Each run kind's page lives in its own module (sae_page, sparsity_page,
heads_page, arrow_page). Figures come from workbench.figures and are drawn by plotly.js (served by
the viewer itself, never a CDN).

plotly.min.js is 4.8 MB (1.5 MB gzipped): a page loads it only when its body draws a figure (calls
`Plotly.`), with `defer` so that the page's text shows before the script is parsed, from a URL that
names plotly's version (served as immutable: a second page or a reload reads it from the browser's
cache). Inline scripts cannot be deferred, so every script that calls Plotly runs on
DOMContentLoaded (`on_ready`), which fires after the deferred plotly.min.js has run.

Evaluating plotly.min.js takes 1-1.5 s of a cold load on two cores, and drawing a page's figures
0.3-0.8 s more; a frame is presented only between scripts, so drawing them all on DOMContentLoaded
kept the first figure off the screen until the last was drawn. `on_ready` scripts therefore go
through a scheduler (DRAW_JS): the first is run at once, the rest in document order after a frame
has shown it, in slices of ~50 ms with a frame between. Until the last has run, a tiny script is
always loading (DRAW_URL), and a loading script delays the page's load event: "loaded" still means
"every figure drawn", for a user's tools as for the tests."""

from __future__ import annotations

import hashlib
import html
import json
from importlib.metadata import version
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pages are also drawn before plotly is imported (the build page)
    import plotly.graph_objects as go

CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
nav { background: #1f2937; padding: 10px 20px; }
nav a { color: #e5e7eb; margin-right: 18px; text-decoration: none; font-weight: 600; }
main { padding: 16px 24px; max-width: 1200px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: left; font-size: 14px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.error { background: #fee2e2; border: 1px solid #ef4444; padding: 12px; border-radius: 6px; }
.empty { color: #666; font-style: italic; }
.ctx { font-family: ui-monospace, monospace; font-size: 13px; margin: 3px 0; white-space: pre; overflow-x: auto; }
.tok { border-radius: 2px; }
.val { display: inline-block; width: 48px; color: #555; }
.controls { margin: 10px 0; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
textarea { width: 100%; height: 60px; font-family: ui-monospace, monospace; }
.bar { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre; }
.state-running { color: #2563eb; font-weight: 600; } .state-done { color: #15803d; }
.state-failed, .state-skipped { color: #b91c1c; }
.md { max-width: 100%; overflow-wrap: anywhere; line-height: 1.45; }
.md table { display: block; max-width: 100%; overflow-x: auto; }
.md td, .md th { vertical-align: top; }
.md code { background: #f3f4f6; padding: 0 3px; border-radius: 3px; font-size: 90%; }
.md pre { background: #f3f4f6; padding: 8px; white-space: pre-wrap; overflow-wrap: anywhere; }
.note { color: #444; }
"""


def js_literal(value) -> str:
    """`value` as a JavaScript literal that is safe inside a <script> element: JSON with <, > and &
    escaped, so that no string from disk (a run name, a token) can close the script or open a tag."""
    return (
        json.dumps(value)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def json_literal(text: str) -> str:
    """A JSON text (plotly's to_json) as a literal that is safe inside a <script> element, as
    js_literal makes it, without decoding and encoding it again (a heads page's figures are 200 kB)."""
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


PLOTLY_VERSION = version("plotly")
PLOTLY_URL = f"/static/plotly-{PLOTLY_VERSION}.min.js"  # a new plotly is a new URL: cached as immutable

DRAW_RESUME_JS = "window.wbDraw && window.wbDraw.resume();\n"
DRAW_URL = f"/static/draw-{hashlib.sha256(DRAW_RESUME_JS.encode()).hexdigest()[:10]}.js"  # immutable too
DRAW_SLICE_MS = 50

# wbDraw(job): the first job runs at once, the others queue; resume() (run by DRAW_URL's script once
# it has loaded, in a later task) runs queued jobs for up to DRAW_SLICE_MS once a frame has been
# presented since the last ran, and otherwise loads the script again: one is loading until the queue
# is empty, which holds the load event. A frame counts as presented when a message posted from a
# requestAnimationFrame callback arrives; a hidden tab has no frames, so 100 ms count as one. A job's
# error is reported as uncaught (the console, a test's pageerror) and the next job still runs. A page
# saved to disk, where the script cannot load, gets onerror and goes on the same way.
DRAW_JS = f"""
window.wbDraw = (() => {{
  const queue = []; let started = false, framed = false, hops = 0;
  const report = self.reportError || (e => setTimeout(() => {{ throw e; }}));
  const run = job => {{ try {{ job(); }} catch (e) {{ report(e); }} }};
  function frame() {{
    framed = false;
    requestAnimationFrame(() => {{ const ch = new MessageChannel();
      ch.port1.onmessage = () => {{ framed = true; }}; ch.port2.postMessage(null); }});
    setTimeout(() => {{ framed = true; }}, 100);
  }}
  function hold() {{
    const s = document.createElement("script"); s.src = "{DRAW_URL}";
    s.onload = () => s.remove(); s.onerror = () => {{ s.remove(); resume(); }};
    document.head.appendChild(s);
  }}
  function resume() {{
    if (!framed && ++hops < 1000) {{ hold(); return; }}
    const t0 = performance.now();
    while (queue.length && (performance.now() - t0 < {DRAW_SLICE_MS} || !framed)) run(queue.shift());
    if (queue.length) {{ frame(); hold(); }}
  }}
  function draw(job) {{
    if (started) {{ queue.push(job); return; }}
    started = true; run(job); frame(); hold();
  }}
  draw.resume = resume;
  return draw;
}})();
"""


def on_ready(js: str) -> str:
    """A <script> running `js` once the page is parsed and the deferred plotly.min.js has run (the
    HTML spec runs deferred scripts before DOMContentLoaded), through the figure scheduler (wbDraw:
    the first at once, the others after a frame has shown it, all before the load event). `js`
    must not need global names, nor run before a script of the page that comes after it."""
    return (
        '<script>document.addEventListener("DOMContentLoaded", () => '
        f"(window.wbDraw || (job => job()))(() => {{\n{js}\n}}));</script>"
    )


def figure_div(fig: go.Figure, div_id: str) -> str:
    payload = json_literal(fig.to_json())  # traces carry tokens and names read from disk
    return f'<div id="{div_id}" class="fig"></div>' + on_ready(
        f'const f = {payload};\nPlotly.newPlot("{div_id}", f.data, f.layout, {{responsive: true, displaylogo: false}});'
    )


def needs_plotly(body: str) -> bool:
    """Whether a page body draws with plotly.js (every figure script calls `Plotly.`)."""
    return "Plotly." in body


def page(title: str, body: str) -> str:
    script = (f"<script>{DRAW_JS}</script>" if "wbDraw" in body else "") + (
        f'<script defer src="{PLOTLY_URL}"></script>' if needs_plotly(body) else ""
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)} · workbench</title><link rel="icon" href="data:,"><style>{CSS}</style>
{script}</head>
<body><nav><a href="/">Runs</a><a href="/benchmarks">Benchmarks</a></nav>
<main><h1>{html.escape(title)}</h1>{body}</main></body></html>"""


def error_box(message: str, headline: str = "This run could not be shown.") -> str:
    return f'<div class="error" id="run-error"><b>{html.escape(headline)}</b><br>{html.escape(message)}</div>'


def error_page(title: str, message: str, headline: str) -> str:
    """A whole page that says what went wrong (404s, refused files, unforeseen errors)."""
    return page(title, error_box(message, headline))


def metrics_table(values: dict, keys: list[str]) -> str:
    rows = []
    for k in keys:
        if k in values and values[k] is not None:
            v = values[k]
            rows.append(
                f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>"
                if isinstance(v, float)
                else f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            )
    return f"<table>{''.join(rows)}</table>"


# Draws a BuildStatus snapshot's stages into a <tbody>: state, seconds, error and the tqdm bars of the
# running stage, all as textContent (errors quote paths and messages from disk).
STAGES_JS = """
function drawStages(body, stages) {
  const cell = (tr, text, cls) => { const td = document.createElement("td"); td.textContent = text;
    if (cls) td.className = cls; tr.appendChild(td); return td; };
  body.replaceChildren();
  for (const s of stages) {
    const tr = document.createElement("tr"); tr.dataset.stage = s.name; tr.dataset.state = s.state;
    const name = cell(tr, "");
    if (s.state === "done" && s.run) { const a = document.createElement("a");
      a.href = "/run/" + encodeURIComponent(s.run); a.textContent = s.name; name.appendChild(a); }
    else name.textContent = s.name;
    cell(tr, s.state + (s.seconds ? ` (${s.seconds.toFixed(1)} s)` : "") + (s.reused ? " (built before)" : ""),
         "state-" + s.state);
    const prog = cell(tr, s.error || "", s.error ? "error" : "");
    for (const b of s.bars) { const div = document.createElement("div"); div.className = "bar";
      const bar = document.createElement("progress"); bar.max = b.total || 1; bar.value = b.total ? b.n : 0;
      div.appendChild(bar); div.appendChild(document.createTextNode(" " + b.text)); prog.appendChild(div); }
    body.appendChild(tr);
  }
}
"""


def build_panel(snapshot: dict) -> str:
    """The live build: each stage's state, time, error and its tqdm bars, polled from /api/build
    every half second and drawn with textContent (errors quote paths and messages). The page
    reloads when a stage finishes or the full viewer takes over, so finished runs get their links."""
    return f"""
<section id="build"><h2 id="build-title">Building the demo</h2>
<table id="build-stages"><thead><tr><th>stage</th><th>state</th><th>progress</th></tr></thead><tbody></tbody></table>
<p id="build-error" class="error" hidden></p></section>
<script>{STAGES_JS}
(function() {{
  const first = {js_literal(snapshot)};
  const key = d => d.viewer + "|" + d.phase + "|" + d.stages.filter(s => s.state !== "pending" && s.state !== "running")
    .map(s => s.name).join(",");
  function draw(d) {{
    const section = document.getElementById("build");
    section.hidden = d.phase === "finished" && !d.error && d.stages.every(s => s.state === "done");
    document.getElementById("build-title").textContent =
      d.phase === "loading" ? "Starting (loading torch and the models)"
      : d.phase === "stopped" ? "The build was stopped"
      : d.phase === "finished" ? "Demo build finished" : "Building the demo";
    drawStages(document.querySelector("#build-stages tbody"), d.stages);
    const err = document.getElementById("build-error"); err.hidden = !d.error; err.textContent = d.error || "";
  }}
  draw(first);
  async function poll() {{
    try {{
      const d = await (await fetch("/api/build")).json();
      if (key(d) !== key(first)) {{ location.reload(); return; }}
      draw(d);
    }} catch (e) {{ /* the server is restarting or stopped: keep the last state */ }}
    if (!(first.phase === "finished" || first.phase === "stopped")) setTimeout(poll, 500);
  }}
  if (!(first.phase === "finished" || first.phase === "stopped")) setTimeout(poll, 500);
}})();
</script>"""


def reload_when_ready() -> str:
    """A script for the 'starting' page: reload once the full viewer answers /api/build."""
    return """<script>
(async function wait() {
  try { const d = await (await fetch("/api/build")).json(); if (d.viewer === "ready") { location.reload(); return; } }
  catch (e) {}
  setTimeout(wait, 500);
})();
</script>"""
