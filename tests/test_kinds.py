"""Run kinds (workbench.kinds): a toy kind registered here, in a test file, is built through the
command line's entry function in this process, listed on the viewer's `/` with its own summary,
drawn on its own page, and read back typed from results.json: what test_sae_rules.py is for rules.
Users' kinds load by module path (--plugin); each built-in kind's folder has one definition."""

from __future__ import annotations

import dataclasses
import html
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest
from starlette.testclient import TestClient

from workbench.__main__ import main, parse_args
from workbench.fielddoc import doc
from workbench.kinds.registry import KINDS, Kind, Page, all_kinds, get_kind, register_kind
from workbench.results import ResultsError, read_results, take
from workbench.viewer.server import create_app

# --- the toy kind ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    """A toy run: how many values and their scale."""

    n: int = doc(3, "values to write")
    scale: float = doc(1.0, "each value is scale * (i + n_layers)")
    label: str = doc("toy", "a name shown on the page", choices=("toy", "other"))


@dataclass
class ToyPoint:
    i: int
    value: float


@dataclass
class ToyResult:
    KIND: ClassVar[str] = "toy"
    SCHEMA: ClassVar[int] = 2

    points: list[ToyPoint]  # nested dataclasses, typed on the way back
    n_layers: int  # of the model it was built on
    label: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> ToyResult:
        out = take(cls, d, where)
        out.points = [take(ToyPoint, p, f"{where}.points[{i}]") for i, p in enumerate(d["points"])]
        return out

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:  # schema 1 stored bare values
        if schema == 1:
            return {**d, "points": [{"i": i, "value": v} for i, v in enumerate(d.pop("values"))]}
        return d


def toy_build(cfg: ToyConfig, model, data, run, *, progress: bool = True) -> ToyResult:
    L = model.model.cfg.n_layers
    assert len(data.validation) > 0 and data.tokenizer.bos_token_id is not None
    return ToyResult([ToyPoint(i, cfg.scale * (i + L)) for i in range(cfg.n)], L, cfg.label)


def toy_summary(res: ToyResult) -> str:
    return f"toy summary: {len(res.points)} points, last {res.points[-1].value:g}"


def toy_render(name: str, res: ToyResult) -> str:
    rows = "".join(f"<li>{p.i}: {p.value:g}</li>" for p in res.points)
    return f"<h2>toy page of {html.escape(name)} ({html.escape(res.label)})</h2><ul>{rows}</ul>"


TOY = register_kind(Kind("toy", ToyConfig, ToyResult, toy_build, "toy-run", Page(toy_summary, toy_render), "a toy"))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "my-toy"
    assert main(["run", "toy", "--model", "workbench-tiny", "--out", str(out), "--n", "4", "--scale", "2.5"]) == 0
    return out


def test_the_toy_kind_is_built_by_the_cli_and_reads_back_typed(toy_run):
    res = read_results(toy_run)
    assert type(res) is ToyResult and all(type(p) is ToyPoint for p in res.points)
    assert res == ToyResult([ToyPoint(i, 2.5 * (i + 2)) for i in range(4)], 2, "toy")  # workbench-tiny: 2 layers
    on_disk = json.loads((toy_run / "results.json").read_text())
    assert (on_disk["kind"], on_disk["schema"]) == ("toy", 2)
    config = json.loads((toy_run / "config.json").read_text())
    assert config["kind"] == "toy" and config["config"] == {"n": 4, "scale": 2.5, "label": "toy"}
    assert config["model_source"]["model"] == "workbench-tiny"


def test_an_older_toy_file_migrates_and_a_bad_one_names_its_field(toy_run, tmp_path):
    import shutil

    old = tmp_path / "old-toy"
    shutil.copytree(toy_run, old)
    (old / "results.json").write_text(
        json.dumps({"kind": "toy", "schema": 1, "values": [1.0, 2.0], "n_layers": 2, "label": "x"})
    )
    assert read_results(old).points == [ToyPoint(0, 1.0), ToyPoint(1, 2.0)]
    (old / "results.json").write_text(
        json.dumps({"kind": "toy", "schema": 2, "points": [{"i": "a", "value": 1}], "n_layers": 2, "label": "x"})
    )
    with pytest.raises(ResultsError, match=r"results.json.points\[0\].i must be int"):
        read_results(old)


def test_the_toy_run_is_on_the_overview_and_has_its_own_page(toy_run):
    client = TestClient(create_app(toy_run.parent), base_url="http://127.0.0.1")
    overview = client.get("/")
    assert overview.status_code == 200
    assert "my-toy" in overview.text and "toy summary: 4 points, last 12.5" in overview.text
    page = client.get("/run/my-toy")
    assert page.status_code == 200
    assert "toy page of my-toy (toy)" in page.text and "<li>3: 12.5</li>" in page.text


def test_the_kinds_flags_come_from_its_config(capsys):
    args = parse_args(["run", "toy", "--out", "x", "--scale", "0.5", "--label", "other"])
    assert (args.kind, args.scale, args.n, args.label) == ("toy", 0.5, 3, "other")
    with pytest.raises(SystemExit):
        parse_args(["run", "toy", "--label", "nope"])
    assert "--label" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["run", "heads", "--help"])
    out = capsys.readouterr().out
    assert "--n-contexts" in out and "--duo-steps" in out and "--no-head-methods" in out and "--plugin" in out


def test_a_users_kind_loads_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_kinds_plugin.py").write_text(
        "import dataclasses\n"
        "from dataclasses import dataclass\n"
        "from typing import ClassVar\n"
        "from workbench.fielddoc import doc\n"
        "from workbench.kinds.registry import Kind, Page, register_kind\n"
        "from workbench.results import take\n"
        "@dataclass(frozen=True)\n"
        "class PlugConfig:\n"
        "    k: int = doc(2, 'values')\n"
        "@dataclass\n"
        "class PlugResult:\n"
        "    KIND: ClassVar[str] = 'plugged'\n"
        "    SCHEMA: ClassVar[int] = 1\n"
        "    values: list[float]\n"
        "    def to_dict(self):\n"
        "        return dataclasses.asdict(self)\n"
        "    @classmethod\n"
        "    def from_dict(cls, d, where='results'):\n"
        "        return take(cls, d, where)\n"
        "    @staticmethod\n"
        "    def migrate(d, schema):\n"
        "        return d\n"
        "def build(cfg, model, data, run, *, progress=True):\n"
        "    return PlugResult([float(i * model.model.cfg.n_layers) for i in range(cfg.k)])\n"
        "register_kind(Kind('plugged', PlugConfig, PlugResult, build, 'plugged', Page(repr, max)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        out = tmp_path / "plugged"
        assert main(["run", "plugged", "--plugin", "my_kinds_plugin", "--out", str(out), "--k", "3"]) == 0
        res = read_results(out)
        assert type(res).__name__ == "PlugResult" and res.values == [0.0, 2.0, 4.0]
    finally:
        KINDS.pop("plugged", None)
    with pytest.raises(ImportError, match="--plugin no_such_module_here"):
        main(["run", "x", "--plugin", "no_such_module_here"])


def test_a_kind_is_refused_twice_and_its_result_must_name_it():
    with pytest.raises(ValueError, match="already registered"):
        register_kind(Kind("toy", ToyConfig, type("R", (ToyResult,), {}), toy_build, "x"))
    with pytest.raises(ValueError, match="KIND='toy'"):
        register_kind(Kind("toy2", ToyConfig, ToyResult, toy_build, "x"))
    assert get_kind("toy") is TOY


def test_builtin_kinds_own_their_folder_once():
    """Every built-in kind has a folder of its own, the demo's stages are those folders, and each
    folder's name is spelled once in the package (the kind's module)."""
    from pathlib import Path

    from workbench.demo import STAGES, demo_recipes

    builtin = {n: k for n, k in all_kinds().items() if n in ("sae", "sparsity", "heads", "arrow")}
    assert len(builtin) == 4 and len({k.folder for k in builtin.values()}) == 4
    assert (
        [s for s, _ in STAGES[1:]]
        == [r.folder for r in demo_recipes()]
        == [builtin[r.kind].folder for r in demo_recipes()]
    )
    package = Path(__file__).resolve().parents[1] / "workbench"
    for kind in builtin.values():
        hits = subprocess.run(
            ["grep", "-rn", "--include=*.py", f'"{kind.folder}"', str(package)], capture_output=True, text=True
        ).stdout.splitlines()
        code = [h for h in hits if f'"{kind.folder}"' in h.split(":", 2)[2].split("#", 1)[0]]  # not in comments
        assert len(code) == 1 and code[0].startswith(f"{package}/kinds/"), hits


def test_reading_a_kind_imports_no_viewer():
    """The registry names a page by module path: looking a kind up imports neither the viewer nor
    TransformerLens."""
    code = (
        "import sys\n"
        "from workbench.kinds.registry import get_kind\n"
        "k = get_kind('heads')\n"
        "assert k.page == 'workbench.viewer.heads_page', k.page\n"
        "bad = [m for m in sys.modules if m.startswith('workbench.viewer') or m == 'transformer_lens']\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
