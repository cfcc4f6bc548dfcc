"""The head probes' configs and results, as plain dataclasses: no torch, no TransformerLens.

Reading a heads run's results.json (the viewer, `workbench.results`) needs these classes and
nothing of the probes that compute them; the probe modules (`probes.heads`, `probes.duo`,
`probes.razor`, `probes.kv_tradeoff`, `probes.head_agreement`, `probes.heads_over_training`,
`probes.head_explorer`) import them from here, and each name stays importable from its old module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

from .head_rankings import razor_ranking
from .ranking_test import BEATS

Scores = list[list[float]]  # [L][H]


def _known(cls, d: Mapping) -> dict[str, Any]:
    """The keys of `d` that are fields of `cls` (a newer writer's extra keys are left out)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


# The trade-off's metrics (probes.kv_tradeoff measures them; TradeoffResult.beats_random reads them).
METRICS = ("needle_acc", "passkey_acc", "passkey_token_acc", "text_loss")
LOWER_IS_BETTER = {"text_loss"}


# --- head roles (probes.heads) ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeadRoleConfig:
    """Contexts and thresholds of the head-role probe."""

    n_contexts: int = 32  # needle contexts per measurement
    seq_len: int = 96  # tokens per context (BOS included); must be ≤ the model's n_ctx
    needle_len: int = 10  # needle tokens
    sink: int = 1  # first positions counted as attention sinks (BOS here; ~4 in large models)
    window: int = 4  # most recent positions (the query's own included) of the streaming window
    retrieval_threshold: float = 0.1  # the paper's cut-off
    streaming_threshold: float = 0.7  # share of attention on sink ∪ window
    # Below this many correctly copied steps no head is labelled "retrieval" or "other". From n = 35
    # on, a head with 0 hits has a Wilson upper bound (z²/(n+z²)) under the 0.1 threshold, so "not
    # retrieval" can be established at all; 40 rounds that up. With fewer, one or two chance hits
    # read as a score ≥ 0.1 (an undertrained model: 18 steps, scores 0.11-0.28).
    min_copied_steps: int = 40
    token_range: tuple[int, int] | None = None  # haystack/needle ids [lo, hi); None: the whole vocab but BOS
    seed: int = 0


@dataclass
class HeadRoles:
    retrieval: list[list[float]]  # [L][H] hits / n_copied
    streaming: list[list[float]]  # [L][H] mean over contexts
    labels: list[list[str]]  # [L][H]: "retrieval" | "streaming" | "other" | "too few copied steps"
    delta_loss: list[list[float]]  # [L][H] copy-loss increase under sink+window attention
    clean_copy_loss: float
    copy_accuracy: float
    tl_scores: dict[str, list[list[float]]]  # TransformerLens detectors
    config: dict
    retrieval_hits: list[list[int]]  # [L][H] copied steps at which the head's top key was the needle token
    retrieval_ci: list[list[list[float]]]  # [L][H][lo, hi] Wilson 95% of hits / n_copied
    streaming_ci: list[list[list[float]]]  # [L][H][lo, hi] t 95% over contexts
    n_copied: int  # correctly copied steps: the retrieval score's denominator
    n_copy_steps: int  # copy steps offered (contexts × (needle_len - 1))
    too_few_copied: bool  # n_copied < min_copied_steps: no head is labelled retrieval or other

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttentionExample:
    """Every head's attention pattern on one context, for the viewer's pattern picker."""

    name: str  # what the context is ("needle", "passkey", ...)
    tokens: list[str]  # [T] each token as text (the run's tokenizer's token_str)
    patterns: list  # [L][H][q][k] attention probabilities


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
    alphas: list[list[float]]  # [L][H] final gates: 1 = needs full attention, 0 = streaming suffices
    steps: list[int]  # 1..steps
    loss: list[float]  # per step: distance + lam · mean|α|
    distance: list[float]  # per step: mean ‖h_full − h_gated‖² on the answer positions
    penalty: list[float]  # per step: lam · mean|α|
    trajectory_steps: list[int]  # steps at which the gates were recorded (0 = the init)
    trajectory: list[list[list[float]]]  # [n_records][L][H]
    seconds: float  # wall time of the optimisation
    config: dict

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
    rankings: dict[str, list[list[float]]]  # the scores [L][H] each curve was built from
    seq_len: int
    config: dict  # the TradeoffConfig used (its passkey at the trade-off's seq_len)
    # Everything below is optional, so that results written before it still read.
    n_heads: int = 0  # heads in the model (n of C(n, m))
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


# --- agreement of the head rankings (probes.head_agreement) ----------------------------------------


@dataclass(frozen=True)
class AgreementConfig:
    """How the rank correlations' intervals and p-values are computed."""

    level: float = 0.95  # two-sided coverage of the Fisher z interval
    fieller_var: float = 1.06  # Fieller et al. (1957): var(atanh(rho_s)) ≈ 1.06 / (n - 3)
    exact_max_n: int = 8  # up to this many heads the permutation p-value enumerates every ordering
    n_permutations: int = 20_000  # Monte Carlo orderings beyond exact_max_n
    seed: int = 0  # of the Monte Carlo permutations


@dataclass
class Correlation:
    """One Spearman rho with its interval; rho is None when a ranking is constant over heads."""

    rho: float | None
    ci: list[float] | None  # [lo, hi] Fisher z interval; None when rho is None or n < 4
    p_value: float | None  # two-sided permutation p of |rho| >= observed
    n: int  # heads compared (non-finite scores dropped in pairs)
    note: str = ""  # why rho or its interval is missing


@dataclass
class Agreement:
    names: list[str]  # the rankings, in the order of the matrices
    rho: list[list[float | None]]  # [k][k] Spearman rho (diagonal 1)
    ci: list[list[list[float] | None]]  # [k][k][lo, hi] (None on the diagonal)
    p_value: list[list[float | None]]  # [k][k] (None on the diagonal)
    causal: dict[str, Correlation] = field(default_factory=dict)  # ranking -> its rho with the causal check
    n_heads: int = 0
    method: str = ""  # the interval's name, for tables and captions
    config: dict = field(default_factory=dict)
    # Over context seeds (`head_agreement.agreement_over_seeds`; empty with one seed): rho per seed
    # [k][k][seed] and its Student t 95% interval [k][k][lo, hi] (None: fewer than 2 defined), and the
    # same for each ranking against the causal check
    seeds: list[int] = field(default_factory=list)
    seed_rho: list[list[list[float | None]]] = field(default_factory=list)
    seed_ci: list[list[list[float] | None]] = field(default_factory=list)
    causal_seed_rho: dict[str, list[float | None]] = field(default_factory=dict)
    causal_seed_ci: dict[str, list[float] | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Agreement:
        """From `to_dict()`: the causal correlations back as `Correlation`s."""
        out = cls(**_known(cls, d))
        out.causal = {
            k: v if isinstance(v, Correlation) else Correlation(**_known(Correlation, v)) for k, v in out.causal.items()
        }
        return out

    def pair(self, a: str, b: str) -> Correlation:
        i, j = self.names.index(a), self.names.index(b)
        return Correlation(self.rho[i][j], self.ci[i][j], self.p_value[i][j], self.n_heads)


# --- head scores over training (probes.heads_over_training) ----------------------------------------


@dataclass(frozen=True)
class OverTrainingConfig:
    """What is measured at each checkpoint and when a head type counts as formed."""

    roles: HeadRoleConfig = HeadRoleConfig()  # contexts and thresholds of the head-role probe
    induction_threshold: float = 0.3  # TL induction score (attention mass on the induction key) of a formed head
    copy_threshold: float = 0.5  # needle copy accuracy at which in-context copying counts as on
    loss_batch: int = 16  # held-out windows per forward pass when the loss is measured


@dataclass
class HeadsOverTraining:
    steps: list[int]  # optimizer updates done at each checkpoint
    retrieval: list[Scores]  # [checkpoint][L][H] Wu retrieval score
    retrieval_ci: list[list[list[list[float]]]]  # [checkpoint][L][H][lo, hi] Wilson 95%
    streaming: list[Scores]  # attention mass on sink ∪ window
    streaming_ci: list[list[list[list[float]]]]  # t 95% over contexts
    induction: list[Scores]  # TransformerLens induction detector
    previous_token: list[Scores]  # TransformerLens previous-token detector
    delta_loss: list[Scores]  # causal check: copy-loss increase under sink + window
    entropy: list[Scores]  # attention entropy (nats) on the needle contexts
    labels: list[list[list[str]]]  # head-role labels at each checkpoint
    copy_accuracy: list[float]  # needle copy accuracy
    # Wilson 95% over copy steps (the steps of one context are not independent: a lower bound on the width)
    copy_accuracy_ci: list[list[float]]
    n_copied: list[int]
    loss: list[float | None]  # each checkpoint's loss (see loss_source)
    loss_source: str  # "held-out windows" | "metrics.jsonl val_loss" | "none"
    loss_curve: dict = field(default_factory=dict)  # {"step", "val_loss"} logged during training (updates done)
    formed: dict = field(default_factory=dict)  # kind -> [previous checkpoint step, first step it holds] or None
    config: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the measurement (loading included)
    # kind -> "formed" | "not formed" | "too few copied steps" (retrieval not measurable at the last
    # checkpoint: `formed` is None then too, but that is not "not formed")
    formed_state: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> HeadsOverTraining:
        return cls(**_known(cls, d))


# --- the head explorer's data (probes.head_explorer) -----------------------------------------------


class ContextPatterns(TypedDict):
    """Every head's attention on one context (`head_explorer.context_patterns`)."""

    ids: list[int]  # [T] token ids
    tokens: list[str]  # [T] each token as text
    patterns: list[list[list[list[float]]]]  # [L][H][q][k] attention probabilities (rounded)


class GateCurve(TypedDict):
    """DuoAttention's gates while they were fitted."""

    step: list[int]  # the recorded steps (0 = the init)
    alpha: list[Scores]  # [n_records][L][H]


@dataclass
class ExplorerData(Mapping):
    """What the head explorer (figures, widget, viewer page) draws, so that no surface needs the
    model: every per-head score, their intervals, the roles, attention on a few contexts and the
    gate curve. A read-only Mapping over its fields too (`data["metrics"]`, `data.get("gate_curve")`),
    for code written against the dict `explorer_data` used to be."""

    n_layers: int
    n_heads: int
    metrics: dict[str, Scores]  # score name -> [L][H] ("retrieval score", "Duo α", ...)
    intervals: dict[str, list[list[list[float]]]] = field(default_factory=dict)  # name -> [L][H][lo, hi]
    labels: list[list[str]] | None = None  # [L][H] head-role labels; None: not labelled
    contexts: dict[str, ContextPatterns] = field(default_factory=dict)  # context name -> its patterns
    gate_curve: GateCurve | None = None  # None: no DuoAttention trajectory
    razor_protected: list[list[bool]] | None = None  # [L][H] RazorAttention's protected heads; None: not run
    roles_config: dict[str, Any] = field(default_factory=dict)  # the head-role probe's HeadRoleConfig, as JSON
    copy_accuracy: float | None = None  # the head-role probe's needle copy accuracy

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> ExplorerData:
        """From `to_dict()`; keys this class does not know are left out."""
        return cls(**_known(cls, d))

    # the Mapping view (read-only): the fields by name
    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)
