"""A 2-layer attention-only HookedTransformer whose heads are set by hand, so every head-role
method has a known answer.

Residual stream (one-hot blocks, no LayerNorm, float64):
    TOK  [0, V)          the current token          (W_E)
    POS  [V, V+N)        the current position       (W_pos)
    PREV [V+N, V+N+V)    the previous token         (written by L0H0)
    OUT  [V+N+V, 3V+N)   the predicted next token   (written by L1H0, read by W_U)

Heads (the rest have zero weights: uniform attention, zero output):
    L0H0 previous-token: query position p matches key position p - 1; copies TOK into PREV.
    L0H1, L1H1 sink:     a constant query bias matches key position 0 (BOS); zero output.
    L0H2, L1H2 self:     query position p matches key position p; zero output.
    L1H0 induction:      query TOK = x matches key PREV = x (K-composition with L0H0), so it
                         attends to the token after an earlier x and copies it into OUT.
Only L1H0 reaches beyond a window of 2, so it is the single head that needs full attention;
L0H0 is needed too but works on sink + window (window >= 2), like the sink and self heads.

`handset_model(n_heads=16)` adds zero-weight heads (uniform attention, zero output) up to 16 per
layer: 32 heads, of which one is needed, so a ranking that keeps it can beat random picks at a
significance level that 8 heads cannot reach (1 of 8: p >= 0.125; 1 of 32: p = 1/32).
`dtype=torch.float32, sharp=200` makes every kept probability of a streaming L1H0 underflow to 0
(e^-200 is below float32's range), the case where two ways of restricting attention differ.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

V = 128  # vocabulary (BOS = V - 1); large against N so haystack tokens rarely repeat the needle's
N = 48  # context length
BOS = V - 1
PREV_HEAD, SINK_HEADS, SELF_HEADS, INDUCTION_HEAD = (0, 0), ((0, 1), (1, 1)), ((0, 2), (1, 2)), (1, 0)
SHARP = 40.0  # score margin after the 1/sqrt(d_head) scale: attention is one-hot to ~e^-40


def handset_model(
    n_heads: int = 4, dtype: torch.dtype = torch.float64, sharp: float = SHARP, vocab: int = V
) -> HookedTransformer:
    """The hand-set model (module docstring) with `n_heads` per layer and a vocabulary of `vocab`
    (BOS = vocab - 1)."""
    V = vocab  # noqa: N806 (the module constant's role, at this size)
    if n_heads < 4:
        raise ValueError(f"n_heads must be >= 4 (the named heads), got {n_heads}")
    d_model, d_head = 3 * V + N, V + 1  # the extra head dim carries L1H0's recency preference
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        n_ctx=N,
        d_vocab=V,
        attn_only=True,
        normalization_type=None,
        act_fn=None,
        dtype=dtype,
        default_prepend_bos=False,
        device="cpu",
        seed=0,
    )
    model = HookedTransformer(cfg)
    tok, pos, prev, out = 0, V, V + N, 2 * V + N
    c = sharp * d_head**0.5
    sd = {k: torch.zeros_like(p) for k, p in model.named_parameters()}  # buffers (causal mask) stay
    sd["embed.W_E"][torch.arange(V), tok + torch.arange(V)] = 1.0
    sd["pos_embed.W_pos"][torch.arange(N), pos + torch.arange(N)] = 1.0
    # L0H0: previous token
    sd["blocks.0.attn.W_Q"][0, pos + torch.arange(N), torch.arange(N)] = c
    sd["blocks.0.attn.W_K"][0, pos + torch.arange(N - 1), torch.arange(1, N)] = 1.0
    sd["blocks.0.attn.W_V"][0, tok + torch.arange(V), torch.arange(V)] = 1.0
    sd["blocks.0.attn.W_O"][0, torch.arange(V), prev + torch.arange(V)] = 1.0
    for layer, head in SINK_HEADS:
        sd[f"blocks.{layer}.attn.b_Q"][head, 0] = c
        sd[f"blocks.{layer}.attn.W_K"][head, pos, 0] = 1.0
    for layer, head in SELF_HEADS:
        sd[f"blocks.{layer}.attn.W_Q"][head, pos + torch.arange(N), torch.arange(N)] = c
        sd[f"blocks.{layer}.attn.W_K"][head, pos + torch.arange(N), torch.arange(N)] = 1.0
    # L1H0: induction (query: current token; key: previous token; value: the key's own token)
    sd["blocks.1.attn.W_Q"][0, tok + torch.arange(V), torch.arange(V)] = c
    sd["blocks.1.attn.W_K"][0, prev + torch.arange(V), torch.arange(V)] = 1.0
    # a mild preference for later keys (score + 2·j/N): two keys holding the same previous token get
    # different weights, so float noise in PREV (~1e-17) can never flip which token wins
    sd["blocks.1.attn.b_Q"][0, V] = 2.0 * d_head**0.5
    sd["blocks.1.attn.W_K"][0, pos + torch.arange(N), V] = torch.arange(N, dtype=dtype) / N
    sd["blocks.1.attn.W_V"][0, tok + torch.arange(V), torch.arange(V)] = 1.0
    sd["blocks.1.attn.W_O"][0, torch.arange(V), out + torch.arange(V)] = 1.0
    sd["unembed.W_U"][out + torch.arange(V), torch.arange(V)] = 1.0
    sd["unembed.b_U"][V - 1] = -1e4  # BOS is never a next token
    model.load_state_dict(sd, strict=False)
    return model.eval()
