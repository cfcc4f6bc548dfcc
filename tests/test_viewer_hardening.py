"""The viewer against hostile or broken input: strings from disk never run as script, a foreign
Host header is refused (DNS rebinding), and every API answers a JSON error that names the file or
the argument and what is wrong, which the page then shows."""

import http.client
import json
import shutil

import pytest

from tests.conftest import free_port, serving
from tests.test_viewer import _open, browser  # noqa: F401  (the module-scoped Chromium fixture)
from workbench.viewer.server import create_app

XSS_SAE = "<img src=x onerror=alert(1)>"
XSS_HEADS = "h<img src=y onerror=alert(2)>"
BAD_SPARSITY = "sparsity-bad"
BAD_KIND = "kind-bad"


@pytest.fixture(scope="module")
def hostile(tiny_demo, tmp_path_factory):
    """A runs folder of copies of the tiny demo's runs under hostile names and with hostile values."""
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(tiny_demo / "sae-topk", root / XSS_SAE)
    shutil.copytree(tiny_demo / "sae-topk", root / "corrupt-sae")
    (root / "corrupt-sae" / "sae.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    shutil.copytree(tiny_demo / "probe-heads", root / XSS_HEADS)
    shutil.copytree(tiny_demo / "probe-sparsity", root / BAD_SPARSITY)
    res = json.loads((root / BAD_SPARSITY / "results.json").read_text())
    res["final"]["n_tokens"] = "<img src=z onerror=alert(3)>"
    (root / BAD_SPARSITY / "results.json").write_text(json.dumps(res))
    (root / BAD_KIND).mkdir()
    (root / BAD_KIND / "config.json").write_text(json.dumps({"kind": "<img src=k onerror=alert(4)>", "config": {}}))
    (root / BAD_KIND / "results.json").write_text("{}")
    md = root.parent / "bench.md"
    md.write_text("# results\n<img src=b onerror=alert(5)>\n")
    port = free_port()
    with serving(create_app(root, benchmarks_md=md, host="127.0.0.1", port=port), port) as url:
        yield url, port


def _request(port, method, path, body=None, host=None, origin=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if host is not None:
        headers["Host"] = host
    if origin is not None:
        headers["Origin"] = origin
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    r = conn.getresponse()
    status, ctype, data = r.status, r.getheader("Content-Type", ""), r.read()
    conn.close()
    return status, ctype, data


def _quote(name):
    from urllib.parse import quote

    return quote(name, safe="")


def test_strings_from_disk_never_run_as_script(hostile, browser):  # noqa: F811
    base, _ = hostile
    for path in [
        "/",
        f"/run/{_quote(XSS_SAE)}",
        f"/run/{_quote(XSS_HEADS)}",
        f"/run/{BAD_SPARSITY}",
        f"/run/{BAD_KIND}",
        "/benchmarks",
    ]:
        page = browser.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        assert dialogs == [], path
        assert page.locator("img").count() == 0, path  # no tag made from a string on disk
        if path == f"/run/{_quote(XSS_SAE)}":  # the feature browser and the prompt box reach the API
            page.wait_for_function("document.getElementById('contexts').dataset.feature !== undefined")
            page.fill("#prompt", "<img src=p onerror=alert(6)>")
            page.click("#prompt-go")
            page.wait_for_selector("#prompt-out .tok")
            assert "onerror=alert(6)>" in page.inner_text("#prompt-out") and page.locator("img").count() == 0
        if path == "/":
            assert XSS_SAE in page.inner_text("body")  # shown as text, and linked by its quoted name
            assert page.locator(f"a[href='/run/{_quote(XSS_SAE)}']").count() == 1
        page.close()


def test_foreign_host_header_is_refused(hostile):
    _, port = hostile
    for host in [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"]:
        assert _request(port, "GET", "/", host=host)[0] == 200, host
    for host in [
        f"evil.example:{port}",
        "evil.example",
        f"127.0.0.1:{port + 1}",
        f"127.0.0.1.evil.example:{port}",
        f"localhost:{port}@evil",
        "",
    ]:
        status, _, data = _request(port, "GET", "/api/run/corrupt-sae/search?q=a", host=host)
        assert status == 403 and b"refused" in data, host


def test_posts_from_another_origin_are_refused(hostile):
    """A page on another site can post a form to 127.0.0.1 (no preflight): the viewer refuses any
    state-changing request whose Origin is not its own, before it reaches a handler."""
    _, port = hostile
    path = f"/api/run/{_quote(XSS_SAE)}/prompt"
    for origin in ["http://evil.example", f"http://127.0.0.1:{port + 1}", "null", f"http://localhost:{port}"]:
        status, _, data = _request(port, "POST", path, {"text": "a", "feature": 1}, origin=origin)
        assert status == 403 and b"is refused" in data, origin
    # its own pages' origin, and tools that send none, reach the handler (which answers the body)
    for origin in [f"http://127.0.0.1:{port}", None]:
        status, ctype, _ = _request(port, "POST", path, {"text": "a", "feature": 10**6}, origin=origin)
        assert status == 400 and ctype.startswith("application/json"), origin
    assert _request(port, "GET", "/", origin="http://evil.example")[0] == 200  # reading is the Host check's job


def test_corrupt_sae_gives_json_error_naming_the_file(hostile, browser):  # noqa: F811
    base, port = hostile
    status, ctype, data = _request(port, "POST", "/api/run/corrupt-sae/prompt", {"text": "abc", "feature": 0})
    assert status == 500 and ctype.startswith("application/json")
    assert "sae.safetensors is unreadable" in json.loads(data)["error"]
    page, _, _ = _open(browser, base + "/run/corrupt-sae")
    page.click("#prompt-go")
    page.wait_for_selector("#prompt-out .error")
    assert "sae.safetensors is unreadable" in page.inner_text("#prompt-out")
    page.close()


@pytest.mark.parametrize(
    "run,body,status,needle",
    [
        ("probe-sparsity-copy", {"text": "a", "feature": 1}, 400, "sae.safetensors is missing"),
        (XSS_SAE, {"text": ["a"], "feature": 1}, 400, "text must be a string, got list"),
        (XSS_SAE, {"text": "a", "feature": "1"}, 400, "feature must be an integer, got str"),
        (XSS_SAE, {"text": "a", "feature": True}, 400, "feature must be an integer, got bool"),
        (XSS_SAE, {"text": "a", "feature": 1.5}, 400, "feature must be an integer, got float"),
        (XSS_SAE, ["a", 1], 400, "exactly the keys"),
        (XSS_SAE, {"text": "a", "feature": 10**6}, 400, "feature must lie in [0, 256)"),
    ],
)
def test_prompt_api_rejects_bad_input_with_json(hostile, tiny_demo, run, body, status, needle):
    _, port = hostile
    if run == "probe-sparsity-copy":
        run = BAD_SPARSITY
    got, ctype, data = _request(port, "POST", f"/api/run/{_quote(run)}/prompt", body)
    assert got == status and ctype.startswith("application/json")
    assert needle in json.loads(data)["error"]


def test_attention_api_checks_indices(hostile):
    _, port = hostile
    heads = _quote(XSS_HEADS)
    assert _request(port, "GET", f"/api/run/{heads}/attention?layer=0&head=0")[0] == 200
    for query, needle in [
        ("layer=-1&head=0", "layer must lie in [0, 2)"),
        ("layer=0&head=2", "head in [0, 2)"),
        ("layer=x&head=0", "layer must be an integer, got 'x'"),  # the error names the parameter
        ("head=0", "layer is required"),
        ("layer=0&head=0&example=e", "example must be an integer"),
    ]:
        status, ctype, data = _request(port, "GET", f"/api/run/{heads}/attention?{query}")
        assert status == 400 and ctype.startswith("application/json"), query
        assert needle in json.loads(data)["error"], query
    status, _, data = _request(port, "GET", "/api/run/corrupt-sae/attention?layer=0&head=0")
    assert status == 400 and "not a heads run" in json.loads(data)["error"]
