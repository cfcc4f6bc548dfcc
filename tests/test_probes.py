"""Probes: sparsity on hand-built MLPs, head roles on a copy-task model built here, arrow of time."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.models import ModelConfig, new_model
from workbench.probes.arrow import bootstrap_gap
from workbench.probes.heads import HeadRoleConfig, head_roles, make_contexts, sink_window_hook
from workbench.probes.sparsity import (
    activation_sparsity,
    hidden_activations,
    masking_hooks,
    threshold_for_loss,
    topk_hook,
    topk_intervention,
)
from workbench.tasks import copy_task_batch


def _planted_mlp_model():
    """1-layer ReLU model whose MLP input weights make neurons 0..9 always zero (W_in = 0,
    b_in = -1) and neurons 10..15 always active (W_in = 0, b_in = +1)."""
    model = new_model(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=16, n_ctx=9), seed=0).eval()
    with torch.no_grad():
        model.blocks[0].mlp.W_in.zero_()
        model.blocks[0].mlp.b_in[:10] = -1.0
        model.blocks[0].mlp.b_in[10:] = 1.0
    return model


def test_sparsity_of_hand_built_mlp():
    model = _planted_mlp_model()
    tokens = torch.randint(0, 257, (4, 9))
    r = activation_sparsity(model, tokens)
    assert r.active_frac == [pytest.approx(6 / 16)]
    assert r.active_frac_std[0] == pytest.approx(0.0, abs=1e-6)
    assert r.never_firing == [10]
    assert r.neuron_freq[0][:10] == [0.0] * 10 and r.neuron_freq[0][10:] == [1.0] * 6
    assert r.n_tokens == 4 * 8
    # a threshold above the active value (exactly 1.0) turns every neuron off
    assert activation_sparsity(model, tokens, threshold=1.5).active_frac == [0.0]


def test_fat_epsilon_to_zero_equals_exact_zero_count_on_relu(tiny_model):
    tokens = torch.randint(0, 257, (3, 16))
    exact = [float((a != 0).float().mean()) for a in hidden_activations(tiny_model, tokens)]
    assert activation_sparsity(tiny_model, tokens, threshold=0.0).active_frac == pytest.approx(exact)
    assert activation_sparsity(tiny_model, tokens, threshold=1e-12).active_frac == pytest.approx(exact)


def test_topk_hook_keeps_exactly_k_even_with_ties():
    act = torch.tensor([[[3.0, 1.0, 1.0, 1.0, 0.5, 2.0]]])
    out = topk_hook(3)(act, None)
    assert torch.equal(out, torch.tensor([[[3.0, 1.0, 0.0, 0.0, 0.0, 2.0]]]))
    act = torch.randn(2, 5, 64)
    assert ((topk_hook(7)(act, None) != 0).sum(-1) == 7).all()


def test_topk_intervention_and_threshold(tiny_model):
    tokens = torch.randint(0, 257, (4, 16))
    res = topk_intervention(tiny_model, tokens, ks=[1, 64])
    assert res["delta"][1] == pytest.approx(0.0, abs=1e-6)  # k = d_mlp changes nothing
    assert res["delta"][0] != pytest.approx(0.0, abs=1e-6)
    eps = threshold_for_loss(tiny_model, tokens, p=1.0)
    # its promise: zeroing every |a| <= epsilon keeps the loss within 1%; the bisection's other end,
    # epsilon + max|a| / 2^12 (exact: the midpoints are dyadic), is a threshold it tried and found
    # to break the bound, unless it never moved from max|a|; the active fraction is taken at epsilon
    base = float(tiny_model(tokens, return_type="loss").detach())
    assert eps["clean_loss"] == pytest.approx(base, rel=1e-6)
    top = max(float(a.abs().max()) for a in hidden_activations(tiny_model, tokens))
    assert 0 < eps["epsilon"] < top and _loss_zeroing_below(tiny_model, tokens, eps["epsilon"]) <= base * 1.01
    other_end = eps["epsilon"] + top / 2**12
    assert other_end == top or _loss_zeroing_below(tiny_model, tokens, other_end) > base * 1.01
    assert eps["active_frac"] == activation_sparsity(tiny_model, tokens, eps["epsilon"]).active_frac


def _loss_zeroing_below(model, tokens, eps):
    hooks = masking_hooks(model, lambda a: a.abs() > eps)
    with torch.no_grad():
        return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks))


def test_threshold_for_loss_finds_a_planted_threshold():
    """Neurons 10..15 sit at exactly 1.0 and carry the output: any epsilon below 1 keeps them, 1
    or more zeroes them and raises the loss by far more than 1%, so the bisection over [0, 1]
    must end within 2^-12 below 1, with 6 of 16 neurons active there."""
    model = _planted_mlp_model()
    tokens = torch.randint(0, 257, (4, 9), generator=torch.Generator().manual_seed(0))
    w_out = model.blocks[0].mlp.W_out
    opt = torch.optim.Adam([w_out], lr=0.1)
    for _ in range(30):  # the constant neurons learn an output that lowers the loss (a unigram bias)
        opt.zero_grad()
        model(tokens, return_type="loss").backward()
        w_out.grad[:10] = 0
        opt.step()
    base = float(model(tokens, return_type="loss").detach())
    assert _loss_zeroing_below(model, tokens, 1.0) > base * 1.05  # the plant matters
    eps = threshold_for_loss(model, tokens, p=1.0)
    assert 1 - 2**-12 <= eps["epsilon"] < 1
    assert _loss_zeroing_below(model, tokens, eps["epsilon"]) == pytest.approx(base, rel=1e-6)
    assert eps["active_frac"] == [pytest.approx(6 / 16)]


def test_model_without_mlps_gets_clear_error():
    attn_only = new_model(ModelConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=9, attn_only=True), seed=0)
    with pytest.raises(ValueError, match="no MLP hooks"):
        activation_sparsity(attn_only, torch.randint(0, 257, (2, 8)))


def test_sink_window_hook_renormalises_one_head():
    pattern = torch.softmax(torch.randn(2, 3, 10, 10).masked_fill(torch.ones(10, 10).triu(1).bool(), -1e9), -1)
    out = sink_window_hook(head=1, sink=1, window=2)(pattern, None)
    assert torch.equal(out[:, [0, 2]], pattern[:, [0, 2]])
    torch.testing.assert_close(out[:, 1].sum(-1), torch.ones(2, 10))
    assert (out[0, 1, 9, 1:8] == 0).all() and out[0, 1, 9, 0] > 0


V = 64  # copy-task vocabulary; BOS = V


@pytest.fixture(scope="module")
def copy_model():
    """2-layer attention-only model: layer 0 forced local (window 4), layer 1 global, trained on
    repeated random segments until an induction head forms in layer 1."""
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_head=16,
        n_ctx=64,
        d_vocab=V + 1,
        attn_only=True,
        normalization_type="LN",
        use_local_attn=True,
        attn_types=["local", "global"],
        window_size=4,
        seed=0,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(350):
        loss = model(copy_task_batch(32, 64, V, bos=V, seed=step), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_induction_head_is_retrieval_and_local_heads_are_streaming(copy_model):
    cfg = HeadRoleConfig(seq_len=64, needle_len=8, window=4, token_range=(0, V))
    roles = head_roles(copy_model, cfg, bos=V)
    retrieval, streaming = torch.tensor(roles.retrieval), torch.tensor(roles.streaming)
    delta = torch.tensor(roles.delta_loss)
    assert roles.copy_accuracy > 0.7
    best = int(retrieval[1].argmax())
    assert roles.labels[1][best] == "retrieval" and retrieval[1, best] > 0.5
    # labelled on the Wilson lower bound, from enough copied steps
    assert roles.n_copied >= cfg.min_copied_steps and not roles.too_few_copied
    assert roles.retrieval_ci[1][best][0] > 0.4 and roles.retrieval_hits[1][best] / roles.n_copied > 0.5
    assert all(ci[0] > 0.9 for ci in roles.streaming_ci[0])  # t interval over contexts, lower bound
    assert roles.labels[0] == ["streaming"] * 4  # forced-local heads
    assert (streaming[0] > 0.99).all()
    # causal check: restricting a streaming head changes nothing, the retrieval head hurts
    assert delta[0].abs().max() < 0.01
    assert delta[1, best] > 0.2
    # TransformerLens' induction detector agrees on where the induction head is
    tl = torch.tensor(roles.tl_scores["induction"])
    assert tl[1].max() > 3 * tl[0].max()


def test_needle_context_too_short_errors(copy_model):
    with pytest.raises(ValueError, match="too short"):
        make_contexts(copy_model, HeadRoleConfig(seq_len=20, needle_len=8, token_range=(0, V)), bos=V)
    with pytest.raises(ValueError, match="n_ctx"):
        make_contexts(copy_model, HeadRoleConfig(seq_len=200, token_range=(0, V)), bos=V)


def test_bootstrap_gap_interval_covers_planted_gap():
    gen = torch.Generator().manual_seed(0)
    f = 2.0 + 0.1 * torch.randn(400, generator=gen)
    b = f * 1.05 + 0.05 * torch.randn(400, generator=gen)
    gap, lo, hi = bootstrap_gap(f, b)
    assert lo < 0.05 < hi and gap == pytest.approx(0.05, abs=0.01)
    with pytest.raises(ValueError, match="equal-length"):
        bootstrap_gap(f, b[:10])


@pytest.mark.slow
def test_primes_forward_model_beats_backward(tmp_path):
    """Seed 0: the forward (multiplication) model beats its backward (factorisation) twin at equal
    everything. A regression check of one pair; whether that is an arrow or seed noise is what
    arrow_over_seeds decides (RESULTS.md: over three seeds it is not resolved at this size)."""
    from dataclasses import replace

    from workbench.probes.arrow import PRIMES_MODEL, PRIMES_TRAIN, arrow_gap, primes_data, train_pairs

    data = primes_data()
    ((f, b),) = train_pairs(PRIMES_MODEL, replace(PRIMES_TRAIN, steps=350), data, tmp_path, seeds=(0,), progress=False)
    res = arrow_gap(f, b, data, PRIMES_TRAIN.seq_len, n_windows=256)
    assert res["gap"] > 0.03 and res["gap_ci95"][0] > 0.01  # forward at least 3% better, CI above 1%
