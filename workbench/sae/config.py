"""What an SAE is (SAEConfig: shape, selection rule, auxiliary loss) and how it is trained (SAETrainConfig).

A transcoder (`transcoder=True`) is the same module trained to predict a target y (the store's,
e.g. an MLP's output) from x instead of reconstructing x: ŷ = z W_dec + b_dec (+ x W_skipᵀ with
`skip`), its encoder reading x itself (b_dec lives in y's space), its loss the FVU of y."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..fielddoc import REQUIRED, FieldError, check_choices, doc
from .parallel import MODES
from .selection import RULES

AUX_LOSSES = ("auxk", "aux_zipf", "none")
DTYPES = ("float32", "bfloat16", "float64")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
NESTINGS = ("none", "fixed", "sampled", "expected")  # Matryoshka boundary distributions (matryoshka.py)


@dataclass(frozen=True)
class SAEConfig:
    """One sparse autoencoder. Every selection rule and auxiliary loss shares these fields."""

    d_in: int = doc(REQUIRED, "width of the activation it reads")
    d_sae: int = doc(REQUIRED, "number of latents F")
    k: int = doc(32, "active latents per token (on average, for mutual/feature choice)")
    selection: str = doc(
        "topk", "which latents fire for which tokens: a rule registered in sae/selection.py", choices=RULES
    )
    beta: float = doc(1.0, "gradient: weight of the loss-effect term in the selection score")
    fc_capacity: str = doc(
        "uniform", 'feature_choice: "uniform" (m = k·B/F) or "zipf" capacities', choices=("uniform", "zipf")
    )
    zipf_alpha: float = doc(1.0, 'feature_choice "zipf": capacity of usage-rank r ∝ r^-alpha')
    aux: str = doc("auxk", '"auxk" (dead latents), "aux_zipf" (dead and under-used), "none"', choices=AUX_LOSSES)
    k_aux: int | None = doc(None, "latents the aux loss uses per token; none: d_in // 2 (a transcoder's d_out // 2)")
    aux_coef: float = doc(1 / 32, "weight of the aux loss")
    dead_tokens: int = doc(1_000_000, "a latent that has not fired for this many tokens is dead")
    # (0.99 kept early-training values long enough to bias the threshold high: inference L0 fell to 0.6·k)
    threshold_decay: float = doc(0.9, "mutual/feature choice: EMA decay of the inference JumpReLU threshold")
    # the nested loss is a training objective over the latent order; inference is the rule's as ever
    matryoshka: str = doc(
        "none",
        'nested (Matryoshka) loss over prefixes [0, m) of the latents: "none"; "fixed" widths '
        '(matryoshka_widths, F added, equal weights); "sampled" each step G-1 widths i.i.d. from '
        'P(width <= m) = (m/F)^matryoshka_power, plus F; "expected" the exact expectation of "sampled"',
        choices=NESTINGS,
    )
    matryoshka_widths: tuple[int, ...] = doc((), 'matryoshka "fixed": the prefix widths, increasing, in [1, d_sae]')
    matryoshka_prefixes: int = doc(4, 'matryoshka "sampled"/"expected": G, the prefixes per step (F among them)')
    matryoshka_power: float = doc(
        0.5, 'matryoshka "sampled"/"expected": a in P(width <= m) = (m/F)^a; a < 1 favours small'
    )
    transcoder: bool = doc(
        False,
        "predict the store's target y (e.g. an MLP's output) from x instead of reconstructing x; "
        "the encoder reads x without subtracting b_dec; implied by target_hook",
    )
    skip: bool = doc(False, "transcoder: add a learned d_out x d_in skip matrix, y_hat += x W_skip^T (skip transcoder)")
    d_out: int | None = doc(None, "transcoder: width of the target y; none: d_in")
    target_hook: str = doc("", "transcoder: where the target came from, e.g. blocks.0.hook_mlp_out (metadata, exports)")
    hook_name: str = doc("", "where the activations came from (metadata, SAELens export)")
    model_name: str = doc("", "which model (metadata, SAELens export)")

    def __post_init__(self) -> None:
        if self.d_in < 1:
            raise FieldError("d_in", f"d_in={self.d_in}: must be positive")
        if self.d_sae < 1:
            raise FieldError("d_sae", f"d_sae={self.d_sae}: must be positive")
        if not 1 <= self.k < self.d_sae:
            raise FieldError("k", f"k={self.k} must be at least 1 and smaller than the dictionary (d_sae={self.d_sae})")
        check_choices(self)
        if self.k_aux is not None and not 1 <= self.k_aux <= self.d_sae:
            raise FieldError("k_aux", f"k_aux={self.k_aux} must lie in [1, d_sae={self.d_sae}]")
        self._check_transcoder()
        if not 0.0 <= self.threshold_decay < 1.0:
            raise FieldError("threshold_decay", f"threshold_decay={self.threshold_decay} must lie in [0, 1)")
        self._check_nesting()

    def _check_transcoder(self) -> None:
        if self.target_hook and not self.transcoder:
            object.__setattr__(self, "transcoder", True)
        if not self.transcoder and (self.skip or self.d_out is not None):
            field = "skip" if self.skip else "d_out"
            raise FieldError(field, f"{field}: only a transcoder (transcoder=True or a target_hook) has it")
        if self.d_out is not None and self.d_out < 1:
            raise FieldError("d_out", f"d_out={self.d_out}: must be positive")

    @property
    def d_target(self) -> int:
        """Width of what the decoder writes: d_out for a transcoder that sets it, else d_in."""
        return self.d_out if self.d_out is not None else self.d_in

    def _check_nesting(self) -> None:
        widths = tuple(int(m) for m in self.matryoshka_widths)  # JSON gives a list
        object.__setattr__(self, "matryoshka_widths", widths)
        if any(not 1 <= m <= self.d_sae for m in widths) or list(widths) != sorted(set(widths)):
            raise FieldError(
                "matryoshka_widths",
                f"matryoshka_widths={widths}: expected increasing widths in [1, d_sae={self.d_sae}]",
            )
        if self.matryoshka == "fixed" and not [m for m in widths if m < self.d_sae]:
            raise FieldError("matryoshka_widths", 'matryoshka="fixed" needs at least one width below d_sae')
        if self.matryoshka in ("sampled", "expected") and self.matryoshka_prefixes < 2:
            raise FieldError("matryoshka_prefixes", f"matryoshka_prefixes={self.matryoshka_prefixes}: expected >= 2")
        if self.matryoshka_power <= 0:
            raise FieldError("matryoshka_power", f"matryoshka_power={self.matryoshka_power}: expected > 0")

    @property
    def aux_k(self) -> int:
        return self.k_aux if self.k_aux is not None else max(1, min(self.d_target // 2, self.d_sae))


class TritonPath(NamedTuple):
    """How the fused-kernel path runs (SAETrainConfig.triton_precision / triton_aux)."""

    precision: str = "bf16"
    aux: str = "dense"


@dataclass(frozen=True)
class SAETrainConfig:
    """How an SAE is trained (what it is lives in SAEConfig)."""

    total_tokens: int = doc(2_000_000, "training tokens; steps = total_tokens // batch_size")
    batch_size: int = doc(4096, "tokens per step (the store must yield batches of this size)")
    lr: float | None = doc(None, "Adam learning rate; none: 2e-4 / sqrt(d_sae / 16384) (Gao et al.)")
    warmup_steps: int = doc(50, "linear warm-up from 0")
    decay_start: float = doc(0.8, "fraction of training after which lr decays linearly to 0")
    grad_clip: float = doc(1.0, "max global gradient norm")
    adam_betas: tuple[float, float] = doc((0.9, 0.999), "Adam's beta1 and beta2")
    adam_eps: float = doc(6.25e-10, "Adam's epsilon")
    b_dec_init: str = doc("geometric_median", "decoder bias start, from the first chunk", choices=B_DEC_INITS)
    seed: int = doc(0, "initialisation (the store's own seed orders the data)")
    log_every: int = doc(10, "steps between metric lines")
    checkpoint_every: int = doc(500, "steps between checkpoints (and one at the end)")
    use_triton: bool | None = doc(None, "fused kernels; none: on CUDA for the rules that have them")
    # bf16 is what autocast would do; the kept latents' values are still computed in the parameters' dtype
    triton_precision: str = doc(
        "bf16", 'the Triton path\'s selection GEMM: "bf16" operands or "fp32" (exact)', choices=("bf16", "fp32")
    )
    triton_aux: str = doc(
        "dense",
        'the Triton path\'s AuxK: "dense" (GEMMs over dead rows) or "fused" (kernel candidates)',
        choices=("dense", "fused"),
    )
    # sparse is 3-4x faster on CPU; on CUDA it is not yet measured, and the latent layout's cross-rank
    # AuxK needs the dense candidates
    sparse: bool | str = doc(
        "auto",
        "without Triton, true keeps only the kept entries after selection and "
        "decodes/backpropagates them sparsely (sparse.py, every rule); false is the dense "
        'reference path (the whole [B, F] code); "auto" is sparse on CPU, dense on CUDA and '
        "under --parallel latent",
        choices=(True, False, "auto"),
    )
    device: str = doc(
        "cpu", 'where the SAE trains ("cpu", "cuda", "cuda:1"; under torchrun "cuda" means each rank\'s own GPU)'
    )
    dtype: str = doc("float32", 'parameters and batches ("float64" for exact tests)', choices=DTYPES)
    parallel: str = doc(
        "data",
        'under torchrun: "data" (DDP, whole SAE per rank) or "latent" (latents split '
        "over ranks, for dictionaries whose weights and Adam state do not fit on one device)",
        choices=MODES,
    )
    wandb_project: str | None = doc(None, "also log to wandb when it is installed and this is set")

    def __post_init__(self) -> None:
        check_choices(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def steps(self) -> int:
        return self.total_tokens // self.batch_size

    def learning_rate(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 16384)

    def triton_path(self) -> TritonPath:
        return TritonPath(self.triton_precision, self.triton_aux)
