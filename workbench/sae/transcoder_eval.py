"""How good a transcoder is: the SAE evaluation's figures, measured where a transcoder writes.

A transcoder reads x at `cfg.hook_name` (an MLP's input) and predicts y at `cfg.target_hook` (its
output). Its evaluation is the SAE's (`run_eval.evaluate_sae` calls what is here), with y in x's
place:

- `mlp_pairs`: (x, y) rows of held-out windows, BOS left out, for `evaluate.reconstruction_metrics`
  (FVU, cosine and l2 ratio of ŷ to y; the skip term is part of ŷ, `SparseAutoencoder.forward`).
- `ce_recovered_many`: next-token CE with one or several transcoders spliced in, all in one
  forward: a hook at each hook_name keeps x, a hook at its target_hook returns ŷ(x); so a later
  layer's transcoder reads an x that the earlier replacements already changed (the whole
  replacement, not each layer alone). Against the clean model and zero and mean ablation of every
  target at once; CE loss recovered and KL, the keys of `evaluate.splice_metrics`.
- `spliced_ce`: the same comparison for any hooks that rewrite a set of targets (a cross-layer
  transcoder's, which read several layers and write several).
- `transcoder_output_scores`: the output score of every latent (steer.directions), its unit
  decoder row pushed where it writes (blocks.L.hook_mlp_out, which adds into hook_resid_post
  unchanged, so the score resumes there), at the mean norm of the MLP's output.

The feature table needs nothing new: the encoder reads x at hook_name, as an SAE's does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from ..activations import ActivationBatch, capture_pair, split_heads, token_rows, validate_hook_name
from .model import SparseAutoencoder

MLP_OUT = re.compile(r"blocks\.(\d+)\.hook_mlp_out")
Hooks = list[tuple[str, Callable]]


class SpliceMetrics(NamedTuple):
    """Next-token CE (nats/token, BOS's prediction included, as `evaluate.splice_metrics`) with the
    replacement spliced in, and what it is measured against. Position 0 (BOS) keeps its clean
    value at every target in every variant: transcoders are trained without it."""

    ce_clean: float  # the model itself
    ce_sae: float  # with every target replaced (the name SAERunResult reads)
    ce_zero_ablation: float  # every target set to 0
    ce_mean_ablation: float  # every target set to its mean over the windows' non-BOS tokens
    ce_loss_recovered: float | None  # (CE_zero - CE_sae) / (CE_zero - CE_clean); None when the gap is 0
    ce_loss_recovered_vs_mean: float | None  # the same against mean ablation
    kl_sae: float  # KL(clean || spliced) per token, positions 1 .. T-2


def check_transcoder(model, tc: SparseAutoencoder, where: str = "transcoder") -> None:
    """Raise a ValueError unless `tc` is a transcoder whose hooks are the model's (KeyError naming
    close matches for a hook that is not)."""
    if not tc.cfg.transcoder or not tc.cfg.target_hook:
        raise ValueError(
            f"{where}: expected a transcoder with a target_hook (SAEConfig.transcoder, target_hook), got "
            f"transcoder={tc.cfg.transcoder}, target_hook={tc.cfg.target_hook!r}"
        )
    validate_hook_name(model, tc.cfg.hook_name)
    validate_hook_name(model, tc.cfg.target_hook)


def _check_widths(tc: SparseAutoencoder, x_width: int, y_width: int, where: str) -> None:
    if (tc.cfg.d_in, tc.cfg.d_target) != (x_width, y_width):
        raise ValueError(
            f"{where}: d_in={tc.cfg.d_in}, d_out={tc.cfg.d_target}, but {tc.cfg.hook_name}'s rows are {x_width} "
            f"wide and {tc.cfg.target_hook}'s {y_width}"
        )


@torch.no_grad()
def mlp_pairs(
    model, tc: SparseAutoencoder, tokens: Int[Tensor, "n seq"], batch_size: int = 32
) -> list[ActivationBatch]:
    """x at tc's hook_name and y at its target_hook on the clean model, one batch per chunk of
    windows, BOS left out (acts [rows, d_in], targets [rows, d_out])."""
    check_transcoder(model, tc)
    out = []
    for chunk in tokens.split(batch_size):
        x, y, _ = capture_pair(model, chunk, tc.cfg.hook_name, tc.cfg.target_hook)
        _check_widths(tc, x.shape[-1], y.shape[-1], "transcoder")
        out.append(ActivationBatch(x[:, 1:].reshape(-1, x.shape[-1]), None, y[:, 1:].reshape(-1, y.shape[-1])))
    return out


def transcoder_hooks(transcoders: Sequence[SparseAutoencoder]) -> Hooks:
    """Forward hooks that splice every transcoder in: at its hook_name keep x, at its target_hook
    return ŷ(x) at every position after BOS. x is taken in the same forward, so it carries the
    earlier replacements; a target that runs before its transcoder's input is refused."""
    hooks: Hooks = []
    targets = [tc.cfg.target_hook for tc in transcoders]
    if len(set(targets)) != len(targets):
        raise ValueError(f"transcoders: two of them write the same target ({targets}); expected one per target")
    for tc in transcoders:
        src, dst, seen = tc.cfg.hook_name, tc.cfg.target_hook, {}

        def keep(act, hook, src=src, seen=seen):
            seen["x"] = token_rows(act, src)

        def write(act, hook, tc=tc, src=src, dst=dst, seen=seen):
            if "x" not in seen:
                raise ValueError(
                    f"transcoder: its target {dst} ran before its input {src} in this forward; the input must "
                    "come first (e.g. blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out)"
                )
            x = seen.pop("x")[:, 1:]  # popped: a later forward never reuses this one's x
            rows = token_rows(act, dst).clone()
            flat = x.reshape(-1, x.shape[-1]).to(tc.W_enc.dtype)
            rows[:, 1:] = tc(flat).x_hat.reshape(*x.shape[:2], -1).to(rows.dtype)
            return split_heads(rows, act.shape)

        hooks += [(src, keep), (dst, write)]
    return hooks


def ablation_hooks(means: dict[str, Tensor | None]) -> Hooks:
    """Hooks that set each target to its value in `means` (None: zero) after BOS."""

    def make(name, value):
        def hook(act, hook):
            rows = token_rows(act, name).clone()
            rows[:, 1:] = 0.0 if value is None else value.to(rows.dtype)
            return split_heads(rows, act.shape)

        return hook

    return [(name, make(name, value)) for name, value in means.items()]


@torch.no_grad()
def target_means(model, targets: Sequence[str], tokens: Int[Tensor, "n seq"], batch_size: int = 32) -> dict:
    """Each target's mean row over the non-BOS tokens of the clean model on `tokens`."""
    for name in targets:
        validate_hook_name(model, name)
    sums = dict.fromkeys(targets)
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=list(targets))
        for name in targets:
            s = token_rows(cache[name], name)[:, 1:].double().sum((0, 1))
            sums[name] = s if sums[name] is None else sums[name] + s
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    return {name: s / n for name, s in sums.items()}


@torch.no_grad()
def spliced_ce(
    model,
    tokens: Int[Tensor, "n seq"],
    make_hooks: Callable[[], Hooks],
    targets: Sequence[str],
    batch_size: int = 32,
) -> SpliceMetrics:
    """CE with the hooks `make_hooks()` builds (called once per forward: hooks may keep state
    within one) against the clean model and zero and mean ablation of `targets`, the activations
    those hooks rewrite. `tokens`: windows with BOS first."""
    if tokens.ndim != 2 or tokens.shape[1] < 3 or len(tokens) == 0:
        raise ValueError(f"tokens: expected [n_seq, T] windows with n_seq >= 1, T >= 3, got {tuple(tokens.shape)}")
    if not targets:
        raise ValueError("targets: expected at least one hook the replacement rewrites")
    means = target_means(model, targets, tokens, batch_size)
    variants = {
        "sae": make_hooks,
        "zero": lambda: ablation_hooks(dict.fromkeys(targets)),
        "mean": lambda: ablation_hooks(means),
    }
    totals = dict.fromkeys(("clean", "sae", "zero", "mean", "kl"), 0.0)
    for chunk in tokens.split(batch_size):
        clean = model(chunk)
        totals["clean"] += float(model.loss_fn(clean, chunk, per_token=True).sum())
        for kind, hooks in variants.items():
            logits = model.run_with_hooks(chunk, fwd_hooks=hooks())
            totals[kind] += float(model.loss_fn(logits, chunk, per_token=True).sum())
            if kind == "sae":
                lp, lq = clean.log_softmax(-1), logits.log_softmax(-1)
                totals["kl"] += float((lp.exp() * (lp - lq)).sum(-1)[:, 1:-1].sum())
    n, (rows, T) = tokens.shape[0] * (tokens.shape[1] - 1), tokens.shape
    ce = {k: v / n for k, v in totals.items() if k != "kl"}

    def recovered(ablated: str) -> float | None:
        gap = ce[ablated] - ce["clean"]
        return (ce[ablated] - ce["sae"]) / gap if abs(gap) > 1e-9 else None

    return SpliceMetrics(
        ce["clean"],
        ce["sae"],
        ce["zero"],
        ce["mean"],
        recovered("zero"),
        recovered("mean"),
        totals["kl"] / (rows * (T - 2)),
    )


def ce_recovered_many(
    model, transcoders: Sequence[SparseAutoencoder], tokens: Int[Tensor, "n seq"], batch_size: int = 32
) -> SpliceMetrics:
    """Every transcoder of `transcoders` spliced in at once (`transcoder_hooks`), e.g. one per
    layer: CE loss recovered of the whole replacement against ablating all their targets."""
    if not transcoders:
        raise ValueError("transcoders: expected at least one")
    for i, tc in enumerate(transcoders):
        check_transcoder(model, tc, f"transcoders[{i}]")
    modes = [tc.training for tc in transcoders]  # a caller still training gets its transcoders back as they were
    try:
        for tc in transcoders:
            tc.eval()
        targets = [tc.cfg.target_hook for tc in transcoders]
        return spliced_ce(model, tokens, lambda: transcoder_hooks(transcoders), targets, batch_size)
    finally:
        for tc, mode in zip(transcoders, modes):
            tc.train(mode)
