"""Head verdicts that do not hang on one seed (issue 27, items 1-5): p-values per trade-off point
against every subset or random rankings with Holm, "untestable at this size", tie orders,
context-seed intervals, refusing a metric at chance, held-out passkeys, one restriction for the
causal check and the trade-off, the final norm's weight, the saved passkey length, the real share of
heads, and "formed" with a third state."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tests.handset_heads import INDUCTION_HEAD, N, handset_model
from workbench.probes import ranking_test as rt
from workbench.probes.duo import PasskeyConfig, fitting_batch, key_set, passkey_batch
from workbench.probes.kv_tradeoff import TradeoffConfig, TradeoffResult, eval_contexts, tradeoff_curve

V = 64  # the hand-set models' vocabulary here (BOS = V - 1): half the width, a quarter of the cost of 128
BOS = V - 1
HAYSTACK = torch.randint(0, V - 1, (4000,), generator=torch.Generator().manual_seed(3))


def _cfg(**kw) -> TradeoffConfig:
    """Few contexts: every test here measures tens of head subsets, each a forward pass of them all."""
    base = dict(
        seq_len=N,
        n_needle=8,
        needle_len=8,
        n_passkey=4,
        n_text=2,
        n_random=19,
        passkey=PasskeyConfig(key_len=4),
        token_range=(0, V - 1),
    )
    return TradeoffConfig(**{**base, **kw})


def _induction_first(n_heads: int) -> list[list[float]]:
    scores = [[0.0] * n_heads for _ in range(2)]
    scores[INDUCTION_HEAD[0]][INDUCTION_HEAD[1]] = 1.0
    return scores


# --- the test itself, against brute force -------------------------------------------------------


def test_holm_matches_its_definition():
    p = [0.01, None, 0.04, 0.03, 0.5]
    # k = 4 tested: sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.09, max(0.09, 0.08), max(.., 0.5)
    assert rt.holm(p) == pytest.approx([0.04, None, 0.09, 0.09, 0.5])
    assert rt.holm([None, None]) == [None, None]
    assert rt.holm([0.6, 0.7]) == [1.0, 1.0]


def test_subset_p_exact_and_monte_carlo():
    null = [0.1, 0.5, 0.5, 0.9]
    assert rt.subset_p(0.5, null, True, exact=True) == 3 / 4  # ties count as reaching it
    assert rt.subset_p(0.5, null, False, exact=True) == 3 / 4
    assert rt.subset_p(0.95, null, True, exact=False) == 1 / 5  # (1 + 0) / (1 + R)
    assert rt.min_attainable_p(8, True) == 0.125 and rt.min_attainable_p(99, False) == 0.01
    assert rt.verdict(0.01, 0.125, 0.05) == rt.UNTESTABLE  # 1 of 8 heads: no pick can reach 0.05
    assert rt.verdict(0.04, 1 / 28, 0.05) == rt.BEATS and rt.verdict(0.06, 1 / 28, 0.05) == rt.NOT_SHOWN
    assert rt.verdict(0.001, 0.001, 0.05, at_chance=True) == rt.AT_CHANCE


def test_curve_verdicts_count_holms_multiplier_in_testability():
    """Two points at R = 19 (smallest p 1/20 each): Holm's best is 2/20, never below 0.05, so even a
    perfect ranking is "untestable", not "not shown"; at R = 40 the best is 2/41 and it passes."""
    adj, v = rt.curve_verdicts([1 / 20, 1 / 20], [1 / 20, 1 / 20], 0.05)
    assert adj == [None, None] and v == [rt.UNTESTABLE] * 2  # 1/20 is not below alpha: nothing tested
    adj, v = rt.curve_verdicts([1 / 32, 1 / 32, 1.0], [1 / 32, 1 / 32, 1.0], 0.05)
    assert adj == [pytest.approx(2 / 32), pytest.approx(2 / 32), None]  # each 1/32 < 0.05, yet 2/32 is not
    assert v == [rt.UNTESTABLE] * 3
    adj, v = rt.curve_verdicts([1 / 41, 0.5], [1 / 41, 1 / 41], 0.05)
    assert adj == [pytest.approx(2 / 41), pytest.approx(0.5)] and v == [rt.BEATS, rt.NOT_SHOWN]
    adj, v = rt.curve_verdicts([1 / 28, 7 / 28], [1 / 28, 1.0], 0.05)  # one testable point: no multiplier
    assert v == [rt.BEATS, rt.UNTESTABLE]
    with pytest.raises(ValueError, match="p_raw and min_p"):
        rt.curve_verdicts([0.1], [0.1, 0.2], 0.05)


def test_tie_orders_enumerate_the_choices_at_the_cut():
    scores = [1.0, 1.0, 0.995, 0.2, 0.0, 0.0, 0.0, 0.7]  # Duo-like: two clamped at 1, three at 0
    sets, tied = rt.tie_orders(scores, 1, max_orders=100)
    assert tied and sets == [[0], [1]]
    sets, tied = rt.tie_orders(scores, 2, max_orders=100)
    assert not tied and sets == [[0, 1]]
    sets, tied = rt.tie_orders(scores, 6, max_orders=100)
    assert tied and sets == [sorted([0, 1, 2, 3, 7, z]) for z in (4, 5, 6)]
    sets, tied = rt.tie_orders([0.0] * 10, 5, max_orders=7, seed=1)
    assert tied and len(sets) == 7 and all(len(s) == 5 for s in sets)
    assert rt.all_subsets(8, 2) == [list(c) for c in itertools.combinations(range(8), 2)]


# --- the trade-off on hand-set models ---------------------------------------------------------------


@pytest.fixture(scope="module")
def handset8():
    return handset_model(dtype=torch.float32, vocab=V)


@pytest.fixture(scope="module")
def res8(handset8):
    tied = _induction_first(4)
    tied[0][3] = 1.0  # L0H3 (zero weights) ties with the induction head: a tie at the 1-head cut
    rankings = {"induction": _induction_first(4), "tied": tied}
    return tradeoff_curve(
        handset8, rankings, _cfg(fractions=(0, 10, 25, 100)), bos=BOS, haystack=HAYSTACK, progress=False
    )


def test_eight_heads_one_needed_is_untestable_at_one_head(res8):
    """1 of 8 heads: the perfect pick's exact p is 1/8 >= 0.05, so "untestable", not "beats random"."""
    v = res8.verdicts["induction"]["needle_acc"]
    assert res8.n_full == [0, 1, 2, 8] and res8.null_exact == [True] * 4 and res8.null_size == [1, 8, 28, 1]
    assert res8.min_p == [1.0, 1 / 8, 1 / 28, 1.0]
    assert v[0] == v[1] == v[3] == rt.UNTESTABLE
    assert res8.p_values["induction"]["needle_acc"][1] == 1 / 8  # only its own singleton reaches it
    # 2 of 8: 7 of the 28 pairs hold the induction head and reach the same accuracy: p = 7/28
    assert res8.p_values["induction"]["needle_acc"][2] == pytest.approx(7 / 28)
    assert v[2] == rt.NOT_SHOWN and not res8.beats_random("induction", "needle_acc", 25)


def test_exact_null_and_quantile_band_match_an_enumeration(res8, handset8):
    """The band at 2 heads full is the quantiles of all 28 pairs' accuracies, measured here again."""
    from workbench.probes.attention_restrict import keep_full_hooks
    from workbench.probes.heads import copy_steps

    ctx = eval_contexts(handset8, _cfg(), 0, haystack=HAYSTACK, text=HAYSTACK, bos=BOS)
    accs = []
    for pair in itertools.combinations(range(8), 2):
        keep = torch.zeros(8, dtype=torch.bool)
        keep[list(pair)] = True
        with handset8.hooks(fwd_hooks=keep_full_hooks(handset8, keep.view(2, 4), 1, 4)):
            logits = handset8(ctx.needle_tokens)
        accs.append(float((logits[:, ctx.needle_q].argmax(-1) == ctx.needle_targets).double().mean()))
    accs = np.array(accs)
    band = res8.random_band["needle_acc"]
    assert band["lo"][2] == pytest.approx(np.quantile(accs, 0.05), abs=1e-12)
    assert band["hi"][2] == pytest.approx(np.quantile(accs, 0.95), abs=1e-12)
    assert band["mean"][2] == pytest.approx(accs.mean(), abs=1e-12)
    assert band["max"][2] == pytest.approx(accs.max(), abs=1e-12)
    _ = copy_steps  # the contexts' copy steps are the trade-off's own (eval_contexts)


def test_tied_scores_average_over_tie_orders(res8):
    """ "tied" keeps L1H0 or L0H3 at one head full: the point is their mean, the range both, the p
    the worse order's; two heads full holds both, no tie."""
    c, r = res8.curves["tied"]["needle_acc"], res8.tie_range["tied"]["needle_acc"]
    full_one = res8.curves["induction"]["needle_acc"][1]  # the induction head alone
    none = res8.curves["induction"]["needle_acc"][0]  # nothing full (L0H3 alone changes nothing)
    assert res8.tied["tied"] == [False, True, False, False]
    assert res8.tied["induction"] == [False, False, True, False]  # 2 full: L1H0 + one of 7 zero-score heads
    assert r[1] == pytest.approx(sorted([none, full_one]))
    assert c[1] == pytest.approx((none + full_one) / 2)
    assert res8.p_values["tied"]["needle_acc"][1] == 1.0  # the worse order is as bad as any subset


@pytest.fixture(scope="module")
def handset32():
    return handset_model(n_heads=16, dtype=torch.float32, vocab=V)


def test_planted_head_beats_random_where_a_pass_is_possible(handset32):
    """32 heads, one needed: at 1 head full the induction ranking's exact p is 1/32 (< 0.05; the
    only testable point, so Holm leaves it), a verdict 8 heads cannot give."""
    res = tradeoff_curve(
        handset32,
        {"induction": _induction_first(16)},
        _cfg(fractions=(0, 3, 100)),
        bos=BOS,
        haystack=HAYSTACK,
        progress=False,
    )
    assert res.n_full == [0, 1, 32] and res.n_heads == 32
    assert res.p_values["induction"]["needle_acc"][1] == pytest.approx(1 / 32)
    assert res.p_adjusted["induction"]["needle_acc"] == [None, pytest.approx(1 / 32), None]
    assert res.verdicts["induction"]["needle_acc"] == [rt.UNTESTABLE, rt.BEATS, rt.UNTESTABLE]
    assert res.beats_random("induction", "needle_acc", 3)
    acc = res.curves["induction"]["needle_acc"]
    assert abs(acc[1] - acc[-1]) <= 0.02 and acc[0] < acc[-1] - 0.3
    again = TradeoffResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again == res


def test_monte_carlo_p_counts_the_random_rankings(handset32):
    """C(32, 2) = 496 > the cap of 100: the null is the R random rankings, p = (1 + hits) / (1 + R)."""
    distinct = [[0.5 - 0.01 * (16 * l + h) for h in range(16)] for l in range(2)]  # no ties: one subset a point
    distinct[INDUCTION_HEAD[0]][INDUCTION_HEAD[1]] = 1.0
    res = tradeoff_curve(
        handset32,
        {"induction": distinct},
        _cfg(fractions=(0, 6, 100), exact_max_subsets=100, n_random=19),
        bos=BOS,
        haystack=HAYSTACK,
        progress=False,
    )
    assert res.n_full[1] == 2 and res.null_exact == [True, False, True] and res.null_size == [1, 19, 1]
    v = res.curves["induction"]["needle_acc"][1]
    hits = sum(c["needle_acc"][1] >= v - 1e-12 for c in res.random_curves)
    assert res.p_values["induction"]["needle_acc"][1] == pytest.approx((1 + hits) / 20)
    assert res.min_p[1] == pytest.approx(1 / 20)
    assert res.verdicts["induction"]["needle_acc"][1] == rt.UNTESTABLE  # R = 19 cannot reach p < 0.05


def test_context_seeds_give_a_t_interval_per_point(handset8):
    """Seeds 0, 1, 2: each extra seed's curve is the trade-off run on that seed alone, and the interval
    is Student t over the three."""
    cfg = _cfg(fractions=(0, 10, 100), context_seeds=(1, 2))
    rankings = {"induction": _induction_first(4)}
    res = tradeoff_curve(handset8, rankings, cfg, bos=BOS, haystack=HAYSTACK, progress=False)
    alone = tradeoff_curve(
        handset8, rankings, _cfg(fractions=(0, 10, 100), seed=1), bos=BOS, haystack=HAYSTACK, progress=False
    )
    seeds = res.seed_curves["induction"]["needle_acc"]
    assert res.context_seeds == [0, 1, 2] and len(seeds) == 3
    assert seeds[0] == res.curves["induction"]["needle_acc"]
    assert seeds[1] == pytest.approx(alone.curves["induction"]["needle_acc"], abs=1e-12)
    vals = np.array(seeds)
    half = stats.t.ppf(0.975, 2) * vals.std(0, ddof=1) / math.sqrt(3)
    got = np.array(res.seed_ci["induction"]["needle_acc"])
    np.testing.assert_allclose(got[:, 0], vals.mean(0) - half, atol=1e-12)
    np.testing.assert_allclose(got[:, 1], vals.mean(0) + half, atol=1e-12)
    with pytest.raises(ValueError, match="context_seeds"):
        tradeoff_curve(handset8, rankings, _cfg(context_seeds=(0,)), bos=BOS, haystack=HAYSTACK, progress=False)


def test_metric_at_chance_is_not_compared(handset8):
    """Without its induction head's output the model predicts token 0 everywhere, never a needle token
    (ids 1..V-2): with every head full needle and passkey accuracies are at chance, so no point is
    compared on them (and the figure and table say so)."""
    from workbench.figures.kv_tradeoff import tradeoff_figure, tradeoff_table_html

    broken = handset_model(dtype=torch.float32, vocab=V)
    with torch.no_grad():
        broken.blocks[1].attn.W_O[0].zero_()
    res = tradeoff_curve(
        broken,
        {"induction": _induction_first(4)},
        _cfg(fractions=(0, 10, 100), token_range=(1, V - 1)),
        bos=BOS,
        haystack=HAYSTACK,
        progress=False,
    )
    assert res.chance["needle_acc"] == pytest.approx(1 / (V - 2)) and res.full_value["needle_acc"] == 0
    assert res.at_chance["needle_acc"] and res.at_chance["passkey_acc"]
    assert res.verdicts["induction"]["needle_acc"] == [rt.AT_CHANCE] * 3
    assert not res.beats_random("induction", "needle_acc", 10)
    fig = tradeoff_figure(res)
    assert any(rt.AT_CHANCE in a.text for a in fig.layout.annotations)
    assert not any(t.name == "induction" and t.xaxis == "x" for t in fig.data)  # no lines in that panel
    assert rt.AT_CHANCE in tradeoff_table_html(res, "needle_acc")
    ok = tradeoff_curve(
        handset8,
        {"induction": _induction_first(4)},
        _cfg(fractions=(0, 100)),
        bos=BOS,
        haystack=HAYSTACK,
        progress=False,
    )
    assert not ok.at_chance["needle_acc"]
    # the passkey panel and the viewer's table: exact accuracy only where it is above chance
    from workbench.figures.kv_tradeoff import panels_for, passkey_metric
    from workbench.figures.text import plain
    from workbench.probes.head_rankings import label

    assert passkey_metric(res.to_dict()) == "passkey_token_acc"  # at chance: the per-token share instead
    d = ok.to_dict()
    for at_chance, want in ((False, "passkey_acc"), (True, "passkey_token_acc")):
        d["at_chance"]["passkey_acc"] = at_chance
        assert passkey_metric(d) == want and [k for k, _ in panels_for(d)] == ["needle_acc", want, "text_loss"]
        titles = [a.text for a in tradeoff_figure(d).layout.annotations]
        assert titles[1] == plain(label(want))
        table = tradeoff_table_html(d, passkey_metric(d))
        assert f"{d['curves']['induction'][want][0]:.3f}" in table and "<table" in table
    d["at_chance"]["passkey_acc"] = True  # the table for exact accuracy at chance says so and compares nothing
    assert "no ranking is compared on it" in tradeoff_table_html(d, "passkey_acc")


# --- smaller items ------------------------------------------------------------------------------


class Digits:
    """A character tokenizer: one id per character (ids < 128)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_tradeoff_passkeys_are_held_out_from_the_fitting_ones():
    """One-digit keys (10 possible): without the split 32 fitting and 32 evaluation keys would share
    most of them; with it they share none, whatever the seeds."""
    from workbench.probes.duo import DuoConfig

    hay = torch.randint(32, 127, (4000,), generator=torch.Generator().manual_seed(0))
    pk = PasskeyConfig(seq_len=64, key_len=1)
    model = HookedTransformer(
        HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=64, d_vocab=257, attn_only=True)
    )
    for seed in range(3):
        fit = fitting_batch(model, DuoConfig(n_contexts=32, passkey=pk, seed=seed), hay, bos=256, tokenizer=Digits())
        ctx = eval_contexts(
            model,
            TradeoffConfig(seq_len=64, n_passkey=32, n_needle=2, needle_len=4, n_text=1, passkey=pk, seed=seed),
            seed,
            haystack=hay,
            text=hay,
            bos=256,
            tokenizer=Digits(),
        )
        fit_keys, eval_keys = key_set(fit), key_set(ctx.passkey)
        assert fit_keys and eval_keys and not fit_keys & eval_keys
    both = passkey_batch(64, pk, hay, bos=256, tokenizer=Digits(), seed=0)
    assert len(key_set(both)) > 5  # without a split, the keys cover both parities
    with pytest.raises(ValueError, match="split"):
        passkey_batch(2, pk, hay, bos=256, tokenizer=Digits(), split="test")


def test_causal_check_and_tradeoff_restrict_alike_when_probabilities_underflow():
    """float32, margin 200: a streaming L1H0's kept probabilities are all 0 in the full pattern.
    Renormalising that pattern gives an all-zero row; the softmax over the kept scores does not. The
    causal check's Δloss must equal the trade-off's restriction of that one head."""
    from workbench.probes.attention_restrict import keep_full_hooks
    from workbench.probes.heads import HeadRoleConfig, causal_check, copy_steps, make_contexts

    model = handset_model(dtype=torch.float32, sharp=200.0, vocab=V)
    batch = make_contexts(model, HeadRoleConfig(n_contexts=8, seq_len=N, needle_len=8, token_range=(0, V - 1)), BOS)
    q, _ = copy_steps(batch)
    targets = batch.tokens[:, q + 1]

    def loss(hooks) -> float:
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        return float(torch.nn.functional.cross_entropy(logits[:, q].flatten(0, 1), targets.flatten()))

    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[INDUCTION_HEAD] = False
    with torch.no_grad():
        want = loss(keep_full_hooks(model, keep, 1, 4)) - loss([])
        got = causal_check(model, batch, 1, 4)["delta_loss"][INDUCTION_HEAD]
    assert float(got) == pytest.approx(want, abs=1e-6)
    # the case is real: the full pattern's kept probabilities at the copy steps are exactly 0, so
    # renormalising it (the old hook) gives all-zero rows, while the restriction's rows are a softmax
    from workbench.probes.attention_restrict import one_head_streaming_hooks, sink_window_region
    from workbench.probes.heads import sink_window_hook

    _, cache = model.run_with_cache(batch.tokens, names_filter=lambda n: n.startswith("blocks.1.attn"))
    full = cache["blocks.1.attn.hook_pattern"][:, 0]
    kept = sink_window_region(N, 1, 4)
    under = (full[:, q] * kept[q]).sum(-1).eq(0)  # [b, steps] rows whose kept mass underflowed
    assert under.double().mean() > 0.8
    old = sink_window_hook(0, 1, 4)(cache["blocks.1.attn.hook_pattern"], None)[:, 0]
    assert old[:, q].sum(-1)[under].eq(0).all()
    seen = {}
    hooks = one_head_streaming_hooks(model, 1, 0, 1, 4)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model.run_with_hooks(
            batch.tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda p, hook: seen.update(p=p.clone()))]
        )
    rows = seen["p"][:, 0, q]
    torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)))
    scores = cache["blocks.1.attn.hook_attn_scores"][:, 0].double().masked_fill(~kept, float("-inf"))
    torch.testing.assert_close(rows.double(), torch.softmax(scores, -1)[:, q], atol=1e-6, rtol=0)


def test_paper_distance_reads_the_final_norm_after_its_weight():
    """distance="paper" compares the final norm's output: LayerNorm with its weight and bias, checked
    against torch's layer_norm in float64."""
    from workbench.probes.duo import _state_hook, _states

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=4, d_head=4, n_ctx=16, d_vocab=11, d_mlp=32, act_fn="gelu",
        normalization_type="LN", dtype=torch.float64, seed=0, device="cpu",
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.ln_final.w.copy_(torch.rand(16, generator=gen, dtype=torch.float64) * 2)
        model.ln_final.b.copy_(torch.randn(16, generator=gen, dtype=torch.float64))
    tokens = torch.randint(0, 11, (3, 16), generator=gen)
    _, cache = model.run_with_cache(tokens)
    resid = cache["blocks.1.hook_resid_post"]
    want = torch.nn.functional.layer_norm(resid, (16,), model.ln_final.w, model.ln_final.b, eps=cfg.eps)
    with torch.no_grad():
        got = _states(model, tokens, _state_hook(model, "paper"))
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_saved_config_records_the_passkey_length_used(res8):
    assert res8.config["passkey"]["seq_len"] == N  # the contexts' length, not PasskeyConfig's 128
    assert res8.config["seq_len"] == N


def test_share_labels_say_the_real_share():
    from workbench.figures.kv_tradeoff import share_label

    assert share_label(1, 8) == "12.5% (1 of 8)" and share_label(2, 8) == "25% (2 of 8)"
    assert share_label(1, 32) == "3.12% (1 of 32)"
    assert share_label(0, 0) == "0 heads"


def test_table_and_figure_mark_ties_and_verdicts(res8):
    from workbench.figures.kv_tradeoff import tradeoff_figure, tradeoff_table_html

    html = tradeoff_table_html(res8, "needle_acc")
    assert "12.5% (1 of 8)" in html and rt.UNTESTABLE in html and " =" in html
    fig = tradeoff_figure(res8)
    tied = next(t for t in fig.data if t.name == "tied" and t.xaxis == "x")
    assert list(tied.marker.symbol) == ["circle", "circle-open", "circle", "circle"]
    assert "over tie orders" in tied.text[1] and "12.5% (1 of 8)" in tied.text[1]
    band = next(t for t in fig.data if t.fill == "toself")
    assert "quantiles" in band.name


def test_hostile_ranking_names_are_plain_text_in_the_figure(res8):
    from workbench.figures.kv_tradeoff import tradeoff_figure

    d = res8.to_dict()
    evil = '<a href="https://x.example">x</a>'
    d["curves"] = {evil: d["curves"]["induction"]}
    strings = " ".join(_strings(tradeoff_figure(d).to_plotly_json()))
    assert "<a href" not in strings and "&lt;a href" in strings


def test_formed_has_a_third_state():
    from workbench.probes.heads_over_training import FORMED, NOT_FORMED, UNKNOWN, formation

    assert formation([0, 5, 9], [False, None, None]) == (None, UNKNOWN)  # not measurable is not "not formed"
    assert formation([0, 5, 9], [None, None, False]) == (None, NOT_FORMED)
    assert formation([0, 5, 9, 12], [False, None, True, True]) == ([0, 9], FORMED)  # 5 unknown: since 0
    assert formation([0, 5, 9, 12], [False, True, False, True]) == ([9, 12], FORMED)
    assert formation([0, 5], [True, True]) == ([0, 0], FORMED)


# --- Razor's rule, one ranking builder, agreement over seeds ---------------------------------------


def test_razor_protects_nothing_below_the_minimum_score():
    from workbench.probes.razor import RazorConfig, protected_heads, razor_scores, uniform_scores

    zeros = torch.zeros(2, 4)
    assert not protected_heads(zeros, zeros, 0.14, 0.01, min_score=0.05).any()
    assert protected_heads(zeros, zeros, 0.14, 0.01).sum() == 1 + 1  # the old fixed count, min_score 0
    ind = zeros.clone()
    ind[1, 2] = 0.5
    assert protected_heads(zeros, ind, 0.14, 0.01, min_score=0.05).nonzero().tolist() == [[1, 2]]
    # a model whose heads all attend uniformly (zero weights): scores at the uniform level, nothing protected
    flat = HookedTransformer(
        HookedTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_head=4, n_ctx=64, d_vocab=50, attn_only=True)
    )
    with torch.no_grad():
        for p in flat.parameters():
            p.zero_()
    cfg = RazorConfig(n_contexts=2, segment=16, repeats=3)
    res = razor_scores(flat, cfg, bos=49)
    uni_echo, uni_ind = uniform_scores(16, 3, 1)
    assert res.induction[0][0] == pytest.approx(uni_ind, abs=1e-6) and res.echo[1][3] == pytest.approx(uni_echo)
    assert res.nothing_to_protect and not any(map(any, res.protected))
    assert res.uniform_echo_induction == pytest.approx([uni_echo, uni_ind])


def test_one_ranking_builder_behind_both_callers():
    from workbench.probes.head_agreement import rankings_from_roles
    from workbench.probes.head_rankings import LABELS, head_rankings, tied_heads
    from workbench.probes.kv_tradeoff import standard_rankings

    roles = {
        "retrieval": [[0.1, 0.2]],
        "streaming": [[0.9, 0.3]],
        "tl_scores": {"induction": [[0.0, 1.0]], "previous_token": [[0.7, 0.0]]},
        "delta_loss": [[0.5, 0.0]],
    }
    razor = {"induction": [[0.1, 0.2]], "protected": [[True, False]]}
    duo = {"alphas": [[1.0, 1.0]]}
    both = head_rankings(roles, duo, razor)
    assert standard_rankings(roles, duo, razor) == both
    agree = rankings_from_roles(roles, extra={"duo_alpha": duo["alphas"]})
    assert set(agree) == {"retrieval", "streaming_reversed", "tl_induction", "tl_previous_token", "duo_alpha"}
    for k in set(agree) & set(both):
        assert agree[k] == both[k]
    assert set(both) | set(agree) <= set(LABELS)
    assert both["razor"][0][0] > both["razor"][0][1]  # protected first
    assert tied_heads(duo["alphas"]) == [[True, True]] and tied_heads([[0.1, 0.2]]) == [[False, False]]


def test_agreement_over_seeds_t_interval():
    from workbench.figures import heads as hf
    from workbench.probes.head_agreement import agreement_over_seeds, ranking_agreement

    gen = np.random.default_rng(0)
    causal = gen.normal(size=(2, 4))
    per_seed = []
    for _ in range(3):
        r = {"a": (causal + gen.normal(0, 0.5, (2, 4))).tolist(), "b": gen.normal(size=(2, 4)).tolist()}
        per_seed.append(ranking_agreement(r, causal=causal.tolist()))
    ag = agreement_over_seeds(per_seed, [0, 1, 2])
    rhos = np.array([a.rho[0][1] for a in per_seed])
    half = stats.t.ppf(0.975, 2) * rhos.std(ddof=1) / math.sqrt(3)
    assert ag.seeds == [0, 1, 2] and ag.seed_rho[0][1] == pytest.approx(rhos.tolist())
    assert ag.seed_ci[0][1] == pytest.approx([max(-1, rhos.mean() - half), min(1, rhos.mean() + half)])
    assert ag.rho == per_seed[0].rho  # the point is the first seed's
    c = np.array([a.causal["a"].rho for a in per_seed])
    ch = stats.t.ppf(0.975, 2) * c.std(ddof=1) / math.sqrt(3)
    assert ag.causal_seed_ci["a"] == pytest.approx([max(-1, c.mean() - ch), min(1, c.mean() + ch)])
    d = json.loads(json.dumps(ag.to_dict()))
    assert "3 seeds" in hf.agreement_table_html(d) and "3 seeds" in hf.agreement_heatmap(d).data[0].text[0][1]
    with pytest.raises(ValueError, match="per_seed"):
        agreement_over_seeds(per_seed, [0, 1])


# --- the heads figures (issue 27 item 11) ------------------------------------------------------------


def _explorer_like(n_metrics: int = 9) -> dict:
    L, H, T = 2, 4, 20
    metrics = {f"score {i}": [[0.1 * (h + 1) + l for h in range(H)] for l in range(L)] for i in range(n_metrics)}
    pattern = [[1.0 / (k + 1) if k <= q else 0.0 for k in range(T)] for q in range(T)]
    return {
        "n_layers": L,
        "n_heads": H,
        "metrics": metrics,
        "intervals": {},
        "labels": [["streaming"] * H for _ in range(L)],
        "contexts": {
            "needle": {"ids": list(range(T)), "tokens": [f"t{i}" for i in range(T)], "patterns": [[pattern] * H] * L}
        },
        "gate_curve": None,
    }


def test_head_detail_colorbar_clears_the_pattern_and_every_score_row_shows():
    from workbench.figures import heads as hf

    data = _explorer_like(9)
    fig = hf.head_detail(data, 1, 0)
    heat = next(t for t in fig.data if t.type == "heatmap")
    table = next(t for t in fig.data if t.type == "table")
    heat_end = fig.layout.xaxis.domain[1]
    assert heat.colorbar.x >= heat_end and heat.colorbar.xanchor == "left"
    # the colorbar (thickness + tick labels, ~45 px) ends before the table starts
    width = 1000 - 70  # a 1000 px page minus LAYOUT's side margins
    assert heat.colorbar.x + 45 / width < table.domain.x[0]
    lo, hi = table.domain.y
    plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    need = table.header.height + table.cells.height * len(table.cells.values[0])
    assert len(table.cells.values[0]) == 9 and (hi - lo) * plot_px >= need
    many = hf.head_detail(_explorer_like(20), 1, 0)
    t20 = next(t for t in many.data if t.type == "table")
    plot20 = many.layout.height - many.layout.margin.t - many.layout.margin.b
    assert (t20.domain.y[1] - t20.domain.y[0]) * plot20 >= t20.header.height + t20.cells.height * 20


def test_scatter_labels_of_overlapping_heads_do_not_print_on_each_other():
    from workbench.figures import heads as hf

    data = _explorer_like(2)
    same = [[0.0, 0.0, 0.0, 0.5], [1.0, 1.0, 0.2, 0.9]]  # L0H0-L0H2 and L1H0-L1H1 coincide
    data["metrics"] = {"x": same, "y": same}
    labels = hf.point_labels(same, same)
    assert labels[0] == ["L0H0, L0H1, L0H2", "", "", "L0H3"] and labels[1] == ["L1H0, L1H1", "", "L1H2", "L1H3"]
    fig = hf.head_scatter(data, "x", "y")
    shown = [(x, y) for t in fig.data for x, y, s in zip(t.x, t.y, t.text) if s]
    assert len(shown) == len(set(shown)) == 5  # one label per place


def test_heads_figures_escape_strings_from_disk():
    from workbench.figures import heads as hf

    evil = '<a href="https://x.example">x</a>'
    data = _explorer_like(2)
    data["metrics"][evil] = data["metrics"].pop("score 0")
    data["labels"][1][0] = evil
    data["contexts"]["needle"]["tokens"][3] = evil
    for fig in (hf.head_scatter(data, evil, "score 1"), hf.head_detail(data, 1, 0)):
        strings = " ".join(_strings(fig.to_plotly_json()))
        assert "<a href" not in strings and "&lt;a href" in strings


def _strings(obj) -> list[str]:
    """Every string inside a figure's JSON-able dict."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    if hasattr(obj, "tolist"):
        return _strings(obj.tolist())
    return []
