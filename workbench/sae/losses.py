"""Reconstruction and auxiliary losses.

Both auxiliary losses share one mechanism (`aux_loss`): a set of candidate latents, each with a
weight in (0, 1], reconstructs the main reconstruction's residual e = x − x̂ (detached) from its
top-k_aux pre-activations per token; the gradient reaches W_enc, b_enc and W_dec through
ReLU(pre). b_dec is not part of ê (e already excludes it), avoiding the known double count.

- AuxK (Gao et al. 2024): candidates = dead latents, weight 1.
- aux_zipf (the workbench's formulation of Ayonrinde 2024's generalisation): fit a Zipf curve
  c·r^-α to the latents' usage sorted by rank r (least squares in log-log over the more-used
  half of the latents, so the under-used tail being judged does not drag the exponent),
  normalised so the expected usages sum to the k active latents per token. A latent whose
  usage u_i falls short of its expected usage E_i has deficit δ_i = E_i − u_i > 0 and weight
  δ_i / E_i; dead latents have weight 1. When only dead latents fall short, it is AuxK.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .parallel import SINGLE, Layout
from .topk import token_topk


def fvu(x: Float[Tensor, "B d"], x_hat: Float[Tensor, "B d"], layout: Layout = SINGLE) -> Tensor:
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the batch.

    With layout.mode "data" each rank holds some rows of the batch: the denominator is the whole
    batch's and the result this rank's share (the shares sum to the batch's FVU).
    """
    if not layout.data:
        return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    xd = x.detach()
    mean = layout.sum(xd.sum(0)) / layout.global_batch(len(x))
    return (x - x_hat).pow(2).sum() / layout.sum((xd - mean).pow(2).sum()).clamp_min(1e-12)


def aux_loss(
    pre: Float[Tensor, "B F"],
    residual: Float[Tensor, "B d"],
    W_dec: Float[Tensor, "F d"],
    weights: Float[Tensor, " F"],
    k_aux: int,
    layout: Layout = SINGLE,
) -> Tensor:
    """Weighted candidates reconstruct the residual; scaled by min(n_candidates / k_aux, 1)."""
    candidates = weights > 0
    n = int(layout.sum_over_latents(candidates.sum()))
    if n == 0:
        return pre.sum() * 0.0  # keeps the graph; contributes nothing
    # (both shortcuts skip exact no-ops: every column a candidate, every weight 1 as in AuxK)
    scores = pre if bool(candidates.all()) else pre.masked_fill(~candidates, float("-inf"))
    mask = token_topk(layout, scores, min(k_aux, n))
    z_aux = torch.where(mask, pre.relu(), 0.0)
    if not bool((weights == 1).all()):
        z_aux = z_aux * weights
    e = residual.detach()
    return fvu(e, layout.sum_partials(z_aux @ W_dec), layout) * min(n / k_aux, 1.0)


def auxk_weights(dead: torch.BoolTensor) -> Float[Tensor, " F"]:
    return dead.float()


def zipf_expected(usage: Float[Tensor, " F"], k: float) -> Float[Tensor, " F"]:
    """Expected usage of each latent under a Zipf curve fitted to the usage ranks (sum = k)."""
    F = len(usage)
    order = torch.sort(-usage.double(), stable=True).indices
    ranks = torch.empty(F, dtype=torch.float64)
    ranks[order] = torch.arange(1, F + 1, dtype=torch.float64)
    used = (usage > 0) & (ranks <= (F + 1) // 2)
    if int(used.sum()) >= 2:
        lx, ly = ranks[used].log(), usage[used].double().log()
        slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / (lx - lx.mean()).pow(2).sum().clamp_min(1e-12)
        alpha = float((-slope).clamp(0.05, 3.0))
    else:
        alpha = 1.0
    curve = ranks**-alpha
    return (k * curve / curve.sum()).to(usage.dtype)


def aux_zipf_weights(usage: Float[Tensor, " F"], dead: torch.BoolTensor, k: float) -> Float[Tensor, " F"]:
    expected = zipf_expected(usage, k)
    weights = ((expected - usage) / expected.clamp_min(1e-12)).clamp(0.0, 1.0)
    return torch.where(dead, torch.ones_like(weights), weights)
