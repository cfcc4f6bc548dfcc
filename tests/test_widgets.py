"""Dashboards on the tiny demo: changing a control changes the figure data; empty states speak."""

import pytest
import torch

from workbench.corpus import ByteTokenizer
from workbench.results import SparsityRunResult, read_results
from workbench.sae.evaluate import FeatureTable
from workbench.widgets import ArrowDashboard, FeatureExplorer, HeadRoleMap, SparsityDashboard, load_demo_dashboards


def _read(root, name):
    return read_results(root / name)


def test_feature_explorer_follows_the_chosen_feature(tiny_demo):
    dash = load_demo_dashboards(tiny_demo)["features"]
    table = dash.table
    alive = [f for f in range(len(table.density)) if table.top_values[f, 0] > 0]
    a, b = alive[0], alive[1]
    dash.feature.value = a
    hist_a, ctx_a = dash.figures["hist"].data[0].y, dash.contexts.value
    dash.feature.value = b
    assert dash.contexts.value != ctx_a
    assert list(dash.figures["hist"].data[0].y) == table.hist_counts[b].tolist() != list(hist_a)
    assert f"{float(table.top_values[b, 0]):.2f}" in dash.contexts.value
    dash.run_prompt()
    assert 'class="tok"' in dash.prompt_out.value
    # search by the token at a feature's strongest position finds that feature
    seq, pos = int(table.top_seq[b, 0]), int(table.top_pos[b, 0])
    assert b in dash.matches(ByteTokenizer().decode([int(table.tokens[seq, pos])]))


def test_feature_that_never_fires_shows_a_message(tiny_demo):
    table = FeatureTable.load(tiny_demo / "sae-topk" / "features.safetensors")
    table = table._replace(
        top_values=torch.zeros_like(table.top_values),
        hist_counts=torch.zeros_like(table.hist_counts),
        density=torch.zeros_like(table.density),
    )
    dash = FeatureExplorer(table, ByteTokenizer(), feature=0)
    assert "never fires" in dash.contexts.value
    assert "never fires" in dash.figures["hist"].layout.annotations[0].text
    assert "never fire on these tokens" in dash.status.value


def test_no_dead_latents_is_a_message_not_an_error(tiny_demo):
    table = FeatureTable.load(tiny_demo / "sae-topk" / "features.safetensors")
    dash = FeatureExplorer(table._replace(density=torch.full_like(table.density, 0.01)), ByteTokenizer())
    assert "no dead latents" in dash.status.value


def test_head_map_shows_the_chosen_heads_pattern(tiny_demo):
    res = _read(tiny_demo, "probe-heads")
    dash = HeadRoleMap(res)
    dash.layer.value, dash.head.value = 0, 0
    z00 = [list(r) for r in dash.figures["attention"].data[0].z]
    dash.layer.value, dash.head.value = 1, 1
    assert [list(r) for r in dash.figures["attention"].data[0].z] == res.examples[0].patterns[1][1] != z00
    assert res.roles.labels[1][1] in dash.role.value
    assert HeadRoleMap(res.roles).figures["attention"].layout.annotations[0].text == "no attention patterns recorded"


def test_sparsity_slider_moves_through_checkpoints(tiny_demo):
    res = _read(tiny_demo, "probe-sparsity")
    dash = SparsityDashboard(res)
    steps = res.over_training.steps
    for i, step in enumerate(steps):
        dash.slider.value = step
        shown = [v / 100 for v in dash.figures["layer"].data[0].y]
        assert shown == pytest.approx(res.over_training.active_frac[i])
    empty = SparsityDashboard(SparsityRunResult(res.final))
    assert empty.slider.disabled


def test_arrow_dashboard_switches_dataset(tiny_demo):
    res = _read(tiny_demo, "probe-arrow")
    dash = ArrowDashboard(res)
    for name, r in res.datasets.items():
        dash.dataset.value = name
        assert r.verdict in dash.table.value and f"{100 * r.gap:+.2f}%" in dash.table.value
        assert list(dash.figures["curves"].data[0].y) == r.curves["seed 0"]["forward"]["val_loss"]


def test_head_explorer_in_the_demo_dashboards(tiny_demo, tmp_path):
    import json
    import shutil

    from workbench.figures.text import plain  # token labels are escaped before plotly sees them
    from workbench.probes.heads_data import load_pattern

    res = _read(tiny_demo, "probe-heads")
    dash = load_demo_dashboards(tiny_demo)["explorer"]
    assert set(dash.figures) == {"scatter", "detail", "agreement", "over", "tradeoff"}
    dash.select(0, 1)
    dash.context.value = "passkey"
    heat = next(t for t in dash.figures["detail"].data if t.type == "heatmap")
    passkey = res.explorer["contexts"]["passkey"]
    assert passkey["patterns"] is None  # on file: the widget reads them back from the run's patterns file
    want = load_pattern(tiny_demo / "probe-heads" / res.explorer.patterns_file, "passkey", 0, 1)
    assert [list(r) for r in heat.z] == want
    assert list(heat.x) == [f"{i}:{plain(ByteTokenizer().token_str(t))}" for i, t in enumerate(passkey["ids"])]
    ring = dash.figures["scatter"].data[-1]
    assert list(ring.customdata[0]) == [0, 1]
    # a heads run without the explorer's data: no explorer, the other dashboards as before
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo, root, ignore=shutil.ignore_patterns("_models"))
    path = root / "probe-heads" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "explorer": None}))
    dashboards = load_demo_dashboards(root)
    assert "explorer" not in dashboards and "heads" in dashboards


def test_graph_explorer_redraws_what_the_slider_keeps(tmp_path):
    from workbench.figures.graph import kept
    from workbench.graphs.transcoder import random_transcoder, save_transcoders
    from workbench.hub import load_model
    from workbench.kinds import graph as graph_kind
    from workbench.kinds.registry import ModelInput, get_kind
    from workbench.kinds.runner import build_run
    from workbench.token_data import default_data
    from workbench.widgets import GraphExplorer

    save_transcoders(tmp_path / "tc", {l: random_transcoder(128, 256, 8, seed=l) for l in range(2)})
    cfg = graph_kind.GraphRunConfig(prompt="def f(x):\n    return", transcoders=str(tmp_path / "tc"))
    model = ModelInput(load_model("workbench-tiny")[0], "workbench-tiny")
    res = build_run(get_kind("graph"), cfg, model, default_data(), tmp_path / "g", progress=False)
    dash = GraphExplorer(res)

    def drawn(role):
        return sum(len(t.x) for t in dash.figures["graph"].data if t.meta["role"] == role)

    loose = drawn("nodes")
    assert loose == len(kept(res.view, 0.8, 0.98)[0])
    dash.node_t.value = 0.3
    nodes, edges = kept(res.view, 0.3, 0.98)
    assert drawn("nodes") == len(nodes) < loose and drawn("edges") == 3 * len(edges)
    assert dash.shown.value == f"{len(nodes)} nodes, {len(edges)} edges shown"
    logit = res.view.kind.index("logit")
    dash.node.value = logit
    top = max((e for e in edges if res.view.dst[e] == logit), key=lambda e: abs(res.view.weight[e]))
    assert f"{res.view.weight[top]:.3g}" in dash.inputs.value.split("</li>")[0]
    with pytest.raises(TypeError, match="GraphRunResult or a GraphView"):
        GraphExplorer(object())
