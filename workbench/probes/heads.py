"""Attention-head roles: retrieval heads vs streaming heads, with a causal check.

- Retrieval score (Wu et al. 2024): in contexts where a needle (a token sequence) appears in a
  random haystack and again at the end, at each copy step where the model predicts the next
  needle token correctly, a head retrieves if its highest-attention key is that token's position
  inside the first needle. Score = retrieved steps / correctly copied steps, with its Wilson 95%
  interval (hits of n copied steps).
- Streaming score (StreamingLLM): attention mass on the sink (first tokens) ∪ the recent window,
  with a Student t 95% interval over contexts (each context's mean over its queries).
- Classification, on lower bounds (a score that only clears a threshold by noise is not a role):
  "retrieval" if at least `min_copied_steps` steps were copied and the retrieval interval's
  lower bound ≥ its threshold; else "streaming" if the streaming interval's lower bound ≥ its
  threshold; else "other" when the retrieval interval's upper bound is under its threshold too
  (retrieval ruled out), "undetermined" when it is not, or "too few copied steps" when fewer than
  `min_copied_steps` were copied. Thresholds travel with the result.
- Causal check: replace one head's attention by sink+window attention (renormalised) and measure
  the loss on the copy positions; streaming heads barely change it, retrieval heads hurt it.
- Cross-check: TransformerLens' head-detector patterns (previous-token, duplicate-token,
  induction) scored on repeated random segments.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.head_detector import (
    compute_head_attention_similarity_score,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

from ..tasks import NeedleBatch, needle_batch, random_token_range, repeated_segments
from .attention_restrict import one_head_streaming_hooks, sink_window_region
from .heads_data import HeadRoleConfig, HeadRoles
from .intervals import t_interval, wilson_interval

RETRIEVAL, STREAMING, OTHER, TOO_FEW = "retrieval", "streaming", "other", "too few copied steps"
UNDETERMINED = "undetermined"  # enough copied steps, but the retrieval interval straddles the threshold


def _token_range(model: HookedTransformer, cfg: HeadRoleConfig, bos: int | None) -> tuple[int, int]:
    return random_token_range(model.cfg.d_vocab, bos, cfg.token_range)


def make_contexts(model: HookedTransformer, cfg: HeadRoleConfig, bos: int | None) -> NeedleBatch:
    if cfg.seq_len > model.cfg.n_ctx:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's context n_ctx={model.cfg.n_ctx}")
    lo, hi = _token_range(model, cfg, bos)
    batch = needle_batch(cfg.n_contexts, cfg.seq_len, cfg.needle_len, hi - lo, bos=None, seed=cfg.seed)
    tokens = batch.tokens + lo
    if bos is not None:
        tokens[:, 0] = bos
    if batch.needle_start < (1 if bos is not None else 0):
        raise ValueError("the needle overlaps BOS: increase seq_len")
    return batch._replace(tokens=tokens)


def attention_patterns(model: HookedTransformer, tokens: Tensor) -> tuple[Tensor, Float[Tensor, "L b H q k"]]:
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return logits, torch.stack([cache[n] for n in names])


def copy_steps(batch: NeedleBatch) -> tuple[Tensor, Tensor]:
    """Query positions q at which the next token is needle[i] (i ≥ 1: predictable by copying),
    and the position of needle[i] in the first occurrence (the key a retrieval head should pick)."""
    i = torch.arange(1, batch.needle_len)
    return batch.copy_start + i - 1, batch.needle_start + i


def retrieval_counts(model: HookedTransformer, batch: NeedleBatch) -> tuple[Int[Tensor, "L H"], int, int]:
    """Per-head retrieval hits, the number of correctly copied steps n (the hits' denominator)
    and the number of copy steps offered."""
    logits, pat = attention_patterns(model, batch.tokens)
    q, src = copy_steps(batch)
    targets = batch.tokens[:, q + 1]  # [b, steps]
    copied = logits[:, q].argmax(-1) == targets  # [b, steps]
    top_key = pat[:, :, :, q].argmax(-1)  # [L, b, H, steps]
    hit = (top_key == src) & copied[None, :, None, :]
    return hit.sum((1, 3)), int(copied.sum()), copied.numel()


def streaming_per_context(model: HookedTransformer, tokens: Tensor, sink: int, window: int) -> Float[Tensor, "b L H"]:
    """Each context's mean attention mass on the first `sink` keys ∪ the last `window` keys,
    over its queries past both."""
    T = tokens.shape[1]
    if T <= sink + window:
        raise ValueError(f"contexts of {T} tokens are too short for sink={sink} + window={window}")
    _, pat = attention_patterns(model, tokens)
    mass = (pat * sink_window_region(T, sink, window, pat.device)).sum(-1)  # [L, b, H, q]
    return mass[..., sink + window :].mean(-1).permute(1, 0, 2)


def sink_window_hook(head: int, sink: int, window: int):
    """Hook on attn.hook_pattern: head `head` attends only to sink ∪ window (the pattern
    renormalised). Kept for old callers; the causal check and the trade-off use
    `attention_restrict`'s restriction (a softmax over the kept scores), which stays a distribution
    where this one's kept probabilities underflow to 0."""

    def hook(pattern, hook):
        region = sink_window_region(pattern.shape[-1], sink, window, pattern.device).to(pattern.dtype)
        new = pattern.clone()
        p = pattern[:, head] * region
        new[:, head] = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
        return new

    return hook


@torch.no_grad()
def causal_check(model: HookedTransformer, batch: NeedleBatch, sink: int, window: int) -> dict:
    """Loss on the copy steps with each head restricted to sink+window, minus the clean loss.
    The restriction is `attention_restrict.one_head_streaming_hooks`, the trade-off's own."""
    q, _ = copy_steps(batch)
    targets = batch.tokens[:, q + 1]

    def copy_loss(hooks):
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        return float(torch.nn.functional.cross_entropy(logits[:, q].flatten(0, 1), targets.flatten()))

    clean = copy_loss([])
    delta = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            delta[l, h] = copy_loss(one_head_streaming_hooks(model, l, h, sink, window)) - clean
    return {"clean_copy_loss": clean, "delta_loss": delta}


def tl_detector_scores(model: HookedTransformer, tokens: Int[Tensor, "b s"]) -> dict[str, Float[Tensor, "L H"]]:
    """TransformerLens' previous-token, duplicate-token and induction head-detector scores."""
    _, pat = attention_patterns(model, tokens)
    out = {}
    builders = {
        "previous_token": get_previous_token_head_detection_pattern,
        "duplicate_token": get_duplicate_token_head_detection_pattern,
        "induction": get_induction_head_detection_pattern,
    }
    L, b, H = pat.shape[:3]
    for name, build in builders.items():
        scores = torch.zeros(L, H)
        for i in range(b):
            det = build(tokens[i : i + 1].cpu()).to(pat.dtype)
            for l in range(L):
                for h in range(H):
                    scores[l, h] += compute_head_attention_similarity_score(
                        pat[l, i, h], det, exclude_bos=True, exclude_current_token=False, error_measure="mul"
                    )
        out[name] = scores / b
    return out


def classify(
    retrieval_lo: Tensor, streaming_lo: Tensor, n_copied: int, cfg: HeadRoleConfig, retrieval_hi: Tensor | None = None
) -> list[list[str]]:
    """Roles from the intervals' bounds (see the module docstring for the rule); without
    `retrieval_hi` a head that is neither retrieval nor streaming is "undetermined"."""
    enough = n_copied >= cfg.min_copied_steps
    hi = retrieval_hi.tolist() if retrieval_hi is not None else [[1.0] * len(r) for r in retrieval_lo.tolist()]
    labels = []
    for r_row, s_row, h_row in zip(retrieval_lo.tolist(), streaming_lo.tolist(), hi):
        labels.append(
            [
                RETRIEVAL
                if enough and r >= cfg.retrieval_threshold
                else STREAMING
                if s >= cfg.streaming_threshold
                else TOO_FEW
                if not enough
                else OTHER
                if h < cfg.retrieval_threshold
                else UNDETERMINED
                for r, s, h in zip(r_row, s_row, h_row)
            ]
        )
    return labels


def head_roles(model: HookedTransformer, cfg: HeadRoleConfig = HeadRoleConfig(), bos: int | None = None) -> HeadRoles:
    """Every head's retrieval and streaming score, its role, the causal check and TL's detectors."""
    if cfg.n_contexts < 2:
        raise ValueError(f"n_contexts must be >= 2 (the streaming interval is over contexts), got {cfg.n_contexts}")
    if cfg.min_copied_steps < 1:
        raise ValueError(f"min_copied_steps must be >= 1, got {cfg.min_copied_steps}")
    model.eval()
    batch = make_contexts(model, cfg, bos)
    hits, n_copied, offered = retrieval_counts(model, batch)
    r_lo, r_hi = wilson_interval(hits, n_copied)
    per_context = streaming_per_context(model, batch.tokens, cfg.sink, cfg.window)
    streaming, s_lo, s_hi = (x.clamp(0, 1) for x in t_interval(per_context))
    causal = causal_check(model, batch, cfg.sink, cfg.window)
    lo, hi = _token_range(model, cfg, bos)
    seg = max(4, (cfg.seq_len - 1) // 3)
    rep = repeated_segments(min(8, cfg.n_contexts), seg, 3, hi - lo, bos=None, seed=cfg.seed + 1) + lo
    if bos is not None:
        rep = torch.cat([torch.full((len(rep), 1), bos), rep], dim=1)
    tl = tl_detector_scores(model, rep[:, : model.cfg.n_ctx])
    return HeadRoles(
        retrieval=(hits.double() / max(n_copied, 1)).tolist(),
        streaming=streaming.tolist(),
        labels=classify(r_lo, s_lo, n_copied, cfg, r_hi),
        delta_loss=causal["delta_loss"].tolist(),
        clean_copy_loss=causal["clean_copy_loss"],
        copy_accuracy=n_copied / offered,
        tl_scores={k: v.tolist() for k, v in tl.items()},
        config=asdict(cfg),
        retrieval_hits=hits.tolist(),
        retrieval_ci=torch.stack([r_lo, r_hi], -1).tolist(),
        streaming_ci=torch.stack([s_lo, s_hi], -1).tolist(),
        n_copied=n_copied,
        n_copy_steps=offered,
        too_few_copied=n_copied < cfg.min_copied_steps,
    )
