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

import re
from dataclasses import asdict
from typing import NamedTuple

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
from .attention_restrict import sink_window_region
from .head_screen import exact_deltas, screen_check
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


class TextNeedles(NamedTuple):
    """Natural-text needle contexts: each row one string (`texts`) tokenized once, a span of it
    repeated at the end; the copy steps differ by row."""

    tokens: Int[Tensor, "b T"]
    query: Int[Tensor, "b s"]  # positions whose next token is a copied needle token (needle token i ≥ 1)
    source: Int[Tensor, "b s"]  # that token's position in the first occurrence
    texts: list[str]  # each row's string (BOS not included), cut where its T tokens end
    needle_len: int


Contexts = NeedleBatch | TextNeedles


def _char_ends(tokenizer, ids: list[int]) -> list[int]:
    """Where each token ends in decode(ids), from the decoded prefixes (works for any tokenizer
    that decodes a prefix to a prefix of the string: byte-level BPE, the byte tokenizer)."""
    return [len(tokenizer.decode(ids[: i + 1])) for i in range(len(ids))]


def _text_row(tokenizer, text: str, bounds: list[int], cfg: HeadRoleConfig, prefix: int, cpt: float, gen):
    """One context (row, needle position, copy position, its string), or None when this draw's
    needle does not start a token at both places or does not tokenize alike there."""
    T, n, body = cfg.seq_len, cfg.needle_len, cfg.seq_len - prefix

    def pick(lo: int, hi: int) -> int:
        return bounds[int(torch.randint(lo, max(lo + 1, hi), (1,), generator=gen))]

    a = pick(0, len(bounds) - 1)
    needle = text[a : next((b for b in bounds if b >= a + int(3 * n * cpt)), len(text))]
    hay_chars = int(body * cpt * 1.5) + len(needle)
    h = pick(0, len(bounds) - 1)
    hay = text[h : h + hay_chars]
    if needle in hay or len(hay) < hay_chars:
        return None
    spaces = [m.start() for m in re.finditer(r" (?=\S)", hay)]
    n1 = (T - n - prefix - n) // 3  # the needle's token position in the string, as in needle_batch
    c1 = min(spaces, key=lambda c: abs(c / cpt - n1), default=0)
    c2 = int((T - n - prefix) * cpt) - len(needle)  # first guess of where in hay the copy goes
    for _ in range(8):  # move the copy until its first token lands in the last positions
        c2 = min((c for c in spaces if c > c1), key=lambda c: abs(c - c2), default=None)
        if c2 is None:
            return None
        s = hay[:c1] + needle + hay[c1:c2] + needle + hay[c2:]
        ids = tokenizer.encode(s)[:body]  # the whole candidate string, tokenized as one
        ends = _char_ends(tokenizer, ids)
        starts = [0] + ends[:-1]
        o2 = c2 + len(needle)
        if c1 not in starts or len(ids) < body or (o2 not in starts and o2 < ends[-1]):
            return None  # a token across the needle's edge (or too little text)
        i1 = starts.index(c1) + prefix
        i2 = starts.index(o2) + prefix if o2 in starts else T + int((o2 - ends[-1]) / cpt)
        miss = (T - n) - i2
        if 0 <= miss <= max(2, n // 2):
            row = ([tokenizer.bos_token_id] if prefix else []) + ids
            if row[i1 : i1 + n] != row[i2 : i2 + n] or ends[i1 - prefix + n - 1] > c1 + len(needle):
                return None
            return row, i1, i2, s[: ends[-1]]
        c2 += int(miss * cpt)
    return None


def text_contexts(tokenizer, text: str, cfg: HeadRoleConfig, bos: int | None) -> TextNeedles:
    """`cfg.n_contexts` contexts cut from natural `text`: a haystack span, a needle span (another
    place of the text, ≥ 3·needle_len tokens' worth of characters) inserted a third of the way in
    and again so that its first `needle_len` tokens end the context, as in `needle_batch`.

    Each context is built as one string and tokenized once; the copy positions are found in that
    token sequence (from each token's character span), so a BPE merge across a part's edge cannot
    shift them. A draw whose needle tokenizes differently at its two places is drawn again."""
    prefix = 1 if bos is not None else 0
    if cfg.seq_len < prefix + 3 * cfg.needle_len + 2:
        raise ValueError(f"seq_len={cfg.seq_len} is too short for a needle of {cfg.needle_len} tokens")
    bounds = [m.start() for m in re.finditer(r" (?=\S)", text)]
    sample = text[:20_000]
    cpt = len(sample) / max(1, len(tokenizer.encode(sample)))  # characters per token, for first guesses
    if len(bounds) < 2 or len(text) < 4 * cfg.seq_len * cpt:
        raise ValueError(f"text: {len(text)} characters are too few for contexts of {cfg.seq_len} tokens")
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for _ in range(50 * cfg.n_contexts):
        got = _text_row(tokenizer, text, bounds, cfg, prefix, cpt, gen)
        if got is not None:
            rows.append(got)
        if len(rows) == cfg.n_contexts:
            break
    else:
        raise ValueError(f"text: only {len(rows)} of {cfg.n_contexts} needle contexts tokenized alike in both places")
    i = torch.arange(1, cfg.needle_len)
    return TextNeedles(
        torch.tensor([r[0] for r in rows]),
        torch.stack([r[2] + i - 1 for r in rows]),
        torch.stack([r[1] + i for r in rows]),
        [r[3] for r in rows],
        cfg.needle_len,
    )


def role_contexts(model, cfg: HeadRoleConfig, bos: int | None, tokenizer=None, text: str | None = None) -> Contexts:
    """The probe's contexts: `make_contexts` (random tokens) or `text_contexts` (cfg.contexts)."""
    if cfg.contexts == "random":
        return make_contexts(model, cfg, bos)
    if tokenizer is None or text is None:
        raise ValueError("contexts='text' needs a tokenizer and a text (head_roles(..., tokenizer=, text=))")
    if cfg.seq_len > model.cfg.n_ctx:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's context n_ctx={model.cfg.n_ctx}")
    return text_contexts(tokenizer, text, cfg, bos)


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


def row_steps(batch: Contexts) -> tuple[Int[Tensor, "b s"], Int[Tensor, "b s"], Int[Tensor, "b s"]]:
    """Each row's copy-step query positions, source positions and targets (the copied tokens)."""
    if isinstance(batch, TextNeedles):
        q, src = batch.query, batch.source
    else:
        q, src = (x.expand(len(batch.tokens), -1) for x in copy_steps(batch))
    return q, src, batch.tokens.gather(1, q + 1)


def retrieval_counts(
    model: HookedTransformer, batch: Contexts, measured: tuple[Tensor, Tensor] | None = None
) -> tuple[Int[Tensor, "L H"], int, int]:
    """Per-head retrieval hits, the number of correctly copied steps n (the hits' denominator)
    and the number of copy steps offered. `measured`: (logits, patterns) of a forward already run."""
    logits, pat = measured if measured is not None else attention_patterns(model, batch.tokens)
    q, src, targets = row_steps(batch)  # [b, steps]
    rows = torch.arange(len(q))[:, None]
    copied = logits[rows, q].argmax(-1) == targets  # [b, steps]
    L, b, H, _, T = pat.shape
    at_q = pat.gather(3, q[None, :, None, :, None].expand(L, b, H, -1, T))  # [L, b, H, steps, k]
    hit = (at_q.argmax(-1) == src[None, :, None, :]) & copied[None, :, None, :]
    return hit.sum((1, 3)), int(copied.sum()), copied.numel()


def streaming_per_context(
    model: HookedTransformer, tokens: Tensor, sink: int, window: int, patterns: Tensor | None = None
) -> Float[Tensor, "b L H"]:
    """Each context's mean attention mass on the first `sink` keys ∪ the last `window` keys,
    over its queries past both. `patterns`: those of a forward on `tokens` already run."""
    T = tokens.shape[1]
    if T <= sink + window:
        raise ValueError(f"contexts of {T} tokens are too short for sink={sink} + window={window}")
    pat = patterns if patterns is not None else attention_patterns(model, tokens)[1]
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
def causal_check(model: HookedTransformer, batch: Contexts, sink: int, window: int) -> dict:
    """Loss on the copy steps with each head restricted to sink+window, minus the clean loss.
    The restriction is `attention_restrict.one_head_streaming_hooks`, the trade-off's own."""
    q, _, targets = row_steps(batch)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = [(l, h) for l in range(L) for h in range(H)]
    delta, clean = exact_deltas(model, batch.tokens, q, targets, heads, sink, window)
    return {"clean_copy_loss": clean, "delta_loss": delta.float().view(L, H)}


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


def head_roles(
    model: HookedTransformer,
    cfg: HeadRoleConfig = HeadRoleConfig(),
    bos: int | None = None,
    *,
    tokenizer=None,
    text: str | None = None,
    progress: bool = False,
) -> HeadRoles:
    """Every head's retrieval and streaming score, its role, the causal check and TL's detectors.

    `tokenizer` and `text` (a natural text to cut contexts from) are needed with cfg.contexts="text".
    With cfg.causal="screen" the causal check is `head_screen.screen_check`'s first-order estimate
    for every head (delta_loss) with the exact check of cfg.n_exact heads (`screen`); its forward is
    the one the role scores read."""
    if cfg.n_contexts < 2:
        raise ValueError(f"n_contexts must be >= 2 (the streaming interval is over contexts), got {cfg.n_contexts}")
    if cfg.min_copied_steps < 1:
        raise ValueError(f"min_copied_steps must be >= 1, got {cfg.min_copied_steps}")
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if cfg.causal == "screen" and cfg.n_exact > n_heads:
        raise ValueError(f"n_exact={cfg.n_exact} exceeds the model's {n_heads} heads: at most every head is checked")
    model.eval()
    batch = role_contexts(model, cfg, bos, tokenizer, text)
    screen = None
    if cfg.causal == "screen":
        q, _, targets = row_steps(batch)
        screen, sp = screen_check(
            model, batch.tokens, q, targets, cfg.sink, cfg.window, cfg.n_exact, cfg.screen_seed, progress
        )
        measured = (sp.logits, sp.patterns)
        causal = {"clean_copy_loss": sp.clean_loss, "delta_loss": sp.score}
    else:
        measured = attention_patterns(model, batch.tokens)
    hits, n_copied, offered = retrieval_counts(model, batch, measured)
    r_lo, r_hi = wilson_interval(hits, n_copied)
    per_context = streaming_per_context(model, batch.tokens, cfg.sink, cfg.window, measured[1])
    del measured
    streaming, s_lo, s_hi = (x.clamp(0, 1) for x in t_interval(per_context))
    if screen is None:
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
        causal=cfg.causal,
        screen=screen,
    )
