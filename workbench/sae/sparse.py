"""The sparse training path: after selection only the kept (token, latent, pre-activation)
entries live on, and no B×F tensor is differentiated.

    selection   the rule's (selection.py): per-token rules (TopK, g-SAE) call `select_per_token`,
                chunks of CHUNK_ROWS tokens with one GEMM + torch.topk each, so the B×F block
                never leaves cache; rules that couple the batch select densely, then `from_mask`
    decode      x̂[b] = Σ ReLU(pre[b, i])·W_dec[i] over token b's entries (F.embedding_bag)
    backward    W_dec and the kept values through embedding_bag's own backward; W_enc, b_enc and
                x − b_dec through `_KeptPre`, which touches only the kept rows

This is the Triton path's algorithm (kernels/autograd.py) in plain torch, for every rule. The
dense path (model.forward) stays the reference: in float64 both give the same steps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .topk import topk_indices

# 512 rows × F = 8192 latents of float32 is 16 MB: measured fastest of 128/256/512 at both
# benchmark shapes (the chunk's topk then runs while its GEMM output is still in L2/L3)
CHUNK_ROWS = 512


class Kept(NamedTuple):
    """The entries a rule kept, ordered by token and, within a token, by latent."""
    rows: Int[Tensor, "n"]  # token of each entry
    cols: Int[Tensor, "n"]  # latent of each entry
    pre: Float[Tensor, "n"]  # its pre-activation (detached; `kept_values` makes it differentiable)
    offsets: Int[Tensor, "B"]  # index of each token's first entry (embedding_bag's bags)


def from_mask(mask: Tensor, pre: Float[Tensor, "B F"]) -> Kept:
    """The kept entries of a dense rule's [B, F] mask."""
    rows, cols = mask.nonzero().unbind(1)  # row-major: by token, then latent
    return Kept(rows, cols, pre[rows, cols], _offsets(rows, mask.shape[0]))


def _offsets(rows: Tensor, tokens: int) -> Tensor:
    counts = torch.bincount(rows, minlength=tokens)
    return torch.cumsum(counts, 0) - counts


def select_per_token(xc: Float[Tensor, "B d"], W_enc: Float[Tensor, "F d"], b_enc: Float[Tensor, "F"], k: int,
                     score: Callable[[Tensor, slice], Tensor] | None = None) -> Kept:
    """The k latents of highest score per token, CHUNK_ROWS tokens at a time; `xc` = x − b_dec.

    `score(block, rows)` turns the pre-activations of tokens `rows` into the rule's scores (None:
    the pre-activations themselves, TopK); the same scores as the dense rule, so the same entries."""
    B = xc.shape[0]
    idx, pre = [], []
    with torch.no_grad():
        for start in range(0, B, CHUNK_ROWS):
            # the dense path's own formula (not addmm, which rounds differently), so that the same
            # pre-activations are selected and near-zero values fire the same way
            block = xc[start:start + CHUNK_ROWS] @ W_enc.T + b_enc
            scores = block if score is None else score(block, slice(start, start + CHUNK_ROWS))
            chosen = topk_indices(scores, k)
            idx.append(chosen)
            pre.append(block.gather(1, chosen))
    cols = torch.cat(idx).reshape(-1)
    rows = torch.arange(B, device=xc.device).repeat_interleave(k)
    return Kept(rows, cols, torch.cat(pre).reshape(-1), torch.arange(0, B * k, k, device=xc.device))


class _KeptPre(torch.autograd.Function):
    """pre[n] = xc[rows[n]]·W_enc[cols[n]] + b_enc[cols[n]], its value already computed by the
    selection GEMM; the backward reads and writes only the kept latents' rows."""

    @staticmethod
    def forward(ctx, pre, xc, W_enc, b_enc, rows, cols, offsets):
        ctx.save_for_backward(xc, W_enc, rows, cols, offsets)
        return pre.clone()

    @staticmethod
    def backward(ctx, g):
        xc, W_enc, rows, cols, offsets = ctx.saved_tensors
        n_latents = W_enc.shape[0]
        d_xc = dW = db = None
        if ctx.needs_input_grad[1]:  # Σ over a token's entries of g·W_enc[col]
            d_xc = F.embedding_bag(cols, W_enc, offsets, mode="sum", per_sample_weights=g)
        if ctx.needs_input_grad[2]:  # dW_enc = Sᵀ xc with S the [B, F] matrix holding g at the kept entries
            S_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), g, (n_latents, xc.shape[0]),
                                          check_invariants=False)  # built in range here
            dW = torch.sparse.mm(S_t, xc)
        if ctx.needs_input_grad[3]:
            db = torch.zeros(n_latents, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        return None, d_xc, dW, db, None, None, None


def kept_values(kept: Kept, xc: Float[Tensor, "B d"], W_enc: Float[Tensor, "F d"],
                b_enc: Float[Tensor, "F"]) -> Float[Tensor, "n"]:
    """ReLU(pre) at the kept entries, differentiable in xc, W_enc and b_enc."""
    return _KeptPre.apply(kept.pre, xc, W_enc, b_enc, kept.rows, kept.cols, kept.offsets).relu()


def decode(kept: Kept, vals: Float[Tensor, "n"], W_dec: Float[Tensor, "F d"]) -> Float[Tensor, "B d"]:
    """Σ over each token's entries of vals·W_dec[col] (b_dec not added)."""
    return F.embedding_bag(kept.cols, W_dec, kept.offsets, mode="sum", per_sample_weights=vals)
