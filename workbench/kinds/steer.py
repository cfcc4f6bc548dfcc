"""The "steer" run kind: an SAE run's latents steered and ablated, with the measured effect
(workbench.steer): every latent's output score (also output_scores.safetensors, a feature-table
column), per output concept the gain against KL of the output-score-selected latents, the
input-selected latent and the difference-of-means baseline, and for each concept's best latent the
next-token distribution before and after, generated text side by side and its ablation's loss
change where it fires against where not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..fielddoc import REQUIRED, FieldError, doc
from ..results import ResultsError, take
from ..runs import OUTPUT_SCORES_FILE
from ..steer.data import OUTPUT_CONCEPTS, AblationEffect, ConceptSteer, Generation, NextTokenChange

FOLDER = "steer"
PAGE = "workbench.viewer.steer"
SCORES_FILE = OUTPUT_SCORES_FILE  # the same file an SAE run's evaluation writes (steer.directions.save_output_scores)


@dataclass(frozen=True)
class SteerRunConfig:
    """Which SAE is steered, on which concepts and text, at which strengths."""

    sae_run: str = doc(REQUIRED, "the SAE run folder (its sae.safetensors) whose latents are steered, at its hook")
    concepts: tuple[str, ...] = doc(OUTPUT_CONCEPTS, 'output concepts as "name=characters" (next token in the set)')
    strengths: tuple[float, ...] = doc(
        (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0),
        "steering strengths c, in units of the mean |h| at the hook",
    )
    kl_points: tuple[float, ...] = doc((0.1, 0.5), "KLs (nats) the latents and the baseline are compared at")
    n_latents: int = doc(3, "output-score-selected latents steered per concept")
    keep_frac: float = doc(0.2, "the output-score filter: latents in this top fraction are candidates")
    seq_len: int = doc(64, "tokens per window of the concept and cost text")
    windows: int = doc(32, "held-out windows for the concept gain, as many again for the KL cost")
    baseline_windows: int = doc(256, "training windows for the difference of means and the input selection")
    neutral_windows: int = doc(8, "neutral training windows the output scores are measured on")
    neutral_len: int = doc(16, "tokens per neutral window")
    prompt: str = doc("def area(r):\n    return ", "the prompt of the before/after bars and the generations")
    gen_tokens: int = doc(48, "tokens generated after the prompt, clean and steered")
    temperature: float = doc(0.0, "generation temperature; 0: greedy")
    seed: int = doc(0, "the training windows drawn, and sampling when temperature > 0")

    def __post_init__(self) -> None:
        if not self.sae_run:
            raise FieldError("sae_run", "sae_run: empty; give the SAE run folder to steer (its sae.safetensors)")
        for name in ("n_latents", "seq_len", "windows", "baseline_windows", "neutral_windows", "neutral_len"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"{name}={getattr(self, name)}: must be >= 1")
        if not self.strengths or min(self.strengths) <= 0:
            raise FieldError("strengths", f"strengths={self.strengths}: expected positive multiples of |h|")


@dataclass
class SteerRunResult:
    """Output scores, steering curves per concept, and the best latents' effects."""

    KIND: ClassVar[str] = "steer"
    SCHEMA: ClassVar[int] = 1

    sae_run: str
    hook_name: str
    output_score: list[float]  # [F] every latent's output score (nats)
    output_strength: float  # the amplification the scores used
    residual_norm: float  # mean |h| at the hook: the unit of the strengths
    concepts: list[ConceptSteer]
    next_token: list[NextTokenChange]  # per concept, its best latent at its largest strength under KL 0.5
    generations: list[Generation]  # the same interventions' generated text
    ablations: list[AblationEffect]  # per concept, its best latent zero-ablated

    def to_dict(self) -> dict:
        return {
            "sae_run": self.sae_run,
            "hook_name": self.hook_name,
            "output_score": list(self.output_score),
            "output_strength": self.output_strength,
            "residual_norm": self.residual_norm,
            "concepts": [c.to_dict() for c in self.concepts],
            "next_token": [n.to_dict() for n in self.next_token],
            "generations": [g.to_dict() for g in self.generations],
            "ablations": [a.to_dict() for a in self.ablations],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> SteerRunResult:
        need = ("sae_run", "hook_name", "output_score", "concepts")
        if not isinstance(d, dict) or any(k not in d for k in need):
            raise ResultsError(f"{where} lacks one of {', '.join(need)} (a SteerRunResult)")

        def many(key, cls_):
            items = d.get(key, [])
            if not isinstance(items, list):
                raise ResultsError(f"{where}.{key} must be a list")
            return [take(cls_, x, f"{where}.{key}[{i}]") for i, x in enumerate(items)]

        return cls(
            sae_run=str(d["sae_run"]),
            hook_name=str(d["hook_name"]),
            output_score=[float(x) for x in d["output_score"]],
            output_strength=float(d.get("output_strength", 0.0)),
            residual_norm=float(d.get("residual_norm", 1.0)),
            concepts=[ConceptSteer.from_dict(c, f"{where}.concepts[{i}]") for i, c in enumerate(d["concepts"])],
            next_token=many("next_token", NextTokenChange),
            generations=many("generations", Generation),
            ablations=many("ablations", AblationEffect),
        )


def build(cfg: SteerRunConfig, model, data, run, *, progress: bool = True) -> SteerRunResult:
    """Output scores on neutral training windows, the three-way comparison per concept on held-out
    windows, then the best latent of each concept: before/after bars, generations, ablation."""
    import torch

    from ..corpus import windows
    from ..sae.evaluate import feature_activations
    from ..sae.io import load_sae
    from ..steer.compare import compare_concept, concept_targets
    from ..steer.curves import SteerEvaluator
    from ..steer.directions import hook_rows, output_scores, save_output_scores
    from ..steer.effects import ablation_effect, generate_pair, next_token_change
    from ..steer.intervene import Intervention, hooks

    lm, tok = model.model, data.tokenizer
    bos = tok.bos_token_id
    sae = load_sae(cfg.sae_run).to(lm.W_U.dtype).eval()
    hook = sae.cfg.hook_name
    targets = concept_targets(tok, cfg.concepts)
    gen = torch.Generator().manual_seed(cfg.seed)
    neutral = windows(data.train, cfg.neutral_len, bos_token_id=bos, n=cfg.neutral_windows, generator=gen)
    base_w = windows(data.train, cfg.seq_len, bos_token_id=bos, n=cfg.baseline_windows, generator=gen)
    val = windows(data.validation, cfg.seq_len, bos_token_id=bos, n=2 * cfg.windows)
    with torch.no_grad():
        scores = output_scores(lm, sae, neutral, targets=targets, progress=progress)
        save_output_scores(run.file(SCORES_FILE), scores)
        rows = hook_rows(lm, hook, base_w)
        z = torch.cat([feature_activations(lm, sae, hook, c) for c in base_w.split(32)])
        rnorm = float(rows[:, 1:].norm(dim=-1).mean())
        ev = SteerEvaluator(lm, val[: cfg.windows], val[cfg.windows :], targets)
        cs = [c * rnorm for c in cfg.strengths]
        concepts = [
            compare_concept(
                ev,
                sae,
                n,
                rows,
                base_w,
                scores,
                cs,
                n_latents=cfg.n_latents,
                keep_frac=cfg.keep_frac,
                kl_points=cfg.kl_points,
                z=z,
            )
            for n in targets
        ]
        nexts, gens, abls = [], [], []
        for c in concepts:
            best = _best(c, max(cfg.kl_points))
            strength = max([s for s, k in zip(best.strengths, best.kl) if k <= max(cfg.kl_points)], default=cs[0])
            fh = hooks(Intervention("add", hook, strength=strength, direction=sae.W_dec[best.latent].detach()))
            nexts.append(next_token_change(lm, tok, cfg.prompt, fh))
            gens.append(generate_pair(lm, tok, cfg.prompt, fh, cfg.gen_tokens, cfg.temperature, cfg.seed))
            abls.append(ablation_effect(lm, sae, val[: cfg.windows], best.latent))
    return SteerRunResult(cfg.sae_run, hook, scores.score.tolist(), scores.strength, rnorm, concepts, nexts, gens, abls)


def _best(concept: ConceptSteer, kl: float):
    """The selected latent with the largest gain at `kl` (the first when none reaches it)."""
    import math

    gains = [c.gain_at(kl) for c in concept.latents]
    ok = [i for i, g in enumerate(gains) if not math.isnan(g)]
    return concept.latents[max(ok, key=lambda i: gains[i])] if ok else concept.latents[0]
