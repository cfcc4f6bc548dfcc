"""Heads over training, the explorer's data, its figures and the HeadExplorer widget, on the
hand-set model (an induction head in L1H0 whose answer is known) and the shipped checkpoints."""

import json
import time

import pytest
import torch

from workbench.figures import heads as hf
from workbench.probes.head_agreement import ranking_agreement, rankings_from_roles
from workbench.probes.head_explorer import explorer_data
from workbench.probes.head_rankings import label
from workbench.probes.heads import HeadRoleConfig, attention_patterns, head_roles
from workbench.probes.heads_data import Agreement, ExplorerData, HeadsOverTraining
from workbench.probes.heads_over_training import (
    OverTrainingConfig,
    attention_entropy,
    heads_over_training,
    shipped_checkpoints,
    shipped_heads_over_training,
)
from workbench.tasks import repeated_segments

from .handset_heads import BOS, INDUCTION_HEAD, N, handset_model

ROLES = HeadRoleConfig(n_contexts=16, seq_len=N, needle_len=8, token_range=(0, BOS))


def _no_induction():
    """The hand-set model with L1H0's query zeroed: it attends uniformly and copies nothing."""
    m = handset_model()
    with torch.no_grad():
        m.blocks[1].attn.W_Q[0].zero_()
    return m


@pytest.fixture(scope="module")
def over():
    val = repeated_segments(4, N // 3, 3, BOS, seed=1)  # held-out text an induction head predicts
    return heads_over_training(
        [(0, _no_induction), (10, handset_model())],
        OverTrainingConfig(roles=ROLES),
        bos=BOS,
        val_tokens=val,
        progress=False,
    )


@pytest.fixture(scope="module")
def handset_data():
    model = handset_model()
    roles = head_roles(model, ROLES, bos=BOS)
    return model, roles, explorer_data(model, roles, bos=BOS)


def test_attention_entropy_float64_reference(tiny_model):
    tokens = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    _, pat = attention_patterns(tiny_model, tokens)
    p = pat.double()
    ref = torch.zeros(2, 4, dtype=torch.float64)
    for l in range(2):
        for h in range(4):
            rows = [
                -(p[l, b, h, q, : q + 1] * p[l, b, h, q, : q + 1].log()).sum() for b in range(3) for q in range(1, 20)
            ]
            ref[l, h] = torch.stack(rows).mean()
    assert torch.allclose(attention_entropy(tiny_model, tokens).double(), ref, atol=1e-5)


def test_entropy_of_handset_heads():
    ent = attention_entropy(handset_model(), torch.randint(0, BOS, (2, N), generator=torch.Generator().manual_seed(0)))
    assert ent[0, 0] < 1e-3 and ent[0, 2] < 1e-3  # previous-token and self heads: one key per row
    assert ent[0, 3] > 2.0  # a zero head attends uniformly: mean log(q + 1) over q ≥ 1


def test_planted_induction_head_forms(over):
    l, h = INDUCTION_HEAD
    assert over.steps == [0, 10]
    assert over.copy_accuracy[0] < 0.1 and over.copy_accuracy[1] > 0.7  # ties with haystack repeats cost some
    assert over.induction[0][l][h] < 0.1 and over.induction[1][l][h] > 0.6
    assert over.retrieval[0][l][h] < 0.1 and over.retrieval[1][l][h] > 0.9
    assert over.retrieval_ci[1][l][h][0] > 0.8 and over.labels[1][l][h] == "retrieval"
    assert over.labels[0][l][h] != "retrieval"
    assert over.previous_token[1][0][0] > 0.9  # L0H0, unchanged in both models
    assert over.formed == {"copy": [0, 10], "induction": [0, 10], "retrieval": [0, 10]}
    assert over.loss_source == "held-out windows" and over.loss[1] < over.loss[0]
    plain = json.loads(json.dumps(over.to_dict(), allow_nan=False))  # tuples in its config become lists
    back = HeadsOverTraining.from_dict(plain)
    assert back.to_dict() == plain and back.formed == over.formed and back.retrieval == over.retrieval


def test_formed_needs_to_hold_to_the_end():
    from workbench.probes.heads_over_training import _formed

    assert _formed([0, 5, 9, 12], [False, True, False, True]) == [9, 12]
    assert _formed([0, 5, 9], [True, True, True]) == [0, 0]
    assert _formed([0, 5, 9], [True, True, False]) is None


def test_bad_checkpoints_named():
    with pytest.raises(ValueError, match="checkpoints"):
        heads_over_training([], progress=False)
    with pytest.raises(ValueError, match="increasing"):
        heads_over_training([(5, handset_model()), (1, handset_model())], progress=False)


def test_shipped_checkpoints_listed():
    pairs = shipped_checkpoints()
    assert [s for s, _ in pairs] == [0, 25, 50, 100, 250, 500, 750, 1000, 1250, 1500]
    assert pairs[0][1]().cfg.n_layers == 2


def test_shipped_phase_change():  # 6.6 s on 2 cores (10 checkpoints)
    t = time.perf_counter()
    res = shipped_heads_over_training(OverTrainingConfig(roles=HeadRoleConfig(seq_len=96)), progress=False)
    print(f"heads over training on the shipped checkpoints: {time.perf_counter() - t:.1f} s")
    assert res.copy_accuracy[0] < 0.3 and res.copy_accuracy[-1] > 0.8
    assert res.formed["induction"] == [750, 1000] and res.formed["copy"] == [750, 1000]
    assert res.loss_source == "metrics.jsonl val_loss" and res.loss[0] is None and res.loss[-1] < 1.6
    assert res.loss_curve["step"][0] == 125


# --- the explorer's data and figures --------------------------------------------------------


def test_explorer_data_is_json_and_holds_the_patterns(handset_data):
    model, roles, data = handset_data
    assert isinstance(data, ExplorerData)
    back = ExplorerData.from_dict(json.loads(json.dumps(data.to_dict(), allow_nan=False)))
    assert back == data
    assert back.n_layers == 2 and back.n_heads == 4 and set(back.contexts) == {"needle", "repeated segment"}
    ids = torch.tensor(back.contexts["needle"]["ids"])
    _, pat = attention_patterns(model, ids[None])
    stored = torch.tensor(back.contexts["needle"]["patterns"], dtype=torch.float64)
    assert torch.allclose(stored, pat[:, 0], atol=1e-3)
    assert back.metrics["retrieval score"] == roles.retrieval
    assert back.intervals["retrieval score"] == roles.retrieval_ci
    assert back.labels == roles.labels and back.copy_accuracy == roles.copy_accuracy and back.gate_curve is None
    for name in ("streaming mass", "causal Δloss", "TL induction", "TL previous-token", "attention entropy"):
        assert len(back.metrics[name]) == 2 and len(back.metrics[name][0]) == 4


def test_explorer_data_takes_duo_and_razor(handset_data):
    model, roles, _ = handset_data
    duo = {
        "alphas": [[0.1, 0.0, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0]],
        "trajectory_steps": [0, 5],
        "trajectory": [[[1.0] * 4] * 2, [[0.1, 0.0, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0]]],
    }
    razor = {
        "echo": [[0.0] * 4, [0.0] * 4],
        "induction": [[0.0] * 4, [0.9, 0, 0, 0]],
        "protected": [[False] * 4, [True, False, False, False]],
    }
    data = explorer_data(model, roles, bos=BOS, duo=duo, razor=razor, contexts={})
    assert data.metrics["Duo α"][1][0] == 0.9 and data.metrics["Razor induction"][1][0] == 0.9
    assert (
        data.gate_curve == {"step": [0, 5], "alpha": duo["trajectory"]} and data.razor_protected == razor["protected"]
    )
    fig = hf.head_detail(data, 1, 0)
    gate = [t for t in fig.data if t.type == "scatter"]
    assert list(gate[0].x) == [0, 5] and list(gate[0].y) == [1.0, 0.9]


def test_head_scatter_content(handset_data):
    _, roles, data = handset_data
    fig = hf.head_scatter(data, "TL induction", "retrieval score")
    assert fig.layout.xaxis.title.text == "TL induction" and fig.layout.yaxis.title.text == "retrieval score"
    by_role = {t.name: t for t in fig.data}
    assert set(by_role) == {lab for row in roles.labels for lab in row}
    points = {tuple(c): (x, y) for t in fig.data for c, x, y in zip(t.customdata, t.x, t.y)}
    assert len(points) == 8
    l, h = INDUCTION_HEAD
    assert points[(l, h)] == (roles.tl_scores["induction"][l][h], roles.retrieval[l][h])
    t = by_role[roles.labels[l][h]]
    i = [tuple(c) for c in t.customdata].index((l, h))
    lo, hi = roles.retrieval_ci[l][h]
    assert t.error_y.arrayminus[i] == pytest.approx(roles.retrieval[l][h] - lo)
    assert t.error_y.array[i] == pytest.approx(hi - roles.retrieval[l][h])
    assert "L1H0" in t.hovertext[i] and f"{lo:.3g}" in t.hovertext[i]
    with pytest.raises(ValueError, match="unknown metric"):
        hf.head_scatter(data, "nope", "retrieval score")


def test_head_detail_content(handset_data):
    _, roles, data = handset_data

    class Tok:
        def token_str(self, i):
            return f"t{i}"

    fig = hf.head_detail(data, 1, 0, "needle", tokenizer=Tok())
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    assert [list(r) for r in heat.z] == data.contexts["needle"]["patterns"][1][0]
    assert heat.x[1] == f"1:t{data.contexts['needle']['ids'][1]}"
    table = [t for t in fig.data if t.type == "table"][0]
    names, vals = table.cells.values
    row = list(names).index("retrieval score")
    assert f"[{roles.retrieval_ci[1][0][0]:.3g}" in vals[row]
    assert fig.layout.title.text == f"L1H0 · {roles.labels[1][0]}"
    assert any(a.text == "no gate trained" for a in fig.layout.annotations)
    with pytest.raises(ValueError, match="layer, head"):
        hf.head_detail(data, 2, 0)
    with pytest.raises(ValueError, match="context"):
        hf.head_detail(data, 0, 0, "passkey")


def test_agreement_figure_and_table(handset_data):
    _, roles, _ = handset_data
    result = ranking_agreement(rankings_from_roles(roles.to_dict()), causal=roles.delta_loss)
    ag = result.to_dict()
    back = Agreement.from_dict(json.loads(json.dumps(ag)))
    assert back.to_dict() == json.loads(json.dumps(ag)) and back.causal == result.causal  # Correlations, typed
    fig = hf.agreement_heatmap(ag)
    heat = fig.data[0]
    shown = [label(n) for n in ag["names"]]  # keys shown by the one label table
    assert list(heat.y) == shown and list(heat.x) == shown + [label("causal_delta_loss")]
    assert "Wu retrieval score" in shown
    assert heat.z[0][1] == ag["rho"][0][1] and heat.z[0][-1] == ag["causal"][ag["names"][0]]["rho"]
    lo, hi = ag["ci"][0][1]
    assert heat.text[0][1] == f"{ag['rho'][0][1]:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    html = hf.agreement_table_html(ag)
    assert html.count("<tr>") == 1 + 6 + 4 and "Fisher" in html


def test_over_training_figure(over):
    d = over.to_dict()
    d["loss_curve"] = {"step": [5, 10], "val_loss": [3.0, 1.0]}
    fig = hf.heads_over_training(d, "retrieval", phase="induction")
    heads = [t for t in fig.data if t.name.startswith("L")]
    assert len(heads) == 8
    l1h0 = next(t for t in heads if t.name == "L1H0")
    assert list(l1h0.x) == [0, 10] and list(l1h0.y) == [r[1][0] for r in d["retrieval"]]
    assert l1h0.error_y.arrayminus[1] == pytest.approx(d["retrieval"][1][1][0] - d["retrieval_ci"][1][1][0][0])
    acc = next(t for t in fig.data if t.name == "needle copy accuracy")
    assert list(acc.y) == d["copy_accuracy"]
    loss = next(t for t in fig.data if t.name == "validation loss (logged)")
    assert loss.yaxis == "y2" and list(loss.y) == [3.0, 1.0]
    assert fig.layout.yaxis2.title.text == "loss (nats/token)" and fig.layout.xaxis.title.text == "training step"
    assert (fig.layout.shapes[0].x0, fig.layout.shapes[0].x1) == (0, 10)
    assert hf.heads_over_training({})["layout"]["annotations"][0]["text"] == "no checkpoints measured"


# --- the widget ---------------------------------------------------------------------------------


def test_explorer_click_shows_the_clicked_head(handset_data, over):
    from plotly.callbacks import Points

    from workbench.widgets.heads import HeadExplorer

    _, roles, data = handset_data
    w = HeadExplorer(data, agreement=ranking_agreement(rankings_from_roles(roles.to_dict())), over=over)
    assert set(w.figures) >= {"scatter", "detail", "agreement", "over"}
    assert w.selected == (1, 0)
    scatter = w.panes["scatter"].widget
    trace = next(t for t in scatter.data if [0, 2] in [list(c) for c in t.customdata])
    i = [list(c) for c in trace.customdata].index([0, 2])
    w.on_click(trace, Points(point_inds=[i], xs=[0], ys=[0], trace_name=trace.name, trace_index=0))
    assert w.selected == (0, 2)
    heat = [t for t in w.figures["detail"].data if t.type == "heatmap"][0]
    assert [list(r) for r in heat.z] == data.contexts["needle"]["patterns"][0][2]
    assert w.figures["detail"].layout.title.text.startswith("L0H2")
    w.context.value = "repeated segment"
    heat = [t for t in w.figures["detail"].data if t.type == "heatmap"][0]
    assert [list(r) for r in heat.z] == data.contexts["repeated segment"]["patterns"][0][2]
    w.x.value = "attention entropy"
    assert w.figures["scatter"].layout.xaxis.title.text == "attention entropy"
    # the redrawn scatter's traces still answer clicks
    trace = next(t for t in w.panes["scatter"].widget.data if [1, 0] in [list(c) for c in t.customdata])
    i = [list(c) for c in trace.customdata].index([1, 0])
    w.on_click(trace, Points(point_inds=[i], xs=[0], ys=[0], trace_name=trace.name, trace_index=0))
    assert w.selected == (1, 0) and w.figures["detail"].layout.title.text.startswith("L1H0")
