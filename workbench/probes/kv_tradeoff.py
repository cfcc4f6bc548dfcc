"""The KV-cache trade-off that DuoAttention and RazorAttention exist for: rank the heads by a
detector, keep full attention on the top x% and sink + window (optionally + RazorAttention's
compensation token) on the rest, and measure what breaks.

For every ranking and x in `fractions` the top m = round(x% · n) units stay full, and four
things are measured on fixed contexts of `seq_len`:
- needle copy accuracy: the argmax prediction at the copy steps of `heads.make_contexts`' needle
  contexts (random tokens; what a retrieval head is for);
- passkey accuracy: share of `duo.passkey_batch` contexts whose every answer token is the argmax
  (and the share of answer tokens), haystack from held-out text, keys held out from the ones
  DuoAttention's gates are fitted on (the "eval" split);
- natural-text loss: mean next-token loss on consecutive held-out windows;
and the KV cache that choice implies at T = seq_len (`attention_restrict.kv_fraction`). A unit is a
KV head (`gqa`): every head on an MHA model; under grouped-query attention n = L · n_kv, a
per-query-head ranking is read per KV head by its group's best score, and a kept KV head keeps all
its query heads full.

Is a ranking better than random picks? (`ranking_test`, METHODS.md "Random baselines"): each point
gets a p-value against "m heads drawn uniformly", exact over every m-subset where C(n, m) <=
`exact_max_subsets`, else over `n_random` random rankings; Holm-adjusted over the testable points
of one curve (one ranking, one metric); "beats random" only at an adjusted p below `alpha`,
"untestable at this size" where even a perfect pick cannot reach it. The random band is the null's
`band_quantiles` (exact where enumerated). Equal scores at the cut (Duo's gates clamp to exactly 1
and 0) are not a choice: the curve is the mean over the tie orders, `tie_range` their range, and the
p-value the worst order's. A metric whose all-full value is at chance (`at_chance`) is not compared.
`context_seeds` re-measure each ranking on other context draws (with the rankings measured on
those draws when given): a t interval per point over the seeds.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..runs import jsonable
from ..tasks import random_token_range
from .attention_restrict import check_supported, keep_full_hooks, kv_fraction
from .attention_restrict import keep_top as keep_top  # re-exported: its old import path
from .duo import PasskeyBatch, PasskeyConfig, passkey_accuracy, passkey_batch
from .gqa import expand_kv, kv_heads, to_units
from .head_rankings import head_rankings
from .heads import HeadRoleConfig, copy_steps, make_contexts
from .intervals import t_interval, wilson_interval
from .kv_data import LOWER_IS_BETTER, METRICS, TradeoffConfig, TradeoffResult
from .ranking_test import all_subsets, curve_verdicts, min_attainable_p, random_rankings, subset_p, tie_orders

PASSKEY_SEED_OFFSET = 7_919  # the trade-off's passkeys come from a seed stream apart from Duo's fitting ones


def n_full_heads(pct: float, n_heads: int) -> int:
    """round(pct% · n_heads), halves rounded up (25% of 2 heads = 1, not banker's 0)."""
    if not 0 <= pct <= 100:
        raise ValueError(f"fractions: each must lie in [0, 100], got {pct}")
    return int(math.floor(pct / 100 * n_heads + 0.5 + 1e-9))


def standard_rankings(roles=None, duo=None, razor=None) -> dict[str, list[list[float]]]:
    """Every ranking the available results give: `head_rankings.head_rankings` (the one builder;
    this name is kept for old callers)."""
    return head_rankings(roles, duo, razor)


def _text_windows(stream: Tensor, seq_len: int, n: int, bos: int | None) -> Tensor:
    """`n` consecutive non-overlapping windows of seq_len tokens (BOS first when there is one)."""
    body = seq_len - (1 if bos is not None else 0)
    count = min(n, len(stream) // body)
    if count < 1:
        raise ValueError(f"text has {len(stream)} tokens, fewer than one window of {body}")
    seqs = stream[: count * body].view(count, body)
    if bos is not None:
        seqs = torch.cat([torch.full((count, 1), bos, dtype=seqs.dtype), seqs], dim=1)
    return seqs


class _Contexts(NamedTuple):
    """One context seed's evaluation batches."""

    needle_tokens: Tensor
    needle_q: Tensor
    needle_targets: Tensor
    passkey: PasskeyBatch
    windows: Tensor


def eval_contexts(
    model: HookedTransformer,
    cfg: TradeoffConfig,
    seed: int,
    *,
    haystack: Tensor,
    text: Tensor,
    bos: int | None,
    tokenizer=None,
) -> _Contexts:
    """The needle, passkey and text batches of context seed `seed`. The passkeys are of the "eval"
    split (`duo.passkey_batch`) and a seed stream of their own, so none is a key DuoAttention's
    gates were fitted on (those are "fit" keys)."""
    needle = make_contexts(
        model,
        HeadRoleConfig(
            n_contexts=cfg.n_needle,
            seq_len=cfg.seq_len,
            needle_len=cfg.needle_len,
            token_range=cfg.token_range,
            seed=seed,
        ),
        bos,
    )
    q, _ = copy_steps(needle)
    pk = passkey_batch(
        cfg.n_passkey,
        passkey_config(cfg),
        haystack,
        bos=bos,
        tokenizer=tokenizer,
        vocab=model.cfg.d_vocab,
        seed=seed + PASSKEY_SEED_OFFSET,
        split="eval",
    )
    windows = _text_windows(text, cfg.seq_len, cfg.n_text, bos)
    return _Contexts(needle.tokens, q, needle.tokens[:, q + 1], pk, windows)


def passkey_config(cfg: TradeoffConfig) -> PasskeyConfig:
    """The passkey layout the trade-off uses: `cfg.passkey` at the trade-off's seq_len."""
    return replace(cfg.passkey, seq_len=cfg.seq_len)


def chance_levels(model: HookedTransformer, cfg: TradeoffConfig, bos: int | None, tokenizer=None) -> dict[str, float]:
    """Each metric's value under uniform guessing: 1 / (needle ids) for a copied needle token,
    1 / 10 per digit of a passkey (1 / ids for random-token keys), that to the key length for a
    whole key, and log(d_vocab) nats for the loss."""
    lo, hi = random_token_range(model.cfg.d_vocab, bos, cfg.token_range)
    if tokenizer is not None:
        per_key_token = 0.1
    else:
        plo, phi = random_token_range(model.cfg.d_vocab, bos, cfg.passkey.token_range)
        per_key_token = 1.0 / (phi - plo)
    return {
        "needle_acc": 1.0 / (hi - lo),
        "passkey_acc": per_key_token**cfg.passkey.key_len,
        "passkey_token_acc": per_key_token,
        "text_loss": math.log(model.cfg.d_vocab),
    }


def at_chance(metric: str, full: float, n: int, chance: float) -> bool:
    """Whether the all-heads-full value cannot be told from chance, so that no restriction can be
    compared on it: for an accuracy of n items, its Wilson 95% lower bound is at most the chance
    level (0 of 32 passkeys is); for the loss, it is no better than uniform guessing."""
    if metric in LOWER_IS_BETTER:
        return full >= chance
    lo, _ = wilson_interval(torch.tensor(full * n), torch.tensor(float(n)))
    return float(lo) <= chance


def tradeoff_curve(
    model: HookedTransformer,
    rankings: dict[str, list[list[float]]],
    cfg: TradeoffConfig = TradeoffConfig(),
    *,
    bos: int | None = None,
    haystack: Tensor | None = None,
    text: Tensor | None = None,
    tokenizer=None,
    seed_rankings: dict[int, dict[str, list[list[float]]]] | None = None,
    progress: bool = True,
) -> TradeoffResult:
    """The trade-off curve of every ranking, its p-values against random picks and the random band
    (module docstring).

    `haystack` (passkey filler) and `text` (loss windows) are held-out token streams; both None:
    the default corpus' validation split, its byte tokenizer and BOS. `text` None with a haystack
    given: the haystack. Without a `tokenizer` the passkeys are random tokens. `seed_rankings`
    {context seed: rankings} gives the rankings measured on each of `cfg.context_seeds`' contexts
    (the same names as `rankings`); without it every context seed re-measures `rankings`."""
    check_supported(model, cfg.compensation)
    L, H, G = model.cfg.n_layers, model.cfg.n_heads, kv_heads(model)
    n = L * G  # the units kept full or streaming: KV heads (every head on an MHA model)
    rankings = _check_rankings(rankings, L, H, G, "rankings")
    seed_rankings = {s: _check_rankings(r, L, H, G, f"seed_rankings[{s}]") for s, r in (seed_rankings or {}).items()}
    for s, r in seed_rankings.items():
        if set(r) != set(rankings):
            raise ValueError(f"seed_rankings[{s}]: expected the rankings {sorted(rankings)}, got {sorted(r)}")
    if cfg.n_random < 2:
        raise ValueError(f"n_random must be >= 2 for a band, got {cfg.n_random}")
    if not 0 < cfg.alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {cfg.alpha}")
    if cfg.exact_max_subsets < 1 or cfg.max_tie_orders < 1:
        raise ValueError(
            f"exact_max_subsets and max_tie_orders must be >= 1, got {cfg.exact_max_subsets}, {cfg.max_tie_orders}"
        )
    lo_q, hi_q = cfg.band_quantiles
    if not 0 <= lo_q < hi_q <= 1:
        raise ValueError(f"band_quantiles must be 0 <= lo < hi <= 1, got {cfg.band_quantiles}")
    if cfg.seed in cfg.context_seeds:
        raise ValueError(f"context_seeds: {cfg.context_seeds} repeats the main seed {cfg.seed}")
    if cfg.seq_len > model.cfg.n_ctx:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's n_ctx={model.cfg.n_ctx}")
    n_full = [n_full_heads(p, n) for p in cfg.fractions]
    if haystack is None:
        if model.cfg.d_vocab != 257:
            raise ValueError(
                f"haystack: required for a model with d_vocab={model.cfg.d_vocab}; the default corpus "
                "is byte tokens (d_vocab 257)"
            )
        from ..models import default_data

        data = default_data()
        haystack, tokenizer, bos = data.validation, data.tokenizer, data.tokenizer.bos_token_id
    text = haystack if text is None else text
    device = next(model.parameters()).device
    model.eval()

    def evaluator(seed: int):
        ctx = eval_contexts(model, cfg, seed, haystack=haystack, text=text, bos=bos, tokenizer=tokenizer)
        needle_tokens, q, targets = ctx.needle_tokens.to(device), ctx.needle_q, ctx.needle_targets.to(device)
        pk, pk_tokens, windows = ctx.passkey, ctx.passkey.tokens.to(device), ctx.windows.to(device)
        cache: dict[tuple[int, ...], dict[str, float]] = {}

        @torch.no_grad()
        def measure(kept: list[int]) -> dict[str, float]:
            key = tuple(kept)
            if key not in cache:
                keep = _mask(kept, L, G, H)
                hooks = keep_full_hooks(
                    model, keep, cfg.sink, cfg.window, compensation=cfg.compensation, comp_weight=cfg.comp_weight
                )
                with model.hooks(fwd_hooks=hooks):
                    logits = model(needle_tokens)
                    needle_acc = float((logits[:, q].argmax(-1) == targets).double().mean())
                    pk_acc, pk_tok = passkey_accuracy(model(pk_tokens), pk)
                    loss = sum(float(model(c, return_type="loss")) * len(c) for c in windows.split(16)) / len(windows)
                cache[key] = {
                    "needle_acc": needle_acc,
                    "passkey_acc": pk_acc,
                    "passkey_token_acc": pk_tok,
                    "text_loss": loss,
                }
            return cache[key]

        sizes = {"needle_acc": targets.numel(), "passkey_acc": len(pk.answer), "passkey_token_acc": pk.answer.numel()}
        return measure, sizes

    def kv(kept: list[int]) -> float:
        return kv_fraction(
            _mask(kept, L, G, H), cfg.seq_len, cfg.sink, cfg.window, compensation=cfg.compensation, n_kv_heads=G
        )

    measure, sizes = evaluator(cfg.seed)
    orders = random_rankings(n, cfg.n_random, cfg.seed + 10_007)
    exact = [math.comb(n, m) <= cfg.exact_max_subsets for m in n_full]
    null_sets = [all_subsets(n, m) if ex else [sorted(o[:m]) for o in orders] for m, ex in zip(n_full, exact)]
    bar = tqdm(
        total=len(null_sets) + len(rankings) * (1 + len(cfg.context_seeds)), desc="kv trade-off", disable=not progress
    )
    null: list[dict[str, list[float]]] = []  # per fraction: metric -> value of every null subset
    for sets in null_sets:
        points = [measure(s) for s in sets]
        null.append({m: [p[m] for p in points] for m in METRICS})
        bar.update(1)
    random_curves = []
    for o in orders:
        points = [measure(sorted(o[:m])) for m in n_full]
        c = {m: [p[m] for p in points] for m in METRICS}
        c["kv_fraction"] = [kv(sorted(o[:m])) for m in n_full]
        random_curves.append(c)
    band = {}
    for metric in METRICS:
        vals = [np.asarray(nv[metric], dtype=np.float64) for nv in null]
        band[metric] = {
            "mean": [float(v.mean()) for v in vals],
            "min": [float(v.min()) for v in vals],
            "max": [float(v.max()) for v in vals],
            "lo": [float(np.quantile(v, lo_q)) for v in vals],
            "hi": [float(np.quantile(v, hi_q)) for v in vals],
            "median": [float(np.median(v)) for v in vals],
        }
    null_size = [len(s) for s in null_sets]
    min_p = [min_attainable_p(k, ex) for k, ex in zip(null_size, exact)]

    def ranking_points(measure_fn, scores) -> tuple[dict[str, list[list[float]]], list[list[list[int]]], list[bool]]:
        flat = [float(v) for row in scores for v in row]
        per_point, sets_per_point, tied = {m: [] for m in METRICS}, [], []
        for m in n_full:
            sets, split = tie_orders(flat, m, cfg.max_tie_orders, seed=cfg.seed)
            points = [measure_fn(s) for s in sets]
            for metric in METRICS:
                per_point[metric].append([p[metric] for p in points])
            sets_per_point.append(sets)
            tied.append(split)
        return per_point, sets_per_point, tied

    curves, tie_range, tied_at, p_raw = {}, {}, {}, {}
    for name, scores in rankings.items():
        per_point, sets, tied = ranking_points(measure, scores)
        curves[name] = {m: [float(np.mean(v)) for v in per_point[m]] for m in METRICS}
        curves[name]["kv_fraction"] = [float(np.mean([kv(s) for s in ss])) for ss in sets]
        tie_range[name] = {m: [[min(v), max(v)] for v in per_point[m]] for m in METRICS}
        tied_at[name] = tied
        p_raw[name] = {
            m: [
                max(subset_p(v, null[i][m], m not in LOWER_IS_BETTER, exact[i]) for v in per_point[m][i])
                for i in range(len(n_full))
            ]
            for m in METRICS
        }
        bar.update(1)

    chance = chance_levels(model, cfg, bos, tokenizer)
    full = measure(list(range(n)))
    chance_hit = {
        m: at_chance(m, full[m], sizes.get(m, 0), chance[m]) if m in LOWER_IS_BETTER or sizes.get(m) else False
        for m in METRICS
    }
    p_adj, verdicts = {}, {}
    for name in rankings:
        p_adj[name], verdicts[name] = {}, {}
        for m in METRICS:
            p_adj[name][m], verdicts[name][m] = curve_verdicts(p_raw[name][m], min_p, cfg.alpha, chance_hit[m])

    seed_curves = {name: {m: [curves[name][m]] for m in METRICS} for name in rankings}
    for s in cfg.context_seeds:
        measure_s, _ = evaluator(s)
        for name in rankings:
            scores = (seed_rankings or {}).get(s, rankings)[name]
            per_point, _, _ = ranking_points(measure_s, scores)
            for m in METRICS:
                seed_curves[name][m].append([float(np.mean(v)) for v in per_point[m]])
            bar.update(1)
    bar.close()
    seed_ci = {}
    if cfg.context_seeds:
        for name in rankings:
            seed_ci[name] = {}
            for m in METRICS:
                _, lo, hi = t_interval(torch.tensor(seed_curves[name][m], dtype=torch.float64))
                seed_ci[name][m] = torch.stack([lo, hi], -1).tolist()
    return TradeoffResult(
        fractions=[float(p) for p in cfg.fractions],
        n_full=n_full,
        kv_fraction=[kv(list(range(m))) for m in n_full],  # any m units: m KV heads full
        curves=curves,
        random_curves=random_curves,
        random_band=band,
        rankings={k: torch.as_tensor(v, dtype=torch.float64).tolist() for k, v in rankings.items()},
        seq_len=cfg.seq_len,
        config=jsonable(replace(cfg, passkey=passkey_config(cfg))),
        n_heads=n,
        n_query_heads=L * H,
        n_kv_heads=L * G,
        null_exact=exact,
        null_size=null_size,
        min_p=min_p,
        p_values=p_raw,
        p_adjusted=p_adj,
        verdicts=verdicts,
        tie_range=tie_range,
        tied=tied_at,
        chance=chance,
        full_value=full,
        at_chance=chance_hit,
        context_seeds=[cfg.seed, *cfg.context_seeds],
        seed_curves=seed_curves,
        seed_ci=seed_ci,
    )


def _check_rankings(rankings: dict, L: int, H: int, G: int, what: str) -> dict[str, list[list[float]]]:
    """Each ranking per KV head [L][G] (`gqa.to_units`: a per-query-head one by its group's best)."""
    return {name: to_units(scores, L, H, G, f"{what}[{name!r}]").tolist() for name, scores in rankings.items()}


def _mask(kept: list[int], L: int, G: int, H: int) -> Tensor:
    """The kept units (flat indices l·G + g) as the [L, H] query-head mask the hooks take."""
    keep = torch.zeros(L * G, dtype=torch.bool)
    keep[kept] = True
    return expand_kv(keep.view(L, G), H)
