"""An attribution graph: its nodes and the dense matrix of direct effects between them.

Node order (circuit-tracer's): [features (layer, pos, latent), sorted | error nodes, layer-major
(one per MLP layer and position) | token nodes (one per position) | logit nodes]. The adjacency is
[target, source]: A[t, s] is the direct effect of s on t in the replacement model, non-zero only in
feature and logit rows. `reads[i]` is the gradient target i (feature i, then logit i) puts on the
residual stream at its own position: what it reads directly (per-head loadings use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .sparse import TopInputs

GRAPH_FILE = "graph.safetensors"
KINDS = ("feature", "error", "token", "logit")


@dataclass
class Graph:
    tokens: Int[Tensor, " n"]
    features: Int[Tensor, "m 3"]  # (layer, pos, latent)
    activations: Float[Tensor, " m"]
    error_layers: list[int]  # the MLP layers (each has n error nodes)
    logit_tokens: Int[Tensor, " k"]
    logit_probs: Float[Tensor, " k"]
    adjacency: Float[Tensor, "N N"] | None  # None when the graph keeps only top-m inputs
    reads: Float[Tensor, "T d"]  # T = m + k targets
    n_layers: int
    n_heads: int
    top_inputs: TopInputs | None = None  # each target's top-m inputs and remainder (sparse.py)
    node_influence: Float[Tensor, " N"] | None = None  # exact, streamed while tracing (top-m graphs)
    untraced_mass: float | None = None  # top-m graphs: influence share of the rows trace() skipped

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_errors(self) -> int:
        return self.n_pos * len(self.error_layers)

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_pos + self.n_logits

    def slices(self) -> dict[str, slice]:
        """Each node kind's slice of the node order."""
        m, e, n = self.n_features, self.n_errors, self.n_pos
        return {
            "feature": slice(0, m),
            "error": slice(m, m + e),
            "token": slice(m + e, m + e + n),
            "logit": slice(m + e + n, self.n_nodes),
        }

    def node_table(self) -> dict[str, Tensor]:
        """Per node: kind (index into KINDS), layer (-1 tokens, n_layers logits), position and index
        (the latent, the token id or the logit's token id)."""
        m, n, k = self.n_features, self.n_pos, self.n_logits
        E = len(self.error_layers)
        err_layer = torch.tensor(self.error_layers, dtype=torch.long).repeat_interleave(n)
        kind = torch.cat([torch.full((m,), 0), torch.full((E * n,), 1), torch.full((n,), 2), torch.full((k,), 3)])
        layer = torch.cat([self.features[:, 0], err_layer, torch.full((n,), -1), torch.full((k,), self.n_layers)])
        pos = torch.cat([self.features[:, 1], torch.arange(n).repeat(E), torch.arange(n), torch.full((k,), n - 1)])
        index = torch.cat([self.features[:, 2], torch.full((E * n,), -1), self.tokens, self.logit_tokens])
        return {"kind": kind.long(), "layer": layer.long(), "pos": pos.long(), "index": index.long()}

    def logit_weights(self) -> Float[Tensor, " N"]:
        w = torch.zeros(self.n_nodes, dtype=self.reads.dtype)
        w[self.slices()["logit"]] = self.logit_probs.to(w.dtype)
        return w

    def target_row(self, target: int) -> int:
        """The index into `reads` of node `target` (a feature or a logit)."""
        m = self.n_features
        if target < m:
            return target
        first_logit = self.n_nodes - self.n_logits
        if target >= first_logit:
            return m + target - first_logit
        raise ValueError(f"node {target} is a {KINDS[int(self.node_table()['kind'][target])]} node: no target")

    def dense(self) -> Float[Tensor, "N N"]:
        """The dense adjacency, or a clear error for a top-m graph (use sparse.influence / prune)."""
        if self.adjacency is None:
            raise ValueError(
                f"this graph keeps only each target's top {self.top_inputs.m} inputs (trace(top_m=...)): "
                "use workbench.graphs.sparse.influence / prune, or trace without top_m for the dense matrix"
            )
        return self.adjacency

    def to_tensors(self) -> dict[str, Tensor]:
        edges = {"adjacency": self.adjacency}
        if self.adjacency is None:
            edges = self.top_inputs.to_tensors() | {"node_influence": self.node_influence}
            edges["untraced_mass"] = torch.tensor([self.untraced_mass or 0.0], dtype=torch.float64)
        return edges | {
            "tokens": self.tokens,
            "features": self.features,
            "activations": self.activations,
            "error_layers": torch.tensor(self.error_layers, dtype=torch.long),
            "logit_tokens": self.logit_tokens,
            "logit_probs": self.logit_probs,
            "reads": self.reads,
            "shape": torch.tensor([self.n_layers, self.n_heads]),
        }

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], where: str = GRAPH_FILE) -> Graph:
        missing = {"tokens", "features", "activations", "error_layers", "logit_tokens", "logit_probs"} - set(t)
        missing |= {"reads", "shape"} - set(t)
        if "adjacency" not in t and "top_cols" not in t:
            missing.add("adjacency (or top_cols)")
        if missing:
            raise ValueError(f"{where} lacks {', '.join(sorted(missing))} (an attribution graph)")
        g = cls(
            t["tokens"],
            t["features"],
            t["activations"],
            t["error_layers"].tolist(),
            t["logit_tokens"],
            t["logit_probs"],
            t.get("adjacency"),
            t["reads"],
            int(t["shape"][0]),
            int(t["shape"][1]),
        )
        if "adjacency" not in t:
            g.top_inputs, g.node_influence = TopInputs.from_tensors(t, g.n_nodes), t.get("node_influence")
            g.untraced_mass = float(t["untraced_mass"][0]) if "untraced_mass" in t else 0.0
            return g
        if g.adjacency.shape != (g.n_nodes, g.n_features + g.n_errors + g.n_pos + g.n_logits):
            raise ValueError(f"{where}: adjacency {tuple(g.adjacency.shape)} does not fit the node counts")
        return g

    def save(self, path: str | Path) -> None:
        from ..runs import atomic_save_tensors

        atomic_save_tensors(path, self.to_tensors())

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        from ..runs import load_tensors

        return cls.from_tensors(load_tensors(path), str(path))
