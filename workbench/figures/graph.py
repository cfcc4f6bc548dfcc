"""An attribution graph as a plotly figure (one builder for the notebook, the widget and the viewer):
nodes placed by position (x) and layer (y: tokens at the bottom, then each layer's features and
error nodes, the logits on top), edges drawn as segments coloured by sign, in four width classes
by |weight|. Every node point carries customdata [cum, node] and every edge point [edge_cum,
src_cum, dst_cum, edge], so a page can re-filter the figure at a stricter threshold without the
server (the viewer's prune slider); `node_threshold` / `edge_threshold` filter here instead."""

from __future__ import annotations

import plotly.graph_objects as go

from .sae import LAYOUT, empty_figure
from .text import plain

KIND_STYLE = {
    "token": dict(color="#6b7280", symbol="square"),
    "feature": dict(color="#4c78a8", symbol="circle"),
    "error": dict(color="#f58518", symbol="diamond"),
    "logit": dict(color="#54a24b", symbol="triangle-up"),
}
WIDTHS = (0.6, 1.4, 2.6, 4.0)


def node_xy(view) -> tuple[list[float], list[float]]:
    """Each node's place: x its position (spread within the cell by influence), y its row."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (layer, pos) in enumerate(zip(view.layer, view.pos)):
        cells.setdefault((layer, pos), []).append(i)
    x, y = [0.0] * len(view.kind), [0.0] * len(view.kind)
    for (layer, pos), members in cells.items():
        members.sort(key=lambda i: (view.kind[i] == "error", -view.influence[i]))
        for j, i in enumerate(members):
            x[i] = pos + (0.0 if len(members) == 1 else 0.8 * (j / (len(members) - 1) - 0.5))
            y[i] = layer + 1
    return x, y


def kept(view, node_threshold: float = 1.0, edge_threshold: float = 1.0) -> tuple[set[int], list[int]]:
    """(nodes, edges) kept at the thresholds: the page's rule (cum < threshold; 1 keeps all stored)."""
    nodes = {i for i, c in enumerate(view.cum) if c < node_threshold or node_threshold >= 1}
    edges = [
        e
        for e, c in enumerate(view.edge_cum)
        if (c < edge_threshold or edge_threshold >= 1) and view.src[e] in nodes and view.dst[e] in nodes
    ]
    return nodes, edges


def graph_figure(view, node_threshold: float = 1.0, edge_threshold: float = 1.0, title: str = "") -> go.Figure:
    if not view.kind:
        return empty_figure("the graph has no nodes")
    x, y = node_xy(view)
    nodes, edges = kept(view, node_threshold, edge_threshold)
    top = max((abs(view.weight[e]) for e in edges), default=1.0) or 1.0
    fig = go.Figure()
    for sign, color in (("+", "rgba(76,120,168,0.55)"), ("−", "rgba(228,87,86,0.55)")):
        for b, width in enumerate(WIDTHS):
            xs, ys, cd = [], [], []
            for e in edges:
                w = view.weight[e]
                if (w >= 0) != (sign == "+") or min(int(4 * abs(w) / top), 3) != b:
                    continue
                s, t = view.src[e], view.dst[e]
                xs += [x[s], x[t], None]
                ys += [y[s], y[t], None]
                cd += [[view.edge_cum[e], view.cum[s], view.cum[t], e]] * 3
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line=dict(color=color, width=width),
                    customdata=cd,
                    hoverinfo="skip",
                    name=f"edges {sign}",
                    legendgroup=sign,
                    showlegend=b == 0,
                    meta={"role": "edges"},
                )
            )
    for kind, style in KIND_STYLE.items():
        idx = [i for i in sorted(nodes) if view.kind[i] == kind]
        fig.add_trace(
            go.Scatter(
                x=[x[i] for i in idx],
                y=[y[i] for i in idx],
                mode="markers",
                marker=dict(size=[8 + 10 * min(1.0, 3 * view.influence[i]) for i in idx], **style),
                customdata=[[view.cum[i], i] for i in idx],
                text=[plain(_hover(view, i)) for i in idx],
                hovertemplate="%{text}<extra></extra>",
                name=kind + "s",
                meta={"role": "nodes"},
            )
        )
    rows = ["tokens"] + [f"layer {l}" for l in range(view.n_layers)] + ["logits"]
    fig.update_layout(
        # the legend sits under the axis: at plotly's default (top right) it covers the logits,
        # the last position's top row, and swallows their clicks
        **(LAYOUT | dict(height=560, margin=dict(l=50, r=20, t=50, b=90))),
        legend=dict(orientation="h", x=0, y=-0.12, yanchor="top"),
        title=title or f"Attribution graph: {len(nodes)} nodes, {len(edges)} edges",
        xaxis=dict(title="position", tickvals=list(range(len(view.tokens))), ticktext=[plain(t) for t in view.tokens]),
        yaxis=dict(tickvals=list(range(len(rows))), ticktext=rows, range=[-0.5, len(rows) - 0.5]),
    )
    return fig


def _hover(view, i: int) -> str:
    extra = f"p = {view.activation[i]:.3f}" if view.kind[i] == "logit" else f"activation {view.activation[i]:.3g}"
    extra = "" if view.kind[i] in ("token", "error") else " · " + extra
    return f"{view.label[i]}{extra} · influence {view.influence[i]:.3g}"
