"""DuoAttention's gates (Xiao et al. 2024): which heads need full attention, found by optimisation.

Every KV head gets a gate α ∈ [0, 1] (init 1) that mixes its full attention with its sink + window
attention (`attention_restrict.gate_hooks`); under grouped-query attention the query heads sharing a
KV head share its gate (`gqa.expand_kv`: a KV cache is kept or cut per KV head), on an MHA model
every head has its own. With the model frozen, the gates minimise

    distance + lam · mean|α|,   distance = mean over contexts and answer positions of
                                ‖h_full − h_gated‖² (final residual stream, summed over d_model)

on synthetic passkey contexts: a needle ("The pass key is 48213.") at a random depth inside a
natural-text haystack, and the question at the end, teacher-forced with its answer. The answer
positions are the queries whose next token is an answer token (the last question token and all
answer tokens but the last): the hidden states that must carry the retrieved key. After each Adam
step α is clamped back to [0, 1]. A head whose α stays high is a retrieval head; a head whose α
falls to 0 works as well on sink + window (a streaming head).

Three distances (`DuoConfig.distance`), all averaged over contexts and answer positions so that `lam`
does not change meaning with the key length:
- "paper": the reference implementation's form: the squared difference of the final hidden states
  *after* the last norm, its weight and bias applied (`ln_final.hook_normalized` · w + b), averaged
  over d_model. Its λ = 0.05 was set
  against Llama's normalised states; on a model without a final norm this option is refused.
- "sum": ‖h_full − h_gated‖² of the residual stream before the final norm
  (`blocks.{L-1}.hook_resid_post`), summed over d_model. Its scale is the model's own: on the default
  model it is so large that every gate stays above 0.99.
- "relative" (default): "sum" divided by the full states' mean ‖h_full‖², which makes λ scale-free.
The paper also supervises the whole question-and-answer tail; here only the positions that predict an
answer token are.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..activations import frozen
from ..runs import jsonable
from ..tasks import random_token_range
from .attention_restrict import check_supported, gate_hooks
from .gqa import expand_kv, kv_heads
from .kv_data import DuoConfig, DuoResult, PasskeyConfig


class PasskeyBatch(NamedTuple):
    tokens: Int[Tensor, "b T"]
    answer_pos: Int[Tensor, "b k"]  # query positions whose next token is answer[:, i]
    answer: Int[Tensor, "b k"]  # the key's tokens
    # where the needle starts (BPE: the text before it tokenized apart, so a merge across the cut
    # can put it one token off; nothing reads it to score)
    needle_pos: Int[Tensor, " b"]


def _token_range(vocab: int, bos: int | None, cfg: PasskeyConfig) -> tuple[int, int]:
    return random_token_range(vocab, bos, cfg.token_range)


SPLITS = {"fit": 0, "eval": 1}  # the parity of a key's digit (or token id) sum in each split


def _split_key(key: list[int], lo: int, hi: int, split: str | None, gen: torch.Generator) -> list[int]:
    """`key` with its last element redrawn from [lo, hi) until the sum's parity is the split's."""
    if split is None:
        return key
    if hi - lo < 2:
        raise ValueError(f"split={split!r} needs at least 2 key values to choose a parity from, got [{lo}, {hi})")
    while sum(key) % 2 != SPLITS[split]:
        key[-1] = int(torch.randint(lo, hi, (1,), generator=gen))
    return key


def key_set(batch: PasskeyBatch) -> set[tuple[int, ...]]:
    """The batch's keys as token tuples (to check that two batches share none)."""
    return {tuple(k) for k in batch.answer.tolist()}


_MAX_DRAWS = 20  # redraws of a text context before giving up


def _text_row(
    cfg: PasskeyConfig, tokenizer, haystack: Tensor, key: str, prefix: list[int], gen: torch.Generator
) -> tuple[list[int], int, int]:
    """One text passkey context as a whole string tokenized once: (tokens, first answer index,
    needle start). The filler is decoded from `haystack` slices; the second slice grows or shrinks
    until the whole context is `seq_len` tokens (a retokenised string can merge across the cut)."""
    needle, question = cfg.needle_prefix + key + cfg.needle_suffix, cfg.question
    fixed = len(tokenizer.encode(needle + question + key))
    n_hay = cfg.seq_len - len(prefix) - fixed
    if n_hay < 2:
        raise ValueError(f"seq_len={cfg.seq_len} leaves no haystack for a needle, question and key of {fixed} tokens")
    if len(haystack) < n_hay + 8:
        raise ValueError(f"haystack has {len(haystack)} tokens, fewer than the {n_hay + 8} a context needs")
    lo_d, hi_d = cfg.depth
    for _ in range(_MAX_DRAWS):
        start = int(torch.randint(0, len(haystack) - n_hay - 8 + 1, (1,), generator=gen))
        depth = lo_d + (hi_d - lo_d) * float(torch.rand(1, generator=gen))
        cut = int(round(depth * n_hay))
        before = tokenizer.decode(haystack[start : start + cut].tolist())
        n_after = n_hay - cut
        for _ in range(_MAX_DRAWS):  # converges in one or two retokenisations
            after = tokenizer.decode(haystack[start + cut : start + cut + n_after].tolist())
            body = before + needle + after + question
            ids = prefix + tokenizer.encode(body + key)
            if len(ids) == cfg.seq_len or n_after < 1:
                break
            n_after += cfg.seq_len - len(ids)
            if start + cut + n_after > len(haystack):
                break
        if len(ids) != cfg.seq_len:
            continue
        head = prefix + tokenizer.encode(body)
        if ids[: len(head)] != head or tokenizer.decode(ids[len(head) :]) != key:
            continue  # the key's tokens merge with the question's: not a clean answer span
        return ids, len(head), len(prefix) + len(tokenizer.encode(before))
    raise ValueError(
        f"no passkey context of exactly seq_len={cfg.seq_len} tokens with a separately tokenized key "
        f"in {_MAX_DRAWS} draws; does the tokenizer merge the key with the question ({cfg.question!r})?"
    )


def passkey_batch(
    n: int,
    cfg: PasskeyConfig,
    haystack: Int[Tensor, " n_tokens"],
    *,
    bos: int | None,
    tokenizer=None,
    vocab: int | None = None,
    seed: int = 0,
    split: str | None = None,
) -> PasskeyBatch:
    """`n` passkey contexts with haystack text cut from random offsets of the `haystack` stream.

    With a `tokenizer` (`encode(str) -> list[int]` and `decode(ids) -> str`) each context is one
    string, filler · needle_prefix · key · needle_suffix · filler · question · key, with the key
    `key_len` random digits and the filler decoded from the haystack, tokenized once: the tokens a
    BPE tokenizer really makes (encoding the parts one by one can give sequences it never makes,
    e.g. a lone " " before a word). The answer tokens are those after the tokenized prefix up to
    the question, which must be a token prefix of the whole and leave tokens that decode to the
    key (else the context is redrawn). A tokenizer without `decode` (a character tokenizer, where
    both agree) gets its parts encoded one by one. Without a tokenizer, `vocab` is required and the
    parts are random tokens (see `PasskeyConfig`).

    `split` keeps the keys that fit the gates apart from the keys that evaluate them: "fit" draws
    only keys whose digits (or token ids) sum to an even number, "eval" only odd sums (the last
    element is redrawn until the sum's parity matches), so a "fit" and an "eval" batch never share
    a key, whatever their seeds; None: any key."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be None or one of {tuple(SPLITS)}, got {split!r}")
    if haystack.ndim != 1:
        raise ValueError(f"haystack: expected a 1-D token stream, got shape {tuple(haystack.shape)}")
    gen = torch.Generator().manual_seed(seed)
    prefix = [bos] if bos is not None else []
    rows, ans_pos, answers, needle_pos = [], [], [], []
    for _ in range(n):
        if tokenizer is not None:
            digits = _split_key(torch.randint(0, 10, (cfg.key_len,), generator=gen).tolist(), 0, 10, split, gen)
            if hasattr(tokenizer, "decode"):
                row, first, at = _text_row(cfg, tokenizer, haystack, "".join(map(str, digits)), prefix, gen)
                rows.append(row)
                ans_pos.append(list(range(first - 1, len(row) - 1)))
                answers.append(row[first:])
                needle_pos.append(at)
                continue
            key = []
            for d in digits:
                key += tokenizer.encode(str(d))
            head, tail = tokenizer.encode(cfg.needle_prefix), tokenizer.encode(cfg.needle_suffix)
            question = tokenizer.encode(cfg.question)
        else:
            if vocab is None:
                raise ValueError("vocab: required without a tokenizer (random-token passkeys)")
            lo, hi = _token_range(vocab, bos, cfg)
            head = torch.randint(lo, hi, (cfg.random_prefix_len,), generator=gen).tolist()
            key = _split_key(torch.randint(lo, hi, (cfg.key_len,), generator=gen).tolist(), lo, hi, split, gen)
            tail, question = [], head
        needle = head + key + tail
        n_hay = cfg.seq_len - len(prefix) - len(needle) - len(question) - len(key)
        if n_hay < 2:
            raise ValueError(
                f"seq_len={cfg.seq_len} leaves no haystack for a needle of {len(needle)}, a question "
                f"of {len(question)} and a key of {len(key)} tokens"
            )
        if len(haystack) < n_hay:
            raise ValueError(f"haystack has {len(haystack)} tokens, fewer than the {n_hay} a context needs")
        start = int(torch.randint(0, len(haystack) - n_hay + 1, (1,), generator=gen))
        hay = haystack[start : start + n_hay].tolist()
        lo_d, hi_d = cfg.depth
        depth = lo_d + (hi_d - lo_d) * float(torch.rand(1, generator=gen))
        cut = int(round(depth * n_hay))
        row = prefix + hay[:cut] + needle + hay[cut:] + question + key
        first_answer = len(row) - len(key)
        rows.append(row)
        ans_pos.append(list(range(first_answer - 1, len(row) - 1)))
        answers.append(key)
        needle_pos.append(len(prefix) + cut)
    lengths = {len(a) for a in answers}
    if len(lengths) > 1:  # a tokenizer that merges digits differently per key
        raise ValueError(
            f"the tokenizer encodes the {cfg.key_len}-digit keys as {sorted(lengths)} tokens; a batch needs one length"
        )
    return PasskeyBatch(torch.tensor(rows), torch.tensor(ans_pos), torch.tensor(answers), torch.tensor(needle_pos))


def default_haystack() -> tuple[Tensor, object, int]:
    """The default model's training stream, tokenizer and BOS."""
    from ..models import default_data

    data = default_data()
    return data.train, data.tokenizer, data.tokenizer.bos_token_id


def _state_hook(model: HookedTransformer, distance: str) -> str:
    """The hook whose states the gates must preserve (read by a hook, not `stop_at_layer`, which a
    TransformerBridge ignores: it would return logits)."""
    if distance == "paper":
        if "ln_final.hook_normalized" not in model.hook_dict:
            raise ValueError(
                "distance='paper' reads the states after the final norm, and this model has none "
                "(ln_final.hook_normalized); use distance='relative'"
            )
        return "ln_final.hook_normalized"
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def _affine(module, *names: str):
    for n in names:
        t = getattr(module, n, None)
        if isinstance(t, Tensor):
            return t
    return None


def final_norm_output(model: HookedTransformer, normalized: Float[Tensor, "b T d"]) -> Float[Tensor, "b T d"]:
    """The final norm's output from its normalised input (`ln_final.hook_normalized`, which
    TransformerLens records before the norm's weight and bias): normalized · w + b, as the
    reference code reads it; a norm without weights (LNPre) returns `normalized` unchanged."""
    ln = getattr(model, "ln_final", None)
    w, b = _affine(ln, "w", "weight"), _affine(ln, "b", "bias")
    out = normalized if w is None else normalized * w
    return out if b is None else out + b


def _states(model: HookedTransformer, tokens: Tensor, name: str, hooks: list = ()) -> Tensor:
    """The activation at hook `name` [b, T, d] with `hooks` in place, differentiable; at the final
    norm's hook, the norm's output (its weight and bias applied: `final_norm_output`)."""
    out = {}

    def grab(t, hook):
        out["h"] = t

    with model.hooks(fwd_hooks=[*hooks, (name, grab)]):
        model(tokens)
    return final_norm_output(model, out["h"]) if name == "ln_final.hook_normalized" else out["h"]


def fitting_batch(
    model: HookedTransformer, cfg: DuoConfig, haystack: Tensor, *, bos: int | None, tokenizer=None
) -> PasskeyBatch:
    """The passkey contexts the gates are fitted on: keys of the "fit" split (`passkey_batch`), so
    that the trade-off's "eval" keys are held out."""
    return passkey_batch(
        cfg.n_contexts,
        cfg.passkey,
        haystack,
        bos=bos,
        tokenizer=tokenizer,
        vocab=model.cfg.d_vocab,
        seed=cfg.seed,
        split="fit",
    )


def duo_gates(
    model: HookedTransformer,
    cfg: DuoConfig = DuoConfig(),
    *,
    haystack: Tensor | None = None,
    bos: int | None = None,
    tokenizer=None,
    progress: bool = True,
) -> DuoResult:
    """Optimise one gate per KV head (module docstring: per head on an MHA model, shared by its
    query heads under GQA, as the paper does). `haystack` None: the default model's corpus (byte
    tokenizer, BOS 256); otherwise pass the model's token stream, its `bos` and, for text models,
    its `tokenizer` (without one the needle and key are random tokens)."""
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.n_contexts < cfg.batch_size:
        raise ValueError(
            f"need steps >= 1 and 1 <= batch_size <= n_contexts; got steps={cfg.steps}, "
            f"batch_size={cfg.batch_size}, n_contexts={cfg.n_contexts}"
        )
    if cfg.lam < 0 or cfg.lr <= 0 or cfg.log_every < 1:
        raise ValueError(f"need lam >= 0, lr > 0, log_every >= 1; got {cfg.lam}, {cfg.lr}, {cfg.log_every}")
    if cfg.distance not in ("paper", "sum", "relative"):
        raise ValueError(f"distance must be 'paper', 'sum' or 'relative', got {cfg.distance!r}")
    if cfg.passkey.seq_len > model.cfg.n_ctx:
        raise ValueError(f"passkey.seq_len={cfg.passkey.seq_len} exceeds the model's n_ctx={model.cfg.n_ctx}")
    check_supported(model)
    state = _state_hook(model, cfg.distance)
    if haystack is None:
        if model.cfg.d_vocab != 257:
            raise ValueError(
                f"haystack: required for a model with d_vocab={model.cfg.d_vocab}; the default corpus "
                "is byte tokens (d_vocab 257)"
            )
        haystack, tokenizer, bos = default_haystack()
    batch = fitting_batch(model, cfg, haystack, bos=bos, tokenizer=tokenizer)
    device = next(model.parameters()).device
    tokens, pos = batch.tokens.to(device), batch.answer_pos.to(device)
    rows = torch.arange(len(tokens), device=device)[:, None]
    model.eval()
    with torch.no_grad():  # the full model's answer states, once
        target = torch.cat(
            [
                _states(model, t, state)[rows[: len(t)], p]
                for t, p in zip(tokens.split(cfg.batch_size), pos.split(cfg.batch_size))
            ]
        )

    # "relative": the distance in units of the full states' mean squared norm, so that lam weighs
    # the same against it whatever the residual stream's scale
    scale = float(target.pow(2).sum(-1).mean()) if cfg.distance == "relative" else 1.0
    per_token = (lambda d: d.pow(2).mean(-1)) if cfg.distance == "paper" else (lambda d: d.pow(2).sum(-1))
    L, H, n_kv = model.cfg.n_layers, model.cfg.n_heads, kv_heads(model)
    # one gate per KV head (the cache's unit); its query heads share it (gqa.expand_kv)
    alpha = torch.ones(L, n_kv, dtype=torch.float32, device=device, requires_grad=True)
    opt = torch.optim.Adam([alpha], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    order = torch.empty(0, dtype=torch.long)
    hist = {"loss": [], "distance": [], "penalty": []}
    traj_steps, traj = [0], [expand_kv(alpha.detach().cpu(), H).tolist()]
    start = time.perf_counter()
    with frozen(model.parameters()):  # only the gates learn
        for step in tqdm(range(1, cfg.steps + 1), desc="duo gates", disable=not progress):
            if len(order) < cfg.batch_size:
                order = torch.cat([order, torch.randperm(cfg.n_contexts, generator=gen)])
            idx, order = order[: cfg.batch_size].to(device), order[cfg.batch_size :]
            hooks = gate_hooks(model, expand_kv(alpha, H), cfg.sink, cfg.window)
            states = _states(model, tokens[idx], state, hooks)
            h = states[torch.arange(len(idx), device=device)[:, None], pos[idx]]
            distance = per_token(h - target[idx]).mean() / scale
            penalty = cfg.lam * alpha.abs().mean()
            loss = distance + penalty
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
            hist["loss"].append(loss.item())
            hist["distance"].append(distance.item())
            hist["penalty"].append(penalty.item())
            if step % cfg.log_every == 0 or step == cfg.steps:
                traj_steps.append(step)
                traj.append(expand_kv(alpha.detach().cpu(), H).tolist())
    return DuoResult(
        alphas=expand_kv(alpha.detach().cpu(), H).tolist(),
        kv_alphas=alpha.detach().cpu().tolist(),
        n_query_heads=L * H,
        n_kv_heads=L * n_kv,
        steps=list(range(1, cfg.steps + 1)),
        **hist,
        trajectory_steps=traj_steps,
        trajectory=traj,
        seconds=time.perf_counter() - start,
        config=jsonable(cfg),
    )


def passkey_hits(logits: Float[Tensor, "b T V"], batch: PasskeyBatch) -> Bool[Tensor, "b k"]:
    """Whether the teacher-forced argmax at each answer position is the answer token. A row is all
    True exactly when greedy decoding from the question reproduces the key: each greedy step then
    sees the same prefix as teacher forcing."""
    rows = torch.arange(len(batch.tokens), device=logits.device)[:, None]
    return logits[rows, batch.answer_pos.to(logits.device)].argmax(-1) == batch.answer.to(logits.device)


def passkey_accuracy(logits: Float[Tensor, "b T V"], batch: PasskeyBatch) -> tuple[float, float]:
    """(exact accuracy: share of contexts whose every answer token is the argmax, the greedy exact
    match; share of answer tokens that are)."""
    hit = passkey_hits(logits, batch)
    return float(hit.all(-1).double().mean()), float(hit.double().mean())
