"""The "heads" run kind: attention-head roles (Wu et al.'s retrieval score, streaming mass, the
causal check, TransformerLens' detectors) with example patterns, and the head methods of issue 21:
DuoAttention gates, RazorAttention's rule, the KV-cache trade-off against random rankings, the
rankings' agreement, the scores over training and the head explorer's data."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..fielddoc import doc
from ..probes.heads_data import (
    CAUSAL_CHECKS,
    CONTEXTS,
    Agreement,
    AttentionExample,
    Correlation,
    ExplorerData,
    HeadRoleConfig,
    HeadRoles,
    HeadsOverTraining,
)
from ..probes.kv_data import DuoConfig, DuoResult, RazorConfig, RazorResult, TradeoffConfig, TradeoffResult
from ..results import ResultsError, take

FOLDER = "probe-heads"
PAGE = "workbench.viewer.heads_page"


@dataclass(frozen=True)
class HeadsRunConfig:
    """The head-role probe and the head methods. The nested configs are set in Python (a recipe);
    the flags are the switches and the main sizes."""

    head_methods: bool = doc(True, "also DuoAttention, Razor, the KV trade-off, the agreement and the explorer")
    over_training: bool = doc(True, "the head scores at the model's checkpoints (its run folder, or the shipped ones)")
    n_contexts: int = doc(32, "needle contexts of the head-role probe")
    seq_len: int = doc(96, "tokens per needle context (BOS included; at most the model's n_ctx)")
    duo_steps: int = doc(100, "DuoAttention's Adam steps (the method's 300; gates settle by 100 on the default)")
    contexts: str = doc(
        "random",
        "needle contexts: 'random' tokens, or 'text' (the validation split with a span repeated, each "
        "context tokenized whole: for a BPE model)",
        choices=CONTEXTS,
    )
    causal: str = doc(
        "exact",
        "causal check: 'exact' (a forward per head) or 'screen' (attribution patching for every head, "
        "checked exactly on --n-exact heads: for large models)",
        choices=CAUSAL_CHECKS,
    )
    n_exact: int = doc(40, "with --causal screen: heads checked with the exact restricted forward (at most every head)")
    roles: HeadRoleConfig = field(
        default_factory=HeadRoleConfig
    )  # its n_contexts/seq_len/contexts/causal/n_exact are the flags'
    duo: DuoConfig = field(default_factory=DuoConfig)  # its steps is duo_steps
    razor: RazorConfig = field(default_factory=RazorConfig)
    tradeoff: TradeoffConfig = field(default_factory=TradeoffConfig)
    # over training: True reads the shipped default's checkpoints (the demo), False the model's own
    # run folder (ModelInput.run_dir; nothing when it is not known)
    shipped_checkpoints: bool = field(default=False)

    def role_config(self) -> HeadRoleConfig:
        return dataclasses.replace(
            self.roles,
            n_contexts=self.n_contexts,
            seq_len=self.seq_len,
            contexts=self.contexts,
            causal=self.causal,
            n_exact=self.n_exact,
        )

    def duo_config(self) -> DuoConfig:
        return dataclasses.replace(self.duo, steps=self.duo_steps)


def _agreement(d: dict, where: str) -> Agreement:
    out = take(Agreement, d, where)
    out.causal = {k: take(Correlation, v, f"{where}.causal[{k!r}]") for k, v in out.causal.items()}
    return out


# The optional sections: results.json's field -> how it is read (checked field by field, naming
# `where`). One that fails is left None and its fault kept in `HeadsRunResult.unreadable`.
SECTIONS = {
    "duo": lambda d, where: take(DuoResult, d, where),
    "razor": lambda d, where: take(RazorResult, d, where),
    "kv_tradeoff": lambda d, where: take(TradeoffResult, d, where),
    "agreement": _agreement,
    "over_training": lambda d, where: take(HeadsOverTraining, d, where),
    "explorer": lambda d, where: take(ExplorerData, d, where),
}


@dataclass
class HeadsRunResult:
    """Attention-head roles (`probes.heads.head_roles`), example patterns, and the optional
    measurements of issue 21 (the viewer shows what is present): DuoAttention gates, RazorAttention
    scores, the KV-cache trade-off, the rank agreement of the head rankings, the scores over
    training and the head explorer's data. Reading results.json, a section that does not
    type-check is left None and named in `unreadable`, so that the rest of the run still reads."""

    KIND: ClassVar[str] = "heads"
    SCHEMA: ClassVar[int] = 1

    roles: HeadRoles
    examples: list[AttentionExample] = field(default_factory=list)
    duo: DuoResult | None = None  # probes.duo.duo_gates
    razor: RazorResult | None = None  # probes.razor.razor_scores
    kv_tradeoff: TradeoffResult | None = None  # probes.kv_tradeoff.tradeoff_curve
    agreement: Agreement | None = None  # probes.head_agreement.ranking_agreement
    over_training: HeadsOverTraining | None = None  # probes.heads_over_training
    explorer: ExplorerData | None = None  # probes.head_explorer.explorer_data
    # section ("examples" or a SECTIONS key) -> why results.json's section could not be read (the
    # section is empty then); filled by from_dict, never written
    unreadable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for name, cls in _CLASSES.items():  # a section given as its to_dict()
            value = getattr(self, name)
            if isinstance(value, Mapping) and not isinstance(value, cls):
                setattr(self, name, SECTIONS[name](dict(value), f"{type(self).__name__}.{name}"))

    @property
    def n_layers(self) -> int:
        return len(self.roles.retrieval)

    @property
    def n_heads(self) -> int:
        return len(self.roles.retrieval[0]) if self.roles.retrieval else 0

    def to_dict(self) -> dict:
        sections = {name: None if getattr(self, name) is None else getattr(self, name).to_dict() for name in SECTIONS}
        return {"roles": self.roles.to_dict(), "examples": [dataclasses.asdict(e) for e in self.examples], **sections}

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> HeadsRunResult:
        if not isinstance(d, dict) or "roles" not in d:
            raise ResultsError(f"{where} lacks roles (a HeadsRunResult)")
        out = cls(take(HeadRoles, d["roles"], f"{where}.roles"))
        try:
            out.examples = _examples(d.get("examples"), f"{where}: examples")
        except ResultsError as e:
            out.unreadable["examples"] = str(e)
        for name, read in SECTIONS.items():
            if d.get(name) is not None:
                try:
                    setattr(out, name, read(d[name], f"{where}: {name}"))
                except (ResultsError, TypeError, ValueError) as e:  # TypeError/ValueError: a nested class's own check
                    out.unreadable[name] = str(e) if isinstance(e, ResultsError) else f"{where}: {name}: {e}"
        return out

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:
        if schema == 0:  # HeadRoles' fields, example_tokens and example_patterns, all at the top
            rest = {k: v for k, v in d.items() if k not in ("example_tokens", "example_patterns")}
            tokens, patterns = d.get("example_tokens") or [], d.get("example_patterns") or []
            d = {
                "roles": rest,
                "examples": [{"name": "needle", "tokens": tokens, "patterns": patterns}] if patterns else [],
            }
        return d


_CLASSES = {
    "duo": DuoResult,
    "razor": RazorResult,
    "kv_tradeoff": TradeoffResult,
    "agreement": Agreement,
    "over_training": HeadsOverTraining,
    "explorer": ExplorerData,
}


def _examples(examples, where: str) -> list[AttentionExample]:
    if examples is None:
        return []
    if not isinstance(examples, list):
        raise ResultsError(f"{where} must be a list, got {type(examples).__name__}")
    return [take(AttentionExample, e, f"{where}[{i}]") for i, e in enumerate(examples)]


def build(cfg: HeadsRunConfig, model, data, run, *, progress: bool = True) -> HeadsRunResult:
    """Head roles on `model.model` with one example pattern; with `head_methods`, the methods."""
    from ..probes.heads import attention_patterns, head_roles, role_contexts

    lm, tok = model.model, data.tokenizer
    bos, rcfg = tok.bos_token_id, cfg.role_config()
    if rcfg.causal == "screen":  # at most every head: the default's 8 heads are fewer than the default 40
        rcfg = dataclasses.replace(rcfg, n_exact=min(rcfg.n_exact, lm.cfg.n_layers * lm.cfg.n_heads))
    text = tok.decode(data.validation.tolist()) if rcfg.contexts == "text" else None  # cut into contexts
    roles = head_roles(lm, rcfg, bos=bos, tokenizer=tok, text=text, progress=progress)
    example = role_contexts(lm, rcfg, bos, tok, text).tokens[:1]
    _, pat = attention_patterns(lm, example)
    toks = [data.tokenizer.token_str(int(t)) for t in example[0]]
    res = HeadsRunResult(roles, [AttentionExample("needle", toks, pat[:, 0].tolist())])
    if not cfg.head_methods:
        return res
    res = head_methods(res, cfg, model, data, progress)
    if res.explorer is not None and res.explorer.contexts:  # patterns beside results.json, read per head
        from ..probes.head_explorer import save_patterns
        from ..runs import EXPLORER_PATTERNS_FILE

        res.explorer = save_patterns(run.file(EXPLORER_PATTERNS_FILE), res.explorer)
    return res


def head_methods(res: HeadsRunResult, cfg: HeadsRunConfig, model, data, progress: bool = True) -> HeadsRunResult:
    """Issue 21's measurements into `res`: DuoAttention gates (one seed), RazorAttention's scores,
    the KV-cache trade-off of every ranking against random ones, the rankings' agreement, the
    scores over training (the model's run folder when known, else the shipped checkpoints) and the
    explorer's data. One outer bar names the part running; the long parts show their own beneath."""
    from tqdm.auto import tqdm

    from ..probes.duo import duo_gates, passkey_batch
    from ..probes.head_agreement import ranking_agreement
    from ..probes.head_explorer import default_contexts, explorer_data
    from ..probes.heads_over_training import (
        OverTrainingConfig,
        run_heads_over_training,
        shipped_heads_over_training,
    )
    from ..probes.kv_tradeoff import standard_rankings, tradeoff_curve
    from ..probes.razor import razor_scores

    lm, roles = model.model, res.roles
    bos, tok, rcfg = data.tokenizer.bos_token_id, data.tokenizer, cfg.role_config()
    parts = ["duo gates", "razor", "kv trade-off", "agreement", "over training", "explorer"]
    bar = tqdm(total=len(parts), desc="head methods", disable=not progress)

    def step(name: str) -> None:
        bar.set_postfix_str(name, refresh=False)
        bar.update(0 if name == parts[0] else 1)

    try:
        step("duo gates")
        duo = duo_gates(lm, cfg.duo_config(), haystack=data.train, bos=bos, tokenizer=tok, progress=progress)
        step("razor")
        razor = razor_scores(lm, cfg.razor, bos=bos)
        step("kv trade-off")
        rankings = standard_rankings(roles, duo, razor)
        tradeoff = tradeoff_curve(
            lm, rankings, cfg.tradeoff, bos=bos, haystack=data.validation, tokenizer=tok, progress=progress
        )
        step("agreement")  # the causal check is the reference, not one of the compared rankings
        agreement = ranking_agreement(
            {k: v for k, v in rankings.items() if k != "causal_delta_loss"}, causal=roles.delta_loss
        )
        step("over training")
        over, over_cfg = None, OverTrainingConfig(roles=rcfg)
        if cfg.over_training and cfg.shipped_checkpoints:
            over = shipped_heads_over_training(over_cfg, progress=progress)
        elif cfg.over_training and model.run_dir is not None:
            over = run_heads_over_training(model.run_dir, model.config, over_cfg, bos=bos, progress=progress)
        step("explorer")
        # a passkey context as long as the needle ones, so that every stored pattern is [T, T] alike
        pk = dataclasses.replace(cfg.duo.passkey, seq_len=min(rcfg.seq_len, lm.cfg.n_ctx))
        contexts = {
            **default_contexts(lm, rcfg, bos),
            "passkey": passkey_batch(1, pk, data.validation, bos=bos, tokenizer=tok, seed=1).tokens[0],
        }
        explorer = explorer_data(lm, roles, tokenizer=tok, bos=bos, duo=duo, razor=razor, contexts=contexts)
        bar.update(1)
    finally:
        bar.close()
    return dataclasses.replace(
        res, duo=duo, razor=razor, kv_tradeoff=tradeoff, agreement=agreement, over_training=over, explorer=explorer
    )
