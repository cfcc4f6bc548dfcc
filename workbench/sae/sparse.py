"""The sparse training path: after selection only the kept (token, latent, pre-activation)
entries live on, and no B×F tensor is differentiated.

    selection   the rule's (selection.py): per-token rules (TopK, g-SAE) call `select_per_token`,
                chunks of CHUNK_ROWS tokens with one GEMM + torch.topk each, so the B×F block
                never leaves cache; rules that couple the batch select densely, then `from_mask`
    decode      x̂[b] = Σ ReLU(pre[b, i])·W_dec[i] over token b's entries (F.embedding_bag)
    backward    W_dec and the kept values through embedding_bag's own backward; W_enc, b_enc and
                b_dec through `_EncoderPre`, which touches only the kept (and aux candidate) rows

This is the Triton path's algorithm (kernels/autograd.py) in plain torch, for every rule. The
dense path (model.forward) stays the reference: in float64 both give the same steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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

    rows: Int[Tensor, " n"]  # token of each entry
    cols: Int[Tensor, " n"]  # latent of each entry
    pre: Float[Tensor, " n"]  # its pre-activation (detached; `kept_values` makes it differentiable)
    offsets: Int[Tensor, " B"]  # index of each token's first entry (embedding_bag's bags)
    # pre-activations of every token at the latents `aux_cols` asked of the selection (the aux
    # loss's candidates), read off the selection's own GEMM; None when none were asked for
    aux_pre: Float[Tensor, "B m"] | None = None


def from_mask(mask: Tensor, pre: Float[Tensor, "B F"], aux_cols: Int[Tensor, " m"] | None = None) -> Kept:
    """The kept entries of a dense rule's [B, F] mask (and `pre` at the columns `aux_cols`)."""
    rows, cols = mask.nonzero().unbind(1)  # row-major: by token, then latent
    aux_pre = None if aux_cols is None else pre[:, aux_cols]
    return Kept(rows, cols, pre[rows, cols], _offsets(rows, mask.shape[0]), aux_pre)


def _offsets(rows: Tensor, tokens: int) -> Tensor:
    counts = torch.bincount(rows, minlength=tokens)
    return torch.cumsum(counts, 0) - counts


def pre_block(
    xc: Float[Tensor, "b d"], W_enc: Float[Tensor, "F d"], b_enc: Float[Tensor, " F"]
) -> Float[Tensor, "b F"]:
    """b_enc + xc W_encᵀ, one GEMM with the bias folded in (model.pre_acts computes the same way)."""
    return torch.addmm(b_enc, xc, W_enc.T)


def select_per_token(
    xc: Float[Tensor, "B d"],
    W_enc: Float[Tensor, "F d"],
    b_enc: Float[Tensor, " F"],
    k: int,
    score: Callable[[Tensor, slice], Tensor] | None = None,
    aux_cols: Int[Tensor, " m"] | None = None,
) -> Kept:
    """The k latents of highest score per token, CHUNK_ROWS tokens at a time; `xc` = x − b_dec.

    `score(block, rows)` turns the pre-activations of tokens `rows` into the rule's scores (None:
    the pre-activations themselves, TopK); the same scores as the dense rule, so the same entries.
    The pre-activations at `aux_cols` are gathered from the same GEMM (Kept.aux_pre)."""
    B = xc.shape[0]
    idx, pre, aux = [], [], []
    with torch.no_grad():
        for start in range(0, B, CHUNK_ROWS):
            block = pre_block(xc[start : start + CHUNK_ROWS], W_enc, b_enc)
            scores = block if score is None else score(block, slice(start, start + CHUNK_ROWS))
            chosen = topk_indices(scores, k)
            idx.append(chosen)
            pre.append(block.gather(1, chosen))
            if aux_cols is not None:
                aux.append(block[:, aux_cols])
    cols = torch.cat(idx).reshape(-1)
    rows = torch.arange(B, device=xc.device).repeat_interleave(k)
    return Kept(
        rows,
        cols,
        torch.cat(pre).reshape(-1),
        torch.arange(0, B * k, k, device=xc.device),
        torch.cat(aux) if aux_cols is not None else None,
    )


class _EncoderPre(torch.autograd.Function):
    """The encoder's pre-activations where the losses read them, their values already computed by
    the selection GEMM: at the kept entries, pre[n] = (x[rows[n]] − b_dec)·W_enc[cols[n]] +
    b_enc[cols[n]], and at every token for the aux loss's candidate latents `aux_cols`.

    The backward reads and writes only those latents' rows, into one F×d buffer for W_enc (the
    kept part through a sparse product, the candidates' as one GEMM added in place). b_dec's
    gradient is −(Σ over entries of g·W_enc[col]) = −(b_enc's gradient)·W_enc: a product with
    an F-vector, instead of a [B, d] gradient for x − b_dec that would then be summed."""

    @staticmethod
    def forward(ctx, pre, aux_pre, x, b_dec, W_enc, b_enc, rows, cols, offsets, aux_cols):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, b_dec, W_enc, rows, cols, offsets, aux_cols)
        return pre.clone(), aux_pre.clone()

    @staticmethod
    def backward(ctx, g, g_aux):
        x, b_dec, W_enc, rows, cols, offsets, aux_cols = ctx.saved_tensors
        n_latents = W_enc.shape[0]
        g = torch.zeros_like(cols, dtype=W_enc.dtype) if g is None else g
        xc = x - b_dec
        db = torch.zeros(n_latents, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        if g_aux is not None:
            db.index_add_(0, aux_cols, g_aux.sum(0))
        dW = None
        if ctx.needs_input_grad[4]:  # dW_enc = Sᵀ xc with S the [B, F] matrix holding g at the kept entries
            S_t = torch.sparse_coo_tensor(
                torch.stack([cols, rows]), g, (n_latents, xc.shape[0]), check_invariants=False
            )  # built in range here
            dW = torch.sparse.mm(S_t, xc)
            if g_aux is not None:
                dW.index_add_(0, aux_cols, g_aux.T @ xc)
        d_x = d_b_dec = None
        if ctx.needs_input_grad[2]:  # not on the training path (x is data); kept for completeness
            d_x = F.embedding_bag(cols, W_enc, offsets, mode="sum", per_sample_weights=g)
            if g_aux is not None:
                d_x = d_x + g_aux @ W_enc[aux_cols]
        if ctx.needs_input_grad[3]:
            d_b_dec = -(db @ W_enc)
        return (None, None, d_x, d_b_dec, dW, db if ctx.needs_input_grad[5] else None, None, None, None, None)


def encoder_values(
    kept: Kept,
    x: Float[Tensor, "B d"],
    b_dec: Float[Tensor, " d"],
    W_enc: Float[Tensor, "F d"],
    b_enc: Float[Tensor, " F"],
    aux_cols: Int[Tensor, " m"] | None = None,
) -> tuple[Float[Tensor, " n"], Float[Tensor, "B m"] | None]:
    """ReLU(pre) at the kept entries, and the pre-activations at `aux_cols` (kept.aux_pre's),
    differentiable in b_dec, W_enc and b_enc (and x)."""
    if aux_cols is None or kept.aux_pre is None:
        aux_cols = torch.zeros(0, dtype=torch.long, device=x.device)
        aux_pre = x.new_zeros(x.shape[0], 0)
    else:
        aux_pre = kept.aux_pre
    vals, aux = _EncoderPre.apply(
        kept.pre, aux_pre, x, b_dec, W_enc, b_enc, kept.rows, kept.cols, kept.offsets, aux_cols
    )
    return vals.relu(), (aux if kept.aux_pre is not None else None)


def decode(kept: Kept, vals: Float[Tensor, " n"], W_dec: Float[Tensor, "F d"]) -> Float[Tensor, "B d"]:
    """Σ over each token's entries of vals·W_dec[col] (b_dec not added)."""
    return F.embedding_bag(kept.cols, W_dec, kept.offsets, mode="sum", per_sample_weights=vals)
