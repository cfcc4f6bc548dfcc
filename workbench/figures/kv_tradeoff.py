"""The KV-cache trade-off figure: accuracy and loss against the KV-cache fraction kept, one line
per head ranking, the random rankings' min-max band shaded (workbench.probes.kv_tradeoff)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .sae import LAYOUT, empty_figure

if TYPE_CHECKING:
    from ..probes.kv_tradeoff import TradeoffResult

PANELS = (
    ("needle_acc", "needle copy accuracy"),
    ("passkey_token_acc", "passkey answer-token accuracy"),
    ("text_loss", "natural-text loss (nats)"),
)
LABELS = {
    "retrieval": "Wu retrieval score",
    "duo_alpha": "DuoAttention α",
    "razor": "RazorAttention rule",
    "streaming_reversed": "streaming mass (reversed)",
    "tl_induction": "TL induction score",
    "causal_delta_loss": "causal check Δloss",
}
BAND = "rgba(128,128,128,0.22)"


def tradeoff_figure(result: TradeoffResult | dict, panels: tuple[tuple[str, str], ...] = PANELS) -> go.Figure:
    """One subplot per metric: x = KV cache kept (fraction of all heads full), one line per
    ranking, the random rankings' mean (dashed) and min-max band (shaded)."""
    d = result if isinstance(result, dict) else result.to_dict()
    if not d.get("fractions") or not d.get("random_band"):
        return empty_figure("no trade-off curve measured")
    x = d["kv_fraction"]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels], horizontal_spacing=0.07)
    hover = [f"{p:g}% heads full ({n})" for p, n in zip(d["fractions"], d["n_full"])]
    for col, (metric, _) in enumerate(panels, start=1):
        band = d["random_band"][metric]
        first = col == 1
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1],
                y=band["max"] + band["min"][::-1],
                mode="lines",
                fill="toself",
                fillcolor=BAND,
                line=dict(width=0),
                hoverinfo="skip",
                legendgroup="random",
                showlegend=first,
                name=f"random rankings ({len(d['random_curves'])} seeds, min-max)",
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=band["mean"],
                mode="lines",
                line=dict(color="gray", dash="dash"),
                legendgroup="random",
                showlegend=False,
                name="random mean",
                text=hover,
                hovertemplate="%{text}<br>KV %{x:.3f}<br>random mean %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        for i, (name, curve) in enumerate(d["curves"].items()):
            fig.add_trace(
                go.Scatter(
                    x=curve.get("kv_fraction", x),
                    y=curve[metric],
                    mode="lines+markers",
                    name=LABELS.get(name, name),
                    legendgroup=name,
                    showlegend=first,
                    text=hover,
                    line=dict(color=_color(i)),
                    hovertemplate=f"{LABELS.get(name, name)}<br>%{{text}}<br>KV %{{x:.3f}}<br>"
                    f"%{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="KV cache kept (fraction of full)", range=[0, 1.02], row=1, col=col)
        if metric != "text_loss":
            fig.update_yaxes(range=[-0.02, 1.02], row=1, col=col)
    comp = " + compensation token" if d.get("config", {}).get("compensation") else ""
    cfg = d.get("config", {})
    fig.update_layout(
        **{**LAYOUT, "height": 380},
        title=f"KV-cache trade-off: top heads full, the rest sink {cfg.get('sink', '?')} + window "
        f"{cfg.get('window', '?')}{comp} (T = {d.get('seq_len', '?')})",
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def _color(i: int) -> str:
    palette = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6")
    return palette[i % len(palette)]
