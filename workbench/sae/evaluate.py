"""How good an SAE is, and what each of its features does.

- `reconstruction_metrics`: FVU, explained variance, L0 (mean and per-token histogram), dead and
  dense fractions, log10 feature densities, cosine and l2 ratio of x̂ to x.
- `splice_metrics`: next-token CE with the SAE's reconstruction spliced in at its hook, against
  the clean model and zero- and mean-ablation; CE loss recovered and KL to the clean model.
- `feature_table`: per feature, its density, top-activating contexts (with the activation at
  every token of each context), an activation histogram, logit effects and correlated features:
  everything a feature dashboard shows, computed once and saved, so pages need no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple

import torch
import torch.nn.functional as F_
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from ..activations import ActivationBatch, validate_hook_name
from ..runs import atomic_save_tensors, load_tensors
from .losses import fvu
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
        x = batch.acts.to(sae.W_enc.device)
        out = sae(x)
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
        "fvu": sq_err / var, "explained_variance": 1 - sq_err / var,
        "l0": float(l0.float().mean()), "l0_hist": torch.bincount(l0).tolist(),
        "dead_frac": float((fires == 0).double().mean()),
        "dense_frac": float((density > DENSE_ABOVE).double().mean()),
        "log10_density": density.clamp_min(1e-10).log10().tolist(),
        "cos_sim": cos / n, "l2_ratio": ratio / n, "n_tokens": n,
    }


@torch.no_grad()
def splice_metrics(model: HookedTransformer, sae: SparseAutoencoder, hook_name: str,
                   tokens: Int[Tensor, "batch seq"], batch_size: int = 32) -> dict:
    """CE loss with the SAE spliced in, CE loss recovered (vs zero and mean ablation), and KL.

    Position 0 (BOS) keeps its clean activation in every variant: SAEs are trained without it.
    recovered = (CE_ablated − CE_sae) / (CE_ablated − CE_clean).
    """
    validate_hook_name(model, hook_name)
    sae.eval()
    mean_act = None
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=hook_name)
        s = cache[hook_name][:, 1:].reshape(-1, cache[hook_name].shape[-1]).sum(0)
        mean_act = s if mean_act is None else mean_act + s
    mean_act = mean_act / (tokens.shape[0] * (tokens.shape[1] - 1))

    def patch(kind):
        def hook(act, hook):
            new = act.clone()
            rest = act[:, 1:]
            if kind == "sae":
                new[:, 1:] = sae(rest.reshape(-1, rest.shape[-1])).x_hat.reshape(rest.shape)
            elif kind == "zero":
                new[:, 1:] = 0.0
            else:
                new[:, 1:] = mean_act
            return new
        return hook

    totals = {k: 0.0 for k in ("clean", "sae", "zero", "mean", "kl")}
    n = 0
    for chunk in tokens.split(batch_size):
        clean_logits = model(chunk)
        totals["clean"] += float(model.loss_fn(clean_logits, chunk, per_token=True).sum())
        for kind in ("sae", "zero", "mean"):
            logits = model.run_with_hooks(chunk, fwd_hooks=[(hook_name, patch(kind))])
            totals[kind] += float(model.loss_fn(logits, chunk, per_token=True).sum())
            if kind == "sae":
                lp, lq = clean_logits.log_softmax(-1), logits.log_softmax(-1)
                totals["kl"] += float((lp.exp() * (lp - lq)).sum(-1)[:, 1:-1].sum())
        n += chunk.shape[0] * (chunk.shape[1] - 1)
    ce = {k: v / n for k, v in totals.items() if k != "kl"}

    def recovered(ablated):
        gap = ce[ablated] - ce["clean"]
        return (ce[ablated] - ce["sae"]) / gap if abs(gap) > 1e-9 else float("nan")

    return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero_ablation": ce["zero"],
            "ce_mean_ablation": ce["mean"], "ce_loss_recovered": recovered("zero"),
            "ce_loss_recovered_vs_mean": recovered("mean"),
            "kl_sae": totals["kl"] / (tokens.shape[0] * (tokens.shape[1] - 2))}


class FeatureTable(NamedTuple):
    """Dashboard data for every feature of an SAE (F features, n top contexts of C tokens)."""

    tokens: Int[Tensor, "n_seq seq"]  # the windows the statistics were taken on
    density: Float[Tensor, "F"]  # fraction of tokens on which the feature fires
    mean_act: Float[Tensor, "F"]  # mean activation where it fires
    top_values: Float[Tensor, "F n"]  # top activations, descending (0 where fewer exist)
    top_seq: Int[Tensor, "F n"]  # which window
    top_pos: Int[Tensor, "F n"]  # which position in it
    context_acts: Float[Tensor, "F n C"]  # the feature's activation over each context
    context_start: Int[Tensor, "F n"]  # first position of each context
    hist_counts: Int[Tensor, "F bins"]  # histogram of nonzero activations
    hist_max: Float[Tensor, "F"]  # histogram range is [0, hist_max]
    logit_top: Int[Tensor, "F m"]  # tokens the feature's decoder direction promotes most
    logit_top_values: Float[Tensor, "F m"]
    logit_bottom: Int[Tensor, "F m"]  # and suppresses most
    logit_bottom_values: Float[Tensor, "F m"]
    corr_idx: Int[Tensor, "F c"]  # most correlated other features (Pearson, over tokens)
    corr_values: Float[Tensor, "F c"]

    def save(self, path: str | Path) -> None:
        atomic_save_tensors(path, self._asdict(), metadata={"format": "workbench-feature-table"})

    @classmethod
    def load(cls, path: str | Path) -> "FeatureTable":
        state = load_tensors(path)
        missing = set(cls._fields) - set(state)
        if missing:
            raise ValueError(f"{path} is not a feature table (missing {sorted(missing)})")
        return cls(**{k: state[k] for k in cls._fields})


def logit_effects(model: HookedTransformer, sae: SparseAutoencoder, m: int = 10):
    """Direct effect of each decoder direction on the logits (through the final LayerNorm's scale
    and W_U only, as dashboards show it): top and bottom m tokens per feature."""
    W = sae.W_dec.detach() @ model.W_U.detach()  # [F, vocab]
    if getattr(model, "ln_final", None) is not None and hasattr(model.ln_final, "w"):
        W = (sae.W_dec.detach() * model.ln_final.w.detach()) @ model.W_U.detach()
    top = W.topk(m, dim=1)
    bottom = (-W).topk(m, dim=1)
    return top.indices, top.values, bottom.indices, -bottom.values


@torch.no_grad()
def feature_activations(model: HookedTransformer, sae: SparseAutoencoder, hook_name: str,
                        tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq F"]:
    """The SAE's (inference) feature activations at every position; 0 at BOS."""
    validate_hook_name(model, hook_name)
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    act = cache[hook_name]
    z = sae.encode(act.reshape(-1, act.shape[-1])).reshape(*act.shape[:2], -1)
    z[:, 0] = 0.0
    return z


def feature_on_text(model: HookedTransformer, sae: SparseAutoencoder, tokenizer, text: str,
                    feature: int) -> tuple[list[int], list[float]]:
    """A user's text (BOS prepended, cut to the model's context) and one feature's activation at
    each of its tokens: what the dashboards' "your own text" shows."""
    ids = tokenizer.encode(text)[: model.cfg.n_ctx - 1]
    tokens = torch.tensor([[tokenizer.bos_token_id] + ids])
    return ids, feature_activations(model, sae, sae.cfg.hook_name, tokens)[0, 1:, feature].tolist()


@torch.no_grad()
def feature_table(model: HookedTransformer, sae: SparseAutoencoder, hook_name: str,
                  tokens: Int[Tensor, "n_seq seq"], *, n_top: int = 8, context: tuple[int, int] = (20, 4),
                  bins: int = 30, n_logits: int = 10, n_corr: int = 5, batch_size: int = 32) -> FeatureTable:
    sae.eval()
    Fn = sae.cfg.d_sae
    before, after = context
    C = before + 1 + after
    n_seq, T = tokens.shape
    fires = torch.zeros(Fn)
    total = torch.zeros(Fn)
    top_v = torch.zeros(Fn, n_top)
    top_i = torch.zeros(Fn, n_top, dtype=torch.long)  # flat index seq*T + pos
    s1 = torch.zeros(Fn, dtype=torch.float64)
    s2 = torch.zeros(Fn, Fn, dtype=torch.float64)
    hist_max = torch.zeros(Fn)
    zs = []
    for b, chunk in enumerate(tokens.split(batch_size)):
        z = feature_activations(model, sae, hook_name, chunk)  # [b, T, F]
        flat = z.reshape(-1, Fn)
        fires += (flat > 0).sum(0)
        total += flat.sum(0)
        s1 += flat.double().sum(0)
        s2 += flat.double().T @ flat.double()
        hist_max = torch.maximum(hist_max, flat.max(0).values)
        v, i = flat.topk(min(n_top, len(flat)), dim=0)  # [n, F]
        cand_v = torch.cat([top_v, v.T], 1)
        cand_i = torch.cat([top_i, i.T + b * batch_size * T], 1)
        keep = cand_v.topk(n_top, dim=1)
        top_v, top_i = keep.values, cand_i.gather(1, keep.indices)
        zs.append(z.half())
    n_tok = n_seq * (T - 1)  # BOS positions never fire
    # histograms need the range first, so a second (cheap) pass over the stored activations
    hist = torch.zeros(Fn, bins, dtype=torch.long)
    edges_scale = bins / hist_max.clamp_min(1e-6)
    for z in zs:
        flat = z.reshape(-1, Fn).float()
        nz = flat > 0
        idx = (flat * edges_scale).long().clamp(max=bins - 1)
        hist.scatter_add_(1, (idx.T * nz.T).long(), nz.T.long())
    top_seq, top_pos = top_i // T, top_i % T
    start = (top_pos - before).clamp(min=0)
    start = torch.minimum(start, torch.full_like(start, max(0, T - C)))
    all_z = torch.cat(zs)  # [n_seq, T, F] half
    pos = start[..., None] + torch.arange(min(C, T))  # [F, n, C]
    feat = torch.arange(Fn)[:, None, None].expand_as(pos)
    ctx = all_z[top_seq[..., None].expand_as(pos), pos, feat].float()
    ctx = torch.where(top_v[..., None] > 0, ctx, torch.zeros_like(ctx))
    mean = s1 / n_tok
    cov = s2 / n_tok - mean[:, None] * mean[None, :]
    std = cov.diagonal().clamp_min(1e-12).sqrt()
    corr = cov / (std[:, None] * std[None, :])
    corr.fill_diagonal_(-2.0)
    corr[std < 1e-9] = -2.0
    corr[:, std < 1e-9] = -2.0
    c = corr.topk(min(n_corr, Fn - 1), dim=1)
    lt, ltv, lb, lbv = logit_effects(model, sae, n_logits)
    return FeatureTable(
        tokens=tokens, density=fires / n_tok, mean_act=total / fires.clamp_min(1),
        top_values=top_v, top_seq=top_seq, top_pos=top_pos, context_acts=ctx, context_start=start,
        hist_counts=hist, hist_max=hist_max, logit_top=lt, logit_top_values=ltv, logit_bottom=lb,
        logit_bottom_values=lbv, corr_idx=c.indices, corr_values=c.values.float().clamp(min=-1.0))


def features_matching(table: FeatureTable, ids: list[int], limit: int | None = 50) -> list[int]:
    """Features whose strongest context ends in the token ids, or (one token) that promote it
    among their top 3 logits: the dashboards' search by token."""
    hits = []
    for f in range(len(table.density)):
        if table.top_values[f, 0] <= 0:
            continue
        seq, pos = int(table.top_seq[f, 0]), int(table.top_pos[f, 0])
        ctx = table.tokens[seq, max(0, pos - len(ids) + 1): pos + 1].tolist()
        if ids and (ctx == ids or (len(ids) == 1 and ids[0] in table.logit_top[f, :3].tolist())):
            hits.append(f)
    return hits if limit is None else hits[:limit]
