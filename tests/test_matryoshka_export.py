"""Matryoshka runs in SAELens' layout: each rule's inference architecture (TopK: "topk"; Mutual and
Feature Choice: "jumprelu" with their thresholds) with the prefix widths in SAELens' own metadata
field, read back by SAELens' `SAE.load_from_disk`, whose encode/decode are the reference (float64);
and `prefix_sae`, a prefix cut out as an SAE of its own, against a float64 reference."""

import json

import pytest
import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.runs import CheckpointError
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, from_saelens, to_saelens, train_sae
from workbench.sae.matryoshka import prefix_sae

D, F, K = 12, 40, 5
WIDTHS = (8, 20)
NESTINGS = {
    "fixed": dict(matryoshka="fixed", matryoshka_widths=WIDTHS),
    "expected": dict(matryoshka="expected", matryoshka_prefixes=3, matryoshka_power=0.7),
}
ARCH = {"topk": "topk", "gradient": "topk", "mutual_choice": "jumprelu", "feature_choice": "jumprelu"}


def _random_sae(rule: str, nesting: str, seed: int = 0) -> SparseAutoencoder:
    """float64, every parameter random, b_dec large (subtracting it moves the top k), decoder rows of
    assorted norms; Mutual Choice one shared positive threshold, Feature Choice one per latent."""
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=F, k=K, selection=rule, **NESTINGS[nesting])).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        sae.W_dec.mul_(0.3 + 2.7 * torch.rand(F, 1, generator=gen, dtype=torch.float64))
        sae.b_dec.mul_(3.0)
        if rule == "mutual_choice":
            sae.threshold.fill_(2.5)
        elif rule == "feature_choice":
            sae.threshold.copy_(0.5 + 4 * torch.rand(F, generator=gen, dtype=torch.float64))
    return sae


def _inputs(n=400, seed=1):
    return 2.0 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("nesting", list(NESTINGS))
@pytest.mark.parametrize("rule", list(ARCH))
def test_saelens_loads_a_matryoshka_run_as_its_rules_inference_sae(tmp_path, rule, nesting):
    from sae_lens import SAE, JumpReLUSAE, TopKSAE

    sae = _random_sae(rule, nesting)
    to_saelens(sae, tmp_path / "lens")
    raw = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert raw["architecture"] == ARCH[rule]
    lens = SAE.load_from_disk(tmp_path / "lens")
    assert isinstance(lens, TopKSAE if ARCH[rule] == "topk" else JumpReLUSAE)
    meta = lens.cfg.metadata
    assert meta.workbench_selection == rule
    assert meta.workbench_matryoshka["matryoshka"] == nesting
    if nesting == "fixed":  # SAELens' own field, in the form its Matryoshka trainer writes it
        assert meta.training_architecture_details == {"matryoshka_widths": [8, 20, F]}
    else:  # a boundary distribution, not widths: SAELens' field would misstate it
        assert "training_architecture_details" not in meta
        assert meta.workbench_matryoshka["prefixes"] == 3 and meta.workbench_matryoshka["power"] == 0.7
    x = _inputs()
    with torch.no_grad():
        z, z_lens = sae.encode(x), lens.encode(x)
        assert 0 < int((z > 0).sum()) < z.numel()
        assert torch.equal(z > 0, z_lens > 0)
        torch.testing.assert_close(z_lens, z, atol=1e-10, rtol=0)
        torch.testing.assert_close(lens.decode(z_lens), sae.decode(z), atol=1e-10, rtol=0)
        # each prefix reconstructed from SAELens' code and weights at the widths it recorded equals
        # ours, computed in float64 from our weights: the latents kept their prefix order
        for m in (*WIDTHS, F):
            want = z[:, :m] @ sae.W_dec[:m] + sae.b_dec
            torch.testing.assert_close(z_lens[:, :m] @ lens.W_dec[:m] + lens.b_dec, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("nesting", list(NESTINGS))
def test_the_nesting_round_trips_through_saelens(tmp_path, nesting):
    sae = _random_sae("topk", nesting)
    back = from_saelens(to_saelens(sae, tmp_path / "lens"))
    for f in ("matryoshka", "matryoshka_widths", "matryoshka_prefixes", "matryoshka_power"):
        assert getattr(back.cfg, f) == getattr(sae.cfg, f), f
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(back(x).x_hat, sae(x).x_hat, atol=1e-10, rtol=0)


def test_a_broken_nesting_record_is_named(tmp_path):
    folder = to_saelens(_random_sae("topk", "fixed"), tmp_path / "lens")
    raw = json.loads((folder / "cfg.json").read_text())
    raw["metadata"]["workbench_matryoshka"]["widths"] = [30, 8]  # not increasing
    (folder / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="workbench_matryoshka.*matryoshka_widths"):
        from_saelens(folder)
    del raw["metadata"]["workbench_matryoshka"]["power"]
    (folder / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="workbench_matryoshka"):
        from_saelens(folder)


def test_a_jumprelu_folder_is_refused_naming_saelens_batchtopk(tmp_path):
    folder = to_saelens(_random_sae("mutual_choice", "fixed"), tmp_path / "lens")
    with pytest.raises(CheckpointError, match="'jumprelu'.*Matryoshka-BatchTopK"):
        from_saelens(folder)


def test_a_trained_matryoshka_mutual_choice_run_exports_its_learned_threshold(tmp_path):
    from sae_lens import SAE

    gen = torch.Generator().manual_seed(2)
    basis = torch.randn(30, D, generator=gen, dtype=torch.float64)
    codes = torch.rand(4096, 30, generator=gen, dtype=torch.float64) * (torch.rand(4096, 30, generator=gen) < 0.15)
    acts = codes @ basis + 0.5
    cfg = SAEConfig(d_in=D, d_sae=F, k=K, selection="mutual_choice", **NESTINGS["fixed"])
    train = SAETrainConfig(total_tokens=4096, batch_size=256, lr=3e-3, warmup_steps=2, dtype="float64", log_every=10**9)
    sae = train_sae(cfg, train, ActivationStore(TensorSource(acts), 256, seed=0), progress=False).eval()
    assert float(sae.threshold.min()) > 0 and int(sae.threshold_updates) == 16
    lens = SAE.load_from_disk(to_saelens(sae, tmp_path / "lens"))
    torch.testing.assert_close(lens.threshold, sae.threshold, atol=0, rtol=0)
    x = acts[:500]
    with torch.no_grad():
        torch.testing.assert_close(lens(x), sae(x).x_hat, atol=1e-10, rtol=0)


@pytest.mark.parametrize("rule", list(ARCH))
def test_prefix_sae_against_a_float64_reference(rule):
    sae = _random_sae(rule, "fixed")
    x = _inputs()
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc  # [n, F]
        for m in (8, 20):
            small = prefix_sae(sae, m)
            assert small.cfg.d_sae == m and small.W_dec.dtype == torch.float64
            assert small.cfg.matryoshka_widths == ((8,) if m == 20 else ())
            assert small.cfg.matryoshka == ("fixed" if m == 20 else "none")
            if ARCH[rule] == "topk":  # k largest inside the prefix, then ReLU
                top = pre[:, :m].topk(K, dim=1)
                want = torch.zeros(len(x), m, dtype=torch.float64).scatter(1, top.indices, top.values.relu())
            else:  # the thresholds: the whole SAE's code cut at m
                want = torch.where(pre[:, :m] > sae.threshold[:m], pre[:, :m], 0.0)
                torch.testing.assert_close(want, sae.encode(x)[:, :m], atol=1e-12, rtol=0)
            z = small.encode(x)
            torch.testing.assert_close(z, want, atol=1e-12, rtol=0)
            torch.testing.assert_close(small.decode(z), want @ sae.W_dec[:m] + sae.b_dec, atol=1e-12, rtol=0)
        whole = prefix_sae(sae, F)
        torch.testing.assert_close(whole(x).x_hat, sae(x).x_hat, atol=0, rtol=0)
    with pytest.raises(ValueError, match="width=5"):
        prefix_sae(sae, K)
    with pytest.raises(ValueError, match="width=41"):
        prefix_sae(sae, F + 1)
