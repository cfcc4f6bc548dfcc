"""Sparse probing and absorption-style figures: one builder for the viewer and the FeatureExplorer.

Each takes the plain dict that `workbench.sae.probing.SAEEvals.to_dict()` writes to a run's
usefulness.json (or None where it was not computed) and never a model. Concept names and letters
come from that file: they pass through `text.plain` before plotly sees them.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..sae.probing import ABSORPTION_CAVEAT
from .sae import LAYOUT, empty_figure
from .text import plain


def _hover(value: object) -> str:
    """A string from disk inside a hovertemplate: escaped, and with "%{" spelled "% {" (plotly
    reads %{...} in a template as a field of the point, and has no escape for it)."""
    return plain(value).replace("%{", "% {")


NOT_COMPUTED = (
    "sparse probing and absorption-style scores were not computed for this run "
    "(workbench.sae.probing.evaluate_usefulness, then saebench_json.write_run_evals)"
)


def usefulness_figure(evals: dict | None) -> go.Figure:
    """Left: test accuracy against k per concept (dotted: the probe on the raw activation);
    right: absorption-style full-absorption rate per first letter."""
    if not evals:
        return empty_figure("sparse probing / absorption-style: not computed")
    sp, ab = evals["sparse_probing"], evals["absorption"]
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        subplot_titles=(
            "sparse probing: test accuracy vs k latents",
            "absorption-style: full-absorption rate per letter",
        ),
    )
    ks = sp["ks"]
    for i, task in enumerate(sp["tasks"]):
        acc = sp["sae_accuracy"][task]
        color = f"hsl({(37 * i) % 360},60%,45%)"
        fig.add_trace(
            go.Scatter(
                x=ks,
                y=[acc[str(k)] if str(k) in acc else acc[k] for k in ks],
                mode="lines+markers",
                name=plain(task),
                line=dict(color=color),
                legendgroup=f"task-{i}",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[ks[0], ks[-1]],
                y=[sp["llm_accuracy"][task]] * 2,
                mode="lines",
                showlegend=False,
                line=dict(color=color, dash="dot"),
                legendgroup=f"task-{i}",
                hovertemplate=f"{_hover(task)}: raw-activation probe %{{y:.3f}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    mean = sp["mean_accuracy"]
    fig.add_trace(
        go.Scatter(
            x=ks,
            y=[mean[str(k)] if str(k) in mean else mean[k] for k in ks],
            mode="lines",
            name="mean over concepts",
            line=dict(color="black", width=4),
        ),
        row=1,
        col=1,
    )
    fig.update_xaxes(type="log", title_text="k", row=1, col=1)
    fig.update_yaxes(title_text="test accuracy (balanced)", range=[0.4, 1.02], row=1, col=1)
    letters = ab["letters"]
    fig.add_trace(
        go.Bar(
            x=[plain(r["letter"]) for r in letters],
            y=[r["full_absorption_rate"] for r in letters],
            name="full-absorption rate",
            marker_color="#c0392b",
            showlegend=False,
            customdata=[[r["num_probe_true_positives"], len(r["main_latents"])] for r in letters],
            hovertemplate="%{x}: %{y:.3f} (%{customdata[0]} probe true positives, "
            "%{customdata[1]} main latents)<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_yaxes(title_text="absorption-style rate", rangemode="tozero", row=1, col=2)
    fig.update_layout(**{**LAYOUT, "height": 380}, title="Sparse probing and absorption-style scores")
    return fig


def usefulness_html(evals: dict | None) -> str:
    """The numbers beside the figure, with the absorption caveat wherever absorption is shown."""
    if not evals:
        return f'<p class="note">{html.escape(NOT_COMPUTED)}</p>'
    sp, ab = evals["sparse_probing"], evals["absorption"]
    mean = sp["mean_accuracy"]
    accs = ", ".join(f"k={k}: {mean[str(k)] if str(k) in mean else mean[k]:.3f}" for k in sp["ks"])
    return (
        f"<p>Sparse probing, mean over {len(sp['tasks'])} byte-level concepts: {accs}; probe on the raw "
        f"activation: {sp['mean_llm_accuracy']:.3f}.</p>"
        f"<p>Absorption-style mean full-absorption rate over {len(ab['letters'])} letters: "
        f"{ab['mean_full_absorption']:.3f} (absorption fraction {ab['mean_absorption_fraction']:.3f}). "
        f"<i>{html.escape(ABSORPTION_CAVEAT)}.</i></p>"
    )
