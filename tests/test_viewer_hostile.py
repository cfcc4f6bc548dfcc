"""The viewer against hostile and broken input, served for real (issue 27, items 6-11): nothing blocks
its event loop (/api/build and the run list answer while 20 heads pages are drawn, or while a run's
file is a FIFO), every /api/ answer is JSON naming the problem, nothing outside the runs folder is
served through a symlink, strings from disk are not markup inside plotly figures, and a replay of
every hostile request against the tiny demo gets JSON errors while /api/build never stalls."""

import dataclasses
import http.client
import json
import math
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import free_port, serving
from tests.test_heads_page import explorer_result
from tests.test_results import arrow_result, new_run, sparsity_result
from workbench.results import write_results
from workbench.viewer import api, heads_page, pages
from workbench.viewer.build_status import BuildStatus
from workbench.viewer.server import create_app
from workbench.viewer.store import ApiError, RunError

LINK = '<a href="https://evil.example/">click</a>'


@pytest.fixture
def runs(tmp_path):
    """A runs folder of hand-made runs: a heads run with the explorer's data, a sparsity run."""
    root = tmp_path / "runs"
    write_results(new_run(root / "hd", "heads"), explorer_result())
    write_results(new_run(root / "sp", "sparsity"), sparsity_result())
    return root


def _request(port, method, path, body=None, timeout=10.0, raw_body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = raw_body if raw_body is not None else None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    out = r.status, r.getheader("Content-Type", ""), r.read()
    conn.close()
    return out


def _strict_json(data: bytes):
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are errors."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


def _building() -> BuildStatus:
    status = BuildStatus()
    status.begin([("models", None)])
    return status


# --- item 6: nothing blocks the event loop -----------------------------------------------------------


def test_api_build_and_the_run_list_answer_while_20_heads_pages_load(runs, monkeypatch):
    """Each heads page takes 0.5 s more (a slow section): 20 heads runs at once are 10 s of work,
    drawn at most two at a time, while /api/build and / answer within a second (they waited behind
    every page); a page already drawn is not drawn again until its run's files change."""
    active, peak, drawn, lock = [0], [0], [], threading.Lock()

    def slow_section(name, res):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.5)
        with lock:
            active[0] -= 1
            drawn.append(name)
        return '<p id="slow">drawn</p>'

    for i in range(20):
        write_results(new_run(runs / f"hd{i:02d}", "heads"), explorer_result())
    monkeypatch.setattr(heads_page, "SECTIONS", [*heads_page.SECTIONS, slow_section])
    port = free_port()
    with serving(create_app(runs, build=_building(), port=port), port):
        with ThreadPoolExecutor(20) as pool:
            loads = [pool.submit(_request, port, "GET", f"/run/hd{i:02d}", timeout=120) for i in range(20)]
            time.sleep(0.5)  # the pages are being drawn now
            for path in ("/api/build", "/", "/api/build"):
                t0 = time.perf_counter()
                status, _, body = _request(port, "GET", path, timeout=30)
                took = time.perf_counter() - t0
                assert status == 200 and took < 1.0, (path, took)
            assert not all(f.done() for f in loads)  # answered while the pages were still in flight
            pages_ = [f.result() for f in loads]
        assert [p[0] for p in pages_] == [200] * 20 and all(b'id="slow"' in p[2] for p in pages_)
        assert peak[0] == 2  # the bound on heavy work (create_app's heavy_workers)
        assert sorted(drawn) == [f"hd{i:02d}" for i in range(20)]
        for _ in range(3):  # drawn once: reloads are served as drawn (the last page drawn: the cache holds 16)
            assert _request(port, "GET", "/run/hd19")[0] == 200
        assert drawn.count("hd19") == 1
        write_results(runs / "hd19", explorer_result())  # a new results.json: drawn anew
        assert _request(port, "GET", "/run/hd19")[0] == 200 and drawn.count("hd19") == 2


def test_a_fifo_in_place_of_a_run_file_hangs_nothing_and_is_named(runs):
    """`mkfifo RUNS/zz/config.json` hung every route (open() waits for a writer): now every route
    answers, and the error names the file, on that run only."""
    (runs / "zz").mkdir()
    os.mkfifo(runs / "zz" / "config.json")
    new_run(runs / "yy", "heads")
    os.mkfifo(runs / "yy" / "results.json")
    port = free_port()
    with serving(create_app(runs, build=_building(), port=port), port):
        status, _, body = _request(port, "GET", "/")
        text = body.decode()
        assert status == 200 and "config.json is a named pipe (FIFO), not a regular file" in text
        assert "results.json is a named pipe (FIFO)" in text and "1 retrieval" in text  # hd still summarised
        for run, file in (("zz", "config.json"), ("yy", "results.json")):
            status, _, body = _request(port, "GET", f"/run/{run}")
            assert status == 500 and f"{file} is a named pipe (FIFO)" in body.decode()
        status, ctype, body = _request(port, "GET", "/api/run/yy/head?layer=0&head=0")
        assert status == 500 and ctype == "application/json" and "results.json is a named pipe" in body.decode()
        status, _, body = _request(port, "GET", "/files/yy/results.json")
        assert status == 404 and "named pipe" in body.decode()
        assert _request(port, "GET", "/api/build")[0] == 200


def test_regular_file_refuses_devices_without_opening_them(tmp_path):
    from workbench.viewer.store import regular_file

    with pytest.raises(RunError, match="null is a character device, not a regular file"):
        regular_file(Path("/dev/null"))
    with pytest.raises(RunError, match="is a directory"):
        regular_file(tmp_path)
    assert regular_file(tmp_path / "absent") is None


# --- item 7: plotly.js only where a figure is, deferred and cached ---------------------------------


def test_plotly_loads_only_on_figure_pages_deferred_and_immutable(runs):
    md = runs.parent / "bench.md"
    md.write_text("# results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    client = TestClient(create_app(runs, benchmarks_md=md), base_url="http://127.0.0.1")
    for path in ("/", "/benchmarks", "/run/nope"):
        assert "plotly" not in client.get(path).text.lower(), path
    for path in ("/run/sp", "/run/hd"):
        page = client.get(path).text
        head = page.split("</head>")[0]
        assert f'<script defer src="{pages.PLOTLY_URL}"></script>' in head, path
        inline = re.findall(r"<script>(.*?)</script>", page, re.S)
        calls = [s for s in inline if "Plotly." in s]
        assert calls and all(s.startswith('document.addEventListener("DOMContentLoaded"') for s in calls), path
    assert re.fullmatch(r"/static/plotly-\d+\.\d+\.\d+\S*\.min\.js", pages.PLOTLY_URL)
    r = client.get(pages.PLOTLY_URL)
    assert r.status_code == 200 and len(r.content) > 1_000_000
    assert "immutable" in r.headers["cache-control"] and "max-age=31536000" in r.headers["cache-control"]


# --- item 8: JSON errors everywhere under /api/ ---------------------------------------------------


@pytest.mark.parametrize(
    "raw,status,needle",
    [
        ("-1", 404, "feature must be an integer in [0, 256), got -1"),
        ("-3", 404, "[0, 256)"),
        ("256", 404, "there is no feature 256"),
        ("abc", 400, "feature must be an integer in [0, 256), got 'abc'"),
        ("1.5", 400, "got '1.5'"),
        ("9" * 5000, 400, "(5000 characters)"),
    ],
)
def test_feature_index_names_the_valid_range(raw, status, needle):
    with pytest.raises(ApiError) as e:
        api.feature_index(raw, 256)
    assert e.value.status == status and needle in str(e.value) and len(str(e.value)) < 200
    assert api.feature_index("+7", 256) == 7


def test_wrong_methods_and_unknown_paths_under_api_answer_json(runs):
    client = TestClient(create_app(runs), base_url="http://127.0.0.1")
    for method, path, status, needle in [
        ("GET", "/api/run/hd/prompt", 405, "GET is not allowed on /api/run/hd/prompt (allowed: POST)"),
        ("DELETE", "/api/run/hd/evaluate", 405, "DELETE is not allowed"),
        ("PUT", "/api/run/hd/head", 405, "PUT is not allowed"),
        ("GET", "/api/nothing/here", 404, "nothing is served at /api/nothing/here"),
    ]:
        r = client.request(method, path)
        assert r.status_code == status and r.headers["content-type"] == "application/json", path
        assert needle in r.json()["error"], path
    r = client.get("/no/such/page")
    assert r.status_code == 404 and "nothing is served at /no/such/page" in r.text and "<html" in r.text


def test_nan_in_the_explorer_data_answers_null_not_500(runs):
    path = runs / "hd" / "results.json"
    data = json.loads(path.read_text())
    ex = data["explorer"]
    ex["metrics"]["retrieval score"][1][1] = math.nan
    ex["metrics"]["Duo α"][0][0] = math.inf
    ex["contexts"]["needle"]["patterns"][0][0][0][0] = math.nan
    path.write_text(json.dumps(data))  # Python writes NaN; a hand-edited or foreign writer may too
    client = TestClient(create_app(runs), base_url="http://127.0.0.1")
    r = client.get("/api/run/hd/head", params={"layer": 0, "head": 0, "context": "needle"})
    assert r.status_code == 200, r.text
    got = _strict_json(r.content)
    assert got["scores"]["Duo α"]["value"] is None and got["pattern"][0][0] is None
    r = client.get("/api/run/hd/head", params={"layer": 1, "head": 1})
    assert r.status_code == 200 and _strict_json(r.content)["scores"]["retrieval score"]["value"] is None
    assert client.get("/run/hd").status_code == 200


def _results(path: Path) -> tuple[dict, dict]:
    """results.json as written (the result's fields sit beside kind and schema), twice: the whole to
    write back, the fields to change."""
    data = json.loads(path.read_text())
    return data, data


def test_broken_head_data_names_results_json_and_the_field(runs):
    """A short row in the roles breaks only the sections that draw the roles (each shows its error,
    naming the field), not the page; a malformed explorer grid is a JSON error naming it."""
    shutil.copytree(runs / "hd", runs / "bad-roles")
    data, res = _results(runs / "bad-roles" / "results.json")
    res["roles"]["labels"][1] = ["other"]
    (runs / "bad-roles" / "results.json").write_text(json.dumps(data))
    shutil.copytree(runs / "hd", runs / "bad-explorer")
    data, res = _results(runs / "bad-explorer" / "results.json")
    res["explorer"]["metrics"]["retrieval score"][1] = [0.25]
    res["examples"][0]["patterns"][1][0] = [[1.0]]
    (runs / "bad-explorer" / "results.json").write_text(json.dumps(data))
    client = TestClient(create_app(runs), base_url="http://127.0.0.1")

    page = client.get("/run/bad-roles")
    assert page.status_code == 200
    needle = "results.json: roles.labels[1] must hold 2 values (one per head), got a list of 1"
    assert page.text.count(needle) == 2  # the role map and the intervals table, each in its place
    assert 'id="roles-section-error"' in page.text and 'id="intervals-table-error"' in page.text
    assert 'id="hx-scatter"' in page.text and 'id="attn"' in page.text  # the other sections are drawn
    assert needle in client.get("/").text  # the overview's headline names it too

    page = client.get("/run/bad-explorer")
    assert page.status_code == 200 and 'id="explorer-section-error"' in page.text
    assert "results.json: explorer.metrics[&#x27;retrieval score&#x27;][1] must hold 2 values" in page.text
    assert 'id="roles"' in page.text
    r = client.get("/api/run/bad-explorer/head", params={"layer": 0, "head": 0})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"].startswith("results.json: explorer.metrics['retrieval score'][1] must hold 2 values")
    r = client.get("/api/run/bad-explorer/attention", params={"layer": 1, "head": 0})
    assert (
        r.status_code == 500 and "results.json: examples[0].patterns[1][0] must be a 2 × 2 pattern" in r.json()["error"]
    )


def test_one_failing_section_shows_its_error_and_the_rest_of_the_page(runs, monkeypatch):
    def broken(name, res):
        raise KeyError("kv_fraction")

    monkeypatch.setattr(heads_page, "SECTIONS", [heads_page.roles_section, broken, heads_page.attention_section])
    page = heads_page.render("hd", explorer_result())
    assert 'id="roles"' in page and 'id="attn"' in page
    assert "could not be drawn from results.json's broken" in page and "KeyError: &#x27;kv_fraction&#x27;" in page


# --- item 9: symlinks out of the runs folder ---------------------------------------------------------


def test_symlinks_out_of_the_runs_folder_are_not_served(runs, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(runs / "sp", outside / "run")
    (outside / "run" / "secret.txt").write_text("the secret")
    (runs / "link").symlink_to(outside / "run", target_is_directory=True)
    (runs / "sp" / "leak.txt").symlink_to(outside / "run" / "secret.txt")
    (runs / "sp" / "alias.json").symlink_to(runs / "sp" / "results.json")  # resolves inside: served
    new_run(runs / "sym", "sparsity")
    (runs / "sym" / "results.json").symlink_to(outside / "run" / "results.json")
    client = TestClient(create_app(runs), base_url="http://127.0.0.1")
    for path in ("/files/link/secret.txt", "/files/link/results.json", "/files/sp/leak.txt", "/files/sym/results.json"):
        r = client.get(path)
        assert r.status_code == 404 and "the secret" not in r.text, path
    r = client.get("/run/link")
    assert r.status_code == 404 and "is a link out of the runs folder" in r.text
    assert client.get("/api/run/link/head", params={"layer": 0, "head": 0}).status_code == 404
    r = client.get("/run/sym")
    assert r.status_code == 500 and "results.json is a link out of the runs folder" in r.text
    overview = client.get("/").text
    assert "the run folder &#x27;link&#x27; is a link out of the runs folder" in overview
    assert client.get("/files/sp/alias.json").status_code == 200
    assert client.get("/files/sp/results.json").status_code == 200


# --- item 10: strings from disk inside plotly figures ------------------------------------------------


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _figures(page: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(r"const f = (\{.*?\});\nPlotly\.newPlot", page)]


def test_a_link_in_names_from_disk_is_text_in_every_figure():
    from workbench.figures import evals as ef
    from workbench.figures import probes as pf
    from workbench.figures import sae as sf
    from workbench.viewer import arrow_page

    arrow = arrow_result()
    (res,) = arrow.datasets.values()
    res = dataclasses.replace(
        res,
        verdict=LINK,
        curves={
            f"seed {LINK}": {
                "forward": {"step": [1, 2], "val_loss": [3.0, 2.0]},
                LINK: {"step": [1], "val_loss": [2.5]},
            }
        },
        over_training={"step": [1, 2], "gaps": [[0.1, 0.2]], "mean": [0.1, 0.2], "ci_lo": [0, 0], "ci_hi": [0.2, 0.3]},
    )
    figs = _figures(arrow_page.render("r", type(arrow)({LINK: res})))
    heads = explorer_result()
    heads.roles.labels[0][0] = LINK
    heads.roles.config["retrieval_threshold"] = LINK
    heads.examples[0] = dataclasses.replace(heads.examples[0], name=LINK, tokens=[LINK, "b"])
    figs += [json.loads(pf.head_role_map(heads.roles).to_json())]
    figs += [heads_page.attention("hd", heads, {"layer": "0", "head": "0"})]
    evals = {
        "sparse_probing": {
            "ks": [1, 2],
            "tasks": [LINK],
            "sae_accuracy": {LINK: {"1": 0.6, "2": 0.7}},
            "llm_accuracy": {LINK: 0.8},
            "mean_accuracy": {"1": 0.6, "2": 0.7},
        },
        "absorption": {
            "letters": [
                {"letter": LINK, "full_absorption_rate": 0.1, "num_probe_true_positives": 3, "main_latents": [1]}
            ]
        },
    }
    figs += [json.loads(ef.usefulness_figure(evals).to_json())]
    figs += [json.loads(sf.variants_bar([{"variant": LINK, "fvu": 0.1}]).to_json())]
    shown = [s for f in figs for s in _strings(f)]
    assert len(figs) >= 7 and any("evil.example" in s for s in shown)  # the names are there, as text
    assert not [s for s in shown if "<a" in s.lower()]
    assert sf.token_label(LINK) == "'&lt;a href=\"https://evil.example/\"&gt;click&lt;/a&gt;'"


# --- item 11: what the pages say -------------------------------------------------------------------


def test_token_labels_are_escaped_once():
    from workbench.corpus import ByteTokenizer
    from workbench.figures.sae import token_label

    tok = ByteTokenizer()
    assert token_label(tok.token_str(9)) == "'\\t'"  # shown as '\t' (repr made it '\\t')
    assert token_label(tok.token_str(32)) == "'␣'" and token_label("<") == "'&lt;'"
    assert token_label("a\nb") == "'a\\nb'"  # a decoded BPE token with a raw newline: spelled once


def test_arrow_curves_differ_in_dash_and_marker_and_name_the_direction():
    from workbench.figures.probes import arrow_seed_curves

    curve = {"step": [1, 2], "val_loss": [3.0, 2.0]}
    fig = arrow_seed_curves({"seed 0": {"forward": curve, "backward": curve}, "seed 1": {"forward": curve}})
    fwd, bwd, fwd1 = fig.data
    assert (fwd.name, bwd.name) == ("forward · seed 0", "backward · seed 0")
    assert fwd.line.dash != bwd.line.dash and fwd.marker.symbol != bwd.marker.symbol
    assert fwd.line.color == bwd.line.color != fwd1.line.color  # one colour per seed
    assert "dashed" in fig.layout.legend.title.text


def test_benchmarks_page_renders_markdown_escaped():
    from workbench.viewer.markdown import to_html

    md = (
        "# Results\n\nA paragraph with `code` and **bold**\nthat wraps, <script>alert(1)</script>.\n\n"
        "| shape | ms |\n|---|---|\n| 128 -> 2048 | 113.8 |\n\n- one\n  continued\n- two\n\n"
        "[docs](https://example.org) [bad](javascript:alert(2))\n\n```\nraw <b>\n```\n"
    )
    out = to_html(md)
    assert "<h2>Results</h2>" in out and "<code>code</code>" in out and "<b>bold</b>" in out
    assert "<p>A paragraph with <code>code</code> and <b>bold</b> that wraps, &lt;script&gt;" in out
    assert "<table><thead><tr><th>shape</th><th>ms</th></tr></thead><tbody><tr><td>128 -&gt; 2048</td>" in out
    assert "<ul><li>one continued</li><li>two</li></ul>" in out and "|---|" not in out
    assert '<a href="https://example.org">docs</a>' in out and 'href="javascript' not in out
    assert "<pre><code>raw &lt;b&gt;</code></pre>" in out and "<script>" not in out
    assert "overflow-wrap: anywhere" in pages.CSS


def test_the_host_check_caveat_is_in_the_help_and_the_readme(capsys):
    import app

    with pytest.raises(SystemExit):
        app.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "0.0.0.0 or :: (every interface) turns that check off" in help_text
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert "`--host 0.0.0.0` (or `::`) turns the Host-header check off" in readme


# --- the replay: every hostile request against the served tiny demo ------------------------------------


def _hostile_demo(tiny_demo, root: Path) -> None:
    """A runs folder with the tiny demo's SAE and heads runs, plus broken copies of the heads run."""
    for run in ("sae-topk", "probe-heads", "probe-sparsity"):
        shutil.copytree(tiny_demo / run, root / run, symlinks=True)
    shutil.copytree(tiny_demo / "probe-heads", root / "heads-nan")
    data, res = _results(root / "heads-nan" / "results.json")
    res["explorer"]["metrics"]["retrieval score"][0][0] = math.nan
    (root / "heads-nan" / "results.json").write_text(json.dumps(data))
    shutil.copytree(tiny_demo / "probe-heads", root / "heads-broken")
    data, res = _results(root / "heads-broken" / "results.json")
    res["roles"]["retrieval"][0] = "not a row"
    res["explorer"]["n_heads"] = "two"
    (root / "heads-broken" / "results.json").write_text(json.dumps(data))
    (root / "zz").mkdir()
    os.mkfifo(root / "zz" / "config.json")


HOSTILE = [  # (method, path, body, status, needle): every request of issue 27's review
    ("GET", "/api/run/sae-topk/feature/-1", None, 404, "feature must be an integer in [0, 256), got -1"),
    ("GET", "/api/run/sae-topk/feature/abc", None, 400, "in [0, 256), got 'abc'"),
    ("GET", "/api/run/sae-topk/feature/1.5", None, 400, "in [0, 256), got '1.5'"),
    ("GET", "/api/run/sae-topk/feature/" + "9" * 5000, None, 400, "(5000 characters)"),
    ("POST", "/api/run/sae-topk/prompt", '{"text": "a\\ud800b", "feature": 1}', 400, "lone surrogate (U+D800"),
    ("POST", "/api/run/sae-topk/prompt", "{not json", 400, "the body is not JSON"),
    ("GET", "/api/run/sae-topk/search?q=%ED%A0%80", None, 200, ""),  # undecodable bytes: replaced, answered
    ("GET", "/api/run/sae-topk/prompt", None, 405, "GET is not allowed"),
    ("PATCH", "/api/run/sae-topk/feature/1", None, 405, "PATCH is not allowed"),
    ("GET", "/api/run/heads-nan/head?layer=0&head=0", None, 200, ""),
    ("GET", "/api/run/heads-broken/head?layer=0&head=0", None, 500, "results.json: explorer.n_heads must be"),
    ("GET", "/api/run/probe-heads/head?layer=" + "1" * 5000 + "&head=0", None, 400, "layer must be an integer"),
    ("GET", "/api/run/zz/head?layer=0&head=0", None, 500, "config.json is a named pipe"),
    ("GET", "/files/sae-topk/a%00b", None, 400, "not a valid path"),
    ("GET", "/files/sae-topk/" + "x" * 300, None, 400, "not a valid path"),
    ("GET", "/files/sae-topk/..%2F..%2Fetc%2Fpasswd", None, 404, "outside run"),
    ("GET", "/run/heads-broken", None, 200, "results.json: roles.retrieval[0] must hold"),
    ("GET", "/run/zz", None, 500, "config.json is a named pipe (FIFO)"),
    ("GET", "/run/heads-nan", None, 200, "Head explorer"),
    ("GET", "/", None, 200, "config.json is a named pipe (FIFO)"),
]


def test_hostile_replay_gets_named_errors_and_never_stalls_api_build(tiny_demo, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    _hostile_demo(tiny_demo, root)
    port = free_port()
    waits, stop = [], threading.Event()

    def poll():  # /api/build, every 50 ms, for as long as the replay runs
        while not stop.is_set():
            t0 = time.perf_counter()
            status, _, _ = _request(port, "GET", "/api/build", timeout=30)
            waits.append((status, time.perf_counter() - t0))
            time.sleep(0.05)

    with serving(create_app(root, build=_building(), port=port), port):
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            for method, path, body, status, needle in HOSTILE:
                raw = body.encode() if body is not None else None
                got, ctype, data = _request(port, method, path, raw_body=raw, timeout=60)
                where = f"{method} {path[:60]}"
                assert got == status, (where, got, data[:300])
                if path.startswith("/api/"):
                    assert ctype == "application/json", where
                    answer = _strict_json(data)
                    if status >= 400:
                        assert needle in answer["error"], (where, answer)
                else:
                    assert ctype.startswith("text/html") and needle in data.decode(), (where, data[:300])
                    if status >= 400:
                        assert 'class="error"' in data.decode(), where
        finally:
            stop.set()
            poller.join(timeout=30)
    assert len(waits) >= 5 and all(s == 200 for s, _ in waits)
    assert max(w for _, w in waits) < 1.0, sorted(w for _, w in waits)[-3:]
