"""Fused TopK encoder: the pre-activation GEMM and per-row top-k in one pass.

Program (i, s) owns rows i·BLOCK_B … and the s-th of `split` contiguous runs of latent tiles. For
each [BLOCK_B, BLOCK_F] tile it computes pre = (x − b_dec) W_encᵀ + b_enc with tl.dot over d,
packs every (score, latent index) into an order-preserving int64 key (high 32 bits: the fp32
score mapped to an int32 that sorts like it; low 32 bits: 2³²−1−index, so equal scores sort the
lower index first), takes the tile's top-KP keys per row (tl.topk: a partial bitonic sort) and
merges them into a running top-KP held in registers. Only the running top-k of each program
reaches memory: B × split × k keys. With split = 1 those are the answer; otherwise a torch.topk
over split·k keys per row finishes it. The B×F pre-activation matrix is never written.

The same pass optionally (HAS_AUX) keeps the top-K_AUX keys among dead latents for AuxK, and
(HAS_GRAD) selects by the g-SAE score s = pre + β·pre·|g W_decᵀ| (a second tl.dot per tile).

Precision of the GEMM: "fp32" multiplies in fp32 (IEEE, no tf32), so selection is exact against
an fp32 reference; "bf16" rounds (x − b_dec) and W_enc to bf16 for the tensor cores and
accumulates in fp32, as autocast would (the SAE's values are recomputed in the parameters'
dtype by the sparse ops afterwards, so only near-ties can choose differently).

Shapes: x [B, d], W_enc [F, d], b_enc [F], b_dec [d], dead [F] (bool), g [B, d], W_dec [F, d].
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

NEG = -(2**63)  # the key of a masked-out entry: sorts last
# The CPU interpreter multiplies bf16 bit patterns as integers in tl.dot (seen with Triton 3.9), so
# there bf16-rounded operands are multiplied as fp32 copies: the same products the tensor cores form.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


class Blocks(NamedTuple):
    """Launch shape of the encoder kernel: tile rows, tile latents, d per dot, warps, pipeline stages."""

    b: int
    f: int
    d: int
    warps: int = 4
    stages: int = 3

    def holding(self, n: int) -> Blocks:
        """Tiles at least n latents wide, so that a tile can hold n winners."""
        return self._replace(f=max(self.f, n))


INTERPRETER_BLOCKS = Blocks(16, 64, 16, 1, 1)  # the interpreter pays per element: small tiles
GPU_CANDIDATES = [
    Blocks(64, 128, 64, 4, 3),
    Blocks(64, 256, 64, 8, 3),
    Blocks(128, 128, 64, 8, 3),
    Blocks(64, 128, 32, 4, 4),
]
_tuned: dict[tuple, Blocks] = {}


@triton.jit
def _masked_keys(BLOCK_B: tl.constexpr, N: tl.constexpr):
    # −2⁶³ built from typed ops: a literal that large makes the interpreter fall back to
    # Python-object arrays (60× slower sorts)
    return tl.full((BLOCK_B, N), -2147483648, tl.int32).to(tl.int64) << 32


@triton.jit
def _keys(score, cols, valid):
    bits = score.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # int32 that sorts like the float
    low = 4294967295 - cols.to(tl.int64)  # lower latent index sorts first among equal scores
    key = (ordered.to(tl.int64) << 32) | low
    return tl.where(valid, key, _masked_keys(key.shape[0], key.shape[1]))


@triton.jit
def _merge(best, keys, KP: tl.constexpr):
    """Running top-KP [BB, KP] ∪ this tile's keys [BB, BF] → the new running top-KP, sorted."""
    top = tl.topk(keys, KP)
    both = tl.reshape(tl.join(best, top), (best.shape[0], 2 * KP))
    return tl.topk(both, KP)


@triton.jit
def _bf16_as_fp32(a):
    """fp32 → bf16 → fp32 with round-to-nearest-even, in integer ops: the interpreter's own cast
    truncates, the GPU's rounds to nearest."""
    bits = a.to(tl.float32).to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, BF16: tl.constexpr, UPCAST: tl.constexpr):
    if BF16:
        if UPCAST:  # the interpreter's bf16 dot multiplies bit patterns: use exact fp32 copies
            return tl.dot(_bf16_as_fp32(a), _bf16_as_fp32(b))
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _topk_encoder_kernel(
    x_ptr,
    W_enc_ptr,
    b_enc_ptr,
    b_dec_ptr,
    dead_ptr,
    g_ptr,
    W_dec_ptr,
    beta,
    cand_ptr,
    aux_ptr,
    B,
    F,
    D,
    n_split,
    tiles_per_split,
    K: tl.constexpr,
    KP: tl.constexpr,
    K_AUX: tl.constexpr,
    KP_AUX: tl.constexpr,
    HAS_AUX: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    BF16: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b, pid_s = tl.program_id(0), tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    rmask = rows < B
    best = _masked_keys(BLOCK_B, KP)  # [BB, KP] running top keys
    abest = _masked_keys(BLOCK_B, KP_AUX)
    for i in range(0, tiles_per_split):  # the last split's tiles may run past F: masked
        cols = (pid_s * tiles_per_split + i) * BLOCK_F + tl.arange(0, BLOCK_F)  # [BF]
        cmask = cols < F
        acc = tl.zeros((BLOCK_B, BLOCK_F), dtype=tl.float32)
        gacc = tl.zeros((BLOCK_B, BLOCK_F), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dmask = ds < D
            x = tl.load(x_ptr + rows[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
            bd = tl.load(b_dec_ptr + ds, mask=dmask, other=0.0)
            w = tl.load(W_enc_ptr + cols[None, :] * D + ds[:, None], mask=cmask[None, :] & dmask[:, None], other=0.0)
            acc += _dot(x.to(tl.float32) - bd[None, :].to(tl.float32), w, BF16, UPCAST)  # [BB, BD] @ [BD, BF]
            if HAS_GRAD:
                g = tl.load(g_ptr + rows[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
                wd = tl.load(
                    W_dec_ptr + cols[None, :] * D + ds[:, None], mask=cmask[None, :] & dmask[:, None], other=0.0
                )
                gacc += _dot(g, wd, BF16, UPCAST)
        pre = acc + tl.load(b_enc_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        score = pre
        if HAS_GRAD:
            score = pre + beta * pre * tl.abs(gacc)
        valid = rmask[:, None] & cmask[None, :]
        best = _merge(best, _keys(score, cols[None, :], valid), KP)
        if HAS_AUX:
            dead = tl.load(dead_ptr + cols, mask=cmask, other=0) != 0
            abest = _merge(abest, _keys(pre, cols[None, :], valid & dead[None, :]), KP_AUX)
    j = tl.arange(0, KP)[None, :]
    tl.store(cand_ptr + rows[:, None] * (n_split * K) + pid_s * K + j, best, mask=rmask[:, None] & (j < K))
    if HAS_AUX:
        ja = tl.arange(0, KP_AUX)[None, :]
        tl.store(
            aux_ptr + rows[:, None] * (n_split * K_AUX) + pid_s * K_AUX + ja, abest, mask=rmask[:, None] & (ja < K_AUX)
        )


def _finish(cand: Tensor, k: int, split: int) -> tuple[Tensor, Tensor]:
    """Latent indices [B, k] from candidate keys [B, split·k], and which are real (not masked)."""
    keys = cand if split == 1 else torch.topk(cand, k, dim=1, sorted=True).values  # one run: sorted already
    return 4294967295 - (keys & 0xFFFFFFFF), keys != NEG


def _pow2(n: int) -> int:
    return max(2, triton.next_power_of_2(n))  # tl.topk wants a power of two; k = 1 is kept as 2


def tile_keys(k: int, k_aux: int = 0) -> int:
    """How many winners a tile keeps: k (and k_aux) rounded up to a power of two; blocks.f must be
    at least this (Blocks.holding)."""
    return max(_pow2(k), _pow2(k_aux) if k_aux else 2)


def _default_split(B: int, F: int, blocks: Blocks, device: torch.device) -> int:
    """Enough programs to give every multiprocessor about four; fewer when F has few tiles."""
    if device.type != "cuda":
        return 1
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(F, blocks.f), triton.cdiv(4 * n_sm, triton.cdiv(B, blocks.b))))


def _launch(x, W_enc, b_enc, b_dec, k, dead, k_aux, grads, W_dec, beta, bf16, blocks: Blocks, split):
    B, D = x.shape
    F = W_enc.shape[0]
    has_aux, has_grad = dead is not None, grads is not None
    cand = torch.empty(B, split * k, dtype=torch.int64, device=x.device)
    aux = torch.empty(B, split * k_aux if has_aux else 1, dtype=torch.int64, device=x.device)
    dead_i8 = dead.to(torch.int8).contiguous() if has_aux else cand  # any pointer when unused
    tiles_per_split = triton.cdiv(triton.cdiv(F, blocks.f), split)
    _topk_encoder_kernel[(triton.cdiv(B, blocks.b), split)](
        x.contiguous(),
        W_enc.contiguous(),
        b_enc.contiguous(),
        b_dec.contiguous(),
        dead_i8,
        grads.contiguous() if has_grad else x,
        (W_dec if has_grad else W_enc).contiguous(),
        float(beta),
        cand,
        aux,
        B,
        F,
        D,
        split,
        tiles_per_split,
        K=k,
        KP=_pow2(k),
        K_AUX=max(k_aux, 1),
        KP_AUX=_pow2(k_aux) if has_aux else 2,
        HAS_AUX=has_aux,
        HAS_GRAD=has_grad,
        BF16=bf16,
        UPCAST=INTERPRETED,
        BLOCK_B=blocks.b,
        BLOCK_F=blocks.f,
        BLOCK_D=blocks.d,
        num_warps=blocks.warps,
        num_stages=blocks.stages,
    )
    return cand, aux


def _tune(args: tuple, key: tuple, kp: int) -> Blocks:
    """On CUDA, time each candidate launch shape once per problem key and keep the fastest."""
    if key not in _tuned:
        fits = [b.holding(kp) for b in GPU_CANDIDATES]
        if len(fits) == 1:
            _tuned[key] = fits[0]
        else:
            x, F = args[0], args[1].shape[0]

            def ms(bl: Blocks) -> float:
                split = _default_split(len(x), F, bl, x.device)
                try:
                    return triton.testing.do_bench(lambda: _launch(*args, bl, split), warmup=5, rep=20)
                except Exception:  # e.g. a tile that needs more shared memory than the device has
                    return float("inf")

            _tuned[key] = min(fits, key=ms)
    return _tuned[key]


def topk_encode(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    k: int,
    *,
    dead: Tensor | None = None,
    k_aux: int = 0,
    grads: Tensor | None = None,
    W_dec: Tensor | None = None,
    beta: float = 0.0,
    precision: str = "fp32",
    blocks: Blocks | None = None,
    split: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Top-k latent indices per row [B, k] (int64), and, with `dead`, the top-k_aux dead latents
    per row [B, k_aux] (-1 where fewer dead latents exist). No gradient flows through selection.

    `blocks` and `split` fix the launch (tests, benchmarks); by default the interpreter uses small
    tiles and CUDA times `GPU_CANDIDATES` once per problem shape and keeps the fastest.
    """
    B, D = x.shape
    F = W_enc.shape[0]
    if W_enc.shape != (F, D) or b_enc.shape != (F,) or b_dec.shape != (D,):
        raise ValueError(
            f"shapes: x {tuple(x.shape)}, W_enc {tuple(W_enc.shape)}, b_enc {tuple(b_enc.shape)}, "
            f"b_dec {tuple(b_dec.shape)}: expected [B, d], [F, d], [F], [d]"
        )
    if not 1 <= k <= F:
        raise ValueError(f"k={k} must lie in [1, F={F}]")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
    if grads is not None and (W_dec is None or grads.shape != x.shape or W_dec.shape != W_enc.shape):
        raise ValueError("the g-SAE score needs grads [B, d] (like x) and W_dec [F, d] (like W_enc)")
    if dead is not None and (dead.shape != (F,) or not 1 <= k_aux <= F):
        raise ValueError(f"AuxK needs dead [F={F}] and 1 ≤ k_aux ≤ F (got {tuple(dead.shape)}, k_aux={k_aux})")
    kp = tile_keys(k, k_aux if dead is not None else 0)
    args = (x, W_enc, b_enc, b_dec, k, dead, k_aux, grads, W_dec, beta, precision == "bf16")
    if blocks is None:
        key = (
            x.device,
            x.dtype,
            W_enc.dtype,
            B,
            F,
            D,
            k,
            k_aux if dead is not None else 0,
            grads is not None,
            precision,
        )
        blocks = INTERPRETER_BLOCKS.holding(kp) if INTERPRETED or x.device.type != "cuda" else _tune(args, key, kp)
    if blocks.f < kp or blocks.f & (blocks.f - 1):
        raise ValueError(f"blocks.f={blocks.f} must be a power of two ≥ {kp} (k and k_aux rounded up)")
    split = split or _default_split(B, F, blocks, x.device)
    cand, aux = _launch(*args, blocks, split)
    idx, _ = _finish(cand, k, split)
    if dead is None:
        return idx, None
    n_dead = int(dead.sum())
    aux_idx, ok = _finish(aux, k_aux, split)
    m = max(1, min(k_aux, n_dead))  # fewer dead latents than k_aux: the rest would all be masked
    aux_idx, ok = aux_idx[:, :m], ok[:, :m]
    return idx, torch.where(ok, aux_idx, torch.full_like(aux_idx, -1))
