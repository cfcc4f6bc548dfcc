"""A new selection rule is one file: this one registers a toy rule and trains, saves, loads,
exports and encodes with it, through the same code paths as the built-in rules.

The toy rule, "threshold": keep every latent whose pre-activation exceeds T (a fixed JumpReLU;
the count per token varies). Everything it needs is below; nothing in workbench/ names it.
"""

import pytest
import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, load_sae, save_sae, to_saelens, train_sae
from workbench.sae.selection import RULES, Rule, get_rule, register_rule
from workbench.sae.trainer import triton_supported
from workbench.tasks import SuperpositionConfig, superposition_data

T = 0.25


class Threshold(Rule):
    """Keep latent i for a token when pre_i > T; at inference the same JumpReLU (threshold T)."""

    name = "threshold"
    saelens_architecture = "jumprelu"  # exported with its threshold buffer, T everywhere

    def select(self, sae, pre, grads):
        return pre > T

    def encode(self, sae, pre):
        return pre * (pre > sae.threshold)

    def update_threshold(self, sae, cols, vals):
        sae.threshold.fill_(T)


@pytest.fixture
def threshold_rule():
    register_rule(Threshold())
    yield RULES["threshold"]
    RULES.pop("threshold")


def _data(n=4096):
    return superposition_data(SuperpositionConfig(d=16, n_features=48, mean_active=3.0), n)


def test_registration_is_what_makes_the_name_valid(threshold_rule):
    cfg = SAEConfig(d_in=16, d_sae=64, k=4, selection="threshold")  # config.py knows nothing of it
    assert get_rule(cfg.selection) is threshold_rule and SparseAutoencoder(cfg).rule is threshold_rule
    assert not triton_supported(cfg)  # a rule is not in the fused kernels unless it says so
    RULES.pop("threshold")
    with pytest.raises(ValueError, match="selection='threshold': expected one of"):
        SAEConfig(d_in=16, d_sae=64, k=4, selection="threshold")
    register_rule(threshold_rule)
    with pytest.raises(ValueError, match="non-empty name"):
        register_rule(Rule())


def test_toy_rule_trains_saves_loads_and_encodes(threshold_rule, tmp_path):
    from sae_lens import SAE

    data = _data()
    cfg = SAEConfig(d_in=16, d_sae=64, k=4, selection="threshold", dead_tokens=512)
    runs = {}
    for sparse in (False, True):  # the dense reference path and the sparse path (the default mask-based one)
        train = SAETrainConfig(
            total_tokens=6 * 256, batch_size=256, lr=1e-2, warmup_steps=1, dtype="float64", sparse=sparse
        )
        store = ActivationStore(TensorSource(data.acts.double(), None, chunk_size=2048), 256, seed=0)
        runs[sparse] = train_sae(cfg, train, store, progress=False)
    dense, sae = runs[False], runs[True]
    for (name, a), b in zip(dense.state_dict().items(), sae.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12), name
    assert torch.all(sae.threshold == T)  # its own update_threshold ran
    assert int(sae.tokens_since_fired.max()) < 512 * 4  # training moved the firing clocks

    x = data.acts[:300].double()
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc  # the rule, computed directly
        want = torch.where(pre > T, pre, torch.zeros_like(pre))
        z = sae.encode(x)
        torch.testing.assert_close(z, want, rtol=0, atol=1e-12)  # float64: rounding apart, the same code
        assert torch.equal(z > 0, want > 0) and 0 < int((z > 0).sum()) < z.numel()
        train_z = sae.train()(x).z  # inference equals training selection for this rule
        assert torch.equal(train_z, z.relu())
    sae.eval()

    save_sae(sae, tmp_path / "run")
    back = load_sae(tmp_path / "run")
    assert back.cfg == cfg and back.rule is threshold_rule
    with torch.no_grad():
        assert back.W_enc.dtype == torch.float64 and torch.equal(back.encode(x), z)

    to_saelens(sae, tmp_path / "lens")  # its architecture comes from the rule
    lens = SAE.load_from_disk(tmp_path / "lens")
    assert lens.cfg.architecture() == "jumprelu"
    with torch.no_grad():
        torch.testing.assert_close(lens.encode(x), z, atol=1e-10, rtol=1e-10)
