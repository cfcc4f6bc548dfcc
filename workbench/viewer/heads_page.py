"""A head-roles run's page (`HeadsRunResult`), as a list of sections, and its APIs.

The page is `render`'s list of section builders, each `(name, res) -> html`: the roles and their
intervals, the head explorer (`heads_explorer`: every head over two chosen metrics; clicking a head
asks `head` for its attention pattern, scores and gate curve), the KV-cache trade-off, the rankings'
agreement, the heads over training and the example attention patterns. The shape checks of
results.json's fields are in `heads_checks`. A run without issue 21's optional fields renders each
of their sections as "not computed"; a section that results.json holds but that did not type-check
(`HeadsRunResult.unreadable`) shows its fault in its place while the other sections draw."""

from __future__ import annotations

import html
import json

from ..figures import heads as hf
from ..figures import probes as pf
from ..kinds.heads import HeadsRunResult
from ..runs import RESULTS_FILE
from .heads_checks import SHAPE_ERRORS, DataError, _int_arg, check_grid, check_roles, check_section, not_computed
from .heads_explorer import _fig_json, _options, explorer_section, head
from .pages import figure_div, js_literal, on_ready
from .store import ApiError

__all__ = ["KIND", "SECTIONS", "attention", "explorer_section", "head", "render", "summary"]

KIND = "heads"


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
    from ..figures.kv_tradeoff import passkey_metric, tradeoff_figure, tradeoff_table_html

    d = res.kv_tradeoff.to_dict()
    # the verdicts (Holm-adjusted p against random picks of as many heads) on the two accuracies
    verdict = "".join(tradeoff_table_html(d, m) for m in (passkey_metric(d), "needle_acc"))
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
