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
    adjacency: Float[Tensor, "N N"]
    reads: Float[Tensor, "T d"]  # T = m + k targets
    n_layers: int
    n_heads: int

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
        return self.adjacency.shape[0]

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
        w = torch.zeros(self.n_nodes, dtype=self.adjacency.dtype)
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

    def to_tensors(self) -> dict[str, Tensor]:
        return {
            "tokens": self.tokens,
            "features": self.features,
            "activations": self.activations,
            "error_layers": torch.tensor(self.error_layers, dtype=torch.long),
            "logit_tokens": self.logit_tokens,
            "logit_probs": self.logit_probs,
            "adjacency": self.adjacency,
            "reads": self.reads,
            "shape": torch.tensor([self.n_layers, self.n_heads]),
        }

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], where: str = GRAPH_FILE) -> Graph:
        missing = {"tokens", "features", "activations", "error_layers", "logit_tokens", "logit_probs"} - set(t)
        missing |= {"adjacency", "reads", "shape"} - set(t)
        if missing:
            raise ValueError(f"{where} lacks {', '.join(sorted(missing))} (an attribution graph)")
        g = cls(
            t["tokens"],
            t["features"],
            t["activations"],
            t["error_layers"].tolist(),
            t["logit_tokens"],
            t["logit_probs"],
            t["adjacency"],
            t["reads"],
            int(t["shape"][0]),
            int(t["shape"][1]),
        )
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
