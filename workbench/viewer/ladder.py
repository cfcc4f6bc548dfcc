"""The width ladder in the viewer: a section for the SAE page (the browsable tree and a latent's
parent chain and children) and its JSON API, read from the run's ladder.safetensors/json
(`workbench.sae.ladder`, written by `python -m workbench.sae.ladder RUN`); no model is loaded.

    GET /api/run/<name>/ladder[?width=&latent=&by=cos|cofire]
"""

from __future__ import annotations

import json
from pathlib import Path

from ..figures.ladder import BY, ladder_tree, tree_edges
from ..sae.ladder import LADDER_FILE, LADDER_META_FILE, Ladder
from .api import url_int
from .pages import js_literal, on_ready
from .store import ApiError, RunError, RunStore, regular_file


def _int(raw: str, what: str) -> int:
    return url_int(raw, f"{what} must be an integer")


def load_run_ladder(store: RunStore, name: str) -> Ladder:
    """The run's ladder; ApiError 404 (no such run, or no ladder yet: how to compute it) or 500
    (a ladder file that is not a regular file inside the runs folder, or unreadable)."""
    try:
        d = store.locate(name)
    except RunError as e:
        raise ApiError(404, f"no such run: {e}") from None
    for file in (LADDER_FILE, LADDER_META_FILE):
        path = d / file
        if regular_file(path) is None:
            raise ApiError(
                404,
                f"run {name!r} has no {file}: compute its width ladder with "
                f"python -m workbench.sae.ladder {Path(d)} (several runs of increasing width for separate SAEs)",
            )
        if not path.resolve().is_relative_to(store.root):
            raise ApiError(500, f"run {name!r}: {file} is a link out of the runs folder: refused")
    try:
        return Ladder.load(d)
    except (ValueError, OSError) as e:
        raise ApiError(500, f"run {name!r}: {e}") from e


def _node_id(lad: Ladder, width: int, latent: int) -> str:
    if lad.kind == "prefixes":
        return f"{min(w for w in lad.widths if w > latent)}:{latent}"
    return f"{width}:{latent}"


def _node(nid: str, score: float | None = None, density: float | None = None) -> dict:
    w, latent = nid.split(":")
    out = {"width": int(w), "latent": int(latent)}
    if score is not None:
        out["score"] = score
    if density is not None and density == density:  # NaN: a root, no density recorded
        out["density"] = density
    return out


def ladder(store: RunStore, name: str, query: dict) -> dict:
    """The ladder's widths and tree figure; with `width` and `latent`, that latent's parent by both
    statistics, its ancestors (by `by`) and its children one rung up, and the figure zoomed onto it."""
    lad = load_run_ladder(store, name)
    by = query.get("by", "cos")
    if by not in BY:
        raise ApiError(400, f"by must be one of {list(BY)}, got {str(by)[:40]!r}")
    width = _int(query.get("width", str(lad.widths[-1])), "width")
    if width not in lad.widths:
        raise ApiError(400, f"width must be one of the ladder's widths {list(lad.widths)}, got {width}")
    out = {"run": name, "kind": lad.kind, "widths": list(lad.widths), "by": by, "n_rows": lad.n_rows}
    if "latent" not in query:
        out.update(latent=None, parent=None, ancestors=[], children=[])
        out["figure"] = json.loads(ladder_tree(lad, by).to_json())
        return out
    latent = _int(query["latent"], "latent")
    if not 0 <= latent < width:
        raise ApiError(404, f"latent must be an integer in [0, {width}) at width {width}, got {latent}")
    edges = tree_edges(lad, by)
    parent = {e[0]: e[1] for e in edges}
    nid = _node_id(lad, width, latent)
    chain, cur = [], parent[nid]
    while cur:
        chain.append(_node(cur))
        cur = parent[cur]
    out["latent"] = {"width": width, "latent": latent}
    out["parent"] = {
        b: (
            None if (p := lad.parent_of(int(nid.split(":")[0]), latent, b)) is None else {"latent": p[0], "score": p[1]}
        )
        for b in BY
    }
    out["ancestors"] = chain
    out["children"] = [_node(e[0], e[2], e[4]) for e in edges if e[1] == nid]
    out["figure"] = json.loads(ladder_tree(lad, by, focus=(width, latent)).to_json())
    return out


def ladder_section(name: str, lad: Ladder | None) -> str:
    """The SAE page's "Width ladder" section: the tree (all latents, three rings deep; click to zoom),
    and a latent picker that asks /api/run/<name>/ladder for its parents and children. `lad` None:
    a note saying how to compute one."""
    if lad is None:
        return (
            '<h2>Width ladder</h2><p class="empty">No width ladder for this run: compute it with '
            "<code>python -m workbench.sae.ladder RUN_FOLDER</code>.</p>"
        )
    options = "".join(
        f'<option value="{w}"{" selected" if w == lad.widths[-1] else ""}>{w}</option>' for w in lad.widths
    )
    first = json.loads(ladder_tree(lad, "cos").to_json())
    kind = "prefixes of this Matryoshka SAE" if lad.kind == "prefixes" else "separate SAEs"
    return f"""
<h2>Width ladder</h2>
<p class="note">Each latent's parent one rung down ({kind},
widths {" → ".join(map(str, lad.widths))}), by decoder cosine or by co-firing (Ochiai) on {lad.n_rows} rows.
Click a ring to zoom into its children.</p>
<div class="controls">
  <label>width <select id="ladder-width">{options}</select></label>
  <label>latent <input id="ladder-latent" type="number" min="0"></label>
  <label>parent by <select id="ladder-by"><option value="cos">decoder cosine</option>
  <option value="cofire">co-firing</option></select></label>
  <button id="ladder-go">show</button>
</div>
<div id="ladder-fig" class="fig"></div>
<div id="ladder-detail"></div>
""" + on_ready(f"""
const LRUN = encodeURIComponent({js_literal(name)});
const first = {js_literal(first)};
Plotly.newPlot("ladder-fig", first.data, first.layout, {{responsive: true, displaylogo: false}});
function row(n) {{
  return `width ${{n.width}} #${{n.latent}}` + (n.score === undefined ? "" : ` (${{n.score.toFixed(3)}})`);
}}
document.getElementById("ladder-go").onclick = async () => {{
  const q = new URLSearchParams({{width: document.getElementById("ladder-width").value,
    by: document.getElementById("ladder-by").value}});
  const lat = document.getElementById("ladder-latent").value;
  if (lat !== "") q.set("latent", lat);
  const r = await fetch(`/api/run/${{LRUN}}/ladder?${{q}}`);
  const d = await r.json().catch(() => null);
  const out = document.getElementById("ladder-detail");
  out.replaceChildren();
  if (!r.ok) {{ const p = document.createElement("p"); p.className = "error";
    p.textContent = (d && d.error) || `HTTP ${{r.status}}`; out.append(p); return; }}
  if (d.latent) {{
    const p = document.createElement("p");
    p.textContent = `ancestors: ${{d.ancestors.map(row).join(" ← ") || "none (a root)"}}; ` +
      `parent by cosine ${{d.parent.cos ? "#" + d.parent.cos.latent : "-"}}, by co-firing ${{
      d.parent.cofire ? "#" + d.parent.cofire.latent : "-"}}; children: ${{d.children.map(row).join(", ") || "none"}}`;
    out.append(p);
  }}
  Plotly.react("ladder-fig", d.figure.data, d.figure.layout, {{responsive: true, displaylogo: false}});
}};""")
