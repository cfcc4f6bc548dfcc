"""Plotly figures for SAEs and their features. Every surface (notebook, widget, viewer) calls
these; each takes plain results (lists, dicts, a FeatureTable) and never a model. Strings from a
run or a tokenizer (token labels, variant and metric names) pass through `text.plain` first:
plotly draws `<a href>` and a few other tags in names and tick labels."""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..corpus import Tokenizer
from ..sae.evaluate import FeatureTable
from .text import plain

LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), height=320)


def empty_figure(message: str) -> go.Figure:
    """A figure that says why there is nothing to draw (empty states never raise)."""
    fig = go.Figure()
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=14, color="#666")
    )
    fig.update_layout(**LAYOUT, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def training_curves(metrics: list[dict], keys: tuple[str, ...] = ("fvu", "l0", "dead_frac")) -> go.Figure:
    rows = [m for m in metrics if "fvu" in m]
    if not rows:
        return empty_figure("no training metrics logged yet")
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[plain(k) for k in keys])
    for i, key in enumerate(keys, start=1):
        fig.add_trace(
            go.Scatter(
                x=[m.get("tokens") for m in rows],
                y=[m.get(key) for m in rows],
                mode="lines",
                name=plain(key),
                showlegend=False,
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="tokens", row=1, col=i)
    fig.update_layout(**LAYOUT, title="SAE training")
    return fig


def density_histogram(log10_density: list[float], title: str = "Feature density") -> go.Figure:
    finite = [d for d in log10_density if d > -10]
    dead = len(log10_density) - len(finite)
    if not finite:
        return empty_figure("no feature fired on the evaluation tokens")
    fig = go.Figure(go.Histogram(x=finite, nbinsx=50, marker_color="#4c78a8"))
    fig.update_layout(
        **LAYOUT, title=f"{title} ({dead} never fired)", xaxis_title="log10 firing frequency", yaxis_title="features"
    )
    return fig


def l0_histogram(l0_hist: list[int]) -> go.Figure:
    if not l0_hist or sum(l0_hist) == 0:
        return empty_figure("no tokens evaluated")
    fig = go.Figure(go.Bar(x=list(range(len(l0_hist))), y=l0_hist, marker_color="#72b7b2"))
    fig.update_layout(**LAYOUT, title="Active latents per token (L0)", xaxis_title="L0", yaxis_title="tokens")
    return fig


def feature_histogram(table: FeatureTable, feature: int) -> go.Figure:
    counts = table.hist_counts[feature].tolist()
    if sum(counts) == 0:
        return empty_figure(f"feature {feature} never fires on the evaluation tokens")
    top = float(table.hist_max[feature])
    width = top / len(counts)
    fig = go.Figure(
        go.Bar(x=[(i + 0.5) * width for i in range(len(counts))], y=counts, width=width, marker_color="#f58518")
    )
    dens = float(table.density[feature])
    fig.update_layout(
        **LAYOUT,
        title=f"Feature {feature}: activations (density {dens:.2e}, log10 {math.log10(max(dens, 1e-10)):.2f})",
        xaxis_title="activation",
        yaxis_title="tokens",
    )
    return fig


def token_label(s: str) -> str:
    """A token as a tick label, quoted so that spaces show, escaped once: tokenizers' token_str
    already spells control bytes (ByteTokenizer's "\\t"), which repr() would escape a second time;
    only a token that still holds unprintable characters (a decoded BPE "\n") goes through repr."""
    return plain(f"'{s}'" if s.isprintable() else repr(s))


def logit_effects(table: FeatureTable, feature: int, tokenizer: Tokenizer) -> go.Figure:
    top = [tokenizer.token_str(int(t)) for t in table.logit_top[feature]]
    bottom = [tokenizer.token_str(int(t)) for t in table.logit_bottom[feature]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("promotes", "suppresses"))
    fig.add_trace(
        go.Bar(
            x=table.logit_top_values[feature].tolist()[::-1],
            y=[token_label(s) for s in top][::-1],
            orientation="h",
            marker_color="#54a24b",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=table.logit_bottom_values[feature].tolist()[::-1],
            y=[token_label(s) for s in bottom][::-1],
            orientation="h",
            marker_color="#e45756",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    fig.update_layout(**LAYOUT, title=f"Feature {feature}: direct logit effects")
    return fig


def correlated_features(table: FeatureTable, feature: int) -> go.Figure:
    """The feature's most correlated partners (Pearson r over the table's correlation sample), with
    how many sample tokens each pair fired together on: an r resting on a handful is weak evidence."""
    idx, val = table.corr_idx[feature].tolist(), table.corr_values[feature].tolist()
    cof = table.corr_cofires[feature].tolist()
    keep = [(i, v, k) for i, v, k in zip(idx, val, cof) if i >= 0 and not math.isnan(v)]
    if float(table.density[feature]) == 0:
        return empty_figure(f"feature {feature} never fires: no correlations")
    if not keep:
        return empty_figure(f"feature {feature} fires with no other feature in the correlation sample")
    n = int(table.corr_tokens)
    fig = go.Figure(
        go.Bar(
            x=[f"#{i}" for i, _, _ in keep],
            y=[v for _, v, _ in keep],
            marker_color="#b279a2",
            text=[f"{k} together" if k >= 0 else "" for _, _, k in keep],
            hovertemplate="%{x}: r = %{y:.3f}<br>%{text}<extra></extra>",
        )
    )
    over = f" over {n:,} tokens" if n > 0 else ""
    fig.update_layout(**LAYOUT, title=f"Feature {feature}: most correlated features{over}", yaxis_title="Pearson r")
    return fig


def contexts_html(table: FeatureTable, feature: int, tokenizer: Tokenizer) -> str:
    """Top-activating contexts as HTML, each token's background shaded by the feature's activation."""
    values = table.top_values[feature].tolist()
    if not values or values[0] <= 0:
        return f'<p class="empty">Feature {feature} never fires on the evaluation tokens.</p>'
    peak = values[0]
    rows = []
    for j, v in enumerate(values):
        if v <= 0:
            break
        seq, start = int(table.top_seq[feature, j]), int(table.context_start[feature, j])
        acts = table.context_acts[feature, j].tolist()
        toks = table.tokens[seq, start : start + len(acts)].tolist()
        spans = _shaded_tokens(toks, acts, peak, tokenizer, "245,133,24")
        rows.append(f'<div class="ctx"><span class="val">{v:.2f}</span>{spans}</div>')
    return "\n".join(rows)


def prompt_html(tokens: list[int], acts: list[float], tokenizer: Tokenizer) -> str:
    """A user's prompt with each token shaded by one feature's activation."""
    peak = max([a for a in acts if a > 0], default=1.0)
    return f'<div class="ctx">{_shaded_tokens(tokens, acts, peak, tokenizer, "76,120,168")}</div>'


def _shaded_tokens(tokens: list[int], acts: list[float], peak: float, tokenizer: Tokenizer, rgb: str) -> str:
    """Token spans whose background opacity is activation / peak (clipped to [0, 1])."""
    return "".join(
        f'<span class="tok" style="background: rgba({rgb},{max(0.0, min(1.0, a / peak)):.2f})" '
        f'title="{a:.3f}">{html.escape(tokenizer.token_str(t))}</span>'
        for t, a in zip(tokens, acts)
    )


def variants_bar(rows: list[dict], metric: str = "fvu") -> go.Figure:
    """One metric across SAE variants (e.g. the benchmark's rows)."""
    if not rows:
        return empty_figure("no variants to compare")
    fig = go.Figure(
        go.Bar(x=[plain(r["variant"]) for r in rows], y=[r.get(metric) for r in rows], marker_color="#4c78a8")
    )
    fig.update_layout(**LAYOUT, title=plain(f"{metric} by variant"))
    return fig
