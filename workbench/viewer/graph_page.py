"""A graph run's page (`GraphRunResult`): the scores, the graph (figures.graph) with a prune slider
that re-filters the stored nodes and edges in the browser (no request), and a panel for the node
clicked: its strongest inputs, each with its per-head loadings linked to the heads run's page, and
for a feature a link to its transcoder run's feature card (/run/<run>?feature=<latent>). Every
string from disk is set as text or passed through js_literal; plotly is the viewer's own copy."""

from __future__ import annotations

import html
import json

from ..figures.graph import graph_figure
from ..kinds.graph import GraphRunResult
from .pages import js_literal, metrics_table, on_ready

KIND = "graph"


def summary(res: GraphRunResult) -> str:
    top = res.logit_tokens[0] if res.logit_tokens else "?"
    return (
        f"{res.n_features} features · {len(res.view.kind)} nodes stored · top logit {html.escape(top)!s} "
        f"· replacement {res.replacement:.3f} · completeness {res.completeness:.3f}"
    )


def render(name: str, res: GraphRunResult) -> str:
    v = res.view
    targets = ", ".join(f"{html.escape(t)} ({p:.2f})" for t, p in zip(res.logit_tokens, res.logit_probs))
    source = html.escape(res.transcoders) if res.transcoders else "none: every MLP is an error node"
    body = f'<p>Prompt: <code id="prompt">{html.escape(res.prompt)}</code></p>'
    body += f'<p id="targets">Logit targets: {targets}. Transcoders: {source}.</p>'
    body += metrics_table(
        {
            "replacement": res.replacement,
            "completeness": res.completeness,
            "pruned replacement": res.pruned_replacement,
            "pruned completeness": res.pruned_completeness,
            "nodes (whole graph)": res.n_nodes,
            "features": res.n_features,
            "seconds": res.seconds,
        },
        ["replacement", "completeness", "pruned replacement", "pruned completeness", "nodes (whole graph)"]
        + ["features", "seconds"],
    )
    top_n, top_e = max(v.cum, default=0) + 1e-9, max(v.edge_cum, default=0) + 1e-9
    body += f"""<div class="controls">
<label>nodes <input id="node-t" type="range" min="0.3" max="{min(1.0, top_n):.4f}" step="0.01"
 value="{res.node_threshold}">
<span id="node-t-val"></span></label>
<label>edges <input id="edge-t" type="range" min="0.5" max="{min(1.0, top_e):.4f}" step="0.005"
 value="{res.edge_threshold}">
<span id="edge-t-val"></span></label><span id="shown" class="note"></span></div>
<div id="graph" class="fig"></div><div id="node-panel" class="note">Click a node for its inputs.</div>"""
    fig = json.loads(graph_figure(v).to_json())
    data = {
        "label": v.label,
        "kind": v.kind,
        "layer": v.layer,
        "index": v.index,
        "src": v.src,
        "dst": v.dst,
        "weight": v.weight,
        "heads": v.heads,
        "residual": v.residual,
        "other": v.other,
        "n_heads": v.n_heads,
        "runs": res.transcoder_runs or [],
        "heads_run": res.heads_run,
    }
    return body + on_ready(f"const FIG = {js_literal(fig)}, G = {js_literal(data)};\n{SCRIPT}")


# The slider keeps a node when its cum < threshold (tokens and logits have 0) and an edge when its
# own cum and both ends' pass; it rebuilds each trace from the stored arrays and redraws.
SCRIPT = """
const el = (id) => document.getElementById(id);
const keep = (c, t) => c < t || t >= 1;
function filtered(tn, te) {
  let nodes = 0, edges = 0;
  const data = FIG.data.map((t) => {
    const out = {...t, x: [], y: [], customdata: []};
    if (t.meta && t.meta.role === "edges") {
      for (let i = 0; i < t.x.length; i += 3) {
        const c = t.customdata[i];
        if (keep(c[0], te) && keep(c[1], tn) && keep(c[2], tn)) {
          out.x.push(t.x[i], t.x[i + 1], null); out.y.push(t.y[i], t.y[i + 1], null);
          out.customdata.push(c, c, c); edges++;
        }
      }
      return out;
    }
    out.text = []; out.marker = {...t.marker, size: []};
    t.x.forEach((x, i) => { if (keep(t.customdata[i][0], tn)) {
      out.x.push(x); out.y.push(t.y[i]); out.customdata.push(t.customdata[i]); out.text.push(t.text[i]);
      out.marker.size.push(t.marker.size[i]); nodes++; } });
    return out;
  });
  return [data, nodes, edges];
}
function draw() {
  const tn = Number(el("node-t").value), te = Number(el("edge-t").value);
  el("node-t-val").textContent = tn.toFixed(2); el("edge-t-val").textContent = te.toFixed(3);
  const [data, n, e] = filtered(tn, te);
  el("shown").textContent = `${n} nodes, ${e} edges shown`;
  Plotly.react("graph", data, FIG.layout, {responsive: true, displaylogo: false});
}
function link(text, href) { const a = document.createElement("a"); a.textContent = text; a.href = href; return a; }
function headLinks(e) {
  const span = document.createElement("span");
  if (!G.heads.length) return span;
  const parts = G.heads[e].map((w, k) => [w, k]).filter(([w]) => Math.abs(w) > 0.05 * Math.abs(G.weight[e]));
  parts.sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]));
  span.append(` · residual ${G.residual[e].toPrecision(3)}`);
  for (const [w, k] of parts.slice(0, 4)) {
    const l = Math.floor(k / G.n_heads), h = k % G.n_heads, name = `L${l}H${h} ${w.toPrecision(3)}`;
    span.append(" · ");
    span.append(G.heads_run ? link(name, `/run/${encodeURIComponent(G.heads_run)}?layer=${l}&head=${h}`) : name);
  }
  return span;
}
function panel(i) {
  const box = el("node-panel"); box.replaceChildren();
  const h = document.createElement("b"); h.textContent = G.label[i]; box.append(h);
  const run = G.kind[i] === "feature" ? G.runs[G.layer[i]] : null;
  const card = run ? link("feature card", `/run/${encodeURIComponent(run)}?feature=${G.index[i]}`) : null;
  if (card) { box.append(" "); box.append(card); }
  const ins = G.dst.map((d, e) => [d, e]).filter(([d]) => d === i).map(([, e]) => e);
  ins.sort((a, b) => Math.abs(G.weight[b]) - Math.abs(G.weight[a]));
  const ul = document.createElement("ul");
  for (const e of ins.slice(0, 12)) {
    const li = document.createElement("li");
    li.append(`${G.label[G.src[e]]} → ${G.weight[e].toPrecision(3)}`); li.append(headLinks(e)); ul.append(li);
  }
  if (!ins.length) { const p = document.createElement("p"); p.textContent = "no stored inputs"; box.append(p); }
  box.append(ul);
}
el("node-t").oninput = draw; el("edge-t").oninput = draw;
draw();
el("graph").on("plotly_click", (ev) => { const p = ev.points[0];
  if (p && p.data.meta && p.data.meta.role === "nodes") panel(p.customdata[1]); });
"""
