"""Rank agreement between head rankings, against scipy in float64 (ties included)."""

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from workbench.probes.head_agreement import AgreementConfig, ranking_agreement, rankings_from_roles, spearman


def _fisher(rho, n, level=0.95):
    z, half = math.atanh(rho), stats.norm.ppf((1 + level) / 2) * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed):
    gen = np.random.default_rng(seed)
    a = gen.integers(0, 4, 12).astype(np.float64)  # 12 heads, scores in {0..3}: many ties
    b = a + gen.normal(0, 1.5, 12)
    b[:3] = b[3]  # ties in b too
    c = spearman(a, b)
    ref = stats.spearmanr(a, b).statistic
    assert c.rho == pytest.approx(ref, abs=1e-12)
    assert c.ci == pytest.approx(_fisher(ref, 12), abs=1e-12)
    assert c.ci[0] < c.rho < c.ci[1]
    assert c.n == 12


def test_exact_permutation_p_matches_scipy():
    a = np.array([0.1, 0.5, 0.3, 0.3, 0.9, 0.7, 0.2])
    b = np.array([1.0, 2.0, 2.5, 0.5, 3.0, 3.0, 0.0])
    obs = abs(stats.spearmanr(a, b).statistic)
    null = [abs(stats.spearmanr(a, b[list(p)]).statistic) for p in itertools.permutations(range(7))]
    assert spearman(a, b).p_value == pytest.approx(np.mean(np.array(null) >= obs - 1e-12), abs=1e-12)


def test_monte_carlo_p_beyond_exact_limit():
    gen = np.random.default_rng(3)
    a = gen.normal(size=30)
    c = spearman(a, a + gen.normal(0, 0.3, 30), AgreementConfig(n_permutations=4000))
    assert c.p_value == pytest.approx(1 / 4001)  # no permutation reaches rho ≈ 0.95: the +1 floor
    null = spearman(a, gen.normal(size=30), AgreementConfig(n_permutations=4000))
    assert null.p_value > 0.01


def test_interval_is_wide_with_eight_heads():
    a = np.arange(8.0)
    b = np.array([1, 0, 2, 3, 5, 4, 7, 6.0])
    c = spearman(a, b)
    assert c.rho == pytest.approx(stats.spearmanr(a, b).statistic)
    lo, hi = c.ci
    assert hi - lo > 0.2 and lo < c.rho < hi


def test_constant_ranking_has_no_rho():
    c = spearman(np.ones(8), np.arange(8.0))
    assert c.rho is None and c.ci is None and "constant" in c.note


def test_non_finite_scores_dropped_in_pairs():
    a = np.array([1.0, 2, np.nan, 4, 5, 6])
    b = np.array([2.0, 1, 3, 4, np.inf, 5])
    c = spearman(a, b)
    keep = [0, 1, 3, 5]
    assert c.n == 4 and c.rho == pytest.approx(stats.spearmanr(a[keep], b[keep]).statistic)


def test_agreement_matrix_and_causal_column():
    gen = np.random.default_rng(0)
    causal = gen.normal(size=(2, 4))
    rankings = {"a": causal + gen.normal(0, 0.1, (2, 4)), "b": -causal, "c": gen.normal(size=(2, 4))}
    ag = ranking_agreement({k: v.tolist() for k, v in rankings.items()}, causal=causal.tolist())
    assert ag.names == ["a", "b", "c"] and ag.n_heads == 8
    for i, x in enumerate(ag.names):
        assert ag.rho[i][i] == 1.0 and ag.ci[i][i] is None
        for j, y in enumerate(ag.names):
            if i != j:
                ref = stats.spearmanr(rankings[x].ravel(), rankings[y].ravel()).statistic
                assert ag.rho[i][j] == pytest.approx(ref, abs=1e-12) and ag.rho[j][i] == ag.rho[i][j]
    assert ag.causal["b"].rho == pytest.approx(-1.0)
    assert ag.causal["a"].rho == pytest.approx(stats.spearmanr(rankings["a"].ravel(), causal.ravel()).statistic)
    assert ag.pair("a", "c").rho == ag.rho[0][2]
    back = json.loads(json.dumps(ag.to_dict(), allow_nan=False))
    assert back["causal"]["b"]["rho"] == pytest.approx(-1.0) and "Fisher" in back["method"]


def test_bad_input_named():
    with pytest.raises(ValueError, match="same heads"):
        ranking_agreement({"a": [[1.0, 2.0]], "b": [[1.0, 2.0, 3.0]]})
    with pytest.raises(ValueError, match="rankings"):
        ranking_agreement({})
    with pytest.raises(ValueError, match="causal"):
        ranking_agreement({"a": [[1.0, 2.0, 3.0, 4.0]]}, causal=[[1.0]])
    with pytest.raises(ValueError, match=r"rankings\['a'\]"):
        ranking_agreement({"a": [1.0, 2.0]})


def test_rankings_from_roles_orientation():
    roles = {
        "retrieval": [[0.9, 0.0]],
        "streaming": [[0.1, 0.95]],
        "tl_scores": {"induction": [[0.7, 0.0]], "previous_token": [[0.0, 0.8]]},
        "delta_loss": [[0.0, 0.0]],
    }
    r = rankings_from_roles(roles, extra={"duo_alpha": [[1.0, 0.0]]})
    assert r["streaming_reversed"] == [[pytest.approx(0.9), pytest.approx(0.05)]]  # 1 - streaming: same order
    assert list(r) == ["retrieval", "streaming_reversed", "tl_induction", "tl_previous_token", "duo_alpha"]
