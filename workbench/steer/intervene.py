"""Interventions at any TransformerLens hook, as hook functions built from one typed `Intervention`.

With h a row of the hook's activation (one token; a head-axis hook's heads concatenated, as
`activations.token_rows` reads it), v the direction and v̂ = v / |v|, P = v̂ v̂ᵀ:

    add      h + c v                          (v as given: its norm is part of the strength)
    rescale  (I − P) h + c P h                (c = 1: the identity; c = 0: the direction removed)
    cap      h − max(0, v̂·h − c) v̂            (the projection on v̂ capped at c)
    zero     0 (the whole row), or z_i = 0 for an SAE latent i
    mean     the given mean row, or z_i = the given mean activation for an SAE latent i
    clamp    z_i = c for an SAE latent i

A latent is changed inside the SAE splice as `sae.evaluate.splice_metrics` splices it (position 0,
BOS, is never touched: SAEs are trained without it): z = encode(h), the row becomes decode(z') and,
with `keep_error` (the default), the SAE's error h − decode(z) is added back, so an intervention that
changes nothing leaves the model exactly as it was. Without a direction, add/rescale/cap draw a
random unit direction from `seed` (a control): every intervention is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..activations import split_heads, token_rows

DIRECTION_KINDS = ("add", "rescale", "cap")
LATENT_KINDS = ("clamp", "zero", "mean")
KINDS = DIRECTION_KINDS + LATENT_KINDS
POSITIONS = ("all", "last")

HookFn = Callable[[Tensor, Any], Tensor]


@dataclass(frozen=True, eq=False)
class Intervention:
    """One change at one hook. `strength` is c: the scale of add/rescale, the cap of cap, the value
    of clamp (unused by zero and mean)."""

    kind: str  # one of KINDS
    hook_name: str  # a TransformerLens hook, e.g. blocks.0.hook_resid_post, blocks.0.hook_mlp_out
    strength: float = 0.0
    direction: Tensor | None = None  # [d] for add/rescale/cap; None: a random unit one from seed
    latent: int | None = None  # an SAE latent (clamp always; zero/mean on it rather than the row)
    mean: Tensor | float | None = None  # mean ablation: the hook's mean row [d], or the latent's mean
    positions: str = "all"  # "all": every position after BOS; "last": the last position only
    seed: int = 0  # draws the random direction when none is given
    keep_error: bool = True  # latent kinds: add the SAE's reconstruction error back

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r}: expected 'all' or 'last'")
        if self.kind == "clamp" and self.latent is None:
            raise ValueError("latent: a clamp needs the SAE latent it clamps")
        if self.latent is not None and self.kind not in LATENT_KINDS:
            raise ValueError(f"latent={self.latent}: only {', '.join(LATENT_KINDS)} act on an SAE latent")
        if self.kind == "mean" and self.mean is None:
            raise ValueError("mean: a mean ablation needs the mean (a row [d], or a float for a latent)")
        if self.direction is not None and self.direction.ndim != 1:
            raise ValueError(f"direction: expected a vector [d], got shape {tuple(self.direction.shape)}")


def random_direction(d: int, seed: int, dtype: torch.dtype = torch.float32) -> Float[Tensor, " d"]:
    """A unit vector drawn from `seed` alone (the same on every machine)."""
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (v / v.norm()).to(dtype)


def _direction(iv: Intervention, d: int, like: Tensor) -> Tensor:
    v = random_direction(d, iv.seed) if iv.direction is None else iv.direction
    if v.shape[0] != d:
        raise ValueError(f"direction: {v.shape[0]} wide, but {iv.hook_name}'s rows are {d} wide")
    return v.to(dtype=like.dtype, device=like.device)


def apply_rows(iv: Intervention, h: Float[Tensor, "n d"], sae=None) -> Float[Tensor, "n d"]:
    """The intervention on rows `h` (no position logic): what the hook does to each changed row."""
    d = h.shape[-1]
    if iv.kind in DIRECTION_KINDS:
        v = _direction(iv, d, h)
        if iv.kind == "add":
            return h + iv.strength * v
        u = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
        proj = h @ u
        if iv.kind == "rescale":
            return h + ((iv.strength - 1.0) * proj)[..., None] * u
        return h - (proj - iv.strength).clamp_min(0)[..., None] * u
    if iv.latent is None:
        if iv.kind == "zero":
            return torch.zeros_like(h)
        mean = torch.as_tensor(iv.mean, dtype=h.dtype, device=h.device)
        if mean.shape != (d,):
            raise ValueError(f"mean: expected the hook's mean row [{d}], got shape {tuple(mean.shape)}")
        return mean.expand_as(h).clone()
    return _latent_rows(iv, h, sae)


def _latent_rows(iv: Intervention, h: Tensor, sae) -> Tensor:
    if sae is None:
        raise ValueError(f"sae: a {iv.kind} of latent {iv.latent} needs the SAE it lives in")
    if not 0 <= iv.latent < sae.cfg.d_sae:
        raise ValueError(f"latent={iv.latent}: expected an index in [0, {sae.cfg.d_sae})")
    x = h.to(sae.W_dec.dtype)
    z = sae.encode(x)
    z2 = z.clone()
    value = {"clamp": iv.strength, "zero": 0.0}.get(iv.kind, iv.mean)
    z2[:, iv.latent] = float(value)
    if iv.keep_error:  # x + decode(z') − decode(z), written so an unchanged row stays bit-exact
        return (x + (z2 - z) @ sae.W_dec).to(h.dtype)
    return sae.decode(z2).to(h.dtype)


def hook_fn(iv: Intervention, sae=None) -> HookFn:
    """A TransformerLens forward hook applying `iv` (a latent kind inside `sae`'s splice)."""
    if iv.latent is not None and sae is not None and sae.cfg.hook_name and sae.cfg.hook_name != iv.hook_name:
        raise ValueError(f"hook_name={iv.hook_name!r}: the SAE reads {sae.cfg.hook_name!r}")

    def hook(act: Tensor, hook: Any) -> Tensor:
        rows = token_rows(act, iv.hook_name).clone()
        where = slice(1, None) if iv.positions == "all" else slice(-1, None)
        if rows.shape[1] < 2:  # only BOS: nothing to change
            return act
        part = rows[:, where]
        rows[:, where] = apply_rows(iv, part.reshape(-1, part.shape[-1]), sae).reshape(part.shape)
        return split_heads(rows, act.shape)

    return hook


def hooks(interventions: Intervention | Sequence[Intervention], sae=None) -> list[tuple[str, HookFn]]:
    """`fwd_hooks` for `model.run_with_hooks` / `model.hooks`, one per intervention, in order."""
    ivs = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    return [(iv.hook_name, hook_fn(iv, sae)) for iv in ivs]
