"""Every latent's output score as a feature-table column: written by the SAE run's evaluation
(sae.run_eval) into output_scores.safetensors, read back by the viewer's store, shown in the SAE
page's sortable feature table and returned for the feature API. On the planted toy of
tests/test_steer.py (a known direction raises token TARGET, latent ALIGNED decodes to it) the
stored column's top latent is ALIGNED; a run without the file shows no column."""

import math
import os

import pytest
import torch

from tests.test_steer import ALIGNED, HOOK, TARGET, toy_model, toy_sae
from workbench.runs import ATTENTION_FILE, CONFIG_FILE, OUTPUT_SCORES_FILE, RunDir
from workbench.sae import SAEConfig
from workbench.sae.ladder import LADDER_FILE, LADDER_META_FILE
from workbench.sae.model import SparseAutoencoder
from workbench.sae.run_eval import SCORE_LEN, SCORE_PROMPTS, evaluate_sae
from workbench.steer.directions import load_output_scores, output_score_skip, output_scores, save_output_scores
from workbench.viewer import api, sae_page
from workbench.viewer.build_status import BuildStatus
from workbench.viewer.store import RUN_FILES, RunError, RunStore


class NotBytes:  # a tokenizer that is not the byte one: the evaluation skips sparse probing
    bos_token_id = 9


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    model, sae = toy_model(), toy_sae()
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 9, (10, 12), generator=g)
    tokens[:, 0] = 9  # BOS
    run = RunDir(root / "toy")
    run.write_config({"hook_name": HOOK}, kind="sae")
    status = BuildStatus()
    evaluate_sae(run.path, model, sae, NotBytes(), tokens, status=status, progress=False)
    return root, model, sae, tokens, status


def test_the_evaluation_stores_every_latents_score_and_the_planted_latent_tops_it(evaluated):
    root, model, sae, tokens, status = evaluated
    stored = load_output_scores(root / "toy" / OUTPUT_SCORES_FILE)
    assert int(stored.score.argmax()) == ALIGNED and int(stored.top_tokens[ALIGNED, 0]) == TARGET
    direct = output_scores(model, sae, tokens[:SCORE_PROMPTS, :SCORE_LEN])  # what it should have stored
    torch.testing.assert_close(stored.score, direct.score.float())
    assert torch.equal(stored.top_tokens, direct.top_tokens) and stored.strength == pytest.approx(direct.strength)
    assert {s["name"]: s["state"] for s in status.snapshot()["stages"]}["output scores"] == "done"


def test_the_viewer_shows_the_stored_value(evaluated):
    root = evaluated[0]
    store = RunStore(root)
    stored = load_output_scores(root / "toy" / OUTPUT_SCORES_FILE).score
    got = store.output_scores("toy")
    assert store.output_scores("toy") is got  # cached while the file is unchanged
    assert torch.equal(got.score, stored)
    assert api.feature_output_score(store, "toy", ALIGNED) == float(stored[ALIGNED])
    table = sae_page.feature_table_section([0.1] * len(stored), got.score.tolist())
    assert ">output score</th>" in table and repr(float(stored[ALIGNED])) in table
    # a new evaluation (a new file in its place) is read again
    save_output_scores(root / "toy" / OUTPUT_SCORES_FILE, got._replace(score=got.score + 1))
    assert api.feature_output_score(store, "toy", ALIGNED) == pytest.approx(float(stored[ALIGNED]) + 1)
    save_output_scores(root / "toy" / OUTPUT_SCORES_FILE, got)


def test_a_run_without_the_file_opens_with_no_column(evaluated, tmp_path):
    root = tmp_path / "runs"
    RunDir(root / "old").write_config({}, kind="sae")
    store = RunStore(root)
    assert store.output_scores("old") is None
    body = sae_page.feature_table_section([0.0, 0.5, 0.25], None)
    assert "output score</th>" not in body and ">density</th>" in body


def test_scores_of_another_width_are_named_not_shown():
    body = sae_page.feature_table_section([0.1, 0.2], [1.0, 2.0, 3.0])
    assert OUTPUT_SCORES_FILE in body and "evaluate the run again" in body and "<table" not in body


def test_non_finite_scores_are_left_empty():
    body = sae_page.feature_table_section([0.1, 0.2], [math.nan, 2.0])
    assert "NaN" not in body and '"score": [null, 2.0]' in body


def test_where_the_score_has_no_meaning_the_stage_says_why():
    model = toy_model()
    mlp = SparseAutoencoder(SAEConfig(d_in=32, d_sae=8, k=2, hook_name="blocks.0.mlp.hook_post"))
    assert "d_model" in output_score_skip(model, mlp)
    assert output_score_skip(model, toy_sae()) is None
    z = SparseAutoencoder(SAEConfig(d_in=16, d_sae=8, k=2, hook_name="blocks.0.attn.hook_z"))
    assert output_score_skip(model, z) is None  # through W_O, as its logit lens


def test_a_bad_file_is_named(tmp_path):
    (tmp_path / OUTPUT_SCORES_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=OUTPUT_SCORES_FILE):
        load_output_scores(tmp_path / OUTPUT_SCORES_FILE)
    root = tmp_path / "runs"
    RunDir(root / "r").write_config({}, kind="sae")
    (root / "r" / OUTPUT_SCORES_FILE).write_bytes(b"not safetensors")
    with pytest.raises(RunError, match=OUTPUT_SCORES_FILE):
        RunStore(root).output_scores("r")


@pytest.mark.parametrize("file", [OUTPUT_SCORES_FILE, ATTENTION_FILE, LADDER_FILE, LADDER_META_FILE])
def test_a_link_out_of_the_runs_folder_is_refused(tmp_path, file):
    assert file in RUN_FILES
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    root = tmp_path / "runs"
    RunDir(root / "r").write_config({}, kind="sae")
    os.symlink(outside, root / "r" / file)
    store = RunStore(root)
    with pytest.raises(RunError, match=f"{file} is a link out of the runs folder"):
        store.check_files("r")
    with pytest.raises(RunError, match="link out"):
        store.loaded("r", file, lambda p: p.read_bytes())
    assert (root / "r" / CONFIG_FILE).exists()


def test_a_hook_z_latent_scores_as_its_write_through_W_O_at_resid_mid():
    """Pushing z by a decoder row adds that row through W_O to the residual stream after attention:
    the same as pushing resid_mid by `decoder_in_residual`'s row, so the scores agree."""
    from workbench.sae.evaluate import decoder_in_residual

    model = toy_model()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 9, (4, 8), generator=g)
    tokens[:, 0] = 9
    z = SparseAutoencoder(SAEConfig(d_in=16, d_sae=6, k=2, hook_name="blocks.0.attn.hook_z")).double()
    mid = SparseAutoencoder(SAEConfig(d_in=16, d_sae=6, k=2, hook_name="blocks.0.hook_resid_mid")).double()
    with torch.no_grad():
        mid.W_dec.copy_(decoder_in_residual(model, z))
    a = output_scores(model, z, tokens, strength=3.0, k=2)
    b = output_scores(model, mid, tokens, strength=3.0, k=2)
    assert torch.equal(a.top_tokens, b.top_tokens)
    torch.testing.assert_close(a.score, b.score, rtol=1e-9, atol=1e-10)
    assert a.score.abs().max() > 1e-3  # the pushes move the output at all


def test_the_feature_api_returns_the_stored_value(evaluated):
    from workbench.viewer import api

    root = evaluated[0]
    stored = load_output_scores(root / "toy" / OUTPUT_SCORES_FILE).score
    assert api.feature(RunStore(root), "toy", str(ALIGNED))["output_score"] == float(stored[ALIGNED])
