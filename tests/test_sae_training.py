"""SAE module, losses, trainer, resume and SAELens interop."""

import pytest
import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.runs import CheckpointError, RunDir
from workbench.sae import (
    SAEConfig,
    SAETrainConfig,
    SparseAutoencoder,
    from_saelens,
    load_sae,
    save_sae,
    to_saelens,
    train_sae,
)
from workbench.sae.losses import aux_loss, aux_zipf_weights, auxk_weights, fvu, zipf_expected
from workbench.tasks import SuperpositionConfig, mmcs, superposition_data

SYN = SuperpositionConfig()


@pytest.fixture(scope="module")
def synthetic():
    return superposition_data(SYN, 200_000)


def _store(data, batch=1024, seed=0):
    return ActivationStore(TensorSource(data.acts, data.grads, chunk_size=50_000), batch, seed=seed)


@pytest.mark.parametrize("rule", ["topk", "gradient", "mutual_choice", "feature_choice"])
def test_every_variant_recovers_planted_features(synthetic, rule):
    cfg = SAEConfig(d_in=SYN.d, d_sae=192, k=4, selection=rule, dead_tokens=20_000)
    train = SAETrainConfig(total_tokens=200 * 1024, batch_size=1024, lr=4e-3, warmup_steps=20)
    sae = train_sae(cfg, train, _store(synthetic), progress=False)
    score = mmcs(sae.W_dec.detach(), synthetic.features)
    x = synthetic.acts[:10_000]
    out = sae(x)
    print(f"{rule}: MMCS {score:.3f}, FVU {fvu(x, out.x_hat).item():.3f}")
    assert score >= 0.9
    assert fvu(x, out.x_hat) < 0.5
    l0 = (out.z > 0).float().sum(1).mean().item()
    assert abs(l0 - 4) < 0.6  # MC/FC's learned JumpReLU threshold keeps k active on average
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(192), atol=1e-5)


def test_auxk_gradient_reaches_encoder_of_dead_latents_only():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=2))
    x = torch.randn(64, 8)
    out = sae.train()(x)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 7, 20]] = True
    loss = aux_loss(out.pre, x - out.x_hat, sae.W_dec, auxk_weights(dead), k_aux=4)
    loss.backward()
    enc_rows = sae.W_enc.grad.abs().sum(1) > 0
    assert enc_rows[dead].all() and not enc_rows[~dead].any()
    assert (sae.b_enc.grad[dead] != 0).all()
    assert (sae.W_dec.grad.abs().sum(1) > 0)[dead].all()
    # ê excludes b_dec (e already does): with the encoder path cut, b_dec gets no gradient
    sae.zero_grad(set_to_none=True)
    aux_loss(out.pre.detach(), x - out.x_hat, sae.W_dec, auxk_weights(dead), k_aux=4).backward()
    assert sae.b_dec.grad is None


def test_aux_zipf_weights_and_gradient():
    usage = torch.tensor([0.5, 0.3, 0.2, 0.1, 0.05, 0.001, 0.0, 0.0])
    dead = usage == 0
    w = aux_zipf_weights(usage, dead, k=1.151)
    expected = zipf_expected(usage, 1.151)
    assert torch.isclose(expected.sum(), torch.tensor(1.151))
    assert (w[dead] == 1).all()
    assert (w[~dead] >= 0).all() and (w <= 1).all()
    under = (expected > usage) & ~dead
    assert torch.allclose(w[under], ((expected - usage) / expected)[under])
    assert w[5] > 0.5 and w[0] == 0  # far below its expectation vs. the most used latent
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8, k=2))
    x = torch.randn(32, 4)
    out = sae.train()(x)
    aux_loss(out.pre, x - out.x_hat, sae.W_dec, w, k_aux=3).backward()
    assert (sae.W_enc.grad.abs().sum(1) > 0)[w > 0].any()
    assert not (sae.W_enc.grad.abs().sum(1) > 0)[w == 0].any()


@pytest.mark.parametrize("rule,aux", [("topk", "auxk"), ("mutual_choice", "aux_zipf"), ("feature_choice", "auxk")])
def test_resumed_training_equals_uninterrupted(tmp_path, synthetic, rule, aux):
    cfg = SAEConfig(d_in=SYN.d, d_sae=64, k=3, selection=rule, aux=aux, dead_tokens=2048)
    train = SAETrainConfig(
        total_tokens=12 * 512, batch_size=512, lr=3e-3, warmup_steps=3, checkpoint_every=5, log_every=1
    )
    straight = train_sae(cfg, train, _store(synthetic, 512), RunDir(tmp_path / "a"), progress=False)
    run = RunDir(tmp_path / "b")
    train_sae(cfg, train, _store(synthetic, 512), run, stop_after=7, progress=False)
    resumed = train_sae(cfg, train, _store(synthetic, 512), run, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [m["step"] for m in run.metrics()] == list(range(12))
    assert torch.equal(load_sae(run.path).W_enc, straight.W_enc)


def test_saelens_round_trip_topk_and_mutual_choice(tmp_path, synthetic):
    from sae_lens import SAE

    x = synthetic.acts[:256]
    for rule in ["topk", "mutual_choice"]:
        cfg = SAEConfig(d_in=SYN.d, d_sae=64, k=3, selection=rule, hook_name="blocks.0.hook_resid_post")
        sae = train_sae(
            cfg, SAETrainConfig(total_tokens=20 * 512, batch_size=512, lr=3e-3), _store(synthetic, 512), progress=False
        )
        if rule == "mutual_choice":
            assert (sae.threshold > 0).all()
        to_saelens(sae, tmp_path / rule)
        lens = SAE.load_from_disk(tmp_path / rule)
        assert lens.cfg.architecture() == ("topk" if rule == "topk" else "jumprelu")
        with torch.no_grad():
            torch.testing.assert_close(lens.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lens.decode(lens.encode(x)), sae(x).x_hat, atol=1e-5, rtol=1e-5)


def test_load_saelens_topk_into_workbench(tmp_path):
    from sae_lens import TopKSAE
    from sae_lens.saes.topk_sae import TopKSAEConfig

    torch.manual_seed(0)
    lens = TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=5))
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn_like(p))
    lens.save_model(tmp_path / "lens")
    ours = from_saelens(tmp_path / "lens")
    x = torch.randn(100, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), lens.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x).x_hat, lens.decode(lens.encode(x)), atol=1e-5, rtol=1e-5)


def test_bad_configs_and_files_fail_clearly(tmp_path, synthetic):
    with pytest.raises(ValueError, match="smaller than the dictionary"):
        SAEConfig(d_in=8, d_sae=16, k=16)
    with pytest.raises(ValueError, match="selection"):
        SAEConfig(d_in=8, d_sae=16, k=2, selection="batchtopk")
    with pytest.raises(ValueError, match="d_in"):
        train_sae(SAEConfig(d_in=7, d_sae=16, k=2), SAETrainConfig(batch_size=1024), _store(synthetic), progress=False)
    no_grads = ActivationStore(TensorSource(synthetic.acts), 1024)
    with pytest.raises(ValueError, match="with_grads"):
        train_sae(
            SAEConfig(d_in=SYN.d, d_sae=64, k=2, selection="gradient"),
            SAETrainConfig(batch_size=1024),
            no_grads,
            progress=False,
        )
    with pytest.raises(ValueError, match="triton_precision='fp16'"):
        train_sae(
            SAEConfig(d_in=SYN.d, d_sae=64, k=2),
            SAETrainConfig(batch_size=1024, triton_precision="fp16"),
            _store(synthetic),
            progress=False,
        )
    with pytest.raises(ValueError, match="triton_aux='sparse'"):
        train_sae(
            SAEConfig(d_in=SYN.d, d_sae=64, k=2),
            SAETrainConfig(batch_size=1024, triton_aux="sparse"),
            _store(synthetic),
            progress=False,
        )
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2))
    with pytest.raises(ValueError, match=r"x: expected \[batch, 8\]"):
        sae(torch.randn(4, 9))
    save_sae(sae, tmp_path / "s")
    (tmp_path / "s" / "sae.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_sae(tmp_path / "s")
    (tmp_path / "lens").mkdir()
    (tmp_path / "lens" / "cfg.json").write_text('{"architecture": "gated"}')
    with pytest.raises(CheckpointError, match="from_saelens"):
        load_sae(tmp_path / "lens")
    with pytest.raises(CheckpointError, match="gated"):
        from_saelens(tmp_path / "lens")
