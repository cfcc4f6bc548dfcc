"""The KV-cache trade-off that DuoAttention and RazorAttention exist for: rank the heads by a
detector, keep full attention on the top x% and sink + window (optionally + RazorAttention's
compensation token) on the rest, and measure what breaks.

For every ranking and x in `fractions` the top round(x% · n_heads) heads stay full (ties broken
by the lower flat index l·H + h), and three things are measured on fixed contexts of `seq_len`:
- needle copy accuracy: the argmax prediction at the copy steps of `heads.make_contexts`' needle
  contexts (random tokens; what a retrieval head is for);
- passkey accuracy: share of `duo.passkey_batch` contexts whose every answer token is the argmax
  (and the share of answer tokens), haystack from held-out text;
- natural-text loss: mean next-token loss on consecutive held-out windows;
and the KV cache that choice implies at T = seq_len (`attention_restrict.kv_fraction`).
The baseline is `n_random` uniformly random rankings: their mean and min-max band. A detector is
useful where its curve lies outside the band (above for accuracy, below for loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..runs import jsonable
from .attention_restrict import check_supported, keep_full_hooks, keep_top, kv_fraction, n_kv_heads
from .duo import PasskeyConfig, passkey_accuracy, passkey_batch
from .heads import HeadRoleConfig, copy_steps, make_contexts
from .heads_data import LOWER_IS_BETTER as LOWER_IS_BETTER
from .heads_data import METRICS, TradeoffConfig, TradeoffResult


def n_full_heads(pct: float, n_heads: int) -> int:
    """round(pct% · n_heads), halves rounded up (25% of 2 heads = 1, not banker's 0)."""
    if not 0 <= pct <= 100:
        raise ValueError(f"fractions: each must lie in [0, 100], got {pct}")
    return int(math.floor(pct / 100 * n_heads + 0.5 + 1e-9))


def _get(obj, name):
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def standard_rankings(roles=None, duo=None, razor=None) -> dict[str, list[list[float]]]:
    """Every ranking the available results give (higher = keep full):
    `roles` (heads.HeadRoles or its dict): "retrieval" (Wu et al.), "streaming_reversed"
    (1 − streaming mass), "tl_induction" (TransformerLens induction detector), "causal_delta_loss"
    (copy-loss increase under sink + window); `duo` (DuoResult or dict): "duo_alpha";
    `razor` (RazorResult or dict): "razor" (protected heads first, then by induction score)."""
    out: dict[str, list[list[float]]] = {}
    if roles is not None:
        out["retrieval"] = _get(roles, "retrieval")
        out["streaming_reversed"] = [[1.0 - s for s in row] for row in _get(roles, "streaming")]
        out["tl_induction"] = _get(roles, "tl_scores")["induction"]
        out["causal_delta_loss"] = _get(roles, "delta_loss")
    if duo is not None:
        out["duo_alpha"] = _get(duo, "alphas")
    if razor is not None:
        r = razor if not isinstance(razor, dict) else _razor_from_dict(razor)
        out["razor"] = r.ranking()
    return out


def _razor_from_dict(d: dict):
    from .razor import RazorResult

    return RazorResult.from_dict(d)


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


def tradeoff_curve(
    model: HookedTransformer,
    rankings: dict[str, list[list[float]]],
    cfg: TradeoffConfig = TradeoffConfig(),
    *,
    bos: int | None = None,
    haystack: Tensor | None = None,
    text: Tensor | None = None,
    tokenizer=None,
    progress: bool = True,
) -> TradeoffResult:
    """The trade-off curve of every ranking plus the random band (module docstring).

    `haystack` (passkey filler) and `text` (loss windows) are held-out token streams; both None:
    the default corpus' validation split, its byte tokenizer and BOS. `text` None with a haystack
    given: the haystack. Without a `tokenizer` the passkeys are random tokens."""
    check_supported(model, cfg.compensation)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for name, scores in rankings.items():
        if tuple(torch.as_tensor(scores).shape) != (L, H):
            raise ValueError(
                f"rankings[{name!r}]: expected [n_layers={L}][n_heads={H}], "
                f"got shape {tuple(torch.as_tensor(scores).shape)}"
            )
    if cfg.n_random < 2:
        raise ValueError(f"n_random must be >= 2 for a band, got {cfg.n_random}")
    if cfg.seq_len > model.cfg.n_ctx:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's n_ctx={model.cfg.n_ctx}")
    n_full = [n_full_heads(p, L * H) for p in cfg.fractions]
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

    needle = make_contexts(
        model,
        HeadRoleConfig(
            n_contexts=cfg.n_needle,
            seq_len=cfg.seq_len,
            needle_len=cfg.needle_len,
            token_range=cfg.token_range,
            seed=cfg.seed,
        ),
        bos,
    )
    q, _ = copy_steps(needle)
    needle_tokens, needle_targets = needle.tokens.to(device), needle.tokens[:, q + 1].to(device)
    pk_cfg = PasskeyConfig(**{**asdict(cfg.passkey), "seq_len": cfg.seq_len})
    pk = passkey_batch(
        cfg.n_passkey, pk_cfg, haystack, bos=bos, tokenizer=tokenizer, vocab=model.cfg.d_vocab, seed=cfg.seed
    )
    pk_tokens = pk.tokens.to(device)
    windows = _text_windows(text, cfg.seq_len, cfg.n_text, bos).to(device)

    cache: dict[tuple, dict[str, float]] = {}

    @torch.no_grad()
    def measure(keep: Tensor) -> dict[str, float]:
        key = tuple(keep.flatten().tolist())
        if key not in cache:
            with model.hooks(
                fwd_hooks=keep_full_hooks(
                    model, keep, cfg.sink, cfg.window, compensation=cfg.compensation, comp_weight=cfg.comp_weight
                )
            ):
                logits = model(needle_tokens)
                needle_acc = float((logits[:, q].argmax(-1) == needle_targets).double().mean())
                pk_acc, pk_tok = passkey_accuracy(model(pk_tokens), pk)
                loss = sum(float(model(c, return_type="loss")) * len(c) for c in windows.split(16)) / len(windows)
            cache[key] = {
                "needle_acc": needle_acc,
                "passkey_acc": pk_acc,
                "passkey_token_acc": pk_tok,
                "text_loss": loss,
            }
        return cache[key]

    def curve(scores) -> dict[str, list[float]]:
        keeps = [keep_top(torch.as_tensor(scores), n) for n in n_full]
        points = [measure(k) for k in keeps]
        out = {m: [p[m] for p in points] for m in METRICS}
        # per ranking: with grouped-query attention the cache depends on which heads are full
        out["kv_fraction"] = [
            kv_fraction(
                k, cfg.seq_len, cfg.sink, cfg.window, compensation=cfg.compensation, n_kv_heads=n_kv_heads(model)
            )
            for k in keeps
        ]
        return out

    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 10_007)
    random_rankings = [torch.rand(L, H, generator=gen, dtype=torch.float64) for _ in range(cfg.n_random)]
    jobs = [(name, s) for name, s in rankings.items()] + [(f"random/{i}", s) for i, s in enumerate(random_rankings)]
    curves, random_curves = {}, []
    for name, scores in tqdm(jobs, desc="kv trade-off", disable=not progress):
        c = curve(scores)
        if name.startswith("random/"):
            random_curves.append(c)
        else:
            curves[name] = c
    band = {}
    for m in METRICS:
        vals = torch.tensor([c[m] for c in random_curves], dtype=torch.float64)  # [seeds, fractions]
        band[m] = {
            "mean": vals.mean(0).tolist(),
            "min": vals.min(0).values.tolist(),
            "max": vals.max(0).values.tolist(),
        }
    kv = [
        kv_fraction(
            keep_top(torch.zeros(L, H), n),
            cfg.seq_len,
            cfg.sink,
            cfg.window,
            compensation=cfg.compensation,
            n_kv_heads=n_kv_heads(model),
        )
        for n in n_full
    ]
    return TradeoffResult(
        fractions=[float(p) for p in cfg.fractions],
        n_full=n_full,
        kv_fraction=kv,
        curves=curves,
        random_curves=random_curves,
        random_band=band,
        rankings={k: torch.as_tensor(v, dtype=torch.float64).tolist() for k, v in rankings.items()},
        seq_len=cfg.seq_len,
        config=jsonable(cfg),
    )
