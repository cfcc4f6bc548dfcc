"""The graph page in a real headless Chromium, offline: every request the page makes is routed and
its host recorded (anything beyond 127.0.0.1 is aborted and fails the test); nodes are drawn at
their position and layer; clicking a feature shows its transcoder run's feature card link, clicking
a head loading opens the head explorer at that head; the prune slider redraws exactly the nodes
figures.graph.kept keeps."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import free_port, serving
from tests.test_viewer import browser  # noqa: F401 (the module's Chromium fixture)

# every drawn node point's centre on the screen (its SVG element) and node index: [x, y, node]
NODE_PIXELS = """() => {
  const gd = document.getElementById('graph'), out = [];
  gd.querySelectorAll('.scatterlayer .trace').forEach((el) => {
    const t = gd.data[el.__data__[0].trace.index];
    if (t.meta.role !== 'nodes') return;
    el.querySelectorAll('.point').forEach((p, i) => {
      const r = p.getBoundingClientRect();
      out.push([r.left + r.width / 2, r.top + r.height / 2, t.customdata[i][1]]);
    });
  });
  return out;
}"""


@pytest.fixture(scope="module")
def graph_server(tmp_path_factory):
    from workbench.graphs.transcoder import random_transcoder, save_transcoders
    from workbench.hub import load_model
    from workbench.kinds import graph as graph_kind
    from workbench.kinds.registry import ModelInput, get_kind
    from workbench.kinds.runner import build_run
    from workbench.token_data import default_data
    from workbench.viewer.server import create_app

    root = tmp_path_factory.mktemp("runs")
    save_transcoders(root / "tc", {l: random_transcoder(128, 256, 8, seed=l) for l in range(2)})
    cfg = graph_kind.GraphRunConfig(
        prompt="def f(x):\n    return",
        transcoders=str(root / "tc"),
        transcoder_runs="tc-l0,tc-l1",
        heads_run="probe-heads",
    )
    model = ModelInput(load_model("workbench-tiny")[0], "workbench-tiny")
    res = build_run(get_kind("graph"), cfg, model, default_data(), root / "g", progress=False)
    with serving(create_app(root), free_port(), log_level="warning") as url:
        yield url, res


def _open_offline(browser, url):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    hosts, errors = [], []

    def route(r):
        host = urlparse(r.request.url).hostname
        hosts.append(host)
        r.continue_() if host == "127.0.0.1" else r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#graph .scatterlayer .point').length > 0")
    return page, hosts, errors


def _pixels(page) -> list[tuple[float, float, int]]:
    return [(x, y, int(i)) for x, y, i in page.evaluate(NODE_PIXELS)]


def _loneliest(pixels, want) -> tuple[float, float, int]:
    """The node among `want` farthest from every other drawn node (a click lands on it)."""
    dist = lambda a, b: (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2  # noqa: E731
    return max((p for p in pixels if p[2] in want), key=lambda p: min(dist(p, q) for q in pixels if q is not p))


def _settled_pixels(page, tries: int = 20) -> list[tuple[float, float, int]]:
    last = _pixels(page)
    for _ in range(tries):
        page.wait_for_timeout(100)
        now = _pixels(page)
        if now == last:
            return now
        last = now
    return last


def _click_until(page, want: set[int], label: str, attempts: int = 4) -> None:
    """Click nodes of `want` (loneliest first) until the node panel names a `label` node."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    pixels = _settled_pixels(page)
    for _ in range(attempts):
        x, y, i = _loneliest(pixels, want)
        page.mouse.click(x, y)
        try:
            page.wait_for_function(
                f"document.querySelector('#node-panel b').textContent.startsWith({label!r})", timeout=5000
            )
            return
        except PlaywrightTimeout:  # missed (another node on top): the next loneliest
            want = want - {i}
    raise AssertionError(f"no click on a {label} node opened its panel")


def test_the_page_draws_every_node_at_its_layer_and_position_from_loopback_only(graph_server, browser):  # noqa: F811
    url, res = graph_server
    page, hosts, errors = _open_offline(browser, url + "/run/g")
    v = res.view
    drawn = page.evaluate(
        "() => document.getElementById('graph').data.filter((t) => t.meta.role === 'nodes')"
        ".flatMap((t) => t.x.map((x, i) => [x, t.y[i], t.customdata[i][1]]))"
    )
    assert len(drawn) == page.locator("#graph .scatterlayer .point").count() > 0
    for x, y, i in drawn:
        assert y == v.layer[i] + 1 and abs(x - v.pos[i]) <= 0.4 + 1e-9
    assert {"token", "feature", "logit"} <= {v.kind[i] for *_, i in drawn}
    assert hosts and set(hosts) == {"127.0.0.1"} and errors == []
    page.close()


def test_clicking_a_feature_shows_its_card_link_and_a_head_loading_opens_the_explorer(graph_server, browser):  # noqa: F811
    url, res = graph_server
    v = res.view
    page, hosts, errors = _open_offline(browser, url + "/run/g")
    x, y, i = _loneliest(_pixels(page), {j for j, k in enumerate(v.kind) if k == "feature"})
    page.mouse.click(x, y)
    page.wait_for_selector("#node-panel a")
    assert page.inner_text("#node-panel b") == v.label[i]
    card = page.get_attribute("#node-panel a", "href")
    assert card == f"/run/tc-l{v.layer[i]}?feature={v.index[i]}"
    # the logits sit a few pixels apart at the last position: any of them will do. The panel the
    # first click opened can still move the plot, so read the pixels once they stop moving, and try
    # the logits from the loneliest down
    _click_until(page, {j for j, k in enumerate(v.kind) if k == "logit"}, "logit")
    head = page.locator("#node-panel a[href*='layer=']").first
    name = head.inner_text()  # "L<l>H<h> <loading>"
    head.click()
    page.wait_for_url("**/run/probe-heads?*")
    q = parse_qs(urlparse(page.url).query)
    assert name.startswith(f"L{q['layer'][0]}H{q['head'][0]} ")
    assert set(hosts) == {"127.0.0.1"} and errors == []
    page.close()


def test_the_prune_slider_redraws_the_nodes_the_figure_keeps(graph_server, browser):  # noqa: F811
    from workbench.figures.graph import kept

    url, res = graph_server
    page, hosts, errors = _open_offline(browser, url + "/run/g")
    counts = {}
    for t in (0.9, 0.5, 0.3):
        page.eval_on_selector("#node-t", f"(e) => {{ e.value = '{t}'; e.dispatchEvent(new Event('input')); }}")
        te = float(page.input_value("#edge-t"))
        nodes, edges = kept(res.view, float(page.input_value("#node-t")), te)
        page.wait_for_function(f"document.querySelectorAll('#graph .scatterlayer .point').length === {len(nodes)}")
        assert page.inner_text("#shown") == f"{len(nodes)} nodes, {len(edges)} edges shown"
        counts[t] = len(nodes)
    assert counts[0.9] > counts[0.3]
    assert set(hosts) == {"127.0.0.1"} and errors == []
    page.close()
