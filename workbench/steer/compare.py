"""One output concept, steered three ways and compared at matched KL: the latents an output-score
filter picks (Arad et al. 2025), the latent an input-side selection picks (the largest mean
activation difference where the concept holds, as sparse probing and AxBench choose), and the
difference-of-means direction at the latents' norm (AxBench's strong baseline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .curves import SteerEvaluator, scaled_to
from .data import OUTPUT_CONCEPTS as OUTPUT_CONCEPTS
from .data import ConceptSteer
from .directions import OutputScores, diff_of_means, next_token_in


def output_filtered(scores: OutputScores, target: str, n: int, keep_frac: float = 0.2) -> list[int]:
    """The `n` latents with the largest rise of the target set among the top `keep_frac` by output
    score (the filter), best rise first."""
    if not 0 < keep_frac <= 1:
        raise ValueError(f"keep_frac={keep_frac}: expected a fraction in (0, 1]")
    F = len(scores.score)
    kept = scores.score.topk(max(1, int(round(keep_frac * F)))).indices
    rise = scores.target_rise[target][kept]
    return kept[rise.topk(min(n, len(kept))).indices].tolist()


def input_selected(z: Float[Tensor, "b T F"], labels: Int[Tensor, "b T"]) -> int:
    """The latent whose mean activation differs most (where the concept holds − where not) over
    positions after BOS and before the last."""
    valid = torch.zeros(labels.shape, dtype=torch.bool)
    valid[:, 1:-1] = True
    a, y = z[valid].double(), labels[valid].bool()
    return int((a[y].mean(0) - a[~y].mean(0)).argmax())


def compare_concept(
    ev: SteerEvaluator,
    sae,
    name: str,
    rows: Float[Tensor, "b T d"],
    tokens: Int[Tensor, "b T"],
    scores: OutputScores,
    strengths: Sequence[float],
    *,
    n_latents: int = 3,
    keep_frac: float = 0.2,
    kl_points: Sequence[float] = (0.1, 0.5),
    z: Float[Tensor, "b T F"] | None = None,
) -> ConceptSteer:
    """Curves of the filtered latents, the input-selected one (when `z`, the SAE's activations on
    `tokens`, is given) and the baseline, all at the SAE's hook. `rows`: the hook's activations on
    `tokens`, whose next tokens label the concept (the baseline's classes)."""
    hook, targets = sae.cfg.hook_name, ev.targets[name]
    W = sae.W_dec.detach()
    labels = next_token_in(tokens, targets)
    chosen = output_filtered(scores, name, n_latents, keep_frac)
    curves = [
        ev.curve(hook, W[i], strengths, name, f"latent {i}", latent=i, output_score=float(scores.score[i]))
        for i in chosen
    ]
    norm = float(W[chosen].norm(dim=1).mean())
    base = ev.curve(hook, scaled_to(diff_of_means(rows, labels), norm), strengths, name, "difference of means")
    inp = None
    if z is not None:
        i = input_selected(z, labels)
        inp = ev.curve(hook, W[i], strengths, name, f"latent {i} (input-selected)", i, float(scores.score[i]))
    return ConceptSteer(name, list(targets), curves, base, [float(k) for k in kl_points], inp)


def concept_targets(tokenizer, specs: Sequence[str]) -> dict[str, list[int]]:
    """{name: token ids} from "name=characters" specs: the set is every token the characters
    encode to, one character at a time (a byte each for the byte tokenizer)."""
    out = {}
    for spec in specs:
        name, sep, chars = spec.partition("=")
        if not sep or not name or not chars:
            raise ValueError(f"concept {spec!r}: expected 'name=characters', e.g. 'digit=0123456789'")
        ids = sorted({t for ch in chars for t in tokenizer.encode(ch)})
        if not ids:
            raise ValueError(f"concept {spec!r}: its characters encode to no token")
        out[name] = ids
    return out
