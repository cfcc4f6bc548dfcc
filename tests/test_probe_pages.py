"""The head-role and arrow pages and widgets show the intervals, the too-few state and the verdict
(issue 20, items 2-3), from planted results written as run folders."""

import json

import pytest
import torch
from starlette.testclient import TestClient

from workbench.probes.arrow import FORWARD, NO_ARROW, arrow_from_losses
from workbench.probes.heads import HeadRoles
from workbench.results import ArrowRunResult, HeadsRunResult, ResultsError, read_results, write_results
from workbench.runs import RunDir
from workbench.viewer.server import create_app
from workbench.widgets import ArrowDashboard, HeadRoleMap


def _arrow_results():
    gen = torch.Generator().manual_seed(0)
    base = 2.0 + 0.1 * torch.randn(200, generator=gen, dtype=torch.float64)
    lf = torch.stack([base, base * 1.001, base * 0.999])
    mixed = arrow_from_losses(lf, torch.stack([lf[0] * 0.986, lf[1] * 1.041, lf[2] * 1.005]), [0, 1, 2], seq_len=64)
    clear = arrow_from_losses(lf, torch.stack([lf[0] * 1.05, lf[1] * 1.052, lf[2] * 1.048]), [0, 1, 2], seq_len=64)
    over = {
        "step": [9, 19],
        "gaps": [[0.1, 0.05], [0.12, 0.06]],
        "mean": [0.11, 0.055],
        "ci_lo": [0.0, 0.0],
        "ci_hi": [0.2, 0.1],
    }
    curves = {
        "seed 0": {
            "forward": {"step": [9, 19], "val_loss": [3.0, 2.5]},
            "backward": {"step": [9, 19], "val_loss": [3.1, 2.6]},
        }
    }
    clear.over_training, clear.curves = over, curves
    assert (mixed.verdict, clear.verdict) == (NO_ARROW, FORWARD)
    return ArrowRunResult({"natural <b>text</b>": mixed, "primes×product": clear})


def _head_results(too_few: bool):
    L, H = 2, 2
    return HeadRoles(
        retrieval=[[0.2, 0.0], [0.0, 0.0]],
        streaming=[[0.9, 0.3], [0.2, 0.1]],
        labels=[["too few copied steps", "too few copied steps"], ["streaming", "too few copied steps"]]
        if too_few
        else [["other", "other"], ["streaming", "<i>x</i>"]],
        delta_loss=[[0.0] * H for _ in range(L)],
        clean_copy_loss=4.0,
        copy_accuracy=0.02,
        tl_scores={},
        config={"retrieval_threshold": 0.1, "streaming_threshold": 0.7, "min_copied_steps": 40},
        retrieval_hits=[[1, 0], [0, 0]],
        retrieval_ci=[[[0.036, 0.62], [0.0, 0.43]]] * 2,
        streaming_ci=[[[0.8, 0.95], [0.2, 0.4]]] * 2,
        n_copied=5 if too_few else 50,
        n_copy_steps=224,
        too_few_copied=too_few,
    )


def test_arrow_widget_shows_verdict_seed_interval_null_and_window_interval():
    res = _arrow_results()
    dash = ArrowDashboard(res)
    for name, r in res.datasets.items():
        dash.dataset.value = name
        text = dash.table.value
        assert r.verdict in text and "seed-level 95% CI" in text and "window-level 95% CI" in text
        assert f"{100 * r.gap_ci_seeds[0]:+.2f}%" in text and f"{100 * r.null_max:.2f}%" in text
        assert "<b>text</b>" not in text  # the name from disk is escaped
    assert list(dash.figures["over_training"].data[-1].y) == pytest.approx([11.0, 5.5])
    assert len(dash.figures["curves"].data) == 2  # forward and backward of the one seed logged
    gaps = dash.figures["gaps"]
    mean = next(t for t in gaps.data if t.name.startswith("mean over seeds"))
    r = res.datasets["natural <b>text</b>"]
    assert mean.y[0] == pytest.approx(100 * r.gap)
    assert mean.y[0] - mean.error_y.arrayminus[0] == pytest.approx(100 * r.gap_ci_seeds[0])
    assert NO_ARROW in gaps.data[0].x[0] and FORWARD in gaps.data[0].x[1]
    assert "natural &lt;b&gt;text" in gaps.data[0].x[0]  # a name from disk is text, not plotly markup


def test_head_widget_shows_intervals_and_the_too_few_state():
    dash = HeadRoleMap(_head_results(too_few=True))
    assert "too few copied steps to label" in dash.status.value and "5 of 224" in dash.status.value
    dash.layer.value, dash.head.value = 0, 0
    assert "[0.04, 0.62]" in dash.role.value and "1/5 copied steps" in dash.role.value
    assert "too few copied steps to label" in dash.figures["roles"].layout.annotations[-1].text
    enough = HeadRoleMap(_head_results(too_few=False))
    assert "too few" not in enough.status.value


@pytest.fixture
def runs(tmp_path):
    arrow_run = RunDir(tmp_path / "probe-arrow")
    arrow_run.write_config({}, kind="arrow")
    write_results(arrow_run, _arrow_results())
    for name, few in (("heads-few", True), ("heads-ok", False)):
        run = RunDir(tmp_path / name)
        run.write_config({}, kind="heads")
        write_results(run, HeadsRunResult(_head_results(few)))
    return tmp_path


def test_arrow_page_and_overview_show_the_verdicts(runs):
    client = TestClient(create_app(runs), base_url="http://127.0.0.1")
    page = client.get("/run/probe-arrow").text
    assert page.count("seed-level 95% CI") >= 2 and "window-level 95% CI" in page
    assert NO_ARROW in page and FORWARD in page
    assert "natural &lt;b&gt;text&lt;/b&gt;" in page and "natural <b>text</b>" not in page
    overview = client.get("/").text
    assert f"{FORWARD} (gap" in overview and NO_ARROW in overview


def test_head_pages_show_intervals_and_the_too_few_state(runs):
    client = TestClient(create_app(runs), base_url="http://127.0.0.1")
    few = client.get("/run/heads-few").text
    assert "too few copied steps to label" in few and "0.04 – 0.62" in few and "(1/5)" in few
    ok = client.get("/run/heads-ok").text
    assert "too few copied steps to label" not in ok and "&lt;i&gt;x&lt;/i&gt;" in ok and "<i>x</i>" not in ok
    assert (
        "too few copied steps to label retrieval (5 &lt; 40)" in client.get("/").text
        or "too few copied steps to label retrieval (5 < 40)" in client.get("/").text
    )


def test_legacy_single_pair_arrow_result_fails_naming_the_file(tmp_path):
    """A one-seed arrow result from before seeds has no verdict to show: reading it says so and how to
    rebuild, and the viewer shows that on the run's page while the overview keeps working."""
    run = RunDir(tmp_path / "old-arrow")
    run.write_config({}, kind="arrow")
    run.file("results.json").write_text(
        json.dumps(
            {
                "gaps": {
                    "natural text": {"loss_forward": 2.0, "loss_backward": 2.1, "gap": 0.05, "gap_ci95": [0.04, 0.06]}
                },
                "curves": {"natural text": {"forward": {"step": [1], "val_loss": [2.0]}}},
            }
        )
    )
    with pytest.raises(ResultsError, match=r"old-arrow/results.json: it holds a one-seed arrow result.*rebuild"):
        read_results(run)
    client = TestClient(create_app(tmp_path), base_url="http://127.0.0.1")
    page = client.get("/run/old-arrow")
    assert page.status_code == 500 and "one-seed arrow result" in page.text
    assert client.get("/").status_code == 200
