"""The viewer's page and API functions on their own (typed results in, HTML or JSON out, no server),
and an SAE run trained with --no-eval: it opens in the viewer, is evaluated from its page (also by
clicking the button in Chromium), and a run on a BPE tokenizer decodes its features with that
tokenizer."""

import json
import shutil
import time

import pytest
from starlette.testclient import TestClient

from tests.conftest import free_port, serving
from tests.test_results import arrow_result, heads_result, new_run, sae_result, sparsity_result
from workbench.results import write_results
from workbench.viewer import api, arrow_page, heads_page, sae_page, sparsity_page
from workbench.viewer.evaluation import Evaluations
from workbench.viewer.store import ApiError, RunStore

# --- pages from typed results ----------------------------------------------------------------------


def test_sae_page_shows_the_results_fields_and_opens_on_the_densest_feature():
    res = sae_result(ce_loss_recovered=None)
    page = sae_page.render("x</script><b>", res, [{"step": 0, "loss": 1.0}], [0.0, 0.5, 0.1, 0.0], None)
    assert "<th>fvu</th><td>0.125</td>" in page and "<th>kl_sae</th><td>0.1</td>" in page
    assert "<th>ce_loss_recovered</th>" not in page  # undefined (None): left out, not printed as 0
    assert "<th>eval_windows</th><td>8</td>" in page
    assert 'max="3" value="1"' in page and "show(1);" in page  # feature 1 fires most
    assert "</script><b>" not in page and "x\\u003c/script\\u003e\\u003cb\\u003e" in page
    assert "were not computed" in page  # no usefulness.json
    assert sae_page.summary(res) == "FVU 0.125 · L0 7.5 · CE loss recovered n/a"


def test_unevaluated_sae_page_offers_the_evaluation():
    page = sae_page.render_unevaluated("r<i>", [], None)
    assert 'id="evaluate-go"' in page and 'id="not-evaluated"' in page and "--no-eval" in page
    assert "r<i>" not in page and "r\\u003ci\\u003e" in page


def test_probe_pages_render_their_results():
    sp = sparsity_page.render("sp", sparsity_result())
    assert "Never-firing neurons on 96 tokens: L0: 0, L1: 1." in sp
    assert sparsity_page.summary(sparsity_result()) == "active L0 50.0%, L1 25.0% (|a| > 0)"
    assert 'id="threshold">A neuron counts as active on a token when its activation is nonzero (|a| > 0)' in sp
    hd = heads_page.render("hd", heads_result())
    assert "&lt;i&gt;x&lt;/i&gt;" in hd and "<i>x</i>" not in hd  # a label from disk is text
    assert "<td>0.50 (30/60)</td><td>0.40 – 0.60</td>" in hd and '<option value="0">needle</option>' in hd
    assert heads_page.summary(heads_result()) == "1 retrieval, 1 streaming heads (copy accuracy 0.75)"
    ar = arrow_page.render("ar", arrow_result())
    verdict = arrow_result().datasets["natural <b>text</b>"].verdict
    assert "natural &lt;b&gt;text&lt;/b&gt;: " + verdict in ar and "<b>text</b>" not in ar
    assert arrow_page.summary(arrow_result()).startswith(f"natural &lt;b&gt;text&lt;/b&gt;: {verdict} (gap +")


def test_attention_api_function_checks_its_parameters():
    res = heads_result()
    fig = heads_page.attention("hd", res, {"layer": "1", "head": "0"})
    assert fig["data"][0]["z"] == res.examples[0].patterns[1][0]
    assert fig["data"][0]["x"] == ["0:&lt;s&gt;", "1:a&lt;b&gt;"]  # plotly reads tags in labels: escaped
    for query, status, needle in [
        ({"layer": "2", "head": "0"}, 400, "layer must lie in [0, 2)"),
        ({"layer": "0"}, 400, "head is required"),
        ({"layer": "0", "head": "0", "example": "1"}, 400, "example must lie in [0, 1)"),
    ]:
        with pytest.raises(ApiError, match=needle.replace("[", r"\[").replace(")", r"\)")) as e:
            heads_page.attention("hd", res, query)
        assert e.value.status == status
    res.examples = []
    with pytest.raises(ApiError, match="has no attention patterns"):
        heads_page.attention("hd", res, {"layer": "0", "head": "0"})


def test_api_functions_on_a_run_store(tmp_path):
    write_results(new_run(tmp_path / "hd", "heads"), heads_result())
    write_results(new_run(tmp_path / "sp", "sparsity"), sparsity_result())
    store, jobs = RunStore(tmp_path), Evaluations()
    assert api.attention(store, "hd", {"layer": "0", "head": "1"})["data"][0]["type"] == "heatmap"
    cases = [
        (lambda: api.attention(store, "sp", {"layer": "0", "head": "0"}), 400, "'sparsity' run, not a heads run"),
        (lambda: api.feature(store, "nope", 0), 404, "no such run"),
        (lambda: api.feature(store, "sp", 0), 500, "features.safetensors is missing"),
        (lambda: api.prompt(store, "sp", {"text": "a", "feature": 0}), 400, "sae.safetensors is missing"),
        (lambda: api.start_evaluation(store, jobs, "sp"), 400, "only SAE runs are evaluated"),
    ]
    for call, status, needle in cases:
        with pytest.raises(ApiError, match=needle) as e:
            call()
        assert e.value.status == status
    assert api.evaluation_state(store, jobs, "hd") == {"phase": "idle", "error": None, "stages": [], "evaluated": True}


# --- a run trained with --no-eval -----------------------------------------------------------------

TRAIN = [
    "--hook",
    "blocks.0.hook_resid_post",
    "--d-sae",
    "64",
    "--k",
    "4",
    "--total-tokens",
    "4096",
    "--batch-size",
    "1024",
    "--buffer-tokens",
    "4096",
    "--no-eval",
]


@pytest.fixture(scope="module")
def no_eval_run(tmp_path_factory):
    """A TopK SAE on the default model, trained with --no-eval (a few seconds)."""
    from workbench.__main__ import main

    out = tmp_path_factory.mktemp("noeval") / "sae-noeval"
    assert main(["train-sae", *TRAIN, "--out", str(out)]) == 0
    assert (out / "sae.safetensors").exists() and not (out / "results.json").exists()
    return out


def _copy(run, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(run, root / run.name)
    return root, run.name


def _evaluate(client, name, timeout=300):
    """Start the evaluation, poll its state until results.json is written; every state seen."""
    r = client.post(f"/api/run/{name}/evaluate")
    assert r.status_code == 200, r.text
    seen = [r.json()]
    deadline = time.time() + timeout
    while not seen[-1].get("evaluated"):
        assert time.time() < deadline and not seen[-1]["error"], seen[-1]
        time.sleep(0.2)
        seen.append(client.get(f"/api/run/{name}/evaluate").json())
    return seen


def test_no_eval_run_opens_and_is_evaluated_from_the_viewer(no_eval_run, tmp_path):
    from workbench.results import read_results
    from workbench.viewer.server import create_app

    root, name = _copy(no_eval_run, tmp_path)
    client = TestClient(create_app(root, eval_windows=4), base_url="http://127.0.0.1")
    assert "not evaluated yet" in client.get("/").text
    page = client.get(f"/run/{name}")
    assert page.status_code == 200 and 'id="evaluate-go"' in page.text and "has not finished" not in page.text
    seen = _evaluate(client, name)
    stages = [s["name"] for s in seen[-1]["stages"]]
    states = {s["name"]: s["state"] for s in seen[-1]["stages"]}
    assert stages[:2] == ["model", "activations"] and states.pop("head attribution") == "skipped"  # not hook_z
    assert all(state == "done" for state in states.values()), states
    res = read_results(root / name)
    assert res.eval_windows == 4 and 0 < res.fvu < 1.5
    page = client.get(f"/run/{name}").text
    assert f"<th>fvu</th><td>{res.fvu:.4g}</td>" in page and 'id="evaluate-go"' not in page
    assert client.get(f"/api/run/{name}/feature/0").status_code == 200
    assert (root / name / "usefulness.json").exists()  # a byte-level model: sparse probing too
    again = client.post(f"/api/run/{name}/evaluate")
    assert again.status_code == 409 and "already evaluated" in again.json()["error"]


def test_a_failed_evaluation_shows_its_error_and_can_be_retried(no_eval_run, tmp_path):
    from workbench.viewer.server import create_app

    root, name = _copy(no_eval_run, tmp_path)
    cfg_path = root / name / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "corpus": str(tmp_path / "gone.txt")}))  # its text was moved away
    client = TestClient(create_app(root, eval_windows=4), base_url="http://127.0.0.1")
    client.post(f"/api/run/{name}/evaluate")
    deadline = time.time() + 120
    while (state := client.get(f"/api/run/{name}/evaluate").json())["phase"] != "finished":
        assert time.time() < deadline
        time.sleep(0.2)
    assert "gone.txt" in state["error"] and not state["evaluated"]
    assert next(s for s in state["stages"] if s["name"] == "model")["state"] == "failed"
    cfg_path.write_text(json.dumps(cfg))
    assert client.post(f"/api/run/{name}/evaluate").status_code == 200  # tried again


def test_a_bpe_run_decodes_features_with_its_own_tokenizer(tmp_path):
    """A --no-eval run on a save_pretrained GPT-2 with a trained BPE tokenizer, evaluated from the
    viewer: the feature table holds BPE ids and the contexts are decoded by that tokenizer."""
    from tests.test_pretrained import _hf_model, _tokenizer
    from workbench.__main__ import main
    from workbench.corpus import python_docs_corpus
    from workbench.figures.sae import contexts_html
    from workbench.pretrained import load_tokenizer
    from workbench.sae.evaluate import FeatureTable
    from workbench.viewer.server import create_app

    text = python_docs_corpus().text("train")[:60_000]
    (tmp_path / "own.txt").write_text(text)
    folder = tmp_path / "gpt2"
    tok = _tokenizer(text)
    _hf_model("gpt2", len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "runs" / "sae-bpe"
    assert (
        main(["train-sae", "--model", str(folder), "--corpus", str(tmp_path / "own.txt"), *TRAIN, "--out", str(out)])
        == 0
    )
    client = TestClient(create_app(out.parent, eval_windows=4), base_url="http://127.0.0.1")
    _evaluate(client, out.name)
    table = FeatureTable.load(out / "features.safetensors")
    assert int(table.tokens.max()) >= 257  # BPE ids, not bytes
    assert not (out / "usefulness.json").exists()  # its concepts are byte-level: skipped, not mislabelled
    f = int(table.density.argmax())
    got = client.get(f"/api/run/{out.name}/feature/{f}").json()["contexts_html"]
    bpe = load_tokenizer(folder)
    assert got == contexts_html(table, f, bpe)
    from workbench.corpus import ByteTokenizer

    assert got != contexts_html(table, f, ByteTokenizer())


def test_compute_button_in_chromium(no_eval_run, tmp_path):
    from tests.test_viewer import _chromium, _open
    from workbench.viewer.server import create_app

    _chromium()
    from playwright.sync_api import sync_playwright

    root, name = _copy(no_eval_run, tmp_path)
    port = free_port()
    with serving(create_app(root, eval_windows=4), port) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox", "--disable-gpu"])
        page, response, errors = _open(browser, f"{url}/run/{name}")
        assert response.status == 200 and page.locator("#evaluate-go").count() == 1
        # the stages are drawn live; a small evaluation can end before a check after the click runs, so
        # an observer notes the row in sessionStorage, which outlives the page's reload
        page.evaluate(
            """() => new MutationObserver(() => {
                 if (document.querySelector("#evaluate-stages tr[data-stage='model']"))
                   sessionStorage.setItem("sawStage", "1");
               }).observe(document.body, {subtree: true, childList: true})"""
        )
        page.click("#evaluate-go")
        # done: the page reloads into the full SAE page, whose feature browser loads a feature
        page.wait_for_function(
            "document.getElementById('contexts') && document.getElementById('contexts').dataset.feature !== undefined",
            timeout=300_000,
        )
        assert page.locator("#evaluate-go").count() == 0 and "fvu" in page.inner_text("table")
        assert page.evaluate("sessionStorage.getItem('sawStage')") == "1"
        assert errors == []
        browser.close()
