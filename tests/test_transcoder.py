"""Transcoders on the one trainer: exact losses on every path, a planted MLP recovered, the store's
targets, the SAELens and circuit-tracer files, and the command line."""

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from workbench.activations import (
    ActivationStore,
    CachedSource,
    ModelSource,
    StoreConfig,
    TensorSource,
    cache_activations,
    capture_pair,
    stop_layer,
)
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, load_sae, save_sae, train_sae
from workbench.sae.trainer import make_optimizer, optimizer_step, sae_losses, use_triton

RULES = ("topk", "gradient", "mutual_choice", "feature_choice")


def _transcoder(rule, skip, d_in=12, d_out=10, F=40, k=4, seed=0):
    cfg = SAEConfig(d_in=d_in, d_sae=F, k=k, selection=rule, transcoder=True, skip=skip, d_out=d_out, beta=0.5)
    sae = SparseAutoencoder(cfg, seed=seed).double().train()
    with torch.no_grad():  # off the initial symmetric point: biases and a skip matrix that matter
        gen = torch.Generator().manual_seed(seed + 1)
        sae.b_enc.copy_(0.1 * torch.randn(F, generator=gen, dtype=torch.float64))
        sae.b_dec.copy_(torch.randn(d_out, generator=gen, dtype=torch.float64))
        sae.W_dec.copy_(torch.randn(F, d_out, generator=gen, dtype=torch.float64) / d_out**0.5)  # it starts at 0
        if skip:
            sae.W_skip.copy_(0.3 * torch.randn(d_out, d_in, generator=gen, dtype=torch.float64))
        sae.tokens_since_fired[:8] = 10**9  # dead: the aux loss has candidates
    return sae


def _reference(sae, x, y, mask):
    """ŷ = ReLU(x W_encᵀ + b_enc) on the mask, W_dec, + b_dec (+ x W_skipᵀ); the FVU of y."""
    pre = x @ sae.W_enc.T + sae.b_enc
    y_hat = torch.where(mask, pre.relu(), 0.0) @ sae.W_dec + sae.b_dec
    if sae.cfg.skip:
        y_hat = y_hat + x @ sae.W_skip.T
    return (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("skip", [False, True])
def test_dense_and_sparse_paths_agree_with_the_float64_reference(rule, skip):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 12, generator=gen, dtype=torch.float64)
    y = torch.randn(64, 10, generator=gen, dtype=torch.float64) + x[:, :10]
    g = torch.randn(64, 10, generator=gen, dtype=torch.float64)  # gradients at the target (d_out wide)
    grads = g if rule == "gradient" else None
    results = []
    for sparse in (False, True):
        sae = _transcoder(rule, skip)
        res = sae_losses(sae, x, grads, sparse=sparse, y=y)
        res.loss.backward()
        results.append((res, {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (dense, g_dense), (sparse, g_sparse) = results
    torch.testing.assert_close(sparse.loss, dense.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sparse.aux, dense.aux, rtol=1e-12, atol=1e-12)
    assert dense.aux > 0
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], rtol=1e-10, atol=1e-12, msg=name)
    # the FVU is the reference's on the rule's own mask; the encoder never reads b_dec
    sae = _transcoder(rule, skip)
    with torch.no_grad():
        mask = sae.select(sae.pre_acts(x), grads)
    torch.testing.assert_close(dense.fvu, _reference(sae, x, y, mask), rtol=1e-12, atol=1e-12)
    assert g_dense["b_dec"].shape == (10,) and (not skip or g_dense["W_skip"].abs().sum() > 0)


def test_a_transcoder_needs_its_target_and_the_torch_paths():
    sae = _transcoder("topk", False)
    with pytest.raises(ValueError, match="y: a transcoder"):
        sae_losses(sae, torch.randn(8, 12, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="not transcoders"):
        use_triton(SAETrainConfig(use_triton=True), sae.cfg)
    with pytest.raises(ValueError, match="decode"):
        _transcoder("topk", True).decode(torch.zeros(3, 40, dtype=torch.float64))
    with pytest.raises(ValueError, match="only a transcoder"):
        SAEConfig(d_in=8, d_sae=16, k=2, skip=True)
    assert SAEConfig(d_in=8, d_sae=16, k=2, target_hook="blocks.0.hook_mlp_out").transcoder
    store = ActivationStore(TensorSource(torch.randn(256, 12)), 64)
    with pytest.raises(ValueError, match="no targets"):
        train_sae(sae.cfg, SAETrainConfig(total_tokens=128, batch_size=64), store, progress=False)


# --- planted MLP -------------------------------------------------------------------------------


def planted_mlp(n: int, d: int = 32, active: float = 3.0, seed: int = 0, draw: int = 0):
    """Sparse input features x = Σ a_i e_i (a_i ~ U(0.5, 1.5) with probability active/d; the e_i
    an orthonormal basis, so each MLP detector reads its own feature), and the MLP
    y = Σ_i ReLU(⟨e_i, x⟩ − t_i) v_i with unit v_i and t_i ~ U(0.1, 0.3). `seed` fixes the MLP,
    `draw` the samples."""
    gen = torch.Generator().manual_seed(seed)
    E = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    V = torch.nn.functional.normalize(torch.randn(d, d, generator=gen), dim=1)
    t = 0.1 + 0.2 * torch.rand(d, generator=gen)
    gen = torch.Generator().manual_seed(1_000 + draw)
    on = torch.rand(n, d, generator=gen) < active / d
    a = torch.where(on, 0.5 + torch.rand(n, d, generator=gen), 0.0)
    x = a @ E
    y = (x @ E.T - t).relu() @ V
    return x, y, E, V


def mcc(learned: torch.Tensor, true: torch.Tensor) -> float:
    """Mean |cosine| of the true directions with learned ones, matched one to one (Hungarian)."""
    a = torch.nn.functional.normalize(learned.double(), dim=1)
    b = torch.nn.functional.normalize(true.double(), dim=1)
    sim = (b @ a.T).abs().numpy()
    rows, cols = linear_sum_assignment(-sim)
    return float(sim[rows, cols].mean())


def test_planted_mlp_encoder_and_decoder_recover_E_and_V():
    x, y, E, V = planted_mlp(40_000)
    store = ActivationStore(TensorSource(x, targets=y, chunk_size=20_000), 512, seed=0)
    cfg = SAEConfig(d_in=32, d_sae=64, k=6, transcoder=True, dead_tokens=10_000)
    train = SAETrainConfig(total_tokens=300 * 512, batch_size=512, lr=1e-2, warmup_steps=10, seed=0)
    sae = train_sae(cfg, train, store, progress=False)
    assert mcc(sae.W_dec.detach(), V) >= 0.9
    assert mcc(sae.W_enc.detach(), E) >= 0.9
    held_x, held_y, _, _ = planted_mlp(4000, draw=1)
    with torch.no_grad():
        err = (held_y - sae(held_x).x_hat).pow(2).sum() / (held_y - held_y.mean(0)).pow(2).sum()
    assert err < 0.05


# --- the store's targets -------------------------------------------------------------------


def test_stop_layer():
    assert stop_layer(["blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"]) == 1
    assert stop_layer(["blocks.3.hook_resid_post", "blocks.1.attn.hook_z"]) == 4
    assert stop_layer(["hook_embed"]) == 0
    assert stop_layer(["blocks.0.hook_resid_post", "ln_final.hook_normalized"]) is None


def test_targets_and_their_gradients_from_a_model(tiny_model, tmp_path):
    tokens = torch.randint(0, 257, (3, 12), generator=torch.Generator().manual_seed(0))
    hook, target = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    x, y, g = capture_pair(tiny_model, tokens, hook, target, with_grads=True)
    _, cache = tiny_model.run_with_cache(tokens)
    torch.testing.assert_close(x, cache[hook])
    torch.testing.assert_close(y, cache[target])
    torch.testing.assert_close(y, tiny_model.blocks[1].mlp(x))  # the MLP maps the one to the other
    # the gradient at the target is autograd's of the summed next-token loss
    leaf = cache[target].clone().requires_grad_(True)
    loss = tiny_model.run_with_hooks(
        tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(target, lambda a, hook: leaf)]
    )
    (want,) = torch.autograd.grad(loss.sum(), leaf)
    torch.testing.assert_close(g, want)
    x0, y0, none = capture_pair(tiny_model, tokens, hook, target)  # stops after block 1: the same rows
    assert none is None
    torch.testing.assert_close(x0, x)
    torch.testing.assert_close(y0, y)
    # a live source and its disk cache give the same batches, targets and gradients included
    stream = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(1))
    cfg = StoreConfig(hook, batch_size=64, buffer_tokens=256, seq_len=16, target_hook=target, with_grads=True)
    src = ModelSource(tiny_model, stream, cfg, bos_token_id=256)
    cache_activations(src, tmp_path / "c", 2, progress=False)
    back = CachedSource(tmp_path / "c")
    assert (back.has_targets, back.d_out) == (True, 32)
    live, disk = ActivationStore(src, 64, seed=1), ActivationStore(back, 64, seed=1)
    for _ in range(5):
        a, b = next(live), next(disk)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v)
    torch.testing.assert_close(disk.head_targets(10), src.chunk(0).targets[:10])


# --- files ---------------------------------------------------------------------------------


def _trained_like(rule, skip, layer=0, seed=0):
    sae = _transcoder(rule, skip, d_in=12, d_out=12, seed=seed).eval()
    cfg = sae.cfg
    sae.cfg = SAEConfig(
        **{
            **cfg.__dict__,
            "d_out": None,
            "hook_name": f"blocks.{layer}.ln2.hook_normalized",
            "target_hook": f"blocks.{layer}.hook_mlp_out",
            "model_name": "tiny",
        }
    )
    with torch.no_grad():
        sae.threshold.copy_(0.05 + 0.2 * torch.rand(cfg.d_sae, generator=torch.Generator().manual_seed(seed)))
    return sae


@pytest.mark.parametrize("skip", [False, True])
def test_saelens_transcoder_round_trip(skip, tmp_path):
    from sae_lens import SAE

    from workbench.sae import from_saelens, to_saelens

    sae = _trained_like("mutual_choice", skip)
    x = torch.randn(50, 12, dtype=torch.float64)
    to_saelens(sae, tmp_path / "lens")
    lens = SAE.load_from_disk(tmp_path / "lens")
    assert lens.cfg.architecture() == ("jumprelu_skip_transcoder" if skip else "jumprelu_transcoder")
    with torch.no_grad():
        want = sae(x).x_hat
        torch.testing.assert_close(lens(x), want, rtol=1e-12, atol=1e-12)
        back = from_saelens(tmp_path / "lens")
        torch.testing.assert_close(back(x).x_hat, want, rtol=1e-12, atol=1e-12)
    assert (back.cfg.selection, back.cfg.skip, back.cfg.target_hook) == ("mutual_choice", skip, "blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="per-token top-k"):
        to_saelens(_trained_like("topk", skip), tmp_path / "topk")


def test_circuit_tracer_layout_round_trip(tmp_path):
    from safetensors.torch import load_file

    from workbench.sae.transcoder_io import from_circuit_tracer, to_circuit_tracer

    saes = {layer: _trained_like("feature_choice", True, layer, seed=layer) for layer in range(2)}
    to_circuit_tracer(saes, tmp_path / "ct")
    import yaml

    config = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert (config["model_kind"], config["feature_input_hook"], config["feature_output_hook"]) == (
        "transcoder_set",
        "ln2.hook_normalized",
        "hook_mlp_out",
    )
    x = torch.randn(40, 12, dtype=torch.float64)
    back = from_circuit_tracer(tmp_path / "ct")
    for layer, sae in saes.items():
        # SingleLayerTranscoder: F.linear(x, W_enc, b_enc), JumpReLU x·(x > θ), acts @ W_dec + b_dec + x @ W_skipᵀ
        t = load_file(str(tmp_path / "ct" / f"layer_{layer}.safetensors"))
        assert set(t) == {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip", "activation_function.threshold"}
        pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
        acts = pre * (pre > t["activation_function.threshold"])
        theirs = acts @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T
        with torch.no_grad():
            torch.testing.assert_close(sae(x).x_hat, theirs, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(back[layer](x).x_hat, theirs, rtol=1e-12, atol=1e-12)
        assert back[layer].cfg.hook_name == f"blocks.{layer}.ln2.hook_normalized"
    with pytest.raises(ValueError, match="0..n-1"):
        to_circuit_tracer({1: saes[1]}, tmp_path / "gap")


def test_workbench_format_holds_every_transcoder(tmp_path):
    sae = _transcoder("topk", True, d_in=12, d_out=10).eval()
    save_sae(sae, tmp_path / "s")
    back = load_sae(tmp_path / "s")
    x = torch.randn(30, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(back(x).x_hat, sae(x).x_hat)
    assert back.cfg == sae.cfg


# --- command line --------------------------------------------------------------------------


def test_train_a_skip_transcoder_from_the_command_line(tiny_model, tmp_path):
    from workbench.__main__ import main

    stream = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(1))
    hook, target = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    cfg = StoreConfig(hook, buffer_tokens=1024, seq_len=16, target_hook=target)
    meta = {"hook_name": hook, "model": "tiny"}
    cache_activations(ModelSource(tiny_model, stream, cfg, 256), tmp_path / "c", 2, metadata=meta, progress=False)
    argv = ["train-sae", "--cache", str(tmp_path / "c"), "--target-hook", target, "--skip"]
    argv += ["--d-sae", "64", "--k", "4", "--selection", "mutual_choice", "--total-tokens", "8192", "--lr", "3e-3"]
    argv += ["--batch-size", "256", "--no-eval", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    sae = load_sae(tmp_path / "run")
    assert (sae.cfg.transcoder, sae.cfg.skip, sae.cfg.target_hook, sae.cfg.hook_name) == (True, True, target, hook)
    batch = next(ActivationStore(CachedSource(tmp_path / "c"), 512, seed=5))
    with torch.no_grad():
        fvu = (batch.targets - sae(batch.acts).x_hat).pow(2).sum() / (batch.targets - batch.targets.mean(0)).pow(
            2
        ).sum()
    assert fvu < 0.9  # it learned to predict the MLP's output from its input


def test_transcoder_steps_reduce_the_loss():
    """A few optimizer steps on a fixed batch lower the FVU of y on the sparse path (skip: W_skip moves)."""
    x, y, _, _ = planted_mlp(2048, draw=3)
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, k=4, transcoder=True, skip=True)).train()
    cfg = SAETrainConfig(batch_size=2048, lr=5e-3, warmup_steps=1)
    opt = make_optimizer(sae, cfg)
    first = None
    for step in range(30):
        res = sae_losses(sae, x, None, sparse=True, y=y)
        first = float(res.fvu) if first is None else first
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        optimizer_step(sae, opt, cfg, step)
    assert float(res.fvu) < 0.5 * first and sae.W_skip.abs().sum() > 0


def test_train_a_transcoder_on_a_live_model_from_the_command_line(tmp_path):
    """--hook and --target-hook without a cache: the live store yields the MLP outputs as targets
    (before, it yielded none and training stopped with "the store yields no targets")."""
    from workbench.__main__ import main

    hook, target = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    argv = ["train-sae", "--model", "workbench-tiny", "--hook", hook, "--target-hook", target]
    argv += ["--d-sae", "64", "--k", "4", "--total-tokens", "8192", "--batch-size", "256", "--buffer-tokens", "2048"]
    argv += ["--no-eval", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    sae = load_sae(tmp_path / "run")
    assert (sae.cfg.transcoder, sae.cfg.target_hook, sae.cfg.hook_name) == (True, target, hook)
