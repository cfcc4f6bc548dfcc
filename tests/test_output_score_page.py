"""The SAE page's feature table in headless Chromium: the output-score column read from a run's
output_scores.safetensors through the store, sorted by it on open (the planted top latent first),
the other way round on a second click, by density on a click of its head; without the file, no
column and the table sorted by density."""

import pytest
import torch

from tests.conftest import free_port, serving
from workbench.runs import OUTPUT_SCORES_FILE, RunDir
from workbench.steer.directions import OutputScores, save_output_scores
from workbench.viewer import pages, sae_page
from workbench.viewer.store import RunStore

SCORES = [0.5, -1.0, 3.25, 0.0, 1.5]
DENSITY = [0.3, 0.9, 0.01, 0.2, 0.05]


@pytest.fixture()
def root(tmp_path):
    root = tmp_path / "runs"
    for name in ("scored", "old"):
        RunDir(root / name).write_config({}, kind="sae")
    s = OutputScores(torch.tensor(SCORES), torch.zeros(5, 1, dtype=torch.long), {}, 2.0)
    save_output_scores(root / "scored" / OUTPUT_SCORES_FILE, s)
    return root


def _app(root):
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    store = RunStore(root)

    async def page(request):
        scores = store.output_scores(request.path_params["name"])
        body = sae_page.feature_table_section(DENSITY, None if scores is None else scores.score.tolist())
        return HTMLResponse(pages.page("table", body))

    return Starlette(
        routes=[Route("/run/{name}", page), Route("/favicon.ico", lambda request: Response(status_code=204))]
    )


def _column(page, i):
    return page.eval_on_selector_all("#feature-table tbody tr", f"rs => rs.map(r => r.children[{i}].textContent)")


def test_the_feature_table_sorts_by_the_stored_output_score(root):
    from tests.test_viewer import _chromium, _open

    _chromium()
    from playwright.sync_api import sync_playwright

    with serving(_app(root), free_port()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox", "--disable-gpu"])
        page, response, errors = _open(browser, f"{url}/run/scored")
        assert response.status == 200
        assert page.inner_text("#feature-table thead").split() == ["latent", "density", "output", "score"]
        assert _column(page, 0) == ["2", "4", "0", "3", "1"]  # by score, highest first
        assert _column(page, 2) == ["3.250", "1.500", "0.500", "0.000", "-1.000"]
        page.click('#feature-table th[data-key="score"]')
        assert _column(page, 0) == ["1", "3", "0", "4", "2"]
        page.click('#feature-table th[data-key="density"]')
        assert _column(page, 0) == ["1", "0", "3", "4", "2"]
        page, response, errors2 = _open(browser, f"{url}/run/old")
        assert page.inner_text("#feature-table thead").split() == ["latent", "density"]
        assert _column(page, 0) == ["1", "0", "3", "4", "2"]
        # as in test_health_pane: a 404 of this bare app (no viewer routes) is not the page's error
        assert [e for e in errors + errors2 if "Failed to load resource" not in e] == []
        browser.close()
