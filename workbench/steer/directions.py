"""Directions to steer along: the difference-of-means baseline, and which SAE latents are worth
steering with, by their output score (Arad et al. 2025, "SAEs are good for steering, if you
select the right features").

Output score of latent i: add `strength` · W_dec[i] at the SAE's hook on every position after BOS
of a few neutral prompts, and take the mean rise (steered − clean) of log Σ_{t ∈ T_i} p(t) over
those positions, T_i the k tokens its decoder row promotes most through the logit lens
(`sae.evaluate.logit_effects`). A latent whose direction really drives the output toward its
logit-lens tokens scores high; one that the later layers undo, or whose effect is diffuse, does
not. All latents are amplified in one batched pass: latents x prompts sequences per forward, in
chunks, and for a residual-stream hook only the layers after it are run (`start_at_layer`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..activations import split_heads, token_rows, validate_hook_name
from .effects import target_logprob

RESID = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)")


@torch.no_grad()
def hook_rows(model, hook_name: str, tokens: Int[Tensor, "b T"], batch_size: int = 32) -> Float[Tensor, "b T d"]:
    """The hook's activation, one row per token (`token_rows`)."""
    validate_hook_name(model, hook_name)
    out = []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=hook_name)
        out.append(token_rows(cache[hook_name], hook_name))
    return torch.cat(out)


def next_token_in(tokens: Int[Tensor, "b T"], targets: Sequence[int]) -> Bool[Tensor, "b T"]:
    """Whether the token after each position is in `targets` (False at the last position, which has
    no next token: `diff_of_means` leaves it out through its `valid` mask)."""
    y = torch.zeros(tokens.shape, dtype=torch.bool)
    y[:, :-1] = torch.isin(tokens[:, 1:], torch.as_tensor(list(targets)))
    return y


def diff_of_means(
    rows: Float[Tensor, "b T d"], labels: Bool[Tensor, "b T"], valid: Bool[Tensor, "b T"] | None = None
) -> Float[Tensor, " d"]:
    """mean(h where the concept holds) − mean(h where it does not), over `valid` positions (by
    default every position but BOS and the last), in float64."""
    if rows.shape[:2] != labels.shape:
        raise ValueError(f"labels: shape {tuple(labels.shape)} does not match the rows' {tuple(rows.shape[:2])}")
    if valid is None:
        valid = torch.zeros(labels.shape, dtype=torch.bool)
        valid[:, 1:-1] = True
    h, y = rows[valid].double(), labels[valid]
    if not y.any() or y.all():
        raise ValueError(f"labels: the concept holds at {int(y.sum())} of {len(y)} positions; it needs both classes")
    return h[y].mean(0) - h[~y].mean(0)


class OutputScores(NamedTuple):
    """Every latent's output score and what it was measured against."""

    score: Float[Tensor, " F"]  # mean rise of log p(its logit-lens top-k tokens), nats
    top_tokens: Int[Tensor, "F k"]  # those tokens
    target_rise: dict[str, Float[Tensor, " F"]]  # the rise of log p(each target set), nats
    strength: float  # the amplification c (the same for every unit decoder row)


def _rest_of_model(model, hook_name: str):
    """For a residual-stream hook, the layer `start_at_layer` resumes at; None for any other hook."""
    m = RESID.fullmatch(hook_name)
    if m is None:
        return None
    return int(m.group(1)) + (1 if m.group(2) == "post" else 0)


@torch.no_grad()
def output_scores(
    model,
    sae,
    prompts: Int[Tensor, "P T"],
    *,
    strength: float | None = None,
    k: int = 5,
    targets: Mapping[str, Sequence[int]] | None = None,
    chunk: int = 256,
    progress: bool = False,
) -> OutputScores:
    """The output score of every latent of `sae` (see the module's docstring). `strength` None: the
    mean norm of the hook's rows on `prompts` (a push as large as the activation itself).
    `targets`: concept token sets whose rise is scored for every latent too.

    Cost: F · P sequences of T tokens through the model after the hook, in chunks of `chunk`
    latents (F = 2048, P = 8, T = 17 on workbench-tiny: benchmarks/steering.py)."""
    from ..sae.evaluate import decoder_in_residual, logit_effects

    hook = sae.cfg.hook_name
    rows = hook_rows(model, hook, prompts)
    if strength is None:
        strength = float(rows[:, 1:].norm(dim=-1).mean())
    W = sae.W_dec.detach().to(rows.dtype)
    decoder_in_residual(model, sae)  # refuses a decoder that has no logit lens
    top = logit_effects(model, sae, k)[0]
    targets = dict(targets or {})
    clean = model(prompts).log_softmax(-1)[:, 1:]
    base_t = {n: target_logprob(clean, t) for n, t in targets.items()}  # [P, T-1]
    # a TransformerBridge runs HuggingFace's own layer loop: no start_at_layer, the push goes in by a hook
    start = _rest_of_model(model, hook) if isinstance(model, HookedTransformer) else None
    F, (P, T) = len(W), prompts.shape
    score = torch.empty(F, dtype=torch.float64)
    rise = {n: torch.empty(F, dtype=torch.float64) for n in targets}
    for a in tqdm(range(0, F, chunk), desc="output scores", disable=not progress, leave=False):
        idx = torch.arange(a, min(a + chunk, F))
        push = strength * W[idx]  # [c, d]
        lp = _steered_logprobs(model, hook, prompts, rows, push, start)[:, :, 1:]  # [c, P, T-1, V]
        sets = top[idx][:, None, None, :].expand(-1, P, T - 1, -1)
        steered = lp.gather(-1, sets).logsumexp(-1)  # [c, P, T-1]
        base_top = clean[None].expand(len(idx), -1, -1, -1).gather(-1, sets).logsumexp(-1)
        score[idx] = (steered - base_top).double().mean((1, 2))
        for n, t in targets.items():
            rise[n][idx] = (target_logprob(lp, t) - base_t[n][None]).double().mean((1, 2))
    return OutputScores(score, top, rise, strength)


def _steered_logprobs(model, hook: str, prompts: Tensor, rows: Tensor, push: Tensor, start: int | None) -> Tensor:
    """Log-probabilities [c, P, T, V] with push[j] added at every position after BOS, for each j."""
    c, (P, T) = len(push), prompts.shape
    if start is not None:
        resid = rows[None].repeat(c, 1, 1, 1)
        resid[:, :, 1:] += push[:, None, None, :]
        resid = resid.reshape(c * P, T, -1)
        logits = model(resid, start_at_layer=start)  # an empty slice of blocks after the last layer
        return logits.log_softmax(-1).reshape(c, P, T, -1)
    per_row = push.repeat_interleave(P, 0)  # [c·P, d]: sequence s gets push[s // P]

    def add(act, hook):
        r = token_rows(act, hook.name).clone()
        r[:, 1:] += per_row[:, None, :].to(r.dtype)
        return split_heads(r, act.shape)

    logits = model.run_with_hooks(prompts.repeat(c, 1), fwd_hooks=[(hook, add)])
    return logits.log_softmax(-1).reshape(c, P, T, -1)


def output_score_skip(model, sae) -> str | None:
    """Why `output_scores` cannot score `sae`'s latents (a reason for the evaluation's skipped stage),
    or None when it can: a transcoder's decoder writes at its target hook, not where its encoder
    reads; and the logit-lens tokens need decoder rows that write into the residual stream (a
    residual-width hook, or attn.hook_z through W_O)."""
    from ..sae.evaluate import decoder_in_residual

    if sae.cfg.transcoder:
        return "a transcoder's decoder writes at its target hook: no push at hook_name to score"
    try:
        decoder_in_residual(model, sae)
    except ValueError as e:
        return str(e)
    return None


def save_output_scores(path, s: OutputScores) -> None:
    """`s` as a safetensors file, written atomically: score [F] float32, top_tokens [F, k] int64, one
    rise_<name> [F] float32 per target set, the strength in the metadata."""
    from ..runs import atomic_save_tensors

    rises = {f"rise_{n}": r.float() for n, r in s.target_rise.items()}
    tensors = {"score": s.score.float(), "top_tokens": s.top_tokens, **rises}  # float32: a table column
    atomic_save_tensors(path, tensors, metadata={"strength": repr(float(s.strength))})


def load_output_scores(path) -> OutputScores:
    """What `save_output_scores` wrote; ValueError naming the file when it is not such a file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys, meta = set(f.keys()), f.metadata() or {}
            t = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors' own error type names neither the file nor what it expected
        raise ValueError(f"{path}: not a safetensors file of output scores ({type(e).__name__}: {e})") from e
    if not {"score", "top_tokens"} <= keys or "strength" not in meta:
        raise ValueError(f"{path}: expected tensors score and top_tokens and a strength, found {sorted(keys)}")
    rise = {k.removeprefix("rise_"): v for k, v in t.items() if k.startswith("rise_")}
    if t["score"].ndim != 1 or t["top_tokens"].shape[:1] != t["score"].shape:
        raise ValueError(f"{path}: score must be [F] and top_tokens [F, k], got {tuple(t['score'].shape)}")
    return OutputScores(t["score"], t["top_tokens"], rise, float(meta["strength"]))
