import os

import pytest
import torch
from transformer_lens import HookedTransformer

from workbench.models import ModelConfig, new_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=33, d_vocab=257)


@pytest.fixture
def tiny_model() -> HookedTransformer:
    """A random-init 2-layer model, as TransformerLens tests its own code."""
    return new_model(TINY, seed=0).eval()


@pytest.fixture(scope="session")
def default_models():
    """The embedded default pair, trained on first use (cached in WORKBENCH_HOME)."""
    from workbench.models import load_default
    return load_default("forward"), load_default("backward")
