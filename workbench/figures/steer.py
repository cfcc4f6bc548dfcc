"""Plotly figures of interventions and their measured effect (workbench.steer.data): concept gain
against KL for latents and the difference-of-means baseline on one plot, the next-token bars before
and after, the output scores' histogram, and the generations side by side (HTML). Plain results
in, never a model."""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from ..steer.data import ConceptSteer, Generation, NextTokenChange
from .text import plain

LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), height=340)
BASELINE_COLOR = "#111827"
LATENT_COLORS = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2")


def _empty(message: str) -> go.Figure:
    from .sae import empty_figure

    return empty_figure(message)


def gain_kl_figure(concept: ConceptSteer) -> go.Figure:
    """Concept gain against KL cost: one line per selected latent, the input-selected latent dashed,
    the difference-of-means baseline in black; vertical guides at the compared KLs."""
    curves = list(concept.latents) + ([concept.input_latent] if concept.input_latent else [])
    if not curves and concept.baseline is None:
        return _empty("no steering curves measured")
    fig = go.Figure()
    for i, c in enumerate(curves):
        dashed = c is concept.input_latent
        score = "" if c.output_score is None else f" (output score {c.output_score:.2f})"
        fig.add_trace(
            go.Scatter(
                x=c.kl,
                y=c.gain,
                mode="lines+markers",
                name=plain(c.label + score),
                line=dict(color=LATENT_COLORS[i % len(LATENT_COLORS)], dash="dash" if dashed else "solid"),
                customdata=c.strengths,
                hovertemplate="c = %{customdata:.2f}<br>KL %{x:.3f}<br>gain %{y:.3f}<extra></extra>",
            )
        )
    b = concept.baseline
    fig.add_trace(
        go.Scatter(
            x=b.kl,
            y=b.gain,
            mode="lines+markers",
            name=plain(b.label),
            line=dict(color=BASELINE_COLOR, width=3),
            customdata=b.strengths,
            hovertemplate="c = %{customdata:.2f}<br>KL %{x:.3f}<br>gain %{y:.3f}<extra></extra>",
        )
    )
    for kl in concept.kl_points:
        fig.add_vline(x=kl, line=dict(color="#9ca3af", dash="dot"))
    fig.update_layout(
        **LAYOUT,
        title=plain(f"{concept.name}: concept gain against KL"),
        xaxis=dict(title="KL(clean || steered) on unrelated text (nats/token)", type="log"),
        yaxis_title="gain: Δ log p(target set) (nats)",
    )
    return fig


def next_token_bars(change: NextTokenChange, tokenizer=None) -> go.Figure:
    """p(next token) before and after, on the tokens most likely under either."""
    if not change.tokens:
        return _empty("no next-token distribution")
    label = tokenizer.token_str if tokenizer is not None else str
    names = [plain(label(t)) for t in change.tokens]
    fig = go.Figure(
        [
            go.Bar(x=names, y=change.before, name="before", marker_color="#9ca3af"),
            go.Bar(x=names, y=change.after, name="after", marker_color="#2563eb"),
        ]
    )
    fig.update_layout(
        **LAYOUT,
        barmode="group",
        title=f"next token, before and after (KL {change.kl:.3f} nats)",
        yaxis_title="probability",
    )
    return fig


def output_score_histogram(scores: list[float], marked: dict[str, float] | None = None) -> go.Figure:
    """Every latent's output score, with the selected latents marked."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return _empty("no output scores")
    fig = go.Figure(go.Histogram(x=finite, nbinsx=60, marker_color="#4c78a8", name="latents"))
    for name, s in (marked or {}).items():
        fig.add_vline(x=s, line=dict(color="#d97706"), annotation_text=plain(name))
    fig.update_layout(
        **LAYOUT,
        title=f"Output score of {len(finite)} latents",
        xaxis_title="rise of log p(logit-lens top tokens) when amplified (nats)",
        yaxis_title="latents",
        showlegend=False,
    )
    return fig


def generations_html(gens: list[Generation]) -> str:
    """Each prompt's clean and steered continuation in two columns (text escaped)."""
    if not gens:
        return '<p class="empty">no generations</p>'
    rows = "".join(
        "<tr>" + "".join(f"<td class='ctx'>{html.escape(t)}</td>" for t in (g.prompt, g.clean, g.steered)) + "</tr>"
        for g in gens
    )
    return f'<table class="generations"><tr><th>prompt</th><th>clean</th><th>steered</th></tr>{rows}</table>'
