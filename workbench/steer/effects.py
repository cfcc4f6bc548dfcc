"""What an intervention does, measured: the next-token distribution before and after on a prompt,
KL on unrelated text (the cost), the concept gain (log-probability of a target token set), text
generated side by side, and an ablation's loss change where its latent fires against where not.

Every measure runs the clean and the intervened model on the same tokens and reads position 1
onward: the prediction made at BOS cannot change (no intervention touches position 0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .data import AblationEffect, Generation, NextTokenChange
from .intervene import HookFn, Intervention, hooks

FwdHooks = Sequence[tuple[str, HookFn]]


def kl_div(lp: Float[Tensor, "*n V"], lq: Float[Tensor, "*n V"]) -> Float[Tensor, "*n"]:
    """KL(p || q) = Σ p (log p − log q) from log-probabilities, per row (0 where p = q exactly)."""
    return (lp.exp() * (lp - lq)).sum(-1)


def target_logprob(lp: Float[Tensor, "*n V"], targets: Sequence[int]) -> Float[Tensor, "*n"]:
    """log Σ_{t ∈ targets} p(t): how likely the next token is in the set."""
    idx = torch.as_tensor(list(targets), dtype=torch.long, device=lp.device)
    if idx.numel() == 0:
        raise ValueError("targets: the concept's token set is empty")
    return lp.index_select(-1, idx).logsumexp(-1)


@torch.no_grad()
def logprobs(model, tokens: Int[Tensor, "b T"], fwd_hooks: FwdHooks = (), batch_size: int = 32) -> Tensor:
    """Next-token log-probabilities [b, T, V] with `fwd_hooks` in place (float32 or the model's dtype)."""
    out = []
    for chunk in tokens.split(batch_size):
        out.append(model.run_with_hooks(chunk, fwd_hooks=list(fwd_hooks)).log_softmax(-1))
    return torch.cat(out)


def _prompt_tokens(tokenizer, prompt: str, n_ctx: int) -> Tensor:
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("prompt: empty (it needs at least one token after BOS)")
    return torch.tensor([[tokenizer.bos_token_id] + ids[-(n_ctx - 1) :]])


def next_token_change(model, tokenizer, prompt: str, fwd_hooks: FwdHooks, top: int = 10) -> NextTokenChange:
    """The next-token distribution at the prompt's last position, clean and intervened, on the
    tokens among the `top` most likely under either."""
    toks = _prompt_tokens(tokenizer, prompt, model.cfg.n_ctx)
    lp = logprobs(model, toks)[0, -1]
    lq = logprobs(model, toks, fwd_hooks)[0, -1]
    shown = []
    for t in lp.topk(top).indices.tolist() + lq.topk(top).indices.tolist():
        if t not in shown:
            shown.append(t)
    shown.sort(key=lambda t: -float(lp[t]))
    return NextTokenChange(
        prompt, shown, lp.exp()[shown].tolist(), lq.exp()[shown].tolist(), float(kl_div(lp.double(), lq.double()))
    )


@torch.no_grad()
def generate(
    model,
    tokens: Int[Tensor, " T"],
    n_new: int,
    fwd_hooks: FwdHooks = (),
    *,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[int]:
    """`n_new` tokens after `tokens` (BOS first): greedy at temperature 0, else sampled from a
    generator seeded by `seed` (the clean and the steered text draw the same random numbers). The
    context keeps BOS and the last n_ctx − 1 tokens."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: expected >= 0")
    gen = torch.Generator().manual_seed(seed)
    seq = tokens.tolist()
    n_ctx = model.cfg.n_ctx
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for _ in range(n_new):
            ctx = seq if len(seq) <= n_ctx else seq[:1] + seq[-(n_ctx - 1) :]
            logits = model(torch.tensor([ctx]))[0, -1].double()
            if temperature == 0:
                nxt = int(logits.argmax())
            else:
                nxt = int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=gen))
            seq.append(nxt)
    return seq[len(tokens) :]


def generate_pair(
    model, tokenizer, prompt: str, fwd_hooks: FwdHooks, n_new: int = 48, temperature: float = 0.0, seed: int = 0
) -> Generation:
    """The clean and the intervened continuation of `prompt`, side by side."""
    toks = _prompt_tokens(tokenizer, prompt, model.cfg.n_ctx)[0]
    clean = generate(model, toks, n_new, temperature=temperature, seed=seed)
    steered = generate(model, toks, n_new, fwd_hooks, temperature=temperature, seed=seed)
    return Generation(prompt, tokenizer.decode(clean), tokenizer.decode(steered), temperature, seed)


@torch.no_grad()
def ablation_effect(
    model,
    sae,
    tokens: Int[Tensor, "b T"],
    latent: int,
    kind: str = "zero",
    mean: float | None = None,
    batch_size: int = 32,
) -> AblationEffect:
    """Per-token loss change (ablated − clean) of zero- or mean-ablating `latent` in the SAE splice
    (error term kept), split by whether the latent fires at the position that makes the
    prediction. A mean ablation without `mean` uses the latent's mean activation over `tokens`."""
    from ..sae.evaluate import feature_activations

    hook = sae.cfg.hook_name
    z = torch.cat([feature_activations(model, sae, hook, c)[..., latent] for c in tokens.split(batch_size)])
    if kind == "mean" and mean is None:
        mean = float(z[:, 1:].mean())
    iv = Intervention(kind, hook, latent=latent, mean=mean)
    fh = hooks(iv, sae)
    diffs = []
    for chunk in tokens.split(batch_size):
        clean = model.loss_fn(model(chunk), chunk, per_token=True)
        ablated = model.loss_fn(model.run_with_hooks(chunk, fwd_hooks=fh), chunk, per_token=True)
        diffs.append((ablated - clean).double())
    d = torch.cat(diffs)[:, 1:]  # the loss at position t is the prediction made at t: BOS's never changes
    fires = z[:, 1:-1] > 0
    nan = torch.tensor(float("nan"))
    return AblationEffect(
        latent,
        kind,
        float(d[fires].mean()) if fires.any() else float(nan),
        float(d[~fires].mean()) if (~fires).any() else float(nan),
        int(fires.sum()),
        int((~fires).sum()),
    )
