"""A head-roles run's page (`HeadsRunResult`), as a list of sections, and its attention API.

The page is `render`'s list of section builders, each `(name, res) -> html`; a new view of the
heads (e.g. the head explorer: a scatter from workbench.figures.heads with a click handler that
calls an API) is one more function in SECTIONS, plus its API function beside `attention` and its
route in server.py."""

from __future__ import annotations

import html
import json

from ..figures import probes as pf
from ..results import HeadsRunResult
from .pages import figure_div, js_literal
from .store import ApiError

KIND = "heads"


def summary(res: HeadsRunResult) -> str:
    r = res.roles
    labels = [lab for row in r.labels for lab in row]
    few = (f"; too few copied steps to label retrieval ({int(r.n_copied)} < {int(r.config['min_copied_steps'])})"
           if r.too_few_copied else "")
    return (f"{labels.count('retrieval')} retrieval, {labels.count('streaming')} streaming heads "
            f"(copy accuracy {r.copy_accuracy:.2f}{few})")


def roles_section(name: str, res: HeadsRunResult) -> str:
    return (pf.head_roles_summary_html(res.roles) + figure_div(pf.head_role_map(res.roles), "roles")
            + figure_div(pf.causal_check(res.roles), "causal"))


def intervals_table(name: str, res: HeadsRunResult) -> str:
    """Every head's role, scores and intervals (the labels are strings from disk: escaped)."""
    r = res.roles

    def ci(values, l, h):
        return f"{values[l][h][0]:.2f} – {values[l][h][1]:.2f}"
    rows = "".join(f"<tr><td>L{l}H{h}</td><td>{html.escape(str(r.labels[l][h]))}</td>"
                   f"<td>{r.retrieval[l][h]:.2f} ({int(r.retrieval_hits[l][h])}/{int(r.n_copied)})</td>"
                   f"<td>{ci(r.retrieval_ci, l, h)}</td><td>{r.streaming[l][h]:.2f}</td>"
                   f"<td>{ci(r.streaming_ci, l, h)}</td><td>{r.delta_loss[l][h]:+.3f}</td></tr>"
                   for l in range(res.n_layers) for h in range(res.n_heads))
    return ("<table><tr><th>head</th><th>role</th><th>retrieval (hits/copied)</th><th>Wilson 95%</th>"
            "<th>streaming</th><th>t 95% over contexts</th><th>Δ copy loss</th></tr>" + rows + "</table>")


def attention_section(name: str, res: HeadsRunResult) -> str:
    """A layer and head picker over the run's example contexts; the pattern comes from `attention`."""
    if not res.examples:
        return '<p class="empty">No attention patterns recorded for this run.</p>'
    examples = "".join(f'<option value="{i}">{html.escape(e.name)}</option>' for i, e in enumerate(res.examples))
    layers = "".join(f'<option value="{l}">layer {l}</option>' for l in range(res.n_layers))
    heads = "".join(f'<option value="{h}">head {h}</option>' for h in range(res.n_heads))
    return f"""
<h2>Attention pattern on an example context</h2>
<div class="controls"><select id="example">{examples}</select><select id="layer">{layers}</select>
<select id="head">{heads}</select></div>
<div id="attn"></div>
<script>
const ARUN = encodeURIComponent({js_literal(name)});
async function attn() {{
  const e = document.getElementById("example").value;
  const l = document.getElementById("layer").value, h = document.getElementById("head").value;
  const r = await fetch(`/api/run/${{ARUN}}/attention?layer=${{l}}&head=${{h}}&example=${{e}}`);
  const f = await r.json().catch(() => null);
  if (!r.ok) {{ const p = document.createElement("p"); p.className = "error";
    p.textContent = (f && f.error) || `HTTP ${{r.status}}`; document.getElementById("attn").replaceChildren(p); return; }}
  Plotly.react("attn", f.data, f.layout, {{responsive: true}});
}}
for (const id of ["example", "layer", "head"]) document.getElementById(id).onchange = attn;
attn();
</script>"""


SECTIONS = [roles_section, intervals_table, attention_section]


def render(name: str, res: HeadsRunResult) -> str:
    return "".join(section(name, res) for section in SECTIONS)


def _int_param(query: dict, key: str, default: int | None = None) -> int:
    try:
        return int(query[key]) if key in query or default is None else default
    except (KeyError, ValueError):
        raise ApiError(400, "layer and head must be given as integers"
                       + (f" (and {key} too)" if key not in ("layer", "head") else "")) from None


def attention(name: str, res: HeadsRunResult, query: dict) -> dict:
    """GET /api/run/<name>/attention?layer=&head=[&example=]: one head's pattern on an example
    context, as a plotly figure's JSON."""
    if not res.examples:
        raise ApiError(400, f"run {name!r} has no attention patterns (results.json has no examples)")
    layer, head = _int_param(query, "layer"), _int_param(query, "head")
    i = _int_param(query, "example", 0)
    if not 0 <= i < len(res.examples):
        raise ApiError(400, f"example must lie in [0, {len(res.examples)}), got {i}")
    ex = res.examples[i]
    L, H = len(ex.patterns), len(ex.patterns[0]) if ex.patterns else 0
    if not (0 <= layer < L and 0 <= head < H):
        raise ApiError(400, f"layer must lie in [0, {L}) and head in [0, {H}), got layer={layer}, head={head}")
    fig = pf.attention_pattern(ex.patterns[layer][head], ex.tokens, f"{ex.name}: layer {layer}, head {head}")
    return json.loads(fig.to_json())
