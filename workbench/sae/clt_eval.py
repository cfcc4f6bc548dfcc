"""CE loss recovered with several MLPs replaced at once: a cross-layer transcoder, or a set of
per-layer transcoders, spliced into every layer it covers in one forward pass.

Each replaced layer j's MLP output becomes the replacement's ŷ_j, computed from the inputs the
spliced model itself produces (layer j's input already carries the earlier replacements'
errors), so the figure is the replacement model's, not each layer's in isolation. As
evaluate.splice_metrics, position 0 (BOS) keeps its clean activation everywhere, and

    recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean)

with CE_zero the model with all those MLP outputs zeroed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..activations import validate_hook_name
from .clt import CrossLayerTranscoder
from .model import SparseAutoencoder

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

# (layer j, every replaced layer's input so far as [n, d] rows) -> ŷ_j [n, d_out]
LayerOutput = Callable[[int, list[Tensor]], Tensor]


class SpliceCE(NamedTuple):
    ce_clean: float  # mean next-token CE of the model
    ce_spliced: float  # ... with every covered MLP output replaced
    ce_zero: float  # ... with every covered MLP output zeroed
    recovered: float | None  # (ce_zero − ce_spliced) / (ce_zero − ce_clean); None when the gap is 0
    l0: float  # total positive latents per token over the covered layers (held-out, inference)


def clt_output(clt: CrossLayerTranscoder) -> tuple[LayerOutput, Callable[[list[Tensor]], float]]:
    """A CLT's ŷ_j = b_dec[j] + Σ_{l ≤ j} z_l W_dec[l][:, j − l] (+ x_j W_skip[j]ᵀ) from the inputs
    so far (z_l its inference encoding), and its total L0 over the inputs of every layer."""

    def code(layer: int, x: Tensor) -> Tensor:
        view = clt.layer(layer)
        return clt.rule.encode(view, view.pre_acts(x))

    def output(j: int, xs: list[Tensor]) -> Tensor:
        y = clt.b_dec[j] + sum(code(src, xs[src]) @ clt.W_dec[src][:, j - src] for src in range(j + 1))
        return y + xs[j] @ clt.W_skip[j].T if clt.cfg.skip else y

    return output, lambda xs: sum(float((code(j, x) > 0).sum(1).double().mean()) for j, x in enumerate(xs))


def transcoders_output(saes: Sequence[SparseAutoencoder]) -> tuple[LayerOutput, Callable[[list[Tensor]], float]]:
    """Per-layer transcoders: ŷ_j = saes[j](x_j), and their total L0."""

    def output(j: int, xs: list[Tensor]) -> Tensor:
        return saes[j](xs[j]).x_hat

    return output, lambda xs: sum(float((s.encode(x) > 0).sum(1).double().mean()) for s, x in zip(saes, xs))


@torch.no_grad()
def splice_ce(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch seq"],
    input_hooks: Sequence[str],
    target_hooks: Sequence[str],
    replacement: tuple[LayerOutput, Callable[[list[Tensor]], float]],
    batch_size: int = 32,
) -> SpliceCE:
    """CE with every target hook's activation replaced (`clt_output` / `transcoders_output`)."""
    if len(input_hooks) != len(target_hooks) or not input_hooks:
        raise ValueError(f"hooks: {len(input_hooks)} input and {len(target_hooks)} target hooks; one of each per layer")
    for name in (*input_hooks, *target_hooks):
        validate_hook_name(model, name)
    output, count_l0 = replacement
    totals = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    l0, n = 0.0, 0
    for chunk in tokens.split(batch_size):
        xs: list[Tensor] = []

        def read(act: Float[Tensor, "b s d"], hook) -> None:
            xs.append(act[:, 1:].reshape(-1, act.shape[-1]))

        def write(j: int, kind: str):
            def hook(act: Float[Tensor, "b s d"], hook) -> Tensor:
                out = act.clone()
                rest = out[:, 1:]
                new = torch.zeros_like(rest) if kind == "zero" else output(j, xs).view(rest.shape).to(act.dtype)
                out[:, 1:] = new
                return out

            return hook

        totals["clean"] += float(model(chunk, return_type="loss", loss_per_token=True).sum())
        for kind in ("spliced", "zero"):
            xs.clear()
            hooks = [(h, read) for h in input_hooks] + [(h, write(j, kind)) for j, h in enumerate(target_hooks)]
            loss = model.run_with_hooks(chunk, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
            totals[kind] += float(loss.sum())
            if kind == "spliced":
                l0 += count_l0(xs) * len(xs[0])
        n += chunk.shape[0] * (chunk.shape[1] - 1)
    ce = {k: v / n for k, v in totals.items()}
    gap = ce["zero"] - ce["clean"]
    recovered = (ce["zero"] - ce["spliced"]) / gap if abs(gap) > 1e-9 else None
    return SpliceCE(ce["clean"], ce["spliced"], ce["zero"], recovered, l0 / n)  # rows = loss positions
