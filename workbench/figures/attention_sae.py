"""Plotly figures for attention-output (hook_z) SAEs: which heads a latent writes through, and which
source tokens drive it (direct feature attribution, `workbench.sae.attention`). Builders take plain
lists, never a model; token strings pass through `figures.sae.token_label` (escaped for plotly)."""

from __future__ import annotations

import plotly.graph_objects as go

from .sae import LAYOUT, empty_figure, token_label
from .text import plain


def head_shares_bar(shares: list[float], latent: int, layer: int, highlight: int | None = None) -> go.Figure:
    """A latent's share of its squared decoder norm on each head of `layer` (bars sum to 1);
    `highlight` colours one head (e.g. the head the explorer has chosen)."""
    if not shares or sum(shares) <= 0:
        return empty_figure(f"latent {latent} has a zero decoder row: no head shares")
    names = [f"L{layer}H{h}" for h in range(len(shares))]
    colors = ["#e45756" if h == highlight else "#4c78a8" for h in range(len(shares))]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=shares,
            marker_color=colors,
            text=[f"{s:.2f}" for s in shares],
            textposition="outside",
            hovertemplate="%{x}: %{y:.3f} of ‖W_dec‖²<extra></extra>",
        )
    )
    fig.update_layout(
        **LAYOUT,
        title=f"Latent {latent}: heads it writes through (share of ‖W_dec‖²)",
        yaxis=dict(title="share", range=[0, 1.1]),
    )
    return fig


def dfa_strip(
    tokens: list[str],
    by_head: list[list[float]],
    dest: int,
    latent: int,
    layer: int,
    *,
    value: float | None = None,
    source: int | None = None,
    rest: float = 0.0,
    bias: float | None = None,
) -> go.Figure:
    """DFA of one latent at destination `dest` over the source tokens of a context, as a token heat
    strip: the top row sums the heads, the rows below split it per head (red drives the latent up,
    blue down). `tokens`: the context's token strings; `by_head`: [n_heads][len(tokens)] terms;
    `value`: the latent's activation at `dest`; `source`: a known source to mark (planted contexts);
    `rest`/`bias`: the DFA from before the context and the bias term, quoted in the title."""
    if not tokens or not by_head:
        return empty_figure(f"latent {latent}: no context to attribute")
    if any(len(row) != len(tokens) for row in by_head) or not 0 <= dest < len(tokens):
        raise ValueError(
            f"by_head: expected [n_heads][{len(tokens)}] terms and 0 <= dest < {len(tokens)}, "
            f"got rows of {sorted({len(r) for r in by_head})} and dest={dest}"
        )
    total = [sum(col) for col in zip(*by_head)]
    z = [total] + by_head
    rows = ["all heads"] + [f"L{layer}H{h}" for h in range(len(by_head))]
    labels = [f"{i}:{token_label(t)}" for i, t in enumerate(tokens)]
    peak = max((abs(v) for row in z for v in row), default=0.0) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z[::-1],
            x=labels,
            y=rows[::-1],
            zmin=-peak,
            zmax=peak,
            colorscale="RdBu_r",
            colorbar=dict(title="DFA"),
            hovertemplate="source %{x}<br>%{y}: %{z:.3f}<extra></extra>",
        )
    )
    n = len(rows)
    fig.add_shape(  # the destination's column
        type="rect", x0=dest - 0.5, x1=dest + 0.5, y0=-0.5, y1=n - 0.5, line=dict(color="#222", width=2)
    )
    if source is not None and 0 <= source < len(tokens):
        fig.add_annotation(x=source, y=n - 1, text="known source", showarrow=True, ay=-30, yshift=8)
    parts = [f"Latent {latent} at {plain(labels[dest])}"]
    if value is not None:
        parts.append(f"activation {value:.3f}")
    if bias is not None:
        parts.append(f"before the context {rest:+.3f}, bias {bias:+.3f}")
    fig.update_layout(
        **{**LAYOUT, "height": 140 + 28 * n},
        title=": ".join(parts[:1]) + (" (" + "; ".join(parts[1:]) + ")" if parts[1:] else ""),
        xaxis=dict(tickangle=-60, automargin=True),
        yaxis=dict(automargin=True),
    )
    return fig


def head_latents_bar(latents: list[int], shares: list[float], layer: int, head: int, run: str = "") -> go.Figure:
    """The latents that write through head (layer, head), by their share on it (the head explorer's list)."""
    if not latents:
        return empty_figure(f"no latent writes mostly through L{layer}H{head}")
    fig = go.Figure(
        go.Bar(
            x=shares[::-1],
            y=[f"latent {f}" for f in latents][::-1],
            orientation="h",
            marker_color="#54a24b",
            hovertemplate="%{y}: %{x:.3f} of ‖W_dec‖²<extra></extra>",
        )
    )
    where = f" ({plain(run)})" if run else ""
    fig.update_layout(
        **{**LAYOUT, "height": max(220, 90 + 18 * len(latents))},
        title=f"Latents that write through L{layer}H{head}{where}",
        xaxis=dict(title="share of ‖W_dec‖² on the head", range=[0, 1]),
    )
    return fig
