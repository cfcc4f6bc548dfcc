"""A cross-layer transcoder's data: every layer's (input, target) pair of each token, from one
forward pass, as one row.

A row holds the L inputs concatenated ([L·d_in], layer-major) as ActivationBatch.acts and the L
targets ([L·d_out]) as .targets (and, with gradients, dL/d(target_l) for every l as .grads), so
the ordinary ActivationStore shuffles, batches, shards and resumes it, and cache_activations
writes it to disk unchanged. `split_layers` turns a batch's rows back into [B, L, d].

Gradients are the total derivative of the summed next-token loss at each target: a zero tensor
is added at every target hook and differentiated, so the gradient at layer 0's MLP output still
flows through the later MLPs (what a latent's write there changes, to first order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..activations import ActivationBatch, frozen, hook_dim, stop_layer, token_rows, validate_hook_name
from ..corpus import windows
from ..fielddoc import REQUIRED, FieldError, doc

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def mlp_hooks(layers: range | list[int], read: str = "ln2.hook_normalized") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Input and target hooks of the MLPs of `layers`: blocks.l.{read} and blocks.l.hook_mlp_out."""
    layers = list(layers)
    return tuple(f"blocks.{layer}.{read}" for layer in layers), tuple(
        f"blocks.{layer}.hook_mlp_out" for layer in layers
    )


@dataclass(frozen=True)
class CLTStoreConfig:
    """Where a CLT's activations come from and how chunks are cut."""

    input_hooks: tuple[str, ...] = doc(REQUIRED, "each layer's MLP input, e.g. blocks.0.ln2.hook_normalized")
    target_hooks: tuple[str, ...] = doc(REQUIRED, "each layer's MLP output, e.g. blocks.0.hook_mlp_out")
    buffer_tokens: int = doc(65_536, "tokens per chunk, computed at once and shuffled into batches")
    seq_len: int = doc(128, "tokens per window after BOS")
    with_grads: bool = doc(False, "also capture dL/d(target) at every target (g-SAE selection needs it)")
    skip_bos: bool = doc(True, "drop the BOS position (its activations are outliers)")
    seed: int = doc(0, "which windows each chunk holds")
    model_batch: int = doc(32, "windows per model forward pass")

    def __post_init__(self) -> None:
        for name in ("input_hooks", "target_hooks"):
            object.__setattr__(self, name, tuple(str(h) for h in getattr(self, name)))
        if not self.input_hooks:
            raise FieldError("input_hooks", "input_hooks: expected one hook per layer, got none")
        if len(self.target_hooks) != len(self.input_hooks):
            raise FieldError(
                "target_hooks",
                f"target_hooks: {len(self.target_hooks)} hooks for {len(self.input_hooks)} input hooks; one per layer",
            )


def capture_layers(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch seq"],
    input_hooks: tuple[str, ...],
    target_hooks: tuple[str, ...],
    with_grads: bool = False,
) -> tuple[
    Float[Tensor, "batch seq L d"], Float[Tensor, "batch seq L d_out"], Float[Tensor, "batch seq L d_out"] | None
]:
    """Every layer's input and target (and the loss gradient at each target) from one pass."""
    for name in (*input_hooks, *target_hooks):
        validate_hook_name(model, name)
    names = [*input_hooks, *target_hooks]
    if not with_grads:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=stop_layer(names))
        x = torch.stack([token_rows(cache[h], h) for h in input_hooks], 2)
        return x, torch.stack([token_rows(cache[h], h) for h in target_hooks], 2), None
    saved: dict[str, Tensor] = {}
    probes: dict[str, Tensor] = {}

    def keep(act, hook, name):
        saved[name] = act.detach()

    def probe(act, hook, name):
        saved[name] = act.detach()
        probes[name] = torch.zeros_like(act, requires_grad=True)
        return act + probes[name]

    hooks = [(h, lambda a, hook, h=h: keep(a, hook, h)) for h in input_hooks if h not in target_hooks]
    hooks += [(h, lambda a, hook, h=h: probe(a, hook, h)) for h in target_hooks]
    with frozen(model.parameters()), torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        loss = model(tokens, return_type="loss", loss_per_token=True).sum()
        grads = torch.autograd.grad(loss, [probes[h] for h in target_hooks])
    x = torch.stack([token_rows(saved[h], h) for h in input_hooks], 2)
    y = torch.stack([token_rows(saved[h], h) for h in target_hooks], 2)
    return x, y, torch.stack([token_rows(g, h) for g, h in zip(grads, target_hooks)], 2)


def split_layers(rows: Float[Tensor, "B Ld"], n_layers: int) -> Float[Tensor, "B L d"]:
    """A row of L concatenated per-layer vectors as [B, L, d]."""
    if rows.ndim != 2 or rows.shape[1] % n_layers:
        raise ValueError(f"rows: expected [batch, n_layers·d] with n_layers={n_layers}, got {list(rows.shape)}")
    return rows.view(len(rows), n_layers, -1)


class CLTSource:
    """Chunks of a model's every-layer (input, target) rows over a token stream (a ChunkSource)."""

    def __init__(self, model: HookedTransformer, stream: Int[Tensor, " n"], cfg: CLTStoreConfig, bos_token_id: int):
        if cfg.seq_len >= model.cfg.n_ctx:
            raise ValueError(f"seq_len={cfg.seq_len} must be < the model's n_ctx={model.cfg.n_ctx}")
        self.model, self.stream, self.cfg, self.bos = model, stream, cfg, bos_token_id
        self.n_layers = len(cfg.input_hooks)
        widths = {hook_dim(model, h) for h in cfg.input_hooks}
        outs = {hook_dim(model, h) for h in cfg.target_hooks}
        if len(widths) != 1 or len(outs) != 1:
            raise ValueError(f"hooks: every layer's input (widths {widths}) and target ({outs}) must be one width")
        self.d_in, self.d_layer_out = widths.pop(), outs.pop()
        self.d, self.d_out = self.n_layers * self.d_in, self.n_layers * self.d_layer_out
        self.has_grads, self.has_targets = cfg.with_grads, True

    def chunk(self, i: int) -> ActivationBatch:
        cfg = self.cfg
        per_seq = cfg.seq_len + (0 if cfg.skip_bos else 1)
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + i)
        seqs = windows(
            self.stream, cfg.seq_len, bos_token_id=self.bos, n=-(-cfg.buffer_tokens // per_seq), generator=gen
        )
        start = 1 if cfg.skip_bos else 0
        xs, ys, gs = [], [], []
        for batch in seqs.split(cfg.model_batch):
            x, y, g = capture_layers(self.model, batch, cfg.input_hooks, cfg.target_hooks, cfg.with_grads)
            xs.append(x[:, start:].reshape(-1, self.d))
            ys.append(y[:, start:].reshape(-1, self.d_out))
            if g is not None:
                gs.append(g[:, start:].reshape(-1, self.d_out))
        n = cfg.buffer_tokens
        return ActivationBatch(torch.cat(xs)[:n], torch.cat(gs)[:n] if gs else None, torch.cat(ys)[:n])


class LayerSource:
    """One layer's (input, target) columns of a CLT source's chunks: a per-layer transcoder's
    source on exactly the CLT's tokens (the comparison in benchmarks/clt.py)."""

    def __init__(self, source, layer: int, n_layers: int):
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer={layer}: expected 0..{n_layers - 1}")
        self.source, self.layer, self.n_layers = source, layer, n_layers
        self.d, self.d_out = source.d // n_layers, source.d_out // n_layers
        self.has_grads, self.has_targets = source.has_grads, True

    def _cols(self, t: Tensor | None, width: int) -> Tensor | None:
        return None if t is None else t[:, self.layer * width : (self.layer + 1) * width]

    def chunk(self, i: int) -> ActivationBatch:
        b = self.source.chunk(i)
        return ActivationBatch(
            self._cols(b.acts, self.d), self._cols(b.grads, self.d_out), self._cols(b.targets, self.d_out)
        )
