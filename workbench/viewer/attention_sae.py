"""Viewer pieces for attention-output (hook_z) SAE runs, called by the SAE feature page and the head
explorer: a latent's heads and its DFA on its top contexts, and the latents that write through a
chosen head. Everything is read from the run's attention.safetensors (`sae.attention.AttentionTable`,
written by the evaluation beside features.safetensors), so no model is loaded. Strings from disk
are escaped (html.escape here; figure builders escape theirs for plotly)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from ..figures import attention_sae as af
from ..sae.attention import ATTENTION_FILE, AttentionTable, is_hook_z, latents_through_head, z_layer
from ..sae.evaluate import FeatureTable


class Section(NamedTuple):
    """A page fragment: `html` holds a <div id=...> per figure; `figures` the plotly JSON for each
    id (as api.feature returns its figures), drawn by the page's own Plotly.newPlot loop."""

    html: str
    figures: dict[str, dict]


def load_attention_table(run_dir: str | Path, hook_name: str) -> AttentionTable | None:
    """The run's attention table, or None for an SAE on another hook (or evaluated before it existed)."""
    path = Path(run_dir) / ATTENTION_FILE
    if not is_hook_z(hook_name) or not path.is_file():
        return None
    return AttentionTable.load(path)


def _fig(fig) -> dict:
    return json.loads(fig.to_json())


def latent_heads_section(
    att: AttentionTable, table: FeatureTable, feature: int, tokenizer, hook_name: str, n_contexts: int = 3
) -> Section:
    """For latent `feature`: its head shares (figure "feat-heads") and its DFA on its first `n_contexts`
    top contexts ("feat-dfa-0", ...), each a heat strip over the context's source tokens."""
    layer = z_layer(hook_name)
    Fn, n = table.top_seq.shape
    if not 0 <= feature < Fn:
        raise ValueError(f"feature={feature}: expected 0 <= feature < {Fn}")
    if att.shares.shape[0] != Fn or att.dfa.shape[:2] != (Fn, n):
        raise ValueError(
            f"{ATTENTION_FILE} holds {att.shares.shape[0]} latents x {att.dfa.shape[1]} contexts, "
            f"the feature table {Fn} x {n}: evaluate the run again"
        )
    shares = att.shares[feature].tolist()
    figures = {"feat-heads": _fig(af.head_shares_bar(shares, feature, layer))}
    best = max(range(len(shares)), key=shares.__getitem__)
    parts = [
        "<h3>Heads and source tokens</h3>",
        f'<p class="note">An attention-output latent: {shares[best]:.0%} of its decoder norm² is on '
        f"L{layer}H{best}. Below, its direct feature attribution on its top contexts: the pre-activation "
        "at the framed token split over the source tokens each head reads.</p>",
        '<div id="feat-heads"></div>',
    ]
    for j in range(min(n_contexts, n)):
        seq = int(table.top_seq[feature, j])
        if seq < 0:
            break
        start, pos = int(table.context_start[feature, j]), int(table.top_pos[feature, j])
        C = att.dfa.shape[3]
        toks = [tokenizer.token_str(int(t)) for t in table.tokens[seq, start : start + C]]
        fig = af.dfa_strip(
            toks,
            att.dfa[feature, j, :, : len(toks)].tolist(),
            pos - start,
            feature,
            layer,
            value=float(table.top_values[feature, j]),
            rest=float(att.dfa_rest[feature, j]),
            bias=float(att.bias[feature]),
        )
        figures[f"feat-dfa-{j}"] = _fig(fig)
        parts.append(f'<div id="feat-dfa-{j}"></div>')
    return Section("\n".join(parts), figures)


class HeadLatent(NamedTuple):
    run: str
    latent: int
    share: float
    density: float | None  # from the run's feature table, when there is one


def head_latents(
    runs: list[tuple[str, AttentionTable, FeatureTable | None]], head: int, min_share: float = 0.5, limit: int = 20
) -> list[HeadLatent]:
    """The latents of the given hook_z SAE runs (all on the chosen head's layer) whose decoder puts at
    least `min_share` of its norm² on `head`, strongest first, at most `limit`."""
    rows = []
    for name, att, table in runs:
        hits = latents_through_head(att.shares, head, min_share)
        for f, s in zip(hits.latents.tolist(), hits.shares.tolist()):
            rows.append(HeadLatent(name, f, s, None if table is None else float(table.density[f])))
    rows.sort(key=lambda r: (-r.share, r.run, r.latent))
    return rows[:limit]


def head_latents_section(rows: list[HeadLatent], layer: int, head: int, min_share: float = 0.5) -> Section:
    """The head explorer's "latents that write through L{layer}H{head}": a table linking each latent
    to its run's feature page (`/run/<run>?feature=<i>`), and a bar chart ("head-latents") when there is one run."""
    title = f"<h3>SAE latents that write through L{layer}H{head}</h3>"
    if not rows:
        why = (
            f"No latent of an evaluated SAE on blocks.{layer}.attn.hook_z puts {min_share:.0%} of its decoder "
            "norm² on this head."
        )
        return Section(f'{title}<p class="empty">{why}</p>', {})
    body = "".join(
        f'<tr><td><a href="/run/{quote(r.run, safe="")}?feature={r.latent}">{html.escape(r.run)}</a></td>'
        f"<td>{r.latent}</td><td>{r.share:.3f}</td>"
        f"<td>{'' if r.density is None else f'{r.density:.2e}'}</td></tr>"
        for r in rows
    )
    table = (
        '<table class="head-latents"><tr><th>run</th><th>latent</th><th>share of ‖W_dec‖²</th><th>density</th></tr>'
        f"{body}</table>"
    )
    figures = {}
    if len({r.run for r in rows}) == 1:
        fig = af.head_latents_bar([r.latent for r in rows], [r.share for r in rows], layer, head, rows[0].run)
        figures["head-latents"] = _fig(fig)
        table += '<div id="head-latents"></div>'
    return Section(title + table, figures)
