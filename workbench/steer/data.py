"""The measured effects of interventions as plain dataclasses (lists and floats, no torch): what a
steer run's results.json holds, what the figures, the viewer and the widget draw. A leaf: reading a
run never imports TransformerLens."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# output concepts as "name=characters": the next token is one of the characters' tokens
OUTPUT_CONCEPTS = ("digit=0123456789", "closing bracket=)]}")


@dataclass
class NextTokenChange:
    """The next-token distribution at a prompt's last position, before and after an intervention,
    on the tokens most likely under either (most likely before first)."""

    prompt: str
    tokens: list[int]  # token ids
    before: list[float]  # p(token) on the clean model
    after: list[float]  # p(token) under the intervention
    kl: float  # KL(before || after) over the whole vocabulary, nats

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    """Text generated from one prompt by the clean and the intervened model (greedy, or sampled with
    the same seed for both)."""

    prompt: str
    clean: str
    steered: str
    temperature: float = 0.0  # 0: greedy
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AblationEffect:
    """An SAE latent's ablation: the next-token loss change (ablated − clean, nats) at positions
    where the latent fires and where it does not. A latent the model uses raises the loss where it
    fires and leaves it alone elsewhere."""

    latent: int
    kind: str  # "zero" or "mean"
    loss_change_fires: float  # NaN when it never fires on the tokens
    loss_change_quiet: float
    n_fires: int  # positions where it fires
    n_quiet: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SteerCurve:
    """Concept gain and KL cost of one direction over a grid of strengths c (c = 0 first)."""

    label: str  # "latent 17", "difference of means", ...
    latent: int | None  # the SAE latent steered along (its decoder row); None: not a latent
    norm: float  # |v| of the direction the strengths multiply
    strengths: list[float]
    gain: list[float]  # mean log p(target set) steered − clean, nats, on the concept windows
    kl: list[float]  # mean KL(clean || steered) per token on unrelated windows, nats
    output_score: float | None = None  # the latent's output score (None: not a latent)

    def to_dict(self) -> dict:
        return asdict(self)

    def gain_at(self, kl: float) -> float:
        """The gain where the KL first reaches `kl`, linearly interpolated between grid points
        (ordered by |c| from c = 0); NaN if the curve never costs that much."""
        order = sorted(range(len(self.strengths)), key=lambda i: abs(self.strengths[i]))
        pts = [(self.kl[i], self.gain[i]) for i in order]
        for (k0, g0), (k1, g1) in zip(pts, pts[1:]):
            if k0 <= kl <= k1:
                return g0 if k1 == k0 else g0 + (g1 - g0) * (kl - k0) / (k1 - k0)
        return pts[0][1] if pts and pts[0][0] == kl else math.nan


@dataclass
class ConceptSteer:
    """One output concept (a target token set): the curves of the chosen latents and of the
    difference-of-means baseline, and the gains at matched KL."""

    name: str
    targets: list[int]  # the token ids whose total probability is the concept
    latents: list[SteerCurve]  # the output-score-selected latents, best output score first
    baseline: SteerCurve  # difference of means, scaled to the latents' norm
    kl_points: list[float]  # the KLs the gains are compared at (nats)
    input_latent: SteerCurve | None = None  # the latent whose activation best separates the concept

    def best_gain(self, kl: float) -> float:
        """The best latent's gain at `kl` (NaN if none reaches it)."""
        gains = [g for c in self.latents if not math.isnan(g := c.gain_at(kl))]
        return max(gains) if gains else math.nan

    def ratio(self, kl: float) -> float:
        """Best latent's gain over the baseline's at `kl` (NaN where either is undefined or the
        baseline gains nothing)."""
        base = self.baseline.gain_at(kl)
        best = self.best_gain(kl)
        return best / base if base > 0 and not math.isnan(best) else math.nan

    def to_dict(self) -> dict:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ConceptSteer:
        from ..results import ResultsError, take

        if not isinstance(d, dict) or not isinstance(d.get("latents"), list) or not isinstance(d.get("baseline"), dict):
            raise ResultsError(f"{where} lacks latents or baseline (a ConceptSteer)")
        inp = d.get("input_latent")
        return cls(
            name=d.get("name", ""),
            targets=list(d.get("targets", [])),
            latents=[take(SteerCurve, c, f"{where}.latents[{i}]") for i, c in enumerate(d["latents"])],
            baseline=take(SteerCurve, d["baseline"], f"{where}.baseline"),
            kl_points=list(d.get("kl_points", [])),
            input_latent=take(SteerCurve, inp, f"{where}.input_latent") if inp else None,
        )
