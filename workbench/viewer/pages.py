"""HTML for the viewer's pages. Figures come from workbench.figures and are drawn by plotly.js
(served by the viewer itself, never a CDN)."""

from __future__ import annotations

import html
import json
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
"""


def js_literal(value) -> str:
    """`value` as a JavaScript literal that is safe inside a <script> element: JSON with <, > and &
    escaped, so that no string from disk (a run name, a token) can close the script or open a tag."""
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def figure_div(fig: go.Figure, div_id: str) -> str:
    payload = js_literal(json.loads(fig.to_json()))  # traces carry tokens and names read from disk
    return (f'<div id="{div_id}" class="fig"></div><script>(function(){{const f={payload};'
            f'Plotly.newPlot("{div_id}", f.data, f.layout, {{responsive: true, displaylogo: false}});}})();</script>')


def page(title: str, body: str, status_note: str = "") -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)} · workbench</title><link rel="icon" href="data:,"><style>{CSS}</style>
<script src="/static/plotly.min.js"></script></head>
<body><nav><a href="/">Runs</a><a href="/benchmarks">Benchmarks</a></nav>
<main><h1>{html.escape(title)}</h1>{status_note}{body}</main></body></html>"""


def error_box(message: str) -> str:
    return f'<div class="error" id="run-error"><b>This run could not be shown.</b><br>{html.escape(message)}</div>'


def metrics_table(values: dict, keys: list[str]) -> str:
    rows = []
    for k in keys:
        if k in values and values[k] is not None:
            v = values[k]
            rows.append(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" if isinstance(v, float)
                        else f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def feature_browser(run: str, n_features: int, first: int) -> str:
    return f"""
<h2>Feature browser</h2>
<div class="controls">
  <button id="prev">◀</button>
  <label>feature <input id="feature" type="number" min="0" max="{n_features - 1}" value="{first}"></label>
  <button id="next">▶</button> <button id="go">show</button>
  <label>search by token <input id="search" placeholder="e.g. def"></label> <button id="search-go">search</button>
  <span id="search-results"></span>
</div>
<div id="contexts"></div>
<div class="grid"><div id="feat-hist"></div><div id="feat-logits"></div></div>
<div id="feat-corr"></div>
<h3>Your own text</h3>
<textarea id="prompt">def f(x):\n    return x + 1</textarea>
<button id="prompt-go">run through the SAE</button>
<div id="prompt-out"></div>
<script>
const RUN = encodeURIComponent({js_literal(run)});
function showError(id, r, d) {{  // an API's JSON error, as text (it may quote a file name)
  const p = document.createElement("p"); p.className = "error";
  p.textContent = (d && d.error) || `HTTP ${{r.status}}`;
  document.getElementById(id).replaceChildren(p);
}}
async function show(i) {{
  const r = await fetch(`/api/run/${{RUN}}/feature/${{i}}`);
  if (!r.ok) {{ showError("contexts", r, await r.json().catch(() => null)); return; }}
  const d = await r.json();
  document.getElementById("feature").value = d.feature;
  document.getElementById("contexts").innerHTML = d.contexts_html;
  document.getElementById("contexts").dataset.feature = d.feature;
  for (const [id, f] of Object.entries(d.figures)) Plotly.react(id, f.data, f.layout, {{responsive: true}});
}}
const cur = () => parseInt(document.getElementById("feature").value || "0");
document.getElementById("go").onclick = () => show(cur());
document.getElementById("prev").onclick = () => show(Math.max(0, cur() - 1));
document.getElementById("next").onclick = () => show(Math.min({n_features - 1}, cur() + 1));
document.getElementById("feature").onchange = () => show(cur());
document.getElementById("search-go").onclick = async () => {{
  const q = document.getElementById("search").value;
  const r = await fetch(`/api/run/${{RUN}}/search?q=${{encodeURIComponent(q)}}`);
  const d = await r.json().catch(() => null);
  if (!r.ok) {{ showError("search-results", r, d); return; }}
  const out = document.getElementById("search-results");
  out.innerHTML = d.features.length ? d.features.map(f => `<a href="#" data-f="${{f}}">#${{f}}</a>`).join(" ") : "no match";
  out.querySelectorAll("a").forEach(a => a.onclick = (e) => {{ e.preventDefault(); show(parseInt(a.dataset.f)); }});
}};
document.getElementById("prompt-go").onclick = async () => {{
  const r = await fetch(`/api/run/${{RUN}}/prompt`, {{method: "POST", headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{text: document.getElementById("prompt").value, feature: cur()}})}});
  const d = await r.json().catch(() => null);
  if (!r.ok) {{ showError("prompt-out", r, d); return; }}
  document.getElementById("prompt-out").innerHTML = d.html;
}};
show({first});
</script>"""


def attention_picker(run: str, n_layers: int, n_heads: int) -> str:
    """`run` is the run name as the body of a JSON string (json.dumps(name)[1:-1])."""
    run_js = js_literal(json.loads(f'"{run}"'))
    layers = "".join(f'<option value="{l}">layer {l}</option>' for l in range(n_layers))
    heads = "".join(f'<option value="{h}">head {h}</option>' for h in range(n_heads))
    return f"""
<h2>Attention pattern on a needle context</h2>
<div class="controls"><select id="layer">{layers}</select><select id="head">{heads}</select></div>
<div id="attn"></div>
<script>
const ARUN = encodeURIComponent({run_js});
async function attn() {{
  const l = document.getElementById("layer").value, h = document.getElementById("head").value;
  const r = await fetch(`/api/run/${{ARUN}}/attention?layer=${{l}}&head=${{h}}`);
  const f = await r.json().catch(() => null);
  if (!r.ok) {{ const p = document.createElement("p"); p.className = "error";
    p.textContent = (f && f.error) || `HTTP ${{r.status}}`; document.getElementById("attn").replaceChildren(p); return; }}
  Plotly.react("attn", f.data, f.layout, {{responsive: true}});
}}
document.getElementById("layer").onchange = attn; document.getElementById("head").onchange = attn; attn();
</script>"""


def build_panel(snapshot: dict) -> str:
    """The live build: each stage's state, time, error and its tqdm bars, polled from /api/build
    every half second and drawn with textContent (errors quote paths and messages). The page
    reloads when a stage finishes or the full viewer takes over, so finished runs get their links."""
    return f"""
<section id="build"><h2 id="build-title">Building the demo</h2>
<table id="build-stages"><thead><tr><th>stage</th><th>state</th><th>progress</th></tr></thead><tbody></tbody></table>
<p id="build-error" class="error" hidden></p></section>
<script>
(function() {{
  const first = {js_literal(snapshot)};
  const key = d => d.viewer + "|" + d.phase + "|" + d.stages.filter(s => s.state !== "pending" && s.state !== "running")
    .map(s => s.name).join(",");
  const cell = (tr, text, cls) => {{ const td = document.createElement("td"); td.textContent = text;
    if (cls) td.className = cls; tr.appendChild(td); return td; }};
  function draw(d) {{
    const section = document.getElementById("build");
    section.hidden = d.phase === "finished" && !d.error && d.stages.every(s => s.state === "done");
    document.getElementById("build-title").textContent = d.phase === "loading" ? "Starting (loading torch and the models)"
      : d.phase === "stopped" ? "The build was stopped" : d.phase === "finished" ? "Demo build finished" : "Building the demo";
    const body = document.querySelector("#build-stages tbody"); body.replaceChildren();
    for (const s of d.stages) {{
      const tr = document.createElement("tr"); tr.dataset.stage = s.name; tr.dataset.state = s.state;
      const name = cell(tr, "");
      if (s.state === "done" && s.run) {{ const a = document.createElement("a");
        a.href = "/run/" + encodeURIComponent(s.run); a.textContent = s.name; name.appendChild(a); }}
      else name.textContent = s.name;
      cell(tr, s.state + (s.seconds ? ` (${{s.seconds.toFixed(1)}} s)` : "") + (s.reused ? " (built before)" : ""),
           "state-" + s.state);
      const prog = cell(tr, s.error || "", s.error ? "error" : "");
      for (const b of s.bars) {{ const div = document.createElement("div"); div.className = "bar";
        const bar = document.createElement("progress"); bar.max = b.total || 1; bar.value = b.total ? b.n : 0;
        div.appendChild(bar); div.appendChild(document.createTextNode(" " + b.text)); prog.appendChild(div); }}
      body.appendChild(tr);
    }}
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
