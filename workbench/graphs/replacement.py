"""The local replacement model of one prompt (Ameisen et al. 2025, circuit-tracer's ReplacementModel):

- each MLP with a transcoder becomes the transcoder's active features plus an error node,
  e_L[p] = MLP_L(x)[p] - TC_L(x)[p], held fixed; an MLP without one is its error node alone;
- attention patterns (every hook_pattern) and norm scales (every hook_scale) are frozen at their
  values on the prompt;

so every quantity downstream is linear in the node values: token embeddings, feature activations
and error vectors. `setup` runs the prompt once and records what is frozen and what the nodes are;
`LinearPass` (attribute.py) replays it with gradients flowing only through the linear paths.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .transcoder import INPUT_HOOK, OUTPUT_HOOK, Transcoder

FROZEN_SUFFIXES = ("hook_pattern", "hook_scale")


class Replacement(NamedTuple):
    """What one clean run of the prompt fixes: the frozen tensors and the nodes' values."""

    tokens: Int[Tensor, " n"]
    logits: Float[Tensor, "n V"]
    frozen: dict[str, Tensor]  # hook name -> its value on the prompt (batch 1): patterns, norm scales
    mlp_layers: list[int]  # layers with an MLP (one error node per position each)
    features: Int[Tensor, "m 3"]  # (layer, pos, latent) of every active feature, sorted
    activations: Float[Tensor, " m"]
    decoder: Float[Tensor, "m d"]  # activation x decoder row: what each feature writes
    encoder: Float[Tensor, "m d"]  # each feature's encoder column: what it reads
    errors: Float[Tensor, "E n d"]  # error vector of each MLP layer (mlp_layers order)
    mlp_out: Float[Tensor, "E n d"]  # the MLPs' true outputs on the prompt
    embed: Float[Tensor, "n d"]  # hook_embed: the token nodes' vectors


def mlp_layers(model) -> list[int]:
    return [] if model.cfg.attn_only else list(range(model.cfg.n_layers))


@torch.no_grad()
def setup(model, tokens: Int[Tensor, " n"], transcoders: dict[int, Transcoder], bos: int | None = None) -> Replacement:
    """One forward pass of `tokens` recording the frozen tensors, the MLPs' inputs and outputs, and
    the transcoders' activations. With `bos` equal to tokens[0], the BOS position holds no feature
    and no error node (its MLP output is a constant, as circuit-tracer's zero_bos)."""
    if tokens.ndim != 1:
        raise ValueError(f"tokens: expected one prompt [n], got shape {tuple(tokens.shape)}")
    layers = mlp_layers(model)
    unknown = sorted(set(transcoders) - set(layers))
    if unknown:
        raise ValueError(f"transcoders for layers {unknown}: the model's MLP layers are {layers}")
    cache: dict[str, Tensor] = {}

    def keep(t: Tensor, hook) -> None:
        cache[hook.name] = t.detach().clone()

    wanted = lambda name: name.endswith(FROZEN_SUFFIXES) or name.endswith((INPUT_HOOK, OUTPUT_HOOK, "hook_embed"))  # noqa: E731
    logits = model.run_with_hooks(tokens[None].to(model.cfg.device), fwd_hooks=[(wanted, keep)])[0]
    frozen = {k: v for k, v in cache.items() if k.endswith(FROZEN_SUFFIXES)}
    skip_bos = bos is not None and int(tokens[0]) == bos
    feats, acts, dec, enc, errors, outs = [], [], [], [], [], []
    for l in layers:
        out = cache[f"blocks.{l}.{OUTPUT_HOOK}"][0]
        err = out.clone()
        if l in transcoders:
            tc, x = transcoders[l], cache[f"blocks.{l}.{INPUT_HOOK}"][0]
            a = tc.activate(tc.encode_pre(x))
            err = out - tc(x)
            if skip_bos:
                a[0] = 0
            pos, lat = a.nonzero(as_tuple=True)
            feats.append(torch.stack([torch.full_like(pos, l), pos, lat], 1))
            acts.append(a[pos, lat])
            dec.append(a[pos, lat, None] * tc.W_dec[lat])
            enc.append(tc.W_enc[:, lat].T)
        if skip_bos:
            err[0] = 0
        errors.append(err)
        outs.append(out)
    d = model.cfg.d_model
    empty = lambda *shape: torch.zeros(*shape, dtype=logits.dtype)  # noqa: E731
    return Replacement(
        tokens=tokens.cpu(),
        logits=logits,
        frozen=frozen,
        mlp_layers=layers,
        features=torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long),
        activations=torch.cat(acts) if acts else empty(0),
        decoder=torch.cat(dec) if dec else empty(0, d),
        encoder=torch.cat(enc) if enc else empty(0, d),
        errors=torch.stack(errors) if errors else empty(0, len(tokens), d),
        mlp_out=torch.stack(outs) if outs else empty(0, len(tokens), d),
        embed=cache["hook_embed"][0],
    )
