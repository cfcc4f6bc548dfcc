"""RazorAttention's training-free head rule (Tang et al. 2024, "RazorAttention: Efficient KV Cache
Compression Through Retrieval Heads", section 3).

Contexts: [BOS] s s … s, a segment s of `segment` distinct random tokens repeated `repeats`
times. Let r = position − (1 if BOS else 0) be the position inside the repeats. For every query r
in the second or a later repeat (r ≥ segment):
- **echo score**: the attention mass on the earlier occurrences of the query's own token,
  the keys r' < r with r' ≡ r (mod segment) — the head looks at "the same token before";
- **induction score**: the mass on the tokens that followed those occurrences, the keys
  r' < r with r' ≡ r + 1 (mod segment) — the head looks at "what came after it last time"
  (the paper's figure 3b: current token B, the induction head attends to the C after an earlier B);
each averaged over those queries and the contexts. Distinct tokens in the segment make both sets
exactly the positions named (with repeats inside s, a chance match would count too).
Protection rule: the union of the top ⌈induction_frac · n_heads_total⌉ heads by induction score
and the top ⌈echo_frac · n_heads_total⌉ by echo score (the paper: 14% and 1%) keeps full
attention; every other head keeps sink + window + the compensation token
(`attention_restrict`, `compensation=True`). Under grouped-query attention the rule ranks KV heads
(the cache's unit), each by its best query head's score (`gqa.kv_scores`), and n_heads_total counts
KV heads; a protected KV head keeps all its query heads full. On an MHA model both are the heads.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from ..runs import jsonable
from ..tasks import random_token_range
from .attention_restrict import keep_top
from .gqa import expand_kv, kv_heads, kv_scores
from .heads import attention_patterns
from .kv_data import RazorConfig, RazorResult


def repeated_random_segments(
    n: int, segment: int, repeats: int, token_range: tuple[int, int], *, bos: int | None, seed: int = 0
) -> Int[Tensor, "n T"]:
    """`n` rows of [BOS] s·repeats, each s `segment` distinct tokens from [lo, hi)."""
    lo, hi = token_range
    if hi - lo < segment:
        raise ValueError(f"token_range {token_range} has fewer than segment={segment} distinct tokens")
    gen = torch.Generator().manual_seed(seed)
    segs = torch.stack([torch.randperm(hi - lo, generator=gen)[:segment] + lo for _ in range(n)])
    tokens = segs.repeat(1, repeats)
    if bos is not None:
        tokens = torch.cat([torch.full((n, 1), bos), tokens], dim=1)
    return tokens


def echo_induction_masks(segment: int, repeats: int, prefix: int) -> tuple[Bool[Tensor, "T T"], Bool[Tensor, "T T"]]:
    """[query, key] masks of the echo and induction keys (module docstring), over T = prefix + segment·repeats."""
    n = segment * repeats
    r = torch.arange(n)
    q, k = r[:, None], r[None, :]
    later = (q >= segment) & (k < q)
    echo = later & ((q - k) % segment == 0)
    induction = later & (k >= 1) & ((q + 1 - k) % segment == 0)  # k-1 holds the query's token (not BOS)
    T = prefix + n
    full_e = torch.zeros(T, T, dtype=torch.bool)
    full_i = torch.zeros(T, T, dtype=torch.bool)
    full_e[prefix:, prefix:], full_i[prefix:, prefix:] = echo, induction
    return full_e, full_i


def protected_heads(
    echo: Float[Tensor, "L H"],
    induction: Float[Tensor, "L H"],
    induction_frac: float = 0.14,
    echo_frac: float = 0.01,
    min_score: float = 0.0,
) -> Bool[Tensor, "L H"]:
    """Union of the top ⌈induction_frac·n⌉ heads by induction and the top ⌈echo_frac·n⌉ by echo
    (n = all heads; ties broken by the lower flat index), each only where its score is at least
    `min_score`: a head whose attention is no sharper than that is not protected to fill the count
    (all False: nothing to protect)."""
    for name, f in (("induction_frac", induction_frac), ("echo_frac", echo_frac)):
        if not 0 <= f <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {f}")
    if min_score < 0:
        raise ValueError(f"min_score must be >= 0, got {min_score}")
    if echo.shape != induction.shape:
        raise ValueError(f"echo {tuple(echo.shape)} and induction {tuple(induction.shape)} differ in shape")
    n = echo.numel()
    keep = torch.zeros(echo.shape, dtype=torch.bool)
    for scores, frac in ((induction, induction_frac), (echo, echo_frac)):
        k = rule_count(frac, n)
        keep |= keep_top(scores, k) & (torch.as_tensor(scores, dtype=torch.float64) >= min_score)
    return keep


def rule_count(frac: float, n: int) -> int:
    """⌈frac · n⌉ heads (0.14 · 50 = 7.000000000000001 is 7 heads, not 8)."""
    return math.ceil(frac * n - 1e-9)


def uniform_scores(segment: int, repeats: int, prefix: int) -> tuple[float, float]:
    """The echo and induction scores of a head attending uniformly to every key up to its query:
    the level below which a score says nothing about echo or induction attention."""
    echo_m, ind_m = echo_induction_masks(segment, repeats, prefix)
    queries = echo_m.any(-1)
    row = torch.arange(1, len(echo_m) + 1, dtype=torch.float64)  # keys up to and including the query
    return tuple(float((m.sum(-1) / row)[queries].mean()) for m in (echo_m, ind_m))


def razor_scores(model: HookedTransformer, cfg: RazorConfig = RazorConfig(), *, bos: int | None = None) -> RazorResult:
    """Echo and induction scores of every head and the protection rule's heads. `bos` None on the
    byte-level default (d_vocab 257) is its BOS, 256, as the other head methods assume."""
    if bos is None and model.cfg.d_vocab == 257:
        bos = 256
    prefix = 1 if bos is not None else 0
    T = prefix + cfg.segment * cfg.repeats
    if cfg.repeats < 2 or cfg.segment < 2 or cfg.n_contexts < 1:
        raise ValueError(
            f"need repeats >= 2, segment >= 2, n_contexts >= 1; got {cfg.repeats}, {cfg.segment}, {cfg.n_contexts}"
        )
    if T > model.cfg.n_ctx:
        raise ValueError(f"segment·repeats (+BOS) = {T} tokens exceeds the model's n_ctx={model.cfg.n_ctx}")
    token_range = random_token_range(model.cfg.d_vocab, bos, cfg.token_range)
    tokens = repeated_random_segments(cfg.n_contexts, cfg.segment, cfg.repeats, token_range, bos=bos, seed=cfg.seed)
    model.eval()
    _, pat = attention_patterns(model, tokens.to(next(model.parameters()).device))  # [L, b, H, q, k]
    pat = pat.double().cpu()
    echo_m, ind_m = echo_induction_masks(cfg.segment, cfg.repeats, prefix)
    queries = echo_m.any(-1)  # the queries of the second and later repeats
    echo = (pat * echo_m).sum(-1)[..., queries].mean((1, 3))  # [L, H]
    induction = (pat * ind_m).sum(-1)[..., queries].mean((1, 3))
    G = kv_heads(model)
    # the rule decides per KV head (the cache's unit), by its group's best query head
    keep_kv = protected_heads(
        kv_scores(echo, G), kv_scores(induction, G), cfg.induction_frac, cfg.echo_frac, cfg.min_score
    )
    n = keep_kv.numel()
    return RazorResult(
        echo=echo.tolist(),
        induction=induction.tolist(),
        protected=expand_kv(keep_kv, model.cfg.n_heads).tolist(),
        n_induction_protected=rule_count(cfg.induction_frac, n),
        n_echo_protected=rule_count(cfg.echo_frac, n),
        protected_kv=keep_kv.tolist(),
        n_query_heads=echo.numel(),
        n_kv_heads=n,
        protected_share=float(keep_kv.double().mean()),
        config=jsonable(cfg),
        nothing_to_protect=not bool(keep_kv.any()),
        uniform_echo_induction=list(uniform_scores(cfg.segment, cfg.repeats, prefix)),
    )
