from __future__ import annotations

import contextlib
import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run on the CPU interpreter here (before triton loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Model imports (TransformerLens) stay inside the fixtures, so that the kernel and SAE tests also
# run where only torch and triton are installed (a lent GPU machine).
TINY_KW = dict(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=33, d_vocab=257)


@pytest.fixture
def tiny_model() -> HookedTransformer:
    """A random-init 2-layer model, as TransformerLens tests its own code."""
    from workbench.models import ModelConfig, new_model

    return new_model(ModelConfig(**TINY_KW), seed=0).eval()


@pytest.fixture(scope="session")
def default_models():
    """The embedded default pair (seed 0), from the shipped weights in data/workbench-tiny."""
    from workbench.hub import load_default

    return load_default("forward"), load_default("backward")


def tiny_demo_config():
    """The tiny demo's config: the named recipe `workbench.demo.tiny_demo_config` (12-step models,
    every run kind, the real file layout)."""
    from workbench.demo import tiny_demo_config as recipe

    return recipe()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A demo folder built from tiny_demo_config() in ~20 s."""
    from workbench.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"), tiny_demo_config(), progress=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, port: int, **config):
    """Serve an ASGI app with uvicorn in a daemon thread on 127.0.0.1:port until the block ends."""
    import threading
    import time

    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **{"log_level": "critical", **config}))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
