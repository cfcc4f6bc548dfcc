"""The sparse torch training path (sparse.py) against the dense reference path, and the logged L0."""

import copy

import pytest
import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from workbench.sae import sparse as sparse_mod
from workbench.sae.losses import fvu
from workbench.sae.parallel import Layout
from workbench.sae.selection import topk_mask
from workbench.sae.trainer import StepOutput, make_optimizer, optimizer_step, sae_losses, update_stats, use_sparse
from workbench.tasks import SuperpositionConfig, superposition_data

RULES = ["topk", "gradient", "mutual_choice", "feature_choice"]


def _steps(sae, opt, train, batches, sparse):
    logs = []
    for step, (x, g) in enumerate(batches):
        res = sae_losses(sae, x, g, sparse=sparse)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        optimizer_step(sae, opt, train, step)
        update_stats(sae, res)
        logs.append((res.fvu.item(), res.aux.item(), res.l0))
    return logs


@pytest.mark.parametrize("aux", ["auxk", "aux_zipf"])
@pytest.mark.parametrize("rule", RULES)
def test_sparse_steps_equal_dense_steps_in_float64(rule, aux, monkeypatch):
    monkeypatch.setattr(sparse_mod, "CHUNK_ROWS", 48)  # several selection chunks, the last one partial
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=12, d_sae=80, k=3, selection=rule, aux=aux, k_aux=6, dead_tokens=10**9)
    train = SAETrainConfig(batch_size=128, total_tokens=128 * 5, lr=1e-2, warmup_steps=1, dtype="float64")
    dense = SparseAutoencoder(cfg, seed=1).double().train()
    dense.tokens_since_fired[::7] = 10**9  # dead from the start: the aux loss is live in every step
    with torch.no_grad():
        dense.b_enc.normal_(0, 0.5)  # some kept pre-activations ≤ 0: ReLU's gradient cut is exercised
    sparse = copy.deepcopy(dense)
    opt_d, opt_s = make_optimizer(dense, train), make_optimizer(sparse, train)
    batches = [(torch.randn(128, 12, dtype=torch.float64), torch.randn(128, 12, dtype=torch.float64)) for _ in range(5)]
    log_d = _steps(dense, opt_d, train, batches, sparse=False)
    log_s = _steps(sparse, opt_s, train, batches, sparse=True)
    assert log_d[0][1] > 0  # the aux loss took part
    assert torch.allclose(torch.tensor(log_s), torch.tensor(log_d), rtol=1e-10, atol=1e-12)
    for (name, a), b in zip(dense.state_dict().items(), sparse.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12), name
    for st_d, st_s in zip(opt_d.state.values(), opt_s.state.values()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(st_d[key], st_s[key], rtol=1e-9, atol=1e-15), key
    if rule in ("mutual_choice", "feature_choice"):
        assert (dense.threshold > 0).any()  # the sparse path's thresholds were compared above


@pytest.mark.parametrize("rule", ["topk", "gradient"])
def test_chunked_selection_keeps_the_dense_rules_entries_with_ties(rule, monkeypatch):
    monkeypatch.setattr(sparse_mod, "CHUNK_ROWS", 7)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=6, d_sae=40, k=5, selection=rule))
    with torch.no_grad():  # integer pre-activations and scores: many ties straddle the 5th value
        sae.W_enc.copy_(torch.randint(-2, 3, (40, 6)).float())
        sae.W_dec.copy_(torch.randint(-1, 2, (40, 6)).float())
    x, g = torch.randint(-2, 3, (30, 6)).float(), torch.randint(-1, 2, (30, 6)).float()
    pre = sae.pre_acts(x).detach()
    mask = sae.select(pre, g)
    kept = sae.select_kept(x, g)
    rows, cols = mask.nonzero().unbind(1)
    assert torch.equal(kept.rows, rows) and torch.equal(kept.cols, cols)
    assert torch.equal(kept.pre, pre[rows, cols])


def test_topk_indices_break_ties_to_the_lower_latent():
    scores = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 5.0, 2.0, 2.0]])
    assert sparse_mod.topk_indices(scores, 2).tolist() == [[1, 2], [0, 2]]
    assert torch.equal(topk_mask(scores, 2).nonzero()[:, 1].view(2, 2), sparse_mod.topk_indices(scores, 2))


@pytest.mark.parametrize("sparse", [False, True])
def test_logged_l0_counts_positive_values_not_selected_entries(sparse):
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=10, k=4)).train()
    with torch.no_grad():  # pre = b_enc for every token: the top 4 are latents 0-3, two of them ≤ 0
        sae.W_enc.zero_()
        sae.b_enc.copy_(torch.tensor([1.0, 2.0, 0.0, -0.5, -1, -2, -3, -4, -5, -6]))
    res = sae_losses(sae, torch.randn(16, 4), None, sparse=sparse)
    assert res.l0 == 2.0


def test_sparse_flag_resolution_and_bad_values():
    cpu, cuda = SAETrainConfig(), SAETrainConfig(device="cuda")
    assert use_sparse(cpu) and not use_sparse(cuda) and use_sparse(SAETrainConfig(device="cuda", sparse=True))
    assert not use_sparse(SAETrainConfig(sparse=False))
    assert not use_sparse(cpu, Layout("latent", 0, 2))  # "auto" falls back to dense there
    with pytest.raises(ValueError, match="parallel='latent'"):
        use_sparse(SAETrainConfig(sparse=True), Layout("latent", 0, 2))
    with pytest.raises(ValueError, match="sparse='yes'"):
        SAETrainConfig(sparse="yes")  # refused when the config is built, before any training


def test_sparse_training_reaches_the_dense_fvu_in_float32():
    syn = SuperpositionConfig()
    data = superposition_data(syn, 60_000)
    held_out = data.acts[50_000:]
    fvus = []
    for sparse in (False, True):  # 300 steps: float32 rounding differs, the training must not drift
        store = ActivationStore(TensorSource(data.acts[:50_000], None, chunk_size=25_000), 512, seed=0)
        cfg = SAEConfig(d_in=syn.d, d_sae=192, k=4, dead_tokens=20_000)
        train = SAETrainConfig(total_tokens=300 * 512, batch_size=512, lr=4e-3, warmup_steps=20, sparse=sparse)
        sae = train_sae(cfg, train, store, progress=False)
        fvus.append(fvu(held_out, sae(held_out).x_hat).item())
    assert fvus[0] < 0.5
    assert abs(fvus[1] - fvus[0]) <= 0.01 * fvus[0]


def test_stats_from_the_triton_paths_index_grid_equal_the_dense_stats():
    torch.manual_seed(0)
    dense = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=3, dead_tokens=100)).train()
    with torch.no_grad():
        dense.b_enc.normal_(0, 1.0)  # some kept values are 0 after ReLU: they must not count as firing
    grid = copy.deepcopy(dense)
    for _ in range(3):  # [B, k] indices and values, as the Triton path gives them
        out = dense(torch.randn(40, 8))
        dense.update_stats(out.z.detach(), out.mask)
        idx = out.mask.nonzero()[:, 1].view(40, 3)
        grid.update_stats_sparse(idx, out.z.detach().gather(1, idx))
    assert torch.equal(dense.tokens_since_fired, grid.tokens_since_fired)
    assert torch.allclose(dense.usage, grid.usage)
    assert int(grid.tokens_since_fired.max()) <= 120  # clocks advance by tokens (40 a step), not entries
    assert int((grid.tokens_since_fired == 120).sum()) > 0  # some latents never fired
    before = grid.tokens_since_fired.clone()
    grid.update_stats_sparse(torch.full((40, 3), -1), torch.ones(40, 3))  # -1: no latent, nothing fires
    assert torch.equal(grid.tokens_since_fired, before + 40)


@pytest.mark.parametrize("sparse", [False, True])
def test_step_output_is_one_typed_tuple_whose_stats_equal_the_dense_mask(sparse):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=6, d_sae=24, k=3, selection="mutual_choice")).train()
    x = torch.randn(20, 6)
    res = sae_losses(sae, x, None, sparse=sparse)
    assert type(res) is StepOutput and res.tokens == 20
    z = sae(x).z.detach()  # the dense forward's code: the kept entries' latents and values, by token
    mask = sae.select(sae.pre_acts(x))
    assert torch.equal(res.idx, mask.nonzero()[:, 1]) and torch.allclose(res.vals, z[mask])
    with pytest.warns(DeprecationWarning, match=r"\.loss"):
        assert res["loss"] is res.loss  # the old dict spelling still reads, for one release
    assert res[0] is res.loss  # and a tuple index is still a tuple index
