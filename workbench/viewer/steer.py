"""Steering in the viewer: a steer run's page (summary, render), the JSON API that steers one
feature of an SAE run live, and the feature page's steer section (strength slider, prompt, run,
before/after), all drawn by the builders of workbench.figures.steer.

    POST /api/run/<name>/steer   {"feature": int, "strength": float, "prompt": str}: h + c·W_dec[f]
                                 at the SAE's hook; next-token bars before/after and generations
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from ..figures import steer as stf
from .pages import figure_div, js_literal
from .store import ApiError, RunError, RunStore

KIND = "steer"
MAX_STRENGTH = 1000.0  # |c| beyond this only overflows the logits
MAX_PROMPT = 2000  # characters
GEN_TOKENS = 32


def summary(res) -> str:
    parts = []
    for c in res.concepts:
        kl = max(c.kl_points) if c.kl_points else 0.5
        ratio = c.ratio(kl)
        parts.append(
            f"{c.name}: best latent / baseline at KL {kl:g} = {'n/a' if math.isnan(ratio) else f'{ratio:.2f}'}"
        )
    return "; ".join(parts) or "no concepts steered"


def _gain_table(res) -> str:
    rows = []
    for c in res.concepts:
        for s in [*c.latents, *([c.input_latent] if c.input_latent else []), c.baseline]:
            cells = "".join(f"<td>{s.gain_at(k):.3f}</td>" for k in c.kl_points)
            score = "" if s.output_score is None else f"{s.output_score:.3f}"
            rows.append(
                f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(s.label)}</td><td>{score}</td>{cells}</tr>"
            )
    kls = res.concepts[0].kl_points if res.concepts else []
    head = "".join(f"<th>gain @ KL {k:g}</th>" for k in kls)
    return (
        f'<table id="steer-gains"><tr><th>concept</th><th>direction</th><th>output score</th>{head}</tr>'
        f"{''.join(rows)}</table>"
    )


def render(name: str, res) -> str:
    body = (
        f"<p>Steered at <code>{html.escape(res.hook_name)}</code> (mean |h| = {res.residual_norm:.2f}) with the "
        f"latents of SAE run <code>{html.escape(res.sae_run)}</code>. Gain: Δ log p(target set) on held-out text; "
        "cost: KL(clean || steered) on other held-out text. The difference-of-means baseline is scaled to the "
        "latents' norm.</p>"
    )
    body += _gain_table(res)
    body += figure_div(stf.output_score_histogram(res.output_score), "steer-scores")
    for i, c in enumerate(res.concepts):
        body += f"<h2>{html.escape(c.name)}</h2>" + figure_div(stf.gain_kl_figure(c), f"steer-curve-{i}")
        if i < len(res.next_token):
            body += figure_div(stf.next_token_bars(res.next_token[i]), f"steer-next-{i}")
        if i < len(res.ablations):
            a = res.ablations[i]
            body += (
                f'<p class="ablation">Zero-ablating latent {a.latent}: loss change {a.loss_change_fires:+.4f} nats '
                f"where it fires ({a.n_fires} positions), {a.loss_change_quiet:+.4f} where it does not "
                f"({a.n_quiet}).</p>"
            )
    return body + "<h2>Generations</h2>" + stf.generations_html(res.generations)


# --- the live API ----------------------------------------------------------------------------------


def parse_body(body: Any, d_sae: int) -> tuple[int, float, str]:
    """(feature, strength, prompt) from the parsed JSON body; ApiError(400) names what is wrong."""
    from .api import check_text

    if not isinstance(body, dict) or set(body) != {"feature", "strength", "prompt"}:
        raise ApiError(
            400, "expected a JSON object with exactly the keys feature (int), strength (number), prompt (str)"
        )
    f, c, prompt = body["feature"], body["strength"], body["prompt"]
    if not isinstance(f, int) or isinstance(f, bool):
        raise ApiError(400, f"feature must be an integer, got {type(f).__name__}")
    if not 0 <= f < d_sae:
        raise ApiError(400, f"feature must lie in [0, {d_sae}), got {f}")
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not math.isfinite(c) or abs(c) > MAX_STRENGTH:
        raise ApiError(400, f"strength must be a finite number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}], got {c!r}")
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string")
    if len(prompt) > MAX_PROMPT:
        raise ApiError(400, f"prompt is {len(prompt)} characters long; at most {MAX_PROMPT}")
    check_text(prompt, "prompt")
    return f, float(c), prompt


def steer_response(model, sae, tokenizer, body: Any, gen_tokens: int = GEN_TOKENS) -> dict:
    """Steer feature f by h + c·W_dec[f] at the SAE's hook on the prompt: the next-token change (and
    its figure) and the greedy generations, clean and steered. What the API, the widget and the
    feature page's slider all show."""
    import torch

    from ..steer.effects import generate_pair, next_token_change
    from ..steer.intervene import Intervention, hooks

    f, c, prompt = parse_body(body, sae.cfg.d_sae)
    if not tokenizer.encode(prompt):
        raise ApiError(400, "prompt encodes to no tokens")
    # A transcoder's decoder writes at its target hook (the MLP output), and its rows are not unit norm.
    at = sae.cfg.target_hook or sae.cfg.hook_name
    with torch.no_grad():
        direction = sae.W_dec[f].detach()
        if sae.cfg.transcoder:
            direction = direction / direction.norm().clamp_min(1e-12)
        fh = hooks(Intervention("add", at, strength=c, direction=direction))
        change = next_token_change(model, tokenizer, prompt, fh)
        gen = generate_pair(model, tokenizer, prompt, fh, gen_tokens)
    fig = stf.next_token_bars(change, tokenizer)
    return {
        "feature": f,
        "strength": c,
        "hook_name": at,
        "next_token": change.to_dict(),
        "labels": [tokenizer.token_str(t) for t in change.tokens],
        "generation": gen.to_dict(),
        "figure": json.loads(fig.to_json()),
        "html": stf.generations_html([gen]),
    }


def steer(store: RunStore, name: str, body: Any) -> dict:
    """The POST /api/run/<name>/steer handler: an SAE run's model and SAE, then `steer_response`."""
    from ..runs import SAE_WEIGHTS_FILE
    from .api import run_path

    d = run_path(store, name)
    if not (d / SAE_WEIGHTS_FILE).exists():
        raise ApiError(400, f"run {name!r} has no SAE ({SAE_WEIGHTS_FILE} is missing): steering needs an SAE run")
    try:
        model, sae = store.model_and_sae(name)
        tok = store.tokenizer(name)
    except RunError as e:
        raise ApiError(500, f"run {name!r}: {e}") from e
    return steer_response(model, sae, tok, body)


def feature_steer_section(name: str, feature: int, prompt: str = "def f(x):\n    return ") -> str:
    """The feature page's steer controls: a strength slider, the prompt, a run button, and the
    before/after bars and generations the API returns (drawn with textContent and Plotly). The
    feature steered is the feature browser's current one (its #feature input) when the page has
    one, else `feature`."""
    return f"""
<section id="steer"><h2>Steer this feature</h2>
<div class="controls"><label for="steer-strength">strength c</label>
<input type="range" id="steer-strength" min="-40" max="40" step="0.5" value="8">
<output id="steer-strength-value">8</output>
<button id="steer-run">steer</button></div>
<textarea id="steer-prompt">{html.escape(prompt)}</textarea>
<p id="steer-error" class="error" hidden></p>
<div id="steer-bars" class="fig"></div><div id="steer-gen"></div></section>
<script>
(function() {{
  const url = `/api/run/${{encodeURIComponent({js_literal(name)})}}/steer`;
  const feature = () => {{ const el = document.getElementById("feature");
    return el ? Number(el.value) : {int(feature)}; }};
  const s = document.getElementById("steer-strength"), out = document.getElementById("steer-strength-value");
  s.addEventListener("input", () => {{ out.textContent = s.value; }});
  document.getElementById("steer-run").addEventListener("click", async () => {{
    const err = document.getElementById("steer-error"); err.hidden = true;
    const body = {{feature: feature(), strength: Number(s.value),
      prompt: document.getElementById("steer-prompt").value}};
    const r = await fetch(url, {{method: "POST", headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify(body)}});
    const d = await r.json();
    if (!r.ok) {{ err.textContent = d.error || ("HTTP " + r.status); err.hidden = false; return; }}
    Plotly.react("steer-bars", d.figure.data, d.figure.layout, {{responsive: true, displaylogo: false}});
    const g = document.getElementById("steer-gen"); g.replaceChildren();
    for (const [k, v] of [["clean", d.generation.clean], ["steered", d.generation.steered]]) {{
      const p = document.createElement("p"); p.className = "ctx"; p.dataset.which = k;
      p.textContent = k + ": " + v; g.appendChild(p);
    }}
  }});
}})();
</script>"""
