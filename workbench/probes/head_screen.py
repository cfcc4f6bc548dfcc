"""Every head's causal effect in one forward and one backward pass (attribution patching), and its
check against the exact restricted forward on a sample of heads.

The causal check restricts one head to sink + window attention and measures the copy loss: one
forward per head, 270 on SmolLM2-135M. Its first-order estimate (Nanda's attribution patching,
Syed et al. 2023) takes one pass for all heads. A head's output is z = A·v (per query head; under
grouped-query attention v is its KV group's, `repeat_interleave` over the group as in TransformerLens
and Hugging Face), so restricting it changes z by Δz = (A_restricted - A)·v, where A_restricted is
`attention_restrict.streaming_pattern` of the same forward's scores. Then

    Δloss(l, h) ≈ Σ_{b, t, d} ∂loss/∂z[l][b, t, h, d] · Δz[l][b, t, h, d],

exact to first order in the restriction: mixing A_ε = (1 - ε)·A + ε·A_restricted, d loss/dε at
ε = 0 is this sum (tests/test_head_screen.py checks it against a finite difference in float64).
The restriction is not small (it moves most of a retrieval head's attention), so the estimate is
a ranking to be checked: `screen_check` runs the exact restricted forward on the screen's top
heads and a random sample of the rest and reports Spearman's rho (`head_agreement.spearman`'s
Fisher z interval) and the recall of the exact top k.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from .attention_restrict import check_supported, one_head_streaming_hooks, streaming_pattern
from .head_agreement import spearman
from .heads_data import CausalScreen

TOP, RANDOM = "screen top", "random"
RECON_TOL = 1e-3  # relative: hook_z must be hook_pattern @ hook_v, or Δz = ΔA·v is not the head's change


def copy_loss(logits: Float[Tensor, "b T V"], query: Int[Tensor, "b s"], targets: Int[Tensor, "b s"]) -> Tensor:
    """Mean next-token cross-entropy at the copy steps: position query[b, i] predicting targets[b, i]."""
    rows = torch.arange(len(query), device=query.device)[:, None]
    return torch.nn.functional.cross_entropy(logits[rows, query].flatten(0, 1), targets.flatten())


class ScreenPass(NamedTuple):
    score: Float[Tensor, "L H"]  # first-order copy-loss change of restricting each head
    clean_loss: float  # the copy loss of the unrestricted model
    logits: Float[Tensor, "b T V"]  # of the unrestricted forward (detached)
    patterns: Float[Tensor, "L b H T T"]  # every head's attention in that forward (detached)


def attribution_screen(
    model: HookedTransformer,
    tokens: Int[Tensor, "b T"],
    query: Int[Tensor, "b s"],
    targets: Int[Tensor, "b s"],
    sink: int,
    window: int,
) -> ScreenPass:
    """grad(copy loss, z) · Δz for every head (module docstring), from one forward and one backward;
    the forward's logits and patterns come back too, so the role scores need no forward of their own."""
    check_supported(model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    saved: dict[str, Tensor] = {}
    zs: list[Tensor] = []
    dz: list[Tensor] = []
    pats: list[Tensor] = []

    def save(x, hook):
        saved[hook.name.rsplit(".", 1)[-1]] = x.detach()

    def on_z(z, hook):
        pattern, v = saved.pop("hook_pattern"), saved.pop("hook_v")  # v: [b, T, n_kv or H, d]
        if H % v.shape[2]:
            raise ValueError(f"{hook.name}: hook_v has {v.shape[2]} heads, which do not divide n_heads={H}")
        v = v.repeat_interleave(H // v.shape[2], dim=2)  # query head h reads KV head h // group
        restricted = streaming_pattern(saved.pop("hook_attn_scores"), sink, window).to(pattern.dtype)
        full = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        err = float((full - z.detach()).abs().max()) / (float(z.detach().abs().max()) + 1e-12)
        if err > RECON_TOL:
            raise ValueError(
                f"{hook.name} differs from hook_pattern @ hook_v by {err:.2e} (relative): the "
                "screen's Δz = ΔA·v would not be the head's change (is hook_v grouped per query head?)"
            )
        dz.append(torch.einsum("bhqk,bkhd->bqhd", restricted - pattern, v))
        pats.append(pattern)
        zs.append(z)
        return z

    names = ("hook_attn_scores", "hook_pattern", "hook_v")
    hooks = [(f"blocks.{l}.attn.{n}", save) for l in range(L) for n in names]
    hooks += [(f"blocks.{l}.attn.hook_z", on_z) for l in range(L)]
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        if not zs[0].requires_grad:
            raise ValueError(
                "the model's attention outputs do not require grad: the screen needs its parameters' grads on"
            )
        loss = copy_loss(logits, query, targets)
        grads = torch.autograd.grad(loss, zs)  # only what reaches z: no parameter gradients are computed
    score = torch.stack([(g * d).sum((0, 1, 3)) for g, d in zip(grads, dz)]).detach().double()
    return ScreenPass(score.view(L, H), float(loss.detach()), logits.detach(), torch.stack(pats))


@torch.no_grad()
def exact_deltas(
    model: HookedTransformer,
    tokens: Int[Tensor, "b T"],
    query: Int[Tensor, "b s"],
    targets: Int[Tensor, "b s"],
    heads: list[tuple[int, int]],
    sink: int,
    window: int,
    clean_loss: float | None = None,
    progress: bool = False,
) -> tuple[Float[Tensor, " n"], float]:
    """The copy-loss change of restricting each head in `heads` alone (one forward each, the
    trade-off's restriction `one_head_streaming_hooks`), and the clean copy loss."""
    from tqdm.auto import tqdm

    def loss(hooks) -> float:
        return float(copy_loss(model.run_with_hooks(tokens, fwd_hooks=hooks), query, targets))

    clean = loss([]) if clean_loss is None else clean_loss
    out = torch.zeros(len(heads), dtype=torch.float64)
    for i, (l, h) in enumerate(tqdm(heads, desc="exact causal check", disable=not progress)):
        out[i] = loss(one_head_streaming_hooks(model, l, h, sink, window)) - clean
    return out, clean


def choose_heads(score: Float[Tensor, "L H"], n_exact: int, seed: int) -> tuple[list[tuple[int, int]], list[str]]:
    """The screen's n_exact // 2 highest heads (ties: lower flat index first), then heads drawn
    uniformly from the rest (seeded) up to n_exact."""
    L, H = score.shape
    if not 1 <= n_exact <= L * H:
        raise ValueError(f"n_exact={n_exact}: expected 1 <= n_exact <= the model's {L * H} heads ({L} layers x {H})")
    flat = score.flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    n_top = n_exact // 2
    rest = order[n_top:]
    gen = torch.Generator().manual_seed(seed)
    drawn = [rest[int(i)] for i in torch.randperm(len(rest), generator=gen)[: n_exact - n_top]]
    picked = order[:n_top] + drawn
    return [divmod(i, H) for i in picked], [TOP] * n_top + [RANDOM] * len(drawn)


def top_k_recall(score: Float[Tensor, "L H"], heads: list[tuple[int, int]], exact: Tensor, k: int) -> float | None:
    """Share of the k checked heads of largest exact change that are among the screen's k highest of
    all heads; None when k < 1."""
    if k < 1:
        return None
    H = score.shape[1]
    flat = score.flatten().tolist()
    screen_top = set(sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k])
    ex = exact.tolist()
    exact_top = sorted(range(len(heads)), key=lambda i: (-ex[i], i))[:k]
    return sum(heads[i][0] * H + heads[i][1] in screen_top for i in exact_top) / k


def screen_check(
    model: HookedTransformer,
    tokens: Int[Tensor, "b T"],
    query: Int[Tensor, "b s"],
    targets: Int[Tensor, "b s"],
    sink: int,
    window: int,
    n_exact: int,
    seed: int = 0,
    progress: bool = False,
) -> tuple[CausalScreen, ScreenPass]:
    """The screen over every head, the exact check of `n_exact` of them (`choose_heads`) and the
    agreement of the two; the screen's forward (logits, patterns) comes back for the role scores."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if not 1 <= n_exact <= L * H:
        raise ValueError(f"n_exact={n_exact}: expected 1 <= n_exact <= the model's {L * H} heads ({L} layers x {H})")
    t0 = time.perf_counter()
    sp = attribution_screen(model, tokens, query, targets, sink, window)
    t1 = time.perf_counter()
    heads, chosen_by = choose_heads(sp.score, n_exact, seed)
    exact, _ = exact_deltas(model, tokens, query, targets, heads, sink, window, sp.clean_loss, progress)
    t2 = time.perf_counter()
    est = torch.tensor([float(sp.score[l, h]) for l, h in heads], dtype=torch.float64)
    rand = [i for i, c in enumerate(chosen_by) if c == RANDOM]
    k = min(10, n_exact // 2)
    screen = CausalScreen(
        score=sp.score.tolist(),
        heads=[[l, h] for l, h in heads],
        exact=exact.tolist(),
        chosen_by=chosen_by,
        spearman=spearman(est.numpy(), exact.numpy()),
        spearman_random=spearman(est[rand].numpy(), exact[rand].numpy()),
        top_k=k,
        top_k_recall=top_k_recall(sp.score, heads, exact, k),
        sink=sink,
        window=window,
        seconds={"screen": t1 - t0, "exact": t2 - t1},
    )
    return screen, sp


__all__ = [
    "ScreenPass",
    "attribution_screen",
    "choose_heads",
    "copy_loss",
    "exact_deltas",
    "screen_check",
    "top_k_recall",
]
