"""A 2-layer attention-only HookedTransformer with ONE induction head among 8 in layer 1, set by hand,
so an attention-output SAE's head attribution has a known answer that a wrong head split can miss.

Residual stream (one-hot blocks, no LayerNorm, float64):
    TOK  [0, V)          the current token                       (W_E)
    POS  [V, V+N)        the current position                    (W_pos)
    PREV [V+N, 2V+N)     the previous token (written by L0H0)

Layer 0: head 0 is a previous-token head copying TOK into PREV; the rest are zero.
Layer 1 (d_head = V + 1; W_O = 0: only hook_z matters here), every head with a non-zero output:
    0 self, copies TOK            1 self, copies PREV          2 previous token, copies TOK
    3 two back, copies TOK        4 sink (BOS), copies TOK     5 INDUCTION: query TOK = x matches
    6 previous token, copies PREV   key PREV = x and copies the key's TOK; with no match, BOS
    7 self, a dense random map of TOK
So heads 0, 2, 3, 6 and 7 carry the current and nearby tokens at every position and head 5 the
copied token only on copy steps (the BOS token otherwise): its copy latents belong to head 5.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

V = 40  # vocabulary; BOS = V - 1
N = 32  # context length: [BOS, r, r] with r up to 15 tokens
BOS = V - 1
N_HEADS = 8
INDUCTION = 5
SHARP = 40.0  # score margin after the 1/sqrt(d_head) scale: attention one-hot to ~e^-20


def handset_attention_model() -> HookedTransformer:
    d_model, d_head = 2 * V + N, V + 1
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=d_model,
        n_heads=N_HEADS,
        d_head=d_head,
        n_ctx=N,
        d_vocab=V,
        attn_only=True,
        normalization_type=None,
        act_fn=None,
        dtype=torch.float64,
        default_prepend_bos=False,
        device="cpu",
        seed=0,
    )
    model = HookedTransformer(cfg)
    tok, pos, prev = 0, V, V + N
    c = SHARP * d_head**0.5
    t, p = torch.arange(V), torch.arange(N)
    sd = {k: torch.zeros_like(w) for k, w in model.named_parameters()}
    sd["embed.W_E"][t, tok + t] = 1.0
    sd["pos_embed.W_pos"][p, pos + p] = 1.0
    # L0H0: previous token into PREV
    sd["blocks.0.attn.W_Q"][0, pos + p, p] = c
    sd["blocks.0.attn.W_K"][0, pos + p[:-1], p[1:]] = 1.0
    sd["blocks.0.attn.W_V"][0, tok + t, t] = 1.0
    sd["blocks.0.attn.W_O"][0, t, prev + t] = 1.0
    L1 = "blocks.1.attn."

    def attend_back(head: int, back: int) -> None:  # query position q matches key position q - back
        sd[L1 + "W_Q"][head, pos + p, p] = c
        sd[L1 + "W_K"][head, pos + p[: N - back], p[back:]] = 1.0

    def copy(head: int, source: int) -> None:  # value: the one-hot block at `source` (TOK or PREV)
        sd[L1 + "W_V"][head, source + t, t] = 1.0

    attend_back(0, 0), copy(0, tok)
    attend_back(1, 0), copy(1, prev)
    attend_back(2, 1), copy(2, tok)
    attend_back(3, 2), copy(3, tok)
    sd[L1 + "b_Q"][4, 0] = c  # sink: every query matches key position 0
    sd[L1 + "W_K"][4, pos, 0] = 1.0
    copy(4, tok)
    # induction: TOK = x at the query matches PREV = x at the key; BOS (score c/2) when nothing matches
    sd[L1 + "W_Q"][INDUCTION, tok + t, t] = c
    sd[L1 + "W_K"][INDUCTION, prev + t, t] = 1.0
    sd[L1 + "b_Q"][INDUCTION, V] = c / 2
    sd[L1 + "W_K"][INDUCTION, pos, V] = 1.0
    copy(INDUCTION, tok)
    attend_back(6, 1), copy(6, prev)
    attend_back(7, 0)
    dense = torch.randn(V, d_head, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sd[L1 + "W_V"][7, tok + t] = dense / dense.norm(dim=1, keepdim=True)
    model.load_state_dict(sd, strict=False)
    return model.eval()


def random_contexts(n: int, length: int = N - 1, seed: int = 0) -> torch.Tensor:
    """[BOS, length - 1 random tokens] windows (repeats happen by chance: some induction on them too)."""
    toks = torch.randint(0, BOS, (n, length - 1), generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.full((n, 1), BOS), toks], dim=1)
