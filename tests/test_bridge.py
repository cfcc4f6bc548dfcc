"""A workbench HookedTransformer served as a TransformerBridge (issue 27 item 12): the converted
GPT-2 gives the same logits (float32 and float64) and the same activation at every hook, so the
SAE path (activation store, captured gradients), the sparsity and arrow probes and the head
methods give the HookedTransformer's answers on the bridge. References are the HookedTransformer
the bridge was made from; biases are made nonzero first (a fresh model has zero biases, which
would hide a missing or misplaced bias)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from workbench.bridge import as_bridge, byte_tokenizer, check_convertible, to_transformers
from workbench.corpus import ByteTokenizer, windows
from workbench.models import ModelConfig, new_model

from .conftest import TINY_KW

HOOKS = (
    "hook_embed",
    "hook_pos_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.ln1.hook_normalized",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.0.hook_attn_out",
    "blocks.1.mlp.hook_pre",
    "blocks.1.mlp.hook_post",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "ln_final.hook_normalized",
)


def _jittered(seed: int = 0, dtype=torch.float32, **overrides):
    model = new_model(ModelConfig(**{**TINY_KW, **overrides}), seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.to(dtype).eval()


def _tokens(n: int = 3, s: int = 24, seed: int = 0) -> torch.Tensor:
    toks = torch.randint(0, 256, (n, s), generator=torch.Generator().manual_seed(seed))
    toks[:, 0] = 256
    return toks


@pytest.fixture(scope="module")
def pair():
    model = _jittered()
    return model, as_bridge(model)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_bridge_logits_equal_the_hooked_transformer(dtype, tol):
    model = _jittered(dtype=dtype)
    hf, bridge, toks = to_transformers(model), as_bridge(model), _tokens()
    with torch.no_grad():
        ref = model(toks)
        assert ref.dtype == dtype and ref.abs().max() > 1  # not a near-zero output
        assert (hf(toks).logits - ref).abs().max() <= tol
        assert (bridge(toks) - ref).abs().max() <= tol
        ref_loss = model(toks, return_type="loss", loss_per_token=True)
        assert (bridge(toks, return_type="loss", loss_per_token=True) - ref_loss).abs().max() <= tol


def test_every_workbench_hook_reads_the_same_activation(pair):
    model, bridge = pair
    toks = _tokens()
    _, ref = model.run_with_cache(toks)
    _, got = bridge.run_with_cache(toks)
    assert set(model.hook_dict) <= set(bridge.hook_dict)  # every HookedTransformer name exists
    for name in HOOKS:
        assert got[name].shape == ref[name].shape, name
        assert (got[name] - ref[name]).abs().max() <= 1e-5, name


def test_unembed_bias_and_relu_are_carried(pair):
    """b_U lives in the biased lm_head; ReLU's exact zeros survive (lazy neurons are measurable)."""
    model, bridge = pair
    hf = to_transformers(model)
    assert torch.equal(hf.lm_head.bias, model.unembed.b_U) and hf.config.activation_function == "relu"
    _, cache = bridge.run_with_cache(_tokens())
    assert (cache["blocks.0.mlp.hook_post"] == 0).float().mean() > 0.2


def test_byte_tokenizer_is_the_byte_tokenizer():
    text = "déf f(x):\n\treturn x  # ✓ \x00\x7f"
    ours, hf = ByteTokenizer(), byte_tokenizer()
    assert hf.encode(text, add_special_tokens=False) == ours.encode(text) == list(text.encode())
    assert hf.decode(ours.encode(text)) == text and hf.convert_tokens_to_ids("<bos>") == ours.bos_token_id == 256
    assert len(hf) == ours.vocab_size


def test_models_without_a_gpt2_equivalent_are_refused():
    with pytest.raises(ValueError, match=r"model\.cfg\.attn_only=True"):
        check_convertible(new_model(ModelConfig(**{**TINY_KW, "attn_only": True}), seed=0))


def test_the_shipped_default_served_as_a_bridge():
    from workbench.default_model import load_shipped
    from workbench.hub import load_model
    from workbench.token_data import default_data

    bridge, tok = load_model("workbench-tiny", bridge=True)
    model = load_shipped("forward", 0)
    assert type(bridge).__name__ == "TransformerBridge" and isinstance(tok, ByteTokenizer)
    val = windows(default_data().validation, 64, bos_token_id=256, n=4)
    with torch.no_grad():
        assert (bridge(val) - model(val)).abs().max() <= 1e-4  # float32 through 2 layers of width 128
        assert torch.equal(bridge(val).argmax(-1), model(val).argmax(-1))


# --- the SAE path ------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post", "blocks.1.attn.hook_z"])
def test_activation_store_and_gradients_on_a_bridge(pair, hook):
    from workbench.activations import ActivationStore, ModelSource, StoreConfig, capture, hook_dim

    model, bridge = pair
    assert hook_dim(bridge, hook) == hook_dim(model, hook)
    toks = _tokens(2, 16, seed=3)
    (a_ref, g_ref), (a, g) = (capture(m, toks, hook, with_grads=True) for m in (model, bridge))
    assert (a - a_ref).abs().max() <= 1e-5 and (g - g_ref).abs().max() <= 1e-5 and g_ref.abs().max() > 0
    stream = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(1))
    cfg = StoreConfig(hook_name=hook, seq_len=16, buffer_tokens=256, model_batch=8)
    ref_batch, got_batch = (
        next(iter(ActivationStore(ModelSource(m, stream, cfg, bos_token_id=256), batch_size=64)))
        for m in (model, bridge)
    )
    assert (got_batch.acts - ref_batch.acts).abs().max() <= 1e-5


# --- probes ------------------------------------------------------------------------------------


def test_sparsity_probe_on_a_bridge(pair):
    from workbench.probes.sparsity import activation_sparsity, topk_intervention

    model, bridge = pair
    toks = _tokens(4, 24, seed=5)
    ref, got = activation_sparsity(model, toks), activation_sparsity(bridge, toks)
    assert got.active_frac == pytest.approx(ref.active_frac, abs=1e-6)
    assert got.never_firing == ref.never_firing and 0 < ref.active_frac[0] < 1
    _assert_close(topk_intervention(bridge, toks, [4, 16]), topk_intervention(model, toks, [4, 16]), 1e-5)


def test_arrow_probe_on_bridges():
    from workbench.probes.arrow import arrow_gap
    from workbench.token_data import TokenData

    fwd, bwd = _jittered(seed=1), _jittered(seed=2)
    stream = torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(7))
    data = TokenData(stream, stream, ByteTokenizer())
    ref = arrow_gap(fwd, bwd, data, seq_len=16, n_windows=8, n_boot=50)
    got = arrow_gap(as_bridge(fwd), as_bridge(bwd), data, seq_len=16, n_windows=8, n_boot=50)
    assert got["loss_forward"] == pytest.approx(ref["loss_forward"], abs=1e-5)
    assert got["gap"] == pytest.approx(ref["gap"], abs=1e-5) and abs(ref["gap"]) > 1e-4


# --- the head methods (probes/heads.py, duo.py, razor.py, kv_tradeoff.py) -----------------------


def _assert_close(got, ref, tol: float, path: str = "result") -> None:
    """Every number of two results within `tol`, every string and shape equal (wall time aside)."""
    if dataclasses.is_dataclass(ref):
        got, ref = dataclasses.asdict(got), dataclasses.asdict(ref)
    if isinstance(ref, dict):
        assert set(got) == set(ref), path
        for k in set(ref) - {"seconds"}:
            _assert_close(got[k], ref[k], tol, f"{path}.{k}")
    elif isinstance(ref, (list, tuple)):
        assert len(got) == len(ref), path
        for i, (g, r) in enumerate(zip(got, ref)):
            _assert_close(g, r, tol, f"{path}[{i}]")
    elif isinstance(ref, float) and not isinstance(ref, bool):
        assert (math.isnan(got) and math.isnan(ref)) or abs(got - ref) <= tol, (path, got, ref)
    else:
        assert got == ref, (path, got, ref)


def _heads_configs():
    from workbench.probes.duo import DuoConfig, PasskeyConfig
    from workbench.probes.heads import HeadRoleConfig
    from workbench.probes.kv_tradeoff import TradeoffConfig
    from workbench.probes.razor import RazorConfig

    passkey = PasskeyConfig(seq_len=32, key_len=3, needle_prefix=" key ", question=" key? ")
    return (
        HeadRoleConfig(n_contexts=4, seq_len=32, needle_len=4),
        DuoConfig(n_contexts=4, batch_size=4, steps=3, log_every=1, passkey=passkey),
        RazorConfig(n_contexts=2, segment=8, repeats=3),
        TradeoffConfig(
            fractions=(0, 50, 100),
            n_random=2,
            seq_len=32,
            n_needle=4,
            needle_len=4,
            n_passkey=4,
            passkey=passkey,
            n_text=4,
        ),
    )


HAYSTACK = torch.randint(32, 127, (6000,), generator=torch.Generator().manual_seed(11))


def test_head_roles_on_a_bridge(pair):
    from workbench.probes.heads import head_roles

    model, bridge = pair
    cfg = _heads_configs()[0]
    _assert_close(head_roles(bridge, cfg, bos=256), head_roles(model, cfg, bos=256), 1e-4)


def test_duo_gates_on_a_bridge(pair):
    from workbench.probes.duo import duo_gates

    model, bridge = pair
    cfg = _heads_configs()[1]
    ref = duo_gates(model, cfg, haystack=HAYSTACK, bos=256, progress=False)
    got = duo_gates(bridge, cfg, haystack=HAYSTACK, bos=256, progress=False)
    _assert_close(got, ref, 1e-4)


def test_razor_scores_on_a_bridge(pair):
    from workbench.probes.razor import razor_scores

    model, bridge = pair
    cfg = _heads_configs()[2]
    _assert_close(razor_scores(bridge, cfg, bos=256), razor_scores(model, cfg, bos=256), 1e-4)


def test_tradeoff_curve_on_a_bridge(pair):
    from workbench.probes.kv_tradeoff import tradeoff_curve

    model, bridge = pair
    cfg = _heads_configs()[3]
    ranking = {"first": [[float(4 * layer + h) for h in range(4)] for layer in range(2)]}
    ref = tradeoff_curve(model, ranking, cfg, bos=256, haystack=HAYSTACK, progress=False)
    got = tradeoff_curve(bridge, ranking, cfg, bos=256, haystack=HAYSTACK, progress=False)
    _assert_close(got, ref, 1e-4)


def test_only_the_hooked_deprecation_is_silenced_and_only_where_the_package_builds_one():
    import warnings

    from transformer_lens import HookedTransformer

    cfg = ModelConfig(**TINY_KW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new_model(cfg, seed=0)
        quiet = [str(w.message) for w in caught]
        HookedTransformer(cfg.to_hooked(0))  # built directly: TransformerLens still says it
        warnings.warn("another deprecation", DeprecationWarning, stacklevel=1)
    assert not any("will be removed" in m for m in quiet), quiet
    loud = [str(w.message) for w in caught[len(quiet) :]]
    assert any(m.startswith("HookedTransformer is deprecated and will be removed in 4.0") for m in loud)
    assert "another deprecation" in loud
