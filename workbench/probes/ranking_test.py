"""Does a head ranking beat random picks? The test behind every "beats random" of the KV trade-off
(METHODS.md, "Random baselines for a ranking").

A ranking keeps m of n heads. The null is "m heads drawn uniformly". A point's p-value is the share
of m-subsets whose metric is at least as good as the ranking's:

- exact, by enumeration, where C(n, m) <= `exact_max_subsets`: p = #{subsets reaching it} / C(n, m)
  (the ranking's own subset is one of them, so p >= 1 / C(n, m));
- else over R random rankings (each a uniform m-subset at every m): p = (1 + hits) / (1 + R)
  (Phipson & Smyth 2010: never 0; the smallest attainable is 1 / (1 + R)).

A point where even a perfect pick cannot reach the level (smallest attainable p >= alpha: 1 of 8
heads, p >= 0.125; all or no heads, p = 1) is "untestable at this size", not "not better". The
testable points of one curve are corrected together (Holm), and a point "beats random" only at an
adjusted p below alpha; a curve whose k testable points cannot reach it even so (k · smallest p >=
alpha) is untestable at every point.

Ties: a ranking with equal scores at the cut does not choose among them. Each tie order (which k
of the g tied heads fill the last places) is a different subset; the curve reports their mean and
range, and the p-value is the worst tie order's (the verdict holds whatever order breaks the tie).

Pure Python (no torch): the kept sets are lists of flat head indices l·H + h.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

BEATS, NOT_SHOWN, UNTESTABLE, AT_CHANCE = (
    "beats random",
    "not shown",
    "untestable at this size",
    "full attention at chance",
)


def reaches(null_value: float, value: float, higher_is_better: bool, tol: float = 1e-12) -> bool:
    """Whether a null subset's metric is at least as good as the ranking's (ties count)."""
    return null_value >= value - tol if higher_is_better else null_value <= value + tol


def subset_p(value: float, null: Sequence[float], higher_is_better: bool, exact: bool) -> float:
    """The point's p-value against the null values (module docstring): a share when `null` is
    every m-subset, (1 + hits) / (1 + R) when it is R random subsets."""
    if not null:
        raise ValueError("null: expected at least one null value")
    hits = sum(reaches(v, value, higher_is_better) for v in null)
    return hits / len(null) if exact else (1 + hits) / (1 + len(null))


def min_attainable_p(n_null: int, exact: bool) -> float:
    """The smallest p the test can give: 1 / C(n, m) exact, 1 / (1 + R) Monte Carlo."""
    return 1.0 / n_null if exact else 1.0 / (1 + n_null)


def holm(p: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None entries are not tested and stay None):
    sorted ascending p_(1..k), adjusted p_(i) = max_{j <= i} min(1, (k - j + 1) · p_(j))."""
    idx = sorted((i for i, v in enumerate(p) if v is not None), key=lambda i: p[i])
    k = len(idx)
    out: list[float | None] = [None] * len(p)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (k - rank) * p[i]))
        out[i] = running
    return out


def verdict(p_adjusted: float | None, min_p: float, alpha: float, at_chance: bool = False) -> str:
    """ "beats random" at an adjusted p below alpha; "untestable at this size" where the smallest
    attainable p is not below alpha; "full attention at chance" where the metric cannot compare."""
    if at_chance:
        return AT_CHANCE
    if min_p >= alpha or p_adjusted is None:
        return UNTESTABLE
    return BEATS if p_adjusted < alpha else NOT_SHOWN


def curve_verdicts(
    p_raw: Sequence[float], min_p: Sequence[float], alpha: float, at_chance: bool = False
) -> tuple[list[float | None], list[str]]:
    """Holm-adjusted p and the verdict of each point of one curve. The points whose smallest
    attainable p is below alpha are tested together; Holm multiplies the smallest p by their count
    k, so none can pass unless k · min(min_p) < alpha (R = 19 random rankings, two points: 2/20 is
    not below 0.05), and then every point is "untestable at this size" rather than "not shown"."""
    if len(p_raw) != len(min_p):
        raise ValueError(f"p_raw and min_p: expected one entry per point, got {len(p_raw)} and {len(min_p)}")
    testable = [p if mp < alpha else None for p, mp in zip(p_raw, min_p)]
    adj = holm(testable)
    tested = [mp for mp, t in zip(min_p, testable) if t is not None]
    floor = len(tested) * min(tested) if tested else 1.0  # the smallest adjusted p any point can reach
    return adj, [verdict(a, max(mp, floor), alpha, at_chance) for a, mp in zip(adj, min_p)]


def all_subsets(n: int, m: int) -> list[list[int]]:
    """Every m-subset of range(n), as sorted index lists."""
    return [list(c) for c in itertools.combinations(range(n), m)]


def random_rankings(n: int, count: int, seed: int) -> list[list[int]]:
    """`count` uniformly random orders of range(n); the top m of each is a uniform m-subset."""
    gen = random.Random(seed)
    out = []
    for _ in range(count):
        order = list(range(n))
        gen.shuffle(order)
        out.append(order)
    return out


def tie_orders(scores: Sequence[float], m: int, max_orders: int, seed: int = 0) -> tuple[list[list[int]], bool]:
    """The kept sets of the top m heads under every order of the heads tied at the cut, and
    whether the cut splits a tie. Heads scoring above the cut are always kept; of the g heads
    tied at the cut value, k fill the last places: all C(g, k) choices when there are at most
    `max_orders`, else `max_orders` random ones (seeded)."""
    n = len(scores)
    if not 0 <= m <= n:
        raise ValueError(f"m must lie in [0, {n}], got {m}")
    if m in (0, n):
        return [list(range(m)) if m == 0 else list(range(n))], False
    cut = sorted(scores, reverse=True)[m - 1]
    sure = [i for i, s in enumerate(scores) if s > cut]
    group = [i for i, s in enumerate(scores) if s == cut]
    k = m - len(sure)
    if k == len(group):
        return [sorted(sure + group)], False
    if math.comb(len(group), k) <= max_orders:
        choices = itertools.combinations(group, k)
    else:
        gen = random.Random(seed)
        choices = (gen.sample(group, k) for _ in range(max_orders))
    return [sorted(sure + list(c)) for c in choices], True


__all__ = [
    "AT_CHANCE",
    "BEATS",
    "NOT_SHOWN",
    "UNTESTABLE",
    "all_subsets",
    "holm",
    "min_attainable_p",
    "random_rankings",
    "reaches",
    "subset_p",
    "tie_orders",
    "verdict",
]
