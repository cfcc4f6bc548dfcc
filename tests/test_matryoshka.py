"""The Matryoshka (nested) loss: its sparse O(B k d) form against the dense float64 reference, for
every rule and boundary distribution, with AuxK on; the boundary weights; a training run."""

import copy

import pytest
import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.fielddoc import FieldError
from workbench.runs import METRICS_FILE, RunDir
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from workbench.sae import matryoshka as matryoshka_mod
from workbench.sae import sparse as sparse_mod
from workbench.sae.losses import fvu
from workbench.sae.matryoshka import boundary_pdf, nested_fvu_dense, nested_fvu_sparse, prefix_weights
from workbench.sae.trainer import make_optimizer, optimizer_step, sae_losses, triton_supported, update_stats

RULES = ["topk", "gradient", "mutual_choice", "feature_choice"]
NESTINGS = {
    "fixed": dict(matryoshka="fixed", matryoshka_widths=(5, 20, 47)),
    "sampled": dict(matryoshka="sampled", matryoshka_prefixes=5),
    "expected": dict(matryoshka="expected", matryoshka_prefixes=3, matryoshka_power=0.7),
}


def _cfg(rule, nesting, **kw):
    return SAEConfig(d_in=12, d_sae=80, k=3, selection=rule, k_aux=6, dead_tokens=10**9, **NESTINGS[nesting], **kw)


def _brute_force(x, z, W_dec, b_dec, w):
    """Σ_m w(m) Σ_b ‖x_b − b_dec − Σ_{j<m} z_bj W_dec[j]‖² / Σ_b ‖x_b − mean‖², token by token, width by width."""
    total = 0.0
    for m in range(1, len(w) + 1):
        if w[m - 1] > 0:
            for b in range(len(x)):
                r = x[b] - b_dec - sum((z[b, j] * W_dec[j] for j in range(m)), torch.zeros_like(b_dec))
                total = total + w[m - 1] * r.pow(2).sum()
    return total / (x - x.mean(0)).pow(2).sum()


@pytest.mark.parametrize("nesting", list(NESTINGS))
def test_dense_reference_is_the_definition(nesting):
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=5, d_sae=12, k=2, **{**NESTINGS[nesting], "matryoshka_widths": (3, 7)})
    x, z = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 12, dtype=torch.float64).relu()
    W, b = torch.randn(12, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w = prefix_weights(cfg, seed=3, step=1)
    assert torch.allclose(nested_fvu_dense(x, z, W, b, w), _brute_force(x, z, W, b, w), rtol=1e-12)


@pytest.mark.parametrize("nesting", list(NESTINGS))
@pytest.mark.parametrize("rule", RULES)
def test_sparse_nested_loss_and_gradients_equal_the_dense_float64_reference(rule, nesting, monkeypatch):
    monkeypatch.setattr(sparse_mod, "CHUNK_ROWS", 48)  # several selection chunks, the last one partial
    monkeypatch.setattr(matryoshka_mod, "CHUNK_TOKENS", 40)  # and several nested-loss chunks
    monkeypatch.setattr(matryoshka_mod, "GRAM_MAX", 3)  # MC/FC tokens with > 3 entries: the running sums
    torch.manual_seed(0)
    dense = SparseAutoencoder(_cfg(rule, nesting), seed=1).double().train()
    dense.tokens_since_fired[::7] = 10**9  # AuxK live
    with torch.no_grad():
        dense.b_enc.normal_(0, 0.5)  # some kept values are 0 after ReLU, and many tokens keep latent 0..4
    sparse = copy.deepcopy(dense)
    x, g = torch.randn(128, 12, dtype=torch.float64), torch.randn(128, 12, dtype=torch.float64)
    w = prefix_weights(dense.cfg, seed=0, step=7)
    grads = {}
    for name, sae, is_sparse in (("dense", dense, False), ("sparse", sparse, True)):
        res = sae_losses(sae, x, g, sparse=is_sparse, nest=w)
        res.loss.backward()
        grads[name] = (res.recon.detach(), res.aux.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()})
    (rd, ad, gd), (rs, as_, gs) = grads["dense"], grads["sparse"]
    assert ad > 0  # the aux loss took part
    full = fvu(x, dense(x, g).x_hat).detach()
    assert abs(rd - full) > 0.02 * full  # the prefixes' loss is not the whole SAE's: the nesting is live
    torch.testing.assert_close(rs, rd, rtol=1e-11, atol=0)
    torch.testing.assert_close(as_, ad, rtol=1e-11, atol=0)
    for name in gd:
        torch.testing.assert_close(gs[name], gd[name], rtol=1e-9, atol=1e-13, msg=name)


def test_the_full_width_alone_is_the_plain_loss():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=40, k=4, selection="mutual_choice")).double().train()
    x = torch.randn(50, 8, dtype=torch.float64)
    out = sae.forward_sparse(x)
    w = torch.zeros(40, dtype=torch.float64)
    w[-1] = 1.0
    got = nested_fvu_sparse(x, out.kept, out.vals, sae.W_dec, sae.b_dec, w)
    torch.testing.assert_close(got, fvu(x, out.x_hat), rtol=1e-12, atol=0)


@pytest.mark.parametrize("rule", RULES)
def test_sampled_nested_steps_equal_dense_steps(rule):
    torch.manual_seed(0)
    cfg = _cfg(rule, "sampled")
    train = SAETrainConfig(batch_size=96, total_tokens=96 * 4, lr=1e-2, warmup_steps=1, dtype="float64")
    dense = SparseAutoencoder(cfg, seed=1).double().train()
    dense.tokens_since_fired[::5] = 10**9
    sparse = copy.deepcopy(dense)
    batches = [(torch.randn(96, 12, dtype=torch.float64), torch.randn(96, 12, dtype=torch.float64)) for _ in range(4)]
    logs = {}
    for sae, is_sparse in ((dense, False), (sparse, True)):
        opt, log = make_optimizer(sae, train), []
        for step, (x, g) in enumerate(batches):  # new boundaries each step, the same on both paths
            res = sae_losses(sae, x, g, sparse=is_sparse, nest=prefix_weights(cfg, train.seed, step))
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            optimizer_step(sae, opt, train, step)
            update_stats(sae, res)
            log.append((res.recon.item(), res.aux.item(), res.fvu.item()))
        logs[is_sparse] = torch.tensor(log)
    assert torch.allclose(logs[True], logs[False], rtol=1e-10, atol=1e-13)
    for (name, a), b in zip(dense.state_dict().items(), sparse.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12), name


def test_boundary_weights():
    F = 64
    fixed = prefix_weights(SAEConfig(d_in=4, d_sae=F, k=2, matryoshka="fixed", matryoshka_widths=(8, 16)))
    assert fixed.nonzero().squeeze(1).tolist() == [7, 15, 63] and torch.allclose(
        fixed[fixed > 0], torch.tensor(1 / 3, dtype=torch.float64)
    )
    assert prefix_weights(SAEConfig(d_in=4, d_sae=F, k=2)) is None
    cfg = SAEConfig(d_in=4, d_sae=F, k=2, matryoshka="sampled", matryoshka_prefixes=4, matryoshka_power=0.5)
    a, b = prefix_weights(cfg, 0, 5), prefix_weights(cfg, 0, 6)
    assert torch.equal(a, prefix_weights(cfg, 0, 5)) and not torch.equal(a, b)  # fixed by (seed, step)
    assert float(a.sum()) == pytest.approx(1.0) and a[-1] >= 0.25
    pdf = boundary_pdf(F, 0.5)  # CDF (m/F)^0.5: P(width <= 16) = 0.5
    assert float(pdf.sum()) == pytest.approx(1.0) and float(pdf[:16].sum()) == pytest.approx(0.5)
    mean = torch.stack([prefix_weights(cfg, 0, s) for s in range(4000)]).mean(0)
    expected = prefix_weights(SAEConfig(d_in=4, d_sae=F, k=2, matryoshka="expected", matryoshka_prefixes=4))
    assert (mean - expected).abs().max() < 0.01  # "expected" is the mean of "sampled" (sd of a cell <= 0.004)
    cdf_gap = (mean.cumsum(0) - expected.cumsum(0)).abs().max()
    assert cdf_gap < 0.02


def test_bad_nesting_settings_are_refused_with_the_field():
    with pytest.raises(FieldError, match="matryoshka_widths"):
        SAEConfig(d_in=4, d_sae=16, k=2, matryoshka="fixed", matryoshka_widths=(8, 4))
    with pytest.raises(FieldError, match="at least one width below d_sae"):
        SAEConfig(d_in=4, d_sae=16, k=2, matryoshka="fixed")
    with pytest.raises(FieldError, match="matryoshka_prefixes"):
        SAEConfig(d_in=4, d_sae=16, k=2, matryoshka="sampled", matryoshka_prefixes=1)
    with pytest.raises(FieldError, match="matryoshka="):
        SAEConfig(d_in=4, d_sae=16, k=2, matryoshka="pareto")
    assert SAEConfig(d_in=4, d_sae=16, k=2, matryoshka="fixed", matryoshka_widths=[4, 8]).matryoshka_widths == (4, 8)
    assert not triton_supported(SAEConfig(d_in=4, d_sae=16, k=2, matryoshka="expected"))


def _prefix_fvu(sae, x, m):
    with torch.no_grad():
        z = sae.encode(x)
        z[:, m:] = 0
        return fvu(x, sae.decode(z)).item()


def test_train_sae_logs_the_nested_loss_and_its_prefix_learns_to_reconstruct_alone(tmp_path):
    from workbench.tasks import SuperpositionConfig, superposition_data

    data = superposition_data(SuperpositionConfig(d=16, n_features=48, mean_active=3.0), 8192)
    held = data.acts[-1024:]
    got = {}
    for nesting in ("none", "fixed"):
        store = ActivationStore(TensorSource(data.acts[:-1024], None, chunk_size=4096), 256, seed=0)
        widths = (8, 32) if nesting == "fixed" else ()
        cfg = SAEConfig(d_in=16, d_sae=64, k=4, matryoshka=nesting, matryoshka_widths=widths, dead_tokens=2048)
        train = SAETrainConfig(total_tokens=60 * 256, batch_size=256, lr=1e-2, warmup_steps=5, log_every=10)
        sae = train_sae(cfg, train, store, RunDir(tmp_path / nesting), progress=False)
        got[nesting] = (_prefix_fvu(sae, held, 8), _prefix_fvu(sae, held, 64))
    lines = RunDir(tmp_path / "fixed").metrics()
    assert (tmp_path / "fixed" / METRICS_FILE).exists()
    assert all(m["nested_fvu"] > m["fvu"] for m in lines[1:])  # once trained, the prefixes do worse than all 64
    assert "nested_fvu" not in RunDir(tmp_path / "none").metrics()[0]
    # the nested SAE's first 8 latents reconstruct alone better than the plain SAE's first 8
    assert got["fixed"][0] < 0.9 * got["none"][0], got  # measured 0.57 vs 0.70
