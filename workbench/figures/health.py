"""Plotly figures of a training run's health (workbench/sae/health.py writes it into metrics.jsonl):
one builder, `health_figures`, for the notebook, the widget (widgets/health.py) and the viewer's
live pane (viewer/health.py). It takes metrics lines as read from disk, never a model, and draws
an empty state instead of raising while a run has not reported yet."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .text import plain

LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), height=300)
FIGURES = ("density", "l0", "timeline")  # the keys of health_figures, the pane's div ids follow them
TIMELINE = (  # (health key, panel title, panel); the panels share the step axis
    ("dead", "dead latents", 1),
    ("dense", "dense latents", 1),
    ("l2_ratio", "‖x̂‖/‖x‖", 2),
    ("scale_fit", "best rescale of x̂", 2),
    ("max_dec_cos", "largest decoder cosine", 3),
    ("adam_step", "Adam step / default lr", 4),
    ("l0_infer", "L0 (inference)", 5),
    ("l0_target", "L0 target", 5),
)
PANELS = ("latents", "shrinkage", "decoder cosine", "learning rate", "L0")


def health_lines(metrics: list[dict]) -> list[dict]:
    """The metrics lines that carry a health report, in step order."""
    return [m for m in metrics if isinstance(m.get("health"), dict)]


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=14, color="#666")
    )
    fig.update_layout(**LAYOUT, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def density_figure(health: dict[str, Any], step: int) -> go.Figure:
    """The latest report's log10-density histogram (fixed bins), latents that never fired apart."""
    h = health.get("density_hist") or {}
    counts, lo, width = h.get("counts") or [], h.get("lo", -7.0), h.get("width", 0.25)
    if not counts:
        return _empty("no density histogram in this report")
    centers = [lo + width * (i + 0.5) for i in range(len(counts))]
    fig = go.Figure(go.Bar(x=centers, y=counts, width=width, marker_color="#4c78a8", name="latents"))
    never = int(h.get("never", 0))
    fig.update_layout(
        **LAYOUT,
        title=f"Firing density at step {step} ({never} latents silent over the window)",
        xaxis_title="log10 firing density",
        yaxis_title="latents",
        bargap=0.05,
    )
    return fig


def l0_figure(health: dict[str, Any], step: int) -> go.Figure:
    """The latest report's per-token L0 histogram (the training selection's, or for a report without
    one the inference encoding's: its l0_hist_from), with the rule's target L0."""
    hist = health.get("l0_hist") or []
    if not hist:
        return _empty("no L0 histogram in this report")
    fig = go.Figure(go.Bar(x=list(range(len(hist))), y=hist, marker_color="#54a24b", name="tokens"))
    target = health.get("l0_target")
    if target is not None:
        fig.add_vline(x=target, line_dash="dash", line_color="#e45756", annotation_text=f"target {target:g}")
    train = health.get("l0_hist_from") == "train"
    mean = health.get("l0_train" if train else "l0_infer")
    title = f"L0 per token at step {step}, {'training selection' if train else 'inference'}"
    title += f" (mean {mean:.2f})" if mean is not None else ""
    fig.update_layout(**LAYOUT, title=title, xaxis_title="active latents", yaxis_title="tokens", bargap=0.05)
    return fig


def timeline_figure(lines: list[dict]) -> go.Figure:
    """Every report's scalars over the steps, one panel per subject, alarms marked where raised."""
    if not lines:
        return _empty("no health report yet")
    fig = make_subplots(rows=len(PANELS), cols=1, shared_xaxes=True, subplot_titles=PANELS, vertical_spacing=0.05)
    steps = [m.get("step") for m in lines]
    for key, name, row in TIMELINE:
        ys = [m["health"].get(key) for m in lines]
        if all(y is None for y in ys):
            continue
        fig.add_trace(go.Scatter(x=steps, y=ys, mode="lines+markers", name=name), row=row, col=1)
    raised = [(m.get("step"), a) for m in lines for a in m.get("alarms") or [] if isinstance(a, dict)]
    for step in sorted({s for s, _ in raised}):
        fig.add_vline(x=step, line_color="#e45756", line_width=1)
    if raised:
        fig.add_trace(
            go.Scatter(
                x=[s for s, _ in raised],
                y=[0] * len(raised),
                mode="markers",
                marker=dict(color="#e45756", symbol="x", size=10),
                name="alarm",
                text=[plain(f"{a.get('name')}: {a.get('message')}") for _, a in raised],
                hoverinfo="text+x",
            ),
            row=len(PANELS),
            col=1,
        )
    fig.update_xaxes(title_text="step", row=len(PANELS), col=1)
    fig.update_layout(**{**LAYOUT, "height": 170 * len(PANELS)}, title="Training health")
    return fig


def health_figures(metrics: list[dict]) -> dict[str, go.Figure]:
    """The pane's figures from a run's metrics lines (any lines: those without a report are
    skipped): the latest density and L0 histograms and the timeline, keyed as FIGURES."""
    lines = health_lines(metrics)
    if not lines:
        empty = "no health report yet: the monitor reports every HealthConfig.every steps"
        return {k: _empty(empty) for k in FIGURES}
    last = lines[-1]
    return {
        "density": density_figure(last["health"], last.get("step", 0)),
        "l0": l0_figure(last["health"], last.get("step", 0)),
        "timeline": timeline_figure(lines),
    }


def alarms_html(metrics: list[dict]) -> str:
    """Every alarm raised so far, newest first, as an HTML list (messages escaped)."""
    raised = [(m.get("step"), a) for m in metrics for a in m.get("alarms") or [] if isinstance(a, dict)]
    if not raised:
        return '<p class="empty" id="health-no-alarms">No alarm raised.</p>'
    items = "".join(
        f"<li><b>{html.escape(str(a.get('name')))}</b> at step {html.escape(str(step))}: "
        f"{html.escape(str(a.get('message')))}</li>"
        for step, a in reversed(raised)
    )
    return f'<ul id="health-alarms" class="error">{items}</ul>'
