"""Synthetic data with known answers: planted SAE features, copy/needle contexts, primes×product."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Float, Int

# --- superposition: known feature directions for SAE ground truth ---------------------------


@dataclass(frozen=True)
class SuperpositionConfig:
    """n_features unit directions in d dims, firing sparsely with Zipf-shaped probabilities."""

    d: int = 32  # ambient dimension
    n_features: int = 96  # planted directions (more than d: superposition)
    mean_active: float = 3.0  # expected number of features firing per sample
    zipf_alpha: float = 0.5  # firing probability of the feature of rank r ∝ r^-alpha
    correlated_pairs: float = 0.0  # P(feature 2j+1 fires | 2j fires), beyond its own rate
    magnitude: tuple[float, float] = (0.5, 1.5)  # uniform range of a firing feature's coefficient
    noise: float = 0.0  # std of isotropic Gaussian noise added to every sample
    seed: int = 0


class SuperpositionData(NamedTuple):
    acts: Float[torch.Tensor, "n d"]
    codes: Float[torch.Tensor, "n n_features"]  # true coefficients (sparse)
    features: Float[torch.Tensor, "n_features d"]  # true unit directions
    grads: Float[torch.Tensor, "n d"]  # gradient of a planted quadratic loss ½ xᵀMx


def superposition_data(cfg: SuperpositionConfig, n: int) -> SuperpositionData:
    gen = torch.Generator().manual_seed(cfg.seed)
    features = torch.randn(cfg.n_features, cfg.d, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    ranks = torch.arange(1, cfg.n_features + 1, dtype=torch.float64)
    p = ranks**-cfg.zipf_alpha
    p = (p * cfg.mean_active / p.sum()).clamp(max=1.0).float()
    fires = torch.rand(n, cfg.n_features, generator=gen) < p
    if cfg.correlated_pairs > 0:
        follow = torch.rand(n, cfg.n_features // 2, generator=gen) < cfg.correlated_pairs
        fires[:, 1::2] |= fires[:, 0::2][:, : fires[:, 1::2].shape[1]] & follow[:, : fires[:, 1::2].shape[1]]
    lo, hi = cfg.magnitude
    codes = fires * (lo + (hi - lo) * torch.rand(n, cfg.n_features, generator=gen))
    acts = codes @ features + cfg.noise * torch.randn(n, cfg.d, generator=gen)
    q = torch.randn(cfg.d, cfg.d, generator=gen) / cfg.d**0.5
    grads = acts @ (q.T @ q)  # ∇ of ½ xᵀ(QᵀQ)x: a loss some directions matter more to
    return SuperpositionData(acts, codes, features, grads)


def mmcs(learned: Float[torch.Tensor, "F d"], true: Float[torch.Tensor, "n d"]) -> float:
    """Mean over true features of the best cosine similarity with any learned direction."""
    a = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = true / true.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((b.double() @ a.double().T).max(dim=1).values.mean())


# --- copy / needle contexts: retrieval heads -------------------------------------------------


class NeedleBatch(NamedTuple):
    tokens: Int[torch.Tensor, "batch seq"]
    needle_start: int  # position of the needle's first token in the haystack
    copy_start: int  # position where the model starts emitting the needle again
    needle_len: int


def random_token_range(vocab: int, bos: int | None, token_range: tuple[int, int] | None = None) -> tuple[int, int]:
    """Ids [lo, hi) that random needles, keys and segments are drawn from: `token_range` when given;
    printable ASCII for the byte tokenizer (d_vocab 257), so contexts read like text; else the whole
    vocabulary without BOS when BOS sits at either end (id 0, as in the tiny BPE folders, or the last).
    A BOS inside the range, or ids a padded embedding has beyond its tokenizer (Pythia: 50,304 rows
    for 50,277 tokens), need an explicit `token_range`."""
    if token_range is not None:
        return token_range
    if vocab == 257:
        return (32, 127)
    return (1 if bos == 0 else 0, vocab - 1 if bos == vocab - 1 else vocab)


def needle_batch(
    batch: int, seq_len: int, needle_len: int, vocab: int, *, bos: int | None = None, seed: int = 0
) -> NeedleBatch:
    """Random haystack tokens with a needle inside and the same needle repeated at the end.

    Layout: [BOS] haystack… needle … haystack… needle (copied). The second copy is what a model
    that retrieves can predict: at copy position j it should attend to needle position j + 1.
    """
    prefix = 1 if bos is not None else 0
    if seq_len < prefix + 3 * needle_len + 2:
        raise ValueError(
            f"seq_len={seq_len} is too short for a needle of {needle_len} tokens "
            f"(needs at least {prefix + 3 * needle_len + 2})"
        )
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    needle = torch.randint(0, vocab, (batch, needle_len), generator=gen)
    copy_start = seq_len - needle_len
    needle_start = prefix + (copy_start - prefix - needle_len) // 3
    tokens[:, needle_start : needle_start + needle_len] = needle
    tokens[:, copy_start:] = needle
    if bos is not None:
        tokens[:, 0] = bos
    return NeedleBatch(tokens, needle_start, copy_start, needle_len)


def copy_task_batch(
    batch: int, seq_len: int, vocab: int, *, bos: int | None = None, min_len: int = 6, max_len: int = 16, seed: int = 0
) -> Int[torch.Tensor, "batch seq"]:
    """A random prefix, then a random segment repeated to the end; prefix and segment lengths vary
    by row, so only content-based copying (an induction head), not a fixed offset, predicts the
    repeats. Dense in copies, so induction heads form in a few hundred steps."""
    prefix = 1 if bos is not None else 0
    if seq_len < prefix + 2 * max_len + 1:
        raise ValueError(f"seq_len={seq_len} is too short for two segments of {max_len} tokens")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    for row in range(batch):
        n = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        a = int(torch.randint(prefix, prefix + max_len, (1,), generator=gen))
        reps = -(-(seq_len - a) // n)
        tokens[row, a:] = tokens[row, a : a + n].repeat(reps)[: seq_len - a]
    if bos is not None:
        tokens[:, 0] = bos
    return tokens


def repeated_segments(
    batch: int, segment: int, repeats: int, vocab: int, *, bos: int | None = None, seed: int = 0
) -> Int[torch.Tensor, "batch seq"]:
    """A random segment repeated `repeats` times: induction heads can predict every repeat."""
    gen = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, vocab, (batch, segment), generator=gen)
    tokens = seg.repeat(1, repeats)
    if bos is not None:
        tokens = torch.cat([torch.full((batch, 1), bos), tokens], dim=1)
    return tokens


# --- primes × product: an arrow of time --------------------------------------------------------


def primes_below(n: int) -> list[int]:
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return [i for i in range(n) if sieve[i]]


def primes_product_text(n_lines: int, max_prime: int = 1000, seed: int = 0) -> str:
    """Lines 'p*q=r' with p < q primes zero-padded to 3 digits and r's digits reversed.

    Read forward this is multiplication (easy); read backward it is factorisation (hard).
    """
    primes = primes_below(max_prime)
    width = len(str(max_prime - 1))
    gen = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n_lines):
        i, j = sorted(torch.randperm(len(primes), generator=gen)[:2].tolist())
        p, q = primes[i], primes[j]
        lines.append(f"{p:0{width}d}*{q:0{width}d}={str(p * q).zfill(2 * width)[::-1]}")
    return "\n".join(lines) + "\n"
