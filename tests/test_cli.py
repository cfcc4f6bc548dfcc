import pytest

from workbench.__main__ import main
from workbench.sae import load_sae


@pytest.mark.slow
def test_train_sae_command_line_matches_config(tmp_path, default_models):
    out = tmp_path / "run"
    assert main(["train-sae", "--hook", "blocks.0.hook_resid_post", "--d-sae", "256", "--k", "8",
                 "--selection", "mutual_choice", "--total-tokens", "8192", "--batch-size", "4096",
                 "--out", str(out)]) == 0
    sae = load_sae(out)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k, sae.cfg.selection) == (128, 256, 8, "mutual_choice")
    # a complete run: evaluation, and on a byte model the usefulness metrics the viewer's panel reads
    from workbench.sae.saebench_json import read_run_evals
    assert (out / "results.json").exists() and (out / "features.safetensors").exists()
    evals = read_run_evals(out)
    assert evals is not None and len(evals["sparse_probing"]["tasks"]) >= 8
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post"
    with pytest.raises(KeyError, match="did you mean"):
        main(["train-sae", "--hook", "blocks.0.hook_resid_pots", "--d-sae", "256", "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_cache_acts_then_train_on_the_cache(tmp_path, default_models):
    from workbench.activations import CachedSource

    cache = tmp_path / "cache"
    assert main(["cache-acts", "--hook", "blocks.1.hook_resid_post", "--tokens", "8192", "--shard-tokens", "4096",
                 "--out", str(cache)]) == 0
    src = CachedSource(cache)
    assert (len(src.shards), src.d, src.n_tokens) == (2, 128, 8192)
    assert src.manifest["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    out = tmp_path / "run"
    assert main(["train-sae", "--cache", str(cache), "--d-sae", "256", "--k", "8", "--total-tokens", "8192",
                 "--batch-size", "1024", "--out", str(out)]) == 0
    sae = load_sae(out)
    assert (sae.cfg.d_in, sae.cfg.hook_name, sae.cfg.model_name) == (128, "blocks.1.hook_resid_post", "workbench-tiny")
    with pytest.raises(SystemExit, match="exactly one of --hook"):
        main(["train-sae", "--cache", str(cache), "--hook", "blocks.0.hook_resid_post", "--d-sae", "256",
              "--out", str(tmp_path / "x")])


def test_flags_carry_the_config_fields_documentation(capsys):
    with pytest.raises(SystemExit):
        main(["train-sae", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert '--parallel PARALLEL under torchrun: "data" (DDP, whole SAE per rank)' in out  # SAETrainConfig
    assert "a latent that has not fired for this many tokens is dead (default: 1000000)" in out  # SAEConfig
