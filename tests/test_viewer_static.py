"""The viewer's static assets and how a figure page draws (issue 27, item 7): plotly.js is served
gzip-compressed to a browser that accepts it (the same bytes once decoded) and as-is otherwise, both
cached as immutable; a figure's JSON is escaped for the <script> it sits in; and in Chromium the first
figure is on screen (a frame presented) before the next is drawn, in document order, with every figure
drawn before the load event and a failing script reported without stopping the ones after it."""

import gzip
import json

import plotly.graph_objects as go
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tests.conftest import free_port, serving
from workbench.viewer import pages
from workbench.viewer.server import PLOTLY_JS, create_app


def test_plotly_js_is_gzipped_when_accepted_and_the_same_bytes(tmp_path):
    client = TestClient(create_app(tmp_path), base_url="http://127.0.0.1")
    raw = PLOTLY_JS.read_bytes()
    r = client.get(pages.PLOTLY_URL, headers={"Accept-Encoding": "br, gzip;q=0.8"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert int(r.headers["content-length"]) < 0.4 * len(raw)  # 4.8 MB -> 1.5 MB
    assert r.content == raw  # httpx decodes it
    assert "immutable" in r.headers["cache-control"] and r.headers["vary"] == "Accept-Encoding"
    with client.stream("GET", pages.PLOTLY_URL, headers={"Accept-Encoding": "gzip"}) as again:
        assert gzip.decompress(b"".join(again.iter_raw())) == raw  # the bytes on the wire are gzip
    for refused in ("identity", "gzip;q=0, identity"):
        plain = client.get(pages.PLOTLY_URL, headers={"Accept-Encoding": refused})
        assert "content-encoding" not in plain.headers and plain.content == raw, refused
    assert "immutable" in plain.headers["cache-control"]


def test_the_draw_script_is_served_immutable_and_only_figure_pages_carry_the_scheduler(tmp_path):
    client = TestClient(create_app(tmp_path), base_url="http://127.0.0.1")
    r = client.get(pages.DRAW_URL)
    assert r.status_code == 200 and r.text == pages.DRAW_RESUME_JS and "immutable" in r.headers["cache-control"]
    assert "wbDraw" not in client.get("/").text
    fig = pages.figure_div(go.Figure(go.Scatter(x=[0, 1], y=[1, 2])), "a")
    page = pages.page("t", fig)
    head = page.split("</head>")[0]
    assert "window.wbDraw = " in head and head.index("window.wbDraw = ") < head.index(pages.PLOTLY_URL)


def test_figure_json_cannot_close_its_script_and_decodes_to_the_same_strings():
    name = "</script><img src=x onerror=alert(1)> & \u2028"
    div = pages.figure_div(go.Figure(go.Bar(x=[name], y=[1], name=name)), "a")
    assert "</script><img" not in div and "<img" not in div and "\u2028" not in div
    payload = div.split("const f = ", 1)[1].split(";\nPlotly.newPlot", 1)[0]
    fig = json.loads(payload)
    assert fig["data"][0]["name"] == name and fig["data"][0]["x"] == [name]


# Runs before the page's scripts: a log of each figure as plotly marks it drawn, of each frame about
# to be presented, and of the load event with how many figures were drawn by then.
LOG = """
window.__log = []; const seen = new Set();
new MutationObserver(() => {
  for (const d of document.querySelectorAll(".js-plotly-plot"))
    if (!seen.has(d.id)) { seen.add(d.id); __log.push("draw " + d.id); }
}).observe(document, {childList: true, subtree: true, attributes: true, attributeFilter: ["class"]});
(function tick() { requestAnimationFrame(() => { __log.push("frame"); tick(); }); })();
addEventListener("load", () => __log.push("load " + document.querySelectorAll(".js-plotly-plot").length));
"""


def test_the_first_figure_is_shown_before_the_others_are_drawn_and_all_before_load(tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.test_viewer import _chromium

    def fig(i):
        return go.Figure(go.Scatter(x=list(range(50)), y=[(i * j) % 7 for j in range(50)]))

    body = (
        pages.figure_div(fig(1), "a")
        + pages.on_ready('throw new Error("boom in a figure script");')
        + pages.figure_div(fig(2), "b")
        + '<div style="height: 3000px"></div>'
        + pages.figure_div(fig(3), "c")
    )

    async def test_page(request):
        return HTMLResponse(pages.page("figures", body))

    app = Starlette(routes=[Route("/figures", test_page), Mount("/", app=create_app(tmp_path))])
    port = free_port()
    exe = _chromium()
    with serving(app, port) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.add_init_script(LOG)
        page.goto(f"{url}/figures")  # returns at the load event
        log = page.evaluate("__log.slice()")
        browser.close()
    events = log
    draws = [e for e in events if e.startswith("draw")]
    assert draws == ["draw a", "draw b", "draw c"], log
    a, b = events.index("draw a"), events.index("draw b")
    assert "frame" in events[a + 1 : b], log  # a frame presented figure a before b was drawn
    loads = [e for e in events if e.startswith("load")]
    assert loads == ["load 3"] and events.index("load 3") > events.index("draw c"), log
    assert any("boom in a figure script" in e for e in errors), errors
