"""The KV-cache trade-off figure and table: accuracy and loss against the KV-cache fraction kept,
one line per head ranking, the random picks' quantile band shaded, each point's verdict against
random picks (workbench.probes.kv_tradeoff, workbench.probes.ranking_test).

Markers: a star where the point beats random (Holm-adjusted p below alpha), an open marker where
the ranking's scores are tied at the cut (the value is the mean over tie orders, the hover gives
their range); error bars are the Student t interval over context seeds when several were measured.
A metric whose all-full value is at chance shows that instead of a comparison.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..probes.head_rankings import LABELS, label
from ..probes.ranking_test import AT_CHANCE, BEATS
from .sae import LAYOUT, empty_figure
from .text import plain

if TYPE_CHECKING:
    from ..probes.kv_tradeoff import TradeoffResult

__all__ = ["LABELS", "PANELS", "panels_for", "passkey_metric", "share_label", "tradeoff_figure", "tradeoff_table_html"]

PANELS = (
    ("needle_acc", label("needle_acc")),
    ("passkey_token_acc", label("passkey_token_acc")),
    ("text_loss", label("text_loss")),
)


def passkey_metric(d: dict) -> str:
    """The passkey metric worth showing: exact accuracy (every answer token) where the all-full model
    is above chance on it, else the per-token share (the default byte model scores 0 exact)."""
    exact_ok = "passkey_acc" in (d.get("random_band") or {}) and (d.get("at_chance") or {}).get("passkey_acc") is False
    return "passkey_acc" if exact_ok else "passkey_token_acc"


def panels_for(d: dict) -> tuple[tuple[str, str], ...]:
    """PANELS with the passkey panel on `passkey_metric`."""
    return tuple(
        (passkey_metric(d), label(passkey_metric(d))) if k == "passkey_token_acc" else (k, t) for k, t in PANELS
    )


BAND = "rgba(128,128,128,0.22)"


def share_label(n_full: int, n_heads: int) -> str:
    """The real share of heads kept full: "12.5% (1 of 8)", not the requested "10%"."""
    if n_heads <= 0:
        return f"{n_full} heads"
    return f"{100 * n_full / n_heads:.3g}% ({n_full} of {n_heads})"


def _unit(d: dict) -> str:
    """What the shares count: "KV heads" under grouped-query attention (a cache is kept or cut per
    KV head, `probes.gqa`), else "heads"."""
    q, kv = d.get("n_query_heads") or 0, d.get("n_kv_heads") or 0
    return "KV heads" if 0 < kv < q else "heads"


def _n_heads(d: dict) -> int:
    return int(d.get("n_heads") or (d["n_full"][-1] if d.get("fractions") and d["fractions"][-1] == 100 else 0))


def _band_edges(d: dict, metric: str) -> tuple[list[float], list[float], str]:
    band = d["random_band"][metric]
    if "lo" in band and "hi" in band:
        q = (d.get("config") or {}).get("band_quantiles") or [0.05, 0.95]
        exact = d.get("null_exact") or []
        how = "every subset" if exact and all(exact) else f"{len(d['random_curves'])} random rankings"
        return band["lo"], band["hi"], f"random picks, {q[0]:g}-{q[1]:g} quantiles ({how})"
    return band["min"], band["max"], f"random rankings ({len(d['random_curves'])} seeds, min-max)"


def _point_text(d: dict, name: str, metric: str, i: int) -> str:
    """Hover text of one point: share, value, tie range, seed interval, p and verdict."""
    n = _n_heads(d)
    c = d["curves"][name]
    parts = [f"{plain(label(name))}", share_label(d["n_full"][i], n), f"{plain(label(metric))}: {c[metric][i]:.3f}"]
    tr = (d.get("tie_range") or {}).get(name, {}).get(metric)
    if (d.get("tied") or {}).get(name, [False] * (i + 1))[i] and tr:
        parts.append(f"tied scores at the cut: {tr[i][0]:.3f}-{tr[i][1]:.3f} over tie orders")
    ci = (d.get("seed_ci") or {}).get(name, {}).get(metric)
    if ci:
        parts.append(f"{len(d.get('context_seeds', []))} context seeds, t 95%: [{ci[i][0]:.3f}, {ci[i][1]:.3f}]")
    p = (d.get("p_adjusted") or {}).get(name, {}).get(metric)
    v = (d.get("verdicts") or {}).get(name, {}).get(metric)
    if v:
        padj = f"Holm p {p[i]:.3g} · " if p and p[i] is not None else ""
        parts.append(padj + plain(v[i]))
    return "<br>".join(parts)


def tradeoff_figure(result: TradeoffResult | dict, panels: tuple[tuple[str, str], ...] | None = None) -> go.Figure:
    """One subplot per metric (None: `panels_for` the result): x = KV cache kept (fraction of all
    heads full), one line per ranking, the random picks' mean (dashed) and quantile band (shaded);
    markers as the module docstring says. A metric at chance with all heads full gets a note
    instead of lines."""
    d = result if isinstance(result, dict) else result.to_dict()
    if not d.get("fractions") or not d.get("random_band"):
        return empty_figure("no trade-off curve measured")
    panels = panels_for(d) if panels is None else panels
    x = d["kv_fraction"]
    n = _n_heads(d)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[plain(t) for _, t in panels], horizontal_spacing=0.07)
    hover = [f"{share_label(k, n)} {_unit(d)} full" for k in d["n_full"]]
    chance = d.get("at_chance") or {}
    legend_done: set[str] = set()
    for col, (metric, _) in enumerate(panels, start=1):
        fig.update_xaxes(title_text="KV cache kept (fraction of full)", range=[0, 1.02], row=1, col=col)
        if metric != "text_loss":
            fig.update_yaxes(range=[-0.02, 1.02], row=1, col=col)
        if chance.get(metric):
            full = (d.get("full_value") or {}).get(metric)
            fig.add_annotation(
                text=f"{AT_CHANCE}<br>(all heads full: {full:.3f}; chance {d['chance'][metric]:.3g})<br>no comparison",
                x=0.5,
                y=0.5,
                xref=f"x{col if col > 1 else ''} domain",
                yref=f"y{col if col > 1 else ''} domain",
                showarrow=False,
                font=dict(color="#a33"),
            )
            continue
        lo, hi, band_name = _band_edges(d, metric)
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1],
                y=hi + lo[::-1],
                mode="lines",
                fill="toself",
                fillcolor=BAND,
                line=dict(width=0),
                hoverinfo="skip",
                legendgroup="random",
                showlegend="random" not in legend_done,
                name=band_name,
            ),
            row=1,
            col=col,
        )
        legend_done.add("random")
        fig.add_trace(
            go.Scatter(
                x=x,
                y=d["random_band"][metric]["mean"],
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
            verdicts = (d.get("verdicts") or {}).get(name, {}).get(metric) or [""] * len(x)
            tied = (d.get("tied") or {}).get(name) or [False] * len(x)
            symbols = [("star" if v == BEATS else "circle") + ("-open" if t else "") for v, t in zip(verdicts, tied)]
            ci = (d.get("seed_ci") or {}).get(name, {}).get(metric)
            err = (
                dict(
                    type="data",
                    symmetric=False,
                    thickness=1,
                    array=[c[1] - v for c, v in zip(ci, curve[metric])],
                    arrayminus=[v - c[0] for c, v in zip(ci, curve[metric])],
                )
                if ci
                else None
            )
            fig.add_trace(
                go.Scatter(
                    x=curve.get("kv_fraction", x),
                    y=curve[metric],
                    mode="lines+markers",
                    name=plain(label(name)),
                    legendgroup=plain(name),
                    showlegend=name not in legend_done,
                    text=[_point_text(d, name, metric, j) for j in range(len(x))],
                    line=dict(color=_color(i)),
                    marker=dict(symbol=symbols, size=[12 if v == BEATS else 7 for v in verdicts]),
                    error_y=err,
                    hovertemplate="%{text}<br>KV %{x:.3f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            legend_done.add(name)
    cfg = d.get("config") or {}
    comp = " + compensation token" if cfg.get("compensation") else ""
    fig.update_layout(
        **{**LAYOUT, "height": 400},
        title=f"KV-cache trade-off: top heads full, the rest sink {plain(cfg.get('sink', '?'))} + window "
        f"{plain(cfg.get('window', '?'))}{comp} (T = {plain(d.get('seq_len', '?'))}); ★ beats random (Holm p < "
        f"{plain(cfg.get('alpha', 0.05))}), open: tied scores",
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def tradeoff_table_html(result: TradeoffResult | dict, metric: str = "needle_acc") -> str:
    """Every ranking's value at each share of heads full with its verdict against random picks,
    as an HTML table (every string from the result escaped): value [context-seed interval], "="
    where tied scores at the cut make it a mean over tie orders, Holm-adjusted p and verdict."""
    e = html.escape
    d = result if isinstance(result, dict) else result.to_dict()
    if not d.get("fractions") or metric not in (d.get("random_band") or {}):
        return "<p><i>no trade-off curve measured</i></p>"
    n = _n_heads(d)
    if (d.get("at_chance") or {}).get(metric):
        full = d["full_value"][metric]
        return (
            f"<p>{e(label(metric))}: {AT_CHANCE} (all heads full {full:.3f}, chance {d['chance'][metric]:.3g}); "
            f"no ranking is compared on it.</p>"
        )
    heads = "".join(f"<th>{e(share_label(k, n))}</th>" for k in d["n_full"])
    exact = d.get("null_exact") or []
    null_row = "".join(
        f"<td>{'exact, ' + str(s) + ' subsets' if ex else str(s) + ' random'}; min p {mp:.3g}</td>"
        for ex, s, mp in zip(exact, d.get("null_size", []), d.get("min_p", []))
    )
    rows = []
    for name, c in d["curves"].items():
        cells = []
        for i, v in enumerate(c[metric]):
            tied = (d.get("tied") or {}).get(name, [False] * len(c[metric]))[i]
            ci = (d.get("seed_ci") or {}).get(name, {}).get(metric)
            p = (d.get("p_adjusted") or {}).get(name, {}).get(metric)
            verdict = (d.get("verdicts") or {}).get(name, {}).get(metric)
            text = f"{v:.3f}{' =' if tied else ''}"
            if ci:
                text += f" [{ci[i][0]:.3f}, {ci[i][1]:.3f}]"
            if verdict:
                text += f"<br><small>{e(verdict[i])}{f' (p {p[i]:.3g})' if p and p[i] is not None else ''}</small>"
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr><td>{e(label(name))}</td>{''.join(cells)}</tr>")
    b = d["random_band"][metric]
    lo, hi, band_name = _band_edges(d, metric)
    band = "".join(f"<td>{m:.3f} [{a:.3f}, {z:.3f}]</td>" for m, a, z in zip(b["mean"], lo, hi))
    seeds = d.get("context_seeds") or []
    unit = _unit(d)
    gqa = f" (grouped-query attention: {n} KV heads, {d['n_query_heads']} query heads)" if unit != "heads" else ""
    return (
        f"<p>{e(label(metric))} with the top {unit} full{gqa}; each point tested against random picks of as many "
        f"{unit} (p exact over every subset where there are few, else over random rankings; Holm over a curve's "
        f'testable points). "=": tied scores at the cut (mean over tie orders).'
        + (f" Intervals: Student t 95% over {len(seeds)} context seeds." if len(seeds) > 1 else "")
        + f"</p><table><tr><th>ranking</th>{heads}</tr>{''.join(rows)}"
        f"<tr><td>{e(band_name)}: mean [band]</td>{band}</tr>"
        + (f"<tr><td>null</td>{null_row}</tr>" if null_row else "")
        + "</table>"
    )


def _color(i: int) -> str:
    palette = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6")
    return palette[i % len(palette)]
