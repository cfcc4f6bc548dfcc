"""The feature page's steer controls and the training-health link, in a real headless Chromium on
the tiny demo: a steer at strength 0 is the clean model, one at a large strength moves the next-token
distribution (KL > 0) and is drawn; the SAE page links to its live health pane."""

import pytest

from tests.conftest import free_port, serving
from tests.test_viewer import _open, browser  # noqa: F401 (the module's Chromium fixture)
from workbench.viewer.server import create_app


@pytest.fixture(scope="module")
def server(tiny_demo):
    port = free_port()
    with serving(create_app(tiny_demo), port, log_level="warning") as url:
        yield url


def _steer(page, strength: float) -> dict:
    page.eval_on_selector(
        "#steer-strength", f"(e) => {{ e.value = '{strength}'; e.dispatchEvent(new Event('input')); }}"
    )
    with page.expect_response(lambda r: r.url.endswith("/steer")) as info:
        page.click("#steer-run")
    page.wait_for_selector("#steer-gen p[data-which=steered]")
    return info.value.json()


def test_the_feature_page_steers_its_feature_and_draws_the_change(server, browser):  # noqa: F811
    page, _, errors = _open(browser, server + "/run/sae-topk?feature=3")
    page.wait_for_function("document.getElementById('contexts').dataset.feature === '3'")
    assert page.inner_text("#steer-strength-value") == "8"
    zero = _steer(page, 0)
    assert zero["feature"] == 3 and zero["strength"] == 0.0
    assert zero["next_token"]["kl"] == 0.0 and zero["next_token"]["before"] == zero["next_token"]["after"]
    assert zero["generation"]["clean"] == zero["generation"]["steered"]
    assert page.inner_text("#steer-strength-value") == "0"
    big = _steer(page, 40)
    assert big["strength"] == 40.0 and big["next_token"]["kl"] > 1e-3
    assert page.locator("#steer-bars .main-svg").count() >= 1
    shown = page.inner_text("#steer-gen p[data-which=steered]")
    assert big["generation"]["steered"][:20] in shown
    assert page.is_hidden("#steer-error")
    assert errors == []
    page.close()


def test_a_refused_steer_names_its_fault_on_the_page(server, browser):  # noqa: F811
    page, _, errors = _open(browser, server + "/run/sae-topk")
    page.fill("#steer-prompt", "")
    page.click("#steer-run")
    page.wait_for_selector("#steer-error:not([hidden])")
    assert "prompt must be a non-empty string" in page.inner_text("#steer-error")
    assert [e for e in errors if "400" not in e] == []  # the browser logs the 400 itself
    page.close()


def test_the_sae_page_links_to_its_health_pane_which_draws_the_reports(server, browser):  # noqa: F811
    page, _, errors = _open(browser, server + "/run/sae-topk")
    page.click("text=training health")
    page.wait_for_url("**/run/sae-topk/health")
    page.wait_for_function("document.getElementById('health-status').textContent.startsWith('finished')")
    assert page.locator("#health .main-svg").count() >= 1
    assert errors == []
    page.close()


def test_the_head_explorer_opens_the_head_a_link_names_and_lists_its_sae_latents(server, browser):  # noqa: F811
    page, _, errors = _open(browser, server + "/run/probe-heads?layer=1&head=1")
    page.wait_for_function("document.getElementById('hx-detail').dataset.head === '1,1'")
    assert page.input_value("#hx-layer") == "1" and page.input_value("#hx-head") == "1"
    page.wait_for_selector("#hx-sae h3")
    assert "SAE latents that write through L1H1" in page.inner_text("#hx-sae")
    assert "blocks.1.attn.hook_z" in page.inner_text("#hx-sae")  # the tiny demo has no hook_z SAE
    assert errors == []
    page.close()
