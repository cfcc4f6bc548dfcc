"""Cross-layer transcoders (CLT): one encoder per layer, a decoder from each layer's latents to
that layer's MLP output and every later one's (Ameisen et al. 2025; circuit-tracer's
CrossLayerTranscoder has the same parameter shapes).

For L layers, F latents per layer, inputs x_l (layer l's MLP input) and targets y_l (its output):

    pre_l = x_l W_enc[l]ᵀ + b_enc[l]                         [B, F]
    z_l   = ReLU(pre_l) on layer l's selection, else 0      [B, F]
    ŷ_j   = b_dec[j] + Σ_{l ≤ j} z_l W_dec[l][:, j − l]      (+ x_j W_skip[j]ᵀ with skip)

W_dec[l] is [F, L − l, d_out]: latent i of layer l writes one vector to each layer j ≥ l. Each
layer selects on its own (TopK, g-SAE, Mutual or Feature Choice: the trainer's rules, through a
per-layer view of the parameters, `LayerView`); g-SAE's score reads the loss gradient at every
target the latent writes, Σ_j |…| becomes |Σ_j ⟨g_j, W_dec[l][i, j − l]⟩|, the first-order
loss effect of the whole write. Each layer's firing statistics, dead latents and JumpReLU
threshold are its own. The loss is the mean over layers of each target's FVU (so a CLT's
figure reads as a per-layer transcoder's), plus the aux loss of each layer's dead latents
reconstructing the residuals of the targets they write.

The training forward has two paths, as the SAE trainer: `forward` (dense [B, F] codes, the
reference) and `forward_sparse` (sparse.py: only the kept entries live on, decoded by
embedding_bag, encoder gradients only at kept rows). Training is `clt_train.train_clt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from ..fielddoc import REQUIRED, FieldError, check_choices, doc
from .config import AUX_LOSSES, SAEConfig
from .losses import aux_loss, aux_zipf_weights, auxk_weights, fvu
from .model import init_rows
from .parallel import SINGLE
from .selection import RULES, Rule, get_rule
from .sparse import Kept, decode, encoder_values, pre_block

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class CLTConfig:
    """One cross-layer transcoder over `n_layers` consecutive MLPs."""

    n_layers: int = doc(REQUIRED, "layers L it spans (each has an encoder; layer l decodes to layers l..L-1)")
    d_in: int = doc(REQUIRED, "width of each layer's input (the MLP's input)")
    d_sae: int = doc(REQUIRED, "latents F per layer (L·F in all)")
    k: int = doc(32, "active latents per token in each layer (on average, for mutual/feature choice)")
    selection: str = doc("topk", "each layer's selection rule (sae/selection.py)", choices=RULES)
    beta: float = doc(1.0, "gradient: weight of the loss-effect term in the selection score")
    fc_capacity: str = doc(
        "uniform", 'feature_choice: "uniform" (m = k·B/F) or "zipf" capacities', choices=("uniform", "zipf")
    )
    zipf_alpha: float = doc(1.0, 'feature_choice "zipf": capacity of usage-rank r ∝ r^-alpha')
    aux: str = doc("auxk", '"auxk" (dead latents), "aux_zipf" (dead and under-used), "none"', choices=AUX_LOSSES)
    k_aux: int | None = doc(None, "latents each layer's aux loss uses per token; none: d_out // 2")
    aux_coef: float = doc(1 / 32, "weight of the aux loss")
    dead_tokens: int = doc(1_000_000, "a latent that has not fired for this many tokens is dead")
    threshold_decay: float = doc(0.9, "mutual/feature choice: EMA decay of the inference JumpReLU threshold")
    skip: bool = doc(False, "add a learned d_out x d_in skip matrix per layer, y_hat_l += x_l W_skip[l]^T")
    d_out: int | None = doc(None, "width of each target y_l; none: d_in")
    input_hooks: tuple[str, ...] = doc((), "each layer's input hook, e.g. blocks.0.ln2.hook_normalized (or empty)")
    target_hooks: tuple[str, ...] = doc((), "each layer's target hook, e.g. blocks.0.hook_mlp_out (or empty)")
    model_name: str = doc("", "which model (metadata)")

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise FieldError("n_layers", f"n_layers={self.n_layers}: must be at least 1")
        check_choices(self)
        for name in ("input_hooks", "target_hooks"):
            hooks = tuple(str(h) for h in getattr(self, name))  # JSON gives a list
            object.__setattr__(self, name, hooks)
            _check_hooks(name, hooks, self.n_layers)
        self.layer_config(0)  # the per-layer fields' own checks (SAEConfig), naming the field

    @property
    def d_target(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def aux_k(self) -> int:
        return self.k_aux if self.k_aux is not None else max(1, min(self.d_target // 2, self.d_sae))

    def layer_config(self, layer: int) -> SAEConfig:
        """Layer `layer`'s encoder and decoder as the SAEConfig of a transcoder whose target is the
        concatenation of the targets of layers layer..L-1 (what its rule and aux loss see)."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer={layer}: expected 0..{self.n_layers - 1}")
        return SAEConfig(
            d_in=self.d_in,
            d_sae=self.d_sae,
            k=self.k,
            selection=self.selection,
            beta=self.beta,
            fc_capacity=self.fc_capacity,
            zipf_alpha=self.zipf_alpha,
            aux=self.aux,
            k_aux=self.aux_k,
            aux_coef=self.aux_coef,
            dead_tokens=self.dead_tokens,
            threshold_decay=self.threshold_decay,
            transcoder=True,
            d_out=(self.n_layers - layer) * self.d_target,
            hook_name=self.input_hooks[layer] if self.input_hooks else "",
            target_hook=self.target_hooks[layer] if self.target_hooks else "",
            model_name=self.model_name,
        )


def _check_hooks(name: str, hooks: tuple[str, ...], n_layers: int) -> None:
    if not hooks:
        return
    if len(hooks) != n_layers:
        raise FieldError(name, f"{name}: {len(hooks)} hooks for n_layers={n_layers}; expected one per layer or none")
    blocks = [int(m.group(1)) for m in map(_BLOCK.match, hooks) if m]
    if len(blocks) == n_layers and blocks != sorted(set(blocks)):
        raise FieldError(name, f"{name}={hooks}: expected one hook per layer, in increasing block order")


class LayerView:
    """Layer l of a CLT as the selection rules see an SAE (selection.SAEView): its encoder, its
    decoder flattened to [F, (L − l)·d_out], and views of its statistics buffers (a rule's
    in-place threshold update writes the CLT's own buffer)."""

    def __init__(self, clt: CrossLayerTranscoder, layer: int):
        self.cfg, self.layout = clt.layer_cfgs[layer], SINGLE
        self.W_enc, self.b_enc = clt.W_enc[layer], clt.b_enc[layer]
        self.W_dec = clt.W_dec[layer].flatten(1)
        self.b_dec = clt.b_dec[layer:].flatten()
        self.input_bias = clt.W_enc.new_zeros(clt.cfg.d_in)
        self.threshold, self.threshold_updates = clt.threshold[layer], clt.threshold_updates[layer]
        self.usage = clt.usage[layer]

    def pre_acts(self, x: Float[Tensor, "B d"], rows: Tensor | None = None) -> Float[Tensor, "B F"]:
        if rows is None:
            return pre_block(x, self.W_enc, self.b_enc)
        return pre_block(x, self.W_enc[rows], self.b_enc[rows])


class CLTOutput(NamedTuple):
    y_hat: Float[Tensor, "B L d_out"]  # every layer's reconstructed MLP output
    z: Float[Tensor, "B L F"]  # kept activations, zero elsewhere
    mask: Bool[Tensor, "B L F"]  # which entries the rules kept
    pre: Float[Tensor, "B L F"]


class CLTSparseOutput(NamedTuple):
    """`forward_sparse`'s result: each layer's kept entries instead of [B, F] tensors."""

    y_hat: Float[Tensor, "B L d_out"]
    kept: list[Kept]  # per layer
    vals: list[Float[Tensor, " n"]]  # ReLU(pre) at each layer's kept entries (differentiable)
    aux_pre: list[Tensor | None]  # per layer, pre-activations at its aux candidates (differentiable)


class CrossLayerTranscoder(nn.Module):
    """Parameters: W_enc [L, F, d_in], b_enc [L, F], W_dec[l] [F, L − l, d_out] (a ParameterList),
    b_dec [L, d_out], W_skip [L, d_out, d_in] with cfg.skip. The decoder starts at 0 and is left
    free, as the SAE trainer's transcoders (model.py)."""

    def __init__(self, cfg: CLTConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        L, F, d, d_out = cfg.n_layers, cfg.d_sae, cfg.d_in, cfg.d_target
        self.layer_cfgs = [cfg.layer_config(layer) for layer in range(L)]
        # each layer's encoder rows from its own seed, so layer 0 of a CLT starts as a transcoder would
        enc = torch.stack([init_rows(F, d, seed + 104_729 * layer, slice(0, F)) for layer in range(L)])
        self.W_enc = nn.Parameter(enc)
        self.b_enc = nn.Parameter(torch.zeros(L, F))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(F, L - layer, d_out)) for layer in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, d_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(L, d_out, d))
        self.register_buffer("threshold", torch.zeros(L, F))
        self.register_buffer("threshold_updates", torch.zeros(L, dtype=torch.long))
        self.register_buffer("tokens_since_fired", torch.zeros(L, F, dtype=torch.long))
        self.register_buffer("usage", torch.full((L, F), cfg.k / F))

    @property
    def rule(self) -> Rule:
        return get_rule(self.cfg.selection)

    def layer(self, layer: int) -> LayerView:
        return LayerView(self, layer)

    def _check(self, x: Tensor, grads: Tensor | None = None) -> None:
        L, d = self.cfg.n_layers, self.cfg.d_in
        if x.ndim != 3 or x.shape[1:] != (L, d):
            raise ValueError(f"x: expected [batch, n_layers={L}, d_in={d}], got {tuple(x.shape)}")
        want = (len(x), L, self.cfg.d_target)
        if grads is not None and grads.shape != want:
            raise ValueError(
                f"grads: expected the loss gradients at the targets, {list(want)}, got {list(grads.shape)}"
            )

    def _layer_grads(self, grads: Tensor | None, layer: int) -> Tensor | None:
        """The gradients at the targets layer `layer` writes, flattened as its decoder is."""
        return None if grads is None else grads[:, layer:].flatten(1)

    def pre_acts(self, x: Float[Tensor, "B L d"]) -> Float[Tensor, "B L F"]:
        self._check(x)
        return torch.baddbmm(self.b_enc.unsqueeze(1), x.transpose(0, 1), self.W_enc.transpose(1, 2)).transpose(0, 1)

    def encode(self, x: Float[Tensor, "B L d"]) -> Float[Tensor, "B L F"]:
        """Inference code (no batch coupling): each layer's rule's encoding (TopK, or JumpReLU for MC/FC)."""
        pre = self.pre_acts(x)
        return torch.stack([self.rule.encode(self.layer(j), pre[:, j]) for j in range(self.cfg.n_layers)], 1)

    def output_bias(self, x: Float[Tensor, "B L d"]) -> Float[Tensor, "..."]:
        if not self.cfg.skip:
            return self.b_dec
        return self.b_dec + torch.einsum("bld,lod->blo", x, self.W_skip)

    def decode(self, z: Float[Tensor, "B L F"], x: Float[Tensor, "B L d"] | None = None) -> Float[Tensor, "B L d_out"]:
        """ŷ_j = b_dec[j] + Σ_{l ≤ j} z_l W_dec[l][:, j − l] (+ x_j W_skip[j]ᵀ: a skip CLT needs x)."""
        if self.cfg.skip and x is None:
            raise ValueError("x: a skip CLT's output includes x W_skip^T; pass decode(z, x)")
        B, L = z.shape[0], self.cfg.n_layers
        writes = [(z[:, layer] @ self.W_dec[layer].flatten(1)).view(B, L - layer, -1) for layer in range(L)]
        return self._sum_writes(writes) + (self.output_bias(x) if self.cfg.skip else self.b_dec)

    def _sum_writes(self, writes: list[Tensor]) -> Float[Tensor, "B L d_out"]:
        """Target j's reconstruction without bias: Σ over source layers l ≤ j of writes[l][:, j − l]."""
        L = self.cfg.n_layers
        return torch.stack([sum(writes[src][:, j - src] for src in range(j + 1)) for j in range(L)], 1)

    def forward(self, x: Float[Tensor, "B L d"], grads: Float[Tensor, "B L d_out"] | None = None) -> CLTOutput:
        """Training mode applies each layer's selection rule; eval mode the inference encoding."""
        self._check(x, grads)
        pre = self.pre_acts(x)
        if self.training:
            layers = range(self.cfg.n_layers)
            with torch.no_grad():
                masks = [
                    self.rule.select(self.layer(j), pre[:, j].detach(), self._layer_grads(grads, j)) for j in layers
                ]
            mask = torch.stack(masks, 1)
            z = torch.where(mask, pre.relu(), 0.0)
        else:
            z = self.encode(x)
            mask = z > 0
        return CLTOutput(self.decode(z, x), z, mask, pre)

    def forward_sparse(
        self,
        x: Float[Tensor, "B L d"],
        grads: Float[Tensor, "B L d_out"] | None = None,
        aux_cols: list[Tensor | None] | None = None,
    ) -> CLTSparseOutput:
        """The training forward of the sparse path: the same ŷ as `forward` in training mode; the
        backward touches only each layer's kept (and aux candidate `aux_cols[l]`) rows."""
        self._check(x, grads)
        L = self.cfg.n_layers
        aux_cols = [None] * L if aux_cols is None else aux_cols
        kept, vals, aux_pre, writes = [], [], [], []
        for layer in range(L):
            view = self.layer(layer)
            k = self.rule.select_kept(view, x[:, layer], self._layer_grads(grads, layer), aux_cols[layer])
            v, a = encoder_values(k, x[:, layer], view.input_bias, view.W_enc, view.b_enc, aux_cols[layer])
            writes.append(decode(k, v, view.W_dec).view(len(x), L - layer, -1))
            kept.append(k)
            vals.append(v)
            aux_pre.append(a)
        return CLTSparseOutput(self._sum_writes(writes) + self.output_bias(x), kept, vals, aux_pre)

    # --- bookkeeping the trainer calls --------------------------------------------------------

    def dead_mask(self) -> Bool[Tensor, "L F"]:
        return self.tokens_since_fired >= self.cfg.dead_tokens

    @torch.no_grad()
    def update_stats(
        self, layer: int, cols: Int[Tensor, " n"], vals: Float[Tensor, " n"], tokens: int, usage_decay: float = 0.99
    ) -> None:
        """After a training batch, from layer `layer`'s kept entries: its dead-latent clocks, usage
        EMA and its rule's threshold."""
        fired = vals > 0
        counts = torch.zeros(self.cfg.d_sae, device=cols.device).index_add_(
            0, cols[fired], torch.ones(int(fired.sum()), device=cols.device)
        )
        self.tokens_since_fired[layer] += tokens
        self.tokens_since_fired[layer][counts > 0] = 0
        self.usage[layer].mul_(usage_decay).add_(counts / tokens, alpha=1 - usage_decay)
        self.rule.update_threshold(self.layer(layer), cols[fired], vals[fired])

    @torch.no_grad()
    def init_b_dec(self, sample: Float[Tensor, "n L d_out"], method: str = "geometric_median") -> None:
        from .model import geometric_median

        for layer in range(self.cfg.n_layers):
            if method == "geometric_median":
                self.b_dec[layer].copy_(geometric_median(sample[:, layer]))
            elif method == "mean":
                self.b_dec[layer].copy_(sample[:, layer].mean(0))
            elif method != "zeros":
                raise ValueError(f"b_dec_init={method!r}: expected 'geometric_median', 'mean' or 'zeros'")


class CLTStepOutput(NamedTuple):
    """One batch's forward pass and losses (`clt_losses`), the same on the dense and sparse paths."""

    loss: Float[Tensor, ""]
    """What is backpropagated: recon + aux_coef · aux."""
    fvu: Float[Tensor, ""]
    """Mean over layers of each target's FVU (the reconstruction term)."""
    fvus: Float[Tensor, " L"]
    """Each layer's target FVU, detached."""
    aux: Float[Tensor, ""]
    """Mean over layers of each layer's aux loss (0 without one)."""
    dead: Bool[Tensor, "L F"]
    """Which latents counted as dead when the step began."""
    l0: float
    """Total positive latents per token over all layers (the figure to match a per-layer set's total)."""
    l0s: list[float]
    """Each layer's positive latents per token."""
    cols: list[Int[Tensor, " n"]]
    """Each layer's kept entries' latents."""
    vals: list[Float[Tensor, " n"]]
    """... and their values, detached (what the firing statistics are updated from)."""
    tokens: int


def _aux_weights(clt: CrossLayerTranscoder, dead: Tensor, layer: int) -> Tensor | None:
    cfg = clt.cfg
    if cfg.aux == "none":
        return None
    if cfg.aux == "auxk":
        return auxk_weights(dead[layer]).to(clt.b_dec.dtype)
    return aux_zipf_weights(clt.usage[layer], dead[layer], cfg.k)


def clt_losses(
    clt: CrossLayerTranscoder,
    x: Float[Tensor, "B L d"],
    y: Float[Tensor, "B L d_out"],
    grads: Float[Tensor, "B L d_out"] | None = None,
    sparse: bool = False,
) -> CLTStepOutput:
    """Forward pass and losses of one batch on the sparse path (`sparse`) or the dense reference path."""
    L = clt.cfg.n_layers
    if y.shape != (len(x), L, clt.cfg.d_target):
        raise ValueError(f"y: expected [{len(x)}, {L}, {clt.cfg.d_target}], got {list(y.shape)}")
    dead = clt.dead_mask()
    weights = [_aux_weights(clt, dead, layer) for layer in range(L)]
    rows = [None if w is None else (w > 0).nonzero().squeeze(1) for w in weights]
    if sparse:
        out = clt.forward_sparse(x, grads, rows)
        y_hat, vals, cols = out.y_hat, out.vals, [k.cols for k in out.kept]
    else:
        dense = clt(x, grads)
        y_hat = dense.y_hat
        cols = [dense.mask[:, layer].nonzero()[:, 1] for layer in range(L)]  # by token, then latent
        vals = [dense.z[:, layer][dense.mask[:, layer]] for layer in range(L)]
    fvus = torch.stack([fvu(y[:, j], y_hat[:, j]) for j in range(L)])
    aux = []
    for layer in range(L):
        if weights[layer] is None:
            continue
        if sparse:
            pre = (
                out.aux_pre[layer]
                if out.aux_pre[layer] is not None
                else clt.layer(layer).pre_acts(x[:, layer], rows[layer])
            )
            w_dec, w = clt.layer(layer).W_dec[rows[layer]], weights[layer][rows[layer]]
        else:
            pre, w_dec, w = dense.pre[:, layer], clt.layer(layer).W_dec, weights[layer]
        residual = (y - y_hat)[:, layer:].flatten(1)
        aux.append(aux_loss(pre, residual, w_dec, w, clt.cfg.aux_k, SINGLE))
    aux_mean = torch.stack(aux).mean() if aux else fvus.sum() * 0.0
    recon = fvus.mean()
    l0s = [float((v > 0).sum()) / len(x) for v in vals]
    return CLTStepOutput(
        recon + clt.cfg.aux_coef * aux_mean,
        recon,
        fvus.detach(),
        aux_mean,
        dead,
        sum(l0s),
        l0s,
        cols,
        [v.detach() for v in vals],
        len(x),
    )
