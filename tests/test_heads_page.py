"""The heads page's head explorer and its API: from a hand-made HeadsRunResult (no model, no server),
over HTTP, in Chromium (a click on a point of the scatter shows that head), and on the tiny demo,
whose heads run carries every optional measurement of issue 21."""

import copy
import html
import json
import re

import pytest
from starlette.testclient import TestClient

from tests.conftest import free_port, serving
from tests.test_results import DUO, head_roles, new_run, sparsity_result
from workbench.corpus import ByteTokenizer
from workbench.kinds.heads import HeadsRunResult
from workbench.probes.head_explorer import save_patterns
from workbench.probes.heads_data import Agreement, AttentionExample, ExplorerData, HeadsOverTraining, load_pattern
from workbench.probes.kv_data import DuoResult, RazorResult, TradeoffResult
from workbench.results import read_results, results_from_json, write_results
from workbench.runs import EXPLORER_PATTERNS_FILE, load_tensors
from workbench.viewer import heads_page
from workbench.viewer.store import ApiError

OPTIONAL = ("explorer", "methods", "tradeoff", "agreement", "over")  # each section's "-missing" anchor


def _pattern(context: int, layer: int, head: int, T: int) -> list[list[float]]:
    """A [T][T] lower-triangular pattern whose every entry names its context, layer and head."""
    v = (10 * context + 4 * layer + 2 * head + 1) / 100
    return [[round(v + k / 1000, 4) if k <= q else 0.0 for k in range(T)] for q in range(T)]


def duo_result() -> DuoResult:
    """DuoAttention gates of two layers of two heads after two steps (a fresh copy: tests edit it)."""
    return copy.deepcopy(DUO)


def heads_result() -> HeadsRunResult:
    """The roles of tests.test_results, one example pattern and DuoAttention's gates."""
    pat = [[[[1.0, 0.0], [0.25, 0.75]] for _ in range(2)] for _ in range(2)]  # [L][H][q][k]
    return HeadsRunResult(head_roles(), [AttentionExample("needle", ["<s>", "a<b>"], pat)], duo=duo_result())


def explorer() -> dict:
    """Two layers of two heads, well apart in (Duo α, retrieval score); a label that is HTML."""
    ctx = {"needle": [256, 97, 60, 98], "passkey": [256, 49, 50]}
    return {
        "n_layers": 2,
        "n_heads": 2,
        "metrics": {
            "retrieval score": [[0.0, 0.5], [0.25, 0.75]],
            "streaming mass": [[0.9, 0.2], [0.6, 0.1]],
            "Duo α": [[0.1, 0.9], [0.4, 0.7]],
        },
        "intervals": {"retrieval score": [[[0.0, 0.06], [0.4, 0.6]], [[0.2, 0.3], [0.7, 0.8]]]},
        "labels": [["streaming", "retrieval"], ["other", "<i>x</i>"]],
        "contexts": {
            name: {
                "ids": ids,
                "tokens": [f"s{i}" for i in ids],
                "patterns": [[_pattern(c, layer, h, len(ids)) for h in range(2)] for layer in range(2)],
            }
            for c, (name, ids) in enumerate(ctx.items())
        },
        "gate_curve": {
            "step": [0, 5, 10],
            "alpha": [[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.95], [0.7, 0.8]], [[0.1, 0.9], [0.4, 0.7]]],
        },
    }


def explorer_result() -> HeadsRunResult:
    res = heads_result()
    res.explorer = ExplorerData.from_dict(explorer())
    return res


# --- the page and the API function, without a server --------------------------------------------


def test_page_renders_the_explorer_from_a_typed_result():
    page = heads_page.render("hd</script>", explorer_result())
    assert 'id="explorer-missing"' not in page
    assert 'id="hx-scatter"' in page and 'id="hx-detail" class="fig" data-head="1,1"' in page  # top retrieval head
    assert '<option value="Duo α" selected>' in page and '<option value="retrieval score" selected>' in page
    assert '<option value="needle" selected>needle</option><option value="passkey">' in page
    state = json.loads(re.search(r"const S = (\{.*?\});\n", page).group(1))
    assert state["run"] == "hd</script>" and "</script>" not in page.split("const S = ")[1].split(";\n")[0]
    scatter, detail = state["scatter"], state["detail"]
    points = {
        tuple(c): (x, y)
        for t in scatter["data"]
        if t.get("showlegend", True) is not False
        for c, x, y in zip(t["customdata"], t["x"], t["y"])
    }
    assert points == {(0, 0): (0.1, 0.0), (0, 1): (0.9, 0.5), (1, 0): (0.4, 0.25), (1, 1): (0.7, 0.75)}
    heat = next(t for t in detail["data"] if t["type"] == "heatmap")
    assert heat["z"] == explorer()["contexts"]["needle"]["patterns"][1][1]
    assert detail["layout"]["title"]["text"] == "L1H1 · &lt;i&gt;x&lt;/i&gt;"  # plotly would draw the tag
    # the sections of the optional results this run lacks say so
    for anchor in ("tradeoff", "agreement", "over"):
        assert f'id="{anchor}-missing"' in page


def test_page_without_optional_fields_still_renders():
    res = heads_result()
    res.duo = None
    page = heads_page.render("hd", res)
    for anchor in OPTIONAL:
        assert f'id="{anchor}-missing"' in page, anchor
    assert "Not computed for this run (results.json has no explorer" in page
    assert "<td>0.50 (30/60)</td>" in page and 'id="attn"' in page  # the roles and examples are still there
    with pytest.raises(ApiError, match="has no head explorer data") as e:
        heads_page.head("hd", res, {"layer": "0", "head": "0"})
    assert e.value.status == 400


class Tok:
    def token_str(self, i):
        if i > 255:
            raise ValueError(f"id {i} is not a byte")
        return f"t{i}"


def test_head_api_keeps_the_stored_labels_when_the_tokenizer_is_too_small_for_the_ids():
    """BPE ids (here 300-302) and a byte tokenizer (a run without its model record): ByteTokenizer
    labels any id without raising, so the vocabulary size decides; the build-time labels are shown."""
    from workbench.corpus import ByteTokenizer as Bytes

    res = explorer_result()
    ctx = res.explorer.contexts["passkey"]
    ctx["ids"], ctx["tokens"] = [300, 301, 302], ["▁The", "▁pass", "▁key"]
    got = heads_page.head("hd", res, {"layer": "1", "head": "0", "context": "passkey"}, tokenizer=Bytes())
    assert got["tokens"] == ["▁The", "▁pass", "▁key"]


def test_head_api_returns_the_heads_pattern_scores_and_gate():
    res, data = explorer_result(), explorer()
    got = heads_page.head("hd", res, {"layer": "1", "head": "0", "context": "passkey"}, tokenizer=ByteTokenizer())
    assert (got["layer"], got["head"], got["context"], got["role"]) == (1, 0, "passkey", "other")
    assert got["pattern"] == data["contexts"]["passkey"]["patterns"][1][0]
    assert got["tokens"] == [ByteTokenizer().token_str(i) for i in (256, 49, 50)]  # the run's tokenizer, not s256
    assert got["scores"]["retrieval score"] == {"value": 0.25, "interval": [0.2, 0.3]}
    assert got["scores"]["Duo α"] == {"value": 0.4, "interval": None}
    assert got["gate_curve"] == {"step": [0, 5, 10], "alpha": [1.0, 0.7, 0.4]}
    heat = next(t for t in got["detail"]["data"] if t["type"] == "heatmap")
    assert heat["z"] == got["pattern"] and heat["x"][1] == "1:1"
    table = next(t for t in got["detail"]["data"] if t["type"] == "table")
    assert "0.25 [0.2, 0.3]" in table["cells"]["values"][1]
    ring = got["scatter"]["data"][-1]  # the chosen head is ringed on the scatter
    assert ring["customdata"] == [[1, 0]] and (ring["x"], ring["y"]) == ([0.4], [0.25])
    # a tokenizer that cannot label the ids: the labels stored at build time
    res.explorer.contexts["needle"]["ids"][1] = 300
    got = heads_page.head("hd", res, {"layer": "0", "head": "1", "x": "streaming mass", "y": "Duo α"}, Tok())
    assert got["context"] == "needle" and got["tokens"] == ["s256", "s97", "s60", "s98"]
    assert got["scatter"]["layout"]["xaxis"]["title"]["text"] == "streaming mass"


@pytest.mark.parametrize(
    "query,needle",
    [
        ({"head": "0"}, "layer is required"),
        ({"layer": "1.5", "head": "0"}, "layer must be an integer, got '1.5'"),
        ({"layer": "0", "head": "x"}, "head must be an integer"),
        ({"layer": "2", "head": "0"}, r"layer must lie in \[0, 2\), got 2"),
        ({"layer": "0", "head": "-1"}, r"head must lie in \[0, 2\), got -1"),
        ({"layer": "0", "head": "0", "context": "haystack"}, "context must be one of \\['needle', 'passkey'\\]"),
        ({"layer": "0", "head": "0", "x": "<b>"}, "x must be one of"),
        ({"layer": "0", "head": "0", "y": ""}, "y must be one of"),
    ],
)
def test_head_api_names_the_bad_parameter(query, needle):
    with pytest.raises(ApiError, match=needle) as e:
        heads_page.head("hd", explorer_result(), query)
    assert e.value.status == 400


# --- over HTTP and in Chromium ------------------------------------------------------------------


@pytest.fixture
def runs(tmp_path):
    write_results(new_run(tmp_path / "hd", "heads"), explorer_result())
    write_results(new_run(tmp_path / "sp", "sparsity"), sparsity_result())
    return tmp_path


def test_head_route_answers_json_and_json_errors(runs):
    from workbench.viewer.server import create_app

    client = TestClient(create_app(runs), base_url="http://127.0.0.1")
    r = client.get("/api/run/hd/head", params={"layer": 0, "head": 1, "context": "needle"})
    assert r.status_code == 200 and r.json()["pattern"] == explorer()["contexts"]["needle"]["patterns"][0][1]
    assert r.json()["tokens"][2] == "<"  # decoded by the run's (byte) tokenizer
    for params, status, needle in [
        ({"layer": 0, "head": 7}, 400, "head must lie in [0, 2)"),
        ({"layer": 0, "head": 0, "context": "x"}, 400, "context must be one of"),
        ({"layer": 0}, 400, "head is required"),
    ]:
        r = client.get("/api/run/hd/head", params=params)
        assert r.status_code == status and r.headers["content-type"] == "application/json"
        assert needle in r.json()["error"]
    r = client.get("/api/run/sp/head", params={"layer": 0, "head": 0})
    assert r.status_code == 400 and "'sparsity' run, not a heads run" in r.json()["error"]
    assert client.get("/api/run/nope/head", params={"layer": 0, "head": 0}).status_code == 404
    foreign = client.get("/api/run/hd/head", params={"layer": 0, "head": 0}, headers={"Host": "evil.example"})
    assert foreign.status_code == 403


def _click(page, div: str, x: float, y: float) -> None:
    """Click data point (x, y) of a plotly figure (scrolled into view first). Plotly reads a second
    mouse-down within 300 ms of the last as a double click (no plotly_click), hence the pause."""
    page.locator(f"#{div}").scroll_into_view_if_needed()
    at = page.evaluate(
        """([id, x, y]) => { const gd = document.getElementById(id), L = gd._fullLayout;
        const r = gd.getBoundingClientRect();
        return [r.left + L.xaxis._offset + L.xaxis.l2p(x), r.top + L.yaxis._offset + L.yaxis.l2p(y)]; }""",
        [div, x, y],
    )
    page.wait_for_timeout(350)
    page.mouse.click(*at)


def _heatmap_z(page):
    return page.evaluate("document.getElementById('hx-detail').data.find(t => t.type === 'heatmap').z")


def test_clicking_a_point_shows_that_head_in_chromium(runs):
    from tests.test_viewer import _chromium, _open
    from workbench.viewer.server import create_app

    exe = _chromium()
    from playwright.sync_api import sync_playwright

    data = explorer()
    port = free_port()
    with serving(create_app(runs), port) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page, response, errors = _open(browser, f"{url}/run/hd")
        assert response.status == 200
        page.wait_for_function("document.getElementById('hx-scatter').dataset.axes === 'Duo α|retrieval score'")
        assert page.get_attribute("#hx-detail", "data-head") == "1,1"
        assert _heatmap_z(page) == data["contexts"]["needle"]["patterns"][1][1]
        _click(page, "hx-scatter", 0.4, 0.25)  # head L1H0
        page.wait_for_function("document.getElementById('hx-detail').dataset.head === '1,0'")
        assert _heatmap_z(page) == data["contexts"]["needle"]["patterns"][1][0]
        assert page.evaluate("document.getElementById('hx-detail').layout.title.text") == "L1H0 · other"
        assert (page.input_value("#hx-layer"), page.input_value("#hx-head")) == ("1", "0")
        ring = page.evaluate("(d => d[d.length - 1].customdata)(document.getElementById('hx-scatter').data)")
        assert ring == [[1, 0]]
        page.select_option("#hx-context", "passkey")  # the same head on the other context
        page.wait_for_function(
            "document.getElementById('hx-detail').data.find(t => t.type === 'heatmap').z.length === 3"
        )
        assert _heatmap_z(page) == data["contexts"]["passkey"]["patterns"][1][0]
        page.select_option("#hx-x", "streaming mass")  # a new axis; a click there still picks its head
        page.wait_for_function(
            "document.getElementById('hx-scatter').dataset.axes === 'streaming mass|retrieval score'"
        )
        assert page.evaluate("document.getElementById('hx-scatter')._fullLayout.xaxis.title.text") == "streaming mass"
        _click(page, "hx-scatter", 0.9, 0.0)  # L0H0: streaming 0.9, retrieval 0.0
        page.wait_for_function("document.getElementById('hx-detail').dataset.head === '0,0'")
        assert _heatmap_z(page) == data["contexts"]["passkey"]["patterns"][0][0]
        assert errors == [] and page.locator("#hx-error").is_hidden()
        browser.close()


# --- the tiny demo's heads run ------------------------------------------------------------------


def test_tiny_demo_heads_run_has_the_head_methods(tiny_demo):
    import torch

    from tests.conftest import tiny_demo_config
    from workbench.hub import model_for_run
    from workbench.probes.heads import attention_patterns

    res = read_results(tiny_demo / "probe-heads")
    cfg = tiny_demo_config()
    assert len(res.duo.steps) == cfg.duo.steps and len(res.duo.alphas) == 2
    assert res.razor.n_induction_protected == 1 and res.kv_tradeoff.fractions == [0.0, 25.0, 50.0, 100.0]
    assert set(res.kv_tradeoff.curves) == {
        "retrieval",
        "streaming_reversed",
        "tl_induction",
        "causal_delta_loss",
        "duo_alpha",
        "razor",
    }
    assert "causal_delta_loss" not in res.agreement.names and "duo_alpha" in res.agreement.causal
    assert res.over_training.steps == [0, 5, 12]  # the tiny model's checkpoints and its final step
    data = res.explorer
    assert data.metrics["Duo α"] == res.duo.alphas and set(data.contexts) == {
        "needle",
        "repeated segment",
        "passkey",
    }
    passkey = data.contexts["passkey"]
    assert " key " in "".join(ByteTokenizer().decode(passkey["ids"][1:]))
    model, _ = model_for_run(tiny_demo / "sae-topk")  # the same forward model
    _, pat = attention_patterns(model, torch.tensor([passkey["ids"]]))
    assert passkey["patterns"] is None and data.patterns_file == EXPLORER_PATTERNS_FILE  # on file, per head
    stored = load_tensors(tiny_demo / "probe-heads" / EXPLORER_PATTERNS_FILE)["context.2"]
    assert torch.allclose(stored.double(), pat[:, 0].double(), atol=1e-3)
    page = heads_page.render("probe-heads", res)
    for anchor in OPTIONAL:
        assert f'id="{anchor}-missing"' not in page, anchor
    for div in ("hx-scatter", "kv-tradeoff", "agreement", "over"):
        assert f'id="{div}"' in page


def test_every_optional_field_alone_renders(tiny_demo):
    full = read_results(tiny_demo / "probe-heads")
    for keep in ("duo", "razor", "kv_tradeoff", "agreement", "over_training", "explorer"):
        res = copy.deepcopy(full)
        for name in ("duo", "razor", "kv_tradeoff", "agreement", "over_training", "explorer"):
            if name != keep:
                setattr(res, name, None)
        page = heads_page.render("hd", res)  # one section drawn, the other four say "not computed"
        assert page.count('-missing">Not computed') == 4, keep


def test_tiny_demo_sections_read_typed_and_round_trip(tiny_demo, tmp_path):
    res = read_results(tiny_demo / "probe-heads")
    types = (DuoResult, RazorResult, TradeoffResult, Agreement, HeadsOverTraining, ExplorerData)
    names = ("duo", "razor", "kv_tradeoff", "agreement", "over_training", "explorer")
    assert [type(getattr(res, n)) for n in names] == list(types) and res.unreadable == {}
    assert {type(c).__name__ for c in res.agreement.causal.values()} == {"Correlation"}
    write_results(new_run(tmp_path / "again", "heads"), res)
    assert read_results(tmp_path / "again") == res
    assert HeadsRunResult(res.roles, duo=res.duo.to_dict()).duo == res.duo  # a section given as its dict


def _corrupt(tiny_demo, tmp_path, **changes) -> HeadsRunResult:
    """The tiny demo's heads result read back from a copy whose sections are changed by `changes`
    (section -> function of its JSON object, returning it)."""
    data = json.loads((tiny_demo / "probe-heads" / "results.json").read_text())
    for section, change in changes.items():
        data[section] = change(data[section])
    return results_from_json(data, HeadsRunResult, str(tmp_path / "results.json"))


def test_one_corrupt_section_shows_its_fault_and_the_rest_draws(tiny_demo, tmp_path):
    """A trade-off whose fractions are a string: its section names results.json, the field and the
    fault; every other section is drawn as from the intact file."""

    def bad_fractions(t):
        return {**t, "fractions": "all of them"}

    res = _corrupt(tiny_demo, tmp_path, kv_tradeoff=bad_fractions)
    where = f"{tmp_path / 'results.json'}: kv_tradeoff.fractions must be list[float], got str 'all of them'"
    assert res.kv_tradeoff is None and res.unreadable == {"kv_tradeoff": where}
    page = heads_page.render("hd", res)
    error = page.split('id="tradeoff-section-error"')[1].split("</div>")[0]
    assert "could not be drawn from results.json's kv_tradeoff" in error and html.escape(where) in error
    assert 'id="kv-tradeoff"' not in page and 'id="tradeoff-missing"' not in page
    for div in ("roles", "hx-scatter", "agreement", "over", "attn"):  # the other sections, drawn
        assert f'id="{div}"' in page, div
    assert page.count('-section-error"') == 1 and page.count("could not be drawn") == 1


def test_a_corrupt_explorer_or_nested_correlation_is_named_by_its_section_and_api(tiny_demo, tmp_path):
    def bad_causal(a):
        a["causal"]["razor"] = {"rho": 0.5, "ci": None, "p_value": None, "n": "eight"}
        return a

    res = _corrupt(tiny_demo, tmp_path, explorer=lambda e: {**e, "n_heads": "two"}, agreement=bad_causal)
    assert res.explorer is None and res.agreement is None and res.kv_tradeoff is not None
    assert res.unreadable["explorer"].endswith("results.json: explorer.n_heads must be int, got str 'two'")
    assert "agreement.causal['razor'].n must be int, got str 'eight'" in res.unreadable["agreement"]
    page = heads_page.render("hd", res)
    assert 'id="explorer-section-error"' in page and 'id="agreement-section-error"' in page
    assert 'id="kv-tradeoff"' in page and 'id="over"' in page
    with pytest.raises(ApiError, match="explorer.n_heads must be int") as e:
        heads_page.head("hd", res, {"layer": "0", "head": "0"})
    assert e.value.status == 500
    fixed = _corrupt(tiny_demo, tmp_path)  # the intact file: nothing unreadable
    head = heads_page.head("hd", fixed, {"layer": "0", "head": "0"}, run_dir=tiny_demo / "probe-heads")
    assert fixed.unreadable == {} and head["layer"] == 0 and len(head["pattern"]) == len(head["tokens"])


def over_training(**changes) -> dict:
    """HeadsOverTraining's JSON for one head at two checkpoints, with `changes`."""
    grid = [[[0.1]], [[0.6]]]
    d = {k: grid for k in ("retrieval", "streaming", "induction", "previous_token", "delta_loss", "entropy")}
    d |= {"retrieval_ci": [[[[0.0, 0.2]]], [[[0.5, 0.7]]]], "streaming_ci": [[[[0.0, 0.2]]], [[[0.5, 0.7]]]]}
    d |= {"steps": [0, 10], "labels": [[["other"]], [["retrieval"]]], "copy_accuracy": [0.1, 0.9]}
    d |= {"copy_accuracy_ci": [[0.0, 0.2], [0.8, 0.95]], "n_copied": [3, 50], "loss": [None, None]}
    return d | {"loss_source": "none", **changes}


def test_values_from_disk_are_escaped_in_every_section():
    """A hand-edited results.json can hold a string where a number belongs. Where the type allows
    one (a config's values, the steps inside a list) it is drawn as text; where it does not, the
    section's fault quotes it: escaped either way."""
    evil = "<script>alert(1)</script>"
    data = {"schema": HeadsRunResult.SCHEMA, **explorer_result().to_dict()}
    data["duo"]["config"] = {k: evil for k in ("lr", "lam", "distance", "n_contexts", "sink", "window", "seed")}
    data["duo"]["config"]["passkey"] = {"seq_len": evil}
    data["over_training"] = over_training(steps=[evil, evil], formed={"induction": [evil, evil]})
    drawn = heads_page.render("hd", results_from_json(data, HeadsRunResult, "results.json"))
    data["razor"] = {"echo": [[0.0]], "induction": [[0.0]], "protected": [[True]], "config": {}}
    data["razor"] |= {"n_induction_protected": evil, "n_echo_protected": 1}
    faulty = results_from_json(data, HeadsRunResult, "results.json")
    assert set(faulty.unreadable) == {"razor"}
    pages = drawn + heads_page.render("hd", faulty)
    assert "<script>alert(1)" not in pages
    text = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"lr {text}, λ {text}" in drawn and f"passkey contexts of {text} tokens" in drawn
    assert f"steps {text}–" in drawn and f"induction between steps {text} and {text}" in drawn
    assert f"razor.n_induction_protected must be int, got str &#x27;{text}&#x27;" in pages


# --- patterns in the run's safetensors file, read one head at a time -------------------------------


def test_patterns_round_trip_through_the_file_and_the_head_api(tmp_path):
    from workbench.viewer.server import create_app

    res = explorer_result()
    run = new_run(tmp_path / "hd", "heads")
    res.explorer = save_patterns(run.file(EXPLORER_PATTERNS_FILE), res.explorer)
    write_results(run, res)
    assert "patterns" not in json.dumps(
        json.loads(run.file("results.json").read_text())["explorer"]["contexts"]
    ).replace('"patterns": null', "")
    back = read_results(run.path)
    assert (
        back.explorer.patterns_file == EXPLORER_PATTERNS_FILE and back.explorer.contexts["needle"]["patterns"] is None
    )
    want = explorer()["contexts"]
    for c in ("needle", "passkey"):
        for layer in range(2):
            for h in range(2):
                assert load_pattern(run.file(EXPLORER_PATTERNS_FILE), c, layer, h) == want[c]["patterns"][layer][h]
    client = TestClient(create_app(tmp_path), base_url="http://127.0.0.1")
    for c, layer, h in [("needle", 0, 1), ("passkey", 1, 0)]:
        r = client.get("/api/run/hd/head", params={"layer": layer, "head": h, "context": c})
        memory = heads_page.head("hd", res, {"layer": str(layer), "head": str(h), "context": c})
        assert r.status_code == 200 and r.json()["pattern"] == memory["pattern"] == want[c]["patterns"][layer][h]
        heat = next(t for t in r.json()["detail"]["data"] if t["type"] == "heatmap")
        assert heat["z"] == memory["pattern"]
    for params, needle in [
        ({"layer": "x", "head": 0}, "layer must be an integer"),
        ({"layer": 0, "head": 9}, "head must lie"),
    ]:
        r = client.get("/api/run/hd/head", params=params)
        assert r.status_code == 400 and needle in r.json()["error"]
    page = client.get("/run/hd").text
    assert '"fetch": true' in page or '"fetch":true' in page  # the page asks the API for the head's pattern
    run.file(EXPLORER_PATTERNS_FILE).unlink()
    r = client.get("/api/run/hd/head", params={"layer": 0, "head": 0})
    assert r.status_code == 500 and f"{EXPLORER_PATTERNS_FILE} is missing" in r.json()["error"]
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    save_patterns(outside, explorer_result().explorer)
    run.file(EXPLORER_PATTERNS_FILE).symlink_to(outside)  # a link out of the runs folder is not followed
    r = client.get("/api/run/hd/head", params={"layer": 0, "head": 0})
    assert r.status_code == 500 and "link out of the runs folder" in r.json()["error"]


def test_old_runs_with_inline_patterns_still_open(runs):
    from workbench.viewer.server import create_app

    assert read_results(runs / "hd").explorer.patterns_file is None
    client = TestClient(create_app(runs), base_url="http://127.0.0.1")
    r = client.get("/api/run/hd/head", params={"layer": 1, "head": 1, "context": "passkey"})
    assert r.status_code == 200 and r.json()["pattern"] == explorer()["contexts"]["passkey"]["patterns"][1][1]
