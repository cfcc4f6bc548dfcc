"""A sparsity run's page (`SparsityRunResult`): MLP sparsity per layer, over training, per neuron,
and the top-k intervention."""

from __future__ import annotations

from ..figures import probes as pf
from ..results import SparsityRunResult
from .pages import figure_div

KIND = "sparsity"


def criterion(threshold: float) -> str:
    """When a neuron counts as active on a token, as the probe decided it (|a| > threshold)."""
    return "its activation is nonzero (|a| > 0)" if threshold == 0 else f"|a| > {threshold:g}"


def summary(res: SparsityRunResult) -> str:
    active = ", ".join(f"L{l} {100 * a:.1f}%" for l, a in enumerate(res.final.active_frac))
    return f"active {active} (|a| > {res.final.threshold:g})"


def render(name: str, res: SparsityRunResult) -> str:
    final = res.final
    body = (
        f'<p id="threshold">A neuron counts as active on a token when {criterion(final.threshold)}, '
        f"for a = the MLP activation after its nonlinearity (threshold {final.threshold:g} from results.json); "
        f"measured over {int(final.n_tokens)} tokens.</p>"
    )
    body += figure_div(pf.sparsity_by_layer(final.active_frac, final.active_frac_std, final.threshold), "by-layer")
    body += figure_div(pf.sparsity_over_training(res.over_training), "over-training")
    body += '<div class="grid">' + figure_div(pf.neuron_frequencies(final.neuron_freq), "neurons")
    body += figure_div(pf.topk_curve(res.topk), "topk") + "</div>"
    never = ", ".join(f"L{l}: {int(n)}" for l, n in enumerate(final.never_firing))
    return body + f"<p>Never-firing neurons on {int(final.n_tokens)} tokens: {never}.</p>"
