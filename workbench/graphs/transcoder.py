"""The transcoder interface the attribution graphs need, and nothing more (the trainer owns training).

A per-layer transcoder reads the MLP's input and predicts its output:

    x     = blocks.L.ln2.hook_normalized      (the MLP's input, after its norm: weight and bias applied)
    pre   = x @ W_enc + b_enc                 [F]
    a     = sigma(pre)                        TopK k, ReLU, or JumpReLU (pre where pre > threshold)
    y_hat = a @ W_dec + b_dec (+ x @ W_skip.T for a skip transcoder)   -> blocks.L.hook_mlp_out

`ln2.hook_normalized` is the input (not hook_resid_mid) because it is exactly what the MLP reads, so
an MLP can be replaced by a transcoder with no error at all (the completeness check).

On disk a set of transcoders is a folder with one `layer_<L>.safetensors` per replaced layer, keys
W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], optional W_skip [d, d] and threshold [F], and
metadata {"activation": "topk"|"relu"|"jumprelu", "k": "<k>"}; layers without a file keep their MLP
as an error node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor

INPUT_HOOK = "ln2.hook_normalized"  # blocks.L.<this>: what the transcoder reads
OUTPUT_HOOK = "hook_mlp_out"  # blocks.L.<this>: what it predicts
ACTIVATIONS = ("topk", "relu", "jumprelu")


@dataclass
class Transcoder:
    """One layer's transcoder (module docstring). Tensors share one dtype and device."""

    W_enc: Float[Tensor, "d F"]
    b_enc: Float[Tensor, " F"]
    W_dec: Float[Tensor, "F d"]
    b_dec: Float[Tensor, " d"]
    activation: str = "topk"
    k: int = 16  # TopK's active latents per token
    threshold: Float[Tensor, " F"] | None = None  # JumpReLU's thresholds (ReLU: none)
    W_skip: Float[Tensor, "d d"] | None = None  # a skip transcoder's linear term, y += x @ W_skip.T

    def __post_init__(self):
        d, F = self.W_enc.shape
        if self.W_dec.shape != (F, d) or self.b_enc.shape != (F,) or self.b_dec.shape != (d,):
            raise ValueError(
                f"transcoder shapes: expected W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d]; got W_enc "
                f"{tuple(self.W_enc.shape)}, b_enc {tuple(self.b_enc.shape)}, W_dec {tuple(self.W_dec.shape)}, "
                f"b_dec {tuple(self.b_dec.shape)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: expected one of {ACTIVATIONS}")
        if self.activation == "jumprelu" and self.threshold is None:
            raise ValueError("activation='jumprelu' needs a threshold [F]")
        if self.W_skip is not None and self.W_skip.shape != (d, d):
            raise ValueError(f"W_skip: expected [{d}, {d}], got {tuple(self.W_skip.shape)}")

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_latent(self) -> int:
        return self.W_enc.shape[1]

    def encode_pre(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... F"]:
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "... F"]) -> Float[Tensor, "... F"]:
        if self.activation == "relu":
            return pre.clamp_min(0)
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold)
        top = pre.topk(min(self.k, pre.shape[-1]), dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))

    def skip(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return x @ self.W_skip.T if self.W_skip is not None else torch.zeros_like(x)

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return self.activate(self.encode_pre(x)) @ self.W_dec + self.b_dec + self.skip(x)

    __call__ = forward

    def to(self, dtype: torch.dtype) -> Transcoder:
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        return Transcoder(
            cast(self.W_enc),
            cast(self.b_enc),
            cast(self.W_dec),
            cast(self.b_dec),
            self.activation,
            self.k,
            cast(self.threshold),
            cast(self.W_skip),
        )


def random_transcoder(
    d_model: int, d_latent: int, k: int = 16, *, skip: bool = False, seed: int = 0, dtype=torch.float32
) -> Transcoder:
    """A random-init TopK transcoder (unit-norm decoder rows, tied-transpose encoder): for tests and
    timing only, its features mean nothing."""
    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_latent, d_model, generator=gen, dtype=torch.float64)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_skip = 0.1 * torch.randn(d_model, d_model, generator=gen, dtype=torch.float64) if skip else None
    tc = Transcoder(
        W_dec.T.clone(),
        0.1 * torch.randn(d_latent, generator=gen, dtype=torch.float64),
        W_dec,
        0.1 * torch.randn(d_model, generator=gen, dtype=torch.float64),
        "topk",
        k,
        None,
        W_skip,
    )
    return tc.to(dtype)


def save_transcoders(folder: str | Path, transcoders: dict[int, Transcoder]) -> None:
    from ..runs import atomic_save_tensors

    for layer, tc in transcoders.items():
        tensors = {"W_enc": tc.W_enc, "b_enc": tc.b_enc, "W_dec": tc.W_dec, "b_dec": tc.b_dec}
        tensors |= {n: t for n, t in (("threshold", tc.threshold), ("W_skip", tc.W_skip)) if t is not None}
        meta = {"activation": tc.activation, "k": str(tc.k)}
        atomic_save_tensors(Path(folder) / f"layer_{layer}.safetensors", tensors, meta)


def load_transcoders(folder: str | Path, dtype: torch.dtype = torch.float32) -> dict[int, Transcoder]:
    """Every `layer_<L>.safetensors` of `folder` (module docstring), as {L: Transcoder}."""
    folder = Path(folder)
    files = sorted(folder.glob("layer_*.safetensors")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"transcoders: {folder} holds no layer_<L>.safetensors files")
    out = {}
    for path in files:
        layer = path.stem.removeprefix("layer_")
        if not layer.isdigit():
            raise ValueError(f"{path}: expected a name layer_<L>.safetensors with L an integer")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            t = {key: f.get_tensor(key).to(dtype) for key in f.keys()}
        missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - set(t)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(sorted(missing))}")
        act = meta.get("activation", "topk")
        out[int(layer)] = Transcoder(
            t["W_enc"],
            t["b_enc"],
            t["W_dec"],
            t["b_dec"],
            act,
            int(meta.get("k", 16)),
            t.get("threshold"),
            t.get("W_skip"),
        )
    return out


def from_sae(sae) -> Transcoder:
    """A transcoder trained by the SAE trainer (workbench.sae, cfg.transcoder) in this layout:

        trainer: pre = x W_encᵀ + b_enc,  W_enc [F, d];  ŷ = z W_dec + b_dec (+ x W_skipᵀ, W_skip [d, d])
        here:    pre = x W_enc + b_enc,   W_enc [d, F]   (so W_enc is transposed; the rest is shared)

    The inference encoding is the rule's: TopK k for per-token rules (topk, gradient), JumpReLU with
    the learned threshold for mutual / feature choice. Weights keep their dtype (float64 stays)."""
    from ..sae.selection import JumpReLURule, Rule

    cfg = sae.cfg
    if not cfg.transcoder:
        raise ValueError(
            f"sae: expected a transcoder (cfg.transcoder or a target_hook), got an SAE on {cfg.hook_name!r}"
        )
    if cfg.d_target != cfg.d_in:
        raise ValueError(f"sae: an MLP's transcoder maps d_model to d_model, got d_in {cfg.d_in}, d_out {cfg.d_target}")
    encode = type(sae.rule).encode
    if encode is Rule.encode:
        activation, threshold = "topk", None
    elif encode is JumpReLURule.encode:
        activation, threshold = "jumprelu", sae.threshold.detach().clone()
    else:
        raise ValueError(f"selection={cfg.selection!r}: its inference encoding is its own, not TopK or JumpReLU")
    grab = lambda p: p.detach().clone()  # noqa: E731
    skip = grab(sae.W_skip) if cfg.skip else None
    return Transcoder(
        grab(sae.W_enc).T.contiguous(),
        grab(sae.b_enc),
        grab(sae.W_dec),
        grab(sae.b_dec),
        activation,
        cfg.k,
        threshold,
        skip,
    )


def sae_layer(cfg) -> int:
    """The layer L of a trainer transcoder's hooks (blocks.L.<INPUT_HOOK> -> blocks.L.<OUTPUT_HOOK>)."""
    expect = f"the input blocks.L.{INPUT_HOOK} and the target blocks.L.{OUTPUT_HOOK}"
    parts = cfg.target_hook.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] != OUTPUT_HOOK:
        raise ValueError(f"target_hook={cfg.target_hook!r}: a graph's transcoder needs {expect}")
    if cfg.hook_name and cfg.hook_name != f"blocks.{parts[1]}.{INPUT_HOOK}":
        raise ValueError(f"hook_name={cfg.hook_name!r}: a graph's transcoder needs {expect}")
    return int(parts[1])


def from_runs(*folders: str | Path) -> dict[int, Transcoder]:
    """{L: Transcoder} from trainer runs (folders save_sae wrote), each layer from its target_hook."""
    from ..sae.io import load_sae

    out: dict[int, Transcoder] = {}
    for folder in folders:
        sae = load_sae(folder)
        layer = sae_layer(sae.cfg)
        if layer in out:
            raise ValueError(f"{folder}: a second transcoder for layer {layer}")
        out[layer] = from_sae(sae)
    return out
