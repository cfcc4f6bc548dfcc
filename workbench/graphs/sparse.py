"""Top-m storage of a graph's edges and influence by sparse iteration, for prompts whose dense
N x N adjacency would not fit (circuit-tracer keeps it dense and caps the feature count instead).

Each target t keeps its m inputs of largest |A[t, s]| (signed values) and a remainder, the sum of
|A[t, s]| over the inputs left out. Normalising by the whole row mass (kept + remainder) keeps every
kept share what the dense algorithm gives it; the remainder's share leads nowhere, so

    Â_m[t, s] = |A[t, s]| / (Σ_kept |A[t, .]| + rest_t)      (s among t's top m, else 0)
    I_m = w Â_m + w Â_m² + ...                                 (each product: one index_add over T m entries)

is a lower bound on the dense influence that equals it when m covers every non-zero input. Memory
is T m (values and columns) instead of N², time per product T m instead of N².
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass
class TopInputs:
    """Each target's top-m inputs (module docstring). Row i belongs to node `targets[i]`."""

    targets: Int[Tensor, " T"]
    cols: Int[Tensor, "T m"]
    vals: Float[Tensor, "T m"]
    rest: Float[Tensor, " T"]  # Σ |A[t, s]| over the inputs not kept
    n_nodes: int

    @property
    def m(self) -> int:
        return self.cols.shape[1]

    def to_dense(self) -> Float[Tensor, "N N"]:
        """The kept entries as a dense matrix (the remainder is not an entry)."""
        A = self.vals.new_zeros(self.n_nodes, self.n_nodes)
        A[self.targets[:, None].expand_as(self.cols), self.cols] = self.vals
        return A

    def normalized(self) -> Float[Tensor, "T m"]:
        a = self.vals.abs()
        return a / (a.sum(1) + self.rest).clamp_min(1e-10)[:, None]

    def to_tensors(self) -> dict[str, Tensor]:
        return {"top_targets": self.targets, "top_cols": self.cols, "top_vals": self.vals, "top_rest": self.rest}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], n_nodes: int) -> TopInputs:
        return cls(t["top_targets"], t["top_cols"], t["top_vals"], t["top_rest"], n_nodes)


def top_rows(
    rows: Float[Tensor, "b S"], m: int
) -> tuple[Int[Tensor, "b m"], Float[Tensor, "b m"], Float[Tensor, " b"]]:
    """(columns, signed values, remainder) of each row's m entries of largest magnitude."""
    if m < 1:
        raise ValueError(f"top_m={m}: expected at least 1 input per target")
    a = rows.abs()
    top = a.topk(min(m, rows.shape[1]), dim=1)
    cols = top.indices
    if cols.shape[1] < m:  # fewer sources than m: pad with zero-valued entries on column 0
        pad = m - cols.shape[1]
        cols = torch.cat([cols, cols.new_zeros(len(rows), pad)], 1)
        vals = torch.cat([rows.gather(1, top.indices), rows.new_zeros(len(rows), pad)], 1)
    else:
        vals = rows.gather(1, cols)
    return cols, vals, (a.sum(1) - top.values.sum(1)).clamp_min(0)


def from_dense(A: Float[Tensor, "N N"], targets: Int[Tensor, " T"], m: int) -> TopInputs:
    """The top-m store of the dense adjacency's rows `targets` (for tests and the benchmark)."""
    cols, vals, rest = top_rows(A[targets], m)
    return TopInputs(targets, cols, vals, rest, A.shape[0])


def influence(top: TopInputs, w: Float[Tensor, " N"], max_iter: int = 1000) -> Float[Tensor, " N"]:
    """Σ_{k >= 1} w Â_m^k, each product a scatter-add of T m entries (the graph is a DAG)."""
    norm, flat_cols = top.normalized(), top.cols.flatten()
    w = w.to(norm.dtype)
    total = torch.zeros_like(w)
    term = w
    for _ in range(max_iter):
        term = torch.zeros_like(w).index_add_(0, flat_cols, (term[top.targets, None] * norm).flatten())
        if not term.any():
            return total
        total += term
    raise RuntimeError(f"influence did not converge in {max_iter} products: the stored edges have a cycle")


def threshold_value(scores: Float[Tensor, " n"], share: float) -> float:
    """The smallest score among the top ones that together hold `share` of the total (zeros hold
    nothing: they are left out of the sort, which on a dense edge matrix is most of it)."""
    s = scores[scores > 0].sort(descending=True).values
    if len(s) == 0:
        return 0.0
    cum = s.cumsum(0) / s.sum().clamp_min(1e-300)
    i = min(int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype))), len(s) - 1)
    return float(s[i])


class SparsePruned(NamedTuple):
    node_mask: Bool[Tensor, " N"]
    node_influence: Float[Tensor, " N"]  # on the whole stored graph
    edge_mask: Bool[Tensor, "T m"]  # over the stored entries, on the node-pruned graph
    edge_scores: Float[Tensor, "T m"]


def prune(
    top: TopInputs,
    w: Float[Tensor, " N"],
    n_fixed: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    node_inf: Float[Tensor, " N"] | None = None,
) -> SparsePruned:
    """prune.prune's node and edge thresholds on the stored entries; nodes from `n_fixed` on (tokens
    and logits) are always kept. `node_inf`: the exact influence streamed by trace(top_m=...), else
    the top-m iteration's. Edge scores use the top-m iteration on the node-pruned graph, whose rows
    keep their whole remainder (the dense prune renormalises over kept sources only). The
    dangling-node clean-up of the dense prune is left to the caller."""

    node_inf = influence(top, w) if node_inf is None else node_inf
    node_mask = node_inf >= threshold_value(node_inf, node_threshold)
    node_mask[n_fixed:] = True
    keep = node_mask[top.targets, None] & node_mask[top.cols]
    kept = TopInputs(top.targets, top.cols, top.vals * keep, top.rest * node_mask[top.targets], top.n_nodes)
    scores = kept.normalized() * (influence(kept, w) + w)[top.targets, None]
    edge_mask = (scores >= threshold_value(scores.flatten(), edge_threshold)) & (scores > 0)
    return SparsePruned(node_mask, node_inf, edge_mask, scores)
