"""The "steer" run kind on the planted toy of test_steer: built into a folder, results.json read
back as the same typed result, the planted latent chosen and scored first; its page, the live
steer API's builder (and its refusals) and the widget, all on the same toy."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from tests.test_steer import ALIGNED, TARGET, V, toy_model, toy_sae
from workbench.fielddoc import FieldError
from workbench.kinds import registry
from workbench.kinds import steer as ks
from workbench.kinds.registry import Kind, ModelInput
from workbench.kinds.runner import build_run
from workbench.results import ResultsError, read_results
from workbench.runs import load_tensors
from workbench.sae.io import save_sae
from workbench.token_data import TokenData
from workbench.viewer.store import ApiError


class ToyTokenizer:
    """Characters as tokens ord(c) mod 9 ("a" is 7, the planted token); BOS is 9."""

    vocab_size, bos_token_id = V, V - 1

    def encode(self, text):
        return [ord(c) % 9 for c in text]

    def decode(self, ids):
        return "".join("abcdefghi#"[int(i)] for i in ids)

    def token_str(self, t):
        return "abcdefghi#"[int(t)]


KIND = Kind("steer", ks.SteerRunConfig, ks.SteerRunResult, ks.build, ks.FOLDER, ks.PAGE, "steer")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    before = registry.KINDS.get("steer")
    registry.register_kind(KIND)
    tmp = tmp_path_factory.mktemp("steer")
    save_sae(toy_sae(), tmp / "sae")
    g = torch.Generator().manual_seed(0)
    data = TokenData(
        torch.randint(0, 9, (4000,), generator=g), torch.randint(0, 9, (2000,), generator=g), ToyTokenizer()
    )
    cfg = ks.SteerRunConfig(
        sae_run=str(tmp / "sae"),
        concepts=("planted=a", "low=cd"),
        strengths=(0.25, 0.5, 1.0, 2.0, 4.0),
        n_latents=2,
        keep_frac=0.5,
        seq_len=10,
        windows=4,
        baseline_windows=16,
        neutral_windows=4,
        neutral_len=8,
        prompt="bca",
        gen_tokens=4,
    )
    model = toy_model()
    res = build_run(KIND, cfg, ModelInput(model, "toy"), data, tmp / "run", progress=False)
    yield res, tmp / "run", model
    if before is None:
        registry.KINDS.pop("steer", None)


def test_the_planted_latent_is_scored_and_chosen_first(built):
    res, run, _ = built
    assert res.hook_name == toy_sae().cfg.hook_name
    assert max(range(len(res.output_score)), key=res.output_score.__getitem__) == ALIGNED
    planted = res.concepts[0]
    assert planted.name == "planted" and planted.targets == [TARGET]
    assert planted.latents[0].latent == ALIGNED
    assert planted.latents[0].gain[-1] > 1 and planted.baseline.label == "difference of means"
    change = res.next_token[0]
    i = change.tokens.index(TARGET)
    assert change.after[i] > change.before[i] and change.kl > 0
    scores = load_tensors(run / ks.SCORES_FILE)
    assert int(scores["score"].argmax()) == ALIGNED and int(scores["top_tokens"][ALIGNED, 0]) == TARGET
    abl = res.ablations[0]
    assert abl.latent == ALIGNED and abl.n_fires + abl.n_quiet == 4 * 9


def test_results_round_trip_through_the_run_folder(built):
    res, run, _ = built
    back = read_results(run)
    assert isinstance(back, ks.SteerRunResult)
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))
    assert back.concepts[0].ratio(0.1) == res.concepts[0].ratio(0.1) or math.isnan(res.concepts[0].ratio(0.1))


def test_a_broken_result_names_what_it_lacks(built):
    res, _, _ = built
    d = res.to_dict()
    del d["concepts"]
    with pytest.raises(ResultsError, match="concepts"):
        ks.SteerRunResult.from_dict(d, "results.json")
    d = res.to_dict()
    d["concepts"][0]["baseline"] = {"label": "x"}
    with pytest.raises(ResultsError, match=r"concepts\[0\]\.baseline lacks"):
        ks.SteerRunResult.from_dict(d, "results.json")


def test_config_refuses_bad_fields():
    with pytest.raises(FieldError, match="sae_run"):
        ks.SteerRunConfig(sae_run="")
    with pytest.raises(FieldError, match="strengths"):
        ks.SteerRunConfig(sae_run="x", strengths=(0.0, 1.0))
    assert all(f.metadata.get("help") for f in dataclasses.fields(ks.SteerRunConfig))


def test_the_page_draws_every_section(built):
    from workbench.viewer import steer as vs

    res, _, _ = built
    body = vs.render("steer", res)
    for div in ("steer-scores", "steer-curve-0", "steer-curve-1", "steer-next-0", "steer-gains"):
        assert f'id="{div}"' in body
    assert "Generations" in body and "planted" in vs.summary(res)


def test_the_steer_api_builder_and_its_refusals(built):
    from workbench.viewer.steer import steer_response

    _, _, model = built
    sae, tok = toy_sae(), ToyTokenizer()
    d = steer_response(model, sae, tok, {"feature": ALIGNED, "strength": 6.0, "prompt": "bca"}, gen_tokens=3)
    nt = d["next_token"]
    i = nt["tokens"].index(TARGET)
    assert nt["after"][i] > nt["before"][i] and d["generation"]["steered"] == "hhh"  # token 7 spelled by decode
    assert d["figure"]["data"][0]["name"] == "before"
    for body, msg in (
        ({"feature": 99, "strength": 1.0, "prompt": "a"}, "feature must lie"),
        ({"feature": 1, "strength": float("inf"), "prompt": "a"}, "strength must be"),
        ({"feature": 1, "strength": 1.0, "prompt": ""}, "prompt must be"),
        ({"feature": True, "strength": 1.0, "prompt": "a"}, "feature must be an integer"),
        ({"feature": 1}, "exactly the keys"),
    ):
        with pytest.raises(ApiError, match=msg) as e:
            steer_response(model, sae, tok, body)
        assert e.value.status == 400


def test_the_widget_steers_and_shows_the_curves(built):
    from workbench.widgets.steer import SteerPanel

    res, _, model = built
    panel = SteerPanel(model, toy_sae(), ToyTokenizer(), feature=ALIGNED, strength=6.0, result=res, prompt="bca")
    d = panel.run()
    assert d is not None and "curve-0" in panel.figures
    bars = panel.figures["next"]
    assert [t.name for t in bars.data] == ["before", "after"]
    assert panel.score.value == ""  # no scores given: nothing shown
    panel.strength.value = 1e9  # refused by the slider's range: clamped, still finite
    panel.prompt.value = ""
    assert panel.run() is None and "prompt must be" in panel.error.value


def test_the_widget_shows_the_chosen_features_output_score_and_rank(built):
    from workbench.steer.directions import OutputScores
    from workbench.widgets.steer import SteerPanel

    _, _, model = built
    sae = toy_sae()
    F = sae.cfg.d_sae
    score = torch.arange(F, dtype=torch.float32)  # latent F-1 is the top one
    scores = OutputScores(score, torch.zeros(F, 1, dtype=torch.long), {}, 4.0)
    panel = SteerPanel(model, sae, ToyTokenizer(), feature=F - 1, scores=scores)
    assert f"rank 1 of {F}" in panel.score.value and f"{F - 1:.3f}" in panel.score.value
    panel.feature.value = 0
    assert f"rank {F} of {F}" in panel.score.value
    with pytest.raises(ValueError, match="scores: 3 output scores"):
        SteerPanel(model, sae, ToyTokenizer(), scores=OutputScores(score[:3], scores.top_tokens[:3], {}, 4.0))


def test_the_steer_api_on_an_sae_run_folder(tmp_path):
    """POST /api/run/<name>/steer's handler on a run folder as the viewer finds it: the run's own
    model (model.safetensors + model_config.json) and SAE, the byte tokenizer."""
    from workbench.models import ModelConfig, new_model, save_model
    from workbench.runs import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE, atomic_write_json
    from workbench.sae import SAEConfig
    from workbench.sae.model import SparseAutoencoder
    from workbench.viewer.steer import steer
    from workbench.viewer.store import RunStore

    from .conftest import TINY_KW

    cfg = ModelConfig(**TINY_KW)
    run = tmp_path / "sae-run"
    run.mkdir()
    save_model(new_model(cfg, seed=0), run / MODEL_WEIGHTS_FILE, cfg)
    atomic_write_json(run / MODEL_CONFIG_FILE, dataclasses.asdict(cfg))
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=16, k=2, hook_name="blocks.0.hook_resid_post")), run)
    atomic_write_json(run / "config.json", {"kind": "sae"})
    (tmp_path / "other").mkdir()
    atomic_write_json(tmp_path / "other" / "config.json", {"kind": "sparsity"})
    store = RunStore(tmp_path)
    d = steer(store, "sae-run", {"feature": 3, "strength": 4.0, "prompt": "def f(x):"})
    assert d["feature"] == 3 and d["hook_name"] == "blocks.0.hook_resid_post"
    assert d["next_token"]["kl"] > 0 and d["next_token"]["after"] != d["next_token"]["before"]
    zero = steer(store, "sae-run", {"feature": 3, "strength": 0.0, "prompt": "def f(x):"})["next_token"]
    assert zero["after"] == zero["before"] and zero["kl"] == 0.0  # c = 0 is the clean model, bit for bit
    assert len(d["labels"]) == len(d["next_token"]["tokens"]) and "<table" in d["html"]
    with pytest.raises(ApiError, match="no such run") as e:
        steer(store, "missing", {})
    assert e.value.status == 404
    with pytest.raises(ApiError, match="has no SAE") as e:
        steer(store, "other", {"feature": 0, "strength": 1.0, "prompt": "x"})
    assert e.value.status == 400


def test_a_transcoder_is_steered_at_its_target_hook_along_its_unit_decoder_row(built):
    """A transcoder's decoder writes at target_hook, with rows of any norm: steering its feature is
    steering a plain SAE at that hook whose row is the unit direction (the same next-token change);
    steering at its input hook, or by the unnormalised row, would give another."""
    from workbench.sae.config import SAEConfig
    from workbench.sae.model import SparseAutoencoder
    from workbench.viewer.steer import steer_response

    _, _, model = built
    tok, target = ToyTokenizer(), "blocks.0.hook_mlp_out"
    plain = toy_sae()
    unit = plain.W_dec[ALIGNED] / plain.W_dec[ALIGNED].norm()
    cfg = SAEConfig(d_in=plain.cfg.d_in, d_sae=8, k=2, hook_name="blocks.0.hook_resid_mid", target_hook=target)
    tc = SparseAutoencoder(cfg).double().eval()
    ref = SparseAutoencoder(SAEConfig(d_in=plain.cfg.d_in, d_sae=8, k=2, hook_name=target)).double().eval()
    with torch.no_grad():
        tc.W_dec[ALIGNED] = 3.0 * unit
        ref.W_dec[ALIGNED] = unit
    body = {"feature": ALIGNED, "strength": 6.0, "prompt": "bca"}
    got, want = steer_response(model, tc, tok, body, gen_tokens=2), steer_response(model, ref, tok, body, gen_tokens=2)
    assert got["hook_name"] == target
    assert got["next_token"]["after"] == pytest.approx(want["next_token"]["after"], abs=1e-9)
    assert got["next_token"]["after"] != pytest.approx(got["next_token"]["before"], abs=1e-6)
