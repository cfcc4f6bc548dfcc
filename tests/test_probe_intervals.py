"""Uncertainty behind the head-role labels and the arrow-of-time verdict (issue 20, items 2-3):
Wilson and t intervals against hand-computed values, labels on lower bounds, the too-few state,
seed-level arrow verdicts on planted losses, and train_pairs' layout and reuse."""

import json
import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.probes import arrow
from workbench.probes.arrow import (
    BACKWARD,
    FORWARD,
    NO_ARROW,
    ArrowResult,
    arrow_from_losses,
    arrow_over_seeds,
    train_pairs,
)
from workbench.probes.heads import (
    OTHER,
    RETRIEVAL,
    STREAMING,
    TOO_FEW,
    UNDETERMINED,
    HeadRoleConfig,
    classify,
    head_roles,
)
from workbench.probes.intervals import t_interval, wilson_interval
from workbench.tasks import copy_task_batch


def test_wilson_interval_matches_hand_computed_values():
    # 1 hit of 10, z = 1.96: p = 0.1, z²/n = 0.38416, centre 0.29208 / 1.38416,
    # half 1.96·sqrt(0.009 + 0.009604) / 1.38416
    lo, hi = wilson_interval(torch.tensor([1.0, 0.0, 10.0]), torch.tensor([10.0, 40.0, 10.0]))
    centre, half = 0.29208 / 1.38416, 1.96 * math.sqrt(0.018604) / 1.38416
    assert lo[0].item() == pytest.approx(centre - half, abs=1e-9) == pytest.approx(0.017876, abs=1e-6)
    assert hi[0].item() == pytest.approx(centre + half, abs=1e-9) == pytest.approx(0.404156, abs=1e-6)
    # 0 hits of 40: [0, z²/(n + z²)]; 10 of 10: [n/(n + z²), 1]
    assert lo[1].item() == 0 and hi[1].item() == pytest.approx(3.8416 / 43.8416, abs=1e-12)
    assert lo[2].item() == pytest.approx(10 / 13.8416, abs=1e-12) and hi[2].item() == 1
    assert wilson_interval(0.0, 0.0) == (0.0, 1.0)  # nothing copied: nothing known
    with pytest.raises(ValueError, match="hits"):
        wilson_interval(5.0, 4.0)


def test_t_interval_matches_hand_computed_values():
    # mean 2.5, sd sqrt(5/3), t_{0.975, 3} = 3.182446
    mean, lo, hi = t_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    half = 3.182446 * math.sqrt(5 / 3) / 2
    assert (mean.item(), lo.item(), hi.item()) == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval(torch.tensor([1.0]))


def test_labels_are_decided_on_lower_bounds():
    cfg = HeadRoleConfig()
    n = 100
    hits = torch.tensor([[12.0, 30.0, 0.0, 2.0]])  # raw scores 0.12, 0.30, 0, 0.02
    lo, hi = wilson_interval(hits, n)
    assert lo[0, 0] < 0.1 < lo[0, 1] and hi[0, 3] < 0.1 < hi[0, 0]
    streaming_lo = torch.tensor([[0.0, 0.0, 0.75, 0.0]])
    # 12 of 100: not shown to be retrieval, not ruled out either; 2 of 100: ruled out ("other")
    assert classify(lo, streaming_lo, n, cfg, hi) == [[UNDETERMINED, RETRIEVAL, STREAMING, OTHER]]
    # the same heads with 39 copied steps: no retrieval and no "other", only the streaming head keeps its label
    assert classify(lo, streaming_lo, 39, cfg, hi) == [[TOO_FEW, TOO_FEW, STREAMING, TOO_FEW]]


V = 64


def test_undertrained_model_gets_no_retrieval_label_and_the_too_few_state():
    """20 steps on the copy task: no induction head yet, 5 of 224 steps copied, and one chance hit
    makes L1H0's raw score 0.2, which the old rule (score ≥ 0.1) labelled "retrieval"."""
    torch.manual_seed(0)
    model = HookedTransformer(
        HookedTransformerConfig(
            n_layers=2,
            d_model=32,
            n_heads=4,
            d_head=8,
            n_ctx=64,
            d_vocab=V + 1,
            attn_only=True,
            normalization_type="LN",
            seed=0,
            device="cpu",
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(20):
        loss = model(copy_task_batch(16, 64, V, bos=V, seed=step), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    cfg = HeadRoleConfig(seq_len=64, needle_len=8, token_range=(0, V))
    roles = head_roles(model.eval(), cfg, bos=V)
    assert roles.n_copied < cfg.min_copied_steps and roles.too_few_copied
    assert roles.n_copy_steps == cfg.n_contexts * (cfg.needle_len - 1)
    raw = torch.tensor(roles.retrieval)
    assert raw.max() >= cfg.retrieval_threshold  # noise the raw score would have called a retrieval head
    flat = [lab for row in roles.labels for lab in row]
    assert RETRIEVAL not in flat and OTHER not in flat and TOO_FEW in flat
    l, h = divmod(int(raw.argmax()), raw.shape[1])
    lo, hi = roles.retrieval_ci[l][h]
    assert lo < cfg.retrieval_threshold < hi
    assert roles.retrieval[l][h] == pytest.approx(roles.retrieval_hits[l][h] / roles.n_copied)
    for row, ci_row in zip(roles.streaming, roles.streaming_ci):
        for s, (slo, shi) in zip(row, ci_row):
            assert 0 <= slo <= s <= shi <= 1


# --- arrow of time on planted per-window losses --------------------------------------------------


def _planted(gaps, offsets=(0.0, 0.0, 0.0), n=400, noise=0.002):
    """Forward losses 2 + N(0, 0.1) per window (seed s shifted by offsets[s]), backward = forward·(1 + gap_s)
    plus a little noise: each seed's gap is pinned down tightly by the windows."""
    gen = torch.Generator().manual_seed(0)
    base = 2.0 + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    lf = torch.stack([base * (1 + o) + noise * torch.randn(n, generator=gen, dtype=torch.float64) for o in offsets])
    lb = torch.stack(
        [lf[s] * (1 + g) + noise * torch.randn(n, generator=gen, dtype=torch.float64) for s, g in enumerate(gaps)]
    )
    return lf, lb


def test_seeds_that_disagree_in_sign_give_no_arrow_although_each_window_interval_excludes_zero():
    lf, lb = _planted([-0.0142, 0.0414, 0.0054])  # the default pair over three seeds
    res = arrow_from_losses(lf, lb, [0, 1, 2])
    for lo, hi in res.seed_window_cis:
        assert lo > 0 or hi < 0  # what the window interval alone would have called an arrow
    assert res.gap_ci_windows[0] > 0  # even the window interval of the mean excludes 0
    assert res.gap_ci_seeds[0] < 0 < res.gap_ci_seeds[1]
    assert res.gap == pytest.approx((-0.0142 + 0.0414 + 0.0054) / 3, abs=1e-3)
    assert res.verdict == NO_ARROW


def test_consistent_gap_above_the_null_is_forward_easier_and_mirrored_backward():
    lf, lb = _planted([0.050, 0.052, 0.048], offsets=(0.0, 0.001, -0.001))
    res = arrow_from_losses(lf, lb, [0, 1, 2])
    assert res.verdict == FORWARD
    assert res.gap_ci_seeds[0] > 0 and res.gap > res.null_max
    assert len(res.null_gaps) == 6  # 3 pairs of seeds × 2 directions
    assert {(x["direction"], tuple(x["seeds"])) for x in res.null_gaps} == {
        (d, p) for d in ("forward", "backward") for p in ((0, 1), (0, 2), (1, 2))
    }
    fwd01 = next(x for x in res.null_gaps if x["direction"] == "forward" and x["seeds"] == [0, 1])
    assert fwd01["gap"] == pytest.approx(float((lf[1].mean() - lf[0].mean()) / lf[0].mean()), rel=1e-9)
    mirrored = arrow_from_losses(lb, lf, [0, 1, 2])
    assert mirrored.verdict == BACKWARD and mirrored.gap_ci_seeds[1] < 0


def test_consistent_gap_inside_the_same_direction_null_is_no_arrow():
    # every seed: backward exactly 1% worse, but forward seeds differ from each other by up to 10%
    lf, lb = _planted([0.01, 0.01, 0.01], offsets=(0.0, 0.05, 0.10))
    res = arrow_from_losses(lf, lb, [0, 1, 2])
    assert res.gap_ci_seeds[0] > 0  # the seed interval alone would say forward
    assert res.null_max > 0.09
    assert res.verdict == NO_ARROW


def test_arrow_result_round_trips_through_json():
    lf, lb = _planted([0.05, 0.05, 0.05])
    res = arrow_from_losses(lf, lb, [3, 4, 5], seq_len=16)
    back = ArrowResult.from_dict(json.loads(json.dumps(res.to_dict(), allow_nan=False)))
    assert back == res and back.seeds == [3, 4, 5]
    with pytest.raises(ValueError, match="not an ArrowResult"):
        ArrowResult.from_dict({"gap": 0.1})
    with pytest.raises(ValueError, match="at least 2 seeds"):
        arrow_from_losses(lf[:1], lb[:1])


# --- train_pairs: layout, seeds, reuse ------------------------------------------------------------


def test_train_pairs_layout_seeds_and_reuse(tmp_path, monkeypatch):
    from workbench.models import LMTrainConfig, ModelConfig

    data = arrow.primes_data(n_train=400, n_val=100)
    mcfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=17)
    tcfg = LMTrainConfig(
        steps=4, batch_size=4, seq_len=16, warmup_steps=1, checkpoint_steps=(), eval_every=2, eval_windows=4
    )
    pairs = train_pairs(mcfg, tcfg, data, tmp_path, seeds=(0, 1), progress=False)
    mtimes = {}
    for s in (0, 1):
        for d in ("forward", "backward"):
            run = tmp_path / f"seed{s}" / d
            cfg = json.loads((run / "config.json").read_text())["config"]["train"]
            assert (cfg["seed"], cfg["direction"]) == (s, d)
            assert [
                m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m
            ] == [1, 3]
            mtimes[run] = (run / "model.safetensors").stat().st_mtime_ns
    # the seed changes the initialisation (and the batches)
    assert not torch.equal(pairs[0][0].W_E, pairs[1][0].W_E)

    calls = []
    monkeypatch.setattr(arrow, "train_lm", lambda *a, **k: calls.append(a))
    again = train_pairs(mcfg, tcfg, data, tmp_path, seeds=(0, 1), progress=False)
    assert calls == [] and {r: (r / "model.safetensors").stat().st_mtime_ns for r in mtimes} == mtimes
    assert torch.equal(again[1][1].W_E, pairs[1][1].W_E)
    with pytest.raises(ValueError, match="seed=0"):  # seed0's folder offered as seed 1's
        (tmp_path / "seed9").symlink_to(tmp_path / "seed0")
        train_pairs(mcfg, tcfg, data, tmp_path, seeds=(9,), progress=False)

    res = arrow_over_seeds(again, data, 16, n_windows=8, seeds=[0, 1], run_dirs=arrow.pair_dirs(tmp_path, (0, 1)))
    assert res.over_training["step"] == [1, 3] and len(res.over_training["gaps"]) == 2
    assert res.curves["seed 1"]["backward"]["step"] == [1, 3]
    assert res.verdict in (FORWARD, BACKWARD, NO_ARROW) and res.n_windows == 8
