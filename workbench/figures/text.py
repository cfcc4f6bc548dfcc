"""Strings from disk inside plotly figures.

plotly.js renders a small HTML subset in trace names, text, tick labels, titles and annotations
(`<a href>`, `<b>`, `<br>`, ...): a run name or method name holding `<a href="https://...">` would
become a live link in the figure. Every string a builder takes from a run (names, tokens, labels,
verdicts) passes through `plain` before plotly sees it; the builders' own markup (`<br>` between
lines they write) is added after.
"""

from __future__ import annotations

import html


def plain(value: object) -> str:
    """`value` as text that plotly shows literally: &, < and > as entities (plotly decodes them
    for display, so the reader sees the characters, never a tag)."""
    return html.escape(str(value), quote=False)
