"""The MLP-sparsity probe's results, as plain dataclasses: no torch, no TransformerLens.

Reading a sparsity run's results.json needs these classes and nothing of `probes.sparsity`, which
computes them (and re-exports them under their old names)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SparsityResult:
    threshold: float  # |a| > threshold counts as active
    active_frac: list[float]  # per layer: mean over tokens of the fraction of active neurons
    active_frac_std: list[float]  # per layer: its standard deviation over tokens
    neuron_freq: list[list[float]]  # per layer, per neuron: fraction of tokens it is active on
    never_firing: list[int]  # per layer: neurons active on no token of the sample
    n_tokens: int
    act_fn: str = ""

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class SparsityOverTraining:
    """`probes.sparsity.sparsity_over_training`: the active fraction per layer at each checkpoint."""

    steps: list[int]
    threshold: float
    active_frac: list[list[float]]  # [checkpoint][layer]
    active_frac_std: list[list[float]]  # [checkpoint][layer]


@dataclass
class TopKIntervention:
    """`probes.sparsity.topk_intervention`: the loss when only the top k MLP activations are kept."""

    ks: list[int]
    loss: list[float]  # [k]
    clean_loss: float
    delta: list[float]  # [k] loss - clean_loss
    d_mlp: int
