"""Arrow of time in language models (Papadopoulos, Wenger, Hongler, ICML 2024).

Two models of identical config, data and seed: forward on windows as they are, backward on the
same windows reversed (BOS first in both), so both score exactly the same tokens. On held-out
windows, the relative gap (L_backward − L_forward) / L_forward with a bootstrap confidence
interval over windows, and both loss curves over training.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from ..corpus import ByteTokenizer, windows
from ..models import LMTrainConfig, ModelConfig, TokenData, load_model_file, train_lm
from ..runs import RunDir
from ..tasks import primes_product_text


@torch.no_grad()
def per_sequence_loss(model: HookedTransformer, seqs: Int[Tensor, "n s"], batch_size: int = 32) -> Float[Tensor, "n"]:
    """Mean next-token loss of each sequence (nats/token)."""
    model.eval()
    return torch.cat([model(c, return_type="loss", loss_per_token=True).mean(-1) for c in seqs.split(batch_size)])


def bootstrap_gap(loss_f: Tensor, loss_b: Tensor, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """Relative gap of the means and its percentile bootstrap interval (windows resampled in pairs)."""
    if loss_f.shape != loss_b.shape or loss_f.ndim != 1:
        raise ValueError(f"loss_f and loss_b must be equal-length 1-D, got {tuple(loss_f.shape)}, {tuple(loss_b.shape)}")
    gap = float((loss_b.mean() - loss_f.mean()) / loss_f.mean())
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(loss_f), (n_boot, len(loss_f)), generator=gen)
    f, b = loss_f.double()[idx].mean(1), loss_b.double()[idx].mean(1)
    gaps = (b - f) / f
    lo, hi = torch.quantile(gaps, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return gap, float(lo), float(hi)


def arrow_gap(forward: HookedTransformer, backward: HookedTransformer, data: TokenData, seq_len: int,
              n_windows: int = 256, n_boot: int = 2000, seed: int = 0) -> dict:
    """Evaluate both directions on the same held-out windows; gap with its 95% interval."""
    bos = data.tokenizer.bos_token_id
    fwd = windows(data.validation, seq_len, bos_token_id=bos, n=n_windows)
    bwd = windows(data.validation, seq_len, bos_token_id=bos, n=n_windows, reverse=True)
    lf, lb = per_sequence_loss(forward, fwd), per_sequence_loss(backward, bwd)
    gap, lo, hi = bootstrap_gap(lf, lb, n_boot=n_boot, seed=seed)
    return {"loss_forward": float(lf.mean()), "loss_backward": float(lb.mean()), "gap": gap,
            "gap_ci95": [lo, hi], "n_windows": len(lf), "seq_len": seq_len}


def train_pair(model_cfg: ModelConfig, train_cfg: LMTrainConfig, data: TokenData, root: str | Path,
               progress: bool = True) -> tuple[HookedTransformer, HookedTransformer]:
    """Train (or reuse) forward and backward models that differ only in direction."""
    models = []
    for direction in ("forward", "backward"):
        run = RunDir(Path(root) / direction)
        weights = run.file("model.safetensors")
        if weights.exists():
            models.append(load_model_file(weights, model_cfg))
        else:
            models.append(train_lm(model_cfg, replace(train_cfg, direction=direction), data, run, progress=progress))
    return models[0], models[1]


def loss_curves(run_dirs: dict[str, str | Path]) -> dict:
    """Validation loss over training per direction, read from each run's metrics.jsonl."""
    out = {}
    for direction, path in run_dirs.items():
        rows = [m for m in RunDir(path).metrics() if "val_loss" in m]
        out[direction] = {"step": [m["step"] for m in rows], "val_loss": [m["val_loss"] for m in rows]}
    return out


def primes_data(n_train: int = 20_000, n_val: int = 2_000, max_prime: int = 100, seed: int = 0) -> TokenData:
    """Byte-level 'p*q=r' lines (r reversed): forward is multiplication, backward factorisation.

    Primes below 100 by default: with 3-digit primes neither direction of a 2-layer model learned
    any arithmetic in 1,500 steps (gap −0.08%, 95% CI [−0.38%, +0.21%]); with 2-digit primes the
    forward model wins by ~15% after 600 steps (benchmarks/RESULTS.md)."""
    tok = ByteTokenizer()
    enc = lambda text: torch.tensor(tok.encode(text), dtype=torch.long)  # noqa: E731
    return TokenData(enc(primes_product_text(n_train, max_prime, seed=seed)),
                     enc(primes_product_text(n_val, max_prime, seed=seed + 1)), tok)


PRIMES_MODEL = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=65)
PRIMES_TRAIN = LMTrainConfig(steps=600, batch_size=32, seq_len=64, lr=3e-3, checkpoint_steps=(), eval_every=100)

