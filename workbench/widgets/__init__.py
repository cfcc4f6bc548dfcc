"""ipywidgets dashboards built on workbench.figures (the same builders as the viewer).

Dashboards take the typed run results of workbench.results (what a run's results.json reads back
as) or the probes' own result classes. Each dashboard keeps its current plotly figures in `.figures`
(name → go.Figure) so code and tests can read what is shown; `.widget` is what a notebook displays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as W
import plotly.graph_objects as go

from ..corpus import Tokenizer
from ..figures import evals as ef
from ..figures import probes as pf
from ..figures import sae as sf
from ..sae.evaluate import FeatureTable, feature_on_text, features_matching
from .base import FigurePane, _Dashboard
from .graph import GraphExplorer
from .heads import HeadExplorer

if TYPE_CHECKING:
    from ..probes.heads import HeadRoles
    from ..results import ArrowRunResult, HeadsRunResult, SparsityRunResult


class FeatureExplorer(_Dashboard):
    """Choose a feature (or search by token): contexts, activation histogram, logit effects,
    correlated features; with a model and SAE, run your own text through it. `evals` (a run's
    usefulness.json, `read_run_evals`) adds sparse probing and absorption-style scores."""

    def __init__(
        self,
        table: FeatureTable,
        tokenizer: Tokenizer,
        model=None,
        sae=None,
        feature: int | None = None,
        evals: dict | None = None,
    ):
        self.table, self.tok, self.model, self.sae = table, tokenizer, model, sae
        n = len(table.density)
        first = int(table.density.argmax()) if feature is None else feature
        self.feature = W.BoundedIntText(value=first, min=0, max=n - 1, description="feature")
        self.search = W.Text(placeholder="token, e.g. def", description="search")
        self.search_button = W.Button(description="search")
        self.search_out = W.HTML()
        self.contexts = W.HTML()
        self.prompt = W.Textarea(value="def f(x):\n    return x + 1", layout=W.Layout(width="100%"))
        self.prompt_button = W.Button(description="run through the SAE", disabled=model is None or sae is None)
        self.prompt_out = W.HTML()
        dead = int((table.density == 0).sum())
        self.status = W.HTML(
            f"<i>{dead} of {n} features never fire on these tokens</i>"
            if dead
            else f"<i>no dead latents: all {n} features fire</i>"
        )
        self.panes = {
            "hist": FigurePane(sf.feature_histogram(table, first)),
            "logits": FigurePane(sf.logit_effects(table, first, tokenizer)),
            "corr": FigurePane(sf.correlated_features(table, first)),
            "usefulness": FigurePane(ef.usefulness_figure(evals)),
        }
        self.usefulness = W.HTML(ef.usefulness_html(evals))
        self.feature.observe(lambda ch: self.show(ch["new"]), names="value")
        self.search_button.on_click(lambda _: self.run_search())
        self.prompt_button.on_click(lambda _: self.run_prompt())
        self.show(first)
        self.widget = W.VBox(
            [
                self.status,
                W.HBox([self.feature, self.search, self.search_button]),
                self.search_out,
                self.contexts,
                W.HBox([self.panes["hist"].widget, self.panes["logits"].widget]),
                self.panes["corr"].widget,
                self.prompt,
                self.prompt_button,
                self.prompt_out,
                self.usefulness,
                self.panes["usefulness"].widget,
            ]
        )

    def show(self, f: int) -> None:
        if self.feature.value != f:
            self.feature.value = f  # triggers show again through the observer
            return
        self.contexts.value = sf.contexts_html(self.table, f, self.tok)
        self.panes["hist"].set(sf.feature_histogram(self.table, f))
        self.panes["logits"].set(sf.logit_effects(self.table, f, self.tok))
        self.panes["corr"].set(sf.correlated_features(self.table, f))

    def matches(self, text: str) -> list[int]:
        """Features whose strongest context ends in `text`, or that promote it most."""
        return features_matching(self.table, self.tok.encode(text), limit=None)

    def run_search(self) -> None:
        hits = self.matches(self.search.value)
        self.search_out.value = ("features: " + ", ".join(f"#{h}" for h in hits[:30])) if hits else "<i>no match</i>"
        if hits:
            self.show(hits[0])

    def run_prompt(self) -> None:
        if self.model is None or self.sae is None:
            self.prompt_out.value = "<i>pass model= and sae= to run your own text</i>"
            return
        ids, acts = feature_on_text(self.model, self.sae, self.tok, self.prompt.value, self.feature.value)
        self.prompt_out.value = sf.prompt_html(ids, acts, self.tok) if ids else "<i>empty text</i>"


def _roles(roles) -> tuple[HeadRoles, list[list[list[list[float]]]] | None, list[str] | None]:
    """HeadRoles from a HeadsRunResult (with its first example's patterns), a HeadRoles, or its to_dict()."""
    from ..results import HeadsRunResult

    if isinstance(roles, HeadsRunResult):
        ex = roles.examples[0] if roles.examples else None
        return roles.roles, ex.patterns if ex else None, ex.tokens if ex else None
    return pf.as_roles(roles), None, None


class HeadRoleMap(_Dashboard):
    """Layer × head retrieval/streaming heatmaps with their 95% intervals (roles decided on the
    lower bounds; a warning when too few steps were copied to label); choose a head to see its
    attention pattern on the needle context. `roles`: a HeadsRunResult (its first example gives the
    patterns) or a HeadRoles with `patterns` [L][H][q][k] and `token_strs`."""

    def __init__(
        self, roles: HeadsRunResult | HeadRoles, patterns: list | None = None, token_strs: list[str] | None = None
    ):
        self.roles, ex_patterns, ex_tokens = _roles(roles)
        self.patterns, self.token_strs = patterns or ex_patterns, token_strs or ex_tokens or []
        L, H = len(self.roles.retrieval), len(self.roles.retrieval[0])
        self.layer = W.Dropdown(options=list(range(L)), value=L - 1, description="layer")
        self.head = W.Dropdown(options=list(range(H)), value=0, description="head")
        self.role = W.HTML()
        self.status = W.HTML(pf.head_roles_summary_html(self.roles))
        self.panes = {
            "roles": FigurePane(pf.head_role_map(self.roles)),
            "causal": FigurePane(pf.causal_check(self.roles)),
            "attention": FigurePane(self._attention()),
        }
        self.layer.observe(lambda _: self.update(), names="value")
        self.head.observe(lambda _: self.update(), names="value")
        self.update()
        self.widget = W.VBox(
            [
                self.status,
                self.panes["roles"].widget,
                self.panes["causal"].widget,
                W.HBox([self.layer, self.head, self.role]),
                self.panes["attention"].widget,
            ]
        )

    def _attention(self) -> go.Figure:
        if not self.patterns:
            return sf.empty_figure("no attention patterns recorded")
        l, h = self.layer.value, self.head.value
        return pf.attention_pattern(self.patterns[l][h], self.token_strs, f"layer {l}, head {h}")

    def update(self) -> None:
        import html

        l, h, r = self.layer.value, self.head.value, self.roles
        hits = f" ({r.retrieval_hits[l][h]}/{r.n_copied} copied steps)"
        self.role.value = (
            f"<b>{html.escape(r.labels[l][h])}</b> · retrieval {r.retrieval[l][h]:.2f}"
            f" [{r.retrieval_ci[l][h][0]:.2f}, {r.retrieval_ci[l][h][1]:.2f}]{hits} · streaming "
            f"{r.streaming[l][h]:.2f} [{r.streaming_ci[l][h][0]:.2f}, {r.streaming_ci[l][h][1]:.2f}]"
        )
        self.panes["attention"].set(self._attention())


class SparsityDashboard(_Dashboard):
    """Per-layer sparsity at a chosen training checkpoint (slider), and its emergence over training."""

    def __init__(self, results: SparsityRunResult):
        self.results = results
        over = results.over_training
        steps = over.steps if over is not None else []
        self.slider = W.SelectionSlider(
            options=steps or [0], value=(steps or [0])[-1], description="step", disabled=not steps
        )
        self.panes = {
            "layer": FigurePane(self._layer_fig()),
            "over": FigurePane(pf.sparsity_over_training(over)),
            "neurons": FigurePane(pf.neuron_frequencies(results.final.neuron_freq)),
        }
        self.slider.observe(lambda _: self.update(), names="value")
        self.update()
        self.widget = W.VBox(
            [self.slider, W.HBox([self.panes["layer"].widget, self.panes["over"].widget]), self.panes["neurons"].widget]
        )

    def _layer_fig(self) -> go.Figure:
        over = self.results.over_training
        if over is None or not over.steps:
            final = self.results.final
            return pf.sparsity_by_layer(final.active_frac, final.active_frac_std, final.threshold)
        i = over.steps.index(self.slider.value)
        return pf.sparsity_by_layer(
            over.active_frac[i], over.active_frac_std[i], over.threshold, title=f"Step {self.slider.value}"
        )

    def update(self) -> None:
        self.panes["layer"].set(self._layer_fig())
        over = self.results.over_training
        if over is not None and over.steps:
            self.panes["over"].set(pf.sparsity_over_training(over, over.steps.index(self.slider.value)))


class ArrowDashboard(_Dashboard):
    """Per dataset: the verdict, the gap over seeds with its seed-level interval beside the
    same-direction null, the window-level interval (named so), the gap over training and every
    seed's loss curves."""

    def __init__(self, results: ArrowRunResult):
        self.results, self.datasets = results, results.datasets
        names = list(self.datasets)
        self.dataset = W.Dropdown(options=names or ["(none)"], description="data", disabled=not names)
        self.table = W.HTML()
        self.panes = {
            "gaps": FigurePane(pf.arrow_gaps(self.datasets)),
            "curves": FigurePane(self._curves()),
            "over_training": FigurePane(self._over_training()),
        }
        self.dataset.observe(lambda _: self.update(), names="value")
        self.update()
        self.widget = W.VBox(
            [
                self.panes["gaps"].widget,
                self.dataset,
                self.table,
                W.HBox([self.panes["over_training"].widget, self.panes["curves"].widget]),
            ]
        )

    def _curves(self) -> go.Figure:
        res = self.datasets.get(self.dataset.value)
        if res is None or not res.curves:
            return sf.empty_figure("no curves")
        return pf.arrow_seed_curves(res.curves, f"{self.dataset.value}: validation loss")

    def _over_training(self) -> go.Figure:
        res = self.datasets.get(self.dataset.value)
        if res is None:
            return sf.empty_figure("no data set")
        return pf.arrow_gap_over_training(res.over_training, f"{self.dataset.value}: gap over training")

    def update(self) -> None:
        self.panes["curves"].set(self._curves())
        self.panes["over_training"].set(self._over_training())
        res = self.datasets.get(self.dataset.value)
        self.table.value = pf.arrow_summary_html(self.dataset.value, res) if res else ""


def load_demo_dashboards(root) -> dict:
    """The dashboards of a demo folder (see workbench.demo), one loop over the demo's recipes, each
    run's dashboards from its typed results: the feature explorer (decoding with the SAE run's own
    tokenizer), sparsity, the head-role map and the head explorer when the heads run has its data
    (labels decoded by that run's tokenizer), and the arrow of time."""
    from pathlib import Path

    from ..demo import demo_recipes

    root = Path(root)
    builders = {"sae": _sae_dashboards, "sparsity": _sparsity_dashboards, "heads": _heads_dashboards}
    builders["arrow"] = _arrow_dashboards
    out: dict = {}
    for recipe in demo_recipes(root=root):
        out.update(builders[recipe.kind](root / recipe.folder))
    return out


def _sae_dashboards(run_dir) -> dict:
    from ..hub import model_for_run
    from ..runs import FEATURES_FILE
    from ..sae.io import load_sae
    from ..sae.saebench_json import read_run_evals

    model, tok = model_for_run(run_dir)
    table = FeatureTable.load(run_dir / FEATURES_FILE)
    return {"features": FeatureExplorer(table, tok, model=model, sae=load_sae(run_dir), evals=read_run_evals(run_dir))}


def _heads_dashboards(run_dir) -> dict:
    from ..hub import tokenizer_for_run
    from ..probes.heads_data import with_patterns
    from ..results import read_results

    heads = read_results(run_dir)
    out = {"heads": HeadRoleMap(heads)}
    if heads.explorer is not None:
        out["explorer"] = HeadExplorer(
            with_patterns(heads.explorer, run_dir),  # a widget draws any head at once: all in memory
            agreement=heads.agreement,
            over=heads.over_training,
            tradeoff=heads.kv_tradeoff,
            tokenizer=tokenizer_for_run(run_dir),
        )
    return out


def _sparsity_dashboards(run_dir) -> dict:
    from ..results import read_results

    return {"sparsity": SparsityDashboard(read_results(run_dir))}


def _arrow_dashboards(run_dir) -> dict:
    from ..results import read_results

    return {"arrow": ArrowDashboard(read_results(run_dir))}


# last: widgets.heads builds on FigurePane and _Dashboard above

__all__ = [
    "FigurePane",
    "FeatureExplorer",
    "HeadRoleMap",
    "HeadExplorer",
    "GraphExplorer",
    "SparsityDashboard",
    "ArrowDashboard",
    "load_demo_dashboards",
]
