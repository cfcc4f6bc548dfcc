"""The "graph" run kind: built on the default model with small transcoders from files, read back
typed, its graph.safetensors equal to a fresh trace, and its page served by the viewer with the
figure, the prune slider's data and escaped strings, scripts only from the viewer itself."""

from __future__ import annotations

import json
import re

import pytest
import torch
from starlette.testclient import TestClient

from workbench.graphs.attribute import trace
from workbench.graphs.graph import GRAPH_FILE, Graph
from workbench.graphs.transcoder import random_transcoder, save_transcoders
from workbench.kinds import graph as graph_kind
from workbench.kinds.registry import Kind, ModelInput, get_kind, register_kind
from workbench.kinds.runner import build_run
from workbench.results import ResultsError, read_results, results_from_json
from workbench.viewer import graph_page
from workbench.viewer.pages import PLOTLY_URL

PROMPT = "def f(x):</script><b>"


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    if get_kind("graph") is None:  # until workbench.kinds.builtin registers it
        k = graph_kind
        register_kind(Kind("graph", k.GraphRunConfig, k.GraphRunResult, k.build, k.FOLDER, k.PAGE, "attribution graph"))
    from workbench.hub import load_model
    from workbench.token_data import default_data

    root = tmp_path_factory.mktemp("runs")
    tcs = {l: random_transcoder(128, 64, 4, seed=l) for l in range(2)}
    save_transcoders(root / "tc", tcs)
    model, _ = load_model("workbench-tiny")
    cfg = graph_kind.GraphRunConfig(
        prompt=PROMPT, transcoders=str(root / "tc"), transcoder_runs="tc-l0,tc-l1", heads_run="probe-heads"
    )
    res = build_run(
        get_kind("graph"), cfg, ModelInput(model, "workbench-tiny"), default_data(), root / "g", progress=False
    )
    return root, res, model, tcs


def test_a_graph_run_reads_back_typed_and_its_tensors_are_the_trace(graph_run):
    root, res, model, tcs = graph_run
    back = read_results(root / "g")
    assert isinstance(back, graph_kind.GraphRunResult) and back.to_dict() == res.to_dict()
    assert back.transcoder_runs == ["tc-l0", "tc-l1"] and back.n_features > 0
    g = Graph.load(root / "g" / GRAPH_FILE)
    tokens = torch.tensor([256] + list(PROMPT.encode()))
    fresh, _ = trace(model, tokens, tcs, bos=256)
    assert torch.equal(g.tokens, tokens) and torch.allclose(g.adjacency, fresh.adjacency, atol=1e-5)
    v = back.view
    assert len(v.heads) == len(v.src) > 0 and all(len(h) == v.n_layers * v.n_heads for h in v.heads)
    # the stored loadings add up to the stored edge (residual + heads + rest)
    for e in range(0, len(v.src), max(1, len(v.src) // 50)):
        assert sum(v.heads[e]) + v.residual[e] + v.other[e] == pytest.approx(
            v.weight[e], rel=5e-3, abs=5e-4
        )  # 4 digits each
    assert 0 < back.replacement <= 1 and 0 < back.completeness <= 1


def test_a_malformed_view_is_refused_naming_the_field(graph_run):
    root, res, *_ = graph_run
    d = {"kind": "graph", "schema": 1, **res.to_dict()}
    d["view"] = {**d["view"], "src": d["view"]["src"] + [10_000], "dst": d["view"]["dst"] + [0]}
    with pytest.raises(ResultsError, match="view.weight"):
        results_from_json(d, graph_kind.GraphRunResult, "results.json")
    with pytest.raises(ResultsError, match="lacks view"):
        results_from_json({"kind": "graph", "schema": 1}, graph_kind.GraphRunResult, "results.json")


def test_the_viewer_serves_the_graph_page_offline(graph_run):
    from workbench.viewer.server import create_app

    root, res, *_ = graph_run
    client = TestClient(create_app(root), base_url="http://127.0.0.1")
    front = client.get("/")
    assert front.status_code == 200 and "replacement" in front.text
    page = client.get("/run/g")
    assert page.status_code == 200, page.text[:500]
    srcs = re.findall(r'<script[^>]*src="([^"]+)"', page.text)
    assert srcs == [PLOTLY_URL]  # the viewer's own plotly, nothing from elsewhere
    assert PROMPT not in page.text  # as HTML text it is escaped, inside the script js_literal's \u003c
    assert "def f(x):&lt;/script&gt;&lt;b&gt;" in page.text
    assert 'id="node-t"' in page.text and 'id="edge-t"' in page.text and "plotly_click" in page.text
    payload = re.search(r"const FIG = (.*?), G = (.*?);\n", page.text)
    fig, data = json.loads(payload.group(1)), json.loads(payload.group(2))
    assert data["runs"] == ["tc-l0", "tc-l1"] and data["heads_run"] == "probe-heads"
    n_edge_points = sum(len(t["x"]) for t in fig["data"] if t["meta"]["role"] == "edges")
    assert n_edge_points == 3 * len(res.view.src)  # every stored edge is in the figure for the slider
    assert graph_page.summary(res).startswith(f"{res.n_features} features")


def test_the_figure_filters_as_the_slider_does(graph_run):
    from workbench.figures.graph import graph_figure, kept

    _, res, *_ = graph_run
    v = res.view
    nodes, edges = kept(v, 0.5, 0.9)
    assert all(v.cum[i] < 0.5 for i in nodes) and all(v.edge_cum[e] < 0.9 for e in edges)
    assert all(v.src[e] in nodes and v.dst[e] in nodes for e in edges)
    assert {i for i, k in enumerate(v.kind) if k in ("token", "logit")} <= nodes  # always kept
    fig = graph_figure(v, 0.5, 0.9)
    shown = sum(len(t.x) for t in fig.data if t.meta["role"] == "nodes")
    assert shown == len(nodes) and sum(len(t.x) for t in fig.data if t.meta["role"] == "edges") == 3 * len(edges)
