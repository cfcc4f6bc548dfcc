"""The built-in run kinds, registered after every import (as SAELens' package root does).
`registry` imports this module by name on its first lookup."""

from __future__ import annotations

from . import arrow, graph, heads, sae, sparsity, steer
from .registry import Kind, register_kind

register_kind(
    Kind(
        "sae",
        sae.SAERunConfig,
        sae.SAERunResult,
        sae.build,
        sae.FOLDER,
        sae.PAGE,
        "an SAE on a model's activations at one hook (train-sae has every flag)",
    )
)
register_kind(
    Kind(
        "sparsity",
        sparsity.SparsityRunConfig,
        sparsity.SparsityRunResult,
        sparsity.build,
        sparsity.FOLDER,
        sparsity.PAGE,
        "MLP activation sparsity, over training and under top-k",
    )
)
register_kind(
    Kind(
        "heads",
        heads.HeadsRunConfig,
        heads.HeadsRunResult,
        heads.build,
        heads.FOLDER,
        heads.PAGE,
        "attention-head roles and the head methods (Duo, Razor, KV trade-off)",
    )
)
register_kind(
    Kind(
        "arrow",
        arrow.ArrowRunConfig,
        arrow.ArrowRunResult,
        arrow.build,
        arrow.FOLDER,
        arrow.PAGE,
        "the arrow of time: forward against backward pairs",
    )
)
register_kind(
    Kind(
        "steer",
        steer.SteerRunConfig,
        steer.SteerRunResult,
        steer.build,
        steer.FOLDER,
        steer.PAGE,
        "an SAE run's latents steered and ablated: output scores, concept gain vs KL against a diff-of-means baseline",
    )
)
register_kind(
    Kind(
        "graph",
        graph.GraphRunConfig,
        graph.GraphRunResult,
        graph.build,
        graph.FOLDER,
        graph.PAGE,
        "an attribution graph of one prompt (transcoders + error nodes, per-head loadings)",
    )
)
