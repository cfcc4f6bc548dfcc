"""A head-roles run's page (`HeadsRunResult`), as a list of sections, and its APIs.

The page is `render`'s list of section builders, each `(name, res) -> html`: the roles and their
intervals, the head explorer (a scatter of every head over two chosen metrics; clicking a head asks
`head` for its attention pattern, scores and gate curve), the KV-cache trade-off, the rankings'
agreement, the heads over training and the example attention patterns. The explorer's figures come
from `workbench.figures.heads`, the same builders as the notebook widget (`widgets.heads`). A run
without issue 21's optional fields renders each of their sections as "not computed"; a section that
results.json holds but that did not type-check (`HeadsRunResult.unreadable`) shows its fault in its
place while the other sections draw."""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path

from ..figures import heads as hf
from ..figures import probes as pf
from ..kinds.heads import HeadsRunResult
from ..probes.heads_data import ExplorerData, PatternsError, load_pattern
from ..runs import RESULTS_FILE
from .pages import figure_div, js_literal, on_ready
from .store import ApiError

KIND = "heads"
SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)  # what malformed data raises


class DataError(ValueError):
    """A field of the run's results.json that does not have the shape the page needs; the message
    names the file and the field."""


def _shape(value) -> str:
    """What a value from results.json is, briefly (for an error message)."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"{type(value).__name__} {str(value)[:40]!r}"


def _number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def check_grid(field: str, grid, L: int, H: int, cell=None, cell_kind: str = "") -> None:
    """DataError naming `field` unless `grid` is L rows (layers) of H cells (heads), each passing
    `cell` when given (`cell_kind` says what a cell must be)."""
    if not isinstance(grid, list) or len(grid) != L:
        raise DataError(f"{RESULTS_FILE}: {field} must hold {L} rows (one per layer), got {_shape(grid)}")
    for layer, row in enumerate(grid):
        if not isinstance(row, list) or len(row) != H:
            raise DataError(f"{RESULTS_FILE}: {field}[{layer}] must hold {H} values (one per head), got {_shape(row)}")
        for h, v in enumerate(row):
            if cell is not None and not cell(v):
                raise DataError(f"{RESULTS_FILE}: {field}[{layer}][{h}] must be {cell_kind}, got {_shape(v)}")


def _pair(v) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v))


def check_roles(res: HeadsRunResult) -> None:
    """Every [layer][head] field of results.json's roles has the layers × heads of its retrieval scores."""
    r = res.roles
    L, H = res.n_layers, res.n_heads
    check_grid("roles.retrieval", r.retrieval, L, H, _number, "a number")
    check_grid("roles.streaming", r.streaming, L, H, _number, "a number")
    check_grid("roles.labels", r.labels, L, H)
    check_grid("roles.delta_loss", r.delta_loss, L, H, _number, "a number")
    if r.retrieval_hits:
        check_grid("roles.retrieval_hits", r.retrieval_hits, L, H, _number, "a number")
    for field in ("retrieval_ci", "streaming_ci"):
        if getattr(r, field):
            check_grid(f"roles.{field}", getattr(r, field), L, H, _pair, "a [low, high] pair")
    if r.too_few_copied and not isinstance(r.config.get("min_copied_steps"), (int, float)):
        raise DataError(f"{RESULTS_FILE}: roles.config.min_copied_steps must be a number (too_few_copied is set)")


def check_section(res: HeadsRunResult, *fields: str) -> None:
    """DataError with the fault of the first of results.json's `fields` that did not type-check."""
    for f in fields:
        if f in res.unreadable:
            raise DataError(res.unreadable[f])


def check_explorer(data: ExplorerData) -> tuple[int, int]:
    """(layers, heads) of results.json's explorer data once every field the explorer reads has
    their shape (each field's type is checked on reading: these are the grids' sizes); DataError
    naming the first field that does not."""
    L, H = data.n_layers, data.n_heads
    for key, v in (("n_layers", L), ("n_heads", H)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise DataError(f"{RESULTS_FILE}: explorer.{key} must be a positive integer, got {_shape(v)}")
    if not isinstance(data.metrics, dict):
        raise DataError(f"{RESULTS_FILE}: explorer.metrics must be an object of [layer][head] grids")
    for m, grid in data.metrics.items():
        check_grid(f"explorer.metrics[{m!r}]", grid, L, H, _number, "a number")
    for m, grid in (data.intervals or {}).items():
        if grid:
            check_grid(f"explorer.intervals[{m!r}]", grid, L, H, _pair, "a [low, high] pair")
    if data.labels is not None:
        check_grid("explorer.labels", data.labels, L, H)
    for c, ctx in (data.contexts or {}).items():
        where = f"explorer.contexts[{c!r}]"
        if not isinstance(ctx, dict) or not isinstance(ctx.get("tokens"), list):
            raise DataError(f"{RESULTS_FILE}: {where} must be an object with tokens and patterns")
        T = len(ctx["tokens"])
        if ctx.get("ids") is not None and (not isinstance(ctx["ids"], list) or len(ctx["ids"]) != T):
            raise DataError(f"{RESULTS_FILE}: {where}.ids must hold {T} ids (one per token), got {_shape(ctx['ids'])}")
        if ctx.get("patterns") is None and data.patterns_file:
            continue  # in the run's patterns file, read (and checked) one head at a time
        square = lambda p: isinstance(p, list) and len(p) == T and all(isinstance(q, list) and len(q) == T for q in p)  # noqa: E731
        check_grid(f"{where}.patterns", ctx.get("patterns"), L, H, square, f"a {T} × {T} pattern")
    curve = data.gate_curve
    if curve:
        if not isinstance(curve, dict):
            raise DataError(f"{RESULTS_FILE}: explorer.gate_curve must be an object with step and alpha")
        steps, alpha = curve.get("step"), curve.get("alpha")
        if not isinstance(steps, list) or not isinstance(alpha, list) or len(steps) != len(alpha):
            raise DataError(f"{RESULTS_FILE}: explorer.gate_curve must hold as many alpha grids as steps")
        for i, grid in enumerate(alpha):
            check_grid(f"explorer.gate_curve.alpha[{i}]", grid, L, H, _number, "a number")
    return L, H


def summary(res: HeadsRunResult) -> str:
    try:
        check_roles(res)
        r = res.roles
        labels = [lab for row in r.labels for lab in row]
        few = (
            f"; too few copied steps to label retrieval ({int(r.n_copied)} < {int(r.config['min_copied_steps'])})"
            if r.too_few_copied
            else ""
        )
        return (
            f"{labels.count('retrieval')} retrieval, {labels.count('streaming')} streaming heads "
            f"(copy accuracy {r.copy_accuracy:.2f}{few})"
        )
    except DataError:
        raise
    except SHAPE_ERRORS as e:
        raise DataError(f"{RESULTS_FILE}: roles cannot be summarised: {type(e).__name__}: {e}") from e


def roles_section(name: str, res: HeadsRunResult) -> str:
    check_roles(res)
    return (
        pf.head_roles_summary_html(res.roles)
        + figure_div(pf.head_role_map(res.roles), "roles")
        + figure_div(pf.causal_check(res.roles), "causal")
    )


def intervals_table(name: str, res: HeadsRunResult) -> str:
    """Every head's role, scores and intervals (the labels are strings from disk: escaped)."""
    check_roles(res)
    r = res.roles

    def ci(values, layer, h):
        return f"{values[layer][h][0]:.2f} – {values[layer][h][1]:.2f}"

    rows = "".join(
        f"<tr><td>L{i}H{h}</td><td>{html.escape(str(r.labels[i][h]))}</td>"
        f"<td>{r.retrieval[i][h]:.2f} ({int(r.retrieval_hits[i][h])}/{int(r.n_copied)})</td>"
        f"<td>{ci(r.retrieval_ci, i, h)}</td><td>{r.streaming[i][h]:.2f}</td>"
        f"<td>{ci(r.streaming_ci, i, h)}</td><td>{r.delta_loss[i][h]:+.3f}</td></tr>"
        for i in range(res.n_layers)
        for h in range(res.n_heads)
    )
    return (
        "<table><tr><th>head</th><th>role</th><th>retrieval (hits/copied)</th><th>Wilson 95%</th>"
        "<th>streaming</th><th>t 95% over contexts</th><th>Δ copy loss</th></tr>" + rows + "</table>"
    )


def attention_section(name: str, res: HeadsRunResult) -> str:
    """A layer and head picker over the run's example contexts; the pattern comes from `attention`."""
    check_section(res, "examples")
    if not res.examples:
        return '<p class="empty">No attention patterns recorded for this run.</p>'
    examples = "".join(f'<option value="{i}">{html.escape(e.name)}</option>' for i, e in enumerate(res.examples))
    layers = "".join(f'<option value="{i}">layer {i}</option>' for i in range(res.n_layers))
    heads = "".join(f'<option value="{h}">head {h}</option>' for h in range(res.n_heads))
    return f"""
<h2>Attention pattern on an example context</h2>
<div class="controls"><select id="example">{examples}</select><select id="layer">{layers}</select>
<select id="head">{heads}</select></div>
<div id="attn"></div>
""" + on_ready(f"""
const ARUN = encodeURIComponent({js_literal(name)});
async function attn() {{
  const e = document.getElementById("example").value;
  const l = document.getElementById("layer").value, h = document.getElementById("head").value;
  const r = await fetch(`/api/run/${{ARUN}}/attention?layer=${{l}}&head=${{h}}&example=${{e}}`);
  const f = await r.json().catch(() => null);
  if (!r.ok) {{ const p = document.createElement("p"); p.className = "error";
    p.textContent = (f && f.error) || `HTTP ${{r.status}}`;
    document.getElementById("attn").replaceChildren(p); return; }}
  Plotly.react("attn", f.data, f.layout, {{responsive: true}});
}}
for (const id of ["example", "layer", "head"]) document.getElementById(id).onchange = attn;
attn();""")


def not_computed(title: str, field: str, anchor: str) -> str:
    """A section whose optional result is absent: said so, with the field results.json lacks."""
    return (
        f'<h2>{html.escape(title)}</h2><p class="empty" id="{anchor}-missing">Not computed for this run '
        f"(results.json has no {html.escape(field)}; the demo computes it, see workbench.demo).</p>"
    )


def default_axes(data: ExplorerData) -> tuple[str, str]:
    """The explorer's first metric pair: DuoAttention's gate against Wu's retrieval score when the
    gates were trained (the two definitions of a retrieval head), else the first two metrics."""
    names = list(data.metrics or {})
    if "Duo α" in names and "retrieval score" in names:
        return "Duo α", "retrieval score"
    if "retrieval score" in names and "streaming mass" in names:
        return "retrieval score", "streaming mass"
    return names[0], names[min(1, len(names) - 1)]


def default_head(data: ExplorerData) -> tuple[int, int]:
    """The head the explorer opens on: the top retrieval head (else the last layer's first)."""
    scores = (data.metrics or {}).get("retrieval score")
    if not scores:
        return data.n_layers - 1, 0
    return max(
        ((layer, h) for layer in range(data.n_layers) for h in range(data.n_heads)),
        key=lambda lh: (scores[lh[0]][lh[1]] if _finite(scores[lh[0]][lh[1]]) else -math.inf, lh),
    )


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _options(values, selected, label=str) -> str:
    return "".join(
        f'<option value="{html.escape(str(v))}"{" selected" if v == selected else ""}>{html.escape(label(v))}</option>'
        for v in values
    )


def _fig_json(fig) -> dict:
    return json.loads(fig.to_json())


def explorer_section(name: str, res: HeadsRunResult) -> str:
    """Every head over two chosen metrics (workbench.figures.heads.head_scatter); a click on a head,
    or the layer/head/context pickers, fetch its detail (pattern, scores, gate curve) from `head`."""
    check_section(res, "explorer")
    data = res.explorer
    if data is None or not data.metrics:
        return not_computed("Head explorer", "explorer", "explorer")
    check_explorer(data)
    x, y = default_axes(data)
    layer, head_ = default_head(data)
    contexts = list(data.contexts or {})
    context = contexts[0] if contexts else None
    scatter = hf.head_scatter(data, x, y, selected=(layer, head_))
    on_file = bool(context and data.contexts[context].get("patterns") is None)
    if on_file:  # the page draws scores only and fetches the head's pattern from the head API
        detail = hf.head_detail(dataclasses.replace(data, contexts={}), layer, head_)
    else:
        detail = hf.head_detail(data, layer, head_, context)
    metrics = list(data.metrics)
    ctx_picker = (
        f'<label>context <select id="hx-context">{_options(contexts, context)}</select></label>'
        if contexts
        else '<span class="empty">no attention patterns recorded</span>'
    )
    state = {"run": name, "x": x, "y": y, "scatter": _fig_json(scatter), "detail": _fig_json(detail), "fetch": on_file}
    return f"""
<h2>Head explorer</h2>
<p>Every head over two metrics, coloured by role, 95% intervals as error bars where the metric has one.
Click a head (or pick it below) to see its attention pattern on a stored context, its scores with their
intervals and its DuoAttention gate while the gates were trained.</p>
<div class="controls"><label>x <select id="hx-x">{_options(metrics, x)}</select></label>
<label>y <select id="hx-y">{_options(metrics, y)}</select></label></div>
<div id="hx-scatter" class="fig"></div>
<div class="controls"><label>layer <select id="hx-layer">{_options(range(data.n_layers), layer)}</select></label>
<label>head <select id="hx-head">{_options(range(data.n_heads), head_)}</select></label>{ctx_picker}</div>
<p id="hx-error" class="error" hidden></p>
<div id="hx-detail" class="fig" data-head="{layer},{head_}"></div>
<div id="hx-sae"><p class="note">Pick a head to list the attention-SAE latents (hook_z runs in this
folder) that write through it.</p></div>
""" + on_ready(f"""
  const S = {js_literal(state)};
  const RUN = encodeURIComponent(S.run), cfg = {{responsive: true, displaylogo: false}};
  const el = id => document.getElementById(id);
  let asked = 0;  // only the latest request's answer is drawn
  async function show() {{
    const q = new URLSearchParams({{layer: el("hx-layer").value, head: el("hx-head").value,
                                    x: el("hx-x").value, y: el("hx-y").value}});
    if (el("hx-context")) q.set("context", el("hx-context").value);
    const mine = ++asked;
    const r = await fetch(`/api/run/${{RUN}}/head?${{q}}`);
    const d = await r.json().catch(() => null);
    if (mine !== asked) return;
    const err = el("hx-error");
    if (!r.ok) {{ err.hidden = false; err.textContent = (d && d.error) || `HTTP ${{r.status}}`; return; }}
    err.hidden = true;
    await Plotly.react("hx-scatter", d.scatter.data, d.scatter.layout, cfg);
    await Plotly.react("hx-detail", d.detail.data, d.detail.layout, cfg);
    el("hx-detail").dataset.head = `${{d.layer}},${{d.head}}`;
    el("hx-scatter").dataset.axes = `${{d.x}}|${{d.y}}`;  // drawn: clicks now land on these axes
    el("hx-sae").innerHTML = d.sae_latents.html;  // built and escaped by the server
    for (const [id, f] of Object.entries(d.sae_latents.figures)) Plotly.react(id, f.data, f.layout, cfg);
  }}
  Plotly.newPlot("hx-scatter", S.scatter.data, S.scatter.layout, cfg).then(gd => {{
    gd.on("plotly_click", ev => {{
      const p = ev.points && ev.points.find(p => p.customdata);
      if (!p) return;
      el("hx-layer").value = String(p.customdata[0]); el("hx-head").value = String(p.customdata[1]);
      show();
    }});
    gd.dataset.axes = `${{S.x}}|${{S.y}}`;
  }});
  Plotly.newPlot("hx-detail", S.detail.data, S.detail.layout, cfg);
  for (const id of ["hx-x", "hx-y", "hx-layer", "hx-head", "hx-context"]) if (el(id)) el(id).onchange = show;
  const want = new URLSearchParams(location.search);  // /run/<name>?layer=&head= opens that head (graph links)
  const pick = (id, v) => {{
    if (v === null || ![...el(id).options].some(o => o.value === v)) return false;
    el(id).value = v; return true;
  }};
  if ((pick("hx-layer", want.get("layer")) | pick("hx-head", want.get("head"))) || S.fetch) show();""")


def _esc(value) -> str:
    """Any value from results.json, as HTML text (a hand-edited file can hold a string anywhere)."""
    return html.escape(str(value))


def methods_section(name: str, res: HeadsRunResult) -> str:
    """What the DuoAttention gates and RazorAttention's rule were run with, and what they chose."""
    check_section(res, "duo", "razor")
    parts = []
    if res.duo is not None:
        d = res.duo
        passkey = d.config.get("passkey")
        c = {k: _esc(v) for k, v in d.config.items()}  # every value read from disk is escaped
        how = (
            f" ({len(d.steps)} Adam steps, lr {c.get('lr')}, λ {c.get('lam')}, distance "
            f"{c.get('distance')}, on {c.get('n_contexts')} passkey contexts of "
            f"{_esc(passkey.get('seq_len') if isinstance(passkey, dict) else None)} tokens; streaming = sink "
            f"{c.get('sink')} + window {c.get('window')}; seed {c.get('seed')}"
            + (f"; final loss {d.loss[-1]:.4f}" if d.loss else "")
            + f"; {d.seconds:.1f} s)"
            if c
            else ""
        )
        parts.append(
            f"<p>DuoAttention gates{how}: each head's α is the explorer's “Duo α”, its curve in the head's detail.</p>"
        )
    if res.razor is not None:
        z = res.razor
        prot = [f"L{layer}H{h}" for layer, row in enumerate(z.protected) for h, p in enumerate(row) if p]
        parts.append(
            f"<p>RazorAttention's rule protects the top {_esc(z.n_induction_protected)} heads by induction "
            f"score and the top {_esc(z.n_echo_protected)} by echo score: {', '.join(prot) or 'none'}.</p>"
        )
    if not parts:
        return not_computed("DuoAttention gates and RazorAttention's rule", "duo or razor", "methods")
    return "<h2>DuoAttention gates and RazorAttention's rule</h2>" + "".join(parts)


def tradeoff_section(name: str, res: HeadsRunResult) -> str:
    """The KV-cache trade-off curve of every ranking against the random band, and which beat it."""
    check_section(res, "kv_tradeoff")
    if res.kv_tradeoff is None:
        return not_computed("KV-cache trade-off", "kv_tradeoff", "tradeoff")
    from ..figures.kv_tradeoff import LABELS, tradeoff_figure

    d = res.kv_tradeoff
    verdict = ""
    if 25.0 in d.fractions and d.random_band:
        i = d.fractions.index(25.0)
        band = d.random_band["needle_acc"]
        rows = "".join(
            f"<tr><td>{html.escape(LABELS.get(k, k))}</td><td>{c['needle_acc'][i]:.3f}</td>"
            f"<td>{'yes' if c['needle_acc'][i] > band['max'][i] else 'no'}</td></tr>"
            for k, c in d.curves.items()
        )
        verdict = (
            f"<p>At 25% of heads full (KV cache {d.kv_fraction[i]:.2f} of full), needle copy accuracy; "
            f"a ranking beats chance when it lies above every one of the {len(d.random_curves)} random "
            f"rankings ({band['min'][i]:.3f}–{band['max'][i]:.3f}).</p><table><tr><th>ranking</th>"
            f"<th>needle copy accuracy</th><th>above the random band?</th></tr>{rows}</table>"
        )
    return "<h2>KV-cache trade-off</h2>" + figure_div(tradeoff_figure(d), "kv-tradeoff") + verdict


def agreement_section(name: str, res: HeadsRunResult) -> str:
    """Spearman rho between the head rankings, and with the causal check, with intervals."""
    check_section(res, "agreement")
    if res.agreement is None:
        return not_computed("Do the head rankings agree?", "agreement", "agreement")
    ag = res.agreement.to_dict()  # the figures read the JSON layout
    return (
        "<h2>Do the head rankings agree?</h2>"
        + figure_div(hf.agreement_heatmap(ag), "agreement")
        + hf.agreement_table_html(ag)
    )


def over_training_section(name: str, res: HeadsRunResult) -> str:
    """One score of every head at each saved checkpoint beside the loss; a picker switches the score
    (every metric's figure is built here, by the same builder as the widget's)."""
    check_section(res, "over_training")
    over = res.over_training
    if over is None or not over.steps:
        return not_computed("Heads over training", "over_training", "over")
    metrics = [m for m in hf.OVER_METRICS if getattr(over, m)]
    if not metrics:
        return not_computed("Heads over training", "over_training", "over")
    d = over.to_dict()  # the figure reads the JSON layout
    figs = {m: _fig_json(hf.heads_over_training(d, m)) for m in metrics}
    formed = over.formed or {}
    said = "; ".join(
        f"{_esc(k)} between steps {_esc(v[0])} and {_esc(v[1])}" if v else f"{_esc(k)}: not formed"
        for k, v in formed.items()
    )
    return f"""
<h2>Heads over training</h2>
<p>The head scores at every saved checkpoint ({len(over.steps)}: steps {_esc(over.steps[0])}–
{_esc(over.steps[-1])});
formed (first held to the last checkpoint): {said or "n/a"}.</p>
<div class="controls"><label>score
<select id="over-metric">{_options(metrics, metrics[0], hf.OVER_METRICS.get)}</select></label></div>
<div id="over" class="fig"></div>
""" + on_ready(f"""
  const F = {js_literal(figs)}, cfg = {{responsive: true, displaylogo: false}};
  const pick = document.getElementById("over-metric");
  const draw = () => Plotly.react("over", F[pick.value].data, F[pick.value].layout, cfg);
  pick.onchange = draw; draw();""")


SECTIONS = [
    roles_section,
    intervals_table,
    explorer_section,
    methods_section,
    tradeoff_section,
    agreement_section,
    over_training_section,
    attention_section,
]


# The results.json field each section draws, named when it cannot be drawn.
SECTION_FIELDS = {
    roles_section: "roles",
    intervals_table: "roles",
    explorer_section: "explorer",
    methods_section: "duo and razor",
    tradeoff_section: "kv_tradeoff",
    agreement_section: "agreement",
    over_training_section: "over_training",
    attention_section: "examples",
}


def section_error(section, error: Exception) -> str:
    """A section that could not be drawn, in its place: the field at fault and what is wrong."""
    field = SECTION_FIELDS.get(section, section.__name__)
    why = str(error) if isinstance(error, DataError) else f"{type(error).__name__}: {error}"
    anchor = section.__name__.replace("_", "-")
    return (
        f'<div class="error" id="{anchor}-error"><b>This part of the page could not be drawn from '
        f"{RESULTS_FILE}'s {html.escape(field)}.</b><br>{html.escape(why)}</div>"
    )


def render(name: str, res: HeadsRunResult) -> str:
    """Every section; one that fails on malformed data shows its error in its place, the others are
    drawn (any exception: a hand-edited results.json can break a section in ways no check foresees)."""
    parts = []
    for section in SECTIONS:
        try:
            parts.append(section(name, res))
        except Exception as e:
            parts.append(section_error(section, e))
    return "".join(parts)


def attention(name: str, res: HeadsRunResult, query: dict) -> dict:
    """GET /api/run/<name>/attention?layer=&head=[&example=]: one head's pattern on an example
    context, as a plotly figure's JSON."""
    if "examples" in res.unreadable:
        raise ApiError(500, res.unreadable["examples"])
    if not res.examples:
        raise ApiError(400, f"run {name!r} has no attention patterns (results.json has no examples)")
    layer, head = _int_arg(query, "layer"), _int_arg(query, "head")
    i = _int_arg(query, "example", 0)
    if not 0 <= i < len(res.examples):
        raise ApiError(400, f"example must lie in [0, {len(res.examples)}), got {i}")
    ex = res.examples[i]
    L, H = len(ex.patterns), len(ex.patterns[0]) if ex.patterns else 0
    if not (0 <= layer < L and 0 <= head < H):
        raise ApiError(400, f"layer must lie in [0, {L}) and head in [0, {H}), got layer={layer}, head={head}")
    T = len(ex.tokens)
    square = lambda p: isinstance(p, list) and len(p) == T and all(isinstance(q, list) and len(q) == T for q in p)  # noqa: E731
    try:
        check_grid(f"examples[{i}].patterns", ex.patterns, L, H, square, f"a {T} × {T} pattern (one row per token)")
    except DataError as e:
        raise ApiError(500, str(e)) from None
    fig = pf.attention_pattern(ex.patterns[layer][head], ex.tokens, f"{ex.name}: layer {layer}, head {head}")
    return json.loads(fig.to_json())


def _int_arg(query: dict, key: str, default: int | None = None) -> int:
    """Query parameter `key` as an integer; ApiError(400) naming it when missing or not one."""
    if key not in query:
        if default is None:
            raise ApiError(400, f"{key} is required (an integer)")
        return default
    try:
        return int(query[key])
    except ValueError:
        raise ApiError(400, f"{key} must be an integer, got {str(query[key])[:40]!r}") from None


def _choice(query: dict, key: str, options: list[str], default: str) -> str:
    value = query.get(key, default)
    if value not in options:
        raise ApiError(400, f"{key} must be one of {options}, got {str(value)[:60]!r}")
    return value


def _decodes(tokenizer, ids: list[int]) -> bool:
    """Whether `tokenizer` can label these ids (else the labels stored at build time are used)."""
    if tokenizer is None or not ids:
        return False
    try:
        for i in ids:
            tokenizer.token_str(int(i))
    except Exception:
        return False
    return True


def head(name: str, res: HeadsRunResult, query: dict, tokenizer=None, run_dir=None) -> dict:
    """GET /api/run/<name>/head?layer=&head=[&context=][&x=&y=]: one head of the explorer: its
    attention pattern on `context` (token labels decoded by `tokenizer`, the run's own), its scores
    with their intervals, its gate curve, and the detail and scatter figures' JSON (the scatter over
    metrics x and y with this head ringed)."""
    if "explorer" in res.unreadable:
        raise ApiError(500, res.unreadable["explorer"])
    data = res.explorer
    if data is None or not data.metrics:
        raise ApiError(400, f"run {name!r} has no head explorer data (results.json has no explorer)")
    try:
        L, H = check_explorer(data)
    except DataError as e:
        raise ApiError(500, str(e)) from None
    try:
        return _head(name, data, L, H, query, tokenizer, run_dir)
    except SHAPE_ERRORS as e:  # a shape no check above foresees: still named, as JSON
        raise ApiError(500, f"{RESULTS_FILE}: explorer cannot be read: {type(e).__name__}: {e}") from e


def _on_file(name: str, data: ExplorerData, context: str, layer: int, head_: int, run_dir) -> ExplorerData:
    """`data` with this head's pattern on `context` read from the run's patterns file (only it)."""
    if run_dir is None:
        raise ApiError(500, f"run {name!r}: its patterns are in {data.patterns_file}, but no run folder was given")
    try:
        pat = load_pattern(Path(run_dir) / data.patterns_file, context, layer, head_)
    except PatternsError as e:
        raise ApiError(500, str(e)) from None
    ctx = {**data.contexts[context], "patterns": {layer: {head_: pat}}}
    return dataclasses.replace(data, contexts={**data.contexts, context: ctx})


def _head(name: str, data: ExplorerData, L: int, H: int, query: dict, tokenizer, run_dir=None) -> dict:
    layer, head_ = _int_arg(query, "layer"), _int_arg(query, "head")
    if not 0 <= layer < L:
        raise ApiError(400, f"layer must lie in [0, {L}), got {layer}")
    if not 0 <= head_ < H:
        raise ApiError(400, f"head must lie in [0, {H}), got {head_}")
    contexts = list(data.contexts or {})
    context = _choice(query, "context", contexts, contexts[0]) if contexts else None
    if not contexts and "context" in query:
        raise ApiError(400, f"context: run {name!r} stored no attention patterns")
    metrics = list(data.metrics)
    dx, dy = default_axes(data)
    x, y = _choice(query, "x", metrics, dx), _choice(query, "y", metrics, dy)
    if context and data.contexts[context].get("patterns") is None:
        data = _on_file(name, data, context, layer, head_, run_dir)
    ctx = data.contexts[context] if context else None
    tok = tokenizer if ctx and _decodes(tokenizer, ctx.get("ids") or []) else None
    tokens = ([tok.token_str(int(i)) for i in ctx["ids"]] if tok else ctx["tokens"]) if ctx else []
    iv = data.intervals or {}
    scores = {
        m: {
            "value": v[layer][head_] if _finite(v[layer][head_]) else None,
            "interval": iv[m][layer][head_] if iv.get(m) else None,
        }
        for m, v in data.metrics.items()
    }
    curve = data.gate_curve
    gate = {"step": curve["step"], "alpha": [a[layer][head_] for a in curve["alpha"]]} if curve else None
    return {
        "layer": layer,
        "head": head_,
        "role": (data.labels or [[None] * H] * L)[layer][head_],
        "context": context,
        "tokens": tokens,
        "pattern": ctx["patterns"][layer][head_] if ctx else None,
        "scores": scores,
        "gate_curve": gate,
        "x": x,
        "y": y,
        "detail": _fig_json(hf.head_detail(data, layer, head_, context, tokenizer=tok)),
        "scatter": _fig_json(hf.head_scatter(data, x, y, selected=(layer, head_))),
    }
