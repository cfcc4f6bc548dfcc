"""HTML for the viewer's pages. Figures come from workbench.figures and are drawn by plotly.js
(served by the viewer itself, never a CDN)."""

from __future__ import annotations

import html
import json

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
"""


def figure_div(fig: go.Figure, div_id: str) -> str:
    payload = fig.to_json()
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
const RUN = {json.dumps(run)};
async function show(i) {{
  const r = await fetch(`/api/run/${{RUN}}/feature/${{i}}`);
  if (!r.ok) {{ document.getElementById("contexts").textContent = "no such feature"; return; }}
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
  const d = await (await fetch(`/api/run/${{RUN}}/search?q=${{encodeURIComponent(q)}}`)).json();
  const out = document.getElementById("search-results");
  out.innerHTML = d.features.length ? d.features.map(f => `<a href="#" data-f="${{f}}">#${{f}}</a>`).join(" ") : "no match";
  out.querySelectorAll("a").forEach(a => a.onclick = (e) => {{ e.preventDefault(); show(parseInt(a.dataset.f)); }});
}};
document.getElementById("prompt-go").onclick = async () => {{
  const r = await fetch(`/api/run/${{RUN}}/prompt`, {{method: "POST", headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{text: document.getElementById("prompt").value, feature: cur()}})}});
  const d = await r.json();
  document.getElementById("prompt-out").innerHTML = r.ok ? d.html : `<p class="error">${{d.error}}</p>`;
}};
show({first});
</script>"""


def attention_picker(run: str, n_layers: int, n_heads: int) -> str:
    layers = "".join(f'<option value="{l}">layer {l}</option>' for l in range(n_layers))
    heads = "".join(f'<option value="{h}">head {h}</option>' for h in range(n_heads))
    return f"""
<h2>Attention pattern on a needle context</h2>
<div class="controls"><select id="layer">{layers}</select><select id="head">{heads}</select></div>
<div id="attn"></div>
<script>
async function attn() {{
  const l = document.getElementById("layer").value, h = document.getElementById("head").value;
  const f = await (await fetch(`/api/run/{run}/attention?layer=${{l}}&head=${{h}}`)).json();
  Plotly.react("attn", f.data, f.layout, {{responsive: true}});
}}
document.getElementById("layer").onchange = attn; document.getElementById("head").onchange = attn; attn();
</script>"""
