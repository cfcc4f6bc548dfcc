"""Selection rules: which latents are active for which tokens, one object per rule.

A rule maps pre-activations `pre` [B, F] (and, for g-SAE, the loss gradient at the input) to a
boolean mask of the same shape. Kept values are always ReLU(pre) at the mask, so every rule
reconstructs the same way. Ties go to the lower index (token or latent), which makes the active
set a deterministic function of the scores, and testable exactly.

Each rule is a `Rule` registered by name in `RULES` (as SAELens registers its architectures);
`SAEConfig(selection=name)` picks it. A rule owns everything that differs between variants:

    select         training selection, the dense reference path ([B, F] mask)
    select_kept    training selection, the sparse path (kept entries only; default: via the mask)
    encode         inference encoding (no batch coupling)
    update_threshold   after each training batch (Mutual/Feature Choice learn a JumpReLU threshold)
    check_training     what a run needs (g-SAE: gradients; Feature Choice: enough tokens)
    saelens_architecture, triton, needs_grads   export, fused kernels, activation store

Adding a rule is one `register_rule(MyRule())` in any file (tests/test_sae_rules.py does it).

A rule reads an SAE only through `SAEView` below (its cfg as `RuleConfig`, its parameters,
buffers, layout and `pre_acts`): a protocol of what a rule needs, as parallel.Layout's `Layout`
protocol is for the distributed parts, so this module imports neither model.py nor config.py
(config.py validates names against RULES; model.py calls the rules). When one SAE is spread
over ranks, `sae.layout` is passed to topk.py's merge, which gives the same choice as one process.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .sparse import Kept, from_mask, select_per_token
from .topk import Ranks, flat_topk_indices, merged_topk, reference_mask, token_topk, topk_indices, topk_mask

__all__ = [
    "RULES",
    "Rule",
    "RuleConfig",
    "SAEView",
    "register_rule",
    "get_rule",
    "TopK",
    "Gradient",
    "MutualChoice",
    "FeatureChoice",
    "topk_mask",
    "topk_indices",
    "reference_mask",
    "select_topk",
    "select_gradient",
    "gradient_scores",
    "select_mutual_choice",
    "select_feature_choice",
    "uniform_capacities",
    "zipf_capacities",
]


class Layout(Ranks, Protocol):
    """What a rule needs from the distributed layout (see parallel.Layout for the semantics)."""

    @property
    def data(self) -> bool: ...  # rows of the batch are spread over ranks

    def global_batch(self, local_rows: int) -> int: ...

    def min(self, t: Tensor) -> Tensor: ...  # elementwise minimum over ranks

    def gather_latents(self, t: Tensor) -> Tensor: ...  # this rank's latents -> all latents

    def latent_slice(self, F: int) -> slice: ...  # this rank's latents


class RuleConfig(Protocol):
    """The SAEConfig fields a rule reads (config.SAEConfig has them)."""

    d_in: int
    d_sae: int
    k: int
    beta: float
    fc_capacity: str
    zipf_alpha: float
    threshold_decay: float


class SAEView(Protocol):
    """What a rule needs of an SAE (model.SparseAutoencoder has it): rules take tensors and these
    few attributes, never the module's class, so the model can import the rules and not the reverse."""

    cfg: RuleConfig
    layout: Layout
    W_enc: Tensor  # [F, d]
    b_enc: Tensor  # [F]
    W_dec: Tensor  # [F, d_out] (d_out = d for an SAE)
    b_dec: Tensor  # [d_out]
    input_bias: Tensor  # [d] what the encoder subtracts from x (b_dec; zeros for a transcoder)
    threshold: Tensor  # [F] JumpReLU threshold (written by update_threshold)
    threshold_updates: Tensor  # [] updates so far
    usage: Tensor  # [F] EMA of each latent's firing rate

    def pre_acts(self, x: Tensor, rows: Tensor | None = None) -> Tensor: ...  # [B, F]


# --- the rules' building blocks ---------------------------------------------------------------


def select_topk(pre: Float[Tensor, "B F"], k: int, layout: Layout | None = None) -> Bool[Tensor, "B F"]:
    """TopK (Gao et al. 2024): k latents per token."""
    return token_topk(layout, pre, k)


def gradient_scores(
    pre: Float[Tensor, "B F"], grads: Float[Tensor, "B d"], W_dec: Float[Tensor, "F d"], beta: float
) -> Float[Tensor, "B F"]:
    """g-SAE score s = pre + β·pre·|⟨g, W_dec,i⟩|: activation plus its first-order loss effect
    (for a transcoder g is the loss gradient at its target, the MLP output W_dec writes)."""
    effect = (grads @ W_dec.T).abs()  # [B, F]
    return pre + beta * pre * effect


def select_gradient(
    pre: Float[Tensor, "B F"],
    grads: Float[Tensor, "B d"],
    W_dec: Float[Tensor, "F d"],
    k: int,
    beta: float,
    layout: Layout | None = None,
) -> Bool[Tensor, "B F"]:
    """g-SAE (Olmo et al. 2024): top-k of the gradient-aware score; values stay ReLU(pre)."""
    return select_topk(gradient_scores(pre, grads, W_dec, beta), k, layout)


def select_mutual_choice(pre: Float[Tensor, "B F"], k: int, layout: Layout | None = None) -> Bool[Tensor, "B F"]:
    """Mutual Choice (Ayonrinde 2024; BatchTopK): the k·B largest entries of the whole batch."""
    B, F = pre.shape
    if layout is None or layout.world == 1:
        mask = torch.zeros(B * F, dtype=torch.bool, device=pre.device)
        return mask.index_fill_(0, flat_topk_indices(pre, k * B), True).view(B, F)

    def to_global(c):  # local flat index (row·F + col) -> row-major index in the whole batch × all latents
        if layout.data:  # this rank's rows follow the lower ranks' rows
            return c + layout.rank * B * F
        return c // F * (F * layout.world) + layout.rank * F + c % F  # this rank's columns within a row

    return merged_topk(layout, pre.reshape(1, B * F), k * layout.global_batch(B), to_global).view(B, F)


def select_feature_choice(
    pre: Float[Tensor, "B F"], capacities: Int[Tensor, " F"], layout: Layout | None = None
) -> Bool[Tensor, "B F"]:
    """Feature Choice: latent i keeps its `capacities[i]` highest-scoring tokens of the batch."""
    B, F = pre.shape
    if capacities.shape != (F,):
        raise ValueError(f"capacities: expected shape ({F},), got {tuple(capacities.shape)}")
    if layout is None or not layout.data:
        return topk_mask(pre.T, capacities.clamp(max=B)).T
    # a latent's tokens lie on every rank: merge them, this rank's rows after the lower ranks'
    caps = capacities.clamp(max=layout.global_batch(B))
    return merged_topk(layout, pre.T, caps, lambda c: c + layout.rank * B).T


def uniform_capacities(F: int, total: int) -> Int[Tensor, " F"]:
    """m = total // F for every latent, the remainder spread one each over the first latents."""
    m = torch.full((F,), total // F, dtype=torch.long)
    m[: total - int(m.sum())] += 1
    return m


def zipf_capacities(usage: Float[Tensor, " F"], total: int, alpha: float, cap: int) -> Int[Tensor, " F"]:
    """Capacities m_i ∝ 1/rank_i^α (rank 1 = most used), each at most `cap`, summing to `total`.

    Rounds by largest remainder; what the cap cuts off is poured over the uncapped latents.
    """
    F = len(usage)
    if total > F * cap:
        raise ValueError(f"total={total} tokens cannot fit {F} latents of capacity {cap}")
    order = torch.sort(-usage.double(), stable=True).indices  # most used first
    weight = torch.empty(F, dtype=torch.float64)
    weight[order] = torch.arange(1, F + 1, dtype=torch.float64) ** -alpha
    share = torch.zeros(F, dtype=torch.float64)
    free = torch.ones(F, dtype=torch.bool)
    left = float(total)
    for _ in range(F):  # water-filling: at most F rounds, usually two or three
        share[free] = left * weight[free] / weight[free].sum()
        over = free & (share > cap)
        if not over.any():
            break
        share[over] = cap
        free &= ~over
        left = total - float(share[~free].sum())
    m = share.floor().long()
    remainder = total - int(m.sum())
    if remainder:
        frac = torch.where(m < cap, share - m, torch.full_like(share, -1.0))
        m[torch.sort(-frac, stable=True).indices[:remainder]] += 1
    return m


# --- the rule objects and their registry ----------------------------------------------------


class Rule:
    """One selection rule. Subclass, set `name`, implement `select`, and `register_rule` an instance.

    Methods receive `sae`, an SAEView (its cfg, parameters, buffers and layout); rules
    hold no state of their own, so one instance serves every SAE.
    """

    name: ClassVar[str] = ""
    saelens_architecture: ClassVar[str] = "topk"  # how io.to_saelens exports it: "topk" or "jumprelu"
    triton: ClassVar[bool] = False  # kernels/ implements its training selection (the fused path)
    needs_grads: ClassVar[bool] = False  # it reads the loss gradient at the input (store with_grads)

    def select(
        self, sae: SAEView, pre: Float[Tensor, "B F"], grads: Float[Tensor, "B d"] | None
    ) -> Bool[Tensor, "B F"]:
        """Training selection on the dense path: which entries of `pre` (detached) are kept."""
        raise NotImplementedError

    def select_kept(
        self,
        sae: SAEView,
        x: Float[Tensor, "B d"],
        grads: Float[Tensor, "B d"] | None,
        aux_cols: Int[Tensor, " m"] | None = None,
    ) -> Kept:
        """Training selection on the sparse path: the entries `select` keeps, by token then latent,
        and (Kept.aux_pre) the pre-activations at the aux loss's candidate latents `aux_cols`.
        This default builds the dense [B, F] block; a per-token rule can avoid it."""
        with torch.no_grad():
            pre = sae.pre_acts(x)
        return from_mask(self.select(sae, pre, grads), pre, aux_cols)

    def encode(self, sae: SAEView, pre: Float[Tensor, "B F"]) -> Float[Tensor, "B F"]:
        """Inference code from the pre-activations (differentiable in `pre`): top k per token."""
        return torch.where(token_topk(sae.layout, pre.detach(), sae.cfg.k), pre.relu(), 0.0)

    def update_threshold(self, sae: SAEView, cols: Int[Tensor, " n"], vals: Float[Tensor, " n"]) -> None:
        """After a training batch, from the latents `cols` and values `vals` (> 0) of the kept
        entries that fired on this rank (any order). Default: no threshold to learn."""

    def check_training(self, cfg: RuleConfig, batch_size: int, has_grads: bool) -> None:
        """Raise a ValueError when a run with these settings cannot train this rule."""
        if self.needs_grads and not has_grads:
            raise ValueError(f"selection={self.name!r} needs a store with gradients (StoreConfig.with_grads=True)")


class _Registry(dict):
    """Rule name -> Rule; shown as the tuple of names in error messages."""

    def __repr__(self) -> str:
        return repr(tuple(self))


RULES: dict[str, Rule] = _Registry()  # live: SAEConfig accepts a name as soon as it is registered


def register_rule(rule: Rule) -> Rule:
    """Make `rule` selectable as SAEConfig(selection=rule.name); returns it."""
    if not isinstance(rule, Rule) or not rule.name:
        raise ValueError(f"rule: expected a Rule instance with a non-empty name, got {rule!r}")
    if rule.saelens_architecture not in ("topk", "jumprelu"):
        raise ValueError(
            f"{rule.name}: saelens_architecture={rule.saelens_architecture!r}: expected 'topk' or 'jumprelu'"
        )
    RULES[rule.name] = rule
    return rule


def get_rule(name: str) -> Rule:
    if name not in RULES:
        raise ValueError(f"selection={name!r}: expected one of {RULES}")
    return RULES[name]


class PerToken(Rule):
    """k latents per token by a score; the sparse path selects chunk by chunk (sparse.py) and
    never holds the [B, F] block. Subclasses only say how to score."""

    def scores(
        self, sae: SAEView, pre: Float[Tensor, "b F"], grads: Float[Tensor, "b d"] | None, rows: slice
    ) -> Float[Tensor, "b F"]:
        """Selection scores of the tokens `rows` of the batch, from their pre-activations."""
        return pre

    def select(self, sae, pre, grads):
        return token_topk(sae.layout, self.scores(sae, pre, grads, slice(0, len(pre))), sae.cfg.k)

    def select_kept(self, sae, x, grads, aux_cols=None):
        if sae.layout.latent:  # a token's latents lie on every rank: select densely, merged across ranks
            return super().select_kept(sae, x, grads, aux_cols)
        plain = type(self).scores is PerToken.scores  # the pre-activations are the scores (TopK)
        return select_per_token(
            x.detach() - sae.input_bias.detach(),
            sae.W_enc.detach(),
            sae.b_enc.detach(),
            sae.cfg.k,
            None if plain else lambda block, rows: self.scores(sae, block, grads, rows),
            aux_cols,
        )


class TopK(PerToken):
    """TopK (Gao et al. 2024)."""

    name = "topk"
    triton = True


class Gradient(PerToken):
    """g-SAE (Olmo et al. 2024): top k of pre + β·pre·|⟨g, W_dec,i⟩| per token; at inference plain TopK."""

    name = "gradient"
    triton = True
    needs_grads = True

    def select(self, sae, pre, grads):
        self._check(sae, grads, len(pre))
        return super().select(sae, pre, grads)

    def select_kept(self, sae, x, grads, aux_cols=None):
        self._check(sae, grads, len(x))
        return super().select_kept(sae, x, grads, aux_cols)

    def scores(self, sae, pre, grads, rows):
        return gradient_scores(pre, grads[rows], sae.W_dec.detach(), sae.cfg.beta)

    @staticmethod
    def _check(sae, grads: Tensor | None, rows: int) -> None:
        if grads is None:
            raise ValueError("selection='gradient' needs grads (the activation store's with_grads=True)")
        width = sae.W_dec.shape[1]  # the gradient is at what the decoder writes (a transcoder's target)
        if grads.shape != (rows, width):
            raise ValueError(f"grads: expected [{rows}, {width}], got {tuple(grads.shape)}")


class JumpReLURule(Rule):
    """A rule whose count per token varies: at inference a JumpReLU with a threshold learned in
    training, the EMA of the smallest fired kept value (`smallest`, per latent or shared)."""

    saelens_architecture = "jumprelu"

    def encode(self, sae, pre):
        return pre * (pre > sae.threshold)

    def smallest(self, sae: SAEView, cols: Tensor, vals: Tensor) -> Float[Tensor, " F"]:
        """Each latent's new threshold sample this batch (inf: none, left alone)."""
        raise NotImplementedError

    def update_threshold(self, sae, cols, vals):
        smallest = self.smallest(sae, cols, vals)
        seen = torch.isfinite(smallest)
        decay = sae.cfg.threshold_decay if int(sae.threshold_updates) > 0 else 0.0
        sae.threshold[seen] = decay * sae.threshold[seen] + (1 - decay) * smallest[seen].to(sae.threshold.dtype)
        sae.threshold_updates += 1


class MutualChoice(JumpReLURule):
    """Mutual Choice (Ayonrinde 2024; BatchTopK): the k·B largest entries of the batch; one shared threshold."""

    name = "mutual_choice"

    def select(self, sae, pre, grads):
        return select_mutual_choice(pre, sae.cfg.k, sae.layout)

    def select_kept(self, sae, x, grads, aux_cols=None):
        if sae.layout.world > 1:
            return super().select_kept(sae, x, grads, aux_cols)
        with torch.no_grad():  # the kept entries straight from their flat indices (no [B, F] mask)
            pre = sae.pre_acts(x)
            flat = flat_topk_indices(pre, sae.cfg.k * len(pre))
            rows, cols = flat // pre.shape[1], flat % pre.shape[1]
            counts = torch.bincount(rows, minlength=len(pre))
            return Kept(
                rows,
                cols,
                pre.reshape(-1)[flat],
                torch.cumsum(counts, 0) - counts,
                None if aux_cols is None else pre[:, aux_cols],
            )

    def smallest(self, sae, cols, vals):
        least = vals.min() if len(vals) else torch.tensor(float("inf"), dtype=vals.dtype, device=vals.device)
        return sae.layout.min(least).expand_as(sae.threshold)


class FeatureChoice(JumpReLURule):
    """Feature Choice: latent i keeps its m_i best tokens of the batch (uniform or Zipf m_i); a threshold per latent."""

    name = "feature_choice"

    def capacities(self, sae: SAEView, batch: int) -> Int[Tensor, " F"]:
        """Tokens each of the d_sae latents may take from a batch of `batch` tokens (sums to k·batch)."""
        cfg = sae.cfg
        total = cfg.k * batch
        if cfg.fc_capacity == "uniform":
            return uniform_capacities(cfg.d_sae, total).to(sae.usage.device)
        usage = sae.layout.gather_latents(sae.usage)
        return zipf_capacities(usage.cpu(), total, cfg.zipf_alpha, cap=batch).to(sae.usage.device)

    def select(self, sae, pre, grads):
        L = sae.layout
        caps = self.capacities(sae, L.global_batch(pre.shape[0]))[L.latent_slice(sae.cfg.d_sae)]
        return select_feature_choice(pre, caps, L)

    def smallest(self, sae, cols, vals):
        F = len(sae.threshold)  # this rank's latents
        least = torch.full((F,), float("inf"), dtype=vals.dtype, device=vals.device).scatter_reduce_(
            0, cols, vals, "amin"
        )
        return sae.layout.min(least) if sae.layout.data else least

    def check_training(self, cfg, batch_size, has_grads):
        super().check_training(cfg, batch_size, has_grads)
        if cfg.k * batch_size < cfg.d_sae:
            raise ValueError(
                f"feature_choice: k·batch = {cfg.k * batch_size} tokens cannot give each of {cfg.d_sae} latents one"
            )


for _rule in (TopK(), Gradient(), MutualChoice(), FeatureChoice()):
    register_rule(_rule)
