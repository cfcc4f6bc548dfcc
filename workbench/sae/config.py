"""What an SAE is: its shape, its selection rule and its auxiliary loss."""

from __future__ import annotations

from dataclasses import dataclass

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
