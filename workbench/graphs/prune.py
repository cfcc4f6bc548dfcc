"""Influence, pruning and the replacement / completeness scores, as circuit-tracer's graph.py defines
them (`normalize_matrix`, `compute_influence`, `prune_graph`, `compute_graph_scores`):

    Â = |A| / rowsum(|A|)                           (each target's inputs as shares)
    I = w Â + w Â² + ...                            (w: the logit nodes' probabilities; Â is nilpotent)
    nodes kept: the most influential holding `node_threshold` of Σ I (tokens and logits always)
    edges kept: on the node-pruned graph, score[t, s] = Â'[t, s] (I' + w)[t], those holding
                `edge_threshold` of Σ score; then features and errors left without an outgoing
                edge, and features without an incoming one, are dropped until nothing changes
    replacement  = I(tokens) / (I(tokens) + I(errors))
    completeness = Σ_t (1 - Σ_{s error} Â[t, s]) (I + w)[t] / Σ_t (I + w)[t]
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .graph import Graph
from .sparse import threshold_value  # defined beside the top-m prune, which graph.py's sparse store needs


def normalize(A: Float[Tensor, "N N"]) -> Float[Tensor, "N N"]:
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp_min(1e-10)


def influence(A_norm: Float[Tensor, "N N"], w: Float[Tensor, " N"], max_iter: int = 1000) -> Float[Tensor, " N"]:
    """Σ_{k >= 1} w Â^k by repeated products (the graph is a DAG, so the terms reach 0)."""
    term = w @ A_norm
    total = term.clone()
    for _ in range(max_iter):
        if not term.any():
            return total
        term = term @ A_norm
        total += term
    raise RuntimeError(f"influence did not converge in {max_iter} products: the adjacency has a cycle")


def cumulative_before(scores: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Each item's share of the total held by the items ranked above it: an item is kept at a
    threshold tau exactly when this is below tau (what `threshold_value` keeps, ties aside)."""
    order = scores.sort(descending=True).indices
    cum = scores[order].cumsum(0) / scores.sum().clamp_min(1e-300)
    out = torch.empty_like(scores)
    out[order] = cum - scores[order] / scores.sum().clamp_min(1e-300)
    return out


class Pruned(NamedTuple):
    node_mask: Bool[Tensor, " N"]
    edge_mask: Bool[Tensor, "N N"]
    node_influence: Float[Tensor, " N"]  # on the whole graph
    edge_scores: Float[Tensor, "N N"]  # on the node-pruned graph


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={v}: expected a share in [0, 1]")
    A, w = graph.dense(), graph.logit_weights()
    sl = graph.slices()
    fixed = sl["token"].start  # tokens and logits: always kept
    node_inf = influence(normalize(A), w)
    node_mask = node_inf >= threshold_value(node_inf, node_threshold)
    node_mask[fixed:] = True
    A_kept = A * node_mask[:, None] * node_mask[None, :]
    A_norm = normalize(A_kept)
    scores = A_norm * (influence(A_norm, w) + w)[:, None]
    edge_mask = scores >= threshold_value(scores.flatten(), edge_threshold)
    edge_mask &= scores > 0
    m = graph.n_features
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        node_mask[:fixed] &= edge_mask[:, :fixed].any(0)  # features and errors need an outgoing edge
        node_mask[:m] &= edge_mask[:m].any(1)  # features need an incoming one
        if torch.equal(before, node_mask):
            return Pruned(node_mask, edge_mask, node_inf, scores)


class Scores(NamedTuple):
    replacement: float
    completeness: float


def graph_scores(graph: Graph, adjacency: Float[Tensor, "N N"] | None = None) -> Scores:
    """Replacement and completeness scores (module docstring) of the graph, or of `adjacency` (the
    same nodes, e.g. pruned edges zeroed)."""
    A = graph.dense() if adjacency is None else adjacency
    sl, w = graph.slices(), graph.logit_weights()
    A_norm = normalize(A)
    inf = influence(A_norm, w)
    tok, err = inf[sl["token"]].sum(), inf[sl["error"]].sum()
    replacement = tok / (tok + err) if tok + err > 0 else torch.tensor(0.0)
    out = inf + w
    non_error = 1 - A_norm[:, sl["error"]].sum(1)
    return Scores(float(replacement), float((non_error * out).sum() / out.sum()))
