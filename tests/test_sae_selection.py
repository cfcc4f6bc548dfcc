"""Selection rules against a float64 stable-sort reference, ties included."""

import pytest
import torch

from workbench.sae.selection import (
    gradient_scores,
    reference_mask,
    select_feature_choice,
    select_gradient,
    select_mutual_choice,
    select_topk,
    topk_mask,
    uniform_capacities,
    zipf_capacities,
)
from workbench.sae.topk import flat_topk_indices


def _with_ties(B, F, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, (B, F), generator=gen).float() / 2  # few distinct values: many ties


@pytest.mark.parametrize("B,F,k", [(7, 13, 1), (16, 64, 5), (5, 33, 32), (3, 10, 9)])
@pytest.mark.parametrize("ties", [False, True])
def test_topk_matches_reference(B, F, k, ties):
    pre = _with_ties(B, F, k) if ties else torch.randn(B, F, generator=torch.Generator().manual_seed(k))
    mask = select_topk(pre, k)
    assert torch.equal(mask, reference_mask(pre, k))
    assert (mask.sum(1) == k).all()


def test_topk_k_too_large_errors():
    with pytest.raises(ValueError, match="k=11 exceeds"):
        topk_mask(torch.randn(2, 10), 11)


def test_gradient_rule_matches_reference():
    gen = torch.Generator().manual_seed(0)
    pre, g, W = torch.randn(9, 40, generator=gen), torch.randn(9, 6, generator=gen), torch.randn(40, 6, generator=gen)
    scores64 = pre.double() + 0.7 * pre.double() * (g.double() @ W.double().T).abs()
    mask = select_gradient(pre, g, W, k=4, beta=0.7)
    assert torch.equal(mask, reference_mask(scores64, 4))
    torch.testing.assert_close(gradient_scores(pre, g, W, 0.7).double(), scores64, rtol=1e-5, atol=1e-5)
    assert not torch.equal(mask, select_topk(pre, 4))  # the loss term changes the choice


@pytest.mark.parametrize("ties", [False, True])
def test_mutual_choice_keeps_exactly_kB(ties):
    B, F, k = 12, 30, 3
    pre = _with_ties(B, F, 1) if ties else torch.randn(B, F)
    mask = select_mutual_choice(pre, k)
    assert int(mask.sum()) == k * B
    assert torch.equal(mask.flatten(), reference_mask(pre.flatten(), k * B))
    assert mask.sum(1).unique().numel() > 1  # tokens get a variable number of latents


@pytest.mark.parametrize("ties", [False, True])
def test_feature_choice_keeps_exactly_m_per_latent(ties):
    B, F, k = 24, 16, 4
    pre = _with_ties(B, F, 2) if ties else torch.randn(B, F)
    caps = uniform_capacities(F, k * B)
    assert (caps == k * B // F).all()
    mask = select_feature_choice(pre, caps)
    assert (mask.sum(0) == caps).all()
    ref = torch.stack([reference_mask(pre[:, i], int(caps[i])) for i in range(F)], dim=1)
    assert torch.equal(mask, ref)


def test_zipf_capacities_sum_and_cap():
    usage = torch.rand(50)
    m = zipf_capacities(usage, total=400, alpha=1.0, cap=30)
    assert int(m.sum()) == 400 and int(m.max()) <= 30
    order = torch.sort(-usage, stable=True).indices
    assert (m[order][:-1] >= m[order][1:]).all()  # more used, more capacity
    with pytest.raises(ValueError, match="cannot fit"):
        zipf_capacities(usage, total=10_000, alpha=1.0, cap=30)


def test_flat_topk_indices_equal_a_full_sort_with_ties_and_saturated_rows():
    """Mutual Choice's batch-wide top k·B through per-row candidates (topk.flat_topk_indices) keeps
    exactly what one stable sort of the whole matrix keeps: ties in flat order, a row holding more
    than its share, totals from 0 to all entries."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(120):
        R, n = (int(v) for v in torch.randint(1, 25, (2,), generator=gen))
        s = (
            torch.randint(0, 4, (R, n), generator=gen).float()
            if trial % 2
            else torch.randn(R, n, generator=gen, dtype=torch.float64)
        )
        if trial % 3 == 0:
            s[0] = 10.0  # one row above every other: it alone holds more than ceil(total / R) of the top
        total = int(torch.randint(0, R * n + 2, (), generator=gen))
        got = torch.zeros(R * n, dtype=torch.bool)
        got[flat_topk_indices(s, total)] = True
        assert torch.equal(got, reference_mask(s.reshape(-1), min(total, R * n))), (trial, R, n, total)
