"""A planted hierarchy for measuring feature absorption, and its per-edge scores.

The data (after Nabeshima 2024's toy tree): `n_parents` parent features, each with `n_children`
mutually exclusive children that fire only with it, and `n_other` independent features; all
directions orthonormal (so every mixture is exactly decodable). A sample is Σ a_f · d_f over the
firing features f, with magnitudes a_f uniform in [lo, hi].

    parent fires           with p_parent
    one child fires        with p_child, given its parent (which child: uniform)
    each other feature     with p_other

A TopK-style SAE can lower its L0 by absorbing: a latent for "parent + child i" (decoder along
a·d_parent + b·d_child) fires instead of parent and child latents, and the parent's latent
goes silent whenever a child is active. Per edge (parent P, child c), with latent(f) the latent
whose decoder row is closest (cosine) to d_f:

    absorption   P(latent(P) does not fire | c fires)     (METHODS.md: the absorption rate)
    leak         cos(W_dec[latent(P)], d_c)                the parent decoder's share of the child
    child_share  cos(W_dec[latent(c)], d_P)                the child decoder's share of the parent
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..fielddoc import doc
from .losses import fvu
from .model import SparseAutoencoder


@dataclass(frozen=True)
class PlantedTreeConfig:
    """Parents with mutually exclusive children, plus independent features, in orthonormal directions."""

    n_parents: int = doc(8, "parent features")
    n_children: int = doc(4, "mutually exclusive children per parent")
    n_other: int = doc(24, "independent features outside the tree")
    d: int = doc(64, "ambient dimension (at least the number of features: directions are orthonormal)")
    p_parent: float = doc(0.2, "firing probability of each parent")
    p_child: float = doc(0.8, "probability that one of a firing parent's children fires")
    p_other: float = doc(0.05, "firing probability of each independent feature")
    magnitude: tuple[float, float] = doc((0.5, 1.5), "uniform range of a firing feature's coefficient")
    seed: int = doc(0, "directions and samples")

    def __post_init__(self) -> None:
        if self.n_features > self.d:
            raise ValueError(f"d={self.d}: needs at least n_features={self.n_features} for orthonormal directions")
        for name in ("p_parent", "p_child", "p_other"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a probability in [0, 1]")

    @property
    def n_features(self) -> int:
        return self.n_parents * (1 + self.n_children) + self.n_other

    @property
    def mean_l0(self) -> float:
        return self.n_parents * self.p_parent * (1 + self.p_child) + self.n_other * self.p_other


class PlantedTree(NamedTuple):
    """Features 0..P-1 are the parents, then each parent's children in order, then the others."""

    directions: Float[Tensor, "n_features d"]  # orthonormal rows
    parent: Int[Tensor, " E"]  # edge e: parent feature ...
    child: Int[Tensor, " E"]  # ... and its child feature


class PlantedSample(NamedTuple):
    acts: Float[Tensor, "n d"]
    fires: Bool[Tensor, "n n_features"]


class EdgeScores(NamedTuple):
    """One SAE's scores on a planted tree (EdgeScores per edge, means over the tree's edges)."""

    absorption: Float[Tensor, " E"]  # P(parent's latent silent | child fires)
    leak: Float[Tensor, " E"]  # cos(parent latent's decoder, child direction)
    child_share: Float[Tensor, " E"]  # cos(child latent's decoder, parent direction)
    parent_latent: Int[Tensor, " E"]  # the latent matched to each edge's parent
    fvu: float  # of the whole SAE on the scored samples
    l0: float  # mean positive latents per sample (inference encoding)


def planted_tree(cfg: PlantedTreeConfig) -> PlantedTree:
    gen = torch.Generator().manual_seed(cfg.seed)
    q, _ = torch.linalg.qr(torch.randn(cfg.d, cfg.d, generator=gen, dtype=torch.float64))
    P, C = cfg.n_parents, cfg.n_children
    parent = torch.arange(P).repeat_interleave(C)
    child = P + torch.arange(P * C)
    return PlantedTree(q.T[: cfg.n_features].float().contiguous(), parent, child)


def sample(cfg: PlantedTreeConfig, tree: PlantedTree, n: int, seed: int) -> PlantedSample:
    """n samples: parents, one child of a firing parent (or none), independent features."""
    gen = torch.Generator().manual_seed(seed)
    P, C = cfg.n_parents, cfg.n_children
    fires = torch.zeros(n, cfg.n_features, dtype=torch.bool)
    parents = torch.rand(n, P, generator=gen) < cfg.p_parent
    fires[:, :P] = parents
    has_child = parents & (torch.rand(n, P, generator=gen) < cfg.p_child)
    which = torch.randint(0, C, (n, P), generator=gen)
    rows, ps = has_child.nonzero().unbind(1)
    fires[rows, P + ps * C + which[rows, ps]] = True
    fires[:, P + P * C :] = torch.rand(n, cfg.n_other, generator=gen) < cfg.p_other
    lo, hi = cfg.magnitude
    mags = lo + (hi - lo) * torch.rand(n, cfg.n_features, generator=gen)
    return PlantedSample((mags * fires) @ tree.directions, fires)


def closest_latents(W_dec: Float[Tensor, "F d"], directions: Float[Tensor, "f d"]) -> Int[Tensor, " f"]:
    """For each direction, the latent whose decoder row has the highest cosine with it."""
    W = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (directions @ W.T).argmax(1)


@torch.no_grad()
def edge_scores(sae: SparseAutoencoder, tree: PlantedTree, data: PlantedSample) -> EdgeScores:
    """Absorption, leak and child share per edge (module docstring), from the inference encoding."""
    x = data.acts.to(sae.W_dec.dtype)
    z = sae.encode(x)
    W = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    lat = closest_latents(W, tree.directions.to(W.dtype))
    p_lat, c_lat = lat[tree.parent], lat[tree.child]
    child_on = data.fires[:, tree.child]  # [n, E]
    silent = z[:, p_lat] <= 0  # [n, E]
    absorption = (silent & child_on).sum(0) / child_on.sum(0).clamp_min(1)
    leak = (W[p_lat] * tree.directions[tree.child].to(W.dtype)).sum(1)
    share = (W[c_lat] * tree.directions[tree.parent].to(W.dtype)).sum(1)
    l0 = float((z > 0).sum(1).float().mean())
    return EdgeScores(absorption.float(), leak.float(), share.float(), p_lat, fvu(x, sae.decode(z)).item(), l0)
