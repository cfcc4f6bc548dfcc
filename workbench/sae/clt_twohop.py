"""A planted two-hop circuit, to see where a cross-layer transcoder is unfaithful to the model's
own computation (issue 30, item 5).

The model is a two-layer MLP stack on a residual stream (no attention, no normalisation):

    x_0 = Σ_i a_i e_i                       sparse features, a_i ~ U(0.8, 1.2) when on
    h_i = ReLU(⟨e_i, x_0⟩ − 0.1)            MLP 0: one detector per feature, in [0.7, 1.1]
    y_0 = Σ_i h_i v_i
    x_1 = x_0 + y_0
    y_1 = Σ_{c ∈ chains} ReLU(⟨v_c, x_1⟩) u_c          one-hop chains: layer 1 re-reads h_c
        + 2·ReLU(⟨v_A + v_B, x_1⟩ − 1.2) w             the AND of features A and B (two hops)

e, v, u, w are orthonormal, so ⟨v_A + v_B, x_1⟩ = h_A + h_B: one detector alone (≤ 1.1) never
passes 1.2, both (≥ 1.4) always do. The model computes the AND in layer 1 from layer 0's outputs.
A CLT may instead write w (and the chains' u_c) from layer-0 latents straight into layer 1's
output (one hop), which is what circuit-tracer's paper calls collapsing a path; a per-layer
transcoder cannot (it has no cross-layer decoder).

Measured (`two_hop_report`): the share of layer 1's reconstructed w-component (and u-component)
written by layer-0 latents' cross-layer decoders, and, per layer, the latent whose activation
correlates best with the AND's own activation ReLU(h_A + h_B − 1.2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from .clt import CLTConfig, CrossLayerTranscoder
from .model import SparseAutoencoder

A, B = 0, 1  # the AND's two features
THRESHOLD = 1.2


class TwoHop(NamedTuple):
    x: Float[Tensor, "n 2 d"]  # each layer's MLP input
    y: Float[Tensor, "n 2 d"]  # each layer's MLP output
    and_act: Float[Tensor, " n"]  # ReLU(h_A + h_B − 1.2), the AND unit's activation
    directions: dict[str, Tensor]  # e [n_feat, d], v, u [n_chain, d], w [d]


def two_hop_data(
    n: int,
    d: int = 64,
    n_feat: int = 20,
    n_chain: int = 6,
    p: float = 0.1,
    p_and: float = 0.35,
    seed: int = 0,
    draw: int = 0,
) -> TwoHop:
    """`n` tokens of the planted two-hop model (module docstring). Features A and B are on with
    probability `p_and` each (so the AND fires on p_and² of tokens), the others with `p`; the
    chains are features 2..n_chain+1. `seed` fixes the model, `draw` the samples."""
    if 2 * n_feat + n_chain + 1 > d or n_chain + 2 > n_feat:
        raise ValueError(f"d={d}: needs room for 2·n_feat + n_chain + 1 orthonormal directions, n_chain + 2 <= n_feat")
    Q = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0].T
    e, v = Q[:n_feat], Q[n_feat : 2 * n_feat]
    u, w = Q[2 * n_feat : 2 * n_feat + n_chain], Q[2 * n_feat + n_chain]
    gen = torch.Generator().manual_seed(1_000 + draw)
    prob = torch.full((n_feat,), p, dtype=torch.float64)
    prob[[A, B]] = p_and
    on = torch.rand(n, n_feat, generator=gen, dtype=torch.float64) < prob
    a = torch.where(on, 0.8 + 0.4 * torch.rand(n, n_feat, generator=gen, dtype=torch.float64), 0.0)
    x0 = a @ e
    h = (x0 @ e.T - 0.1).relu()
    y0 = h @ v
    x1 = x0 + y0
    chains = range(2, 2 + n_chain)
    and_act = ((x1 @ (v[A] + v[B])) - THRESHOLD).relu()
    y1 = (x1 @ v[list(chains)].T).relu() @ u + 2.0 * and_act[:, None] * w
    x, y = torch.stack([x0, x1], 1).float(), torch.stack([y0, y1], 1).float()
    return TwoHop(x, y, and_act.float(), {"e": e.float(), "v": v.float(), "u": u.float(), "w": w.float()})


@torch.no_grad()
def planted_clt(data: TwoHop, one_hop: bool, d_sae: int = 32) -> CrossLayerTranscoder:
    """The planted model written exactly as a CLT, two ways (TopK with k = d_sae − 1, so every
    positive pre-activation is kept). Two-hop: layer 0's latents are its detectors (e_i, −0.1,
    writing v_i); layer 1's re-read v_c (writing u_c) and v_A + v_B (−1.2, writing 2w): the model's
    own path. One-hop: the AND moves to a layer-0 latent reading e_A + e_B with bias −1.4 and
    writing 2w into layer 1's output (when both are on h_A + h_B − 1.2 = a_A + a_B − 1.4, and
    below 0 otherwise), and the chains' u_c are written by the detectors themselves."""
    e, v, u, w = (data.directions[n] for n in ("e", "v", "u", "w"))
    n_feat, n_chain, d = len(e), len(u), e.shape[1]
    if n_feat + 1 > d_sae or n_chain + 1 > d_sae:
        raise ValueError(f"d_sae={d_sae}: needs n_feat + 1 = {n_feat + 1} latents per layer")
    cfg = CLTConfig(n_layers=2, d_in=d, d_sae=d_sae, k=d_sae - 1)
    clt = CrossLayerTranscoder(cfg)
    for p in clt.parameters():
        p.zero_()
    clt.W_enc[0, :n_feat], clt.b_enc[0, :n_feat] = e, -0.1
    clt.W_dec[0][:n_feat, 0] = v
    chains = slice(2, 2 + n_chain)
    if one_hop:
        clt.W_dec[0][chains, 1] = u  # ReLU(⟨v_c, x_1⟩) = h_c: the detector writes u_c itself
        clt.W_enc[0, n_feat], clt.b_enc[0, n_feat] = e[A] + e[B], -(THRESHOLD + 0.2)
        clt.W_dec[0][n_feat, 1] = 2.0 * w
    else:
        clt.W_enc[1, :n_chain], clt.W_dec[1][:n_chain, 0] = v[chains], u
        clt.W_enc[1, n_chain], clt.b_enc[1, n_chain] = v[A] + v[B], -THRESHOLD
        clt.W_dec[1][n_chain, 0] = 2.0 * w
    return clt.eval()


@torch.no_grad()
def cross_layer_share(
    clt: CrossLayerTranscoder, x: Float[Tensor, "n L d"], direction: Float[Tensor, "... d"], layer: int = 1
) -> float:
    """Of layer `layer`'s reconstruction along `direction` (one vector, or rows summed in
    quadrature), the share written by earlier layers' latents: Σ_tokens |P(cross)|² /
    (Σ |P(cross)|² + Σ |P(own)|²), P the projection on `direction`'s rows, cross the writes of
    layers < `layer`, own the layer's own latents' (the bias is neither)."""
    z = clt.encode(x)
    dirs = direction.reshape(-1, direction.shape[-1])
    cross = sum(z[:, src] @ clt.W_dec[src][:, layer - src] for src in range(layer))
    own = z[:, layer] @ clt.W_dec[layer][:, 0]
    c, o = float((cross @ dirs.T).pow(2).sum()), float((own @ dirs.T).pow(2).sum())
    return c / (c + o) if c + o > 0 else float("nan")


def best_correlation(codes: Float[Tensor, "n F"], target: Float[Tensor, " n"]) -> tuple[float, int]:
    """The largest Pearson r of any latent's activation with `target`, and that latent."""
    c = codes.double() - codes.double().mean(0)
    t = target.double() - target.double().mean()
    r = (c * t[:, None]).sum(0) / (c.norm(dim=0) * t.norm()).clamp_min(1e-12)
    best = int(r.argmax())
    return float(r[best]), best


class TwoHopReport(NamedTuple):
    clt_fvu: list[float]  # held-out FVU of each layer's target
    pair_fvu: list[float]
    and_share: float  # CLT: share of layer 1's w-component written by layer-0 latents
    chain_share: float  # CLT: the same for the chains' u-components
    clt_and_r: list[float]  # best |r| with the AND activation among each CLT layer's latents
    pair_and_r: list[float]  # ... among each per-layer transcoder's latents
    clt_and_fvu: float  # FVU of layer 1's w-component alone (is the AND reproduced?)
    pair_and_fvu: float


@torch.no_grad()
def two_hop_report(clt: CrossLayerTranscoder, pair: list[SparseAutoencoder], data: TwoHop) -> TwoHopReport:
    """What the module docstring measures, on held-out `data`."""
    clt.eval()
    y_hat = clt(data.x).y_hat
    pair_hat = torch.stack([s.eval()(data.x[:, j]).x_hat for j, s in enumerate(pair)], 1)

    def fvu(t, t_hat):
        return float((t - t_hat).pow(2).sum() / (t - t.mean(0)).pow(2).sum())

    w = data.directions["w"]
    z = clt.encode(data.x)
    return TwoHopReport(
        [fvu(data.y[:, j], y_hat[:, j]) for j in range(2)],
        [fvu(data.y[:, j], pair_hat[:, j]) for j in range(2)],
        cross_layer_share(clt, data.x, w),
        cross_layer_share(clt, data.x, data.directions["u"]),
        [best_correlation(z[:, j], data.and_act)[0] for j in range(2)],
        [best_correlation(s.encode(data.x[:, j]), data.and_act)[0] for j, s in enumerate(pair)],
        fvu(data.y[:, 1] @ w, y_hat[:, 1] @ w),
        fvu(data.y[:, 1] @ w, pair_hat[:, 1] @ w),
    )
