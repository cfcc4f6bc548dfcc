"""Plotly figures of the head explorer, the rankings' agreement and the heads over training.

One builder per view, called by the notebook, the widget (`workbench.widgets.heads`) and the
viewer alike. Each takes plain JSON-able results and never a model:

- `head_scatter(data, x, y)`: every head over two metrics, coloured by role, intervals as error
  bars; each point's customdata is [layer, head] so a click handler knows which head it was;
- `head_detail(data, layer, head, context)`: the head's attention pattern on one stored context,
  its scores with intervals, and its DuoAttention gate's training curve when one was recorded;
- `agreement_heatmap(agreement)` and `agreement_table_html(agreement)`: Spearman rho between
  rankings with their intervals (`probes.head_agreement.Agreement.to_dict()`);
- `heads_over_training(over)`: one metric per head against the checkpoint step, copy accuracy,
  the loss on a second axis and the phase change shaded (`HeadsOverTraining.to_dict()`).

`data` is the explorer's dict (`probes.head_explorer.explorer_data(...)`):
    {"n_layers", "n_heads", "metrics": {name: [L][H]}, "intervals": {name: [L][H][lo, hi]},
     "labels": [L][H], "contexts": {name: {"ids": [...], "tokens": [str], "patterns": [L][H][q][k]}},
     "gate_curve": {"step": [...], "alpha": [step][L][H], "loss": [...]} or None}
"""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..probes.head_rankings import label
from .sae import LAYOUT, empty_figure
from .text import plain

ROLE_COLORS = {
    "retrieval": "#f58518",
    "streaming": "#4c78a8",
    "other": "#9d9d9d",
    "undetermined": "#b279a2",
    "too few copied steps": "#d0d0d0",
}
PHASE_FILL = "rgba(228,87,86,0.15)"


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3g}"


def _ci(ci) -> str:
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""


def _interval(data: dict, name: str, l: int, h: int):
    iv = data.get("intervals", {}).get(name)
    return iv[l][h] if iv else None


def head_scatter(data: dict, x: str, y: str, selected: tuple[int, int] | None = None) -> go.Figure:
    """All heads over metrics `x` and `y` (names in data["metrics"]), one trace per role; error
    bars where the metric has an interval; customdata [layer, head] on every point."""
    metrics = data.get("metrics", {})
    if not metrics:
        return empty_figure("no head metrics measured")
    for axis, name in (("x", x), ("y", y)):
        if name not in metrics:
            raise ValueError(f"{axis}: unknown metric {name!r}; expected one of {sorted(metrics)}")
    L, H = data["n_layers"], data["n_heads"]
    labels = data.get("labels") or [["unlabelled"] * H for _ in range(L)]
    names = point_labels(metrics[x], metrics[y])
    fig = go.Figure()
    for role in dict.fromkeys(lab for row in labels for lab in row):
        pts = [(l, h) for l in range(L) for h in range(H) if labels[l][h] == role]
        xs = [metrics[x][l][h] for l, h in pts]
        ys = [metrics[y][l][h] for l, h in pts]
        xci = [_interval(data, x, l, h) for l, h in pts]
        yci = [_interval(data, y, l, h) for l, h in pts]
        text = [
            f"L{l}H{h} · {plain(role)}<br>{plain(x)}: {_fmt(a)}{_ci(ca)}<br>{plain(y)}: {_fmt(b)}{_ci(cb)}"
            for (l, h), a, b, ca, cb in zip(pts, xs, ys, xci, yci)
        ]

        def bars(vals, cis):
            if not any(cis):
                return None
            return dict(
                type="data",
                symmetric=False,
                thickness=1,
                width=0,
                array=[c[1] - v if c else 0 for v, c in zip(vals, cis)],
                arrayminus=[v - c[0] if c else 0 for v, c in zip(vals, cis)],
            )

        fig.add_trace(
            go.Scatter(
                # point names clutter past 32 heads; the hover still names every head
                x=xs,
                y=ys,
                mode="markers+text" if L * H <= 32 else "markers",
                name=plain(role),
                text=[names[l][h] for l, h in pts],
                textposition="top center",
                textfont=dict(size=9),
                hovertext=text,
                hoverinfo="text",
                customdata=[[l, h] for l, h in pts],
                error_x=bars(xs, xci),
                error_y=bars(ys, yci),
                marker=dict(size=11, color=ROLE_COLORS.get(role, "#54a24b"), line=dict(width=1, color="#333")),
            )
        )
    if selected is not None:
        l, h = selected
        fig.add_trace(
            go.Scatter(
                x=[metrics[x][l][h]],
                y=[metrics[y][l][h]],
                mode="markers",
                name=f"L{l}H{h}",
                customdata=[[l, h]],
                hoverinfo="skip",
                showlegend=False,
                marker=dict(size=20, color="rgba(0,0,0,0)", line=dict(width=2, color="#e45756")),
            )
        )
    fig.update_layout(
        **{**LAYOUT, "height": 420},
        title=f"Heads: {plain(x)} vs {plain(y)} (click a head)",
        xaxis_title=plain(x),
        yaxis_title=plain(y),
        legend_title_text="role",
    )
    return fig


LABEL_TOL = 0.04  # points closer than this share of both axis ranges share one label


def point_labels(xs: list[list[float]], ys: list[list[float]], tol: float = LABEL_TOL) -> list[list[str]]:
    """[L][H] text labels of the scatter: heads whose points lie within `tol` of each axis' range
    of one another are grouped, the group's first head carries "L0H0, L0H1, …" and the others
    none, so that overlapping heads' names never print on top of each other (the hover still
    names every head)."""
    L, H = len(xs), len(xs[0]) if xs else 0
    pts = [(l, h) for l in range(L) for h in range(H)]

    def val(m, l, h):
        v = m[l][h]
        return float(v) if v is not None and math.isfinite(float(v)) else float("nan")

    coords = [(val(xs, l, h), val(ys, l, h)) for l, h in pts]
    spans = []
    for axis in (0, 1):
        vals = [c[axis] for c in coords if math.isfinite(c[axis])]
        spans.append((max(vals) - min(vals)) if vals else 0.0)
    spans = [s if s > 0 else 1.0 for s in spans]
    out = [[""] * H for _ in range(L)]
    anchors: list[tuple[int, list[str]]] = []  # (index of the labelled point, names of its group)
    for i, (l, h) in enumerate(pts):
        cx, cy = coords[i]
        for a, group in anchors:
            ax, ay = coords[a]
            if abs(cx - ax) <= tol * spans[0] and abs(cy - ay) <= tol * spans[1]:
                group.append(f"L{l}H{h}")
                break
        else:
            anchors.append((i, [f"L{l}H{h}"]))
    for a, group in anchors:
        l, h = pts[a]
        out[l][h] = ", ".join(group)
    return out


def _score_rows(data: dict, l: int, h: int) -> tuple[list[str], list[str]]:
    names, vals = [], []
    for name, m in data.get("metrics", {}).items():
        names.append(plain(name))
        vals.append(_fmt(m[l][h]) + _ci(_interval(data, name, l, h)))
    return names, vals


TABLE_ROW_PX, TABLE_HEADER_PX = 24, 28  # the score table's cell heights, set so that every row fits
GATE_PX = 200  # the least height of the gate curve under the table
MARGIN_PX = LAYOUT["margin"]["t"] + LAYOUT["margin"]["b"]


def head_detail(data: dict, layer: int, head: int, context: str | None = None, tokenizer=None) -> go.Figure:
    """Head (layer, head): its attention pattern on `context` (a name in data["contexts"]; token
    labels from `tokenizer.token_str` when given, else the stored strings), its scores with
    intervals, and its gate's training curve when data["gate_curve"] has one."""
    L, H = data.get("n_layers", 0), data.get("n_heads", 0)
    if not (0 <= layer < L and 0 <= head < H):
        raise ValueError(f"layer, head: expected 0 <= layer < {L} and 0 <= head < {H}, got ({layer}, {head})")
    contexts = data.get("contexts", {})
    if context is None and contexts:
        context = next(iter(contexts))
    if context is not None and context not in contexts:
        raise ValueError(f"context: unknown {context!r}; expected one of {sorted(contexts)}")
    role = (data.get("labels") or [[None] * H] * L)[layer][head]
    names, vals = _score_rows(data, layer, head)
    # the score table must hold every row: its share of the plot height is set from the rows
    gap = 0.08  # vertical spacing between the table and the gate curve, a share of the plot height
    table_px = TABLE_HEADER_PX + TABLE_ROW_PX * len(names) + 8
    height = max(560, round(MARGIN_PX + (table_px + GATE_PX) / (1 - gap)))
    table_share = table_px / ((1 - gap) * (height - MARGIN_PX))
    fig = make_subplots(
        rows=2,
        cols=2,
        column_widths=[0.58, 0.42],
        row_heights=[table_share, 1 - table_share],
        specs=[[{"type": "heatmap", "rowspan": 2}, {"type": "table"}], [None, {"type": "xy"}]],
        subplot_titles=(
            f"attention on the {plain(context)} context" if context else "no context recorded",
            "",
            "DuoAttention gate α while training",
        ),
        horizontal_spacing=0.16,
        vertical_spacing=gap,
    )
    if context is not None:
        ctx = contexts[context]
        toks = (
            [tokenizer.token_str(int(t)) for t in ctx["ids"]]
            if tokenizer is not None and ctx.get("ids")
            else ctx["tokens"]
        )
        labels = [f"{i}:{plain(t)}" for i, t in enumerate(toks)]
        heat_end = fig.layout.xaxis.domain[1]  # the colorbar sits right of the pattern, not over it
        fig.add_trace(
            go.Heatmap(
                z=ctx["patterns"][layer][head],
                x=labels,
                y=labels,
                colorscale="Viridis",
                zmin=0,
                zmax=1,
                colorbar=dict(x=heat_end + 0.01, xanchor="left", len=0.9, thickness=10),
                name="attention",
                hovertemplate="query %{y} → key %{x}: %{z:.3f}<extra></extra>",
            ),
            1,
            1,
        )
        fig.update_yaxes(autorange="reversed", title_text="query", row=1, col=1)
        fig.update_xaxes(title_text="key", row=1, col=1)
    fig.add_trace(
        go.Table(
            header=dict(values=["score", "value [95% interval]"], align="left", height=TABLE_HEADER_PX),
            cells=dict(values=[names, vals], align="left", height=TABLE_ROW_PX),
            name="scores",
        ),
        1,
        2,
    )
    curve = data.get("gate_curve")
    if curve and curve.get("step"):
        fig.add_trace(
            go.Scatter(
                x=curve["step"],
                y=[a[layer][head] for a in curve["alpha"]],
                mode="lines",
                name=f"α L{layer}H{head}",
                line=dict(color="#f58518"),
            ),
            2,
            2,
        )
        fig.update_yaxes(range=[-0.05, 1.05], title_text="α", row=2, col=2)
        fig.update_xaxes(title_text="optimisation step", row=2, col=2)
    else:
        fig.add_annotation(
            text="no gate trained",
            x=0.5,
            y=0.5,
            xref="x domain",
            yref="y domain",
            showarrow=False,
            font=dict(color="#666"),
            row=2,
            col=2,
        )
    fig.update_layout(**{**LAYOUT, "height": height}, title=f"L{layer}H{head} · {plain(role)}", showlegend=False)
    return fig


def _rho_text(rho, ci) -> str:
    if rho is None:
        return "undefined"
    return f"{rho:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def _seed_text(agreement: dict, i: int, j: int | None, name: str | None = None) -> str:
    """ " · seeds [lo, hi]": rho's t interval over context seeds, when measured."""
    seeds = agreement.get("seeds") or []
    if len(seeds) < 2:
        return ""
    ci = (agreement.get("causal_seed_ci") or {}).get(name) if j is None else (agreement.get("seed_ci") or [])[i][j]
    return f" · {len(seeds)} seeds [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f" · {len(seeds)} seeds: n/a"


def agreement_heatmap(agreement: dict) -> go.Figure:
    """Spearman rho between every pair of rankings, with the interval in each cell (and its
    interval over context seeds when measured); a last column of each ranking's rho with the
    causal check when measured."""
    names = agreement.get("names") or []
    if not names:
        return empty_figure("no rankings compared")
    causal = agreement.get("causal") or {}
    shown = [plain(label(n)) for n in names]
    cols = shown + ([plain(label("causal_delta_loss"))] if causal else [])
    z, text = [], []
    for i, a in enumerate(names):
        row = [agreement["rho"][i][j] for j in range(len(names))]
        cell = [
            _rho_text(agreement["rho"][i][j], agreement["ci"][i][j]) + ("" if i == j else _seed_text(agreement, i, j))
            for j in range(len(names))
        ]
        if causal:
            c = causal[a]
            row.append(c["rho"])
            cell.append(_rho_text(c["rho"], c["ci"]) + _seed_text(agreement, i, None, a))
        z.append(row)
        text.append(cell)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=cols,
            y=shown,
            text=[[t.replace(" · ", "<br>") for t in row] for row in text],
            texttemplate="%{text}",
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            colorbar=dict(title="ρ"),
            hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        **{**LAYOUT, "height": 160 + 55 * len(names)},
        yaxis_autorange="reversed",
        title=f"Rank agreement over {plain(agreement.get('n_heads'))} heads: {plain(agreement.get('method', ''))}",
    )
    return fig


def agreement_table_html(agreement: dict) -> str:
    """Each pair's rho, interval and p (and rho's interval over context seeds when measured), and
    each ranking vs the causal check, as an HTML table."""
    e = html.escape
    names = agreement.get("names") or []
    if not names:
        return "<p><i>no rankings compared</i></p>"
    seeds = agreement.get("seeds") or []
    rows = "".join(
        f"<tr><td>{e(label(a))}</td><td>{e(label(b))}</td>"
        f"<td>{e(_rho_text(agreement['rho'][i][j], agreement['ci'][i][j]))}</td>"
        f"<td>{_fmt(agreement['p_value'][i][j])}</td>"
        + (f"<td>{e(_seed_text(agreement, i, j)[3:])}</td>" if len(seeds) > 1 else "")
        + "</tr>"
        for i, a in enumerate(names)
        for j, b in enumerate(names)
        if j > i
    )
    causal = agreement.get("causal") or {}
    crows = "".join(
        f"<tr><td>{e(label(a))}</td><td>{e(label('causal_delta_loss'))}</td><td>{e(_rho_text(c['rho'], c['ci']))}</td>"
        f"<td>{_fmt(c['p_value'])}{' · ' + e(c['note']) if c.get('note') else ''}</td>"
        + (f"<td>{e(_seed_text(agreement, i, None, a)[3:])}</td>" if len(seeds) > 1 else "")
        + "</tr>"
        for i, (a, c) in enumerate(causal.items())
    )
    seed_head = "<th>ρ over context seeds (t 95%)</th>" if len(seeds) > 1 else ""
    seed_note = (
        f" The last column is rho's Student t interval over {len(seeds)} context seeds (each seed's rankings "
        f"measured on its own contexts)."
        if len(seeds) > 1
        else ""
    )
    return (
        f"<p>{e(agreement.get('method', ''))}; {int(agreement.get('n_heads', 0))} heads: with few heads the "
        f"interval is wide, and a rho whose interval covers 0 is no evidence of agreement.{seed_note}</p>"
        f"<table><tr><th>ranking</th><th>vs</th><th>ρ [95% interval]</th><th>p</th>{seed_head}</tr>"
        f"{rows}{crows}</table>"
    )


OVER_METRICS = {  # HeadsOverTraining's field -> its label (the one table, probes.head_rankings.LABELS)
    "induction": label("tl_induction"),
    "retrieval": label("retrieval") + " (Wilson 95%)",
    "previous_token": label("tl_previous_token"),
    "streaming": label("streaming") + " (t 95%)",
    "delta_loss": label("causal_delta_loss") + " (nats)",
    "entropy": label("entropy"),
}


def heads_over_training(over: dict, metric: str = "induction", phase: str = "induction") -> go.Figure:
    """`metric` of every head against the checkpoint step, the needle copy accuracy (dashed),
    the loss on a second axis, and the interval of steps where `phase` ("induction", "retrieval"
    or "copy") formed, shaded."""
    steps = over.get("steps") if over else None
    if not steps:
        return empty_figure("no checkpoints measured")
    if metric not in OVER_METRICS:
        raise ValueError(f"metric: expected one of {sorted(OVER_METRICS)}, got {metric!r}")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    vals = over[metric]
    cis = over.get(f"{metric}_ci")
    L, H = len(vals[0]), len(vals[0][0])
    for l in range(L):
        for h in range(H):
            ys = [v[l][h] for v in vals]
            err = (
                dict(
                    type="data",
                    symmetric=False,
                    thickness=1,
                    array=[c[l][h][1] - y for c, y in zip(cis, ys)],
                    arrayminus=[y - c[l][h][0] for c, y in zip(cis, ys)],
                )
                if cis
                else None
            )
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=ys,
                    mode="lines+markers",
                    name=f"L{l}H{h}",
                    error_y=err,
                    legendgroup=f"layer {l}",
                    line=dict(width=1.5, dash="solid" if l else "dot"),
                ),
                secondary_y=False,
            )
    acc = over.get("copy_accuracy")
    if acc and metric != "entropy" and metric != "delta_loss":
        ci = over.get("copy_accuracy_ci")
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=acc,
                mode="lines+markers",
                name="needle copy accuracy",
                line=dict(color="#222", dash="dash", width=2),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[c[1] - a for c, a in zip(ci, acc)],
                    arrayminus=[a - c[0] for c, a in zip(ci, acc)],
                )
                if ci
                else None,
            ),
            secondary_y=False,
        )
    curve = over.get("loss_curve") or {}
    if curve.get("step"):
        fig.add_trace(
            go.Scatter(
                x=curve["step"],
                y=curve["val_loss"],
                mode="lines",
                name="validation loss (logged)",
                line=dict(color="#888", width=3),
                opacity=0.6,
            ),
            secondary_y=True,
        )
    loss = over.get("loss") or []
    if any(v is not None for v in loss):
        pts = [(s, v) for s, v in zip(steps, loss) if v is not None]
        fig.add_trace(
            go.Scatter(
                x=[s for s, _ in pts],
                y=[v for _, v in pts],
                mode="markers",
                name=f"checkpoint loss ({over.get('loss_source', '')})",
                marker=dict(color="#888", symbol="square", size=8),
            ),
            secondary_y=True,
        )
    formed = (over.get("formed") or {}).get(phase)
    state = (over.get("formed_state") or {}).get(phase)
    if not formed and state:
        fig.add_annotation(
            text=f"{plain(phase)}: {plain(state)}",
            x=0.01,
            y=0.99,
            xref="paper",
            yref="paper",
            xanchor="left",
            showarrow=False,
            font=dict(color="#a33"),
        )
    if formed:
        fig.add_vrect(
            x0=formed[0],
            x1=formed[1],
            fillcolor=PHASE_FILL,
            line_width=0,
            annotation_text=f"{phase} forms: step {formed[0]}–{formed[1]}",
            annotation_position="top left",
        )
    fig.update_layout(**{**LAYOUT, "height": 420}, title=f"Heads over training: {OVER_METRICS[metric]}")
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text=OVER_METRICS[metric], secondary_y=False)
    fig.update_yaxes(title_text="loss (nats/token)", secondary_y=True, showgrid=False)
    return fig
