"""Streaming attention for chosen heads: sink + recent window, an optional RazorAttention
compensation token, and DuoAttention's per-head mix of full and streaming attention.

Everything happens on `attn.hook_attn_scores` (read) and `attn.hook_pattern` (replaced), so it
works on any HookedTransformer whose pattern is a plain softmax of its scores:

- **Streaming** (StreamingLLM): a query at position t keeps the keys j < `sink` and
  t - `window` < j ≤ t, with the softmax renormalised over those keys alone.
- **Compensation token** (RazorAttention, Tang et al. 2024, eqs. 4-5): the m_t dropped keys and
  values of query t are replaced by their means k̂ = mean k_j, v̂ = mean v_j, and the head attends
  to kept ∪ {k̂}: out = (Σ_kept e^{s_j} v_j + w e^{ŝ} v̂) / (Σ_kept e^{s_j} + w e^{ŝ}), with
  ŝ = q·k̂ / attn_scale and w = m_t (`comp_weight="count"`, the paper's equation: the token
  stands for m_t keys) or w = 1 (`"one"`: a single extra key in the softmax). Since q·k̂ is linear
  in k, ŝ is the mean of the dropped scores; and since v̂ is linear in v, the token's weight can be
  spread evenly over the dropped positions — the output is still `pattern @ v`, no extra key needed.
- **Gate** (DuoAttention, Xiao et al. 2024): pattern = α·full + (1 - α)·streaming per head. z is
  linear in the pattern, so this mixes the head's outputs, and it is differentiable in α.

Not supported (clear error): learned attention sinks (GPT-OSS: rows do not sum to 1); with the
compensation token also ALiBi, relative position bias and score soft-capping, where a score is not
q·k / scale and the mean score is not q·k̂.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

CompWeight = Literal["count", "one"]
Hook = tuple[str, Callable]


def check_supported(model: HookedTransformer, compensation: bool = False) -> None:
    """Raise a ValueError naming the config field when the restriction would be wrong for `model`."""
    cfg = model.cfg
    if getattr(cfg, "use_attention_sinks", False):
        raise ValueError(
            "model.cfg.use_attention_sinks=True: pattern rows do not sum to 1, so a "
            "renormalised sink+window pattern is not defined; not supported"
        )
    if cfg.attention_dir != "causal":
        raise ValueError(f"model.cfg.attention_dir={cfg.attention_dir!r}: streaming attention needs a causal model")
    if compensation:
        if cfg.positional_embedding_type in ("alibi", "relative_positional_bias"):
            raise ValueError(
                f"compensation=True needs scores = q·k/scale; model.cfg.positional_embedding_type="
                f"{cfg.positional_embedding_type!r} adds a bias, so the mean score is not q·k̂"
            )
        if getattr(cfg, "attn_scores_soft_cap", -1.0) not in (None, -1.0, 0.0):
            raise ValueError(
                "compensation=True is not defined under attention score soft-capping "
                f"(model.cfg.attn_scores_soft_cap={cfg.attn_scores_soft_cap})"
            )


def sink_window_region(T: int, sink: int, window: int, device=None) -> Bool[Tensor, "q k"]:
    """Keys a streaming head attends to: the first `sink` and the last `window` (query included)."""
    qpos = torch.arange(T, device=device)[:, None]
    kpos = torch.arange(T, device=device)[None, :]
    return (kpos < sink) | ((kpos > qpos - window) & (kpos <= qpos))


def _check_window(sink: int, window: int) -> None:
    if sink < 0:
        raise ValueError(f"sink must be >= 0, got {sink}")
    if window < 1:
        raise ValueError(f"window must be >= 1 (the query's own position), got {window}")


def streaming_pattern(
    scores: Float[Tensor, "b h q k"],
    sink: int,
    window: int,
    *,
    compensation: bool = False,
    comp_weight: CompWeight = "count",
) -> Float[Tensor, "b h q k"]:
    """The attention pattern of a head restricted to sink + window, from its pre-softmax scores
    (causally masked with -inf, as at `hook_attn_scores`). With `compensation`, the
    RazorAttention token's weight is spread evenly over the dropped positions (module docstring)."""
    _check_window(sink, window)
    if comp_weight not in ("count", "one"):
        raise ValueError(f"comp_weight must be 'count' or 'one', got {comp_weight!r}")
    q_len, k_len = scores.shape[-2:]
    if q_len != k_len:
        raise ValueError(f"scores: expected square [.., q, k] (no KV cache offset), got q={q_len}, k={k_len}")
    kept = sink_window_region(k_len, sink, window, scores.device)
    kept_scores = scores.masked_fill(~kept, float("-inf"))
    if not compensation:
        return torch.softmax(kept_scores, dim=-1)
    causal = torch.ones(k_len, k_len, dtype=torch.bool, device=scores.device).tril()
    dropped = causal & ~kept  # [q, k]
    m = dropped.sum(-1).to(scores.dtype)  # dropped keys per query
    mean_score = scores.masked_fill(~dropped, 0.0).sum(-1) / m.clamp_min(1)  # ŝ = q·k̂ / scale
    log_w = m.clamp_min(1).log() if comp_weight == "count" else torch.zeros_like(m)
    comp_logit = torch.where(m > 0, mean_score + log_w, torch.full_like(mean_score, float("-inf")))
    lse = torch.logaddexp(torch.logsumexp(kept_scores, dim=-1), comp_logit)[..., None]  # no [.., k + 1] copy
    kept_p = torch.exp(kept_scores - lse)
    comp_p = torch.exp(comp_logit[..., None] - lse) / m.clamp_min(1)[:, None]  # per dropped key
    return kept_p + comp_p * dropped.to(scores.dtype)


def gate_hooks(
    model: HookedTransformer,
    alpha: Float[Tensor, "L H"],
    sink: int,
    window: int,
    *,
    compensation: bool = False,
    comp_weight: CompWeight = "count",
) -> list[Hook]:
    """Hooks making head (l, h) attend with α[l, h]·full + (1 - α[l, h])·streaming.

    α = 1 leaves a head untouched; layers whose α is all ones and does not require grad get no
    hooks. Use as `with model.hooks(fwd_hooks=gate_hooks(...)): ...`."""
    check_supported(model, compensation)
    _check_window(sink, window)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if tuple(alpha.shape) != (L, H):
        raise ValueError(f"alpha: expected shape [n_layers={L}, n_heads={H}], got {tuple(alpha.shape)}")
    hooks: list[Hook] = []
    for layer in range(L):
        a = alpha[layer]
        if not a.requires_grad and bool((a == 1).all()):
            continue
        store: dict[str, Tensor] = {}

        def save_scores(scores, hook, store=store):
            store["scores"] = scores

        def mix(pattern, hook, store=store, a=a):
            scores = store.pop("scores")
            stream = streaming_pattern(scores, sink, window, compensation=compensation, comp_weight=comp_weight)
            w = a.to(device=pattern.device, dtype=pattern.dtype)[None, :, None, None]
            return w * pattern + (1 - w) * stream.to(pattern.dtype)

        hooks += [(f"blocks.{layer}.attn.hook_attn_scores", save_scores), (f"blocks.{layer}.attn.hook_pattern", mix)]
    return hooks


def keep_full_hooks(
    model: HookedTransformer,
    keep: Bool[Tensor, "L H"],
    sink: int,
    window: int,
    *,
    compensation: bool = False,
    comp_weight: CompWeight = "count",
) -> list[Hook]:
    """Heads in `keep` attend fully, every other head on sink + window (+ compensation token): the
    patterns of `gate_hooks` at α = keep, bit for bit, with the restriction computed for the
    streaming heads alone (a trade-off evaluation keeps 25-50% of the heads full; no mixing pass)."""
    check_supported(model, compensation)
    _check_window(sink, window)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    keep = torch.as_tensor(keep)
    if keep.dtype != torch.bool:  # a cast would turn a gate of 0.3 into "full" without a word
        raise TypeError(f"keep: expected a bool [L, H] mask (for fractional gates use gate_hooks), got {keep.dtype}")
    if tuple(keep.shape) != (L, H):
        raise ValueError(f"keep: expected shape [n_layers={L}, n_heads={H}], got {tuple(keep.shape)}")
    hooks: list[Hook] = []
    for layer in range(L):
        stream = (~keep[layer]).nonzero().flatten()
        if not len(stream):
            continue
        store: dict[str, Tensor] = {}

        def save_scores(scores, hook, store=store, idx=stream):
            store["scores"] = scores[:, idx.to(scores.device)]

        def restrict(pattern, hook, store=store, idx=stream):
            scores = store.pop("scores")
            sub = streaming_pattern(scores, sink, window, compensation=compensation, comp_weight=comp_weight)
            return pattern.index_copy(1, idx.to(pattern.device), sub.to(pattern.dtype))

        name = f"blocks.{layer}.attn"
        hooks += [(f"{name}.hook_attn_scores", save_scores), (f"{name}.hook_pattern", restrict)]
    return hooks


def one_head_streaming_hooks(
    model: HookedTransformer,
    layer: int,
    head: int,
    sink: int,
    window: int,
    *,
    compensation: bool = False,
    comp_weight: CompWeight = "count",
) -> list[Hook]:
    """Head (layer, head) on sink + window, every other head full: the causal check's restriction,
    the same one the trade-off applies (`keep_full_hooks`), so both agree where probabilities
    underflow (the streaming softmax is taken over the kept scores, never by renormalising an
    already-underflowed pattern)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if not (0 <= layer < L and 0 <= head < H):
        raise ValueError(f"layer, head: expected 0 <= layer < {L} and 0 <= head < {H}, got ({layer}, {head})")
    keep = torch.ones(L, H, dtype=torch.bool)
    keep[layer, head] = False
    return keep_full_hooks(model, keep, sink, window, compensation=compensation, comp_weight=comp_weight)


def keep_top(scores: Float[Tensor, "L H"], n_full: int) -> Bool[Tensor, "L H"]:
    """The `n_full` highest-scoring heads (ties: the lower flat index l·H + h first)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if not 0 <= n_full <= scores.numel():
        raise ValueError(f"n_full must lie in [0, {scores.numel()}], got {n_full}")
    flat = scores.flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[order[:n_full]] = True
    return keep.view(scores.shape)


def kv_fraction(
    keep: Bool[Tensor, "L H"],
    T: int,
    sink: int,
    window: int,
    *,
    compensation: bool = False,
    n_kv_heads: int | None = None,
) -> float:
    """KV-cache size implied by `keep` at context length T, as a fraction of all heads full.

    A full head keeps T keys, a streaming head min(T, sink + window), plus 1 for the compensation
    token when it stands for at least one dropped key (T > sink + window). With grouped-query
    attention (`n_kv_heads` < n_heads) the cache is per KV head: a group's cache is full as soon as
    one of its query heads is full."""
    _check_window(sink, window)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    keep = torch.as_tensor(keep, dtype=torch.bool)
    L, H = keep.shape
    if n_kv_heads is not None and n_kv_heads != H:
        if n_kv_heads < 1 or H % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={H}")
        keep = keep.view(L, n_kv_heads, H // n_kv_heads).any(-1)
    n_full = int(keep.sum())
    n_stream = keep.numel() - n_full
    short = min(T, sink + window) + (1 if compensation and T > sink + window else 0)
    return (n_full * T + n_stream * short) / (keep.numel() * T)


def n_kv_heads(model: HookedTransformer) -> int | None:
    """The model's KV heads when it uses grouped-query attention, else None."""
    n = getattr(model.cfg, "n_key_value_heads", None)
    return None if n is None or n == model.cfg.n_heads else int(n)


def attn_scale(model: HookedTransformer, layer: int) -> float:
    """What layer `layer` divides q·k by (for float64 reference computations in tests)."""
    return float(model.blocks[layer].attn.attn_scale)


__all__ = [
    "attn_scale",
    "check_supported",
    "gate_hooks",
    "keep_full_hooks",
    "kv_fraction",
    "keep_top",
    "n_kv_heads",
    "one_head_streaming_hooks",
    "sink_window_region",
    "streaming_pattern",
]
