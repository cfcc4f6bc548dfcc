"""Sparse autoencoders: one module, registered selection rules (selection.py), two auxiliary losses, one trainer;
transcoders on the same module, and cross-layer transcoders (clt.py) on the same rules."""

from .clt import CLTConfig, CrossLayerTranscoder
from .clt_train import load_clt, save_clt, train_clt
from .config import SAEConfig
from .io import from_saelens, load_sae, save_sae, to_saelens
from .model import SAEOutput, SparseAutoencoder
from .selection import RULES, Rule, register_rule
from .trainer import SAETrainConfig, train_sae

__all__ = [
    "SAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "SAETrainConfig",
    "train_sae",
    "save_sae",
    "load_sae",
    "to_saelens",
    "from_saelens",
    "Rule",
    "RULES",
    "register_rule",
    "CLTConfig",
    "CrossLayerTranscoder",
    "train_clt",
    "save_clt",
    "load_clt",
]
