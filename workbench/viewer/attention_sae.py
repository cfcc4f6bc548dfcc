"""Viewer pieces for attention-output (hook_z) SAE runs, called by the SAE feature page and the head
explorer: a latent's heads and its DFA on its top contexts (`feature_section`, for api.feature), and
the latents of every hook_z SAE run in the store that write through a chosen head
(`store_head_latents`, `head_explorer_section`, for the heads page). Everything is read from the
runs' attention.safetensors (`sae.attention.AttentionTable`, written by the evaluation beside
features.safetensors), so no model is loaded. Strings from disk are escaped (html.escape here;
figure builders escape theirs for plotly)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote

from ..figures import attention_sae as af
from ..runs import ATTENTION_FILE, SAE_CONFIG_FILE
from ..sae.attention import AttentionTable, is_hook_z, latents_through_head, z_layer
from ..sae.evaluate import FeatureTable
from .store import RunError, regular_file

if TYPE_CHECKING:
    from .store import RunStore


class Section(NamedTuple):
    """A page fragment: `html` holds a <div id=...> per figure; `figures` the plotly JSON for each
    id (as api.feature returns its figures), drawn by the page's own Plotly.newPlot loop."""

    html: str
    figures: dict[str, dict]

    def json(self) -> dict:
        """{"html": ..., "figures": {...}}: what an API returns for the page to insert and draw."""
        return {"html": self.html, "figures": self.figures}


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


# --- from the run store -------------------------------------------------------------------------


def run_hook(store: RunStore, name: str) -> tuple[str, str] | None:
    """(hook_name, model_name) from the run's sae_config.json, or None where it has none; RunError
    naming the file when it cannot be read."""
    path = store.check_files(name) / SAE_CONFIG_FILE
    if regular_file(path) is None:
        return None
    try:
        cfg = json.loads(path.read_text())["config"]
        return str(cfg["hook_name"]), str(cfg.get("model_name") or "")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise RunError(f"{SAE_CONFIG_FILE} cannot be read: {type(e).__name__}: {e}") from None


def store_attention_table(store: RunStore, name: str) -> AttentionTable | None:
    """The run's attention.safetensors (re-read when the file changes), or None where there is none;
    RunError naming it when it is a link out of the runs folder, not a regular file, or unreadable."""
    return store.loaded(name, ATTENTION_FILE, AttentionTable.load)


def _error(title: str, message: str) -> Section:
    return Section(f'<h3>{title}</h3><p class="error">{html.escape(message)}</p>', {})


def feature_section(store: RunStore, name: str, table: FeatureTable, feature: int, tokenizer) -> Section:
    """The feature page's heads-and-DFA section for `feature` of run `name`: empty for an SAE on
    another hook; for a hook_z run not (re-)evaluated since attention tables existed, a note saying
    so; a file that cannot be read is named in the section, and the rest of the page still works."""
    title = "Heads and source tokens"
    try:
        hook = run_hook(store, name)
        if hook is None or not is_hook_z(hook[0]):
            return Section("", {})
        att = store_attention_table(store, name)
    except RunError as e:
        return _error(title, str(e))
    if att is None:
        why = (
            f"This SAE reads {hook[0]}, but its run has no {ATTENTION_FILE} (evaluated before head shares and "
            "DFA were computed): evaluate it again to see which heads and source tokens drive each latent."
        )
        return Section(f'<h3>{title}</h3><p class="empty">{html.escape(why)}</p>', {})
    try:
        return latent_heads_section(att, table, feature, tokenizer, hook[0])
    except ValueError as e:
        return _error(title, str(e))


def store_head_latents(
    store: RunStore,
    layer: int,
    head: int,
    *,
    min_share: float = 0.5,
    limit: int = 20,
    model_name: str | None = None,
) -> list[HeadLatent]:
    """`head_latents` over every evaluated SAE run in `store` on blocks.{layer}.attn.hook_z: latents
    with at least `min_share` of their decoder norm² on `head`, strongest first. A run too narrow for
    `head` (another model's), on another `model_name` (when given and the run records one), or whose
    files cannot be read is left out; a run without a feature table is listed without densities."""
    hook = f"blocks.{layer}.attn.hook_z"
    found = []
    for run in store.runs():
        try:
            rec = run_hook(store, run.name)
            if rec is None or rec[0] != hook or (model_name and rec[1] and rec[1] != model_name):
                continue
            att = store_attention_table(store, run.name)
        except RunError:
            continue
        if att is None or att.shares.ndim != 2 or not 0 <= head < att.shares.shape[1]:
            continue
        try:
            table = store.feature_table(run.name)
        except RunError:
            table = None
        if table is not None and len(table.density) != att.shares.shape[0]:
            table = None  # from another evaluation than the attention table: no densities rather than wrong ones
        found.append((run.name, att, table))
    return head_latents(found, head, min_share, limit)


def head_explorer_section(store: RunStore, layer: int, head: int, min_share: float = 0.5) -> Section:
    """The head explorer's list of SAE latents writing through L{layer}H{head}, from the whole store."""
    rows = store_head_latents(store, layer, head, min_share=min_share)
    return head_latents_section(rows, layer, head, min_share)
