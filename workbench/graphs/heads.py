"""Per-head loadings of edges: how much of each edge each attention head's OV circuit carries (past
circuit-tracer, whose edges do not say which heads they cross; its issue #53).

With patterns and norm scales frozen, the map from a source's output to a target's read is a sum
over paths through the residual stream, each crossing some attention heads (and skip terms). Each
path is assigned to the LAST head it crosses, the one that delivers it to the target's position:

    A[t, s] = residual[t, s] + Σ_{l, h} head[t, s, l, h] + other[t, s]
    head[t, s, l, h] = r_t . (W_O[l, h]^T δz_{l, h}[q_t])      (δz: the source's total effect on
                                                               head h's z at the target's position)
    residual[t, s]   = r_t . out_s  when s sits at q_t and writes before t reads, else 0
    other[t, s]      = the rest: paths whose last linear step is a skip transcoder's W_skip (0 without)

where r_t is the gradient t puts on the residual stream at its own position q_t (Graph.reads). One
backward row per (target, layer, head), injected at blocks.l.attn.hook_z with W_O[l, h] r_t, reads
head[t, ·, l, h] for every source at once. An edge between different positions always crosses a
head; its loadings say through which.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .attribute import Injection, LinearPass
from .graph import Graph


class Loadings(NamedTuple):
    """Loadings of a list of edges (target node, source node)."""

    targets: Int[Tensor, " E"]
    sources: Int[Tensor, " E"]
    heads: Float[Tensor, "E L H"]  # head[t, s, l, h]
    residual: Float[Tensor, " E"]
    other: Float[Tensor, " E"]  # skip paths (and float rounding)


def source_vectors(lin: LinearPass) -> Float[Tensor, "S d"]:
    """Every source node's output vector, in the graph's source order (features, errors, tokens)."""
    rep = lin.rep
    return torch.cat([rep.decoder, rep.errors.flatten(0, 1), rep.embed]).to(rep.embed.dtype)


def head_loadings(
    model,
    lin: LinearPass,
    graph: Graph,
    targets: Int[Tensor, " E"],
    sources: Int[Tensor, " E"],
    *,
    progress: bool = False,
) -> Loadings:
    """Loadings (module docstring) of the edges targets[i] <- sources[i] (node indices of `graph`)."""
    nodes = graph.node_table()
    L, H = graph.n_layers, graph.n_heads
    W_O = model.W_O.detach()
    uniq = torch.unique(targets)
    rows = []  # (target node, layer, head)
    for t in uniq.tolist():
        top = L if nodes["kind"][t] == 3 else int(nodes["layer"][t]) + 1  # attention layers before its read
        rows += [(t, l, h) for l in range(top) for h in range(H)]
    heads = torch.zeros(len(targets), L, H, dtype=graph.reads.dtype)
    edge_of = {}
    for i, (t, s) in enumerate(zip(targets.tolist(), sources.tolist())):
        edge_of.setdefault(t, []).append((i, s))
    bar = tqdm(total=len(rows), desc="head loadings", disable=not progress)
    for start in range(0, len(rows), lin.B):
        batch = rows[start : start + lin.B]
        vec = torch.zeros(len(batch), max(model.cfg.d_model, model.cfg.d_head), dtype=W_O.dtype)
        for j, (t, l, h) in enumerate(batch):
            vec[j, : model.cfg.d_head] = W_O[l, h] @ graph.reads[graph.target_row(t)].to(W_O.dtype)
        inj = Injection(
            [f"z.{l}" for _, l, _ in batch],
            torch.tensor([int(nodes["pos"][t]) for t, _, _ in batch]),
            torch.tensor([h for _, _, h in batch]),
            vec,
        )
        got, _ = lin.rows(inj)
        for j, (t, l, h) in enumerate(batch):
            for i, s in edge_of[t]:
                heads[i, l, h] = got[j, s]
        bar.update(len(batch))
    bar.close()
    residual = _residual(lin, graph, targets, sources)
    other = graph.dense()[targets, sources] - residual - heads.sum((1, 2))
    return Loadings(targets, sources, heads, residual, other)


def _residual(lin: LinearPass, graph: Graph, targets: Tensor, sources: Tensor) -> Float[Tensor, " E"]:
    """r_t . out_s for a source at the target's position written before the target reads."""
    nodes = graph.node_table()
    out = source_vectors(lin)
    reads = graph.reads[[graph.target_row(int(t)) for t in targets]]
    here = nodes["pos"][sources] == nodes["pos"][targets]
    before = nodes["layer"][sources] < torch.where(nodes["kind"][targets] == 3, graph.n_layers, nodes["layer"][targets])
    return (reads * out[sources]).sum(-1) * (here & before)
