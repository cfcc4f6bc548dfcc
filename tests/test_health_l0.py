"""The health report's L0 histogram counted from the training selection (workbench.sae.health): from
a step output's token rows when it has them, from a [B, k] idx's rows, and from the inference
encoding otherwise; step outputs made by hand, so every token's L0 is known."""

from typing import NamedTuple

import pytest
import torch

from workbench.figures.health import l0_figure
from workbench.sae import SAEConfig, SparseAutoencoder
from workbench.sae.health import HealthConfig, HealthMonitor, per_token_l0, probe


class Step(NamedTuple):
    """The fields of trainer.StepOutput the monitor reads, and the proposed `rows`."""

    fvu: torch.Tensor
    l0: float
    idx: torch.Tensor
    vals: torch.Tensor
    tokens: int
    rows: torch.Tensor | None = None


class FlatStep(NamedTuple):  # today's StepOutput: a flat idx, no rows
    fvu: torch.Tensor
    l0: float
    idx: torch.Tensor
    vals: torch.Tensor
    tokens: int


# 4 tokens: token 0 keeps 3 entries of which one is 0 (not counted, as L0 counts positive values),
# token 1 none, token 2 two, token 3 one: per-token L0 [2, 0, 2, 1]
ROWS = torch.tensor([0, 0, 0, 2, 2, 3])
IDX = torch.tensor([1, 5, 7, 0, 5, 9])
VALS = torch.tensor([1.0, 2.0, 0.0, 3.0, 4.0, 5.0], dtype=torch.float64)
L0 = [2, 0, 2, 1]


def _sae():
    return SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2)).double()


def _report(steps):
    sae = _sae()
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mon = HealthMonitor(HealthConfig(every=len(steps), warmup=0, probe_tokens=4))
    out = [mon.observe(i, sae, x, s) for i, s in enumerate(steps)]
    assert out[:-1] == [{}] * (len(steps) - 1)
    return out[-1]["health"], probe(sae.eval(), x)


def test_per_token_l0_from_rows_and_from_a_k_wide_idx():
    assert per_token_l0(Step(torch.tensor(0.1), 1.25, IDX, VALS, 4, ROWS)).tolist() == L0
    assert per_token_l0(FlatStep(torch.tensor(0.1), 1.25, IDX, VALS, 4)) is None
    idx = torch.tensor([[3, 4], [2, -1], [-1, -1]])  # the Triton path: row b is token b, -1 no entry
    vals = torch.tensor([[1.0, 0.5], [2.0, 7.0], [0.0, 0.0]])
    assert per_token_l0(Step(torch.tensor(0.1), 1.0, idx, vals, 3)).tolist() == [2, 1, 0]


def test_report_histograms_the_training_selection_over_the_window():
    first = Step(torch.tensor(0.1), 1.25, IDX, VALS, 4, ROWS)
    second = Step(
        torch.tensor(0.2), 3.0, torch.arange(12), torch.ones(12, dtype=torch.float64), 4, ROWS.new_tensor([1] * 12)
    )
    h, _ = _report([first, second])
    # first: L0 [2, 0, 2, 1]; second: token 1 holds all 12 entries, the others none: [0, 12, 0, 0]
    expected = [0] * 13
    for v in L0 + [0, 12, 0, 0]:
        expected[v] += 1
    assert h["l0_hist"] == expected and h["l0_hist_from"] == "train"
    assert h["l0_train"] == pytest.approx((1.25 + 3.0) / 2)
    assert "training selection" in l0_figure(h, 1).layout.title.text


def test_the_last_bin_holds_every_larger_l0():
    n = 200  # one token with 200 entries: L0_BINS - 1 = 127 holds it
    step = Step(
        torch.tensor(0.1),
        50.0,
        torch.arange(n) % 16,
        torch.ones(n, dtype=torch.float64),
        4,
        torch.zeros(n, dtype=torch.long),
    )
    h, _ = _report([step])
    assert len(h["l0_hist"]) == 128 and h["l0_hist"][0] == 3 and h["l0_hist"][127] == 1


def test_without_rows_the_histogram_is_the_inference_encodings():
    h, probed = _report([FlatStep(torch.tensor(0.1), 1.25, IDX, VALS, 4)])
    assert h["l0_hist_from"] == "inference" and h["l0_hist"] == probed["l0_hist"]
    assert "inference" in l0_figure(h, 0).layout.title.text


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("rule", ["topk", "mutual_choice", "feature_choice"])
def test_the_trainers_rows_give_per_token_l0_that_average_to_its_logged_l0(rule, sparse):
    """The trainer's own step output (dense and sparse paths): per-token L0 from its rows averages to
    the logged L0, and under Mutual Choice tokens differ (a rule whose L0 is not k per token)."""
    from workbench.sae.trainer import sae_losses

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=4, selection=rule)).double().train()
    res = sae_losses(sae, torch.randn(64, 8, dtype=torch.float64), None, sparse=sparse)
    assert res.rows is not None and res.rows.shape == res.idx.shape
    per = per_token_l0(res)
    assert per.shape == (64,) and per.sum().item() == pytest.approx(res.l0 * 64)
    if rule == "mutual_choice":
        assert per.unique().numel() > 1
