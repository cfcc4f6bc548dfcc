"""Typed run results (workbench.results): every kind round-trips through results.json unchanged,
files from before schemas migrate, and every bad file fails with a ResultsError naming it."""

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from workbench.probes.arrow import arrow_from_losses
from workbench.probes.heads import HeadRoles
from workbench.probes.kv_data import DuoResult
from workbench.probes.sparsity import SparsityResult
from workbench.results import (
    KINDS,
    ArrowRunResult,
    AttentionExample,
    HeadsRunResult,
    ResultsError,
    SAERunResult,
    SparsityOverTraining,
    SparsityRunResult,
    TopKIntervention,
    read_results,
    register,
    take,
    write_results,
)
from workbench.runs import RunDir


def sae_result(**change) -> SAERunResult:
    return dataclasses.replace(
        SAERunResult(
            fvu=0.125,
            explained_variance=0.875,
            l0=7.5,
            l0_hist=[0, 3, 5],
            dead_frac=0.25,
            dense_frac=0.0,
            log10_density=[-1.0, -2.5, -10.0, -0.5],
            cos_sim=0.9,
            l2_ratio=0.95,
            n_tokens=512,
            ce_clean=2.0,
            ce_sae=2.25,
            ce_zero_ablation=4.0,
            ce_mean_ablation=3.0,
            ce_loss_recovered=0.875,
            ce_loss_recovered_vs_mean=0.75,
            kl_sae=0.1,
            eval_split="validation",
            eval_windows=8,
        ),
        **change,
    )


def sparsity_result() -> SparsityRunResult:
    final = SparsityResult(
        threshold=0.0,
        active_frac=[0.5, 0.25],
        active_frac_std=[0.1, 0.05],
        neuron_freq=[[0.5, 0.5], [0.0, 0.5]],
        never_firing=[0, 1],
        n_tokens=96,
        act_fn="relu",
    )
    return SparsityRunResult(
        final,
        SparsityOverTraining([0, 6, 12], 0.0, [[0.6, 0.4], [0.5, 0.3], [0.5, 0.25]], [[0.1, 0.1]] * 3),
        TopKIntervention([1, 8], [3.0, 2.5], 2.4, [0.6, 0.1], 64),
    )


def head_roles(labels=(("other", "retrieval"), ("streaming", "<i>x</i>"))) -> HeadRoles:
    return HeadRoles(
        retrieval=[[0.0, 0.5], [0.05, 0.0]],
        streaming=[[0.3, 0.2], [0.9, 0.1]],
        labels=[list(r) for r in labels],
        delta_loss=[[0.01, 0.8], [0.0, 0.02]],
        clean_copy_loss=1.5,
        copy_accuracy=0.75,
        tl_scores={"induction": [[0.0, 0.9], [0.1, 0.0]]},
        config={"retrieval_threshold": 0.1, "streaming_threshold": 0.7, "min_copied_steps": 40},
        retrieval_hits=[[0, 30], [3, 0]],
        retrieval_ci=[[[0.0, 0.06], [0.4, 0.6]], [[0.01, 0.13], [0.0, 0.06]]],
        streaming_ci=[[[0.2, 0.4], [0.1, 0.3]], [[0.85, 0.95], [0.05, 0.15]]],
        n_copied=60,
        n_copy_steps=80,
        too_few_copied=False,
    )


DUO = DuoResult(
    alphas=[[0.1, 0.9], [0.0, 0.2]],
    steps=[1, 2],
    loss=[0.5, 0.4],
    distance=[0.45, 0.35],
    penalty=[0.05, 0.05],
    trajectory_steps=[0, 2],
    trajectory=[[[1.0, 1.0], [1.0, 1.0]], [[0.1, 0.9], [0.0, 0.2]]],
    seconds=1.5,
    config={"lr": 0.02, "lam": 0.05, "passkey": {"seq_len": 24}},
)


def heads_result() -> HeadsRunResult:
    pat = [[[[1.0, 0.0], [0.25, 0.75]] for _ in range(2)] for _ in range(2)]  # [L][H][q][k]
    return HeadsRunResult(head_roles(), [AttentionExample("needle", ["<s>", "a<b>"], pat)], duo=DUO)


def arrow_result() -> ArrowRunResult:
    gen = torch.Generator().manual_seed(0)
    lf = 2.0 + 0.1 * torch.randn(3, 50, generator=gen, dtype=torch.float64)
    return ArrowRunResult({"natural <b>text</b>": arrow_from_losses(lf, lf * 1.05, [0, 1, 2], seq_len=32)})


RESULTS = {"sae": sae_result, "sparsity": sparsity_result, "heads": heads_result, "arrow": arrow_result}


def new_run(path, kind: str) -> RunDir:
    run = RunDir(path)
    run.write_config({}, kind=kind)
    return run


@pytest.mark.parametrize("kind", sorted(RESULTS))
def test_every_kind_round_trips_unchanged(tmp_path, kind):
    result = RESULTS[kind]()
    run = new_run(tmp_path / kind, kind)
    write_results(run, result)
    on_disk = json.loads(run.file("results.json").read_text())
    assert (on_disk["kind"], on_disk["schema"]) == (kind, KINDS[kind].SCHEMA)
    back = read_results(run)
    assert type(back) is type(result) and back == result


def test_files_from_before_schemas_migrate(tmp_path):
    """The flat heads layout the demo wrote before (HeadRoles' fields, example_tokens,
    example_patterns at the top, no "kind" or "schema") reads as a HeadsRunResult."""
    roles = head_roles()
    pat = heads_result().examples[0].patterns
    run = new_run(tmp_path / "heads", "heads")
    run.file("results.json").write_text(
        json.dumps({**roles.to_dict(), "example_tokens": ["<s>", "a<b>"], "example_patterns": pat})
    )
    back = read_results(run)
    assert back.roles == roles and back.examples == [AttentionExample("needle", ["<s>", "a<b>"], pat)]
    assert back.duo is None
    sae = new_run(tmp_path / "sae", "sae")  # the old SAE file was the flat metrics without the eval fields
    old = {k: v for k, v in sae_result().to_dict().items() if k not in ("eval_split", "eval_windows")}
    sae.file("results.json").write_text(json.dumps(old))
    assert read_results(sae) == sae_result(eval_windows=None)


def test_optional_fields_are_forward_compatible(tmp_path):
    """A newer writer's extra keys are ignored; missing optional fields take their defaults."""
    run = new_run(tmp_path / "heads", "heads")
    write_results(run, heads_result())
    data = json.loads(run.file("results.json").read_text())
    data["a_future_field"] = {"x": 1}
    del data["razor"], data["examples"]
    run.file("results.json").write_text(json.dumps(data))
    back = read_results(run)
    assert back.razor is None and back.examples == [] and back.duo == DUO


def _write(run: RunDir, text: str) -> None:
    run.file("results.json").write_text(text)


def test_bad_files_fail_naming_the_file(tmp_path):
    run = new_run(tmp_path / "r", "sae")
    where = str(run.file("results.json"))
    with pytest.raises(ResultsError, match=f"{where} is missing: the run has not finished"):
        read_results(run)
    _write(run, '{"fvu": 0.1, "l0"')
    with pytest.raises(ResultsError, match=f"{where} is not valid JSON"):
        read_results(run)
    _write(run, "[1, 2]")
    with pytest.raises(ResultsError, match=f"{where} must hold a JSON object, got list"):
        read_results(run)
    _write(run, json.dumps({**sae_result().to_dict(), "schema": 99}))
    with pytest.raises(ResultsError, match=f"{where} has schema 99, newer than this workbench reads .* upgrade"):
        read_results(run)
    _write(run, json.dumps({**sae_result().to_dict(), "kind": "heads", "schema": 1}))
    with pytest.raises(ResultsError, match="holds a 'heads' result, but config.json says the run is 'sae'"):
        read_results(run)
    bad = sae_result().to_dict()
    del bad["fvu"], bad["kl_sae"]
    _write(run, json.dumps(bad))
    with pytest.raises(ResultsError, match=f"{where} lacks fvu, kl_sae"):
        read_results(run)
    _write(run, json.dumps({**sae_result().to_dict(), "n_tokens": "<img>"}))
    with pytest.raises(ResultsError, match=f"{where}.n_tokens must be int, got str"):
        read_results(run)
    _write(run, json.dumps({**sae_result().to_dict(), "l0": True}))  # a bool is not a number here
    with pytest.raises(ResultsError, match="l0 must be float, got bool"):
        read_results(run)
    other = new_run(tmp_path / "lm", "lm")
    known = r"\(known: arrow, graph, heads, sae, sparsity, steer"  # a test's own kind (toy) may follow
    with pytest.raises(ResultsError, match=r"lm/config.json: unknown run kind 'lm' " + known):
        read_results(other)
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(ResultsError, match="nocfg/config.json is missing"):
        read_results(tmp_path / "nocfg")
    (tmp_path / "badcfg").mkdir()
    (tmp_path / "badcfg" / "config.json").write_text("{")
    with pytest.raises(ResultsError, match="badcfg/config.json is not valid JSON"):
        read_results(tmp_path / "badcfg")


def test_nested_fields_are_checked_where_they_are(tmp_path):
    run = new_run(tmp_path / "sp", "sparsity")
    write_results(run, sparsity_result())
    data = json.loads(run.file("results.json").read_text())
    data["final"]["n_tokens"] = "<img src=z>"
    _write(run, json.dumps(data))
    with pytest.raises(ResultsError, match=r"results.json.final.n_tokens must be int, got str"):
        read_results(run)
    data["final"]["n_tokens"], data["topk"] = 96, {"ks": [1]}
    _write(run, json.dumps(data))
    with pytest.raises(ResultsError, match=r"results.json.topk lacks loss, clean_loss, delta, d_mlp"):
        read_results(run)


def test_writing_checks_the_result_and_the_runs_kind(tmp_path):
    run = new_run(tmp_path / "r", "heads")
    with pytest.raises(TypeError, match="result must be one of .*got dict"):
        write_results(run, {"fvu": 0.1})
    with pytest.raises(ResultsError, match="names kind 'heads', but the result is a 'sae' result"):
        write_results(run, sae_result())
    assert not run.file("results.json").exists()


def test_a_new_kind_registers_in_one_place(tmp_path):
    @register
    @dataclass
    class ToyRunResult:
        KIND: ClassVar[str] = "toy-test-kind"
        SCHEMA: ClassVar[int] = 2
        score: float
        note: str = ""

        def to_dict(self):
            return dataclasses.asdict(self)

        @classmethod
        def from_dict(cls, d, where="results"):
            return take(cls, d, where)

        @staticmethod
        def migrate(d, schema):  # schema 0 called the score "value"; schema 1 added nothing
            return {"score": d["value"]} if schema == 0 else d

    try:
        run = new_run(tmp_path / "toy", "toy-test-kind")
        write_results(run, ToyRunResult(0.5, "n"))
        assert read_results(run) == ToyRunResult(0.5, "n")
        _write(run, json.dumps({"value": 0.25}))  # schema 0, migrated twice
        assert read_results(run) == ToyRunResult(0.25)
        with pytest.raises(ValueError, match="already registered"):
            register(type("Other", (), {"KIND": "toy-test-kind", "SCHEMA": 1, "from_dict": None, "to_dict": None}))
    finally:
        KINDS.pop("toy-test-kind")  # the view over workbench.kinds.registry.KINDS


def test_reading_every_demo_kind_imports_no_transformer_lens(tiny_demo):
    """Reading a run of any kind (the viewer's list, a notebook) needs the result classes only:
    they live in light modules, so a fresh interpreter reads every demo run without TransformerLens."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from workbench.results import read_results, run_kind\n"
        "root = Path(sys.argv[1])\n"
        "kinds = {}\n"
        "for p in sorted(root.iterdir()):\n"
        "    if (p / 'results.json').exists():\n"
        "        kinds[p.name] = type(read_results(p)).__name__\n"
        "print(json.dumps({'kinds': kinds, 'tl': 'transformer_lens' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tiny_demo)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(got["kinds"].values()) >= {"SAERunResult", "SparsityRunResult", "HeadsRunResult", "ArrowRunResult"}
    assert got["tl"] is False
