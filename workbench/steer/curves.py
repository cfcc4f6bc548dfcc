"""Concept gain against KL cost over a grid of strengths, for any direction at any hook: the curve
on which an SAE latent and the difference-of-means baseline are compared at matched KL.

    gain(c) = mean over concept positions of log p_c(T) − log p_0(T)   (T the target token set)
    kl(c)   = mean over unrelated positions of KL(p_0 || p_c)

The clean log-probabilities are computed once (`SteerEvaluator`); each point is one intervened
forward over the concept windows and one over the cost windows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .data import SteerCurve
from .effects import FwdHooks, kl_div, logprobs, target_logprob
from .intervene import Intervention, hooks


class SteerEvaluator:
    """Gain on `concept_tokens` for each target set and KL on `cost_tokens`, against the clean
    model (computed once here)."""

    def __init__(
        self,
        model,
        concept_tokens: Int[Tensor, "b T"],
        cost_tokens: Int[Tensor, "b2 T2"],
        targets: Mapping[str, Sequence[int]],
        batch_size: int = 32,
    ):
        self.model, self.batch_size = model, batch_size
        self.concept_tokens, self.cost_tokens = concept_tokens, cost_tokens
        self.targets = {n: list(t) for n, t in targets.items()}
        lp = logprobs(model, concept_tokens, batch_size=batch_size)[:, 1:]
        self.clean_target = {n: target_logprob(lp, t).double() for n, t in self.targets.items()}
        self.clean_cost = logprobs(model, cost_tokens, batch_size=batch_size)[:, 1:].double()

    def measure(self, fwd_hooks: FwdHooks) -> tuple[dict[str, float], float]:
        """({target set: gain}, kl) of the intervention the hooks make."""
        lp = logprobs(self.model, self.concept_tokens, fwd_hooks, self.batch_size)[:, 1:]
        gains = {
            n: float((target_logprob(lp, t).double() - self.clean_target[n]).mean()) for n, t in self.targets.items()
        }
        lq = logprobs(self.model, self.cost_tokens, fwd_hooks, self.batch_size)[:, 1:].double()
        return gains, float(kl_div(self.clean_cost, lq).mean())

    def curve(
        self,
        hook_name: str,
        direction: Float[Tensor, " d"],
        strengths: Sequence[float],
        target: str,
        label: str,
        latent: int | None = None,
        output_score: float | None = None,
    ) -> SteerCurve:
        """The additive steer h + c v at `hook_name` for each c of `strengths` (c = 0 is added
        first if missing: the curve starts at no gain and no cost)."""
        if target not in self.targets:
            raise ValueError(f"target={target!r}: expected one of {', '.join(self.targets)}")
        cs = sorted({0.0, *map(float, strengths)}, key=abs)
        gains, kls = [], []
        for c in cs:
            if c == 0.0:
                gains.append(0.0)
                kls.append(0.0)
                continue
            g, kl = self.measure(hooks(Intervention("add", hook_name, strength=c, direction=direction)))
            gains.append(g[target])
            kls.append(kl)
        return SteerCurve(label, latent, float(direction.norm()), cs, gains, kls, output_score)


def scaled_to(direction: Float[Tensor, " d"], norm: float) -> Float[Tensor, " d"]:
    """`direction` rescaled to norm `norm` (the baseline at the latents' norm)."""
    n = direction.norm()
    if n == 0:
        raise ValueError("direction: zero vector, it cannot be scaled")
    return direction * (norm / n)


def monotone(values: Sequence[float]) -> bool:
    """Whether `values` never decrease."""
    t = torch.tensor(list(values), dtype=torch.float64)
    return bool((t[1:] >= t[:-1]).all())
