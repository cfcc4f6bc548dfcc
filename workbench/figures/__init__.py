"""Plotly figure builders shared by the viewer, the widgets and the notebooks (one module per
subject); the public builders are exported here, loaded lazily (PEP 562) so that importing one
module does not import every other's dependencies."""

from __future__ import annotations

from ..lazy import lazy_exports

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
    "attention_sae": ("head_shares_bar", "dfa_strip", "head_latents_bar"),
    "ladder": ("ladder_tree",),
    "health": ("health_figures", "alarms_html"),
    "steer": ("gain_kl_figure", "next_token_bars", "output_score_histogram", "generations_html"),
    "graph": ("graph_figure",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
