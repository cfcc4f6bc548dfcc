"""Selection rules: which latents are active for which tokens.

Each rule maps pre-activations `pre` [B, F] (and, for g-SAE, the loss gradient at the input) to
a boolean mask of the same shape. Kept values are always ReLU(pre) at the mask, so every rule
reconstructs the same way. Ties are broken towards the lower index (token or latent), which
makes the active set a deterministic function of the scores, and testable exactly.

Each rule also takes a `layout` (a `Layout`: the few operations below; parallel.Layout is the
one the trainer passes) when one SAE is spread over ranks: it then merges what the ranks hold
into the same choice one process would make. This module imports nothing of parallel.py, which
builds on it.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

RULES = ("topk", "gradient", "mutual_choice", "feature_choice")


class Layout(Protocol):
    """What a rule needs from the distributed layout (see parallel.Layout for the semantics)."""

    rank: int
    world: int

    @property
    def data(self) -> bool: ...  # rows of the batch are spread over ranks

    def global_batch(self, local_rows: int) -> int: ...

    def token_topk(self, scores: Tensor, k: int) -> Tensor: ...  # top k per row over all ranks' columns

    def merged_topk(self, scores: Tensor, k: int | Tensor,
                    to_global: Callable[[Tensor], Tensor]) -> Tensor: ...  # per row, over all ranks' entries


def topk_mask(scores: Float[Tensor, "... n"], k: int | Int[Tensor, "..."]) -> Bool[Tensor, "... n"]:
    """The k largest entries of each slice along the last axis; equal scores go to lower indices.

    `k` is an int or one count per slice (0 keeps nothing). Costs one torch.topk plus O(n) work.
    """
    n = scores.shape[-1]
    k_t = torch.as_tensor(k, device=scores.device).expand(scores.shape[:-1])
    k_max = int(k_t.max()) if k_t.numel() else 0
    if k_max > n:
        raise ValueError(f"k={k_max} exceeds the {n} entries it selects from")
    if k_max == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    top = torch.topk(scores, k_max, dim=-1, sorted=True).values  # [..., k_max], descending
    kth = top.gather(-1, (k_t - 1).clamp(min=0).unsqueeze(-1))  # the k-th largest value
    at_least = scores >= kth
    if bool((at_least.sum(-1) == k_t).all()) and bool((k_t > 0).all()):
        return at_least  # no tie straddles the k-th value (the usual case with real data)
    above = scores > kth
    tied = scores == kth
    room = k_t.unsqueeze(-1) - above.sum(-1, keepdim=True)  # how many of the ties still fit
    mask = above | (tied & (tied.cumsum(-1) <= room))
    return mask & (k_t > 0).unsqueeze(-1)


def select_topk(pre: Float[Tensor, "B F"], k: int, layout: Layout | None = None) -> Bool[Tensor, "B F"]:
    """TopK (Gao et al. 2024): k latents per token."""
    return topk_mask(pre, k) if layout is None else layout.token_topk(pre, k)


def gradient_scores(pre: Float[Tensor, "B F"], grads: Float[Tensor, "B d"], W_dec: Float[Tensor, "F d"],
                    beta: float) -> Float[Tensor, "B F"]:
    """g-SAE score s = pre + β·pre·|⟨g, W_dec,i⟩|: activation plus its first-order loss effect."""
    effect = (grads @ W_dec.T).abs()  # [B, F]
    return pre + beta * pre * effect


def select_gradient(pre: Float[Tensor, "B F"], grads: Float[Tensor, "B d"], W_dec: Float[Tensor, "F d"],
                    k: int, beta: float, layout: Layout | None = None) -> Bool[Tensor, "B F"]:
    """g-SAE (Olmo et al. 2024): top-k of the gradient-aware score; values stay ReLU(pre)."""
    return select_topk(gradient_scores(pre, grads, W_dec, beta), k, layout)


def select_mutual_choice(pre: Float[Tensor, "B F"], k: int, layout: Layout | None = None) -> Bool[Tensor, "B F"]:
    """Mutual Choice (Ayonrinde 2024; BatchTopK): the k·B largest entries of the whole batch."""
    B, F = pre.shape
    if layout is None:
        return topk_mask(pre.reshape(1, B * F), k * B).reshape(B, F)

    def to_global(c):  # local flat index (row·F + col) -> row-major index in the whole batch × all latents
        if layout.data:  # this rank's rows follow the lower ranks' rows
            return c + layout.rank * B * F
        return c // F * (F * layout.world) + layout.rank * F + c % F  # this rank's columns within a row
    return layout.merged_topk(pre.reshape(1, B * F), k * layout.global_batch(B), to_global).view(B, F)


def select_feature_choice(pre: Float[Tensor, "B F"], capacities: Int[Tensor, "F"],
                          layout: Layout | None = None) -> Bool[Tensor, "B F"]:
    """Feature Choice: latent i keeps its `capacities[i]` highest-scoring tokens of the batch."""
    B, F = pre.shape
    if capacities.shape != (F,):
        raise ValueError(f"capacities: expected shape ({F},), got {tuple(capacities.shape)}")
    if layout is None or not layout.data:
        return topk_mask(pre.T, capacities.clamp(max=B)).T
    # a latent's tokens lie on every rank: merge them, this rank's rows after the lower ranks'
    caps = capacities.clamp(max=layout.global_batch(B))
    return layout.merged_topk(pre.T, caps, lambda c: c + layout.rank * B).T


def uniform_capacities(F: int, total: int) -> Int[Tensor, "F"]:
    """m = total // F for every latent, the remainder spread one each over the first latents."""
    m = torch.full((F,), total // F, dtype=torch.long)
    m[: total - int(m.sum())] += 1
    return m


def zipf_capacities(usage: Float[Tensor, "F"], total: int, alpha: float, cap: int) -> Int[Tensor, "F"]:
    """Capacities m_i ∝ 1/rank_i^α (rank 1 = most used), each at most `cap`, summing to `total`.

    Rounds by largest remainder; what the cap cuts off is poured over the uncapped latents.
    """
    F = len(usage)
    if total > F * cap:
        raise ValueError(f"total={total} tokens cannot fit {F} latents of capacity {cap}")
    order = torch.sort(-usage.double(), stable=True).indices  # most used first
    weight = torch.empty(F, dtype=torch.float64)
    weight[order] = torch.arange(1, F + 1, dtype=torch.float64) ** -alpha
    share = torch.zeros(F, dtype=torch.float64)
    free = torch.ones(F, dtype=torch.bool)
    left = float(total)
    for _ in range(F):  # water-filling: at most F rounds, usually two or three
        share[free] = left * weight[free] / weight[free].sum()
        over = free & (share > cap)
        if not over.any():
            break
        share[over] = cap
        free &= ~over
        left = total - float(share[~free].sum())
    m = share.floor().long()
    remainder = total - int(m.sum())
    if remainder:
        frac = torch.where(m < cap, share - m, torch.full_like(share, -1.0))
        m[torch.sort(-frac, stable=True).indices[:remainder]] += 1
    return m


def reference_mask(scores: Tensor, k: int | list[int], dim: int = -1) -> Tensor:
    """Float64 reference by a full stable sort (slow, obviously right): tests compare against it."""
    s = scores.double().movedim(dim, -1)
    order = torch.sort(-s, dim=-1, stable=True).indices  # descending, ties in index order
    ks = torch.as_tensor(k).expand(s.shape[:-1]).unsqueeze(-1)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(s.shape[-1]).expand_as(order))
    return (ranks < ks).movedim(-1, dim)

