"""Top-k helpers every selection rule builds on, and the exact cross-rank top-k merge.

A leaf module: it imports nothing of the workbench, so a rule, the sparse path, the losses and
the distributed layout can all use it without importing each other. Ties always go to the
lower index, which makes every selection a deterministic function of its scores.

The merge functions take any object with the few attributes of `parallel.Layout` they use
(`Ranks` below), so this module need not know where the layout lives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


class Ranks(Protocol):
    """What the cross-rank merge needs of a layout (parallel.Layout has it)."""

    rank: int
    world: int

    @property
    def latent(self) -> bool: ...  # latents (columns) are spread over ranks

    def all_gather(self, t: Tensor) -> Tensor: ...  # [n, ...] -> [world·n, ...] in rank order


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
    if isinstance(k, int):  # one k: the k-th largest is the least of an unsorted top k (cheaper than sorting)
        kth = torch.topk(scores, k_max, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    else:
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


def topk_indices(scores: Float[Tensor, "b F"], k: int) -> Int[Tensor, "b k"]:
    """The columns `topk_mask(scores, k)` keeps, ascending per row (ties to the lower index).

    torch.topk's order among equal scores is unspecified, so its indices are taken as they are
    only where the (k+1)-th score is below the k-th (asking topk for one more costs far less
    than comparing the whole row); rows where a tie straddles the k-th value use topk_mask."""
    if k >= scores.shape[1]:
        return torch.arange(scores.shape[1], device=scores.device).expand(scores.shape[0], -1)
    top = torch.topk(scores, k + 1, dim=1, sorted=True)
    idx = top.indices[:, :k]
    straddled = top.values[:, k] == top.values[:, k - 1]
    if bool(straddled.any()):
        bad = straddled.nonzero().squeeze(1)
        idx = idx.clone()
        idx[bad] = topk_mask(scores[bad], k).nonzero()[:, 1].view(len(bad), k)
    return idx.sort(1).values


def flat_topk_indices(scores: Float[Tensor, "R n"], total: int) -> Int[Tensor, " total"]:
    """Flat (row-major) indices of the `total` largest entries of the whole matrix, ascending;
    equal scores go to the lower flat index: the entries `topk_mask(scores.reshape(1, -1), total)` keeps.

    One torch.topk over R·n entries runs on one thread; this splits it. Each row's top c =
    2·ceil(total / R) values are a subset of the matrix, so the total-th largest among them, `lo`,
    is at most the total-th largest overall: every entry the exact answer keeps is ≥ lo. The
    entries ≥ lo (usually not many more than `total`) then go through the exact top-k, in flat
    order, so ties resolve as they would over the whole matrix."""
    R, n = scores.shape
    if total >= R * n:
        return torch.arange(R * n, device=scores.device)
    if total <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    c = min(2 * -(-total // R), n)  # R·c ≥ total
    top = torch.topk(scores, c, dim=1, sorted=False).values.reshape(-1)
    lo = torch.topk(top, total, sorted=False).values.min()
    idx = (scores >= lo).reshape(-1).nonzero().squeeze(1)  # at least `total`, ascending
    keep = topk_mask(scores.reshape(-1)[idx], total)
    return idx[keep]


def reference_mask(scores: Tensor, k: int | list[int], dim: int = -1) -> Tensor:
    """Float64 reference by a full stable sort (slow, obviously right): tests compare against it."""
    s = scores.double().movedim(dim, -1)
    order = torch.sort(-s, dim=-1, stable=True).indices  # descending, ties in index order
    ks = torch.as_tensor(k).expand(s.shape[:-1]).unsqueeze(-1)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(s.shape[-1]).expand_as(order))
    return (ranks < ks).movedim(-1, dim)


def merged_topk(
    ranks: Ranks | None, scores: Float[Tensor, "R n"], k: int | Tensor, to_global: Callable[[Tensor], Tensor]
) -> Bool[Tensor, "R n"]:
    """This rank's part of `topk_mask` over each row's entries on all ranks together.

    `to_global` maps local column indices to the entry's index in the whole row; equal scores
    go to the lower global index, as in one process. Each rank contributes its top
    min(k, n) per row (a superset of its share of the global top k) as (value, index) pairs.
    """
    if ranks is None or ranks.world == 1:
        return topk_mask(scores, k)
    scores = scores.detach()
    R, n = scores.shape
    k_t = torch.as_tensor(k, device=scores.device).expand(R)
    c = min(int(k_t.max()) if R else 0, n)
    if c == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    local = topk_mask(scores, c)  # exactly c per row
    cols = local.nonzero()[:, 1].view(R, c)  # ascending within each row
    W = ranks.world
    vals = ranks.all_gather(scores.gather(1, cols)).view(W, R, c).permute(1, 0, 2).reshape(R, W * c)
    gidx = ranks.all_gather(to_global(cols)).view(W, R, c).permute(1, 0, 2).reshape(R, W * c)
    order = gidx.argsort(dim=1)  # ties resolve in global index order
    keep_sorted = topk_mask(vals.gather(1, order), k_t)
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    mine = keep.view(R, W, c)[:, ranks.rank]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, cols, mine)


def token_topk(ranks: Ranks | None, scores: Float[Tensor, "B F_local"], k: int) -> Bool[Tensor, "B F_local"]:
    """Top k latents per token; when latents are spread over ranks a token's latents lie on every rank."""
    if ranks is None or not ranks.latent:
        return topk_mask(scores, k)
    offset = ranks.rank * scores.shape[1]
    return merged_topk(ranks, scores, k, lambda cols: cols + offset)
