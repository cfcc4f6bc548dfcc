"""Sparse SAE operations in Triton: only the B·k selected rows of W_enc and W_dec are touched.

    gather_dot(A, M, idx, bias)    out[b, j] = A[b]·M[idx[b, j]] (+ bias[idx[b, j]])   [B, k]
    sparse_decode(v, idx, M, bias) out[b]    = Σ_j v[b, j]·M[idx[b, j]] (+ bias)        [B, d]
    scatter_outer(c, idx, A, F)    dM[i]     = Σ_{(b,j): idx=i} c[b, j]·A[b]            [F, d]
                                   db[i]     = Σ_{(b,j): idx=i} c[b, j]                 [F]

idx entries < 0 mean "no latent" and contribute nothing. Accumulation is fp32 (atomics for the
scatter); no (B × k × d) intermediate is ever built.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _gather_dot_kernel(
    A_ptr,
    M_ptr,
    idx_ptr,
    bias_ptr,
    out_ptr,
    B,
    D,
    K,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rk = (rows[:, None] < B) & (ks[None, :] < K)
    idx = tl.load(idx_ptr + rows[:, None] * K + ks[None, :], mask=rk, other=-1)  # [BB, BK]
    ok = rk & (idx >= 0)
    safe = tl.where(ok, idx, 0)
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dm = ds < D
        a = tl.load(A_ptr + rows[:, None] * D + ds[None, :], mask=(rows[:, None] < B) & dm[None, :], other=0.0)
        m = tl.load(
            M_ptr + safe[:, :, None] * D + ds[None, None, :], mask=ok[:, :, None] & dm[None, None, :], other=0.0
        )  # [BB, BK, BD]
        acc += tl.sum(a.to(tl.float32)[:, None, :] * m.to(tl.float32), axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + safe, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * K + ks[None, :], tl.where(ok, acc, 0.0), mask=rk)


@triton.jit
def _decode_kernel(
    v_ptr,
    idx_ptr,
    M_ptr,
    bias_ptr,
    out_ptr,
    B,
    D,
    K,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rm, dm = rows < B, ds < D
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for j in range(0, K):
        i = tl.load(idx_ptr + rows * K + j, mask=rm, other=-1)
        v = tl.load(v_ptr + rows * K + j, mask=rm, other=0.0).to(tl.float32)
        ok = rm & (i >= 0)
        m = tl.load(M_ptr + tl.where(ok, i, 0)[:, None] * D + ds[None, :], mask=ok[:, None] & dm[None, :], other=0.0)
        acc += tl.where(ok, v, 0.0)[:, None] * m.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ds, mask=dm, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * D + ds[None, :], acc, mask=rm[:, None] & dm[None, :])


@triton.jit
def _scatter_outer_kernel(
    c_ptr, idx_ptr, A_ptr, dM_ptr, db_ptr, B, D, K, HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rm, dm = rows < B, ds < D
    a = tl.load(A_ptr + rows[:, None] * D + ds[None, :], mask=rm[:, None] & dm[None, :], other=0.0).to(tl.float32)
    first_d_block = (tl.zeros((BLOCK_B,), dtype=tl.int32) + tl.program_id(1)) == 0  # bias counted once
    for j in range(0, K):
        i = tl.load(idx_ptr + rows * K + j, mask=rm, other=-1)
        c = tl.load(c_ptr + rows * K + j, mask=rm, other=0.0).to(tl.float32)
        ok = rm & (i >= 0)
        safe = tl.where(ok, i, 0)
        tl.atomic_add(dM_ptr + safe[:, None] * D + ds[None, :], c[:, None] * a, mask=ok[:, None] & dm[None, :])
        if HAS_BIAS:
            tl.atomic_add(db_ptr + safe, c, mask=ok & first_d_block)


def _check(idx: Tensor, B: int) -> None:
    if idx.ndim != 2 or idx.shape[0] != B or idx.dtype != torch.int64:
        raise ValueError(f"idx: expected int64 [{B}, k], got {idx.dtype} {tuple(idx.shape)}")


def gather_dot(
    A: Tensor,
    M: Tensor,
    idx: Tensor,
    bias: Tensor | None = None,
    *,
    block_b: int = 16,
    block_k: int = 16,
    block_d: int = 32,
) -> Tensor:
    B, D = A.shape
    _check(idx, B)
    K = idx.shape[1]
    out = torch.empty(B, K, dtype=torch.float32, device=A.device)
    grid = (triton.cdiv(B, block_b), triton.cdiv(K, block_k))
    _gather_dot_kernel[grid](
        A.contiguous(),
        M.contiguous(),
        idx.contiguous(),
        bias.contiguous() if bias is not None else M,
        out,
        B,
        D,
        K,
        HAS_BIAS=bias is not None,
        BLOCK_B=block_b,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
    )
    return out


def sparse_decode(
    v: Tensor, idx: Tensor, M: Tensor, bias: Tensor | None = None, *, block_b: int = 16, block_d: int = 64
) -> Tensor:
    B, K = v.shape
    _check(idx, B)
    D = M.shape[1]
    out = torch.empty(B, D, dtype=torch.float32, device=v.device)
    grid = (triton.cdiv(B, block_b), triton.cdiv(D, block_d))
    _decode_kernel[grid](
        v.contiguous(),
        idx.contiguous(),
        M.contiguous(),
        bias.contiguous() if bias is not None else M,
        out,
        B,
        D,
        K,
        HAS_BIAS=bias is not None,
        BLOCK_B=block_b,
        BLOCK_D=block_d,
    )
    return out


def scatter_outer(
    c: Tensor, idx: Tensor, A: Tensor, F: int, with_bias: bool = False, *, block_b: int = 16, block_d: int = 64
) -> tuple[Tensor, Tensor | None]:
    B, K = c.shape
    _check(idx, B)
    D = A.shape[1]
    dM = torch.zeros(F, D, dtype=torch.float32, device=c.device)
    db = torch.zeros(F, dtype=torch.float32, device=c.device) if with_bias else dM
    grid = (triton.cdiv(B, block_b), triton.cdiv(D, block_d))
    _scatter_outer_kernel[grid](
        c.contiguous(),
        idx.contiguous(),
        A.contiguous(),
        dM,
        db,
        B,
        D,
        K,
        HAS_BIAS=with_bias,
        BLOCK_B=block_b,
        BLOCK_D=block_d,
    )
    return dM, (db if with_bias else None)
