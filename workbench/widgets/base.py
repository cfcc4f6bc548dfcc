"""What every dashboard is made of: a plotly figure as a widget, and the dashboard base class.
A leaf of workbench.widgets, so that the package and its dashboard modules (widgets.heads) both
import it and neither imports the other back."""

from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go


class FigurePane:
    """A plotly figure as a widget: a FigureWidget where anywidget is installed, else an Output."""

    def __init__(self, fig: go.Figure):
        self.figure = fig
        try:
            self.widget = go.FigureWidget(fig)
        except ImportError:
            self.widget = W.Output()
            self._render()

    def _render(self) -> None:
        self.widget.clear_output(wait=True)
        with self.widget:
            self.figure.show()

    def set(self, fig: go.Figure) -> None:
        self.figure = fig
        if isinstance(self.widget, go.FigureWidget):
            with self.widget.batch_update():
                self.widget.data = []
                self.widget.add_traces(list(fig.data))
                self.widget.layout = fig.layout
        else:
            self._render()


class _Dashboard:
    panes: dict[str, FigurePane]

    @property
    def figures(self) -> dict[str, go.Figure]:
        return {k: p.figure for k, p in self.panes.items()}

    def _ipython_display_(self):  # pragma: no cover - notebook display
        from IPython.display import display

        display(self.widget)
