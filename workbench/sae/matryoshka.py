"""The nested (Matryoshka) reconstruction loss, for every selection rule, computed sparsely.

Matryoshka SAEs (Bussmann et al. 2025; Nabeshima 2024) ask every prefix of the dictionary,
latents [0, m), to reconstruct x alone. With w(m) a weight per prefix width m = 1..F (Σ w = 1):

    nested = Σ_m w(m) · Σ_b ‖x_b − R_b(m)‖² / Σ_b ‖x_b − mean(x)‖²,
    R_b(m) = b_dec + Σ_{j < m} z_bj W_dec[j]

With w = δ_F it is the ordinary FVU. The selection is the rule's, over all F latents, once (as
dictionary_learning's, Bussmann's and SAELens' Matryoshka-BatchTopK trainers do: SAELens 6.54
slices the one BatchTopK code per prefix); the aux loss reads the whole reconstruction's residual.

At inference a Matryoshka SAE is its rule's SAE (the nested loss changes training only);
`prefix_sae` cuts one prefix out as an SAE of its own (TopK then re-selects k inside it).

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

from dataclasses import replace

import torch
import torch.nn.functional as F_
from jaxtyping import Float, Int
from torch import Tensor

from .config import SAEConfig
from .model import SparseAutoencoder
from .parallel import SINGLE, Layout
from .sparse import Kept

__all__ = [
    "prefix_cdf",
    "prefix_weights",
    "nested_fvu_sparse",
    "nested_fvu_dense",
    "boundary_pdf",
    "prefix_sae",
]


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


# tokens per chunk: a chunk's [entries, d] temporaries (512·16·128 floats = 4 MB at the benchmark
# shape) stay in cache and in the allocator's reused blocks; the whole batch's (33 MB) would be
# fresh pages every step, and page faults then cost more than the arithmetic
CHUNK_TOKENS = 512


def _running_sums(v: Float[Tensor, "n d"], rows: Tensor, offsets: Tensor, reverse: bool = False):
    """Sum of v over each entry and the earlier (reverse: later) entries of its token: one
    cumulative sum over the chunk in float64, minus (reverse: from) the token's running total,
    so the subtraction costs float64's rounding, not v's."""
    run = torch.cumsum(v.double(), 0)
    padded = torch.cat([run.new_zeros(1, v.shape[1]), run])
    if not reverse:
        return (run - padded[offsets][rows]).to(v.dtype)
    ends = torch.cat([offsets[1:], offsets.new_tensor([len(v)])])  # one past each token's last entry
    return (padded[ends][rows] - run + v.double()).to(v.dtype)


def _chunk(vals, W_dec, e0, p, rows, cols, offsets, d_vals, d_W, d_e0):
    """One chunk of tokens with varying entry counts (rows, offsets local to it): its
    Σ p_q ‖e_q‖² from the residuals e_q themselves, and its gradients into d_vals, d_W, d_e0."""
    Wg = W_dec.index_select(0, cols)  # [n, d] the kept decoder rows (faster than W_dec[cols] on CPU)
    e = e0.index_select(0, rows) - _running_sums(vals.unsqueeze(1) * Wg, rows, offsets)
    sq = (p * e.pow(2).sum(1)).sum()
    a = e.mul_(2 * p.unsqueeze(1))  # A_q = 2 p_q e_q (e is not needed after this)
    D = _running_sums(a, rows, offsets, reverse=True).neg_()  # ∂/∂V_q
    d_vals.copy_((D * Wg).sum(1))
    d_W.index_add_(0, cols, D.mul_(vals.unsqueeze(1)))
    d_e0.zero_().index_add_(0, rows, a)
    return sq


def _chunk_fixed(vals, W_dec, e0, p, cols, c, d_vals, d_W, d_e0):
    """The same for c entries per token, as a quadratic form. Per token, with a = vals [c],
    P̄_q = Σ_{r ≥ q} p_r, M_qq' = P̄_max(q,q') and the rows Wa = [W_dec[cols]; e0] ([c + 1, d]):

        Σ_r p_r ‖e0 − S_r‖² = ½ ⟨N, Wa Waᵀ⟩,   N = [[2 aaᵀ∘M, −2 a∘P̄], [−2 (a∘P̄)ᵀ, 2 P̄_1]]

    (N is symmetric), so ∂/∂Wa = N Wa (the kept rows' gradients and e0's) and ∂/∂a_q =
    2 ((M∘G) a)_q − 2 P̄_q h_q, with G = W Wᵀ and h = W e0 read off the Gram matrix Wa Waᵀ.
    Two batched [c+1, c+1] products per token; the only [n, d] temporaries are the gathered rows
    and their gradients."""
    T, d = len(e0), e0.shape[1]
    F = W_dec.shape[0]
    idx = torch.cat([cols.view(T, c), F + torch.arange(T, device=cols.device).unsqueeze(1)], 1)
    Wa = torch.cat([W_dec, e0]).index_select(0, idx.view(-1)).view(T, c + 1, d)  # one gather of rows and e0
    gram = torch.bmm(Wa, Wa.transpose(1, 2))  # [T, c+1, c+1]
    a = vals.view(T, c)
    pbar = p.view(T, c).flip(1).cumsum(1).flip(1)  # [T, c]
    later = torch.arange(c, device=p.device)
    M = pbar[:, torch.maximum(later[:, None], later[None, :])]  # [T, c, c]
    N = torch.empty_like(gram)
    N[:, :c, :c] = 2 * a.unsqueeze(2) * M * a.unsqueeze(1)
    N[:, :c, c] = N[:, c, :c] = -2 * a * pbar
    N[:, c, c] = 2 * pbar[:, 0]
    sq = 0.5 * (N * gram).sum()
    MG = M * gram[:, :c, :c]
    d_vals.copy_((2 * (torch.bmm(MG, a.unsqueeze(2)).squeeze(2) - pbar * gram[:, :c, c])).view(-1))
    R = torch.bmm(N, Wa)  # [T, c+1, d]: ∂/∂ each kept row, then ∂/∂e0
    d_W.index_add_(0, cols, R[:, :c].reshape(-1, d))
    d_e0.copy_(R[:, c])
    return sq


class _NestedSquares(torch.autograd.Function):
    """Σ_q p_q ‖e0[rows_q] − S_q‖², S the per-token running sum of V = vals·W_dec[cols].

    The gradients are computed in the same pass, chunk by chunk, and only scaled in backward
    (the loss is a scalar, and training always backpropagates it):

        A_q = 2 p_q e_q,  ∂/∂V_q = −Σ_{q' ≥ q in its token} A_q' =: D_q,
        ∂vals_q = ⟨D_q, W_dec[cols_q]⟩,  ∂W_dec[cols_q] += vals_q D_q,  ∂e0_b = Σ_{q in b} A_q
    """

    @staticmethod
    def forward(ctx, vals, W_dec, e0, p, rows, cols, offsets):
        n = len(cols)
        d_vals, d_e0 = torch.empty_like(vals), torch.zeros_like(e0)  # a token with no entry: no gradient
        d_W = torch.zeros_like(W_dec)
        counts = torch.diff(offsets, append=offsets.new_tensor([n]))
        total = e0.new_zeros(())
        with torch.no_grad():
            for c, tokens in _buckets(counts):
                if c <= GRAM_MAX:
                    total += _bucket_fixed(vals, W_dec, e0, p, cols, offsets, c, tokens, d_vals, d_W, d_e0)
                else:
                    total += _bucket_varying(vals, W_dec, e0, p, cols, offsets, counts, tokens, d_vals, d_W, d_e0)
        ctx.save_for_backward(d_vals, d_W, d_e0)
        return total

    @staticmethod
    def backward(ctx, g):
        d_vals, d_W, d_e0 = ctx.saved_tensors
        return g * d_vals, g * d_W, g * d_e0, None, None, None, None


# tokens with more entries than this go through the running sums (_chunk): the quadratic form's
# [c+1, c+1] products cost O(c² d) a token, the running sums O(c d) with a few more passes
GRAM_MAX = 128


def _buckets(counts: Int[Tensor, " B"]):
    """(c, the tokens with exactly c entries) for every c > 0 that occurs; the tokens with more than
    GRAM_MAX entries come together, as one bucket (c: the largest count)."""
    order = torch.argsort(counts, stable=True)
    values, sizes = torch.unique_consecutive(counts[order], return_counts=True)
    start, big = 0, []
    for c, size in zip(values.tolist(), sizes.tolist()):
        part = order[start : start + size]
        start += size
        if c > GRAM_MAX:
            big.append(part)
        elif c > 0:
            yield c, part
    if big:
        yield int(counts.max()), torch.cat(big)


def _entries(offsets, counts, tokens):
    """The entry indices of `tokens`, token by token, and each entry's token position in `tokens`."""
    local = torch.repeat_interleave(torch.arange(len(tokens), device=tokens.device), counts[tokens])
    starts = torch.cumsum(counts[tokens], 0) - counts[tokens]
    within = torch.arange(len(local), device=tokens.device) - starts[local]
    return offsets[tokens][local] + within, local, starts


def _bucket_fixed(vals, W_dec, e0, p, cols, offsets, c, tokens, d_vals, d_W, d_e0):
    """Tokens with exactly c entries, through `_chunk_fixed`, CHUNK_TOKENS · 16 entries at a time."""
    total = e0.new_zeros(())
    step = max(1, CHUNK_TOKENS * 16 // c)
    ar = torch.arange(c, device=cols.device)
    for t0 in range(0, len(tokens), step):
        tk = tokens[t0 : t0 + step]
        ent = (offsets[tk].unsqueeze(1) + ar).view(-1)
        dv, de0 = vals.new_empty(len(ent)), e0.new_empty(len(tk), e0.shape[1])
        total += _chunk_fixed(vals[ent], W_dec, e0[tk], p[ent], cols[ent], c, dv, d_W, de0)
        d_vals[ent], d_e0[tk] = dv, de0
    return total


def _bucket_varying(vals, W_dec, e0, p, cols, offsets, counts, tokens, d_vals, d_W, d_e0):
    """Tokens with varying (large) entry counts, through `_chunk`, CHUNK_TOKENS tokens at a time."""
    total = e0.new_zeros(())
    for t0 in range(0, len(tokens), CHUNK_TOKENS):
        tk = tokens[t0 : t0 + CHUNK_TOKENS]
        ent, local, starts = _entries(offsets, counts, tk)
        dv, de0 = vals.new_empty(len(ent)), e0.new_empty(len(tk), e0.shape[1])
        total += _chunk(vals[ent], W_dec, e0[tk], p[ent], local, cols[ent], starts, dv, d_W, de0)
        d_vals[ent], d_e0[tk] = dv, de0
    return total


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

    Differentiable in vals, W_dec and b_dec (x too): per chunk of tokens one gather of the kept
    decoder rows, a running sum forward and one backward, one index_add (`_NestedSquares`).
    Under a "data" layout the result is this rank's share."""
    B, F = len(x), len(w)
    widths = (w > 0).nonzero().squeeze(1) + 1  # the prefix widths that carry weight, ascending
    if len(widths) <= GROUPED_MAX:
        return _nested_grouped(x, kept, vals, W_dec, b_dec, w, widths, layout)
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
    entries = _NestedSquares.apply(vals, W_dec, e0, p_entry, kept.rows, kept.cols, kept.offsets)
    return ((p_empty * e0.pow(2).sum(1)).sum() + entries) / _variance(x, layout)


# at most this many weighted widths ("fixed", "sampled"): one embedding_bag over (token, group)
# bags; beyond it ("expected": every width) the per-entry running sums of _NestedSquares
GROUPED_MAX = 16


def _nested_grouped(x, kept, vals, W_dec, b_dec, w, widths, layout):
    """The nested loss when only G widths u_1 < ... < u_G carry weight: an entry of latent j
    belongs to group g = #{u_i ≤ j}, and the prefix u_i sums groups 0..i−1. One embedding_bag
    over (token, group) bags gives the group sums Y [B, G, d] without a per-entry [n, d] copy;
    the prefixes' squares and their gradient into Y are `_GroupedSquares`, and autograd goes back
    through the bag."""
    B, G, d = len(x), len(widths), x.shape[1]
    group = torch.searchsorted(widths.to(kept.cols.device), kept.cols, right=True)  # in [0, G]
    bag = kept.rows * (G + 1) + group  # nondecreasing: entries are by token, then latent
    counts = torch.bincount(bag, minlength=B * (G + 1))
    offsets = torch.cumsum(counts, 0) - counts
    Y = F_.embedding_bag(kept.cols, W_dec, offsets, mode="sum", per_sample_weights=vals).view(B, G + 1, d)
    wg = w[widths - 1].to(x.device, x.dtype)
    return _GroupedSquares.apply(Y, x - b_dec, wg) / _variance(x, layout)


class _GroupedSquares(torch.autograd.Function):
    """Σ_i w_i ‖e0 − R_i‖², R_i = Σ_{g ≤ i} Y_g (group G, latents ≥ the last width, in no prefix).

    With a_i = 2 w_i e_i and S_g = Σ_{i ≥ g} a_i: ∂/∂Y_g = −S_g, ∂/∂e0 = S_0. Computed in the
    forward pass, chunk by chunk of tokens, as G running [T, d] updates: autograd's cumsum over
    the group axis (a strided [B, G, d] scan, its backward a flip, a scan and a flip) cost more
    than the embedding_bag it follows."""

    @staticmethod
    def forward(ctx, Y, e0, wg):
        B, G = len(e0), len(wg)
        dY, d_e0 = torch.zeros_like(Y), torch.empty_like(e0)
        total = e0.new_zeros((), dtype=torch.float64)
        weights = wg.tolist()
        with torch.no_grad():
            for t0 in range(0, B, CHUNK_TOKENS):
                t1 = min(t0 + CHUNK_TOKENS, B)
                e, Yc, S = e0[t0:t1].clone(), Y[t0:t1], torch.zeros_like(e0[t0:t1])
                parts = []
                for i in range(G):
                    e.sub_(Yc[:, i])
                    total += weights[i] * float(torch.dot(e.view(-1), e.view(-1)))
                    parts.append(e * (2 * weights[i]))
                for i in range(G - 1, -1, -1):
                    S.add_(parts[i])
                    torch.neg(S, out=dY[t0:t1, i])
                d_e0[t0:t1] = S
        ctx.save_for_backward(dY, d_e0)
        return total.to(e0.dtype)

    @staticmethod
    def backward(ctx, g):
        dY, d_e0 = ctx.saved_tensors
        return g * dY, g * d_e0, None


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


@torch.no_grad()
def prefix_sae(sae: SparseAutoencoder, width: int) -> SparseAutoencoder:
    """Latents [0, width) of `sae` as an SAE of their own, same rule, weights and buffers sliced.

    TopK and g-SAE then keep the k largest pre-activations *inside* the prefix (its L0 stays k;
    training's prefix reconstruction used the whole SAE's selection cut at `width`, fewer than k);
    Mutual and Feature Choice keep their JumpReLU thresholds, so their codes are the whole SAE's
    cut at `width`. A "fixed" run keeps its widths below `width`; other nestings become "none"
    (their boundary distribution is over the whole dictionary)."""
    cfg = sae.cfg
    if sae.layout.latent:
        raise ValueError("sae: a latent-parallel rank holds only part of the dictionary; gather it first")
    if not cfg.k < width <= cfg.d_sae:
        raise ValueError(f"width={width}: expected k={cfg.k} < width <= d_sae={cfg.d_sae}")
    below = tuple(m for m in cfg.matryoshka_widths if m < width) if cfg.matryoshka == "fixed" else ()
    small = replace(
        cfg,
        d_sae=width,
        matryoshka="fixed" if below else "none",
        matryoshka_widths=below,
        k_aux=None if cfg.k_aux is None else min(cfg.k_aux, width),
    )
    out = SparseAutoencoder(small).to(sae.W_enc.device, sae.W_enc.dtype)
    per_latent = {"W_enc", "b_enc", "W_dec", "threshold", "tokens_since_fired", "usage"}
    state = {k: (v[:width] if k in per_latent else v) for k, v in sae.state_dict().items()}
    out.load_state_dict(state)
    return out.train(sae.training)
