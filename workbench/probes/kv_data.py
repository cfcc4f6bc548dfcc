"""The KV-cache probes' configs and results (DuoAttention, RazorAttention, the trade-off), as plain
dataclasses: no torch, no TransformerLens, so reading a heads run needs none of the probes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from .head_rankings import razor_ranking
from .heads_data import _known
from .ranking_test import BEATS

# The trade-off's metrics (probes.kv_tradeoff measures them; TradeoffResult.beats_random reads them).
METRICS = ("needle_acc", "passkey_acc", "passkey_token_acc", "text_loss")
LOWER_IS_BETTER = {"text_loss"}


# --- DuoAttention (probes.duo) ---------------------------------------------------------------------


@dataclass(frozen=True)
class PasskeyConfig:
    """Layout of a synthetic passkey context: [BOS] haystack · needle · haystack · question + answer."""

    seq_len: int = 128  # tokens per context, BOS included; must be <= the model's n_ctx
    key_len: int = 5  # answer tokens (digits with a tokenizer, random tokens without one)
    needle_prefix: str = " The pass key is "  # text before the key inside the needle
    needle_suffix: str = ". "  # text after the key inside the needle
    question: str = " What is the pass key? The pass key is "  # at the end, followed by the answer
    depth: tuple[float, float] = (0.1, 0.9)  # the needle starts at this share of the haystack, uniform
    # Without a tokenizer (models whose vocabulary is not text): the needle prefix and the question
    # are the same `random_prefix_len` random tokens, the key `key_len` random tokens, all from
    # `token_range` [lo, hi) (None: every id but BOS).
    random_prefix_len: int = 4
    token_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class DuoConfig:
    """DuoAttention gate optimisation on synthetic passkey contexts."""

    n_contexts: int = 64  # passkey contexts drawn once; each step uses `batch_size` of them
    batch_size: int = 16  # contexts per optimisation step
    steps: int = 300  # Adam steps
    lr: float = 0.02  # Adam learning rate (the paper's)
    lam: float = 0.05  # weight of the mean |α| penalty (the paper's λ)
    sink: int = 1  # first positions every streaming head keeps (BOS here; the paper: 64 tokens at scale)
    window: int = 4  # most recent positions, the query included (the paper: 256 at scale)
    # "paper": mean squared difference after the final norm (the reference code's); "sum": ‖h_full −
    # h_gated‖² of the residual stream before it; "relative": "sum" / mean ‖h_full‖² (module docstring)
    distance: str = "relative"
    log_every: int = 5  # α of every head is recorded every this many steps (the head's gate curve)
    seed: int = 0  # contexts and batch order
    passkey: PasskeyConfig = field(default_factory=PasskeyConfig)


@dataclass
class DuoResult:
    alphas: list[list[float]]  # [L][H] final gates per query head (its KV head's): 1 = full, 0 = streaming
    steps: list[int]  # 1..steps
    loss: list[float]  # per step: distance + lam · mean|α|
    distance: list[float]  # per step: mean ‖h_full − h_gated‖² on the answer positions
    penalty: list[float]  # per step: lam · mean|α|
    trajectory_steps: list[int]  # steps at which the gates were recorded (0 = the init)
    trajectory: list[list[list[float]]]  # [n_records][L][H]
    seconds: float  # wall time of the optimisation
    config: dict
    # The gates themselves, one per KV head [L][n_kv] (under GQA each shared by n_heads / n_kv query
    # heads, whose `alphas` repeat it; on an MHA model equal to `alphas`), and the two counts
    kv_alphas: list[list[float]] = field(default_factory=list)
    n_query_heads: int = 0  # L · n_heads (0: a result from before the counts)
    n_kv_heads: int = 0  # L · n_kv

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> DuoResult:
        return cls(**_known(cls, d))

    def head_curve(self, layer: int, head: int) -> tuple[list[int], list[float]]:
        """One head's gate over the optimisation (the explorer's "gate training curve")."""
        return self.trajectory_steps, [a[layer][head] for a in self.trajectory]


# --- RazorAttention (probes.razor) -----------------------------------------------------------------


@dataclass(frozen=True)
class RazorConfig:
    """Repeated random segments and the protection rule's two fractions."""

    n_contexts: int = 8  # contexts (each a different random segment)
    segment: int = 32  # distinct random tokens per segment
    repeats: int = 3  # copies of the segment; (BOS +) segment · repeats must fit in n_ctx
    induction_frac: float = 0.14  # share of all heads protected by induction score (the paper's ~14%)
    echo_frac: float = 0.01  # share protected by echo score (the paper's ~1%; at least one head)
    token_range: tuple[int, int] | None = None  # ids [lo, hi) to draw from; None: printable ASCII for
    # the byte tokenizer (d_vocab 257), else every id but a BOS at d_vocab - 1
    seed: int = 0
    # A head is protected only with a score at least this (attention mass on the echo / induction
    # keys); a head attending uniformly scores about 0.02 at the defaults (RazorResult's
    # uniform_echo_induction). No head above it: "nothing to protect", not a count of zero-score heads.
    min_score: float = 0.05


@dataclass
class RazorResult:
    echo: list[list[float]]  # [L][H]
    induction: list[list[float]]  # [L][H]
    protected: list[list[bool]]  # [L][H] the rule's union
    n_induction_protected: int  # the rule's count ⌈induction_frac · n⌉ (heads under min_score are left out)
    n_echo_protected: int  # ⌈echo_frac · n⌉
    config: dict
    nothing_to_protect: bool = False  # no head reached min_score: the rule protects nothing
    uniform_echo_induction: list[float] = field(default_factory=list)  # [echo, induction] of uniform attention
    # The rule's decision per KV head [L][n_kv] (`protected` repeats it over each group's query heads;
    # on an MHA model the same grid), the two counts and the share of KV heads protected
    protected_kv: list[list[bool]] = field(default_factory=list)
    n_query_heads: int = 0  # L · n_heads (0: a result from before the counts)
    n_kv_heads: int = 0  # L · n_kv: the units the rule's counts are shares of
    protected_share: float = 0.0  # protected KV heads / n_kv_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> RazorResult:
        return cls(**_known(cls, d))

    def ranking(self) -> list[list[float]]:
        """Scores for keeping heads full: protected heads first, each group by induction score."""
        return razor_ranking(self.induction, self.protected)


# --- the KV-cache trade-off (probes.kv_tradeoff) ---------------------------------------------------


@dataclass(frozen=True)
class TradeoffConfig:
    """Head fractions, the streaming restriction and the evaluation contexts of the trade-off curve."""

    fractions: tuple[float, ...] = (0, 10, 25, 50, 75, 100)  # % of heads kept full
    sink: int = 1  # first positions a streaming head keeps
    window: int = 4  # most recent positions a streaming head keeps (query included)
    compensation: bool = False  # streaming heads also attend to RazorAttention's compensation token
    comp_weight: str = "count"  # the token's softmax weight: "count" (× dropped keys, the paper) or "one"
    # R random rankings: the null where C(n, m) exceeds exact_max_subsets (p = (1 + hits) / (1 + R), so
    # the smallest p is 1 / (1 + R)), and the random curves drawn beside the band
    n_random: int = 99
    exact_max_subsets: int = 500  # enumerate every m-subset of heads (exact p) while C(n, m) is at most this
    alpha: float = 0.05  # level of "beats random", on Holm-adjusted p over a curve's testable points
    band_quantiles: tuple[float, float] = (0.05, 0.95)  # the random band: these quantiles of the null
    max_tie_orders: int = 100  # tie orders at a cut measured at most (all of them when fewer; else random)
    # More context draws: each re-measures every ranking (with the rankings measured on that draw, when
    # given) for a Student t interval per point; the p-values are on `seed`'s contexts
    context_seeds: tuple[int, ...] = ()
    seq_len: int = 128  # tokens per context (BOS included) = the T of the KV fraction; <= n_ctx
    n_needle: int = 32  # needle contexts
    needle_len: int = 10  # needle tokens
    n_passkey: int = 32  # passkey contexts
    passkey: PasskeyConfig = field(default_factory=PasskeyConfig)  # its seq_len is replaced by seq_len
    n_text: int = 32  # held-out text windows
    token_range: tuple[int, int] | None = None  # needle token ids (see HeadRoleConfig.token_range)
    seed: int = 0  # contexts and random rankings


@dataclass
class TradeoffResult:
    fractions: list[float]  # % of heads kept full
    n_full: list[int]  # heads kept full at each fraction
    kv_fraction: list[float]  # KV cache kept / all heads full, at T = seq_len (MHA; GQA: see curves)
    curves: dict[str, dict[str, list[float]]]  # ranking -> metric (+ "kv_fraction") -> one value per fraction
    random_curves: list[dict[str, list[float]]]  # one per random ranking
    # metric -> {"mean", "min", "max", "lo", "hi" (band_quantiles), "median"} per fraction, over the null:
    # every m-subset where enumerated, else the random rankings
    random_band: dict[str, dict[str, list[float]]]
    rankings: dict[str, list[list[float]]]  # the scores [L][n_kv] per KV head ([L][H] on MHA) of each curve
    seq_len: int
    config: dict  # the TradeoffConfig used (its passkey at the trade-off's seq_len)
    # Everything below is optional, so that results written before it still read.
    n_heads: int = 0  # units ranked, the n of C(n, m): KV heads (= heads on an MHA model)
    n_query_heads: int = 0  # L · n_heads (0: a result from before the counts)
    n_kv_heads: int = 0  # L · n_kv: the units under GQA
    null_exact: list[bool] = field(default_factory=list)  # per fraction: p exact over every m-subset
    null_size: list[int] = field(default_factory=list)  # per fraction: C(n, m) subsets, or R random rankings
    min_p: list[float] = field(default_factory=list)  # per fraction: the smallest attainable p
    # ranking -> metric -> per fraction: p of the worst tie order against the null; Holm-adjusted over the
    # curve's testable points (None: untestable); "beats random" | "not shown" | "untestable at this size"
    # | "full attention at chance"
    p_values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    p_adjusted: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    verdicts: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # ranking -> metric -> per fraction [lo, hi] over the orders of the heads tied at the cut (the
    # curve is their mean); ranking -> per fraction: whether the cut split a tie
    tie_range: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    tied: dict[str, list[bool]] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)  # metric -> its value under uniform guessing
    full_value: dict[str, float] = field(default_factory=dict)  # metric -> its value with every head full
    at_chance: dict[str, bool] = field(default_factory=dict)  # metric -> all-full value not above chance
    context_seeds: list[int] = field(default_factory=list)  # the context seeds (the p-values' first)
    seed_curves: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)  # name -> metric -> [seed][x]
    seed_ci: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)  # -> [x][lo, hi] t 95%

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> TradeoffResult:
        return cls(**_known(cls, d))

    def verdict(self, name: str, metric: str = "needle_acc", pct: float = 25) -> str:
        """Ranking `name`'s verdict against random picks at `pct`% heads full (TradeoffResult.verdicts);
        a result written before p-values were "not tested (no p-values in this result)"."""
        if name not in self.curves:
            raise ValueError(f"name: no ranking {name!r}; have {sorted(self.curves)}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if pct not in self.fractions:
            raise ValueError(f"pct={pct} is not one of the measured fractions {self.fractions}")
        if name not in self.verdicts:
            return "not tested (no p-values in this result)"
        return self.verdicts[name][metric][self.fractions.index(pct)]

    def beats_random(self, name: str, metric: str = "needle_acc", pct: float = 25) -> bool:
        """Whether ranking `name` beats random picks at `pct`% heads full: Holm-adjusted p below
        alpha (never where the point is untestable or the metric is at chance with all heads full)."""
        return self.verdict(name, metric, pct) == BEATS
