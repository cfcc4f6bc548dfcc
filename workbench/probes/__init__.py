"""Probes of a language model's internals, one module per method; the public names are exported here.

    from workbench.probes import head_roles, duo_gates, razor_scores, tradeoff_curve

The exports load lazily (PEP 562): `import workbench.probes.intervals` does not import
TransformerLens, and reading an SAE run's results never imports a probe it does not need. The
function `heads_over_training.heads_over_training` is not exported under its name, which is also
its module's; use `workbench.probes.heads_over_training.heads_over_training`.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "heads": (
        "HeadRoleConfig",
        "HeadRoles",
        "head_roles",
        "make_contexts",
        "attention_patterns",
        "causal_check",
        "tl_detector_scores",
    ),
    "sparsity": (
        "SparsityResult",
        "activation_sparsity",
        "sparsity_over_training",
        "topk_intervention",
        "threshold_for_loss",
    ),
    "arrow": ("ArrowResult", "arrow_gap", "arrow_over_seeds", "arrow_from_losses", "gap_over_training"),
    "intervals": ("wilson_interval", "t_interval"),
    "attention_restrict": (
        "streaming_pattern",
        "gate_hooks",
        "keep_full_hooks",
        "kv_fraction",
        "n_kv_heads",
        "check_supported",
    ),
    "duo": (
        "PasskeyConfig",
        "PasskeyBatch",
        "passkey_batch",
        "passkey_accuracy",
        "DuoConfig",
        "DuoResult",
        "duo_gates",
    ),
    "razor": ("RazorConfig", "RazorResult", "razor_scores", "protected_heads"),
    "kv_tradeoff": (
        "TradeoffConfig",
        "TradeoffResult",
        "tradeoff_curve",
        "standard_rankings",
        "keep_top",
        "n_full_heads",
    ),
    "head_agreement": (
        "AgreementConfig",
        "Agreement",
        "Correlation",
        "spearman",
        "ranking_agreement",
        "rankings_from_roles",
    ),
    "heads_over_training": (
        "OverTrainingConfig",
        "HeadsOverTraining",
        "attention_entropy",
        "run_checkpoints",
        "run_heads_over_training",
        "shipped_checkpoints",
        "shipped_heads_over_training",
    ),
    "head_explorer": ("explorer_data", "default_contexts", "context_patterns"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
