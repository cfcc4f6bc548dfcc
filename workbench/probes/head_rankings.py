"""One builder for the head rankings and one label table for every per-head score's name.

A ranking is a [L][H] score oriented "higher = keep this head on full attention" (the head a
KV-cache policy should protect). `head_rankings` builds every ranking the available results give,
under one set of keys; the KV trade-off (`kv_tradeoff`) and the rank agreement (`head_agreement`)
both take its output, and the figures show `LABELS[key]`.

Light on purpose (no torch, no TransformerLens): reading a run's results and drawing its figures
never imports a model library.
"""

from __future__ import annotations

from collections.abc import Mapping

Scores = list[list[float]]  # [L][H]

# Every per-head score and trade-off metric, by key, as the tables, figures and pages name it.
LABELS: dict[str, str] = {
    # rankings (higher = keep full)
    "retrieval": "Wu retrieval score",
    "streaming_reversed": "streaming mass (reversed)",
    "tl_induction": "TL induction score",
    "tl_previous_token": "TL previous-token score",
    "causal_delta_loss": "causal check Δloss",
    "duo_alpha": "DuoAttention α",
    "razor": "RazorAttention rule",
    # other per-head scores
    "streaming": "streaming mass",
    "razor_echo": "RazorAttention echo score",
    "razor_induction": "RazorAttention induction score",
    "entropy": "attention entropy (nats)",
    # the trade-off's metrics
    "needle_acc": "needle copy accuracy",
    "passkey_acc": "passkey accuracy (every answer token)",
    "passkey_token_acc": "passkey answer-token accuracy",
    "text_loss": "natural-text loss (nats)",
}
RANKINGS = ("retrieval", "duo_alpha", "razor", "tl_induction", "causal_delta_loss", "streaming_reversed")
RAZOR_BONUS = 2.0  # added to a protected head's induction score (scores lie in [0, 1]): protected first


def label(key: str) -> str:
    """The display name of a score or metric key (the key itself when it has none)."""
    return LABELS.get(key, key)


def _get(obj, name: str):
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def razor_ranking(induction: Scores, protected: list[list[bool]]) -> Scores:
    """RazorAttention's rule as a ranking: protected heads first, each group by induction score."""
    return [[ind + (RAZOR_BONUS if p else 0.0) for ind, p in zip(ir, pr)] for ir, pr in zip(induction, protected)]


def head_rankings(
    roles=None,
    duo=None,
    razor=None,
    *,
    causal: bool = True,
    previous_token: bool = False,
    extra: Mapping[str, Scores] | None = None,
) -> dict[str, Scores]:
    """Every ranking the available results give, keyed as in `LABELS` (higher = keep full).

    `roles` (heads.HeadRoles or its dict): "retrieval" (Wu et al.), "streaming_reversed"
    (1 − streaming mass), "tl_induction" (TransformerLens induction detector), "tl_previous_token"
    (only with `previous_token`: a streaming pattern, kept as a contrast) and, with `causal`,
    "causal_delta_loss" (copy-loss increase under sink + window; leave it out where it is the
    reference a ranking is compared with); `duo` (DuoResult or dict): "duo_alpha"; `razor`
    (RazorResult or dict): "razor" (`razor_ranking`); `extra`: more rankings, already oriented."""
    out: dict[str, Scores] = {}
    if roles is not None:
        out["retrieval"] = [list(map(float, row)) for row in _get(roles, "retrieval")]
        out["streaming_reversed"] = [[1.0 - float(s) for s in row] for row in _get(roles, "streaming")]
        tl = _get(roles, "tl_scores") or {}
        if "induction" in tl:
            out["tl_induction"] = tl["induction"]
        if previous_token and "previous_token" in tl:
            out["tl_previous_token"] = tl["previous_token"]
        if causal:
            out["causal_delta_loss"] = _get(roles, "delta_loss")
    if duo is not None:
        out["duo_alpha"] = _get(duo, "alphas")
    if razor is not None:
        out["razor"] = razor_ranking(_get(razor, "induction"), _get(razor, "protected"))
    return {**out, **(extra or {})}


def tied_heads(scores: Scores) -> list[list[bool]]:
    """[L][H]: whether a head shares its exact score with another head (its rank is a tie: an
    order among them is the tie-break's, not the score's; e.g. Duo gates clamped to 1.0 or 0.0)."""
    flat = [float(v) for row in scores for v in row]
    counts: dict[float, int] = {}
    for v in flat:
        counts[v] = counts.get(v, 0) + 1
    return [[counts[float(v)] > 1 for v in row] for row in scores]


__all__ = ["LABELS", "RANKINGS", "head_rankings", "label", "razor_ranking", "tied_heads"]
