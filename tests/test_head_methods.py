"""DuoAttention gates, RazorAttention's rule and compensation token, and the KV-cache trade-off,
checked against float64 references and a hand-set model with known head roles (issue 21 item 7)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tests.handset_heads import BOS, INDUCTION_HEAD, N, V, handset_model
from workbench.probes.attention_restrict import attn_scale, gate_hooks, keep_full_hooks, kv_fraction, streaming_pattern
from workbench.probes.duo import DuoConfig, DuoResult, PasskeyConfig, duo_gates, passkey_batch
from workbench.probes.heads import HeadRoleConfig, copy_steps, make_contexts
from workbench.probes.kv_tradeoff import (
    TradeoffConfig,
    TradeoffResult,
    keep_top,
    n_full_heads,
    standard_rankings,
    tradeoff_curve,
)
from workbench.probes.razor import RazorConfig, RazorResult, protected_heads, razor_scores


def random_model(n_kv_heads: int | None = None, seed: int = 0) -> HookedTransformer:
    """A small float64 model with sharp, varied attention (W_Q scaled up from TL's init)."""
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_heads=4,
        d_head=4,
        n_ctx=16,
        d_vocab=11,
        d_mlp=32,
        act_fn="gelu",
        normalization_type="LN",
        dtype=torch.float64,
        seed=seed,
        n_key_value_heads=n_kv_heads,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(8.0)
    return model.eval()


TOKENS = torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(1))
ALL_STREAMING = torch.zeros(2, 4)


# --- the restriction itself -------------------------------------------------------------------


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_window_covering_the_context_is_the_full_model(n_kv_heads):
    model = random_model(n_kv_heads)
    full = model(TOKENS)
    with model.hooks(fwd_hooks=gate_hooks(model, ALL_STREAMING, sink=0, window=16)):
        assert torch.equal(model(TOKENS), full)
    with model.hooks(fwd_hooks=gate_hooks(model, ALL_STREAMING, sink=2, window=20, compensation=True)):
        torch.testing.assert_close(model(TOKENS), full, atol=1e-12, rtol=0)
    with model.hooks(fwd_hooks=gate_hooks(model, ALL_STREAMING, sink=1, window=3)):
        assert (model(TOKENS) - full).abs().max() > 1e-3  # and a short window does change it


@pytest.mark.parametrize("compensation,comp_weight", [(False, "count"), (True, "count"), (True, "one")])
def test_streaming_head_output_matches_a_direct_float64_computation(compensation, comp_weight):
    model, sink, window, head = random_model(), 2, 3, 1
    _, cache = model.run_with_cache(TOKENS)
    q, k, v = (cache[f"blocks.0.attn.hook_{n}"][:, :, head] for n in "qkv")  # [b, T, d_head]
    scale = attn_scale(model, 0)
    alpha = torch.ones(2, 4)
    alpha[0, head] = 0.0
    with model.hooks(
        fwd_hooks=gate_hooks(model, alpha, sink, window, compensation=compensation, comp_weight=comp_weight)
    ):
        _, got = model.run_with_cache(TOKENS, names_filter="blocks.0.attn.hook_z")
    z = got["blocks.0.attn.hook_z"][:, :, head]
    T = TOKENS.shape[1]
    for b in range(len(TOKENS)):
        for t in range(T):
            kept = [j for j in range(t + 1) if j < sink or j > t - window]
            dropped = [j for j in range(t + 1) if j not in kept]
            logits = [float(q[b, t] @ k[b, j]) / scale for j in kept]
            vals = [v[b, j] for j in kept]
            if compensation and dropped:
                k_hat, v_hat = k[b, dropped].mean(0), v[b, dropped].mean(0)
                w = len(dropped) if comp_weight == "count" else 1
                logits.append(float(q[b, t] @ k_hat) / scale + math.log(w))
                vals.append(v_hat)
            p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
            want = sum(pi * vi for pi, vi in zip(p, vals))
            torch.testing.assert_close(z[b, t], want, atol=1e-12, rtol=0)
    # untouched heads are the clean model's
    torch.testing.assert_close(
        got["blocks.0.attn.hook_z"][:, :, 0], cache["blocks.0.attn.hook_z"][:, :, 0], atol=0, rtol=0
    )


def test_streaming_pattern_rows_sum_to_one_and_stay_causal():
    scores = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    scores = scores.masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), float("-inf"))
    for comp in (False, True):
        p = streaming_pattern(scores, 1, 3, compensation=comp)
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 10, dtype=torch.float64))
        assert (p.triu(1) == 0).all()


def test_gate_gradient_is_finite_and_nonzero():
    model = random_model()
    full = model(TOKENS, stop_at_layer=2).detach()
    alpha = torch.full((2, 4), 0.5, requires_grad=True)
    with model.hooks(fwd_hooks=gate_hooks(model, alpha, sink=1, window=2, compensation=True)):
        loss = (model(TOKENS, stop_at_layer=2) - full).pow(2).sum()
    loss.backward()
    assert torch.isfinite(alpha.grad).all() and (alpha.grad.abs() > 0).all()


def test_bad_inputs_name_the_argument():
    model = random_model()
    with pytest.raises(ValueError, match="alpha"):
        gate_hooks(model, torch.zeros(3, 4), 1, 2)
    with pytest.raises(ValueError, match="window"):
        gate_hooks(model, ALL_STREAMING, 1, 0)
    with pytest.raises(ValueError, match="n_kv_heads"):
        kv_fraction(torch.ones(2, 4, dtype=torch.bool), 10, 1, 2, n_kv_heads=3)
    with pytest.raises(ValueError, match="fractions"):
        n_full_heads(120, 8)
    with pytest.raises(ValueError, match="haystack"):
        duo_gates(model, DuoConfig(passkey=PasskeyConfig(seq_len=16)), progress=False)
    with pytest.raises(ValueError, match="seq_len"):
        passkey_batch(2, PasskeyConfig(seq_len=10), torch.arange(100), bos=0, vocab=50)


# --- KV arithmetic and rankings ---------------------------------------------------------------


def test_kv_fraction_arithmetic_is_exact():
    keep = torch.zeros(2, 4, dtype=torch.bool)
    keep[1, 0] = keep[0, 3] = True
    assert kv_fraction(keep, 128, 1, 4) == (2 * 128 + 6 * 5) / (8 * 128)
    assert kv_fraction(keep, 128, 1, 4, compensation=True) == (2 * 128 + 6 * 6) / (8 * 128)
    assert kv_fraction(keep, 5, 1, 4, compensation=True) == 1.0  # nothing dropped: no extra token
    assert kv_fraction(torch.zeros(2, 4, dtype=torch.bool), 3, 1, 4) == 1.0
    # GQA, 2 KV heads per layer: one full query head keeps its whole group's cache
    assert kv_fraction(keep, 100, 1, 4, n_kv_heads=2) == (2 * 100 + 2 * 5) / (4 * 100)
    assert [n_full_heads(p, 8) for p in (0, 10, 25, 50, 75, 100)] == [0, 1, 2, 4, 6, 8]
    assert n_full_heads(25, 2) == 1  # a half rounds up
    ties = keep_top(torch.tensor([[1.0, 2.0, 2.0, 0.0], [2.0, 0.0, 0.0, 0.0]]), 2)
    assert ties.tolist() == [[False, True, True, False], [False] * 4]  # equal scores: lower index first


def test_protection_rule_counts():
    echo, ind = torch.arange(50.0).view(5, 10), torch.arange(50.0).flip(0).view(5, 10)
    keep = protected_heads(echo, ind, 0.14, 0.01)
    assert keep.sum() == 7 + 1  # ceil(7.000000000000001) is 7; ceil(0.5) is 1; disjoint here
    assert keep.flatten()[:7].all() and keep.flatten()[49]
    with pytest.raises(ValueError, match="induction_frac"):
        protected_heads(echo, ind, 1.5, 0.01)


# --- the hand-set model: known answers ---------------------------------------------------------


@pytest.fixture(scope="module")
def handset():
    return handset_model()


@pytest.fixture(scope="module")
def needle(handset):
    batch = make_contexts(handset, HeadRoleConfig(n_contexts=64, seq_len=N, needle_len=8, token_range=(0, V - 1)), BOS)
    q, _ = copy_steps(batch)
    return batch.tokens, q


def copy_accuracy(model, tokens, q, hooks=()) -> float:
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    return float((logits[:, q].argmax(-1) == tokens[:, q + 1]).double().mean())


def test_only_the_induction_head_needs_full_attention(handset, needle):
    tokens, q = needle
    full = copy_accuracy(handset, tokens, q)
    assert full > 0.7
    for layer in range(2):
        for head in range(4):
            keep = torch.zeros(2, 4, dtype=torch.bool)
            keep[layer, head] = True
            acc = copy_accuracy(handset, tokens, q, keep_full_hooks(handset, keep, sink=1, window=4))
            if (layer, head) == INDUCTION_HEAD:
                assert abs(acc - full) <= 0.02
            else:
                assert acc < full - 0.02, (layer, head, acc, full)


def test_razor_scores_find_the_induction_head(handset):
    res = razor_scores(handset, RazorConfig(n_contexts=4, segment=15, repeats=3), bos=BOS)
    ind = torch.tensor(res.induction)
    assert ind.flatten().argmax() == INDUCTION_HEAD[0] * 4 + INDUCTION_HEAD[1]
    assert ind[INDUCTION_HEAD] > 0.95 and ind.flatten().sort().values[-2] < 0.3
    assert res.protected[INDUCTION_HEAD[0]][INDUCTION_HEAD[1]]
    assert sum(map(sum, res.protected)) <= res.n_induction_protected + res.n_echo_protected == 2 + 1
    assert RazorResult.from_dict(json.loads(json.dumps(res.to_dict()))) == res


HAYSTACK = torch.randint(0, V - 1, (4000,), generator=torch.Generator().manual_seed(3))
DUO = DuoConfig(
    n_contexts=32, batch_size=16, steps=60, lr=0.05, log_every=10, passkey=PasskeyConfig(seq_len=N, key_len=4)
)


def test_duo_gates_keep_only_the_induction_head(handset):
    res = duo_gates(handset, DUO, haystack=HAYSTACK, bos=BOS, progress=False)
    alphas = torch.tensor(res.alphas)
    assert alphas[INDUCTION_HEAD] >= 0.8
    others = torch.ones(2, 4, dtype=torch.bool)
    others[INDUCTION_HEAD] = False
    assert (alphas[others] <= 0.2).all(), alphas
    assert len(res.loss) == len(res.distance) == len(res.penalty) == 60
    assert res.trajectory_steps == [0, 10, 20, 30, 40, 50, 60] and res.trajectory[0] == [[1.0] * 4] * 2
    _, curve = res.head_curve(*INDUCTION_HEAD)
    assert curve[-1] == res.alphas[INDUCTION_HEAD[0]][INDUCTION_HEAD[1]]
    assert res.loss[-1] < res.loss[0]  # the penalty falls faster than the distance grows
    again = DuoResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.alphas == res.alphas and again.config == res.config


def test_duo_is_deterministic_by_seed(handset):
    cfg = DuoConfig(**{**DUO.__dict__, "steps": 4})
    a, b = (duo_gates(handset, cfg, haystack=HAYSTACK, bos=BOS, progress=False) for _ in range(2))
    assert a.alphas == b.alphas and a.loss == b.loss


def test_passkey_contexts_hold_the_key_twice():
    batch = passkey_batch(6, PasskeyConfig(seq_len=N, key_len=4), HAYSTACK, bos=BOS, vocab=V, seed=5)
    rows = torch.arange(6)[:, None]
    assert batch.tokens.shape == (6, N) and (batch.tokens[:, 0] == BOS).all()
    assert torch.equal(batch.tokens[rows, batch.answer_pos + 1], batch.answer)
    prefix = 4  # random_prefix_len: the needle is prefix + key, the question the same prefix
    inside = batch.tokens[rows, batch.needle_pos[:, None] + prefix + torch.arange(4)]
    assert torch.equal(inside, batch.answer)
    assert torch.equal(
        passkey_batch(6, PasskeyConfig(seq_len=N, key_len=4), HAYSTACK, bos=BOS, vocab=V, seed=5).tokens, batch.tokens
    )


def test_tradeoff_curve_on_the_handset_model(handset):
    """The curve's content on 8 heads; whether it beats random is tests/test_head_verdicts.py's (with 8
    heads one head full cannot: p >= 1/8)."""
    induction_first = [[0.0] * 4, [0.0] * 4]
    induction_first[INDUCTION_HEAD[0]][INDUCTION_HEAD[1]] = 1.0
    cfg = TradeoffConfig(
        seq_len=N,
        n_needle=32,
        needle_len=8,
        n_passkey=16,
        n_text=8,
        n_random=5,
        passkey=PasskeyConfig(key_len=4),
        token_range=(0, V - 1),
    )
    res = tradeoff_curve(handset, {"induction": induction_first}, cfg, bos=BOS, haystack=HAYSTACK, progress=False)
    acc = res.curves["induction"]["needle_acc"]
    assert res.n_full == [0, 1, 2, 4, 6, 8]
    assert abs(acc[1] - acc[-1]) <= 0.02 and acc[0] < acc[-1] - 0.3  # one head (10%) is enough
    assert res.curves["induction"]["passkey_token_acc"][1] == res.curves["induction"]["passkey_token_acc"][-1]
    assert res.verdicts["induction"]["needle_acc"][1] == "untestable at this size"
    assert not res.beats_random("induction", "needle_acc", 10)
    assert res.kv_fraction[1] == (1 * N + 7 * 5) / (8 * N)
    # the band is over every subset of each size (all exact on 8 heads); the random rankings lie inside it
    band = res.random_band["needle_acc"]
    per_seed = torch.tensor([c["needle_acc"] for c in res.random_curves], dtype=torch.float64)  # [seed, x]
    assert len(res.random_curves) == cfg.n_random and res.null_exact == [True] * 6
    assert (per_seed >= torch.tensor(band["min"], dtype=torch.float64) - 1e-12).all()
    assert (per_seed <= torch.tensor(band["max"], dtype=torch.float64) + 1e-12).all()
    assert band["min"][1] <= band["lo"][1] <= band["mean"][1] <= band["hi"][1] <= band["max"][1]
    assert band["max"][1] == pytest.approx(acc[1])  # the best single head is the induction head
    again = TradeoffResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again == res
    from workbench.figures.kv_tradeoff import tradeoff_figure

    fig = tradeoff_figure(again)
    assert len(fig.data) == 3 * (2 + 1)  # per panel: band, random mean, one ranking


def test_standard_rankings_from_results_and_dicts():
    roles = {
        "retrieval": [[0.1, 0.2]],
        "streaming": [[0.9, 0.3]],
        "tl_scores": {"induction": [[0.0, 1.0]]},
        "delta_loss": [[0.5, 0.0]],
    }
    razor = RazorResult(
        echo=[[0.3, 0.0]],
        induction=[[0.1, 0.2]],
        protected=[[True, False]],
        n_induction_protected=1,
        n_echo_protected=1,
        config={},
    )
    got = standard_rankings(roles, {"alphas": [[1.0, 0.0]]}, razor.to_dict())
    assert got["streaming_reversed"] == [[pytest.approx(0.1), pytest.approx(0.7)]]
    assert got["duo_alpha"] == [[1.0, 0.0]] and got["tl_induction"] == [[0.0, 1.0]]
    assert keep_top(torch.tensor(got["razor"]), 1).tolist() == [[True, False]]  # protected beats higher induction


@pytest.mark.parametrize("segment,repeats,prefix", [(3, 2, 1), (4, 3, 1), (5, 3, 0)])
def test_echo_and_induction_keys_follow_their_definition(segment, repeats, prefix):
    """RazorAttention's keys on repeated distinct tokens, by brute force over the token sequence: an
    echo key holds the query's own token earlier on; an induction key follows an earlier copy of it."""
    from workbench.probes.razor import echo_induction_masks

    toks = [-1] * prefix + list(range(segment)) * repeats  # -1: BOS, never equal to a segment token
    T = len(toks)
    echo = [[k < q and toks[k] == toks[q] >= 0 for k in range(T)] for q in range(T)]
    induction = [[0 < k < q and k - 1 >= prefix and toks[k - 1] == toks[q] >= 0 for k in range(T)] for q in range(T)]
    got_e, got_i = echo_induction_masks(segment, repeats, prefix)
    assert got_e.tolist() == echo and got_i.tolist() == induction
    assert int(got_e.sum()) == segment * repeats * (repeats - 1) // 2  # each copy sees every earlier one


@pytest.mark.parametrize("compensation", [False, True])
def test_keep_full_hooks_are_gate_hooks_at_binary_alpha_bit_for_bit(handset, needle, compensation):
    """keep_full_hooks computes the restriction for the streaming heads only; its logits must be
    exactly gate_hooks' at α = keep (1·full + 0·streaming), whichever heads are kept, none or all."""
    tokens, _ = needle
    mixed = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)  # full and streaming in each layer
    plain = handset(tokens)
    for keep in (mixed, torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 4).bool()):
        want = handset.run_with_hooks(
            tokens, fwd_hooks=gate_hooks(handset, keep.float(), 1, 4, compensation=compensation)
        )
        got = handset.run_with_hooks(tokens, fwd_hooks=keep_full_hooks(handset, keep, 1, 4, compensation=compensation))
        assert torch.equal(got, want), keep
        assert torch.equal(got, plain) == bool(keep.all())  # a streaming head changes the logits
    with pytest.raises(ValueError, match=r"keep: expected shape \[n_layers=2, n_heads=4\]"):
        keep_full_hooks(handset, torch.ones(4, 2, dtype=torch.bool), 1, 4)
    with pytest.raises(TypeError, match="keep: expected a bool"):
        keep_full_hooks(handset, torch.full((2, 4), 0.3), 1, 4)
