"""The first start: app.py answers `/` before torch and TransformerLens are imported, the build
page shows each stage's tqdm numbers live, a failed stage shows its error while the next stage is
still built, and a stop (Ctrl-C) leaves no unfinished run with a results.json."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from tqdm.auto import tqdm

from tests.conftest import free_port, serving, tiny_demo_config
from tests.test_viewer import browser  # noqa: F401  (the module-scoped Chromium fixture)
from workbench.viewer.build_status import BuildStatus, BuildStopped
from workbench.viewer.front import Viewer

ROOT = Path(__file__).resolve().parent.parent


def test_app_answers_before_heavy_imports(tmp_path):
    """In a fresh process: the first 200 on `/` comes while torch and TransformerLens are not
    imported (the background loader is held until then), and it is the build page."""
    port = free_port()
    script = textwrap.dedent(f"""
        import sys, threading, urllib.request, time, os
        sys.path.insert(0, {str(ROOT)!r})
        import app
        gate = threading.Event()
        original = app._load_and_build
        def held(*a):
            gate.wait()
            os._exit(0)  # the heavy part is not under test here
        app._load_and_build = held
        def probe():
            for _ in range(2000):
                try:
                    body = urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=5).read().decode()
                    break
                except OSError:
                    time.sleep(0.01)
            heavy = sorted(m for m in ("torch", "transformer_lens", "sae_lens", "plotly") if m in sys.modules)
            print("RESULT", heavy, 'id="build"' in body, flush=True)
            gate.set()
        threading.Thread(target=probe, daemon=True).start()
        app.main(["--port", "{port}", "--runs", {str(tmp_path)!r}, "--no-build"])
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WORKBENCH_HOME": str(tmp_path)},
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line == "RESULT [] True", (out.stdout, out.stderr)


@pytest.fixture
def live(tiny_demo):
    """A Viewer over the tiny demo with a hand-driven BuildStatus, served on a free port."""
    status = BuildStatus()
    port = free_port()
    viewer = Viewer(status, "127.0.0.1", port)
    with serving(viewer, port, lifespan="off") as url:
        yield url, status, viewer


def _bar_text(page, stage):
    return page.inner_text(f"tr[data-stage='{stage}'] td:nth-child(3)")


def test_build_page_shows_tqdm_numbers_live(live, tiny_demo, browser):  # noqa: F811
    from workbench.viewer.server import create_app

    base, status, viewer = live
    page = browser.new_page()
    page.goto(base + "/")
    assert "Starting" in page.inner_text("#build-title")  # the front answers before the full viewer
    viewer.install(create_app(tiny_demo, build=status))
    status.begin([("models", None), ("probe-heads", "probe-heads"), ("probe-arrow", "probe-arrow")])
    page.wait_for_function("document.getElementById('build-title')?.textContent === 'Building the demo'")
    with status.stage("models"):
        bar = tqdm(total=7, desc="planted", file=open(os.devnull, "w"), mininterval=0)
        bar.update(3)
        page.wait_for_function("document.querySelector(\"tr[data-stage='models']\")?.textContent.includes('3/7')")
        page.evaluate("window.__same_page = 1")
        bar.update(2)
        page.wait_for_function("document.querySelector(\"tr[data-stage='models']\")?.textContent.includes('5/7')")
        assert page.evaluate("window.__same_page") == 1  # updated by polling, not by a reload
        assert page.eval_on_selector("tr[data-stage='models'] progress", "p => [p.value, p.max]") == [5, 7]
        assert "planted" in _bar_text(page, "models")
        bar.close()
    with pytest.raises(RuntimeError):
        with status.stage("probe-heads"):
            raise RuntimeError("planted failure <b>x</b>")
    page.wait_for_selector("tr[data-stage='probe-heads'][data-state='failed']")
    assert "RuntimeError: planted failure <b>x</b>" in _bar_text(page, "probe-heads")  # as text
    with status.stage("probe-arrow"):
        pass
    status.finish()
    page.wait_for_selector("tr[data-stage='probe-arrow'][data-state='done'] a[href='/run/probe-arrow']")
    page.click("a[href='/run/probe-arrow']")
    page.wait_for_load_state("networkidle")
    assert page.locator(".js-plotly-plot").count() >= 1  # the finished run's page is there
    page.close()


@pytest.fixture
def rebuild(tiny_demo, tmp_path):
    """A copy of the tiny demo whose sparsity and heads runs are unfinished (no results.json)."""
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo, root)
    for run in ("probe-sparsity", "probe-heads"):
        (root / run / "results.json").unlink()
    return root


def test_failed_stage_does_not_stop_the_next(rebuild, monkeypatch):
    import workbench.demo as demo
    import workbench.probes.heads as probe_heads

    def broken(*a, **k):
        raise RuntimeError("planted heads failure")

    monkeypatch.setattr(probe_heads, "head_roles", broken)  # the heads kind's build reads it at call time
    (rebuild / "probe-sparsity" / "metrics.jsonl").write_text('{"step": 99}\n')  # left by an interrupted try
    status = BuildStatus()
    with pytest.raises(demo.DemoBuildError) as err:
        demo.build_demo(rebuild, tiny_demo_config(), progress=False, status=status)
    assert err.value.failures == {"probe-heads": "RuntimeError: planted heads failure"}
    states = {s["name"]: (s["state"], s["reused"]) for s in status.snapshot()["stages"]}
    assert states == {
        "models": ("done", False),
        "sae-topk": ("done", True),
        "probe-sparsity": ("done", False),
        "probe-heads": ("failed", False),
        "probe-arrow": ("done", True),
    }
    assert "active_frac" in json.loads((rebuild / "probe-sparsity" / "results.json").read_text())["final"]
    assert not (rebuild / "probe-heads" / "results.json").exists()
    assert not (rebuild / "probe-sparsity" / "metrics.jsonl").exists()  # a rebuilt run starts a fresh log


def test_stop_mid_stage_leaves_no_results(rebuild, monkeypatch):
    """app._stop (Ctrl-C) raises BuildStopped inside the build thread while a stage is working:
    the stage's run gets no results.json, the later stages do not start."""
    import app
    import workbench.demo as demo
    import workbench.probes.sparsity as probe_sparsity

    entered = threading.Event()

    def slow(*a, **k):
        entered.set()
        while True:  # a long stage, in Python between native calls
            time.sleep(0.01)

    monkeypatch.setattr(probe_sparsity, "activation_sparsity", slow)
    status = BuildStatus()
    outcome = []

    def run():
        try:
            demo.build_demo(rebuild, tiny_demo_config(), progress=False, status=status)
        except BuildStopped:
            outcome.append("stopped")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert entered.wait(120)
    app._stop(thread, status)
    assert not thread.is_alive() and outcome == ["stopped"]
    assert not (rebuild / "probe-sparsity" / "results.json").exists()
    assert not (rebuild / "probe-heads" / "results.json").exists()
    states = {s["name"]: s["state"] for s in status.snapshot()["stages"]}
    assert states["probe-sparsity"] == "pending" and states["probe-heads"] == "pending"


def test_heads_stage_shows_its_bars_live(rebuild, monkeypatch):
    """While the heads stage trains its DuoAttention gates, the build's snapshot (what /api/build
    serves the page) holds the stage's outer bar, named after the part running."""
    import workbench.demo as demo
    import workbench.probes.duo as probe_duo

    status, seen = BuildStatus(), []
    real = probe_duo.duo_gates

    def spy(*a, **k):
        seen.append(status.snapshot())
        return real(*a, **k)

    monkeypatch.setattr(probe_duo, "duo_gates", spy)
    demo.build_demo(rebuild, tiny_demo_config(), progress=True, status=status)
    stage = next(s for s in seen[0]["stages"] if s["name"] == "probe-heads")
    assert stage["state"] == "running"
    bar = next(b for b in stage["bars"] if b["desc"] == "head methods")
    assert bar["total"] == 6 and "duo gates" in bar["text"]
    from workbench.results import read_results

    assert read_results(rebuild / "probe-heads").explorer is not None
