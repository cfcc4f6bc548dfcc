"""Transcoder evaluation (sae/transcoder_eval.py, run_eval) against planted ground truth on a tiny
float64 model whose MLPs are ReLU layers: a transcoder holding an MLP's own weights predicts its
output exactly (FVU 0, CE loss recovered 1); a zero one is zero ablation (recovered 0); a random
one's CE equals a direct splice of its ŷ at the MLP's output; the skip term counts; a run
evaluated through train-sae round-trips its metrics through files and opens in the viewer."""

import json

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.corpus import ByteTokenizer
from workbench.results import read_results
from workbench.runs import RunDir
from workbench.sae.config import SAEConfig
from workbench.sae.evaluate import FeatureTable, feature_activations, reconstruction_metrics
from workbench.sae.model import SparseAutoencoder
from workbench.sae.run_eval import evaluate_sae
from workbench.sae.transcoder_eval import ce_recovered_many, mlp_pairs, transcoder_hooks
from workbench.steer.directions import load_output_scores

D, M, V, T = 16, 24, 23, 10  # d_model, d_mlp, vocabulary, window length (BOS + 9)


def _hooks(layer: int) -> tuple[str, str]:
    return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D,
        n_heads=2,
        d_head=8,
        d_mlp=M,
        n_ctx=T,
        d_vocab=V,
        act_fn="relu",
        normalization_type="LN",
        initializer_range=0.4,
        dtype=torch.float64,
        seed=0,
        device="cpu",
    )
    m = HookedTransformer(cfg).eval()
    m.requires_grad_(False)
    with torch.no_grad():
        for block in m.blocks:  # biases, so b_enc and b_dec matter
            block.mlp.b_in.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
            block.mlp.b_out.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    return m


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    toks = torch.randint(0, V, (9, T), generator=torch.Generator().manual_seed(0))
    toks[:, 0] = 0  # BOS
    return toks


def _transcoder(layer: int, skip: bool = False, seed: int = 0) -> SparseAutoencoder:
    """A zero transcoder of d_sae = d_mlp + 1, k = d_mlp (TopK needs k < d_sae)."""
    hook, target = _hooks(layer)
    cfg = SAEConfig(d_in=D, d_sae=M + 1, k=M, hook_name=hook, target_hook=target, skip=skip)
    tc = SparseAutoencoder(cfg, seed=seed).double().eval()
    tc.requires_grad_(False)
    with torch.no_grad():
        tc.W_enc.zero_()
    return tc


def _exact(model, layer: int, skip: bool = False) -> SparseAutoencoder:
    """The MLP itself: W_enc = W_inᵀ, b_enc = b_in, W_dec = W_out, b_dec = b_out; the one spare
    latent never fires (b_enc -1e6), so TopK keeps all d_mlp hidden units and ReLU is the MLP's."""
    tc, mlp = _transcoder(layer, skip), model.blocks[layer].mlp
    with torch.no_grad():
        tc.W_enc[:M] = mlp.W_in.T
        tc.b_enc[:M] = mlp.b_in
        tc.b_enc[M] = -1e6
        tc.W_dec[:M] = mlp.W_out
        tc.b_dec.copy_(mlp.b_out)
    return tc


def _random(layer: int, seed: int = 3) -> SparseAutoencoder:
    tc = _transcoder(layer, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tc.W_enc.normal_(0, 0.5, generator=gen)
        tc.W_dec.normal_(0, 0.3, generator=gen)
        tc.b_dec.normal_(0, 0.2, generator=gen)
    return tc


def _ce(model, tokens, fwd_hooks=()) -> float:
    """Mean next-token CE over every prediction, by TransformerLens' own loss."""
    return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=list(fwd_hooks)))


def _set_after_bos(value):
    def hook(act, hook):
        out = act.clone()
        out[:, 1:] = value[:, 1:] if torch.is_tensor(value) and value.ndim == 3 else value
        return out

    return hook


def test_the_mlps_own_weights_recover_everything(model, tokens):
    tcs = [_exact(model, 0), _exact(model, 1)]
    for tc in tcs:
        rec = reconstruction_metrics(tc, mlp_pairs(model, tc, tokens, batch_size=4))
        assert rec["fvu"] < 1e-20 and rec["cos_sim"] == pytest.approx(1, abs=1e-12)
        assert rec["l0"] > 0 and rec["dead_frac"] == pytest.approx(1 / (M + 1))  # the spare latent only
    got = ce_recovered_many(model, tcs, tokens, batch_size=4)
    assert got.ce_sae == pytest.approx(got.ce_clean, abs=1e-12) and got.kl_sae < 1e-12
    assert got.ce_loss_recovered == pytest.approx(1, abs=1e-10)
    assert got.ce_loss_recovered_vs_mean == pytest.approx(1, abs=1e-10)
    # the comparison points against direct splices: both MLP outputs zeroed, or set to their means
    _, cache = model.run_with_cache(tokens)
    targets = [tc.cfg.target_hook for tc in tcs]
    zero = _ce(model, tokens, [(t, _set_after_bos(0.0)) for t in targets])
    mean = _ce(model, tokens, [(t, _set_after_bos(cache[t][:, 1:].mean((0, 1)))) for t in targets])
    assert (got.ce_clean, got.ce_zero_ablation, got.ce_mean_ablation) == pytest.approx(
        (_ce(model, tokens), zero, mean), abs=1e-12
    )
    assert abs(zero - got.ce_clean) > 0.05  # the MLPs matter: "recovered" measures something


def test_a_zero_transcoder_is_zero_ablation(model, tokens):
    got = ce_recovered_many(model, [_transcoder(1)], tokens)
    assert got.ce_sae == pytest.approx(got.ce_zero_ablation, abs=1e-12)
    assert got.ce_loss_recovered == pytest.approx(0, abs=1e-10)
    gap = got.ce_mean_ablation - got.ce_clean
    assert got.ce_loss_recovered_vs_mean == pytest.approx((got.ce_mean_ablation - got.ce_sae) / gap, abs=1e-12)


def test_the_splice_writes_y_hat_at_the_target_from_x_of_the_same_forward(model, tokens):
    tc = _random(0)
    hook, target = _hooks(0)
    _, cache = model.run_with_cache(tokens)
    x = cache[hook]
    with torch.no_grad():
        y_hat = tc(x.reshape(-1, D)).x_hat.reshape(x.shape)
    seen = {}
    keep = lambda name: lambda act, hook: seen.__setitem__(name, act.clone())  # noqa: E731
    model.run_with_hooks(tokens, fwd_hooks=transcoder_hooks([tc]) + [(hook, keep(hook)), (target, keep(target))])
    torch.testing.assert_close(seen[hook], x, rtol=0, atol=1e-12)  # the input is read, not written
    torch.testing.assert_close(seen[target][:, 1:], y_hat[:, 1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(seen[target][:, 0], cache[target][:, 0], rtol=0, atol=1e-12)  # BOS clean
    want = _ce(model, tokens, [(target, _set_after_bos(y_hat))])
    assert ce_recovered_many(model, [tc], tokens).ce_sae == pytest.approx(want, abs=1e-12)
    assert abs(want - _ce(model, tokens, [(hook, _set_after_bos(y_hat))])) > 1e-3  # where it writes shows
    # layer 1's transcoder reads layer 1's input as layer 0's replacement left it: an exact layer-1
    # transcoder then changes nothing more (with the clean input it would)
    both = ce_recovered_many(model, [tc, _exact(model, 1)], tokens)
    assert both.ce_sae == pytest.approx(want, abs=1e-12)


def test_a_target_before_its_input_is_refused(model, tokens):
    tc = _transcoder(0)
    tc.cfg = SAEConfig(**{**tc.cfg.__dict__, "hook_name": "blocks.0.hook_resid_post"})
    with pytest.raises(ValueError, match="ran before its input blocks.0.hook_resid_post"):
        ce_recovered_many(model, [tc], tokens)
    with pytest.raises(ValueError, match="write the same target"):
        ce_recovered_many(model, [_transcoder(0), _transcoder(0)], tokens)
    with pytest.raises(ValueError, match="expected a transcoder"):
        ce_recovered_many(model, [SparseAutoencoder(SAEConfig(d_in=D, d_sae=8, k=2, hook_name=_hooks(0)[0]))], tokens)


def test_the_skip_term_counts(model, tokens):
    tc = _exact(model, 1, skip=True)
    A = 0.3 * torch.randn(D, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        tc.W_skip.copy_(A)
    pairs = mlp_pairs(model, tc, tokens)
    x, y = torch.cat([b.acts for b in pairs]), torch.cat([b.targets for b in pairs])
    want = (x @ A.T).pow(2).sum() / (y - y.mean(0)).pow(2).sum()  # ŷ - y = x Aᵀ exactly
    assert reconstruction_metrics(tc, pairs)["fvu"] == pytest.approx(float(want), rel=1e-10) and want > 0.01
    hook, target = _hooks(1)
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        y_hat = cache[target] + cache[hook] @ A.T  # layer 0 is clean: layer 1's input is the clean one
    spliced = ce_recovered_many(model, [tc], tokens).ce_sae
    assert spliced == pytest.approx(_ce(model, tokens, [(target, _set_after_bos(y_hat))]), abs=1e-12)
    assert abs(spliced - _ce(model, tokens)) > 1e-3


def test_evaluate_sae_writes_a_transcoders_files(model, tokens, tmp_path):
    tc = _random(1)
    res = evaluate_sae(tmp_path / "run", model, tc, ByteTokenizer(), tokens, progress=False)
    back = read_results(RunDir(tmp_path / "run"), kind="sae")
    assert back == res
    splice = ce_recovered_many(model, [tc], tokens)
    assert (back.ce_sae, back.ce_loss_recovered) == pytest.approx((splice.ce_sae, splice.ce_loss_recovered), abs=1e-12)
    assert back.fvu == pytest.approx(reconstruction_metrics(tc, mlp_pairs(model, tc, tokens))["fvu"], rel=1e-12)
    table = FeatureTable.load(tmp_path / "run" / "features.safetensors")
    z = feature_activations(model, tc, tc.cfg.hook_name, tokens)  # the encoder reads x at hook_name
    torch.testing.assert_close(table.density, (z[:, 1:] > 0).double().mean((0, 1)).float())
    scores = load_output_scores(tmp_path / "run" / "output_scores.safetensors")
    assert scores.score.shape == (M + 1,) and torch.isfinite(scores.score).all()
    assert not (tmp_path / "run" / "usefulness.json").exists()


def test_train_sae_evaluates_a_transcoder_and_the_viewer_opens_it(tmp_path):
    from starlette.testclient import TestClient

    from workbench.__main__ import main
    from workbench.activations import ModelSource, StoreConfig, cache_activations
    from workbench.hub import load_default
    from workbench.viewer.server import create_app

    hook, target = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    stream = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(1))
    src = ModelSource(
        load_default(), stream, StoreConfig(hook, buffer_tokens=1024, seq_len=32, target_hook=target), 256
    )
    meta = {"hook_name": hook, "model": "workbench-tiny"}
    cache_activations(src, tmp_path / "c", 1, metadata=meta, progress=False)
    out = tmp_path / "runs" / "tc"
    argv = ["train-sae", "--cache", str(tmp_path / "c"), "--target-hook", target, "--d-sae", "64", "--k", "4"]
    argv += ["--total-tokens", "2048", "--batch-size", "256", "--lr", "3e-3", "--eval-windows", "3", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 < results["fvu"] < 1.5 and results["ce_clean"] > 0 and results["eval_windows"] == 3
    assert results["ce_loss_recovered"] is not None and (out / "features.safetensors").is_file()
    page = TestClient(create_app(out.parent), base_url="http://127.0.0.1").get(f"/run/{out.name}")
    assert page.status_code == 200 and f"<th>fvu</th><td>{results['fvu']:.4g}</td>" in page.text


def test_the_same_figures_on_a_transformer_bridge():
    from workbench.bridge import as_bridge
    from workbench.models import ModelConfig, new_model

    from .conftest import TINY_KW

    hooked = new_model(ModelConfig(**TINY_KW), seed=0).double().eval()
    with torch.no_grad():
        for p in hooked.parameters():  # nonzero biases: a misplaced one would show
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7), dtype=p.dtype))
    bridge = as_bridge(hooked)
    d = TINY_KW["d_model"]
    tcs = []
    for layer in range(2):
        hook, target = _hooks(layer)
        tc = SparseAutoencoder(SAEConfig(d_in=d, d_sae=40, k=4, hook_name=hook, target_hook=target, skip=True))
        with torch.no_grad():
            for p in tc.parameters():
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(layer))
        tcs.append(tc.double().eval())
    toks = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    toks[:, 0] = 256
    ref, got = (ce_recovered_many(m, tcs, toks) for m in (hooked, bridge))
    # the bridge's float64 pass differs from HookedTransformer's in the 8th digit (CE ~1e-8 apart)
    assert tuple(got) == pytest.approx(tuple(ref), rel=1e-6, abs=1e-7) and abs(ref.ce_sae - ref.ce_clean) > 1e-3
    for a, b in zip(mlp_pairs(hooked, tcs[1], toks), mlp_pairs(bridge, tcs[1], toks)):
        torch.testing.assert_close(b.targets, a.targets, rtol=0, atol=1e-6)
