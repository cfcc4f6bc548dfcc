"""Activation sparsity of MLP hidden layers: the lazy-neuron effect (Li et al., ICLR 2023).

For each layer, the fraction of MLP hidden activations that are active (nonzero for ReLU, |a| > ε
otherwise, with ε in the result), its spread over tokens, per-neuron firing frequencies, the same
over the checkpoints saved during training, and a Top-k thresholding intervention with its loss
change. For gated MLPs TransformerLens' hook_post is act(gate)·up + b_in; the quantity measured,
thresholded and ranked is act(gate) (the activation after the nonlinearity, as in the paper),
recomputed from hook_pre, and the interventions zero hook_post at the neurons it rules out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from ..models import ModelConfig, checkpoint_files, load_model_file
from ..sae.selection import topk_mask
from .sparsity_data import SparsityResult


def _check_mlps(model: HookedTransformer) -> None:
    if model.cfg.attn_only or "blocks.0.mlp.hook_post" not in model.hook_dict:
        raise ValueError("model has no MLP hooks (attn_only?): activation sparsity needs MLP layers")


def _gated(model: HookedTransformer) -> bool:
    return bool(getattr(model.cfg, "gated_mlp", False))


def hidden_activations(model: HookedTransformer, tokens: Int[Tensor, "b s"]) -> list[Float[Tensor, "b s d_mlp"]]:
    """act(pre) of every MLP layer (for gated MLPs, the gate's activation), BOS position dropped."""
    _check_mlps(model)
    gated = _gated(model)
    names = [f"blocks.{l}.mlp.hook_{'pre' if gated else 'post'}" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    acts = []
    for l, name in enumerate(names):
        a = cache[name]
        if gated:
            a = model.blocks[l].mlp.act_fn(a)
        acts.append(a[:, 1:])
    return acts


def activation_sparsity(
    model: HookedTransformer, tokens: Int[Tensor, "b s"], threshold: float = 0.0, batch_size: int = 32
) -> SparsityResult:
    """Per-layer fraction of active MLP neurons on `tokens` (BOS excluded)."""
    if threshold < 0:
        raise ValueError(f"threshold={threshold} must be >= 0")
    L = model.cfg.n_layers
    _check_mlps(model)
    sums = [0.0] * L
    sq = [0.0] * L
    counts = [torch.zeros(model.cfg.d_mlp) for _ in range(L)]
    n = 0
    for chunk in tokens.split(batch_size):
        for l, a in enumerate(hidden_activations(model, chunk)):
            active = (a.abs() > threshold).float()  # [b, s, d_mlp]
            per_token = active.mean(-1).flatten()
            sums[l] += float(per_token.sum())
            sq[l] += float(per_token.pow(2).sum())
            counts[l] += active.sum((0, 1))
        n += chunk.shape[0] * (chunk.shape[1] - 1)
    mean = [s / n for s in sums]
    std = [max(0.0, q / n - m * m) ** 0.5 for q, m in zip(sq, mean)]
    freq = [c / n for c in counts]
    return SparsityResult(
        threshold, mean, std, [f.tolist() for f in freq], [int((f == 0).sum()) for f in freq], n, str(model.cfg.act_fn)
    )


def sparsity_over_training(
    run_dir: str | Path, model_cfg: ModelConfig, tokens: Int[Tensor, "b s"], threshold: float = 0.0
) -> dict:
    """Active fraction per layer at every checkpoint saved in run_dir/checkpoints (and the end)."""
    found = checkpoint_files(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir} has no checkpoints/step_*.safetensors")
    steps, paths = [s for s, _ in found], [p for _, p in found]
    out = {"steps": steps, "threshold": threshold, "active_frac": [], "active_frac_std": []}
    for p in paths:
        r = activation_sparsity(load_model_file(p, model_cfg), tokens, threshold)
        out["active_frac"].append(r.active_frac)
        out["active_frac_std"].append(r.active_frac_std)
    return out


def topk_hook(k: int):
    """A hook keeping the k largest |entries| of each token's MLP hidden vector (exactly k: equal
    values go to the lower indices, as in the SAEs' TopK), zeroing the rest."""

    def hook(act, hook):
        return act if k >= act.shape[-1] else act * topk_mask(act.abs(), k)

    return hook


Keep = Callable[[Float[Tensor, "b s d_mlp"]], Tensor]  # measured activation -> which neurons stay


def masking_hooks(model: HookedTransformer, keep: Keep) -> list[tuple[str, Callable]]:
    """Hooks zeroing every MLP layer's hook_post wherever `keep(a)` is False, `a` being the
    activation `hidden_activations` measures: hook_post itself, or act(gate) for gated MLPs,
    where hook_post = act(gate)·up would rank and threshold a different quantity."""
    _check_mlps(model)
    hooks: list[tuple[str, Callable]] = []
    for l in range(model.cfg.n_layers):
        post = f"blocks.{l}.mlp.hook_post"
        if not _gated(model):
            hooks.append((post, lambda act, hook: act * keep(act)))
            continue
        held: dict[str, Tensor] = {}  # this layer's mask, from its hook_pre to its hook_post

        def measure(pre, hook, held=held, act_fn=model.blocks[l].mlp.act_fn):
            held["keep"] = keep(act_fn(pre))

        def apply(act, hook, held=held):
            return act * held.pop("keep")

        hooks += [(f"blocks.{l}.mlp.hook_pre", measure), (post, apply)]
    return hooks


@torch.no_grad()
def topk_intervention(
    model: HookedTransformer, tokens: Int[Tensor, "b s"], ks: list[int], batch_size: int = 32
) -> dict:
    """Loss when only the k largest |hidden activations| per token (act(gate) for gated MLPs) are
    kept, in every layer."""
    _check_mlps(model)
    d_mlp = model.cfg.d_mlp

    def loss(hooks):
        total = 0.0
        for chunk in tokens.split(batch_size):
            total += float(model.run_with_hooks(chunk, return_type="loss", fwd_hooks=hooks)) * len(chunk)
        return total / len(tokens)

    def top(k: int) -> Keep:
        return lambda a: topk_mask(a.abs(), k)

    clean = loss([])
    losses = [clean if k >= d_mlp else loss(masking_hooks(model, top(k))) for k in ks]
    return {"ks": list(ks), "loss": losses, "clean_loss": clean, "delta": [l_ - clean for l_ in losses], "d_mlp": d_mlp}


@torch.no_grad()
def threshold_for_loss(model: HookedTransformer, tokens: Int[Tensor, "b s"], p: float = 1.0, iters: int = 12) -> dict:
    """A principled ε: the largest threshold whose zeroing of every MLP neuron with |a| ≤ ε (a as
    `hidden_activations` measures it) raises the loss by at most p percent, found by bisection;
    returns ε and the active fraction there."""
    _check_mlps(model)
    base = float(model(tokens, return_type="loss"))
    hi = max(float(a.abs().max()) for a in hidden_activations(model, tokens))
    lo = 0.0

    def above(eps: float) -> Keep:
        return lambda a: a.abs() > eps

    for _ in range(iters):
        mid = (lo + hi) / 2
        l_ = float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=masking_hooks(model, above(mid))))
        lo, hi = (mid, hi) if l_ <= base * (1 + p / 100) else (lo, mid)
    frac = activation_sparsity(model, tokens, lo).active_frac
    return {"p_percent": p, "epsilon": lo, "active_frac": frac, "clean_loss": base}
