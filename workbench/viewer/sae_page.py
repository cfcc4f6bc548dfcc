"""An SAE run's page: its evaluation (`SAERunResult`), training curves, sparse probing and
absorption-style panel, and the feature browser (which reads /api/run/<name>/feature, /search and
/prompt; /run/<name>?feature=<i> opens on feature i; an attention-output SAE's feature also shows
its heads and DFA); for a run trained with --no-eval, its training curves and a button that computes the
evaluation in the viewer (/api/run/<name>/evaluate), its stages and progress drawn live."""

from __future__ import annotations

import dataclasses
import math

from ..figures import evals as ef
from ..figures import sae as sf
from ..results import SAERunResult
from ..runs import OUTPUT_SCORES_FILE
from .pages import STAGES_JS, figure_div, js_literal, metrics_table, on_ready
from .steer import feature_steer_section

KIND = "sae"
SHOWN = (
    "fvu",
    "explained_variance",
    "l0",
    "dead_frac",
    "dense_frac",
    "ce_loss_recovered",
    "ce_loss_recovered_vs_mean",
    "kl_sae",
    "ce_clean",
    "ce_sae",
    "n_tokens",
    "eval_split",
    "eval_windows",
)  # SAERunResult fields, in order


def summary(res: SAERunResult) -> str:
    """The overview's headline."""
    rec = "n/a" if res.ce_loss_recovered is None else f"{res.ce_loss_recovered:.3f}"
    return f"FVU {res.fvu:.3f} · L0 {res.l0:.1f} · CE loss recovered {rec}"


NOT_EVALUATED = '<span class="empty">trained, not evaluated yet (open the run to compute it)</span>'


def render(
    name: str,
    res: SAERunResult,
    metrics: list[dict],
    density: list[float],
    evals: dict | None,
    ladder_html: str = "",
    output_score: list[float] | None = None,
) -> str:
    """The page body. `metrics`: metrics.jsonl's rows; `density`: the feature table's per-feature firing
    rate (the browser opens on the densest feature); `evals`: usefulness.json or None; `ladder_html`:
    the width-ladder section (viewer/ladder.py), "" for a run without one; `output_score`: every
    latent's output score (output_scores.safetensors, `RunStore.output_scores`), None for a run
    without one (no column). The feature browser ends with the steer controls (viewer/steer.py) for
    its current feature."""
    body = metrics_table(dataclasses.asdict(res), list(SHOWN))
    body += figure_div(sf.training_curves(metrics), "curves")
    body += '<div class="grid">' + figure_div(sf.density_histogram(res.log10_density), "density")
    body += figure_div(sf.l0_histogram(res.l0_hist), "l0") + "</div>"
    body += "<h2>Sparse probing and absorption-style</h2>" + ef.usefulness_html(evals)
    body += figure_div(ef.usefulness_figure(evals), "usefulness") if evals else ""
    first = max(range(len(density)), key=density.__getitem__) if density and max(density) > 0 else 0
    body += ladder_html + feature_table_section(density, output_score)
    return body + feature_browser(name, len(density), first) + feature_steer_section(name, first)


def feature_table_section(density: list[float], output_score: list[float] | None, rows: int = 50) -> str:
    """The feature table: latent, density and (where the run has them) output score, sortable by a
    click on a column's head (again: the other way), its first `rows` rows shown, each linking to
    the feature browser. Without output scores it opens sorted by density, with them by score."""
    cols = [("latent", "latent"), ("density", "density")] + ([("score", "output score")] if output_score else [])
    if output_score is not None and len(output_score) != len(density):
        return (
            f'<p class="error">{OUTPUT_SCORES_FILE} scores {len(output_score)} latents, the feature table '
            f"{len(density)}: evaluate the run again.</p>"
        )
    head = "".join(f'<th data-key="{k}" class="sortable">{t}</th>' for k, t in cols)
    scores = None if output_score is None else [v if math.isfinite(v) else None for v in output_score]
    data = {"density": density, **({"score": scores} if scores else {})}
    return f"""
<h2>Feature table</h2>
<p class="note">Click a column to sort it. Output score: the mean rise of log p(the latent's top logit-lens
tokens) when its decoder row is added to neutral text (Arad et al. 2025); the latents to steer with score high.</p>
<table id="feature-table"><thead><tr>{head}</tr></thead><tbody></tbody></table>""" + on_ready(f"""
const D = {js_literal(data)}, ROWS = {rows}, COLS = {js_literal([k for k, _ in cols])};
let key = D.score ? "score" : "density", desc = true;
const val = (i, k) => k === "latent" ? i : D[k][i];
const fmt = (v, k) => v === null ? "" : k === "density" ? v.toExponential(2) : v.toFixed(3);
function draw() {{
  const order = D.density.map((_, i) => i).filter(i => val(i, key) !== null);
  order.sort((a, b) => desc ? val(b, key) - val(a, key) : val(a, key) - val(b, key));
  const body = document.querySelector("#feature-table tbody");
  body.replaceChildren(...order.slice(0, ROWS).map(i => {{
    const tr = document.createElement("tr"); tr.dataset.latent = i;
    for (const k of COLS) {{
      const td = document.createElement("td");
      if (k === "latent") {{
        const a = document.createElement("a"); a.href = `?feature=${{i}}`; a.textContent = i; td.append(a);
      }} else td.textContent = fmt(val(i, k), k);
      tr.append(td);
    }}
    return tr;
  }}));
  document.querySelectorAll("#feature-table th").forEach(th =>
    th.dataset.sorted = th.dataset.key === key ? (desc ? "desc" : "asc") : "");
}}
document.querySelectorAll("#feature-table th").forEach(th => th.onclick = () => {{
  desc = th.dataset.key === key ? !desc : true; key = th.dataset.key; draw();
}});
draw();""")


def render_unevaluated(name: str, metrics: list[dict], job: dict | None) -> str:
    """A trained SAE without results.json: training curves and the compute-evaluation panel. `job`: the
    running (or last) evaluation's BuildStatus snapshot, or None."""
    intro = (
        '<p id="not-evaluated">This SAE has been trained but not evaluated (trained with <code>--no-eval</code>, '
        "or its evaluation was interrupted): no reconstruction or CE-loss numbers and no feature table yet. "
        "Computing them runs the run's own model over held-out windows of its own text (a minute or so on a "
        "CPU for a small model).</p>"
    )
    return intro + evaluation_panel(name, job) + figure_div(sf.training_curves(metrics), "curves")


def evaluation_panel(name: str, job: dict | None) -> str:
    """The button that starts the evaluation and its live stages, polled from /api/run/<name>/evaluate every
    half second; the page reloads into the full SAE page once results.json is written."""
    return f"""
<section id="evaluate"><button id="evaluate-go">Compute the evaluation</button>
<table id="evaluate-stages" hidden>
<thead><tr><th>stage</th><th>state</th><th>progress</th></tr></thead><tbody></tbody></table>
<p id="evaluate-error" class="error" hidden></p></section>
<script>{STAGES_JS}
(function() {{
  const URL_ = `/api/run/${{encodeURIComponent({js_literal(name)})}}/evaluate`;
  const button = document.getElementById("evaluate-go");
  function draw(d) {{
    const running = d.phase === "loading" || d.phase === "building";
    button.disabled = running; button.textContent = d.error ? "Try again" : running ? "Computing…" : button.textContent;
    const table = document.getElementById("evaluate-stages"); table.hidden = !d.stages.length;
    drawStages(table.querySelector("tbody"), d.stages);
    const err = document.getElementById("evaluate-error"); err.hidden = !d.error; err.textContent = d.error || "";
    return running;
  }}
  async function poll() {{
    let d;
    try {{ d = await (await fetch(URL_)).json(); }} catch (e) {{ setTimeout(poll, 1000); return; }}
    if (d.evaluated) {{ location.reload(); return; }}
    if (draw(d)) setTimeout(poll, 500);
  }}
  button.onclick = async () => {{
    button.disabled = true;
    const r = await fetch(URL_, {{method: "POST"}});
    const d = await r.json().catch(() => null);
    if (!r.ok) {{ const err = document.getElementById("evaluate-error"); err.hidden = false;
      err.textContent = (d && d.error) || `HTTP ${{r.status}}`; button.disabled = false; return; }}
    draw(d); setTimeout(poll, 500);
  }};
  const first = {js_literal(job)};
  if (first && draw(first)) setTimeout(poll, 500);
}})();
</script>"""


def feature_browser(run: str, n_features: int, first: int) -> str:
    return f"""
<h2>Feature browser</h2>
<div class="controls">
  <button id="prev">◀</button>
  <label>feature <input id="feature" type="number" min="0" max="{n_features - 1}" value="{first}"></label>
  <span class="empty">of {n_features} (0 to {n_features - 1})</span>
  <button id="next">▶</button> <button id="go">show</button>
  <label>search by token <input id="search" placeholder="e.g. def"></label> <button id="search-go">search</button>
  <span id="search-results"></span>
</div>
<p id="feat-score" class="note" hidden></p>
<div id="contexts"></div>
<div class="grid"><div id="feat-hist"></div><div id="feat-logits"></div></div>
<div id="feat-corr"></div>
<div id="feat-attention"></div>
<h3>Your own text</h3>
<textarea id="prompt">def f(x):\n    return x + 1</textarea>
<button id="prompt-go">run through the SAE</button>
<div id="prompt-out"></div>
""" + on_ready(f"""
const RUN = encodeURIComponent({js_literal(run)}), N = {n_features};
function say(id, text) {{  // an error as text (it may quote a file name)
  const p = document.createElement("p"); p.className = "error"; p.textContent = text;
  document.getElementById(id).replaceChildren(p);
}}
function showError(id, r, d) {{ say(id, (d && d.error) || `HTTP ${{r.status}}: the viewer gave no reason`); }}
async function show(i) {{
  if (!Number.isInteger(i) || i < 0 || i >= N) {{  // said here, before asking the server
    say("contexts", `feature must be an integer in [0, ${{N}}) (0 to ${{N - 1}}), got ${{
      document.getElementById("feature").value || "nothing"}}`);
    return;
  }}
  const r = await fetch(`/api/run/${{RUN}}/feature/${{i}}`);
  if (!r.ok) {{ showError("contexts", r, await r.json().catch(() => null)); return; }}
  const d = await r.json();
  document.getElementById("feature").value = d.feature;
  document.getElementById("contexts").innerHTML = d.contexts_html;
  document.getElementById("contexts").dataset.feature = d.feature;
  const sc = document.getElementById("feat-score");  // absent from the API for a run without output scores
  sc.hidden = d.output_score == null;
  sc.textContent = d.output_score == null ? "" : `output score ${{d.output_score.toFixed(3)}}`;
  document.getElementById("feat-attention").innerHTML = d.attention_html;  // its figures' divs, drawn below
  for (const [id, f] of Object.entries(d.figures)) Plotly.react(id, f.data, f.layout, {{responsive: true}});
}}
const cur = () => Number(document.getElementById("feature").value);  // "" or "1.5": not an index
document.getElementById("go").onclick = () => show(cur());
document.getElementById("prev").onclick = () => show(Math.max(0, Math.min(N - 1, cur() - 1)));
document.getElementById("next").onclick = () => show(Math.min(N - 1, Math.max(0, cur() + 1)));
document.getElementById("feature").onchange = () => show(cur());
document.getElementById("search-go").onclick = async () => {{
  const q = document.getElementById("search").value;
  const r = await fetch(`/api/run/${{RUN}}/search?q=${{encodeURIComponent(q)}}`);
  const d = await r.json().catch(() => null);
  if (!r.ok) {{ showError("search-results", r, d); return; }}
  const out = document.getElementById("search-results");
  out.innerHTML = d.features.length
    ? d.features.map(f => `<a href="#" data-f="${{f}}">#${{f}}</a>`).join(" ") : "no match";
  out.querySelectorAll("a").forEach(a => a.onclick = (e) => {{ e.preventDefault(); show(parseInt(a.dataset.f)); }});
}};
document.getElementById("prompt-go").onclick = async () => {{
  const r = await fetch(`/api/run/${{RUN}}/prompt`, {{method: "POST", headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{text: document.getElementById("prompt").value, feature: cur()}})}});
  const d = await r.json().catch(() => null);
  if (!r.ok) {{ showError("prompt-out", r, d); return; }}
  document.getElementById("prompt-out").innerHTML = d.html;
}};
// ?feature=<i> opens that feature (the head explorer links here); anything else in it is said as an error
const asked = new URLSearchParams(location.search).get("feature");
if (asked !== null && asked.trim() !== "") {{ document.getElementById("feature").value = asked; show(Number(asked)); }}
else show({first});""")
