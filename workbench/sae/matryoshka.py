"""The nested (Matryoshka) reconstruction loss, for every selection rule, computed sparsely.

Matryoshka SAEs (Bussmann et al. 2025; Nabeshima 2024) ask every prefix of the dictionary,
latents [0, m), to reconstruct x alone. With w(m) a weight per prefix width m = 1..F (Σ w = 1):

    nested = Σ_m w(m) · Σ_b ‖x_b − R_b(m)‖² / Σ_b ‖x_b − mean(x)‖²,
    R_b(m) = b_dec + Σ_{j < m} z_bj W_dec[j]

With w = δ_F it is the ordinary FVU. The selection is the rule's, over all F latents, once (as
dictionary_learning's and Bussmann's trainers do; SAELens' Matryoshka-BatchTopK re-selects
inside each prefix); the aux loss reads the whole reconstruction's residual.

Sparse form (no extra GEMM). A token's kept latents sorted by index, j_1 < ... < j_n: the prefix
reconstruction is the partial sum after entry r, R_r = b_dec + Σ_{q ≤ r} z_{j_q} W_dec[j_q], for
every m in (j_r, j_{r+1}] (j_0 = 0, j_{n+1} = F). With C(t) = Σ_{m ≤ t} w(m),

    Σ_m w(m) ‖x − R(m)‖² = Σ_{r=0..n} (C(j_{r+1}) − C(j_r)) ‖x − R_r‖²,

one segmented cumulative sum over the token's n kept rows: O(B k d) for ANY w, so fixed widths,
widths sampled each step, or the exact expectation over a boundary distribution cost the same.

Boundary distributions (SAEConfig.matryoshka):
- "fixed": the widths SAEConfig.matryoshka_widths (F added), each weight 1/G.
- "sampled": each step G − 1 widths drawn i.i.d. from p(m) = (m/F)^a − ((m−1)/F)^a (the CDF
  (m/F)^a, a = matryoshka_power: a < 1 favours small prefixes; Nabeshima's Pareto-style draw
  uses a = 0.5, without replacement) plus F, each weight 1/G.
- "expected": the exact expectation of "sampled": w(m) = (G−1)/G · p(m) + [m = F]/G (no noise,
  the same cost on the sparse path; the dense reference then needs one GEMM per width).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .config import SAEConfig
from .parallel import SINGLE, Layout
from .sparse import Kept

__all__ = ["prefix_cdf", "prefix_weights", "nested_fvu_sparse", "nested_fvu_dense", "boundary_pdf"]


def boundary_pdf(F: int, power: float) -> Float[Tensor, " F"]:
    """p(m) for m = 1..F (index m − 1): the increments of the CDF (m/F)^power, float64."""
    m = torch.arange(F + 1, dtype=torch.float64)
    cdf = (m / F) ** power
    return cdf[1:] - cdf[:-1]


def prefix_weights(cfg: SAEConfig, seed: int = 0, step: int = 0) -> Float[Tensor, " F"] | None:
    """w(m) for m = 1..F (index m − 1), summing to 1, for training step `step`; None without nesting.

    "sampled" draws from a generator seeded by (seed, step), so every rank, and a resumed run,
    draws the same widths at the same step."""
    F, G = cfg.d_sae, cfg.matryoshka_prefixes
    w = torch.zeros(F, dtype=torch.float64)
    if cfg.matryoshka == "none":
        return None
    if cfg.matryoshka == "fixed":
        widths = sorted(set(cfg.matryoshka_widths) | {F})
        w[torch.tensor(widths) - 1] = 1.0 / len(widths)
        return w
    if cfg.matryoshka == "expected":
        return (
            boundary_pdf(F, cfg.matryoshka_power) * (G - 1) / G
            + torch.nn.functional.one_hot(torch.tensor(F - 1), F).double() / G
        )
    gen = torch.Generator().manual_seed(1_000_003 * seed + step)
    drawn = torch.multinomial(boundary_pdf(F, cfg.matryoshka_power), G - 1, replacement=True, generator=gen)
    w.index_add_(0, drawn, torch.full((G - 1,), 1.0 / G, dtype=torch.float64))
    w[F - 1] += 1.0 / G
    return w


def prefix_cdf(w: Float[Tensor, " F"]) -> Float[Tensor, " F+1"]:
    """C(t) = Σ_{m ≤ t} w(m) for t = 0..F (C(0) = 0, C(F) = 1)."""
    return torch.cat([w.new_zeros(1), torch.cumsum(w, 0)])


def _segment_cumsum(v: Float[Tensor, "n d"], kept: Kept, tokens: int) -> Float[Tensor, "n d"]:
    """Running sum of v over each token's entries (kept is ordered by token, then latent).

    With one count per token it is a cumulative sum along a [B, c, d] view, exact in v's dtype;
    otherwise (Mutual/Feature Choice) one cumulative sum over all entries in float64, minus each
    token's sum before its first entry (the subtraction costs float64's rounding, not v's)."""
    n = len(v)
    if n and n % tokens == 0 and bool((kept.offsets == torch.arange(0, n, n // tokens, device=v.device)).all()):
        return v.view(tokens, n // tokens, -1).cumsum(1).view(n, -1)
    run = torch.cumsum(v.double(), 0)
    before = torch.cat([run.new_zeros(1, v.shape[1]), run])[kept.offsets]  # [B, d]: sum before each token
    return (run - before[kept.rows]).to(v.dtype)


def nested_fvu_sparse(
    x: Float[Tensor, "B d"],
    kept: Kept,
    vals: Float[Tensor, " n"],
    W_dec: Float[Tensor, "F d"],
    b_dec: Float[Tensor, " d"],
    w: Float[Tensor, " F"],
    layout: Layout = SINGLE,
) -> Float[Tensor, ""]:
    """The nested loss from the kept entries alone (module docstring): O(B k d), no GEMM.

    Differentiable in vals, W_dec and b_dec (autograd through one gather, one segmented cumsum
    and the weighted squares). Under a "data" layout the result is this rank's share."""
    B, F = len(x), len(w)
    C = prefix_cdf(w.to(x.device, x.dtype))
    e0 = x - b_dec  # [B, d] the residual of the empty prefix
    nxt = torch.full_like(kept.cols, F)  # the latent of the token's next entry, F after its last
    same = kept.rows[1:] == kept.rows[:-1]
    nxt[:-1] = torch.where(same, kept.cols[1:], nxt[:-1])
    first = torch.full((B,), F, dtype=torch.long, device=x.device)  # j_1 (F: no entry)
    has = torch.bincount(kept.rows, minlength=B) > 0
    first[has] = kept.cols[kept.offsets[has]]
    p_entry = C[nxt] - C[kept.cols]  # weight of the reconstruction after each entry
    p_empty = C[first]  # weight of b_dec alone: the prefixes below the token's first latent
    e = e0[kept.rows] - _segment_cumsum(vals.unsqueeze(1) * W_dec[kept.cols], kept, B)  # [n, d]
    sq = (p_empty * e0.pow(2).sum(1)).sum() + (p_entry * e.pow(2).sum(1)).sum()
    return sq / _variance(x, layout)


def nested_fvu_dense(
    x: Float[Tensor, "B d"],
    z: Float[Tensor, "B F"],
    W_dec: Float[Tensor, "F d"],
    b_dec: Float[Tensor, " d"],
    w: Float[Tensor, " F"],
    layout: Layout = SINGLE,
) -> Float[Tensor, ""]:
    """The reference: one prefix reconstruction z[:, :m] W_dec[:m] + b_dec per width m with w(m) > 0."""
    total = x.new_zeros(())
    w = w.detach().cpu()
    for m in (w > 0).nonzero().squeeze(1).tolist():
        x_hat = z[:, : m + 1] @ W_dec[: m + 1] + b_dec
        total = total + float(w[m]) * (x - x_hat).pow(2).sum()
    return total / _variance(x, layout)


def _variance(x: Float[Tensor, "B d"], layout: Layout) -> Float[Tensor, ""]:
    """Σ_b ‖x_b − mean(x)‖² over the whole (global) batch, detached: the FVU denominator."""
    xd = x.detach()
    if not layout.data:
        return (xd - xd.mean(0)).pow(2).sum().clamp_min(1e-12)
    mean = layout.sum(xd.sum(0)) / layout.global_batch(len(x))
    return layout.sum((xd - mean).pow(2).sum()).clamp_min(1e-12)
