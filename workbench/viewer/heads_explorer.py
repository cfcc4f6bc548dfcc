"""The head explorer's section of the head-roles page and its API (GET /api/run/<name>/head).

The section draws every head over two chosen metrics (workbench.figures.heads.head_scatter, the
same builder as the notebook widget); a click on a head, or the layer/head/context pickers, fetch
its detail (attention pattern on a stored context, scores with intervals, gate curve) from `head`.
Patterns held in the run's patterns file are read one head at a time (`_on_file`)."""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path

from ..figures import heads as hf
from ..kinds.heads import HeadsRunResult
from ..probes.heads_data import ExplorerData, PatternsError, load_pattern
from ..runs import RESULTS_FILE
from .heads_checks import SHAPE_ERRORS, DataError, _choice, _int_arg, check_explorer, check_section, not_computed
from .pages import js_literal, on_ready
from .store import ApiError


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


def _decodes(tokenizer, ids: list[int]) -> bool:
    """Whether `tokenizer` can label these ids (else the labels stored at build time are used)."""
    if tokenizer is None or not ids:
        return False
    vocab = getattr(tokenizer, "vocab_size", None)  # a byte tokenizer labels any id without raising
    if isinstance(vocab, int) and max(int(i) for i in ids) >= vocab:
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
