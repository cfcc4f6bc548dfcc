"""HeadExplorer: every head over two chosen metrics; click one (or pick it in the dropdowns) to
see its attention pattern on a chosen context, its scores with intervals and its gate's curve.
Optional panes: the rankings' agreement, the heads over training and the KV-cache trade-off.
Built from the same figure builders as the viewer (`workbench.figures.heads`)."""

from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go

from ..figures import heads as hf
from ..figures.sae import empty_figure
from ..probes.heads_data import Agreement, ExplorerData, HeadsOverTraining
from ..probes.kv_data import TradeoffResult
from .base import FigurePane, _Dashboard


def _as_dict(x):
    """A result as the JSON layout the figures read (what a results.json section holds)."""
    return x.to_dict() if hasattr(x, "to_dict") else x


class HeadExplorer(_Dashboard):
    """`data`: `probes.head_explorer.explorer_data(...)` (an `ExplorerData`, or its to_dict());
    `agreement`, `over` and `tradeoff`: an `Agreement`, `HeadsOverTraining` and `TradeoffResult`
    (as a heads run's results hold them; their dicts are taken too); `tokenizer` relabels the
    patterns' tokens (else the stored strings are shown)."""

    def __init__(
        self,
        data: ExplorerData | dict,
        agreement: Agreement | dict | None = None,
        over: HeadsOverTraining | dict | None = None,
        tradeoff: TradeoffResult | dict | None = None,
        tokenizer=None,
        x: str = "retrieval score",
        y: str = "streaming mass",
    ):
        data = data if isinstance(data, ExplorerData) else ExplorerData.from_dict(data)
        self.data, self.tokenizer = data, tokenizer
        self.agreement, self.over, self.tradeoff = _as_dict(agreement), _as_dict(over), _as_dict(tradeoff)
        names = list(data.metrics)
        x = x if x in names else names[0]
        y = y if y in names else names[min(1, len(names) - 1)]
        L, H = data.n_layers, data.n_heads
        self.x = W.Dropdown(options=names, value=x, description="x")
        self.y = W.Dropdown(options=names, value=y, description="y")
        self.layer = W.Dropdown(options=list(range(L)), value=L - 1, description="layer")
        self.head = W.Dropdown(options=list(range(H)), value=0, description="head")
        ctx = list(data.contexts) or ["(none)"]
        self.context = W.Dropdown(options=ctx, value=ctx[0], description="context", disabled=not data.contexts)
        self.panes = {"scatter": FigurePane(self._scatter()), "detail": FigurePane(self._detail())}
        self._bind_clicks()
        children = [
            W.HBox([self.x, self.y]),
            self.panes["scatter"].widget,
            W.HBox([self.layer, self.head, self.context]),
            self.panes["detail"].widget,
        ]
        if self.agreement is not None:
            self.panes["agreement"] = FigurePane(hf.agreement_heatmap(self.agreement))
            self.agreement_table = W.HTML(hf.agreement_table_html(self.agreement))
            children += [self.panes["agreement"].widget, self.agreement_table]
        if self.over is not None:
            self.over_metric = W.Dropdown(options=list(hf.OVER_METRICS), value="induction", description="over training")
            self.panes["over"] = FigurePane(hf.heads_over_training(self.over, "induction"))
            self.over_metric.observe(
                lambda ch: self.panes["over"].set(hf.heads_over_training(self.over, ch["new"])), names="value"
            )
            children += [self.over_metric, self.panes["over"].widget]
        if self.tradeoff is not None:
            from ..figures.kv_tradeoff import tradeoff_figure

            self.panes["tradeoff"] = FigurePane(tradeoff_figure(self.tradeoff))
            children.append(self.panes["tradeoff"].widget)
        for w in (self.x, self.y):
            w.observe(lambda _: self.redraw_scatter(), names="value")
        for w in (self.layer, self.head, self.context):
            w.observe(lambda _: self.update(), names="value")
        self.widget = W.VBox(children)

    @property
    def selected(self) -> tuple[int, int]:
        return self.layer.value, self.head.value

    def _scatter(self) -> go.Figure:
        return hf.head_scatter(self.data, self.x.value, self.y.value, selected=self.selected)

    def _detail(self) -> go.Figure:
        if not self.data.metrics:
            return empty_figure("no heads measured")
        ctx = self.context.value if self.data.contexts else None
        return hf.head_detail(self.data, *self.selected, context=ctx, tokenizer=self.tokenizer)

    def _bind_clicks(self) -> None:
        """FigurePane.set replaces the traces, so the handler is attached again after each redraw."""
        w = self.panes["scatter"].widget
        if isinstance(w, go.FigureWidget):
            for trace in w.data:
                trace.on_click(self.on_click)

    def on_click(self, trace, points, state=None) -> None:
        """Plotly's click callback: select the clicked head from the point's customdata."""
        if not points.point_inds:
            return
        layer, head = trace.customdata[points.point_inds[0]]
        self.select(int(layer), int(head))

    def select(self, layer: int, head: int) -> None:
        """Show head (layer, head); the dropdowns follow without redrawing twice."""
        self._batch = True
        try:
            self.layer.value, self.head.value = layer, head
        finally:
            self._batch = False
        self.update()

    _batch = False  # set while select() moves both dropdowns

    def redraw_scatter(self) -> None:
        self.panes["scatter"].set(self._scatter())
        self._bind_clicks()

    def update(self) -> None:
        if self._batch:
            return
        self.panes["detail"].set(self._detail())
        self.redraw_scatter()
