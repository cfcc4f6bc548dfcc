"""Arrow of time in language models (Papadopoulos, Wenger, Hongler, ICML 2024).

Pairs of models of identical config and data: forward on windows as they are, backward on the
same windows reversed (BOS first in both), so both score exactly the same tokens. The training
seed (initialisation and batch order) is the largest source of variance (the default pair
trained with three seeds gives gaps of -1.42%, +4.14%, +0.54%), so the probe trains S pairs,
one per seed, and reports on the same held-out windows:

- the relative gap (L_backward − L_forward) / L_forward of each seed and their mean, with a
  Student t interval over the per-seed gaps (the seed-level interval);
- the same-direction null: forward seed a vs forward seed b (and backward likewise) for every
  pair of seeds, compared the same way, (L_b − L_a) / L_a;
- the verdict (`verdict`) decided from those two;
- the window-level interval (held-out windows resampled, seeds fixed) as a second figure: it
  says how well the windows pin down these particular models, not whether the direction matters;
- the gap over training steps, from each run's logged validation loss.

This module is the probe only: measurements on pairs it is given. Training them is
`models.train_pairs` (in `models.pair_dir`'s seed/direction layout), and the primes×product
recipe lives beside the shipped default, `default_model.PRIMES_MODEL`/`PRIMES_TRAIN`/
`primes_data`. Those names stay importable from here for one release through `__getattr__` below
(a deprecation shim: it imports the trainer only when an old name is asked for, and neither of
those modules imports this one, so there is no circle).
"""

from __future__ import annotations

import warnings
from itertools import combinations
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from ..corpus import windows
from ..runs import RunDir
from ..token_data import TokenData
from .arrow_data import BACKWARD, FORWARD, NO_ARROW, ArrowResult
from .intervals import t_interval


@torch.no_grad()
def per_sequence_loss(model: HookedTransformer, seqs: Int[Tensor, "n s"], batch_size: int = 32) -> Float[Tensor, " n"]:
    """Mean next-token loss of each sequence (nats/token)."""
    model.eval()
    return torch.cat([model(c, return_type="loss", loss_per_token=True).mean(-1) for c in seqs.split(batch_size)])


def bootstrap_gap(
    loss_f: Tensor, loss_b: Tensor, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Relative gap of the means and its percentile bootstrap interval (windows resampled in pairs)."""
    if loss_f.shape != loss_b.shape or loss_f.ndim != 1:
        raise ValueError(
            f"loss_f and loss_b must be equal-length 1-D, got {tuple(loss_f.shape)}, {tuple(loss_b.shape)}"
        )
    gap = float((loss_b.mean() - loss_f.mean()) / loss_f.mean())
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(loss_f), (n_boot, len(loss_f)), generator=gen)
    f, b = loss_f.double()[idx].mean(1), loss_b.double()[idx].mean(1)
    gaps = (b - f) / f
    lo, hi = torch.quantile(gaps, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return gap, float(lo), float(hi)


def arrow_gap(
    forward: HookedTransformer,
    backward: HookedTransformer,
    data: TokenData,
    seq_len: int,
    n_windows: int = 256,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """One pair on the same held-out windows: the gap with its window-level 95% interval. That
    interval leaves out the seed, the largest source of variance: for a verdict use arrow_over_seeds."""
    bos = data.tokenizer.bos_token_id
    fwd = windows(data.validation, seq_len, bos_token_id=bos, n=n_windows)
    bwd = windows(data.validation, seq_len, bos_token_id=bos, n=n_windows, reverse=True)
    lf, lb = per_sequence_loss(forward, fwd), per_sequence_loss(backward, bwd)
    gap, lo, hi = bootstrap_gap(lf, lb, n_boot=n_boot, seed=seed)
    return {
        "loss_forward": float(lf.mean()),
        "loss_backward": float(lb.mean()),
        "gap": gap,
        "gap_ci95": [lo, hi],
        "n_windows": len(lf),
        "seq_len": seq_len,
    }


def relative_gap(loss_from: Tensor, loss_to: Tensor) -> float:
    """(mean(loss_to) − mean(loss_from)) / mean(loss_from): the gap when `from` is the forward
    model and `to` the backward one, the null when both are one direction."""
    return float((loss_to.double().mean() - loss_from.double().mean()) / loss_from.double().mean())


def verdict(gap: float, seed_ci: tuple[float, float], null_max: float) -> str:
    """The rule: "forward easier" iff the seed-level interval of the gap lies above 0 AND the mean gap
    exceeds the largest |same-direction null gap|; "backward easier" mirrored; otherwise "no
    arrow detected at this size". The window-level interval never enters: with the windows
    shared by every model it shrinks with more windows while the seed spread does not."""
    if seed_ci[0] > 0 and gap > null_max:
        return FORWARD
    if seed_ci[1] < 0 and -gap > null_max:
        return BACKWARD
    return NO_ARROW


def arrow_from_losses(
    loss_f: Float[Tensor, "S n"],
    loss_b: Float[Tensor, "S n"],
    seeds: list[int] | None = None,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
    boot_seed: int = 0,
    over_training: dict | None = None,
    curves: dict | None = None,
    seq_len: int = 0,
) -> ArrowResult:
    """The probe's statistics from per-window losses: row s holds seed s's forward (backward)
    model's mean loss on each held-out window, the same windows for every seed."""
    if loss_f.ndim != 2 or loss_f.shape != loss_b.shape:
        raise ValueError(
            f"loss_f and loss_b must both be [seeds, windows], got {tuple(loss_f.shape)}, {tuple(loss_b.shape)}"
        )
    S, n = loss_f.shape
    if S < 2:
        raise ValueError(f"need at least 2 seeds for a seed-level interval and a null, got {S}")
    seeds = list(range(S)) if seeds is None else list(seeds)
    if len(seeds) != S:
        raise ValueError(f"seeds has {len(seeds)} entries for {S} rows of losses")
    lf, lb = loss_f.double(), loss_b.double()
    gaps = [relative_gap(lf[s], lb[s]) for s in range(S)]
    mean, lo, hi = (float(x) for x in t_interval(torch.tensor(gaps), level))
    nulls = [
        {"direction": name, "seeds": [seeds[a], seeds[b]], "gap": relative_gap(losses[a], losses[b])}
        for name, losses in (("forward", lf), ("backward", lb))
        for a, b in combinations(range(S), 2)
    ]
    null_max = max(abs(x["gap"]) for x in nulls)
    # Window-level: the same resampled windows for every seed (they share the held-out set).
    idx = torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(boot_seed))
    mf, mb = lf[:, idx].mean(-1), lb[:, idx].mean(-1)  # [S, n_boot]
    boot = ((mb - mf) / mf).mean(0)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    w_lo, w_hi = torch.quantile(boot, q).tolist()
    per_seed = [list(bootstrap_gap(lf[s], lb[s], n_boot, boot_seed, level)[1:]) for s in range(S)]
    return ArrowResult(
        seeds=seeds,
        loss_forward=lf.mean(1).tolist(),
        loss_backward=lb.mean(1).tolist(),
        gaps=gaps,
        gap=mean,
        gap_ci_seeds=[lo, hi],
        null_gaps=nulls,
        null_max=null_max,
        verdict=verdict(mean, (lo, hi), null_max),
        gap_ci_windows=[w_lo, w_hi],
        seed_window_cis=per_seed,
        over_training=over_training or {},
        curves=curves or {},
        n_windows=n,
        seq_len=seq_len,
        level=level,
    )


def gap_over_training(run_dirs: list[tuple[str | Path, str | Path]], level: float = 0.95) -> dict:
    """Per-seed gap at every step where both directions of every pair logged val_loss (they are
    evaluated on the same validation windows), with the mean and a t interval over seeds."""
    per_seed = []
    for fwd_dir, bwd_dir in run_dirs:
        f = {m["step"]: m["val_loss"] for m in RunDir(fwd_dir).metrics() if "val_loss" in m}
        b = {m["step"]: m["val_loss"] for m in RunDir(bwd_dir).metrics() if "val_loss" in m}
        per_seed.append((f, b))
    steps = sorted(set.intersection(*(set(f) & set(b) for f, b in per_seed))) if per_seed else []
    gaps = [[(b[t] - f[t]) / f[t] for t in steps] for f, b in per_seed]
    out = {"step": steps, "gaps": gaps, "mean": [], "ci_lo": [], "ci_hi": []}
    if steps and len(per_seed) >= 2:
        mean, lo, hi = t_interval(torch.tensor(gaps), level)
        out.update(mean=mean.tolist(), ci_lo=lo.tolist(), ci_hi=hi.tolist())
    elif steps:
        out.update(mean=gaps[0], ci_lo=gaps[0], ci_hi=gaps[0])
    return out


def window_losses(
    model: HookedTransformer, data: TokenData, seq_len: int, n_windows: int, direction: str
) -> Float[Tensor, " n"]:
    """Per-window loss on the first `n_windows` validation windows, reversed for "backward"."""
    seqs = windows(
        data.validation, seq_len, bos_token_id=data.tokenizer.bos_token_id, n=n_windows, reverse=direction == "backward"
    )
    return per_sequence_loss(model, seqs)


def arrow_over_seeds(
    pairs: list[tuple[HookedTransformer, HookedTransformer]],
    data: TokenData,
    seq_len: int,
    n_windows: int = 256,
    run_dirs: list[tuple[str | Path, str | Path]] | None = None,
    seeds: list[int] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
) -> ArrowResult:
    """Every pair (forward, backward), one per seed, on the same held-out windows; with the runs'
    folders, the gap over training and the loss curves too (see the module docstring)."""
    if len(pairs) < 2:
        raise ValueError(f"pairs: need at least 2 (forward, backward) pairs of different seeds, got {len(pairs)}")
    if run_dirs is not None and len(run_dirs) != len(pairs):
        raise ValueError(f"run_dirs has {len(run_dirs)} entries for {len(pairs)} pairs")
    lf = torch.stack([window_losses(f, data, seq_len, n_windows, "forward") for f, _ in pairs])
    lb = torch.stack([window_losses(b, data, seq_len, n_windows, "backward") for _, b in pairs])
    seeds = list(range(len(pairs))) if seeds is None else list(seeds)
    over, curves = {}, {}
    if run_dirs is not None:
        over = gap_over_training(run_dirs, level)
        curves = {f"seed {s}": loss_curves({"forward": f, "backward": b}) for s, (f, b) in zip(seeds, run_dirs)}
    return arrow_from_losses(
        lf, lb, seeds, level=level, n_boot=n_boot, over_training=over, curves=curves, seq_len=seq_len
    )


def loss_curves(run_dirs: dict[str, str | Path]) -> dict:
    """Validation loss over training per direction, read from each run's metrics.jsonl."""
    out = {}
    for direction, path in run_dirs.items():
        rows = [m for m in RunDir(path).metrics() if "val_loss" in m]
        out[direction] = {"step": [m["step"] for m in rows], "val_loss": [m["val_loss"] for m in rows]}
    return out


# Deprecated names (one release): where each moved. Looked up lazily so that importing the probe
# imports neither the trainer nor the shipped default.
_MOVED = {
    "train_pairs": "workbench.models",
    "pair_dirs": "workbench.models",
    "train_lm": "workbench.models",  # was imported here for train_pairs; tests patched it here
    "primes_data": "workbench.default_model",
    "PRIMES_MODEL": "workbench.default_model",
    "PRIMES_TRAIN": "workbench.default_model",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"workbench.probes.arrow.{name} moved to {_MOVED[name]}.{name}; this alias goes in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    if _MOVED[name] == "workbench.models":
        from .. import models as home
    else:
        from .. import default_model as home
    return getattr(home, name)
