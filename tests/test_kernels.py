"""Triton kernels against float64 torch references (CPU: TRITON_INTERPRET=1, set in conftest;
the same tests run on a GPU when one is present)."""

import pytest
import torch

from workbench.kernels.autograd import SparseEncodeDecode, triton_forward
from workbench.kernels.reference import pre_acts, sparse_decode, sparse_values, topk_indices
from workbench.kernels.topk_encoder import Blocks, topk_encode
from workbench.sae.selection import gradient_scores

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = dict(blocks=Blocks(16, 64, 16, 1, 1))


def _params(B, d, F, seed=0, dtype=torch.float32, ints=False):
    gen = torch.Generator().manual_seed(seed)
    if ints:  # few distinct values: exact fp32 products and sums, many ties
        mk = lambda *s: torch.randint(-2, 3, s, generator=gen).float()  # noqa: E731
    else:
        mk = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x, W_enc, b_enc, W_dec, b_dec = mk(B, d), mk(F, d), mk(F), mk(F, d), mk(d)
    return [t.to(DEV, dtype) for t in (x, W_enc, b_enc, W_dec, b_dec)]


@pytest.mark.parametrize("B,d,F,k", [(19, 24, 150, 1), (16, 16, 64, 5), (5, 20, 70, 60), (33, 16, 100, 8)])
@pytest.mark.parametrize("split", [1, 2, 5])  # 5 > the tiles of F=64: some programs own none
def test_topk_encoder_matches_reference(B, d, F, k, split):
    x, W_enc, b_enc, _, b_dec = _params(B, d, F, seed=k)
    idx, _ = topk_encode(x, W_enc, b_enc, b_dec, k, split=split, **SMALL)
    ref = topk_indices(pre_acts(*(t.double() for t in (x, W_enc, b_enc, b_dec))), k)
    assert torch.equal(idx.cpu(), ref.cpu())


def test_topk_encoder_bf16_precision_selects_on_bf16_operands():
    """precision="bf16" (the fast path for fp32 parameters) rounds x − b_dec and W_enc to bf16 and
    accumulates in fp32: its choice is the exact top-k of those rounded operands' products."""
    x, W_enc, b_enc, _, b_dec = _params(24, 40, 200, seed=11)
    idx, _ = topk_encode(x, W_enc, b_enc, b_dec, 7, precision="bf16", split=2, **SMALL)
    xc = (x - b_dec).bfloat16().double()
    pre_bf16 = xc @ W_enc.bfloat16().double().T + b_enc.double()
    assert torch.equal(idx.cpu(), topk_indices(pre_bf16, 7).cpu())
    exact = topk_indices(pre_acts(*(t.double() for t in (x, W_enc, b_enc, b_dec))), 7)
    assert not torch.equal(idx.cpu(), exact.cpu())  # the rounding is real: some choices differ


def test_topk_encoder_ties_go_to_lower_index():
    x, W_enc, b_enc, _, b_dec = _params(16, 16, 128, ints=True)
    idx, _ = topk_encode(x, W_enc, b_enc, b_dec, 6, **SMALL)
    pre = pre_acts(*(t.double() for t in (x, W_enc, b_enc, b_dec)))
    assert (pre.sort(dim=1, descending=True).values[:, :7].diff(dim=1) == 0).any()  # ties exist
    assert torch.equal(idx.cpu(), topk_indices(pre, 6).cpu())


def test_auxk_candidates_are_top_dead_latents():
    x, W_enc, b_enc, _, b_dec = _params(16, 16, 128, seed=3)
    dead = torch.zeros(128, dtype=torch.bool, device=DEV)
    dead[torch.randperm(128, generator=torch.Generator().manual_seed(0))[:20]] = True
    pre = pre_acts(*(t.double() for t in (x, W_enc, b_enc, b_dec)))
    for split in (1, 2):
        idx, aux = topk_encode(x, W_enc, b_enc, b_dec, 4, dead=dead, k_aux=8, split=split, **SMALL)
        assert torch.equal(aux.cpu(), topk_indices(pre, 8, dead).cpu())
        assert torch.equal(idx.cpu(), topk_indices(pre, 4).cpu())
    few = torch.zeros_like(dead)
    few[[5, 77]] = True  # fewer dead latents than k_aux: the rest is -1
    _, aux = topk_encode(x, W_enc, b_enc, b_dec, 4, dead=few, k_aux=8, **SMALL)
    assert aux.shape == (16, 2) and set(aux.unique().tolist()) <= {5, 77}


def test_gradient_score_selection():
    x, W_enc, b_enc, W_dec, b_dec = _params(16, 16, 96, seed=4)
    g = torch.randn(16, 16, generator=torch.Generator().manual_seed(9)).to(DEV)
    idx, _ = topk_encode(x, W_enc, b_enc, b_dec, 5, grads=g, W_dec=W_dec, beta=0.8, **SMALL)
    pre = pre_acts(*(t.double() for t in (x, W_enc, b_enc, b_dec)))
    ref = topk_indices(gradient_scores(pre, g.double(), W_dec.double(), 0.8), 5)
    assert torch.equal(idx.cpu(), ref.cpu())


def test_bf16_selection_is_a_valid_topk():
    x, W_enc, b_enc, _, b_dec = _params(16, 32, 128, seed=5, dtype=torch.bfloat16)
    idx, _ = topk_encode(x, W_enc, b_enc, b_dec, 8, **SMALL)
    pre = pre_acts(*(t.double() for t in (x, W_enc, b_enc, b_dec)))
    chosen = pre.gather(1, idx).min(1).values
    kth = pre.topk(8, dim=1).values[:, -1]
    assert (chosen >= kth - 2e-2 * pre.abs().max()).all()  # only near-ties may differ in bf16


@pytest.mark.parametrize("add_b_dec", [True, False])
def test_sparse_encode_decode_forward_and_backward_match_float64(add_b_dec):
    B, d, F, k = 13, 20, 70, 4
    params = _params(B, d, F, seed=6)
    idx = topk_indices(pre_acts(*(params[i] for i in (0, 1, 2, 4))), k).to(DEV)
    idx[0, -1] = -1  # "no latent" entries contribute nothing
    ours = [p.clone().requires_grad_(True) for p in params]
    ref = [p.double().clone().requires_grad_(True) for p in params]
    vals, out = SparseEncodeDecode.apply(*ours[:5], idx, add_b_dec)
    safe = idx.clamp(min=0)
    rv = sparse_values(ref[0], ref[1], ref[2], ref[4], safe) * (idx >= 0)
    rout = sparse_decode(rv, safe, ref[3], ref[4] if add_b_dec else None)
    torch.testing.assert_close(vals.double(), rv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), rout, rtol=1e-5, atol=1e-5)
    gv, go = torch.randn_like(rv), torch.randn_like(rout)
    (vals.double() * gv).sum().add((out.double() * go).sum()).backward()
    (rv * gv).sum().add((rout * go).sum()).backward()
    for name, a, b in zip(["x", "W_enc", "b_enc", "W_dec", "b_dec"], ours, ref):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-4, msg=name)
    untouched = torch.ones(F, dtype=torch.bool)
    untouched[idx[idx >= 0].cpu()] = False
    assert (ours[1].grad[untouched.to(DEV)] == 0).all()  # only selected rows are touched


def test_sparse_encode_decode_with_bf16_parameters():
    """bf16 parameters: outputs and gradients come back in bf16, within bf16's rounding of the
    float64 reference computed from the same (bf16-valued) inputs."""
    B, d, F, k = 24, 40, 96, 6
    params = _params(B, d, F, seed=12, dtype=torch.bfloat16)
    idx = topk_indices(pre_acts(*(params[i].double() for i in (0, 1, 2, 4))), k).to(DEV)
    ours = [p.clone().requires_grad_(True) for p in params]
    ref = [p.double().clone().requires_grad_(True) for p in params]
    vals, out = SparseEncodeDecode.apply(*ours[:5], idx, True)
    assert vals.dtype == out.dtype == torch.bfloat16
    rv = sparse_values(ref[0], ref[1], ref[2], ref[4], idx)
    rout = sparse_decode(rv, idx, ref[3], ref[4])
    go = torch.randn(B, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEV)
    (out.double() * go).sum().backward()
    (rout * go).sum().backward()

    def rel(a, b):
        return float((a.double() - b).norm() / b.norm())

    assert rel(out, rout) < 1e-2
    for name, a, b in zip(["x", "W_enc", "b_enc", "W_dec", "b_dec"], ours, ref):
        assert a.grad.dtype == torch.bfloat16, name
        assert rel(a.grad, b.grad) < 1e-2, name


def test_auxk_path_gradient_reaches_encoder():
    B, d, F = 16, 16, 64
    x, W_enc, b_enc, W_dec, b_dec = _params(B, d, F, seed=7)
    W_enc.requires_grad_(True)
    W_dec.requires_grad_(True)
    dead = torch.zeros(F, dtype=torch.bool, device=DEV)
    dead[:10] = True
    _, _, x_hat, aux_idx, e_hat = triton_forward(x, W_enc, b_enc, W_dec, b_dec, 4, dead=dead, k_aux=3)
    ((x - x_hat).detach() - e_hat).pow(2).sum().backward()
    rows = W_enc.grad.abs().sum(1) > 0
    assert rows[:10].any() and not rows[10:].any()


@pytest.mark.parametrize("aux", ["dense", "fused"])
def test_triton_training_step_equals_torch_path(aux):
    from workbench.activations import ActivationStore, TensorSource
    from workbench.sae import SAEConfig, SAETrainConfig, train_sae

    acts = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig(d_in=16, d_sae=64, k=4, dead_tokens=64)  # latents die quickly: AuxK active
    runs = {}
    for flag in (False, True):
        train = SAETrainConfig(
            total_tokens=3 * 64,
            batch_size=64,
            lr=1e-3,
            warmup_steps=1,
            use_triton=flag,
            triton_precision="fp32",
            triton_aux=aux,
            device=DEV,
        )
        runs[flag] = train_sae(cfg, train, ActivationStore(TensorSource(acts), 64), progress=False)
    for name, a in runs[False].named_parameters():
        torch.testing.assert_close(a, dict(runs[True].named_parameters())[name], rtol=2e-4, atol=2e-5, msg=name)
    torch.testing.assert_close(runs[False].tokens_since_fired, runs[True].tokens_since_fired)
