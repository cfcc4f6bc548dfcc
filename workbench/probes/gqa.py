"""Grouped-query attention for the KV-cache probes: the unit a KV-cache policy decides on.

With GQA (`cfg.n_key_value_heads` < n_heads) the n_heads query heads of a layer share
n_kv = n_key_value_heads key/value heads, query head h reading KV head h // (n_heads / n_kv)
(TransformerLens' `repeat_interleave` of k and v). A KV cache is per KV head, so DuoAttention's
gates (Xiao et al. 2024, section 3 on GQA) and a trade-off's "keep this one full" are per KV head:
[L, n_kv], expanded to the [L, H] the hooks (`attention_restrict`) take by `expand_kv`, so every
query head of a group gets its KV head's value. A per-query-head ranking becomes per KV head by
`kv_scores` (a group is kept full for its best query head). On an MHA model n_kv = n_heads and
every function here is the identity.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer


def kv_heads(model: HookedTransformer) -> int:
    """KV heads per layer: `cfg.n_key_value_heads` under GQA, else n_heads."""
    n = getattr(model.cfg, "n_key_value_heads", None)
    H = model.cfg.n_heads
    n = H if n is None else int(n)
    if n < 1 or H % n:
        raise ValueError(f"model.cfg.n_key_value_heads={n} must divide n_heads={H}")
    return n


def group_size(n_heads: int, n_kv: int) -> int:
    if n_kv < 1 or n_heads % n_kv:
        raise ValueError(f"n_kv={n_kv} must divide n_heads={n_heads}")
    return n_heads // n_kv


def expand_kv(values: Float[Tensor, "L n_kv"], n_heads: int) -> Float[Tensor, "L H"]:
    """Per-KV-head values to per query head: query head h gets KV head h // (n_heads / n_kv)'s.
    Differentiable (the gates' gradient flows back summed over each group)."""
    values = torch.as_tensor(values)
    if values.ndim != 2:
        raise ValueError(f"values: expected [L, n_kv], got shape {tuple(values.shape)}")
    return values.repeat_interleave(group_size(n_heads, values.shape[1]), dim=1)


def kv_scores(scores: Float[Tensor, "L H"], n_kv: int) -> Float[Tensor, "L n_kv"]:
    """A per-query-head score as a per-KV-head one: the best query head of each group (a KV head
    must stay full as soon as one of its query heads needs it, `attention_restrict.kv_fraction`).
    Scores already [L, n_kv] are returned as they are; on expanded values (`expand_kv`) the exact
    inverse."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    L, H = scores.shape
    if H == n_kv:
        return scores
    return scores.view(L, n_kv, group_size(H, n_kv)).amax(-1)


def to_units(scores, n_layers: int, n_heads: int, n_kv: int, what: str = "scores") -> Tensor:
    """`scores` [L][H] (per query head) or [L][n_kv] (per KV head) as [L, n_kv] float64, or a
    ValueError naming `what` and the shapes it accepts."""
    t = torch.as_tensor(scores, dtype=torch.float64)
    if t.shape == (n_layers, n_kv):
        return t
    if t.shape == (n_layers, n_heads):
        return kv_scores(t, n_kv)
    want = f"[n_layers={n_layers}][n_heads={n_heads}]"
    if n_kv != n_heads:
        want += f" or [n_layers={n_layers}][n_kv_heads={n_kv}]"
    raise ValueError(f"{what}: expected {want}, got shape {tuple(t.shape)}")


__all__ = ["expand_kv", "group_size", "kv_heads", "kv_scores", "to_units"]
