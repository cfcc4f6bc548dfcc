"""Attention-output SAEs (on blocks.L.attn.hook_z) linked to the heads they read.

An SAE on hook_z reads one row per token with the heads side by side (`activations.token_rows`):
x = [z_0, z_1, ..., z_{H-1}], head h at columns [h·d_head, (h+1)·d_head). Two views follow:

- **Head shares** of a latent f: how its decoder direction splits over the heads,
      share[f, h] = ‖W_dec[f, h-slice]‖² / ‖W_dec[f]‖²        (Σ_h share[f, h] = 1),
  the squared-norm split (Kissane et al. 2024 attribute a latent to heads by its decoder norm per head).
- **Direct feature attribution (DFA)** by source position (what SAEDashboard's DFA computes): with
  z[dest, h] = Σ_src A[h, dest, src] v[src, h] (A the attention pattern, v the values, b_V included),
  the latent's pre-activation at `dest` is exactly
      pre[f] = (x − b_dec)·W_enc[f] + b_enc[f]
             = Σ_{h, src} A[h, dest, src] (W_enc[f, h-slice] · v[src, h])  +  bias[f],
      bias[f] = b_enc[f] − W_enc[f]·b_dec,
  so each (head, source) term says how much that source token, read through that head, drives f.
  Under grouped-query attention (n_key_value_heads < n_heads) query head h reads kv head
  h // (n_heads / n_kv), TransformerLens' repeat_interleave order.

Planted truth (`copy_contexts`): [BOS, r, r] with r of distinct tokens; at a copy step (a token
of the second r) an induction head attends to the token after the earlier occurrence of the
current token, so that position (dest − L + 1) is the known source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..activations import has_head_axis
from ..fielddoc import doc

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from .model import SparseAutoencoder


def z_layer(hook_name: str) -> int:
    """The layer of a blocks.L.attn.hook_z hook name; a ValueError for any other hook."""
    parts = hook_name.split(".")
    if len(parts) != 4 or parts[0] != "blocks" or parts[2] != "attn" or parts[3] != "hook_z" or not parts[1].isdigit():
        raise ValueError(f"hook_name {hook_name!r}: expected an attention output hook 'blocks.L.attn.hook_z'")
    return int(parts[1])


def head_shares(sae: SparseAutoencoder, n_heads: int) -> Float[Tensor, "F n_heads"]:
    """share[f, h] = ‖W_dec[f, h·d_head:(h+1)·d_head]‖² / ‖W_dec[f]‖² (rows sum to 1; a zero row gets 0s)."""
    W = sae.W_dec.detach()
    if W.shape[1] % n_heads:
        raise ValueError(f"n_heads={n_heads} does not divide the SAE's d_in={W.shape[1]}")
    per_head = W.reshape(W.shape[0], n_heads, -1).pow(2).sum(-1)
    return per_head / per_head.sum(-1, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny)


class HeadLatents(NamedTuple):
    """Latents that write through one head, strongest share first."""

    latents: Int[Tensor, " m"]
    shares: Float[Tensor, " m"]


def latents_through_head(shares: Float[Tensor, "F n_heads"], head: int, min_share: float = 0.5) -> HeadLatents:
    """The latents whose decoder puts at least `min_share` of its squared norm on `head`, by share."""
    if not 0 <= head < shares.shape[1]:
        raise ValueError(f"head={head}: expected 0 <= head < {shares.shape[1]}")
    s = shares[:, head]
    idx = (s >= min_share).nonzero(as_tuple=True)[0]
    order = s[idx].sort(descending=True, stable=True).indices
    return HeadLatents(idx[order], s[idx][order])


class AttentionInputs(NamedTuple):
    """What one attention layer computed on a batch of windows (TransformerLens hook values)."""

    pattern: Float[Tensor, "batch n_heads dest src"]  # hook_pattern
    v: Float[Tensor, "batch src n_heads d_head"]  # hook_v, kv heads repeated to the query heads
    z: Float[Tensor, "batch dest n_heads d_head"]  # hook_z


def expand_kv(v: Float[Tensor, "batch src n_kv d_head"], n_heads: int) -> Float[Tensor, "batch src n_heads d_head"]:
    """Grouped-query values per query head: kv head g serves query heads [g·r, (g+1)·r), r = n_heads / n_kv."""
    n_kv = v.shape[2]
    if n_heads % n_kv:
        raise ValueError(f"n_heads={n_heads} is not a multiple of the {n_kv} key/value heads")
    return v.repeat_interleave(n_heads // n_kv, dim=2)


@torch.no_grad()
def attention_inputs(model: HookedTransformer, tokens: Int[Tensor, "batch seq"], layer: int) -> AttentionInputs:
    """Pattern, values (GQA-expanded) and z of layer `layer` on `tokens`, from one forward pass."""
    names = [f"blocks.{layer}.attn.{h}" for h in ("hook_pattern", "hook_v", "hook_z")]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    pattern, v, z = (cache[n] for n in names)
    return AttentionInputs(pattern, expand_kv(v, pattern.shape[1]), z)


class DFA(NamedTuple):
    """Direct feature attribution at chosen (window, destination) rows for chosen latents.

    per_head[i, j, h, s] = A[h, dest_i, s] · (W_enc[f_j, h-slice] · v[s, h]) for row i, latent f_j;
    pre[i, j] = Σ_{h, s} per_head[i, j, h, s] + bias[j] exactly (the latent's pre-activation);
    by_source = per_head summed over heads, by_head = summed over sources."""

    per_head: Float[Tensor, "n m n_heads src"]
    bias: Float[Tensor, " m"]  # b_enc − W_enc·b_dec: the part no source explains
    pre: Float[Tensor, "n m"]

    @property
    def by_source(self) -> Float[Tensor, "n m src"]:
        return self.per_head.sum(2)

    @property
    def by_head(self) -> Float[Tensor, "n m n_heads"]:
        return self.per_head.sum(3)


def dfa(
    sae: SparseAutoencoder,
    inputs: AttentionInputs,
    seq: Int[Tensor, " n"],
    dest: Int[Tensor, " n"],
    latents: Int[Tensor, " m"],
) -> DFA:
    """DFA of `latents` at destinations (seq[i], dest[i]) of `inputs` (see the module docstring).

    Memory: n x m x n_heads x src numbers, never [batch, dest, src, F]."""
    A, v = inputs.pattern, inputs.v
    H, d_head = v.shape[2], v.shape[3]
    if sae.cfg.d_in != H * d_head:
        raise ValueError(f"sae: d_in={sae.cfg.d_in} is not n_heads·d_head = {H}·{d_head} of these attention inputs")
    if seq.shape != dest.shape or seq.ndim != 1:
        raise ValueError(
            f"seq, dest: expected two equal 1-D index tensors, got {tuple(seq.shape)}, {tuple(dest.shape)}"
        )
    dtype = v.dtype
    W = sae.W_enc.detach()[latents].to(dtype).reshape(len(latents), H, d_head)  # [m, H, d_head]
    proj = torch.einsum("bshd,mhd->bmhs", v, W)  # W_enc[f, h]·v[s, h] per window: [batch, m, H, src]
    per_head = A[seq, :, dest][:, None] * proj[seq]  # [n, 1, H, src] x [n, m, H, src]
    bias = (sae.b_enc.detach()[latents] - sae.W_enc.detach()[latents] @ sae.b_dec.detach()).to(dtype)
    return DFA(per_head, bias, per_head.sum((2, 3)) + bias)


# --- saved with a run: shares and the DFA of every latent's top contexts ------------------------

FORMAT, FORMAT_VERSION = "workbench-attention-table", 1


class AttentionTable(NamedTuple):
    """What a hook_z SAE's feature page shows without a model, computed once beside its FeatureTable
    (`attention_table`): F latents, n top contexts of C tokens (the table's), H heads.

    - shares [F, H]: `head_shares`.
    - dfa [F, n, H, C]: DFA terms at each top activation (its destination) from each source of the
      context the table shows (C positions from context_start), per head; 0 in empty slots and at
      sources after the destination.
    - dfa_rest [F, n]: the DFA from sources before the context (so Σ dfa + dfa_rest + bias = pre).
    - bias [F]: b_enc − W_enc·b_dec.
    - pre [F, n]: the latent's pre-activation at each top activation (0 in empty slots).
    """

    shares: Float[Tensor, "F H"]
    dfa: Float[Tensor, "F n H C"]
    dfa_rest: Float[Tensor, "F n"]
    bias: Float[Tensor, " F"]
    pre: Float[Tensor, "F n"]

    def save(self, path) -> None:
        from ..runs import atomic_save_tensors

        tensors = {k: v.contiguous() for k, v in self._asdict().items()}
        atomic_save_tensors(path, tensors, metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})

    @classmethod
    def load(cls, path) -> AttentionTable:
        from safetensors import safe_open

        from ..runs import load_tensors

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("version") != str(FORMAT_VERSION):
            raise ValueError(
                f"{path}: not an attention table of version {FORMAT_VERSION} (format {meta.get('format')!r}, "
                f"version {meta.get('version')!r})"
            )
        state = load_tensors(path)
        missing = set(cls._fields) - set(state)
        if missing:
            raise ValueError(f"{path} is not an attention table (missing {sorted(missing)})")
        return cls(**{k: state[k] for k in cls._fields})


def _pair_terms(
    sae: SparseAutoencoder, inputs: AttentionInputs, w: int, dest: Int[Tensor, " e"], latents: Int[Tensor, " e"]
) -> Float[Tensor, "e H src"]:
    """per_head DFA terms for pairs (dest[i], latents[i]) of window w (one latent per destination)."""
    v, A = inputs.v[w], inputs.pattern[w]  # [src, H, d_head], [H, dest, src]
    H, d_head = v.shape[1], v.shape[2]
    W = sae.W_enc.detach()[latents].to(v.dtype).reshape(len(latents), H, d_head)
    return A[:, dest].transpose(0, 1) * torch.einsum("shd,ehd->ehs", v, W)


@torch.no_grad()
def attention_table(model: HookedTransformer, sae: SparseAutoencoder, table, batch_size: int = 16) -> AttentionTable:
    """The `AttentionTable` of a hook_z SAE over its FeatureTable `table` (same windows, same top
    contexts): one forward pass per `batch_size` windows that hold a top activation."""
    layer = z_layer(sae.cfg.hook_name)
    H = model.cfg.n_heads
    Fn, n = table.top_seq.shape
    C = table.context_acts.shape[2]
    out = torch.zeros(Fn, n, H, C)
    rest, pre = torch.zeros(Fn, n), torch.zeros(Fn, n)
    bias = (sae.b_enc.detach() - sae.W_enc.detach() @ sae.b_dec.detach()).float()
    f_all, j_all = (table.top_seq >= 0).nonzero(as_tuple=True)
    seqs = table.top_seq[f_all, j_all]
    for w0 in range(0, len(table.tokens), batch_size):
        inside = (seqs >= w0) & (seqs < w0 + batch_size)
        if not inside.any():
            continue
        inputs = attention_inputs(model, table.tokens[w0 : w0 + batch_size], layer)
        for w in seqs[inside].unique().tolist():
            here = inside & (seqs == w)
            f, j = f_all[here], j_all[here]
            terms = _pair_terms(sae, inputs, w - w0, table.top_pos[f, j], f).float()  # [e, H, src]
            start = table.context_start[f, j]
            cols = start[:, None] + torch.arange(C)
            out[f, j] = terms.gather(2, cols[:, None, :].expand(-1, H, -1))
            before = torch.arange(terms.shape[2])[None, :] < start[:, None]
            rest[f, j] = (terms.sum(1) * before).sum(1)
            pre[f, j] = terms.sum((1, 2)) + bias[f]
    return AttentionTable(head_shares(sae, H).float(), out, rest, bias, pre)


# --- planted copy contexts -------------------------------------------------------------------


class CopyContexts(NamedTuple):
    """[BOS, r, r] windows with r of L distinct tokens; at every copy step (positions L+1 .. 2L) the
    known source of an induction head is the token after the earlier occurrence, position dest − L + 1."""

    tokens: Int[Tensor, "n seq"]  # seq = 2L + 1
    segment: int  # L

    @property
    def copy_positions(self) -> Int[Tensor, " L"]:
        return torch.arange(self.segment + 1, 2 * self.segment + 1)

    def source(self, dest: Int[Tensor, "*s"]) -> Int[Tensor, "*s"]:
        """The induction source of copy step `dest`: the token after the earlier occurrence."""
        return dest - self.segment + 1


def copy_contexts(n: int, segment: int, token_range: tuple[int, int], bos: int, seed: int = 0) -> CopyContexts:
    """`n` planted [BOS, r, r] windows, each r `segment` distinct tokens drawn from [lo, hi)."""
    lo, hi = token_range
    if not 0 < segment <= hi - lo:
        raise ValueError(f"segment={segment}: expected 1 <= segment <= {hi - lo} (distinct tokens of {token_range})")
    gen = torch.Generator().manual_seed(seed)
    seg = torch.stack([lo + torch.randperm(hi - lo, generator=gen)[:segment] for _ in range(n)])
    return CopyContexts(torch.cat([torch.full((n, 1), bos), seg, seg], dim=1), segment)


class SourceCheck(NamedTuple):
    """How often the DFA argmax over sources hits the planted source, over the copy latents' firings."""

    latents: Int[Tensor, " m"]  # the copy latents (see `copy_latents`)
    firings: int  # their firings on copy steps
    hits: int  # of which the DFA argmax (summed over heads) is the planted source
    per_latent_hits: Float[Tensor, " m"]  # hit rate of each copy latent
    per_latent_firings: Int[Tensor, " m"]

    @property
    def rate(self) -> float:
        return self.hits / max(self.firings, 1)


def firing(z: Float[Tensor, "n seq F"], min_rel_act: float = 0.1) -> Float[Tensor, "n seq F"]:
    """Where each latent fires: activation above `min_rel_act` of its own maximum over `z` (BOS, at
    0, never). A TopK SAE fills its k slots even when fewer features are present, with entries of
    about 1e-3 of a latent's usual size; they are not the latent's firings."""
    return z > min_rel_act * z.amax((0, 1)).clamp_min(torch.finfo(z.dtype).tiny)


def copy_latents(
    z: Float[Tensor, "n seq F"],
    ctx: CopyContexts,
    min_firings: int = 10,
    min_copy_frac: float = 0.9,
    min_rel_act: float = 0.1,
) -> Int[Tensor, " m"]:
    """Latents that fire (`firing`) at least `min_firings` times on the contexts, at least
    `min_copy_frac` of them on copy steps: the copy-step latents."""
    fired = firing(z, min_rel_act)
    total = fired[:, 1:].sum((0, 1))
    on_copy = fired[:, ctx.copy_positions].sum((0, 1))
    keep = (total >= min_firings) & (on_copy >= min_copy_frac * total)
    return keep.nonzero(as_tuple=True)[0]


@torch.no_grad()
def copy_source_check(
    model: HookedTransformer,
    sae: SparseAutoencoder,
    ctx: CopyContexts,
    *,
    min_firings: int = 10,
    min_copy_frac: float = 0.9,
    min_rel_act: float = 0.1,
    batch_size: int = 64,
) -> SourceCheck:
    """On planted copy contexts: the copy latents' (`copy_latents`) firings on copy steps and how many put
    their DFA argmax (over source positions, summed over heads) on the planted source."""
    from .evaluate import feature_activations

    layer = z_layer(sae.cfg.hook_name)
    z = torch.cat([feature_activations(model, sae, sae.cfg.hook_name, t) for t in ctx.tokens.split(batch_size)])
    latents = copy_latents(z, ctx, min_firings, min_copy_frac, min_rel_act)
    fired = firing(z, min_rel_act)
    hits = torch.zeros(len(latents), dtype=torch.long)
    count = torch.zeros(len(latents), dtype=torch.long)
    copy = ctx.copy_positions
    for b0 in range(0, len(ctx.tokens), batch_size):
        toks = ctx.tokens[b0 : b0 + batch_size]
        inputs = attention_inputs(model, toks, layer)
        for j, f in enumerate(latents.tolist()):
            seq, step = fired[b0 : b0 + len(toks), copy, f].nonzero(as_tuple=True)
            if not len(seq):
                continue
            dest = copy[step]
            got = dfa(sae, inputs, seq, dest, torch.tensor([f])).by_source[:, 0].argmax(-1)
            hits[j] += int((got == ctx.source(dest)).sum())
            count[j] += len(seq)
    return SourceCheck(latents, int(count.sum()), int(hits.sum()), hits.double() / count.clamp_min(1), count)


@dataclass(frozen=True)
class CopySAEConfig:
    """A small hook_z SAE trained on a model's text and planted copy contexts, half the rows each."""

    layer: int = doc(1, "the attention layer whose hook_z the SAE reads")
    d_sae: int = doc(1024, "latents")
    k: int = doc(8, "active latents per token (TopK)")
    tokens: int = doc(400_000, "training tokens (rows are reused when fewer are computed)")
    text_windows: int = doc(1500, "windows of the model's own text among the rows")
    copy_windows: int = doc(1500, "planted [BOS, r, r] windows among the rows")
    segment: int = doc(20, "L, tokens of r (distinct); the text windows are as long, 2L + 1")
    token_range: tuple[int, int] | None = doc(None, "ids r is drawn from; none: tasks.random_token_range")
    batch_size: int = doc(1024, "tokens per step")
    lr: float = doc(4e-3, "Adam learning rate")
    seed: int = doc(0, "windows, contexts and initialisation")


def copy_token_range(model: HookedTransformer, bos: int, cfg: CopySAEConfig) -> tuple[int, int]:
    from ..tasks import random_token_range

    return random_token_range(model.cfg.d_vocab, bos, cfg.token_range)


def train_copy_sae(
    model: HookedTransformer, text: Int[Tensor, " n"], bos: int, cfg: CopySAEConfig, progress: bool = False
) -> SparseAutoencoder:
    """Train a TopK SAE on blocks.{layer}.attn.hook_z rows (heads concatenated) of `text` windows and
    planted copy contexts (seed + 1; `copy_source_check` on other seeds is then held out)."""
    from ..activations import ActivationStore, TensorSource, capture
    from ..corpus import windows
    from .config import SAEConfig, SAETrainConfig
    from .trainer import train_sae

    hook = f"blocks.{cfg.layer}.attn.hook_z"
    length = 2 * cfg.segment + 1
    gen = torch.Generator().manual_seed(cfg.seed)
    wins = windows(text, length - 1, bos_token_id=bos, n=cfg.text_windows, generator=gen)
    ctx = copy_contexts(cfg.copy_windows, cfg.segment, copy_token_range(model, bos, cfg), bos, seed=cfg.seed + 1)
    rows = torch.cat([capture(model, t, hook)[0][:, 1:].flatten(0, 1) for t in torch.cat([wins, ctx.tokens]).split(64)])
    rows = rows.float()[torch.randperm(len(rows), generator=gen)]
    store = ActivationStore(TensorSource(rows), cfg.batch_size, seed=cfg.seed)
    sae_cfg = SAEConfig(d_in=rows.shape[1], d_sae=cfg.d_sae, k=cfg.k, hook_name=hook)
    train_cfg = SAETrainConfig(total_tokens=cfg.tokens, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    return train_sae(sae_cfg, train_cfg, store, progress=progress).eval()


def is_hook_z(hook_name: str) -> bool:
    """Whether an SAE on `hook_name` gets head shares and DFA (an attention output hook_z)."""
    return has_head_axis(hook_name) and hook_name.endswith("attn.hook_z")
