"""Fused TopK encoder: the pre-activation GEMM and per-row top-k in one pass.

Each program computes one [BLOCK_B, BLOCK_F] tile of pre = (x − b_dec) W_encᵀ + b_enc with
tl.dot over d, packs every (score, latent index) into an order-preserving int64 key
(high 32 bits: the fp32 score mapped to an int32 that sorts like it; low 32 bits: 2³²−1−index,
so equal scores sort the lower index first), sorts the tile's rows and stores only the first K
keys. The B×F pre-activation matrix never reaches memory: only B × n_tiles × K candidate keys do,
and a top-k over those (torch.topk on int64, small) gives the exact top-k of the row.

The same pass optionally (HAS_AUX) stores the top-K_AUX keys among dead latents for AuxK, and
(HAS_GRAD) selects by the g-SAE score s = pre + β·pre·|g W_decᵀ| (a second tl.dot per tile).

Shapes: x [B, d], W_enc [F, d], b_enc [F], b_dec [d], dead [F] (int8), g [B, d], W_dec [F, d].
Exactness needs K ≤ BLOCK_F and K_AUX ≤ BLOCK_F (a tile can hold all of a row's winners).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

NEG = -(2**63)  # the key of a masked-out entry: sorts last
# The CPU interpreter multiplies bf16 bit patterns as integers in tl.dot (seen with Triton 3.9), so
# there the dot runs on fp32 copies; on a GPU bf16 operands go to the tensor cores as they are.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _keys(score, cols, valid):
    bits = score.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # int32 that sorts like the float
    low = 4294967295 - cols.to(tl.int64)  # lower latent index sorts first among equal scores
    key = (ordered.to(tl.int64) << 32) | low
    # the masked key (−2⁶³) built from typed ops: a literal that large makes the interpreter fall
    # back to Python-object arrays (60× slower sorts)
    masked = tl.full(key.shape, -2147483648, tl.int32).to(tl.int64) << 32
    return tl.where(valid, key, masked)


@triton.jit
def _topk_encoder_kernel(x_ptr, W_enc_ptr, b_enc_ptr, b_dec_ptr, dead_ptr, g_ptr, W_dec_ptr, beta,
                         cand_ptr, aux_ptr, B, F, D,
                         K: tl.constexpr, K_AUX: tl.constexpr, HAS_AUX: tl.constexpr, HAS_GRAD: tl.constexpr,
                         DOT_FP32: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_f = tl.program_id(1)
    n_tiles = tl.num_programs(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    cols = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)  # [BF]
    rmask, cmask = rows < B, cols < F
    acc = tl.zeros((BLOCK_B, BLOCK_F), dtype=tl.float32)
    gacc = tl.zeros((BLOCK_B, BLOCK_F), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        x = tl.load(x_ptr + rows[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
        bd = tl.load(b_dec_ptr + ds, mask=dmask, other=0.0)
        xc = (x.to(tl.float32) - bd[None, :].to(tl.float32)).to(x.dtype)
        w = tl.load(W_enc_ptr + cols[None, :] * D + ds[:, None], mask=cmask[None, :] & dmask[:, None], other=0.0)
        if DOT_FP32:
            xc, w = xc.to(tl.float32), w.to(tl.float32)
        acc += tl.dot(xc, w)  # [BB, BD] @ [BD, BF]
        if HAS_GRAD:
            g = tl.load(g_ptr + rows[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
            wd = tl.load(W_dec_ptr + cols[None, :] * D + ds[:, None], mask=cmask[None, :] & dmask[:, None], other=0.0)
            if DOT_FP32:
                g, wd = g.to(tl.float32), wd.to(tl.float32)
            gacc += tl.dot(g, wd)
    pre = acc + tl.load(b_enc_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    score = pre
    if HAS_GRAD:
        score = pre + beta * pre * tl.abs(gacc)
    valid = rmask[:, None] & cmask[None, :]
    keys = tl.sort(_keys(score, cols[None, :], valid), 1, descending=True)
    j = tl.arange(0, BLOCK_F)[None, :]
    tl.store(cand_ptr + rows[:, None] * (n_tiles * K) + pid_f * K + j, keys, mask=rmask[:, None] & (j < K))
    if HAS_AUX:
        dead = tl.load(dead_ptr + cols, mask=cmask, other=0) != 0
        akeys = tl.sort(_keys(pre, cols[None, :], valid & dead[None, :]), 1, descending=True)
        tl.store(aux_ptr + rows[:, None] * (n_tiles * K_AUX) + pid_f * K_AUX + j, akeys,
                 mask=rmask[:, None] & (j < K_AUX))


def _finish(cand: Tensor, k: int) -> tuple[Tensor, Tensor]:
    keys = torch.topk(cand, k, dim=1, sorted=True).values
    return 4294967295 - (keys & 0xFFFFFFFF), keys != NEG


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, *, dead: Tensor | None = None,
                k_aux: int = 0, grads: Tensor | None = None, W_dec: Tensor | None = None, beta: float = 0.0,
                block_b: int = 64, block_f: int = 256, block_d: int = 32) -> tuple[Tensor, Tensor | None]:
    """Top-k latent indices per row [B, k] (int64), and, with `dead`, the top-k_aux dead latents
    per row [B, k_aux] (-1 where fewer dead latents exist). No gradient flows through selection."""
    B, D = x.shape
    F = W_enc.shape[0]
    if W_enc.shape != (F, D) or b_enc.shape != (F,) or b_dec.shape != (D,):
        raise ValueError(f"shapes: x {tuple(x.shape)}, W_enc {tuple(W_enc.shape)}, b_enc {tuple(b_enc.shape)}, "
                         f"b_dec {tuple(b_dec.shape)}: expected [B, d], [F, d], [F], [d]")
    if not 1 <= k <= F:
        raise ValueError(f"k={k} must lie in [1, F={F}]")
    gpu_blocks, interpreter_blocks = (64, 256, 32), (16, 64, 16)  # the interpreter pays per element
    bb, bf, bd = interpreter_blocks if INTERPRETED else gpu_blocks
    block_b, block_d = block_b or bb, block_d or bd
    block_f = max(block_f or bf, triton.next_power_of_2(max(k, k_aux)))
    has_aux = dead is not None and k_aux > 0
    has_grad = grads is not None
    if has_grad and (W_dec is None or grads.shape != x.shape):
        raise ValueError("the g-SAE score needs grads [B, d] and W_dec [F, d]")
    n_tiles = triton.cdiv(F, block_f)
    cand = torch.empty(B, n_tiles * k, dtype=torch.int64, device=x.device)
    aux = torch.empty(B, n_tiles * k_aux if has_aux else 1, dtype=torch.int64, device=x.device)
    dead_i8 = dead.to(torch.int8).contiguous() if has_aux else cand  # any pointer when unused
    grid = (triton.cdiv(B, block_b), n_tiles)
    _topk_encoder_kernel[grid](
        x.contiguous(), W_enc.contiguous(), b_enc.contiguous(), b_dec.contiguous(), dead_i8,
        grads.contiguous() if has_grad else x, (W_dec if has_grad else W_enc).contiguous(), float(beta),
        cand, aux, B, F, D, K=k, K_AUX=max(k_aux, 1), HAS_AUX=has_aux, HAS_GRAD=has_grad,
        DOT_FP32=x.dtype == torch.float32 or INTERPRETED,
        BLOCK_B=block_b, BLOCK_F=block_f, BLOCK_D=block_d)
    idx, _ = _finish(cand, k)
    if not has_aux:
        return idx, None
    n_dead = int(dead.sum())
    aux_idx, ok = _finish(aux, min(k_aux, max(n_dead, 1)))
    return idx, torch.where(ok, aux_idx, torch.full_like(aux_idx, -1))
