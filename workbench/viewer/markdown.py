"""The Markdown subset that benchmarks/RESULTS.md is written in, as HTML for the benchmarks page.

Blocks: `#` headings, pipe tables (a header row, a `|---|` rule, rows), `-`/`*` and `1.` lists
(indented continuation lines join their item), fenced code blocks and paragraphs. Inline:
`code`, **bold**, *italic* and [links](url) whose target is http(s), a fragment or a relative path.
Every piece of text is escaped before any tag is added, so the file can hold no markup of its own
(a `<script>` in RESULTS.md is shown as text). Anything else reads as a paragraph, never lost.
"""

from __future__ import annotations

import html
import re

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_HEADING = re.compile(r"(#{1,6})\s+(.*)")
_BULLET = re.compile(r"\s*[-*]\s+(.*)")
_NUMBERED = re.compile(r"\s*\d+[.)]\s+(.*)")
_RULE = re.compile(r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*")


def _safe_url(url: str) -> str | None:
    """`url` when it cannot run script (http(s), a fragment, a relative path), else None."""
    low = url.strip().lower()
    if low.startswith(("http://", "https://", "#", "/")) or not re.match(r"[a-z][a-z0-9+.-]*:", low):
        return url
    return None


def inline(text: str) -> str:
    """One line of Markdown text as HTML: escaped first, then code spans, bold, italic and links."""
    codes: list[str] = []

    def stash(m: re.Match) -> str:  # code spans keep their text literally: no bold inside them
        codes.append(f"<code>{m.group(1)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    out = _CODE.sub(stash, html.escape(text, quote=True))
    out = _BOLD.sub(r"<b>\1</b>", out)
    out = _ITALIC.sub(r"<i>\1</i>", out)

    def link(m: re.Match) -> str:
        url = _safe_url(html.unescape(m.group(2)))
        return f'<a href="{html.escape(url, quote=True)}">{m.group(1)}</a>' if url else m.group(0)

    out = _LINK.sub(link, out)
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], out)


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") else row
    return [c.strip() for c in row.split("|")]


def _table(lines: list[str]) -> str:
    head, body = _cells(lines[0]), [_cells(r) for r in lines[2:]]
    th = "".join(f"<th>{inline(c)}</th>" for c in head)
    rows = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{rows}</tbody></table>"


def to_html(text: str) -> str:
    """The whole document as HTML (wrapped in `<div class="md">`)."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag = ""

    def flush() -> None:
        nonlocal list_tag
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append(f"<{list_tag}>" + "".join(f"<li>{inline(i)}</li>" for i in items) + f"</{list_tag}>")
            items.clear()
            list_tag = ""

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1 : j]))}</code></pre>")
            i = j + 1
            continue
        if not stripped:
            flush()
        elif m := _HEADING.fullmatch(stripped):
            flush()
            level = len(m.group(1))
            out.append(f"<h{level + 1}>{inline(m.group(2))}</h{level + 1}>")  # the page's own title is the h1
        elif stripped.startswith("|") and i + 1 < len(lines) and _RULE.fullmatch(lines[i + 1].strip()):
            flush()
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
            continue
        elif (m := _BULLET.fullmatch(line)) or (n := _NUMBERED.fullmatch(line)):
            tag = "ul" if m else "ol"
            if para or (items and tag != list_tag):
                flush()
            list_tag = tag
            items.append((m or n).group(1))
        elif items and line[:1].isspace():
            items[-1] += " " + stripped  # an indented continuation of the last item
        else:
            if items:
                flush()
            para.append(stripped)
        i += 1
    flush()
    return '<div class="md">' + "\n".join(out) + "</div>"
