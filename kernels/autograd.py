"""Autograd wrappers: the SAE's encode-at-indices and sparse decode, with a sparse backward.

`SparseEncodeDecode.apply(x, W_enc, b_enc, W_dec, b_dec, idx, add_b_dec)` returns
(vals [B, k] = ReLU(pre at idx), out [B, d] = Σ_j vals·W_dec[idx] (+ b_dec)). Its backward gives
W_enc, b_enc, W_dec, b_dec (and x if it requires grad) from the B·k selected rows only.
Selection (which idx) happens before, without gradient: `topk_encode` on CUDA.

`triton_forward(x, W_enc, b_enc, W_dec, b_dec, k, dead=, k_aux=, grads=, beta=, precision=)` is
what the trainer calls on CUDA: the fused top-k (and, with `dead`, AuxK candidates) then the sparse
encode/decode, for the main path and the AuxK path (whose reconstruction ê leaves b_dec out).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sparse_ops import gather_dot, scatter_outer, sparse_decode
from .topk_encoder import topk_encode


class SparseEncodeDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, idx, add_b_dec: bool):
        xc = x - b_dec
        pre = gather_dot(xc, W_enc, idx, b_enc)  # [B, k] fp32
        vals = pre.relu()
        out = sparse_decode(vals, idx, W_dec, b_dec if add_b_dec else None)
        ctx.save_for_backward(xc, W_enc, W_dec, idx, pre)
        ctx.add_b_dec = add_b_dec
        ctx.x_grad = x.requires_grad
        return vals.to(x.dtype), out.to(x.dtype)

    @staticmethod
    def backward(ctx, g_vals, g_out):
        xc, W_enc, W_dec, idx, pre = ctx.saved_tensors
        F = W_enc.shape[0]
        vals = pre.relu()
        g_out = g_out if g_out is not None else torch.zeros_like(xc)
        gv = gather_dot(g_out, W_dec, idx)  # dL/dvals through the decoder
        if g_vals is not None:
            gv = gv + g_vals.float()
        dW_dec, _ = scatter_outer(vals, idx, g_out, F)
        gp = gv * (pre > 0)  # ReLU
        dW_enc, db_enc = scatter_outer(gp, idx, xc, F, with_bias=True)
        d_xc = sparse_decode(gp, idx, W_enc)  # dL/d(x − b_dec)
        db_dec = -d_xc.sum(0)
        if ctx.add_b_dec:
            db_dec = db_dec + g_out.float().sum(0)
        dx = d_xc.to(xc.dtype) if ctx.x_grad else None
        return (
            dx,
            dW_enc.to(W_enc.dtype),
            db_enc.to(W_enc.dtype),
            dW_dec.to(W_dec.dtype),
            db_dec.to(xc.dtype),
            None,
            None,
        )


def triton_forward(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    k: int,
    *,
    dead: Tensor | None = None,
    k_aux: int = 0,
    grads: Tensor | None = None,
    beta: float = 0.0,
    precision: str = "fp32",
):
    """Main path (idx, vals, x̂) and, with dead latents, the AuxK path (aux_idx, ê without b_dec).
    `precision` is the selection GEMM's (see topk_encode); vals and x̂ are in the inputs' dtype."""
    with torch.no_grad():
        idx, aux_idx = topk_encode(
            x, W_enc, b_enc, b_dec, k, dead=dead, k_aux=k_aux, grads=grads, W_dec=W_dec, beta=beta, precision=precision
        )
    vals, x_hat = SparseEncodeDecode.apply(x, W_enc, b_enc, W_dec, b_dec, idx, True)
    if aux_idx is None:
        return idx, vals, x_hat, None, None
    _, e_hat = SparseEncodeDecode.apply(x, W_enc, b_enc, W_dec, b_dec, aux_idx, False)
    return idx, vals, x_hat, aux_idx, e_hat
