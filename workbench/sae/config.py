"""What an SAE is (SAEConfig: shape, selection rule, auxiliary loss) and how it is trained (SAETrainConfig)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .selection import RULES

AUX_LOSSES = ("auxk", "aux_zipf", "none")


@dataclass(frozen=True)
class SAEConfig:
    """One sparse autoencoder. Every selection rule and auxiliary loss shares these fields."""

    d_in: int  # width of the activation it reads
    d_sae: int  # number of latents F
    k: int = 32  # active latents per token (on average, for mutual/feature choice)
    selection: str = "topk"  # "topk" | "gradient" | "mutual_choice" | "feature_choice"
    beta: float = 1.0  # gradient: weight of the loss-effect term in the selection score
    fc_capacity: str = "uniform"  # feature_choice: "uniform" (m = k·B/F) or "zipf" capacities
    zipf_alpha: float = 1.0  # feature_choice "zipf": capacity of usage-rank r ∝ r^-alpha
    aux: str = "auxk"  # "auxk" (dead latents), "aux_zipf" (dead and under-used), "none"
    k_aux: int | None = None  # latents the aux loss uses per token; None: d_in // 2
    aux_coef: float = 1 / 32  # weight of the aux loss
    dead_tokens: int = 1_000_000  # a latent that has not fired for this many tokens is dead
    # (0.99 kept early-training values long enough to bias the threshold high: inference L0 fell to 0.6·k)
    threshold_decay: float = 0.9  # mutual/feature choice: EMA decay of the inference JumpReLU threshold
    hook_name: str = ""  # where the activations came from (metadata, SAELens export)
    model_name: str = ""  # which model (metadata, SAELens export)

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if not 1 <= self.k < self.d_sae:
            raise ValueError(f"k={self.k} must be at least 1 and smaller than the dictionary "
                             f"(d_sae={self.d_sae})")
        if self.selection not in RULES:
            raise ValueError(f"selection={self.selection!r}: expected one of {RULES}")
        if self.aux not in AUX_LOSSES:
            raise ValueError(f"aux={self.aux!r}: expected one of {AUX_LOSSES}")
        if self.fc_capacity not in ("uniform", "zipf"):
            raise ValueError(f"fc_capacity={self.fc_capacity!r}: expected 'uniform' or 'zipf'")
        if self.k_aux is not None and not 1 <= self.k_aux <= self.d_sae:
            raise ValueError(f"k_aux={self.k_aux} must lie in [1, d_sae={self.d_sae}]")
        if not 0.0 <= self.threshold_decay < 1.0:
            raise ValueError(f"threshold_decay={self.threshold_decay} must lie in [0, 1)")

    @property
    def aux_k(self) -> int:
        return self.k_aux if self.k_aux is not None else max(1, min(self.d_in // 2, self.d_sae))


class TritonPath(NamedTuple):
    """How the fused-kernel path runs (SAETrainConfig.triton_precision / triton_aux)."""
    precision: str = "bf16"
    aux: str = "dense"


@dataclass(frozen=True)
class SAETrainConfig:
    """How an SAE is trained (what it is lives in SAEConfig)."""

    total_tokens: int = 2_000_000  # training tokens; steps = total_tokens // batch_size
    batch_size: int = 4096  # tokens per step (the store must yield batches of this size)
    lr: float | None = None  # Adam learning rate; None: 2e-4 / sqrt(d_sae / 16384) (Gao et al.)
    warmup_steps: int = 50  # linear warm-up from 0
    decay_start: float = 0.8  # fraction of training after which lr decays linearly to 0
    grad_clip: float = 1.0  # max global gradient norm
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 6.25e-10
    b_dec_init: str = "geometric_median"  # "geometric_median" | "mean" | "zeros", from chunk 0
    seed: int = 0  # initialisation (the store's own seed orders the data)
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    use_triton: bool | None = None  # fused kernels; None: on CUDA for topk and gradient rules
    # bf16 is what autocast would do; the kept latents' values are still computed in the parameters' dtype
    triton_precision: str = "bf16"  # the Triton path's selection GEMM: "bf16" operands or "fp32" (exact)
    triton_aux: str = "dense"  # the Triton path's AuxK: "dense" (GEMMs over dead rows) or "fused" (kernel candidates)
    # Without Triton: True keeps only the kept entries after selection and decodes/backpropagates
    # them sparsely (sparse.py; every rule, 3-4x faster on CPU); False is the dense reference path
    # (differentiates the whole [B, F] code); "auto" is sparse on CPU, dense on CUDA (not yet measured
    # there) and under parallel="latent" (its cross-rank AuxK needs the dense candidates)
    sparse: bool | str = "auto"
    device: str = "cpu"
    dtype: str = "float32"  # parameters and batches: "float32", "bfloat16", or "float64" (exact tests)
    # "latent" is for dictionaries whose weights and Adam state do not fit on one device
    parallel: str = "data"  # under torchrun: "data" (DDP, whole SAE per rank) or "latent" (latents split over ranks)
    wandb_project: str | None = None  # also log to wandb when it is installed and this is set

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in ("float32", "bfloat16", "float64"):
            raise ValueError(f"dtype={self.dtype!r}: expected 'float32', 'bfloat16' or 'float64'")
        return getattr(torch, self.dtype)

    @property
    def steps(self) -> int:
        return self.total_tokens // self.batch_size

    def learning_rate(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 16384)

    def triton_path(self) -> TritonPath:
        if self.triton_precision not in ("bf16", "fp32"):
            raise ValueError(f"triton_precision={self.triton_precision!r}: expected 'bf16' or 'fp32'")
        if self.triton_aux not in ("dense", "fused"):
            raise ValueError(f"triton_aux={self.triton_aux!r}: expected 'dense' or 'fused'")
        return TritonPath(self.triton_precision, self.triton_aux)
