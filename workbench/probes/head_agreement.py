"""Do the head rankings agree? Spearman rank correlation between every pair of per-head scores,
and each score's correlation with the causal check.

Every ranking is a [L][H] score with the same orientation: higher = more retrieval-like, i.e. the
head a KV-cache policy should keep on full attention (Wu retrieval score, DuoAttention alpha,
TransformerLens induction, the causal check's loss increase, streaming mass reversed, ...).
`head_rankings.head_rankings` builds that dict with the signs right (the trade-off takes the same).
`agreement_over_seeds` adds each rho's Student t interval over context seeds.

Interval: Fisher z with Fieller, Hartley & Pearson's (1957) variance for Spearman's rho,
    z = atanh(rho),  se = sqrt(1.06 / (n - 3)),  rho in tanh(z ± z_{(1+level)/2} · se),
chosen over a bootstrap over heads because a model has few heads (8 on the default): a resample
of 8 heads repeats most of them, often leaves a ranking constant (rho undefined) and its
percentile interval comes out too narrow, while Fisher z is the standard small-n interval for a
rank correlation. It needs n >= 4 heads; with 8 its half-width is about 0.9 in z, so the table
shows |rho| of 0.5 as compatible with no agreement — that is the honest reading, not a defect.
With a ranking that is constant over heads (e.g. every alpha at 1) rho is undefined: reported as
None with the reason. The p-value is an exact permutation test for n <= 8 heads (all n!
orderings), else a Monte Carlo one over `n_permutations` seeded orderings.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, replace

import numpy as np
from jaxtyping import Float
from scipy import stats

from .head_rankings import head_rankings
from .heads_data import Agreement, AgreementConfig, Correlation

Scores = list[list[float]]  # [L][H]
CAUSAL = "causal Δloss"


def _flat(name: str, scores) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"rankings[{name!r}]: expected a non-empty [L][H] list of scores, got shape {arr.shape}")
    return arr.ravel()


def rank_average(x: Float[np.ndarray, " n"]) -> Float[np.ndarray, " n"]:
    """1-based ranks, ties given their average rank (what Spearman's rho is defined on)."""
    return stats.rankdata(x, method="average")


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return None if den == 0 else float((a * b).sum() / den)


@functools.lru_cache(maxsize=4)
def _all_orderings(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))))


def _perm_p(ra: np.ndarray, rb: np.ndarray, rho: float, cfg: AgreementConfig) -> float:
    n = len(ra)
    if n <= cfg.exact_max_n:
        perms = _all_orderings(n)
    else:
        gen = np.random.default_rng(cfg.seed)
        perms = np.argsort(gen.random((cfg.n_permutations, n)), axis=1)
    a, b = ra - ra.mean(), rb - rb.mean()
    null = (b[perms] * a).sum(1) / math.sqrt(float((a * a).sum() * (b * b).sum()))
    hits = int((np.abs(null) >= abs(rho) - 1e-12).sum())
    # Monte Carlo: count the observed ordering too, so p is never 0 (Phipson & Smyth 2010)
    return hits / len(perms) if n <= cfg.exact_max_n else (hits + 1) / (len(perms) + 1)


def spearman(a, b, cfg: AgreementConfig = AgreementConfig()) -> Correlation:
    """Spearman's rho of two score lists (ties averaged) with its Fisher z interval and
    permutation p-value (see the module docstring)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold as many heads, got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < 3:
        return Correlation(None, None, None, n, f"{n} heads with finite scores: too few to rank")
    ra, rb = rank_average(a), rank_average(b)
    rho = _pearson(ra, rb)
    if rho is None:
        return Correlation(None, None, None, n, "a ranking is constant over these heads: rho undefined")
    p = _perm_p(ra, rb, rho, cfg)
    if n < 4:
        return Correlation(rho, None, p, n, "fewer than 4 heads: no Fisher z interval")
    zq = float(stats.norm.ppf((1 + cfg.level) / 2))
    z = math.atanh(min(max(rho, -1 + 1e-12), 1 - 1e-12))
    half = zq * math.sqrt(cfg.fieller_var / (n - 3))
    return Correlation(rho, [math.tanh(z - half), math.tanh(z + half)], p, n)


def ranking_agreement(
    rankings: dict[str, Scores], causal: Scores | None = None, cfg: AgreementConfig = AgreementConfig()
) -> Agreement:
    """Spearman rho between every pair of rankings ({name: [L][H] scores}, higher = keep full),
    and each ranking's rho with `causal` (the causal check's per-head loss increase) if given."""
    if not rankings:
        raise ValueError("rankings: expected at least one {name: [L][H] scores}")
    if not 0 < cfg.level < 1:
        raise ValueError(f"cfg.level must lie in (0, 1), got {cfg.level}")
    flat = {k: _flat(k, v) for k, v in rankings.items()}
    sizes = {k: v.size for k, v in flat.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"rankings: every ranking must score the same heads, got sizes {sizes}")
    names = list(flat)
    k = len(names)
    rho = [[None] * k for _ in range(k)]
    ci = [[None] * k for _ in range(k)]
    p = [[None] * k for _ in range(k)]
    for i in range(k):
        rho[i][i] = 1.0  # a ranking against itself: no interval or test to report
        for j in range(i + 1, k):
            c = spearman(flat[names[i]], flat[names[j]], cfg)
            rho[i][j] = rho[j][i] = c.rho
            ci[i][j] = ci[j][i] = c.ci
            p[i][j] = p[j][i] = c.p_value
    out = {}
    if causal is not None:
        ref = _flat(CAUSAL, causal)
        if ref.size != next(iter(sizes.values())):
            raise ValueError(f"causal: expected {next(iter(sizes.values()))} heads like the rankings, got {ref.size}")
        out = {name: spearman(flat[name], ref, cfg) for name in names}
    method = (
        f"Spearman rho; {round(100 * cfg.level)}% Fisher z interval, var {cfg.fieller_var:g}/(n-3) "
        f"(Fieller et al. 1957); permutation p"
    )
    return Agreement(names, rho, ci, p, out, int(next(iter(sizes.values()))), method, asdict(cfg))


def rankings_from_roles(roles: dict, extra: dict[str, Scores] | None = None) -> dict[str, Scores]:
    """The head-role probe's rankings (HeadRoles or its dict) by `head_rankings.head_rankings`, the
    one builder: retrieval score, streaming mass reversed, TL induction and previous-token scores,
    no causal check (it is what the rankings are compared with); `extra` adds others already
    oriented (Duo α, Razor's rule, ...). Kept for old callers."""
    return head_rankings(roles, causal=False, previous_token=True, extra=extra)


def _t_ci(values: list[float | None], level: float) -> list[float] | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    x = np.asarray(vals, dtype=np.float64)  # the same interval as intervals.t_interval, without torch
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return [max(-1.0, float(x.mean()) - half), min(1.0, float(x.mean()) + half)]


def agreement_over_seeds(per_seed: list[Agreement], seeds: list[int]) -> Agreement:
    """The first seed's agreement with every rho's spread over context seeds: each seed's
    rankings (and causal check) measured on its own contexts, a Student t interval of rho over
    the seeds where it is defined (None with fewer than 2), clipped to [-1, 1]."""
    if len(per_seed) != len(seeds) or not per_seed:
        raise ValueError(f"per_seed: expected one Agreement per seed ({len(seeds)}), got {len(per_seed)}")
    names = per_seed[0].names
    for s, a in zip(seeds, per_seed):
        if a.names != names:
            raise ValueError(f"per_seed: seed {s} compares {a.names}, seed {seeds[0]} {names}")
    level = per_seed[0].config.get("level", 0.95)
    k = len(names)
    seed_rho = [[[a.rho[i][j] for a in per_seed] for j in range(k)] for i in range(k)]
    seed_ci = [[None if i == j else _t_ci(seed_rho[i][j], level) for j in range(k)] for i in range(k)]
    causal_rho = {n: [a.causal[n].rho if n in a.causal else None for a in per_seed] for n in per_seed[0].causal}
    return replace(
        per_seed[0],
        seeds=list(seeds),
        seed_rho=seed_rho,
        seed_ci=seed_ci,
        causal_seed_rho=causal_rho,
        causal_seed_ci={n: _t_ci(v, level) for n, v in causal_rho.items()},
    )
