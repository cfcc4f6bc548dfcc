"""The width ladder as a browsable tree (plotly sunburst: click a latent to zoom into its children),
one builder for the notebook, the widget and the viewer. Node ids are "<width>:<latent>": a prefix
latent sits at the width where it first appears (its rung's band), a separate SAE's latent at its
SAE's width; roots are the smallest width's latents (and children that never fired, which have no
co-firing parent)."""

from __future__ import annotations

import bisect
import math

import plotly.graph_objects as go

from ..sae.ladder import Ladder
from .sae import LAYOUT, empty_figure
from .text import plain

BY = ("cos", "cofire")


def _band(widths: tuple[int, ...], latent: int) -> int:
    """The prefix width at which `latent` first appears: the smallest u_i > latent."""
    return widths[bisect.bisect_right(widths, latent)]


def tree_edges(ladder: Ladder, by: str = "cos") -> list[tuple[str, str, float, int, float]]:
    """(id, parent id or "", score, latent, density) for every node: the roots first, then rung by rung."""
    if by not in BY:
        raise ValueError(f"by={by!r}: expected one of {BY}")
    w0 = ladder.widths[0]
    nodes = [(f"{w0}:{latent}", "", math.nan, latent, math.nan) for latent in range(w0)]
    for r in ladder.rungs:
        parents = (r.cos_parent if by == "cos" else r.cofire_parent).tolist()
        scores = (r.cos if by == "cos" else r.cofire).tolist()
        for c, p, s, dens in zip(r.child.tolist(), parents, scores, r.child_density.tolist()):
            if p < 0:
                pid = ""
            elif ladder.kind == "prefixes":
                pid = f"{_band(ladder.widths, p)}:{p}"
            else:
                pid = f"{r.parent_width}:{p}"
            nodes.append((f"{r.width}:{c}", pid, s, c, dens))
    return nodes


def _subtree(nodes, focus: str) -> list:
    """The nodes of the tree that holds `focus` (its root and every descendant of that root)."""
    parent = {n[0]: n[1] for n in nodes}
    if focus not in parent:
        raise ValueError(f"focus={focus!r}: no such node in the ladder")
    root = focus
    while parent[root]:
        root = parent[root]
    keep = {root}
    for n in nodes:  # parents come before their children in `nodes`
        if n[1] in keep:
            keep.add(n[0])
    return [n for n in nodes if n[0] in keep]


def ladder_tree(
    ladder: Ladder,
    by: str = "cos",
    focus: tuple[int, int] | None = None,
    labels: dict[int, str] | None = None,
    maxdepth: int = 3,
    title: str = "",
) -> go.Figure:
    """The ladder as a sunburst, coloured by each link's score (decoder cosine or Ochiai co-firing).
    `focus` (width, latent): only the tree holding that latent, zoomed onto it; `labels`: a short
    label per latent id of the widest dictionary (e.g. its top token), escaped for plotly."""
    nodes = tree_edges(ladder, by)
    level = None
    if focus is not None:
        w, latent = focus
        fid = f"{_band(ladder.widths, latent) if ladder.kind == 'prefixes' else w}:{latent}"
        nodes, level = _subtree(nodes, fid), fid
    if not nodes:
        return empty_figure("the ladder has no latents")
    labels = labels or {}
    text = [f"#{n[3]}" + (f" {plain(labels[n[3]])}" if n[3] in labels else "") for n in nodes]
    color = [1.0 if math.isnan(n[2]) else n[2] for n in nodes]
    hover = [
        f"width {n[0].split(':')[0]} latent {n[3]}<br>"
        + ("root" if not n[1] else f"parent {n[1]}: {by} {n[2]:.3f}")
        + ("" if math.isnan(n[4]) else f"<br>density {n[4]:.2e}")
        for n in nodes
    ]
    fig = go.Figure(
        go.Sunburst(
            ids=[n[0] for n in nodes],
            parents=[n[1] for n in nodes],
            labels=text,
            hovertext=hover,
            hoverinfo="text",
            marker=dict(colors=color, colorscale="Viridis", cmin=0, cmax=1, colorbar=dict(title=by)),
            maxdepth=maxdepth,
            level=level,
        )
    )
    widths = " → ".join(str(w) for w in ladder.widths)
    what = "decoder cosine" if by == "cos" else "co-firing (Ochiai)"
    kind = "prefixes of one Matryoshka SAE" if ladder.kind == "prefixes" else "separate SAEs"
    fig.update_layout(
        **{**LAYOUT, "height": 520},
        title=plain(title) or f"Width ladder ({kind}: {widths}), parents by {what}",
    )
    return fig
