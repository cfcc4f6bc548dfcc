"""Plotly figures for the three probes (sparsity, head roles, arrow of time), from their typed
results (workbench.results and the probes' own result classes). Every string that comes from a
run (labels, tokens, data-set, seed and direction names, config values) passes through
`text.plain` before plotly sees it: plotly draws `<a href>` and a few other tags in names, text and
tick labels."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .sae import LAYOUT, empty_figure
from .text import plain

if TYPE_CHECKING:
    from ..probes.arrow import ArrowResult
    from ..probes.heads import HeadRoles
    from ..results import SparsityOverTraining, TopKIntervention


def sparsity_by_layer(
    active_frac: list[float], std: list[float], threshold: float = 0.0, title: str = "MLP activation sparsity"
) -> go.Figure:
    if not active_frac:
        return empty_figure("no MLP layers measured")
    fig = go.Figure(
        go.Bar(
            x=[f"L{i}" for i in range(len(active_frac))],
            y=[100 * a for a in active_frac],
            error_y=dict(type="data", array=[100 * s for s in std]),
            marker_color="#4c78a8",
        )
    )
    crit = "nonzero" if threshold == 0 else f"|a| > {threshold:g}"
    fig.update_layout(
        **LAYOUT, title=f"{title}: % of neurons {crit} per token", yaxis_title="% active", yaxis_range=[0, 100]
    )
    return fig


def sparsity_over_training(over: SparsityOverTraining | None, checkpoint: int | None = None) -> go.Figure:
    """Active fraction per layer against training step; `checkpoint` highlights one step."""
    steps, fracs = (over.steps, over.active_frac) if over is not None else ([], [])
    if not steps:
        return empty_figure("no checkpoints saved during training")
    fig = go.Figure()
    for l in range(len(fracs[0])):
        fig.add_trace(go.Scatter(x=steps, y=[100 * f[l] for f in fracs], mode="lines+markers", name=f"layer {l}"))
    if checkpoint is not None and 0 <= checkpoint < len(steps):
        fig.add_vline(x=steps[checkpoint], line_dash="dot", line_color="#888")
    fig.update_layout(
        **LAYOUT,
        title="Sparsity emerging over training",
        xaxis_title="training step",
        yaxis_title="% active",
        yaxis_range=[0, 100],
    )
    return fig


def neuron_frequencies(neuron_freq: list[list[float]]) -> go.Figure:
    if not neuron_freq:
        return empty_figure("no MLP layers measured")
    fig = go.Figure()
    for l, freq in enumerate(neuron_freq):
        fig.add_trace(go.Histogram(x=freq, name=f"layer {l}", opacity=0.6, nbinsx=40))
    fig.update_layout(
        **LAYOUT,
        barmode="overlay",
        title="Per-neuron firing frequency",
        xaxis_title="fraction of tokens",
        yaxis_title="neurons",
    )
    return fig


def topk_curve(res: TopKIntervention | None) -> go.Figure:
    if res is None or not res.ks:
        return empty_figure("no top-k intervention measured")
    fig = go.Figure(go.Scatter(x=res.ks, y=res.delta, mode="lines+markers"))
    fig.update_layout(
        **LAYOUT,
        title=f"Keeping only the top-k of {res.d_mlp} MLP activations",
        xaxis_title="k",
        yaxis_title="loss increase (nats)",
        xaxis_type="log",
    )
    return fig


def _ci_text(ci: list | None) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "[no interval]"


def as_roles(roles: HeadRoles | dict) -> HeadRoles:
    """HeadRoles, or its to_dict() (what notebooks and the head explorer pass around) read back."""
    if isinstance(roles, dict):
        from ..probes.heads import HeadRoles
        from ..results import take

        return take(HeadRoles, roles, "roles")
    return roles


def too_few_message(roles: HeadRoles | dict) -> str | None:
    """The head-role page's warning when too few steps were copied to label retrieval, else None."""
    roles = as_roles(roles)
    if not roles.too_few_copied:
        return None
    cfg = roles.config
    return (
        f"too few copied steps to label: {int(roles.n_copied)} of {int(roles.n_copy_steps)} copy steps "
        f"were copied correctly, under the {int(cfg['min_copied_steps'])} needed; no head is labelled "
        f"retrieval or other"
    )


def head_role_map(roles: HeadRoles | dict) -> go.Figure:
    """Layer × head heatmaps of retrieval and streaming scores; the role (decided on the 95%
    intervals' lower bounds) and the intervals in each cell's text and hover."""
    roles = as_roles(roles)
    r, s, labels = roles.retrieval, roles.streaming, roles.labels
    if not r:
        return empty_figure("no heads measured")
    L, H = len(r), len(r[0])
    r_ci = roles.retrieval_ci or [[None] * H for _ in range(L)]
    s_ci = roles.streaming_ci or [[None] * H for _ in range(L)]
    hits = roles.retrieval_hits
    n = roles.n_copied
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("retrieval score (Wilson 95%)", "streaming score (t 95% over contexts)")
    )
    heads, layers = [f"H{h}" for h in range(H)], [f"L{l}" for l in range(L)]
    r_text = [
        [plain(f"{labels[l][h]} · {_ci_text(r_ci[l][h])}" + (f" · {hits[l][h]}/{n}" if hits else "")) for h in range(H)]
        for l in range(L)
    ]
    s_text = [[plain(f"{labels[l][h]} · {_ci_text(s_ci[l][h])}") for h in range(H)] for l in range(L)]
    for col, z, text, scale in ((1, r, r_text, "Oranges"), (2, s, s_text, "Blues")):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=heads,
                y=layers,
                text=text,
                zmin=0,
                zmax=1,
                colorscale=scale,
                texttemplate="%{z:.2f}",
                showscale=col == 2,
                hovertemplate="%{y} %{x}: %{z:.2f} (%{text})<extra></extra>",
            ),
            1,
            col,
        )
    cfg = roles.config
    title = plain(
        f"Head roles on lower bounds (retrieval ≥ {cfg.get('retrieval_threshold')} from ≥ "
        f"{cfg.get('min_copied_steps')} copied steps, streaming ≥ {cfg.get('streaming_threshold')})"
    )
    fig.update_layout(**LAYOUT, title=title)
    warning = too_few_message(roles)
    if warning:
        fig.add_annotation(
            text=plain(warning), xref="paper", yref="paper", x=0.5, y=-0.18, showarrow=False, font=dict(color="#b22222")
        )
    return fig


def causal_check(roles: HeadRoles | dict) -> go.Figure:
    roles = as_roles(roles)
    d = roles.delta_loss
    if not d:
        return empty_figure("no causal check measured")
    fig = go.Figure(
        go.Heatmap(
            z=d,
            x=[f"H{h}" for h in range(len(d[0]))],
            y=[f"L{l}" for l in range(len(d))],
            colorscale="Reds",
            hovertemplate="%{y} %{x}: Δloss %{z:.3f}<extra></extra>",
        )
    )
    sc = roles.screen if getattr(roles, "causal", "exact") == "screen" else None
    if sc is None:
        fig.update_layout(**LAYOUT, title="Copy loss increase when a head sees only sink + window")
        return fig
    fig.add_trace(
        go.Scatter(
            x=[f"H{h}" for _, h in sc.heads],
            y=[f"L{l}" for l, _ in sc.heads],
            mode="markers",
            marker=dict(symbol="circle-open", color="black", size=9),
            customdata=sc.exact,
            hovertemplate="%{y} %{x}: exact Δloss %{customdata:.3f}<extra>checked exactly</extra>",
            name="checked exactly",
        )
    )
    rho = sc.spearman
    said = "n/a" if rho.rho is None else f"{rho.rho:.3f}"
    if rho.ci:
        said += f" [{rho.ci[0]:.3f}, {rho.ci[1]:.3f}]"
    recall = "n/a" if sc.top_k_recall is None else f"{sc.top_k_recall:.2f}"
    fig.update_layout(
        **LAYOUT,
        title="First-order estimate (attribution patching) of the copy-loss increase under sink + window",
    )
    fig.add_annotation(
        text=plain(f"screen vs exact on {rho.n} heads: Spearman ρ {said}, top-{sc.top_k} recall {recall}"),
        xref="paper",
        yref="paper",
        x=0,
        y=1.08,
        showarrow=False,
    )
    return fig


def attention_pattern(pattern: list[list[float]], token_strs: list[str], title: str = "Attention pattern") -> go.Figure:
    if not pattern:
        return empty_figure("no pattern")
    labels = [plain(f"{i}:{t}") for i, t in enumerate(token_strs)]
    fig = go.Figure(
        go.Heatmap(
            z=pattern,
            x=labels,
            y=labels,
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            hovertemplate="query %{y} → key %{x}: %{z:.2f}<extra></extra>",
        )
    )
    fig.update_layout(
        **{**LAYOUT, "height": 480},
        title=plain(title),
        yaxis_autorange="reversed",
        xaxis_title="key",
        yaxis_title="query",
    )
    return fig


# Forward and backward curves differ in dash and marker as well as colour (readable in grey, and by
# readers who do not tell the colours apart); the legend names each.
DIRECTION_STYLE = {
    "forward": dict(line=dict(dash="solid"), marker=dict(symbol="circle")),
    "backward": dict(line=dict(dash="dash"), marker=dict(symbol="square-open", size=8)),
}


def _direction(name: str) -> str | None:
    low = str(name).lower()
    return "backward" if "backward" in low else "forward" if "forward" in low else None


def arrow_curves(curves: dict, title: str = "Validation loss over training", colors: dict | None = None) -> go.Figure:
    """One validation-loss curve per key ({name: {"step", "val_loss"}}); a key naming a direction
    gets that direction's dash and marker; `colors` maps keys to colours (e.g. one per seed)."""
    if not curves or not any(c.get("step") for c in curves.values()):
        return empty_figure("no loss curves logged")
    fig = go.Figure()
    for name, c in curves.items():
        style = DIRECTION_STYLE.get(_direction(name), {})
        line, marker = dict(style.get("line", {})), dict(style.get("marker", {}))
        if colors and name in colors:
            line["color"] = marker["color"] = colors[name]
        fig.add_trace(
            go.Scatter(x=c["step"], y=c["val_loss"], mode="lines+markers", name=plain(name), line=line, marker=marker)
        )
    fig.update_layout(
        **LAYOUT,
        title=plain(title),
        xaxis_title="step",
        yaxis_title="loss (nats/token)",
        legend_title_text="solid ● forward · dashed □ backward" if any(map(_direction, curves)) else None,
    )
    return fig


def arrow_gaps(results: dict[str, ArrowResult]) -> go.Figure:
    """Per dataset: the mean gap (L_backward − L_forward) / L_forward with its seed-level 95%
    interval, each seed's gap, and the same-direction null's band ±max|null|; the verdict in the
    axis label."""
    if not results:
        return empty_figure("no arrow-of-time results")
    names = list(results)
    ticks = [f"{plain(n)}<br>{plain(results[n].verdict)}" for n in names]  # plotly reads tags
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=ticks,
            y=[200 * results[n].null_max for n in names],
            base=[-100 * results[n].null_max for n in names],
            marker_color="rgba(128,128,128,0.25)",
            name="same-direction null ±max|gap|",
            hoverinfo="skip",
            width=0.6,
        )
    )
    gaps = [100 * results[n].gap for n in names]
    fig.add_trace(
        go.Scatter(
            x=ticks,
            y=gaps,
            mode="markers",
            marker=dict(size=14, symbol="diamond", color="#222"),
            name=f"mean over seeds, seed-level {round(100 * results[names[0]].level)}% CI",
            error_y=dict(
                type="data",
                symmetric=False,
                array=[100 * results[n].gap_ci_seeds[1] - g for n, g in zip(names, gaps)],
                arrayminus=[g - 100 * results[n].gap_ci_seeds[0] for n, g in zip(names, gaps)],
            ),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[t for n, t in zip(names, ticks) for _ in results[n].gaps],
            y=[100 * g for n in names for g in results[n].gaps],
            text=[plain(f"seed {s}") for n in names for s in results[n].seeds],
            mode="markers",
            marker=dict(size=8, color="#4c78a8"),
            name="each seed",
            hovertemplate="%{text}: %{y:+.2f}%<extra></extra>",
        )
    )
    fig.add_hline(y=0, line_color="#444")
    fig.update_layout(
        **LAYOUT,
        title="Arrow of time: (L_backward − L_forward) / L_forward over seeds",
        yaxis_title="gap (%)",
        barmode="overlay",
    )
    return fig


def arrow_gap_over_training(over: dict, title: str = "Gap over training") -> go.Figure:
    """Each seed's gap at every logged step, and the mean with its seed-level interval."""
    steps = over.get("step") if over else None
    if not steps:
        return empty_figure("no validation losses logged by both directions")
    fig = go.Figure()
    if over.get("ci_lo"):
        fig.add_trace(
            go.Scatter(
                x=steps + steps[::-1],
                y=[100 * v for v in over["ci_hi"] + over["ci_lo"][::-1]],
                fill="toself",
                fillcolor="rgba(76,120,168,0.2)",
                line=dict(width=0),
                mode="lines",
                name="seed-level 95% CI",
                hoverinfo="skip",
            )
        )
    for i, g in enumerate(over.get("gaps", [])):
        fig.add_trace(
            go.Scatter(x=steps, y=[100 * v for v in g], mode="lines", line=dict(width=1, dash="dot"), name=f"seed #{i}")
        )
    fig.add_trace(
        go.Scatter(
            x=steps, y=[100 * v for v in over["mean"]], mode="lines+markers", name="mean", line=dict(color="#222")
        )
    )
    fig.add_hline(y=0, line_color="#444")
    fig.update_layout(**LAYOUT, title=plain(title), xaxis_title="step", yaxis_title="gap (%)")
    return fig


SEED_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#bab0ac")


def arrow_seed_curves(curves: dict, title: str = "Validation loss over training") -> go.Figure:
    """Forward and backward validation loss of every seed ({"seed s": {direction: curve}}): one
    colour per seed, the direction in dash and marker ("forward · seed 0" in the legend)."""
    named = {f"{d} · {seed}": c for seed, by_dir in curves.items() for d, c in by_dir.items()}
    colors = {
        f"{d} · {seed}": SEED_COLORS[i % len(SEED_COLORS)]
        for i, (seed, by_dir) in enumerate(curves.items())
        for d in by_dir
    }
    return arrow_curves(named, title, colors)


# --- HTML summaries shared by the viewer and the widgets (every string from disk escaped) ---------


def _pct_ci(ci: list) -> str:
    return f"[{100 * ci[0]:+.2f}%, {100 * ci[1]:+.2f}%]"


def arrow_summary_html(name: str, res: ArrowResult) -> str:
    """Verdict, seed-level interval, same-direction null, per-seed table and the window-level
    interval of one data set's ArrowResult."""
    e = html.escape
    level = round(100 * res.level)
    rows = "".join(
        f"<tr><td>{e(str(s))}</td><td>{f:.4f}</td><td>{b:.4f}</td><td>{100 * g:+.2f}%</td><td>{_pct_ci(ci)}</td></tr>"
        for s, f, b, g, ci in zip(res.seeds, res.loss_forward, res.loss_backward, res.gaps, res.seed_window_cis)
    )
    nulls = ", ".join(
        f"{e(x['direction'])} {e(str(x['seeds'][0]))} vs {e(str(x['seeds'][1]))}: {100 * x['gap']:+.2f}%"
        for x in res.null_gaps
    )
    return (
        f'<p class="verdict"><b>{e(name)}: {e(res.verdict)}</b> · mean gap {100 * res.gap:+.2f}% '
        f"over {len(res.seeds)} seeds, seed-level {level}% CI {_pct_ci(res.gap_ci_seeds)} "
        f"(t over per-seed gaps) · same-direction null max |gap| {100 * res.null_max:.2f}% ({nulls}) · "
        f"window-level {level}% CI {_pct_ci(res.gap_ci_windows)} (held-out windows resampled, seeds "
        f"fixed; not the verdict's interval) · {int(res.n_windows)} windows of {int(res.seq_len)} tokens</p>"
        "<table><tr><th>seed</th><th>forward loss</th><th>backward loss</th><th>gap</th>"
        f"<th>window-level {level}% CI</th></tr>{rows}</table>"
    )


def head_roles_summary_html(roles: HeadRoles | dict) -> str:
    """Copy statistics, the too-few warning when it applies, and the role counts."""
    roles = as_roles(roles)
    e = html.escape
    flat = [lab for row in roles.labels for lab in row]
    counts = ", ".join(f"{flat.count(lab)} {e(lab)}" for lab in dict.fromkeys(flat))
    text = (
        f"<p>Copy accuracy on the needle task: {roles.copy_accuracy:.2f} ({int(roles.n_copied)} of "
        f"{int(roles.n_copy_steps)} copy steps); clean copy loss {roles.clean_copy_loss:.3f} nats. Roles: {counts}. "
        "A head is labelled on the 95% interval's lower bound (retrieval: Wilson over copied steps; streaming: "
        "t over contexts).</p>"
    )
    warning = too_few_message(roles)
    if warning:
        text = f'<p class="error"><b>{e(warning)}</b></p>' + text
    return text
