"""Sparsity probes on a gated (SwiGLU-style) MLP whose activations are set by hand.

One layer, attention and positional embeddings zeroed, no layer norm, float64: every token's MLP
input is e_0, so the gate pre-activations are [4, 3, 2, 1] and the up projections
[0.01, 0.1, 1, 10]. act(gate) = silu(gate) ranks neuron 0 first and neuron 3 last, while
hook_post = act(gate)·up ranks them the other way round. Only neuron 3 writes to the output (to
the logit of the target token), so the loss tells which quantity an intervention used.
"""

import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.probes.sparsity import activation_sparsity, hidden_activations, threshold_for_loss, topk_intervention

GATE = [4.0, 3.0, 2.0, 1.0]
UP = [0.01, 0.1, 1.0, 10.0]
VOCAB, TARGET = 5, 1


def silu(v: float) -> float:
    return v / (1 + math.exp(-v))


@pytest.fixture(scope="module")
def gated():
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=4,
        n_heads=1,
        d_head=4,
        d_mlp=4,
        n_ctx=8,
        d_vocab=VOCAB,
        act_fn="silu",
        gated_mlp=True,
        normalization_type=None,
        dtype=torch.float64,
    )
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[:, 0] = 1.0  # every token's residual is e_0
        mlp = model.blocks[0].mlp
        mlp.W_gate[0] = torch.tensor(GATE, dtype=torch.float64)
        mlp.W_in[0] = torch.tensor(UP, dtype=torch.float64)
        mlp.W_out[3, 2] = 1.0  # neuron 3 -> residual dim 2 -> the target's logit
        model.unembed.W_U[2, TARGET] = 1.0
    return model


TOKENS = torch.full((2, 6), TARGET)  # every next token is TARGET


def _loss(target_logit: float) -> float:
    """Cross-entropy when the target's logit is `target_logit` and the other logits are 0."""
    return math.log(1 + (VOCAB - 1) * math.exp(-target_logit))


def test_gated_model_has_the_planted_activations(gated):
    _, cache = gated.run_with_cache(TOKENS)
    post = [silu(g) * u for g, u in zip(GATE, UP)]
    torch.testing.assert_close(cache["blocks.0.mlp.hook_post"][0, 0], torch.tensor(post, dtype=torch.float64))
    assert float(gated(TOKENS, return_type="loss")) == pytest.approx(_loss(post[3]), rel=1e-12)
    acts = hidden_activations(gated, TOKENS)[0]
    torch.testing.assert_close(acts, torch.tensor([silu(g) for g in GATE], dtype=torch.float64).expand(2, 5, 4))


def test_gated_sparsity_measures_act_gate(gated):
    # |act(gate)| > 1: neurons 0, 1, 2 (silu(1) = 0.73); |hook_post| > 1 would be neurons 2, 3
    assert activation_sparsity(gated, TOKENS, threshold=1.0).active_frac == [pytest.approx(3 / 4)]
    assert activation_sparsity(gated, TOKENS, threshold=0.75).active_frac == [pytest.approx(3 / 4)]
    assert activation_sparsity(gated, TOKENS, threshold=0.7).active_frac == [pytest.approx(1.0)]


def test_gated_topk_keeps_the_largest_act_gate(gated):
    res = topk_intervention(gated, TOKENS, ks=[1, 3, 4])
    clean = _loss(silu(1.0) * 10.0)
    assert res["clean_loss"] == pytest.approx(clean, rel=1e-12)
    # k = 1 and k = 3 keep neurons 0 (and 1, 2) by act(gate) and drop neuron 3: all logits 0
    assert res["loss"][:2] == [pytest.approx(math.log(VOCAB), rel=1e-12)] * 2
    assert res["delta"][2] == 0.0


def test_gated_threshold_zeroes_by_act_gate_and_reports_it(gated):
    # zeroing |act(gate)| <= eps costs nothing until eps reaches silu(1), neuron 3's act(gate)
    res = threshold_for_loss(gated, TOKENS, p=1.0, iters=20)
    hi = silu(4.0)
    assert silu(1.0) - hi / 2**19 <= res["epsilon"] < silu(1.0)
    assert res["active_frac"] == [pytest.approx(1.0)]  # every act(gate) is above that eps
