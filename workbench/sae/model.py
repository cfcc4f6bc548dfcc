"""The sparse autoencoder: one module for every selection rule.

    pre = (x − b_dec) W_encᵀ + b_enc            [B, F]
    z   = ReLU(pre) on the rule's mask, else 0  [B, F]
    x̂   = z W_dec + b_dec                       [B, d]

A transcoder (cfg.transcoder) predicts a target y of width cfg.d_target instead of x:

    pre = x W_encᵀ + b_enc                      (b_dec is in y's space: the input is not centred)
    ŷ   = z W_dec + b_dec (+ x W_skipᵀ)         W_skip [d_out, d_in] with cfg.skip, starting at 0

An SAE's decoder rows stay at unit norm: the trainer removes each row's parallel gradient
component before the step and renormalises after it. A transcoder's decoder starts at 0 and is
left free, as sparsify's (transcode=True): at equal steps and lr, unit-norm rows left the default
model's MLP FVU 12-17% higher (benchmarks/transcoder_step.py). Everything that differs between
selection rules (the training selection on either path, the inference encoding, the threshold
Mutual and Feature Choice learn for their JumpReLU inference) is the rule's own (selection.py,
`self.rule`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from .config import SAEConfig
from .parallel import SINGLE, Layout
from .selection import Rule, get_rule
from .sparse import Kept, decode, encoder_values, pre_block


class SAEOutput(NamedTuple):
    x_hat: Float[Tensor, "B d"]  # a transcoder's prediction ŷ [B, d_out]
    z: Float[Tensor, "B F"]  # kept activations, zero elsewhere
    mask: Bool[Tensor, "B F"]  # which entries the rule kept (a kept entry may be 0 after ReLU)
    pre: Float[Tensor, "B F"]


class SparseOutput(NamedTuple):
    """`forward_sparse`'s result: the training rule's kept entries instead of [B, F] tensors."""

    x_hat: Float[Tensor, "B d"]
    kept: Kept  # which (token, latent) entries the rule kept, and their pre-activations
    vals: Float[Tensor, " n"]  # ReLU(pre) at the kept entries (differentiable)
    aux_pre: Float[Tensor, "B m"] | None = None  # pre-activations at the aux candidates (differentiable)


def geometric_median(points: Float[Tensor, "n d"], iters: int = 100, tol: float = 1e-6) -> Float[Tensor, " d"]:
    """Weiszfeld's algorithm in float64."""
    p = points.double()
    y = p.mean(0)
    for _ in range(iters):
        w = 1.0 / (p - y).norm(dim=1).clamp_min(1e-9)
        y_next = (w[:, None] * p).sum(0) / w.sum()
        if (y_next - y).norm() < tol * (1 + y.norm()):
            y = y_next
            break
        y = y_next
    return y.to(points.dtype)


INIT_BLOCK = 4096  # rows drawn from one seed


def init_rows(F: int, d: int, seed: int, rows: slice) -> Float[Tensor, "n d"]:
    """Rows `rows` of a random F×d matrix with unit-norm rows. Drawn in blocks of INIT_BLOCK rows,
    block b from seed + 7919·b, so a rank holding some latents draws only their blocks (a wide
    dictionary is never materialised whole) and gets the same rows as one process would."""
    parts = []
    for b in range(rows.start // INIT_BLOCK, -(-rows.stop // INIT_BLOCK)):
        first = b * INIT_BLOCK
        block = torch.randn(min(INIT_BLOCK, F - first), d, generator=torch.Generator().manual_seed(seed + 7919 * b))
        parts.append(block[max(rows.start - first, 0) : rows.stop - first])
    w = torch.cat(parts)
    return w / w.norm(dim=1, keepdim=True)


class SparseAutoencoder(nn.Module):
    """`layout` spreads it over torch.distributed ranks (see parallel.py); with
    layout.mode == "latent" this rank holds latents layout.latent_slice(d_sae) only."""

    def __init__(self, cfg: SAEConfig, seed: int = 0, layout: Layout = SINGLE):
        super().__init__()
        self.cfg, self.layout = cfg, layout
        w = init_rows(cfg.d_sae, cfg.d_in, seed, layout.latent_slice(cfg.d_sae))  # same for any rank count
        F = len(w)  # this rank's latents
        self.W_enc = nn.Parameter(w.clone())  # [F, d]: encoder starts as the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(F))
        d_out = cfg.d_target
        self.W_dec = nn.Parameter(torch.zeros(F, d_out) if cfg.transcoder else w.clone())  # [F, d_out]
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if cfg.skip:  # replicated on every rank, as b_dec
            self.W_skip = nn.Parameter(torch.zeros(d_out, cfg.d_in))
        # what the encoder subtracts from x: b_dec for an SAE, nothing for a transcoder (not saved)
        self.register_buffer("_no_offset", torch.zeros(cfg.d_in), persistent=False)
        self.register_buffer("threshold", torch.zeros(F))  # JumpReLU threshold (MC/FC inference)
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("tokens_since_fired", torch.zeros(F, dtype=torch.long))
        self.register_buffer("usage", torch.full((F,), cfg.k / cfg.d_sae))  # EMA of firing rate per token

    # --- encoding ---------------------------------------------------------------------------

    @property
    def input_bias(self) -> Float[Tensor, " d"]:
        """What the encoder subtracts from x: b_dec for an SAE, zeros for a transcoder."""
        return self._no_offset if self.cfg.transcoder else self.b_dec

    def output_bias(self, x: Float[Tensor, "B d"]) -> Float[Tensor, "..."]:
        """What the decoder adds to z W_dec: b_dec, plus x W_skipᵀ [B, d_out] for a skip transcoder."""
        if not self.cfg.skip:
            return self.b_dec
        return torch.addmm(self.b_dec, x, self.W_skip.T)

    def pre_acts(self, x: Float[Tensor, "B d"], rows: Tensor | None = None) -> Float[Tensor, "B F"]:
        """(x − b_dec) W_encᵀ + b_enc; with `rows` (latent indices) only those columns [B, len(rows)]."""
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(f"x: expected [batch, {self.cfg.d_in}], got {tuple(x.shape)}")
        if rows is None:
            return pre_block(x - self.input_bias, self.W_enc, self.b_enc)
        return pre_block(x - self.input_bias, self.W_enc[rows], self.b_enc[rows])

    @property
    def rule(self) -> Rule:
        """The selection rule named by cfg.selection (selection.RULES)."""
        return get_rule(self.cfg.selection)

    def select(self, pre: Float[Tensor, "B F"], grads: Float[Tensor, "B d"] | None = None) -> Bool[Tensor, "B F"]:
        """The training-time rule: which entries of `pre` are kept (the layout merges what ranks
        hold into the same choice as one process)."""
        return self.rule.select(self, pre.detach(), grads)

    def select_kept(
        self, x: Float[Tensor, "B d"], grads: Float[Tensor, "B d"] | None = None, aux_cols: Tensor | None = None
    ) -> Kept:
        """The training rule's kept entries (the same as `select`'s mask); per-token rules never
        build a [B, F] tensor for it (sparse.py). With `aux_cols`, also the pre-activations there."""
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(f"x: expected [batch, {self.cfg.d_in}], got {tuple(x.shape)}")
        return self.rule.select_kept(self, x, grads, aux_cols)

    def forward_sparse(
        self, x: Float[Tensor, "B d"], grads: Float[Tensor, "B d"] | None = None, aux_cols: Tensor | None = None
    ) -> SparseOutput:
        """Training forward of the sparse path: the same x̂ as `forward` in training mode, with a
        backward that touches only the kept latents' rows of W_enc and W_dec. `aux_cols` (the aux
        loss's candidate latents, ascending): SparseOutput.aux_pre holds the pre-activations there,
        differentiable, read off the selection's GEMM (None if the rule did not provide them)."""
        kept = self.select_kept(x, grads, aux_cols)
        vals, aux_pre = encoder_values(kept, x, self.input_bias, self.W_enc, self.b_enc, aux_cols)
        partial = decode(kept, vals, self.W_dec)
        if not self.layout.latent:
            return SparseOutput(partial + self.output_bias(x), kept, vals, aux_pre)
        x_hat = self.layout.sum_partials(partial + self.output_bias(x) if self.layout.rank == 0 else partial)
        return SparseOutput(x_hat, kept, vals, aux_pre)

    def encode(self, x: Float[Tensor, "B d"]) -> Float[Tensor, "B F"]:
        """Inference encoding (no batch coupling): the rule's (TopK, or JumpReLU for MC/FC)."""
        return self.rule.encode(self, self.pre_acts(x))

    def decode(self, z: Float[Tensor, "B F"], x: Float[Tensor, "B d"] | None = None) -> Float[Tensor, "B d_out"]:
        """z W_dec + b_dec; a skip transcoder also adds x W_skipᵀ, so it needs its input `x`."""
        if self.cfg.skip and x is None:
            raise ValueError("x: a skip transcoder's output includes x W_skip^T; pass decode(z, x)")
        bias = self.output_bias(x) if self.cfg.skip else self.b_dec
        if not self.layout.latent:
            return z @ self.W_dec + bias
        partial = z @ self.W_dec  # this rank's latents; b_dec joins once, so its gradient counts once
        return self.layout.sum_partials(partial + bias if self.layout.rank == 0 else partial)

    def forward(self, x: Float[Tensor, "B d"], grads: Float[Tensor, "B d"] | None = None) -> SAEOutput:
        """Training mode applies the selection rule; eval mode the inference encoding."""
        pre = self.pre_acts(x)
        if self.training:
            mask = self.select(pre, grads)
            z = torch.where(mask, pre.relu(), 0.0)
        else:
            z = self.encode(x)
            mask = z > 0
        return SAEOutput(self.decode(z, x), z, mask, pre)

    # --- bookkeeping the trainer calls --------------------------------------------------------

    def dead_mask(self) -> Bool[Tensor, " F"]:
        return self.tokens_since_fired >= self.cfg.dead_tokens

    @torch.no_grad()
    def update_stats(self, z: Float[Tensor, "B F"], mask: Bool[Tensor, "B F"], usage_decay: float = 0.99) -> None:
        """After a training batch: dead-latent clocks, usage EMA, and the rule's threshold."""
        fired = z > 0  # kept entries that fired (z is 0 off the mask)
        self._count_firing(fired.sum(0).float(), z.shape[0], usage_decay)
        cols = fired.nonzero()[:, 1]
        self.rule.update_threshold(self, cols, z[fired])

    @torch.no_grad()
    def update_stats_sparse(
        self, idx: Tensor, vals: Tensor, tokens: int | None = None, usage_decay: float = 0.99
    ) -> None:
        """`update_stats` from the kept entries' latent indices and values, of any matching shape
        (the Triton path's [B, k], the sparse path's flat [n]; index < 0: no entry) over `tokens`
        tokens (None: idx.shape[0]). Neither path builds z."""
        tokens = idx.shape[0] if tokens is None else tokens
        idx, vals = idx.reshape(-1), vals.reshape(-1)
        fired = (vals > 0) & (idx >= 0)
        F = len(self.usage)  # this rank's latents
        counts = torch.zeros(F, device=idx.device).index_add_(
            0, idx[fired], torch.ones(int(fired.sum()), device=idx.device)
        )
        self._count_firing(counts, tokens, usage_decay)
        self.rule.update_threshold(self, idx[fired], vals[fired])

    def _count_firing(self, counts: Float[Tensor, " F"], rows: int, usage_decay: float) -> None:
        """Dead-latent clocks and usage EMA from this rank's firing counts over `rows` tokens."""
        counts = self.layout.sum_over_tokens(counts)
        batch = self.layout.global_batch(rows)
        self.tokens_since_fired += batch
        self.tokens_since_fired[counts > 0] = 0
        self.usage.mul_(usage_decay).add_(counts / batch, alpha=1 - usage_decay)

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Project out of W_dec's gradient the component along each row (norm stays 1 to first order);
        a transcoder's decoder is free (module docstring)."""
        if self.W_dec.grad is not None and not self.cfg.transcoder:
            w = self.W_dec
            along = torch.einsum("fd,fd->f", self.W_dec.grad, w)  # per-row dot products, no F × d temporary
            self.W_dec.grad.addcmul_(along.unsqueeze(1), w, value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if not self.cfg.transcoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def init_b_dec(self, sample: Float[Tensor, "n d"], method: str = "geometric_median") -> None:
        if method == "geometric_median":
            self.b_dec.copy_(geometric_median(sample))
        elif method == "mean":
            self.b_dec.copy_(sample.mean(0))
        elif method != "zeros":
            raise ValueError(f"b_dec_init={method!r}: expected 'geometric_median', 'mean' or 'zeros'")
