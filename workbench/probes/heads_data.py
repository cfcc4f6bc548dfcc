"""The head probes' configs and results, as plain dataclasses: no torch, no TransformerLens.

Reading a heads run's results.json (the viewer, `workbench.results`) needs these classes and
nothing of the probes that compute them; the probe modules (`probes.heads`, `probes.head_agreement`,
`probes.heads_over_training`, `probes.head_explorer`) import them from here. The KV-cache probes'
configs and results (DuoAttention, RazorAttention, the trade-off) are in `probes.kv_data`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypedDict

from ..fielddoc import FieldError, check_choices, doc

Scores = list[list[float]]  # [L][H]
CONTEXTS = ("random", "text")  # HeadRoleConfig.contexts
CAUSAL_CHECKS = ("exact", "screen")  # HeadRoleConfig.causal


def _known(cls, d: Mapping) -> dict[str, Any]:
    """The keys of `d` that are fields of `cls` (a newer writer's extra keys are left out)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


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
    contexts: str = doc(
        "random",
        "needle contexts: 'random' tokens, or 'text': natural text with a span repeated at the end, each "
        "context one string tokenized once (head_roles then needs a tokenizer and a text)",
        choices=CONTEXTS,
    )
    causal: str = doc(
        "exact",
        "causal check: 'exact' (one restricted forward per head) or 'screen' (attribution patching: one "
        "forward and backward for every head, then the exact forward on n_exact heads to check it)",
        choices=CAUSAL_CHECKS,
    )
    n_exact: int = doc(40, "causal='screen': heads checked exactly (half the screen's top, half at random)")
    screen_seed: int = doc(0, "causal='screen': seed of the random half of the exactly checked heads")

    def __post_init__(self):
        check_choices(self)
        if self.n_exact < 1:
            raise FieldError("n_exact", f"n_exact must be >= 1, got {self.n_exact}")


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
    # how delta_loss was measured: "exact" (a restricted forward per head) or "screen" (its first-order
    # estimate for every head; the exact check of a sample and their agreement are in `screen`)
    causal: str = "exact"
    screen: CausalScreen | None = None

    def __post_init__(self):
        if isinstance(self.screen, Mapping):  # read back from results.json
            self.screen = CausalScreen.from_dict(self.screen)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttentionExample:
    """Every head's attention pattern on one context, for the viewer's pattern picker."""

    name: str  # what the context is ("needle", "passkey", ...)
    tokens: list[str]  # [T] each token as text (the run's tokenizer's token_str)
    patterns: list  # [L][H][q][k] attention probabilities


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


@dataclass
class CausalScreen:
    """The attribution-patching screen of every head's causal effect (`probes.head_screen`), the
    exact restricted forward on a sample of heads, and how well the two agree there."""

    score: Scores  # [L][H] first-order estimate of the copy-loss change under sink + window
    heads: list[list[int]]  # [n][layer, head] checked with the exact restricted forward
    exact: list[float]  # [n] their exact copy-loss change
    chosen_by: list[str]  # [n] "screen top" (the screen's highest) | "random" (drawn from the rest)
    spearman: Correlation  # screen vs exact over all checked heads (Fisher z interval)
    spearman_random: Correlation  # over the random ones only: not inflated by choosing the screen's top
    top_k: int  # k of the recall (min(10, n // 2))
    top_k_recall: float | None  # share of the exact top k (of the checked heads) in the screen's top k of all
    sink: int
    window: int
    seconds: dict[str, float] = field(default_factory=dict)  # "screen", "exact": wall time of each part

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> CausalScreen:
        out = cls(**_known(cls, d))
        for name in ("spearman", "spearman_random"):
            value = getattr(out, name)
            if isinstance(value, Mapping):
                setattr(out, name, Correlation(**_known(Correlation, value)))
        return out


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
    # the run's file holding contexts' patterns (head_explorer.save_patterns); results.json then
    # stores patterns None and the viewer reads one head at a time. None: patterns inline (old runs)
    patterns_file: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.patterns_file:  # on file: [L][H][T][T] in JSON is ~80 MB a context on a 30 x 9 model
            d["contexts"] = {k: {**c, "patterns": None} for k, c in d["contexts"].items()}
        return d

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


def pattern_key(i: int) -> str:
    """The tensor name of the explorer's i-th context in the run's patterns file."""
    return f"context.{i}"


class PatternsError(ValueError):
    """The run's patterns file is missing, corrupt, or does not hold the asked context."""


@contextmanager
def _patterns_file(path: Path):
    """The open patterns file and its context names; PatternsError naming it when it is missing,
    corrupt or not safetensors (numpy: the viewer reads it without torch or TransformerLens)."""
    from safetensors import safe_open

    if not path.is_file():
        raise PatternsError(f"{path} is missing: the run's attention patterns cannot be shown")
    try:
        with safe_open(str(path), framework="numpy") as f:
            yield f, json.loads((f.metadata() or {}).get("contexts", "[]"))
    except PatternsError:
        raise
    except Exception as e:
        raise PatternsError(f"{path} is corrupt or not safetensors: {type(e).__name__}: {e}") from e


def _rounded(a, digits: int = 4) -> list:
    return a.astype("float64").round(digits).tolist()  # float64 first: float32 0.672 stays 0.672


def load_pattern(path: str | Path, context: str, layer: int, head: int, digits: int = 4) -> list[list[float]]:
    """One head's [T][T] pattern on `context` from a `head_explorer.save_patterns` file, reading only
    that slice."""
    path = Path(path)
    with _patterns_file(path) as (f, names):
        if context not in names:
            raise PatternsError(f"{path} holds no context {context!r} (it holds {names})")
        pat = f.get_slice(pattern_key(names.index(context)))[layer : layer + 1, head : head + 1][0, 0]
        return _rounded(pat, digits)


def with_patterns(data: ExplorerData, run_dir: str | Path) -> ExplorerData:
    """`data` with every context's patterns read back from the run's patterns file (for a surface
    that keeps them all in memory, like the widget); `data` itself when they are inline."""
    if not data.patterns_file:
        return data
    path = Path(run_dir) / data.patterns_file
    with _patterns_file(path) as (f, names):
        missing = sorted(set(data.contexts) - set(names))
        if missing:
            raise PatternsError(f"{path} holds no patterns for the contexts {missing}")
        got = {n: _rounded(f.get_tensor(pattern_key(names.index(n)))) for n in data.contexts}
    return replace(data, contexts={n: {**c, "patterns": got[n]} for n, c in data.contexts.items()})
