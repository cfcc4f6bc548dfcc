"""The viewer in a real headless Chromium (Debian's, driven by Playwright): every page loads
without console errors, the feature browser updates, screenshots are kept, traversal is refused,
a broken run shows its error while the rest keeps working."""

import http.client
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import free_port, serving
from workbench.viewer.server import create_app

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _chromium() -> str:
    path = os.environ.get("WORKBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (./install.sh --test installs Debian's chromium)")
        pytest.skip("Chromium is not installed")
    return path


@pytest.fixture(scope="module")
def server(tiny_demo):
    root = tiny_demo
    broken = root / "broken-run"
    broken.mkdir()
    (broken / "config.json").write_text('{"kind": "sae", "config": {}}')
    (broken / "results.json").write_text('{"fvu": 0.1, "l0"')  # half-written
    port = free_port()
    with serving(create_app(root), port, log_level="warning") as url:
        yield url, port


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=exe,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url)
    page.wait_for_load_state("networkidle")
    return page, response, errors


@pytest.mark.parametrize(
    "path,name",
    [
        ("/", "overview"),
        ("/run/sae-topk", "sae"),
        ("/run/probe-sparsity", "sparsity"),
        ("/run/probe-heads", "heads"),
        ("/run/probe-arrow", "arrow"),
        ("/benchmarks", "benchmarks"),
    ],
)
def test_every_page_loads_without_console_errors(server, browser, path, name):
    base, _ = server
    page, response, errors = _open(browser, base + path)
    assert response.status == 200
    assert errors == []
    if path.startswith("/run/"):
        assert page.locator(".js-plotly-plot").count() >= 1  # plotly.js (served locally) drew figures
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"viewer-{name}.png"), full_page=True)
    page.close()


def test_choosing_another_feature_updates_contexts(server, browser):
    base, _ = server
    page, _, errors = _open(browser, base + "/run/sae-topk")
    page.wait_for_function("document.getElementById('contexts').dataset.feature !== undefined")
    first = page.eval_on_selector("#contexts", "e => e.dataset.feature")
    before = page.inner_html("#contexts")
    page.fill("#feature", str((int(first) + 1) % 256))
    page.click("#go")
    page.wait_for_function(f"document.getElementById('contexts').dataset.feature !== '{first}'")
    assert page.inner_html("#contexts") != before
    page.click("#prompt-go")
    page.wait_for_selector("#prompt-out .tok")
    assert errors == []
    page.close()


def test_feature_browser_names_the_valid_range(server, browser):
    """Typing -3 (or 1.5) says which features exist instead of "HTTP 404"; the server says the same
    to a request that bypasses the page."""
    base, _ = server
    page, _, errors = _open(browser, base + "/run/sae-topk")
    page.wait_for_function("document.getElementById('contexts').dataset.feature !== undefined")
    for typed in ("-3", "1.5", "256"):
        page.fill("#feature", typed)
        page.click("#go")
        page.wait_for_selector("#contexts .error")
        assert page.inner_text("#contexts .error").startswith("feature must be an integer in [0, 256)"), typed
    assert errors == []  # said by the page: no request was refused
    said = page.evaluate("fetch('/api/run/sae-topk/feature/-3').then(r => r.json()).then(d => d.error)")
    assert said == "feature must be an integer in [0, 256), got -3: there is no feature -3"
    page.close()


def test_pages_without_a_figure_never_load_plotly(server, browser):
    base, _ = server
    for path, wanted in (("/", False), ("/benchmarks", False), ("/run/probe-sparsity", True)):
        page = browser.new_page()
        asked = []
        page.on("request", lambda r: asked.append(r.url) if "plotly" in r.url else None)
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        assert bool(asked) == wanted, path
        if wanted:  # drawn after the deferred script ran
            assert page.locator(".js-plotly-plot").count() >= 4
        page.close()


def test_traversal_is_refused(server, browser, tiny_demo):
    base, port = server
    for raw in [
        "/files/sae-topk/../../../etc/passwd",
        "/files/sae-topk/..%2F..%2F..%2Fetc%2Fpasswd",
        "/files/_models/forward/config.json",
        "/run/..%2F_models",
    ]:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", raw)
        assert conn.getresponse().status == 404, raw
        conn.close()
    page, response, _ = _open(browser, base + "/files/sae-topk/sae_config.json")
    assert response.status == 200  # a run's own files are served
    page.close()
    # ...but a page that a run folder holds cannot run script on the viewer's origin
    (tiny_demo / "sae-topk" / "note.html").write_text("<script>document.title='ran'</script>")
    page, response, _ = _open(browser, base + "/files/sae-topk/note.html")
    assert response.headers["content-security-policy"] == "sandbox" and page.title() != "ran"
    page.close()
    (tiny_demo / "sae-topk" / "note.html").unlink()


def test_broken_run_shows_error_and_rest_works(server, browser):
    base, _ = server
    page, response, _ = _open(browser, base + "/run/broken-run")
    assert response.status == 500
    assert "results.json is not valid JSON" in page.inner_text("#run-error")
    page.close()
    page, response, errors = _open(browser, base + "/")
    assert response.status == 200 and "broken-run" in page.inner_text("body") and errors == []
    assert page.locator("a[href='/run/sae-topk']").count() == 1
    page.close()
