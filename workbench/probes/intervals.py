"""Confidence intervals that the probes' verdicts rest on (METHODS.md, "Uncertainty that a
verdict must carry"): Wilson for proportions, Student t for means over a few seeds or contexts."""

from __future__ import annotations

import torch
from jaxtyping import Float
from scipy import stats
from torch import Tensor

Z95 = 1.96  # the normal 97.5% quantile METHODS.md writes the Wilson interval with


def wilson_interval(hits: Tensor | float, n: Tensor | float, z: float = Z95) -> tuple[Tensor, Tensor]:
    """Wilson score interval of the proportion hits / n, elementwise (float64).

    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n). Unlike p ± z·sqrt(p(1-p)/n) it stays
    inside [0, 1] and does not collapse to a point at 0 or n hits. With n = 0 nothing is known:
    the interval is [0, 1]."""
    hits = torch.as_tensor(hits, dtype=torch.float64)
    hits, n = torch.broadcast_tensors(hits, torch.as_tensor(n, dtype=torch.float64))
    if (hits < 0).any() or (hits > n).any():
        raise ValueError("hits must lie in [0, n]")
    m = n.clamp_min(1)
    p = hits / m
    denom = 1 + z**2 / m
    centre = (p + z**2 / (2 * m)) / denom
    half = z * torch.sqrt(p * (1 - p) / m + z**2 / (4 * m**2)) / denom
    lo, hi = (centre - half).clamp(0, 1), (centre + half).clamp(0, 1)
    empty = n == 0
    return torch.where(empty, 0.0, lo), torch.where(empty, 1.0, hi)


def t_quantile(level: float, df: int) -> float:
    """Two-sided Student t quantile: P(|T| <= q) = level with `df` degrees of freedom."""
    if not 0 < level < 1 or df < 1:
        raise ValueError(f"level must lie in (0, 1) and df >= 1, got level={level}, df={df}")
    return float(stats.t.ppf((1 + level) / 2, df))


def t_interval(values: Float[Tensor, " n *rest"], level: float = 0.95) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over dim 0 and its Student t interval (mean ± t_{n-1} · sd / sqrt(n)), float64.

    The right interval for a handful of seeds: a bootstrap over 3 seeds can only reuse those 3
    values and comes out too narrow."""
    values = torch.as_tensor(values, dtype=torch.float64)
    n = values.shape[0] if values.ndim else 0
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 values along dim 0, got {n}")
    mean = values.mean(0)
    half = t_quantile(level, n - 1) * values.std(0, unbiased=True) / n**0.5
    return mean, mean - half, mean + half
