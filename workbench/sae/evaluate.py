"""How good an SAE is, and what each of its features does.

- `reconstruction_metrics`: FVU, explained variance, L0 (mean and per-token histogram), dead and
  dense fractions, log10 feature densities, cosine and l2 ratio of x̂ to x (a transcoder's ŷ to y).
- `splice_metrics`: next-token CE with the SAE's reconstruction spliced in at its hook, against
  the clean model and zero- and mean-ablation; CE loss recovered and KL to the clean model.
- `feature_table`: per feature, its density, top-activating contexts (with the activation at
  every token of each context), an activation histogram, logit effects and correlated features:
  everything a feature dashboard shows, computed once and saved, so pages need no model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F_
from jaxtyping import Float, Int
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..activations import ActivationBatch, has_head_axis, split_heads, token_rows, validate_hook_name
from ..runs import atomic_save_tensors, load_tensors
from .model import SparseAutoencoder

DENSE_ABOVE = 0.1  # a latent firing on more than 10% of tokens counts as dense


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches: Iterable[ActivationBatch]) -> dict:
    sae.eval()
    sq_err = var = cos = ratio = 0.0
    n = 0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    l0s = []
    sum_x = sum_x2 = None
    for batch in batches:
        out = sae(batch.acts.to(sae.W_enc.device))
        x = (batch.acts if batch.targets is None else batch.targets).to(out.x_hat)  # a transcoder's: y
        sq_err += float((x - out.x_hat).pow(2).sum())
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sum_x2 = x.pow(2).sum() if sum_x2 is None else sum_x2 + x.pow(2).sum()
        cos += float(F_.cosine_similarity(x, out.x_hat, dim=1).sum())
        ratio += float((out.x_hat.norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).sum())
        active = out.z > 0
        fires += active.sum(0).cpu()
        l0s.append(active.sum(1).cpu())
        n += len(x)
    if n == 0:
        raise ValueError("batches: no activations to evaluate on")
    var = float(sum_x2 - sum_x.pow(2).sum() / n)
    l0 = torch.cat(l0s)
    density = fires.double() / n
    return {
        "fvu": sq_err / var,
        "explained_variance": 1 - sq_err / var,
        "l0": float(l0.float().mean()),
        "l0_hist": torch.bincount(l0).tolist(),
        "dead_frac": float((fires == 0).double().mean()),
        "dense_frac": float((density > DENSE_ABOVE).double().mean()),
        "log10_density": density.clamp_min(1e-10).log10().tolist(),
        "cos_sim": cos / n,
        "l2_ratio": ratio / n,
        "n_tokens": n,
    }


@torch.no_grad()
def splice_metrics(
    model: HookedTransformer,
    sae: SparseAutoencoder,
    hook_name: str,
    tokens: Int[Tensor, "batch seq"],
    batch_size: int = 32,
) -> dict:
    """CE loss with the SAE spliced in, CE loss recovered (vs zero and mean ablation), and KL: the
    keys of `transcoder_eval.SpliceMetrics`, measured by its `spliced_ce` (the transcoders' too).

    Position 0 (BOS) keeps its clean activation in every variant: SAEs are trained without it.
    recovered = (CE_ablated − CE_sae) / (CE_ablated − CE_clean), None when the gap is 0.
    """
    from .transcoder_eval import spliced_ce

    validate_hook_name(model, hook_name)
    sae.eval()
    _, cache = model.run_with_cache(tokens[:1], names_filter=hook_name)
    check_width(sae, hook_name, token_rows(cache[hook_name], hook_name).shape[-1])

    def splice(act, hook):
        # a head-axis hook is spliced as one row per token (heads concatenated), then split back
        # into [batch, pos, n_heads, d_head] for the model
        rows = token_rows(act, hook_name).clone()
        rest = rows[:, 1:]
        rows[:, 1:] = sae(rest.reshape(-1, rest.shape[-1])).x_hat.reshape(rest.shape)
        return split_heads(rows, act.shape)

    return spliced_ce(model, tokens, lambda: [(hook_name, splice)], [hook_name], batch_size)._asdict()


FORMAT = "workbench-feature-table"
FORMAT_VERSION = 2  # 1: "no correlation" stored as -1, empty top-n slots pointing at window 0


class FeatureTable(NamedTuple):
    """Dashboard data for every feature of an SAE, computed once by `feature_table` and saved, so
    pages need no model. F features, n top contexts of C tokens, c correlated partners, m logit tokens.

    - tokens [n_seq, T] int64: the windows the statistics were taken on (BOS at position 0).
    - density [F] float32: fraction of non-BOS tokens on which the feature fires (activation > 0).
    - mean_act [F] float32: mean activation over the tokens where it fires (0 if it never fires).
    - top_values [F, n] float32: its n largest activations, descending; equal values keep token
      order (earlier window, then earlier position, first); 0 in slots beyond how often it fired.
    - top_seq, top_pos [F, n] int64: window and position of each top activation; -1 in empty slots.
    - context_acts [F, n, C] float32: the feature's activation over the context of each top
      activation, C = min(before + 1 + after, T) tokens; 0 in empty slots.
    - context_start [F, n] int64: first position of each context (the top position minus `before`,
      moved to stay inside the window); -1 in empty slots.
    - hist_counts [F, bins] int64: histogram of the nonzero activations over [0, hist_max]: an
      activation a goes to bin floor(a * bins / hist_max), the maximum into the last bin.
    - hist_max [F] float32: the largest activation (0 if it never fires).
    - logit_top, logit_bottom [F, m] int64 and their _values [F, m] float32: tokens the feature's
      decoder direction promotes and suppresses most (`logit_effects`).
    - corr_idx [F, c] int64: the c features with the highest Pearson correlation to it over the
      correlation sample (`corr_tokens`), among those firing together with it on at least one sample
      token; -1 in slots beyond how many such partners exist (and in all slots of version-1 files'
      "no correlation" entries).
    - corr_values [F, c] float32: their Pearson r, descending; NaN where corr_idx is -1.
    - corr_cofires [F, c] int64: sample tokens on which both fire (how much evidence each r rests
      on); 0 where corr_idx is -1, -1 throughout a table read from a version-1 file.
    - corr_tokens [] int64: tokens in the correlation sample; -1 for a version-1 file.
    """

    tokens: Int[Tensor, "n_seq seq"]
    density: Float[Tensor, " F"]
    mean_act: Float[Tensor, " F"]
    top_values: Float[Tensor, "F n"]
    top_seq: Int[Tensor, "F n"]
    top_pos: Int[Tensor, "F n"]
    context_acts: Float[Tensor, "F n C"]
    context_start: Int[Tensor, "F n"]
    hist_counts: Int[Tensor, "F bins"]
    hist_max: Float[Tensor, " F"]
    logit_top: Int[Tensor, "F m"]
    logit_top_values: Float[Tensor, "F m"]
    logit_bottom: Int[Tensor, "F m"]
    logit_bottom_values: Float[Tensor, "F m"]
    corr_idx: Int[Tensor, "F c"]
    corr_values: Float[Tensor, "F c"]
    corr_cofires: Int[Tensor, "F c"]
    corr_tokens: Int[Tensor, ""]

    def save(self, path: str | Path) -> None:
        atomic_save_tensors(path, self._asdict(), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})

    @classmethod
    def load(cls, path: str | Path) -> "FeatureTable":
        """Read a table `save` wrote; a version-1 file (before the version key) is upgraded in memory."""
        state = load_tensors(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{path} is not a feature table (its format is {meta['format']!r})")
        version = meta.get("version", "1")
        if version not in ("1", str(FORMAT_VERSION)):
            raise ValueError(
                f"{path}: feature-table format version {version} is not readable by this "
                f"workbench (it reads 1 and {FORMAT_VERSION}); recompute it or upgrade workbench"
            )
        if version == "1":
            state = _upgrade_v1(state, path)
        missing = set(cls._fields) - set(state)
        if missing:
            raise ValueError(f"{path} is not a feature table (missing {sorted(missing)})")
        return cls(**{k: state[k] for k in cls._fields})


def _upgrade_v1(state: dict[str, Tensor], path: str | Path) -> dict[str, Tensor]:
    """Version 1 stored "no correlation" as r = -1 (after clamping a -2 marker) and left empty
    top-n slots pointing at window 0; both become the explicit markers of version 2."""
    need = {"corr_idx", "corr_values", "top_values", "top_seq", "top_pos", "context_start"}
    if need - set(state):
        raise ValueError(f"{path} is not a feature table (missing {sorted(need - set(state))})")
    state = dict(state)
    none = state["corr_values"] <= -1.0
    state["corr_values"] = state["corr_values"].masked_fill(none, float("nan"))
    state["corr_idx"] = state["corr_idx"].masked_fill(none, -1)
    state["corr_cofires"] = torch.full_like(state["corr_idx"], -1)
    state["corr_tokens"] = torch.tensor(-1)
    empty = state["top_values"] <= 0
    for k in ("top_seq", "top_pos", "context_start"):
        state[k] = state[k].masked_fill(empty, -1)
    return state


def check_width(sae: SparseAutoencoder, hook_name: str, width: int) -> None:
    """Raise a ValueError when the SAE's d_in is not the hook's row width (`hook_dim`), naming the
    pooled-heads case: an SAE trained on one row per head of a head-axis hook has d_in = d_head."""
    if sae.cfg.d_in == width:
        return
    why = (
        " (one row per attention head, as the workbench read head-axis hooks before they became one row "
        "per token with the heads concatenated: retrain it with train-sae --hook " + hook_name + ")"
        if has_head_axis(hook_name)
        else ""
    )
    raise ValueError(f"sae: d_in={sae.cfg.d_in} does not match the width {width} of {hook_name}'s rows{why}")


def decoder_in_residual(model: HookedTransformer, sae: SparseAutoencoder) -> Float[Tensor, "F d_model"]:
    """Each decoder direction as what it writes into the residual stream: itself for a residual-width
    hook; for blocks.L.attn.hook_z, Σ_h W_dec[:, h] W_O[L, h] (what the heads' outputs z add through
    W_O, without the constant b_O)."""
    W = sae.W_dec.detach()
    hook = sae.cfg.hook_name
    if hook.endswith("attn.hook_z") and hook.startswith("blocks."):
        layer = int(hook.split(".")[1])
        W_O = model.blocks[layer].attn.W_O.detach().to(W.dtype)  # [n_heads, d_head, d_model]
        return torch.einsum("fhd,hdm->fm", W.reshape(len(W), *W_O.shape[:2]), W_O)
    if W.shape[1] != model.cfg.d_model:
        raise ValueError(
            f"sae: decoder rows are {W.shape[1]} wide, not d_model={model.cfg.d_model}; "
            f"logit effects need a residual-width hook or an attn.hook_z (got {hook!r})"
        )
    return W


def logit_effects(model: HookedTransformer, sae: SparseAutoencoder, m: int = 10):
    """Direct effect of each decoder direction on the logits (through the final LayerNorm's scale
    and W_U only, as dashboards show it; a hook_z direction through its heads' W_O first,
    `decoder_in_residual`): top and bottom m tokens per feature."""
    D = decoder_in_residual(model, sae)
    W = D @ model.W_U.detach()  # [F, vocab]
    if getattr(model, "ln_final", None) is not None and hasattr(model.ln_final, "w"):
        W = (D * model.ln_final.w.detach()) @ model.W_U.detach()
    top = W.topk(m, dim=1)
    bottom = (-W).topk(m, dim=1)
    return top.indices, top.values, bottom.indices, -bottom.values


@torch.no_grad()
def feature_activations(
    model: HookedTransformer, sae: SparseAutoencoder, hook_name: str, tokens: Int[Tensor, "batch seq"]
) -> Float[Tensor, "batch seq F"]:
    """The SAE's (inference) feature activations at every position; 0 at BOS. A head-axis hook's
    activation is read as one row per token (`token_rows`)."""
    validate_hook_name(model, hook_name)
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    act = token_rows(cache[hook_name], hook_name)
    check_width(sae, hook_name, act.shape[-1])
    z = sae.encode(act.reshape(-1, act.shape[-1])).reshape(*act.shape[:2], -1)
    z[:, 0] = 0.0
    return z


def feature_on_text(
    model: HookedTransformer, sae: SparseAutoencoder, tokenizer, text: str, feature: int
) -> tuple[list[int], list[float]]:
    """A user's text (BOS prepended, cut to the model's context) and one feature's activation at
    each of its tokens: what the dashboards' "your own text" shows."""
    ids = tokenizer.encode(text)[: model.cfg.n_ctx - 1]
    tokens = torch.tensor([[tokenizer.bos_token_id] + ids])
    return ids, feature_activations(model, sae, sae.cfg.hook_name, tokens)[0, 1:, feature].tolist()


class _Fired(NamedTuple):
    """The nonzero activations of a chunk as (token, feature, value) triples, in token order."""

    tok: Int[Tensor, " nnz"]  # flat index window * T + position over the whole table
    feat: Int[Tensor, " nnz"]
    val: Float[Tensor, " nnz"]


def _fired(z: Float[Tensor, "b T F"], first_window: int) -> _Fired:
    b, T, Fn = z.shape
    flat = z.reshape(-1, Fn)
    tok, feat = (flat > 0).nonzero(as_tuple=True)  # row-major: token ascending, then feature
    return _Fired(tok + first_window * T, feat, flat[tok, feat])


def _merge_top(
    top: tuple[Tensor, Tensor, Tensor], fired: _Fired, z: Float[Tensor, "b T F"], first_window: int, before: int, C: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Running top-n: merge a chunk's activations into (values [F, n], flat token [F, n], context [F, n, C]).

    Ties keep token order: the chunk's candidates are ranked by (value descending, token ascending)
    and every earlier chunk's tokens precede this chunk's, so a stable sort of [kept, new] by value
    is exact. Contexts are gathered now, while the chunk's dense activations exist; windows never
    straddle chunks, so a context is always inside this chunk."""
    values, toks, ctx = top
    Fn, n = values.shape
    b, T, _ = z.shape
    order = fired.val.sort(descending=True, stable=True).indices
    order = order[fired.feat[order].sort(stable=True).indices]  # feature, then value desc, then token
    feat, tok, val = fired.feat[order], fired.tok[order], fired.val[order]
    counts = torch.bincount(feat, minlength=Fn)
    rank = torch.arange(len(feat)) - (counts.cumsum(0) - counts)[feat]
    keep = rank < n
    feat, tok, val, rank = feat[keep], tok[keep], val[keep], rank[keep]
    new_v = torch.zeros(Fn, n, dtype=values.dtype)
    new_t = torch.full((Fn, n), -1, dtype=torch.long)
    new_c = torch.zeros(Fn, n, C, dtype=ctx.dtype)
    new_v[feat, rank], new_t[feat, rank] = val, tok
    local = tok - first_window * T
    start = _context_start(local % T, before, C, T)
    new_c[feat, rank] = z[(local // T)[:, None], start[:, None] + torch.arange(C), feat[:, None]]
    both = torch.cat([values, new_v], 1).sort(dim=1, descending=True, stable=True).indices[:, :n]
    return (
        torch.cat([values, new_v], 1).gather(1, both),
        torch.cat([toks, new_t], 1).gather(1, both),
        torch.cat([ctx, new_c], 1).gather(1, both[..., None].expand(-1, -1, C)),
    )


def _context_start(pos: Tensor, before: int, C: int, T: int) -> Tensor:
    return (pos - before).clamp(min=0, max=T - C)


def _add_histogram(hist: Int[Tensor, "F bins"], fired: _Fired, hist_max: Float[Tensor, " F"]) -> None:
    Fn, bins = hist.shape
    b = (fired.val.double() * bins / hist_max[fired.feat].double()).floor().long().clamp(max=bins - 1)
    hist.view(-1).add_(torch.bincount(fired.feat * bins + b, minlength=Fn * bins))


def _correlations(sample: _Fired, n_tokens: int, Fn: int, c: int, block_elements: int):
    """Top-c Pearson partners per feature over the sample's n_tokens tokens, in float64.

    Σx_i and Σx_i² are per-feature sums; Σx_i·x_j is nonzero only for features that fire on the
    same token, so it is accumulated from the sample's (token, feature, value) triples by pairing
    each entry with the other entries of its token, for one block of Fb = block_elements // F
    features at a time: the largest dense arrays are [Fb, F] (float64 sums, co-fire counts, r),
    never [F, F]. Pairs that never co-fire are not candidates (their r is -m_i·m_j/(σ_i·σ_j) ≤ 0)."""
    tok, feat, v = sample.tok, sample.feat, sample.val.double()
    mean = torch.zeros(Fn, dtype=torch.float64).index_add_(0, feat, v) / n_tokens
    ex2 = torch.zeros(Fn, dtype=torch.float64).index_add_(0, feat, v * v) / n_tokens
    var = ex2 - mean**2
    std = var.clamp_min(0).sqrt()
    varies = var > 1e-12 * ex2  # a feature constant over the sample has no correlation
    # each token's entries are contiguous (triples are in token order)
    _, per_tok = torch.unique_consecutive(tok, return_counts=True)
    tok_start = (per_tok.cumsum(0) - per_tok).repeat_interleave(per_tok)  # first entry of each entry's token
    tok_len = per_tok.repeat_interleave(per_tok)
    idx = torch.full((Fn, c), -1, dtype=torch.long)
    vals = torch.full((Fn, c), float("nan"))
    cofires = torch.zeros(Fn, c, dtype=torch.long)
    if c == 0:
        return idx, vals, cofires
    Fb = max(1, block_elements // Fn)
    for a in range(0, Fn, Fb):
        rows = min(Fb, Fn - a)
        e = ((feat >= a) & (feat < a + rows)).nonzero(as_tuple=True)[0]
        reps = tok_len[e]
        ee = e.repeat_interleave(reps)
        partner = (
            tok_start[e].repeat_interleave(reps)
            + torch.arange(int(reps.sum()))
            - (reps.cumsum(0) - reps).repeat_interleave(reps)
        )
        cell = (feat[ee] - a) * Fn + feat[partner]
        sxy = torch.zeros(rows * Fn, dtype=torch.float64).index_add_(0, cell, v[ee] * v[partner]).view(rows, Fn)
        count = torch.bincount(cell, minlength=rows * Fn).view(rows, Fn)
        r = (
            sxy.div_(n_tokens)
            .sub_(mean[a : a + rows, None] * mean[None, :])
            .div_(std[a : a + rows, None] * std[None, :])
        )
        ok = (count > 0) & varies[a : a + rows, None] & varies[None, :]
        ok[torch.arange(rows), torch.arange(a, a + rows)] = False
        best = r.masked_fill_(~ok, float("-inf")).topk(c, dim=1)
        found = best.values > float("-inf")
        idx[a : a + rows] = best.indices.masked_fill(~found, -1)
        vals[a : a + rows] = best.values.float().masked_fill(~found, float("nan"))
        cofires[a : a + rows] = count.gather(1, best.indices).masked_fill(~found, 0)
    return idx, vals, cofires


@torch.no_grad()
def feature_table(
    model: HookedTransformer,
    sae: SparseAutoencoder,
    hook_name: str,
    tokens: Int[Tensor, "n_seq seq"],
    *,
    n_top: int = 8,
    context: tuple[int, int] = (20, 4),
    bins: int = 30,
    n_logits: int = 10,
    n_corr: int = 5,
    batch_size: int = 32,
    chunk_elements: int = 2**24,
    corr_tokens: int = 2**16,
    corr_block_elements: int = 2**20,
    progress: bool = False,
) -> FeatureTable:
    """Everything a feature dashboard shows (see `FeatureTable`, field by field), streamed over
    `tokens` in chunks of whole windows, so memory does not grow with F² or with the token count.

    Args:
        tokens: [n_seq, T] windows, BOS first (position 0 is never counted: SAEs are trained without it).
        n_top: top activations (and contexts) kept per feature.
        context: (before, after): tokens shown before and after each top activation.
        bins: histogram bins. n_logits: promoted and suppressed tokens per feature.
        n_corr: correlated partners per feature.
        batch_size: the most windows per chunk (one model forward).
        chunk_elements: the most dense activations (windows x T x F) per chunk; fewer windows are
            taken when F is wide (at T = 64, F = 24,576 a chunk is 10 windows, 64 MB of float32).
        corr_tokens: correlations are taken over a sample, the first ⌊corr_tokens / (T − 1)⌋
            windows (at least one); pass shuffled windows for a random sample.
        corr_block_elements: features x F per block of the correlation computation.
        progress: show a tqdm bar over the chunks.

    How (one pass, plus a second only when the sample is not every window):
      - density, mean and maximum from running counts and sums over the nonzero activations;
      - top-n per feature by a running merge (values, window, position and the context's
        activations), ties kept in token order;
      - correlations over the sample from its stored nonzero (token, feature, value) triples
        (see `_correlations`);
      - histograms need each feature's maximum first: from the sample's triples when the sample is
        every window, else from a second pass over the chunks.

    Memory, beyond the model and the SAE: one chunk's dense activations and the encoder's
    temporaries (a few x 4·chunk_elements bytes), the running top-n with contexts (F·n·(C + 2)
    numbers, twice while merging), the sample's triples (24 bytes per nonzero activation, about
    corr_tokens·L0), and one correlation block (about 5 x 8·corr_block_elements bytes). At
    d_in = 768, F = 24,576, k = 32 over 16 x 64 tokens the peak RSS rises by under 0.5 GB
    (benchmarks/feature_table_memory.py measures it)."""
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens: expected [n_seq, T] windows with T >= 2 (BOS + tokens), got {tuple(tokens.shape)}")
    if tokens.shape[0] == 0:
        raise ValueError("tokens: no windows to build the feature table on")
    before, after = context
    for name, value, least in (
        ("n_top", n_top, 1),
        ("bins", bins, 1),
        ("n_logits", n_logits, 1),
        ("n_corr", n_corr, 0),
        ("batch_size", batch_size, 1),
        ("corr_tokens", corr_tokens, 1),
        ("chunk_elements", chunk_elements, 1),
        ("corr_block_elements", corr_block_elements, 1),
        ("context[0]", before, 0),
        ("context[1]", after, 0),
    ):
        if value < least:
            raise ValueError(f"{name}={value}: expected an integer >= {least}")
    validate_hook_name(model, hook_name)
    sae.eval()
    Fn = sae.cfg.d_sae
    n_seq, T = tokens.shape
    C = min(before + 1 + after, T)
    per_chunk = max(1, min(batch_size, chunk_elements // (T * Fn)))
    sample_windows = min(n_seq, max(1, corr_tokens // (T - 1)))
    fires = torch.zeros(Fn, dtype=torch.long)
    total = torch.zeros(Fn, dtype=torch.float64)
    hist_max = torch.zeros(Fn)
    top = (torch.zeros(Fn, n_top), torch.full((Fn, n_top), -1, dtype=torch.long), torch.zeros(Fn, n_top, C))
    sample: list[_Fired] = []
    starts = range(0, n_seq, per_chunk)

    def chunks(desc: str):
        for w in tqdm(starts, desc=desc, disable=not progress, leave=False):
            z = feature_activations(model, sae, hook_name, tokens[w : w + per_chunk]).float().cpu()
            yield w, z, _fired(z, w)

    for w, z, fired in chunks("feature table"):
        fires += torch.bincount(fired.feat, minlength=Fn)
        total.index_add_(0, fired.feat, fired.val.double())
        hist_max.scatter_reduce_(0, fired.feat, fired.val, "amax")
        top = _merge_top(top, fired, z, w, before, C)
        if w < sample_windows:
            s = fired.tok < sample_windows * T
            sample.append(_Fired(fired.tok[s], fired.feat[s], fired.val[s]))
    sample_all = _Fired(*(torch.cat(parts) for parts in zip(*sample)))
    hist = torch.zeros(Fn, bins, dtype=torch.long)
    if sample_windows == n_seq:
        _add_histogram(hist, sample_all, hist_max)
    else:
        for _, _, fired in chunks("feature histograms"):
            _add_histogram(hist, fired, hist_max)
    n_sample = sample_windows * (T - 1)
    corr_idx, corr_values, corr_cofires = _correlations(
        sample_all, n_sample, Fn, min(n_corr, Fn - 1), corr_block_elements
    )
    top_v, top_t, ctx = top
    empty = top_t < 0
    top_seq, top_pos = (top_t // T).masked_fill(empty, -1), (top_t % T).masked_fill(empty, -1)
    start = _context_start(top_pos, before, C, T).masked_fill(empty, -1)
    n_tok = n_seq * (T - 1)
    lt, ltv, lb, lbv = logit_effects(model, sae, n_logits)
    return FeatureTable(
        tokens=tokens,
        density=(fires.double() / n_tok).float(),
        mean_act=(total / fires.clamp_min(1)).float(),
        top_values=top_v,
        top_seq=top_seq,
        top_pos=top_pos,
        context_acts=ctx,
        context_start=start,
        hist_counts=hist,
        hist_max=hist_max,
        logit_top=lt,
        logit_top_values=ltv,
        logit_bottom=lb,
        logit_bottom_values=lbv,
        corr_idx=corr_idx,
        corr_values=corr_values,
        corr_cofires=corr_cofires,
        corr_tokens=torch.tensor(n_sample),
    )


def features_matching(table: FeatureTable, ids: list[int], limit: int | None = 50) -> list[int]:
    """Features whose strongest context ends in the token ids, or (one token) that promote it
    among their top 3 logits: the dashboards' search by token."""
    hits = []
    for f in range(len(table.density)):
        if table.top_values[f, 0] <= 0:
            continue
        seq, pos = int(table.top_seq[f, 0]), int(table.top_pos[f, 0])
        ctx = table.tokens[seq, max(0, pos - len(ids) + 1) : pos + 1].tolist()
        if ids and (ctx == ids or (len(ids) == 1 and ids[0] in table.logit_top[f, :3].tolist())):
            hits.append(f)
    return hits if limit is None else hits[:limit]
