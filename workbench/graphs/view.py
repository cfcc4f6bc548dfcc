"""The stored part of a graph as plain lists: what results.json keeps, the figure draws and the page
re-filters. It holds the graph pruned at loose "store" thresholds; each node and edge carries the
share of influence (or edge score) held by those ranked above it (`prune.cumulative_before`), so
a stricter threshold tau keeps exactly those with cum < tau: the prune slider's rule. (Edge scores
are those of the store-pruned graph, not recomputed per slider position: an approximation of
re-running `prune` that keeps the page free of any computation but a comparison.)"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .graph import KINDS, Graph
from .heads import Loadings
from .prune import Pruned, cumulative_before


def _round(values, digits: int = 6) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in values]


@dataclass
class GraphView:
    """Nodes and edges of the stored graph; node lists are parallel, edge lists too."""

    n_layers: int
    n_heads: int
    tokens: list[str]  # the prompt's token labels
    kind: list[str]  # "feature" | "error" | "token" | "logit"
    layer: list[int]  # -1 tokens, n_layers logits
    pos: list[int]
    index: list[int]  # latent (feature), token id (token, logit), -1 (error)
    label: list[str]
    activation: list[float]  # feature activation; logit probability; 0 otherwise
    influence: list[float]  # on the logits, in the whole graph
    cum: list[float]  # node kept at threshold tau iff cum < tau (tokens and logits: 0)
    src: list[int] = field(default_factory=list)  # edge source: index into the node lists
    dst: list[int] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)  # the direct effect
    edge_cum: list[float] = field(default_factory=list)  # edge kept at tau iff edge_cum < tau
    # per edge: [n_layers * n_heads] head loadings (layer-major), its residual part and the rest
    heads: list[list[float]] = field(default_factory=list)
    residual: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)


def make_view(graph: Graph, pruned: Pruned, token_str, loadings: Loadings | None = None, max_edges: int = 3000):
    """The nodes and edges `pruned` keeps (at most `max_edges` edges, the highest-scoring), labelled
    with `token_str(id)`; `loadings` must cover those edges (heads.head_loadings)."""
    table = graph.node_table()
    node_cum = cumulative_before(pruned.node_influence)
    fixed = graph.slices()["token"].start
    node_cum[fixed:] = 0
    t_idx, s_idx = pruned.edge_mask.nonzero(as_tuple=True)
    scores = pruned.edge_scores[t_idx, s_idx]
    top = scores.argsort(descending=True)[:max_edges]
    t_idx, s_idx, scores = t_idx[top], s_idx[top], scores[top]
    keep = pruned.node_mask.nonzero()[:, 0]
    where = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    where[keep] = torch.arange(len(keep))
    edge_cum = cumulative_before(pruned.edge_scores[pruned.edge_mask])[top] if len(top) else scores
    labels = [_label(graph, table, int(i), token_str) for i in keep]
    acts = torch.zeros(graph.n_nodes, dtype=torch.float64)
    acts[: graph.n_features] = graph.activations.double()
    acts[graph.slices()["logit"]] = graph.logit_probs.double()
    view = GraphView(
        graph.n_layers,
        graph.n_heads,
        [token_str(int(t)) for t in graph.tokens],
        [KINDS[int(table["kind"][i])] for i in keep],
        table["layer"][keep].tolist(),
        table["pos"][keep].tolist(),
        table["index"][keep].tolist(),
        labels,
        _round(acts[keep].tolist()),
        _round(pruned.node_influence[keep].tolist()),
        _round(node_cum[keep].tolist()),
        where[s_idx].tolist(),
        where[t_idx].tolist(),
        _round(graph.dense()[t_idx, s_idx].tolist()),
        _round(edge_cum.tolist()),
    )
    if loadings is not None:
        pos = {(int(t), int(s)): i for i, (t, s) in enumerate(zip(loadings.targets, loadings.sources))}
        rows = [pos[(int(t), int(s))] for t, s in zip(t_idx, s_idx)]
        view.heads = [_round(loadings.heads[i].flatten().tolist(), 4) for i in rows]
        view.residual = _round(loadings.residual[rows].tolist(), 4)
        view.other = _round(loadings.other[rows].tolist(), 4)
    return view, (t_idx, s_idx)


def _label(graph: Graph, table, i: int, token_str) -> str:
    kind, layer, pos, index = (int(table[k][i]) for k in ("kind", "layer", "pos", "index"))
    if kind == 0:
        return f"L{layer} #{index} @{pos}"
    if kind == 1:
        return f"L{layer} error @{pos}"
    if kind == 2:
        return f"{token_str(index)} @{pos}"
    return f"logit {token_str(index)}"


def view_from_dict(d: dict, where: str) -> GraphView:
    from ..results import take

    view = take(GraphView, d, where)
    n = len(view.kind)
    for name in ("layer", "pos", "index", "label", "activation", "influence", "cum"):
        if len(getattr(view, name)) != n:
            raise ValueError(f"{where}.{name}: expected {n} entries (one per node), got {len(getattr(view, name))}")
    e = len(view.src)
    for name in ("dst", "weight", "edge_cum"):
        if len(getattr(view, name)) != e:
            raise ValueError(f"{where}.{name}: expected {e} entries (one per edge), got {len(getattr(view, name))}")
    if any(not 0 <= i < n for i in view.src + view.dst):
        raise ValueError(f"{where}: an edge names a node outside [0, {n})")
    return view
