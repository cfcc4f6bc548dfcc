"""SAELens I/O: every SAELens config field that changes what a TopK SAE computes is translated or
refused. SAEs here are built with SAELens' own classes, saved by SAELens and read back with
`SAE.load_from_disk`; SAELens' `encode`/`decode` are the reference, with non-zero biases and
decoder rows of assorted norms, in float64 where the comparison should be exact."""

import pytest
import torch

from workbench.runs import CheckpointError
from workbench.sae import SAEConfig, SparseAutoencoder, from_saelens, load_sae, save_sae, to_saelens

D, F, K = 12, 40, 5


def _random_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter: non-zero biases, decoder rows with norms spread over [0.3, 3]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        W_dec = module.W_dec
        norms = 0.3 + 2.7 * torch.rand(W_dec.shape[0], generator=gen, dtype=torch.float64)
        W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True) * norms[:, None].to(W_dec.dtype))
        module.b_dec.mul_(3.0)  # large enough that subtracting it or not moves the top k


def _saelens_topk(folder, seed=0, **fields):
    from sae_lens import SAE, TopKSAE
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAEConfig

    meta = SAEMetadata(
        hook_name=fields.pop("hook_name", "blocks.0.hook_resid_post"),
        **({"hook_head_index": fields.pop("hook_head_index")} if "hook_head_index" in fields else {}),
    )
    lens = TopKSAE(TopKSAEConfig(d_in=D, d_sae=F, k=K, metadata=meta, **fields))
    _random_(lens, seed)
    lens.save_model(folder)
    return SAE.load_from_disk(folder)


def _inputs(dtype, n=300, seed=1):
    return 2.0 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("rescale", [False, True])
def test_from_saelens_matches_saelens_encode_and_decode(tmp_path, dtype, apply_b_dec, rescale):
    lens = _saelens_topk(
        tmp_path / "lens", dtype=dtype, apply_b_dec_to_input=apply_b_dec, rescale_acts_by_decoder_norm=rescale
    )
    assert lens.cfg.apply_b_dec_to_input is apply_b_dec and lens.cfg.rescale_acts_by_decoder_norm is rescale
    ours = from_saelens(tmp_path / "lens")
    assert ours.W_enc.dtype == getattr(torch, dtype)
    x = _inputs(getattr(torch, dtype))
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == "float64" else dict(atol=2e-5, rtol=2e-5)
    with torch.no_grad():
        z_lens = lens.encode(x)
        z = ours.encode(x)
        assert torch.equal(z > 0, z_lens > 0)  # the same latents fire
        torch.testing.assert_close(z, z_lens, **tol)
        torch.testing.assert_close(ours.decode(z), lens.decode(z_lens), **tol)
        torch.testing.assert_close(ours(x).x_hat, lens(x), **tol)
    if rescale:  # folding the decoder norms leaves our rows at unit norm, as the trainer keeps them
        torch.testing.assert_close(ours.W_dec.norm(dim=1), torch.ones(F, dtype=ours.W_dec.dtype))


def test_from_saelens_upcasts_bfloat16_exactly(tmp_path):
    from sae_lens import SAE

    _saelens_topk(tmp_path / "lens", dtype="bfloat16", apply_b_dec_to_input=False)
    ours = from_saelens(tmp_path / "lens")
    assert ours.W_enc.dtype == torch.float32
    lens32 = SAE.load_from_disk(tmp_path / "lens", dtype="float32")  # SAELens' own float32 of the same weights
    x = _inputs(torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), lens32.encode(x), atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(ours(x).x_hat, lens32(x), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(normalize_activations="constant_norm_rescale"), "normalize_activations='constant_norm_rescale'"),
        (dict(normalize_activations="layer_norm"), "normalize_activations='layer_norm'"),
        (dict(normalize_activations="expected_average_only_in"), "normalize_activations='expected_average_only_in'"),
        (dict(normalize_activations="covariance_whitening"), "normalize_activations='covariance_whitening'"),
        (dict(hook_head_index=3, hook_name="blocks.0.attn.hook_z"), "hook_head_index=3"),
    ],
)
def test_from_saelens_refuses_what_it_cannot_translate(tmp_path, fields, match):
    _saelens_topk(tmp_path / "lens", **fields)
    with pytest.raises(CheckpointError, match=f"{match} cannot be translated"):
        from_saelens(tmp_path / "lens")


def test_from_saelens_refuses_other_architectures_and_zero_decoder_rows(tmp_path):
    from sae_lens import JumpReLUSAE, StandardSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAEConfig

    JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=F)).save_model(tmp_path / "jump")
    StandardSAE(StandardSAEConfig(d_in=D, d_sae=F)).save_model(tmp_path / "std")
    for name, arch in [("jump", "jumprelu"), ("std", "standard")]:
        with pytest.raises(CheckpointError, match=f"architecture '{arch}' is not supported"):
            from_saelens(tmp_path / name)
    from sae_lens import TopKSAE
    from sae_lens.saes.topk_sae import TopKSAEConfig

    lens = TopKSAE(TopKSAEConfig(d_in=D, d_sae=F, k=K, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        lens.W_dec[7] = 0.0
    lens.save_model(tmp_path / "zero")
    with pytest.raises(CheckpointError, match="rescale_acts_by_decoder_norm=True cannot be translated"):
        from_saelens(tmp_path / "zero")


@pytest.mark.parametrize("selection", ["topk", "gradient", "mutual_choice", "feature_choice"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_to_saelens_matches_ours_through_saelens_files(tmp_path, selection, dtype):
    from sae_lens import SAE

    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=F, k=K, selection=selection, hook_name="blocks.0.hook_mlp_out"))
    sae = sae.to(dtype)
    _random_(sae, seed=2)
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(F, dtype=dtype) * 2.0)  # MC/FC's JumpReLU; unused by TopK
    to_saelens(sae, tmp_path / "lens")
    lens = SAE.load_from_disk(tmp_path / "lens")
    c = lens.cfg
    assert (c.architecture(), c.dtype) == (
        "topk" if selection in ("topk", "gradient") else "jumprelu",
        str(dtype).removeprefix("torch."),
    )
    assert (c.apply_b_dec_to_input, c.normalize_activations, c.reshape_activations) == (True, "none", "none")
    assert getattr(c, "rescale_acts_by_decoder_norm", False) is False
    assert c.metadata.hook_name == "blocks.0.hook_mlp_out" and c.metadata.hook_head_index is None
    x = _inputs(dtype)
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    sae.eval()
    with torch.no_grad():
        z = sae.encode(x)
        assert 0 < int((z > 0).sum()) < z.numel()
        torch.testing.assert_close(lens.encode(x), z, **tol)
        torch.testing.assert_close(lens(x), sae(x).x_hat, **tol)
    if selection == "topk":  # and back: the same parameters
        back = from_saelens(tmp_path / "lens")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(getattr(back, name), getattr(sae, name)), name


def test_to_saelens_refuses_what_saelens_cannot_compute(tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=F, k=K, selection="mutual_choice"))
    with torch.no_grad():
        sae.threshold[3] = -0.5
    with pytest.raises(ValueError, match="negative JumpReLU thresholds"):
        to_saelens(sae, tmp_path / "neg")
    with pytest.raises(ValueError, match="bfloat16"):
        to_saelens(SparseAutoencoder(SAEConfig(d_in=D, d_sae=F, k=K)).to(torch.bfloat16), tmp_path / "bf16")


HEADS, D_HEAD = 3, 4  # a hook_z SAE on D = 12: three heads of 4 side by side


@pytest.mark.parametrize("reshape", ["hook_z", "none"])
def test_from_saelens_reads_hook_z_saes_as_concatenated_heads(tmp_path, reshape):
    """SAELens' hook_z SAE flattens [..., n_heads, d_head] itself ("hook_z") or is fed its store's
    flattened rows ("none"); either way ours takes the same row per token, heads concatenated."""
    lens = _saelens_topk(
        tmp_path / "lens", dtype="float64", hook_name="blocks.1.attn.hook_z", reshape_activations=reshape
    )
    ours = from_saelens(tmp_path / "lens")
    assert ours.cfg.hook_name == "blocks.1.attn.hook_z" and ours.cfg.d_in == D
    x = _inputs(torch.float64)
    heads = x.view(-1, HEADS, D_HEAD)  # head h = columns [4h, 4h + 4)
    with torch.no_grad():
        z_lens = lens.encode(heads if reshape == "hook_z" else x)
        torch.testing.assert_close(ours.encode(x), z_lens, atol=1e-10, rtol=1e-10)
        recon = lens.decode(z_lens)
        assert recon.shape == (heads.shape if reshape == "hook_z" else x.shape)
        torch.testing.assert_close(ours(x).x_hat, recon.reshape(x.shape), atol=1e-10, rtol=1e-10)
    save_sae(ours, tmp_path / "ours")  # and it saves as a one-row-per-token SAE
    assert load_sae(tmp_path / "ours").cfg.d_in == D


def test_to_saelens_writes_hook_z_saes_that_saelens_reshapes(tmp_path):
    from sae_lens import SAE

    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=F, k=K, hook_name="blocks.1.attn.hook_z")).double()
    _random_(sae, seed=4)
    to_saelens(sae, tmp_path / "lens")
    lens = SAE.load_from_disk(tmp_path / "lens")
    assert lens.cfg.reshape_activations == "hook_z" and lens.cfg.metadata.hook_name == "blocks.1.attn.hook_z"
    x = _inputs(torch.float64)
    heads = x.view(-1, HEADS, D_HEAD)
    sae.eval()
    with torch.no_grad():
        z = sae.encode(x)
        torch.testing.assert_close(lens.encode(heads), z, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(lens(heads), sae(x).x_hat.view(heads.shape), atol=1e-10, rtol=1e-10)
    back = from_saelens(tmp_path / "lens")
    assert all(torch.equal(getattr(back, n), getattr(sae, n)) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))


def test_pooled_head_sae_folders_are_refused_with_how_to_retrain(tmp_path):
    """A run written when hook_z was read one row per head: its sae_config.json has no row layout and
    d_in = d_head (32 on the default). Loading it names why and the command to retrain."""
    import json

    old = SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, k=4, hook_name="blocks.1.attn.hook_z"))
    save_sae(old, tmp_path / "run")
    cfg_path = tmp_path / "run" / "sae_config.json"
    meta = json.loads(cfg_path.read_text())
    del meta["rows"]  # as save_sae wrote it then
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"d_in=32, one attention head's width.*train-sae --hook blocks.1.attn"):
        load_sae(tmp_path / "run")
    resid = SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, k=4, hook_name="blocks.1.hook_resid_post"))
    save_sae(resid, tmp_path / "resid")
    meta = json.loads((tmp_path / "resid" / "sae_config.json").read_text())
    del meta["rows"]
    (tmp_path / "resid" / "sae_config.json").write_text(json.dumps(meta))
    assert load_sae(tmp_path / "resid").cfg.d_in == 32  # hooks without a head axis are unaffected
