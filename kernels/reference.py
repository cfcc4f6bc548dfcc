"""Pure-torch references for the Triton kernels (run them in float64 to test against).

Shapes: x [B, d], W_enc [F, d], b_enc [F], W_dec [F, d], b_dec [d], idx [B, k] (int64).
"""

from __future__ import annotations

import torch
from torch import Tensor


def pre_acts(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    """[B, F] = (x − b_dec) W_encᵀ + b_enc."""
    return (x - b_dec) @ W_enc.T + b_enc


def topk_indices(scores: Tensor, k: int, allowed: Tensor | None = None) -> Tensor:
    """[B, k] indices of the k largest scores per row, ties to the lower index, by stable sort;
    `allowed` [F] bool restricts the choice (AuxK: dead latents only)."""
    s = scores.double()
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return torch.sort(-s, dim=1, stable=True).indices[:, :k]


def sparse_values(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, idx: Tensor) -> Tensor:
    """[B, k] = ReLU(pre) at the chosen indices."""
    return pre_acts(x, W_enc, b_enc, b_dec).gather(1, idx).relu()


def sparse_decode(vals: Tensor, idx: Tensor, W_dec: Tensor, bias: Tensor | None) -> Tensor:
    """[B, d] = Σ_j vals[b, j] · W_dec[idx[b, j]] (+ bias)."""
    out = torch.einsum("bk,bkd->bd", vals, W_dec[idx])
    return out if bias is None else out + bias
