"""GraphExplorer: an attribution graph (a graph run's result, or its GraphView) with the viewer's
prune sliders, drawn by the same builder (`figures.graph.graph_figure`) and filtered by the same
rule (`figures.graph.kept`), and a node chooser listing the chosen node's strongest stored inputs."""

from __future__ import annotations

import html

import ipywidgets as W

from ..figures.graph import graph_figure, kept
from .base import FigurePane, _Dashboard


class GraphExplorer(_Dashboard):
    """`graph`: a GraphRunResult or a graphs.view.GraphView. Moving a slider redraws the figure with
    the nodes whose cum < the node threshold and the edges whose cum < the edge threshold."""

    def __init__(self, graph, node_threshold: float = 0.8, edge_threshold: float = 0.98):
        self.view = getattr(graph, "view", graph)
        if not hasattr(self.view, "edge_cum"):
            raise TypeError(f"graph: expected a GraphRunResult or a GraphView, got {type(graph).__name__}")
        v = self.view
        self.node_t = W.FloatSlider(value=node_threshold, min=0.3, max=1.0, step=0.01, description="nodes")
        self.edge_t = W.FloatSlider(value=edge_threshold, min=0.5, max=1.0, step=0.005, description="edges")
        self.node = W.Dropdown(options=[(label, i) for i, label in enumerate(v.label)], description="node")
        self.shown, self.inputs = W.HTML(), W.HTML()
        self.panes = {"graph": FigurePane(graph_figure(v, node_threshold, edge_threshold))}
        for w in (self.node_t, self.edge_t):
            w.observe(lambda _: self.update(), names="value")
        self.node.observe(lambda _: self.show_inputs(), names="value")
        sliders = W.HBox([self.node_t, self.edge_t, self.shown])
        self.widget = W.VBox([sliders, self.panes["graph"].widget, self.node, self.inputs])
        self.update()

    def update(self) -> None:
        tn, te = float(self.node_t.value), float(self.edge_t.value)
        nodes, edges = kept(self.view, tn, te)
        self.panes["graph"].set(graph_figure(self.view, tn, te))
        self.shown.value = f"{len(nodes)} nodes, {len(edges)} edges shown"
        self.show_inputs()

    def show_inputs(self, top: int = 12) -> None:
        """The chosen node's strongest inputs among the edges shown."""
        v, i = self.view, int(self.node.value)
        _, edges = kept(v, float(self.node_t.value), float(self.edge_t.value))
        ins = sorted((e for e in edges if v.dst[e] == i), key=lambda e: -abs(v.weight[e]))[:top]
        rows = "".join(f"<li>{html.escape(v.label[v.src[e]])} → {v.weight[e]:.3g}</li>" for e in ins)
        self.inputs.value = f"<ul>{rows}</ul>" if rows else "<p>no inputs shown at these thresholds</p>"
