"""An arrow-of-time run's page (`ArrowRunResult`): per data set the verdict, the seed-level interval
beside the same-direction null, the window-level interval (named so), the gap over training and
every seed's loss curves."""

from __future__ import annotations

import html

from ..figures import probes as pf
from ..results import ArrowRunResult
from .pages import figure_div

KIND = "arrow"


def summary(res: ArrowRunResult) -> str:
    return " · ".join(
        f"{html.escape(k)}: {html.escape(v.verdict)} (gap {100 * v.gap:+.2f}%, "
        f"seed-level CI [{100 * v.gap_ci_seeds[0]:+.2f}, {100 * v.gap_ci_seeds[1]:+.2f}])"
        for k, v in res.datasets.items()
    )


def render(name: str, res: ArrowRunResult) -> str:
    body = figure_div(pf.arrow_gaps(res.datasets), "gaps")
    for i, (k, v) in enumerate(res.datasets.items()):
        body += pf.arrow_summary_html(k, v) + '<div class="grid">'
        body += figure_div(pf.arrow_gap_over_training(v.over_training, "gap over training"), f"over-{i}")
        body += figure_div(pf.arrow_seed_curves(v.curves, "validation loss over training"), f"curves-{i}") + "</div>"
    return body
