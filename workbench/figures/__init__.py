"""Plotly figure builders shared by the viewer, the widgets and the notebooks (one module per
subject); the public builders are exported here, loaded lazily (PEP 562) so that importing one
module does not import every other's dependencies."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "sae": (
        "empty_figure",
        "feature_histogram",
        "logit_effects",
        "correlated_features",
        "contexts_html",
        "prompt_html",
    ),
    "probes": (
        "head_role_map",
        "causal_check",
        "head_roles_summary_html",
        "attention_pattern",
        "sparsity_by_layer",
        "sparsity_over_training",
        "arrow_gaps",
    ),
    "evals": ("usefulness_figure", "usefulness_html"),
    "heads": (
        "head_scatter",
        "head_detail",
        "agreement_heatmap",
        "agreement_table_html",
        "heads_over_training",
        "OVER_METRICS",
        "ROLE_COLORS",
    ),
    "kv_tradeoff": ("tradeoff_figure",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:  # a submodule not imported yet: `from workbench.figures import heads` imports it
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
