"""Plotly figures for the three probes (sparsity, head roles, arrow of time)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .sae import LAYOUT, empty_figure


def sparsity_by_layer(active_frac: list[float], std: list[float], threshold: float = 0.0,
                      title: str = "MLP activation sparsity") -> go.Figure:
    if not active_frac:
        return empty_figure("no MLP layers measured")
    fig = go.Figure(go.Bar(x=[f"L{i}" for i in range(len(active_frac))], y=[100 * a for a in active_frac],
                           error_y=dict(type="data", array=[100 * s for s in std]), marker_color="#4c78a8"))
    crit = "nonzero" if threshold == 0 else f"|a| > {threshold:g}"
    fig.update_layout(**LAYOUT, title=f"{title}: % of neurons {crit} per token", yaxis_title="% active",
                      yaxis_range=[0, 100])
    return fig


def sparsity_over_training(over: dict, checkpoint: int | None = None) -> go.Figure:
    """Active fraction per layer against training step; `checkpoint` highlights one step."""
    steps, fracs = over.get("steps", []), over.get("active_frac", [])
    if not steps:
        return empty_figure("no checkpoints saved during training")
    fig = go.Figure()
    for l in range(len(fracs[0])):
        fig.add_trace(go.Scatter(x=steps, y=[100 * f[l] for f in fracs], mode="lines+markers", name=f"layer {l}"))
    if checkpoint is not None and 0 <= checkpoint < len(steps):
        fig.add_vline(x=steps[checkpoint], line_dash="dot", line_color="#888")
    fig.update_layout(**LAYOUT, title="Sparsity emerging over training", xaxis_title="training step",
                      yaxis_title="% active", yaxis_range=[0, 100])
    return fig


def neuron_frequencies(neuron_freq: list[list[float]]) -> go.Figure:
    if not neuron_freq:
        return empty_figure("no MLP layers measured")
    fig = go.Figure()
    for l, freq in enumerate(neuron_freq):
        fig.add_trace(go.Histogram(x=freq, name=f"layer {l}", opacity=0.6, nbinsx=40))
    fig.update_layout(**LAYOUT, barmode="overlay", title="Per-neuron firing frequency",
                      xaxis_title="fraction of tokens", yaxis_title="neurons")
    return fig


def topk_curve(res: dict) -> go.Figure:
    if not res.get("ks"):
        return empty_figure("no top-k intervention measured")
    fig = go.Figure(go.Scatter(x=res["ks"], y=res["delta"], mode="lines+markers"))
    fig.update_layout(**LAYOUT, title=f"Keeping only the top-k of {res['d_mlp']} MLP activations",
                      xaxis_title="k", yaxis_title="loss increase (nats)", xaxis_type="log")
    return fig


def head_role_map(roles: dict) -> go.Figure:
    """Layer × head heatmaps of retrieval and streaming scores, role in the hover text."""
    r, s, labels = roles.get("retrieval"), roles.get("streaming"), roles.get("labels")
    if not r:
        return empty_figure("no heads measured")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("retrieval score", "streaming score"))
    text = [[f"{lab}" for lab in row] for row in labels]
    heads = [f"H{h}" for h in range(len(r[0]))]
    layers = [f"L{l}" for l in range(len(r))]
    fig.add_trace(go.Heatmap(z=r, x=heads, y=layers, text=text, zmin=0, zmax=1, colorscale="Oranges",
                             hovertemplate="%{y} %{x}: %{z:.2f} (%{text})<extra></extra>", showscale=False), 1, 1)
    fig.add_trace(go.Heatmap(z=s, x=heads, y=layers, text=text, zmin=0, zmax=1, colorscale="Blues",
                             hovertemplate="%{y} %{x}: %{z:.2f} (%{text})<extra></extra>"), 1, 2)
    cfg = roles.get("config", {})
    fig.update_layout(**LAYOUT, title=f"Head roles (retrieval ≥ {cfg.get('retrieval_threshold')}, "
                      f"streaming ≥ {cfg.get('streaming_threshold')})")
    return fig


def causal_check(roles: dict) -> go.Figure:
    d = roles.get("delta_loss")
    if not d:
        return empty_figure("no causal check measured")
    fig = go.Figure(go.Heatmap(z=d, x=[f"H{h}" for h in range(len(d[0]))], y=[f"L{l}" for l in range(len(d))],
                               colorscale="Reds", hovertemplate="%{y} %{x}: Δloss %{z:.3f}<extra></extra>"))
    fig.update_layout(**LAYOUT, title="Copy loss increase when a head sees only sink + window")
    return fig


def attention_pattern(pattern: list[list[float]], token_strs: list[str], title: str = "Attention pattern") -> go.Figure:
    if not pattern:
        return empty_figure("no pattern")
    labels = [f"{i}:{t}" for i, t in enumerate(token_strs)]
    fig = go.Figure(go.Heatmap(z=pattern, x=labels, y=labels, colorscale="Viridis", zmin=0, zmax=1,
                               hovertemplate="query %{y} → key %{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(**{**LAYOUT, "height": 480}, title=title, yaxis_autorange="reversed",
                      xaxis_title="key", yaxis_title="query")
    return fig


def arrow_curves(curves: dict, title: str = "Validation loss over training") -> go.Figure:
    if not curves or not any(c.get("step") for c in curves.values()):
        return empty_figure("no loss curves logged")
    fig = go.Figure()
    for direction, c in curves.items():
        fig.add_trace(go.Scatter(x=c["step"], y=c["val_loss"], mode="lines+markers", name=direction))
    fig.update_layout(**LAYOUT, title=title, xaxis_title="step", yaxis_title="loss (nats/token)")
    return fig


def arrow_gaps(results: dict[str, dict]) -> go.Figure:
    """Relative gap (backward − forward) / forward with its 95% interval, per dataset."""
    if not results:
        return empty_figure("no arrow-of-time results")
    names = list(results)
    gaps = [100 * results[n]["gap"] for n in names]
    lo = [100 * (results[n]["gap"] - results[n]["gap_ci95"][0]) for n in names]
    hi = [100 * (results[n]["gap_ci95"][1] - results[n]["gap"]) for n in names]
    fig = go.Figure(go.Bar(x=names, y=gaps, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                           marker_color=["#54a24b" if g > 0 else "#e45756" for g in gaps]))
    fig.add_hline(y=0, line_color="#444")
    fig.update_layout(**LAYOUT, title="Arrow of time: (L_backward − L_forward) / L_forward, 95% CI",
                      yaxis_title="gap (%)")
    return fig
