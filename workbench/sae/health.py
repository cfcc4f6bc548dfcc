"""Training health: a TrainMonitor (trainer.py) that watches an SAE while it trains and raises alarms.

Every step it only adds the step's kept entries to per-latent firing counts (one index_add_ into an
[F] tensor, no [B, F] code, no host sync) and keeps the step's FVU as a 0-d tensor. Every
`HealthConfig.every` steps it reports, as one "health" dict in that step's metrics.jsonl line:

    density_hist   log10 firing density of every latent over the window (fixed bins, DENSITY_LO,
                   DENSITY_WIDTH), with the latents that never fired counted apart ("never")
    l0_hist        per-token L0 of the training selection over the window, counted from the kept
                   entries' token rows (`per_token_l0`: the Triton path's [B, k] idx, or a step
                   output's `rows`); where a step gives no rows (the flat idx of the sparse and
                   dense paths today), of the inference encoding on `probe_tokens` tokens of the
                   batch instead; l0_hist_from says which ("train" or "inference"). Index = L0,
                   the last bin counts L0_BINS and above. l0_infer the inference encoding's mean,
                   l0_train the training selection's mean over the window, l0_target the rule's
    dead, dense    latents silent over the window / firing on more than `dense_density` of it
    l2_ratio       mean ‖x̂ − b‖ / ‖x − b‖ over the probe tokens (b: the decoder bias b_dec)
    scale_fit      ⟨x̂ − b, x − b⟩ / ‖x̂ − b‖²: the factor that would best rescale the
                   reconstruction; 1 for an unbiased one whatever its FVU, above 1 when it shrinks
    max_dec_cos    the largest cosine between two decoder rows (rows in chunks: never F × F);
                   near_dup the latents with a partner above `dup_cosine`
    adam_step      the lr_too_high measure below
    threshold_move (Mutual/Feature Choice) relative change of the JumpReLU threshold since the last check

Alarms (each raised when its condition starts to hold, as {"name", "message"} under "alarms"):

    duplicate_rows   more than `dup_share` of latents have a decoder row within `dup_cosine` of another
    lr_too_high      Adam's step: the RMS change of an encoder entry over one step, in units of the
                     default learning rate for this width (Gao et al.: 2e-4 / sqrt(F / 16384)), above
                     `step_max` (measured on planted data: 0.1-0.6 at the default lr, 3.5-8 at 30×,
                     where the FVU only plateaus); or the window's median FVU above `blowup_ratio` ×
                     the best window's (and above `blowup_floor`), or not finite: a divergence
    always_on        a latent fired on more than `always_on_density` of the window's tokens
    frozen_threshold a Mutual/Feature Choice threshold moved by less than `frozen_tol` (relative)
                     over the window, or its update counter stood still
    shrinkage        scale_fit above `shrink_scale`: reconstructions systematically too short

No alarm is raised in the first `warmup` steps (the learning-rate warm-up and the first dead-latent
clock). Under a distributed layout each rank reports its own latents; only rank 0 logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..fielddoc import FieldError, doc
from .model import SparseAutoencoder
from .selection import JumpReLURule

DENSITY_LO = -7.0  # log10 density of the first bin's lower edge (densities below fall into it)
DENSITY_WIDTH = 0.25  # bin width in log10 units: bins [-7, -6.75), ..., [-0.25, 0]
DENSITY_BINS = int(-DENSITY_LO / DENSITY_WIDTH)
L0_BINS = 128  # L0 histogram bins 0..L0_BINS-1, the last holding L0 >= L0_BINS - 1


@dataclass(frozen=True)
class HealthConfig:
    """What the training-health monitor measures, how often, and when it raises an alarm."""

    every: int = doc(100, "steps between health reports (each one a metrics.jsonl line)")
    warmup: int = doc(200, "steps before any alarm may be raised (lr warm-up, first dead clocks)")
    probe_tokens: int = doc(1024, "tokens of the batch encoded at each report (L0 histogram, shrinkage)")
    cos_chunk: int = doc(1024, "decoder rows per block of the largest-cosine search (memory chunk × F)")
    dense_density: float = doc(0.1, "a latent firing on more than this share of tokens counts as dense")
    always_on_density: float = doc(0.9, "alarm always_on: a latent fires on more than this share of tokens")
    dup_cosine: float = doc(0.99, "two decoder rows with a cosine above this are near-duplicates")
    dup_share: float = doc(0.01, "alarm duplicate_rows: more than this share of latents have a near-duplicate")
    blowup_ratio: float = doc(2.0, "alarm lr_too_high: window median FVU above this × the best window's")
    blowup_floor: float = doc(0.05, "... and above this FVU (a rise from 0.001 to 0.003 is no blow-up)")
    step_max: float = doc(
        2.0, "alarm lr_too_high: RMS encoder step per entry above this × the default lr 2e-4/sqrt(F/16384)"
    )
    frozen_tol: float = doc(1e-6, "alarm frozen_threshold: relative threshold change per window below this")
    shrink_scale: float = doc(1.2, "alarm shrinkage: the best rescale of x̂ (scale_fit) above this")

    def __post_init__(self) -> None:
        for name in ("every", "probe_tokens", "cos_chunk"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"{name}={getattr(self, name)}: must be at least 1")
        if self.warmup < 0:
            raise FieldError("warmup", f"warmup={self.warmup}: must be >= 0")
        for name in ("dense_density", "always_on_density", "dup_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FieldError(name, f"{name}={getattr(self, name)}: must lie in [0, 1]")
        if not -1.0 < self.dup_cosine < 1.0:
            raise FieldError("dup_cosine", f"dup_cosine={self.dup_cosine}: must lie in (-1, 1)")
        if self.blowup_ratio <= 1.0 or self.shrink_scale <= 1.0:
            raise FieldError("blowup_ratio", "blowup_ratio and shrink_scale must exceed 1")


@torch.no_grad()
def max_decoder_cosine(W_dec: Float[Tensor, "F d"], threshold: float, chunk: int = 1024) -> tuple[float, int]:
    """(the largest cosine between two distinct rows, how many rows have a partner above
    `threshold`), from blocks of `chunk` rows against all F: memory chunk × F, F²·d multiply-adds."""
    w = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    F = len(w)
    best = torch.full((F,), -1.0, dtype=w.dtype, device=w.device)
    for start in range(0, F, chunk):
        block = w[start : start + chunk] @ w.T  # [c, F]
        rows = torch.arange(len(block), device=w.device)
        block[rows, rows + start] = -1.0  # a row is not its own partner
        best[start : start + len(block)] = block.max(1).values
    return (float(best.max()) if F > 1 else -1.0), int((best > threshold).sum())


def density_histogram(counts: Float[Tensor, " F"], tokens: int) -> dict[str, Any]:
    """Log10 densities counts / tokens in the fixed bins; latents with no firing as "never"."""
    fired = counts > 0
    logd = torch.log10(counts[fired].double() / tokens).clamp(DENSITY_LO, -1e-9)
    bins = ((logd - DENSITY_LO) / DENSITY_WIDTH).floor().long().clamp(0, DENSITY_BINS - 1)
    hist = torch.bincount(bins, minlength=DENSITY_BINS)
    return {"lo": DENSITY_LO, "width": DENSITY_WIDTH, "counts": hist.tolist(), "never": int((~fired).sum())}


def l0_histogram(per_token: Tensor) -> list[int]:
    """Counts of per-token L0 values 0, 1, ...; the last bin (L0_BINS - 1) holds every larger L0 too,
    trailing empty bins dropped."""
    hist = torch.bincount(per_token.long().clamp(max=L0_BINS - 1), minlength=1).tolist()
    return hist


def per_token_l0(res) -> Int[Tensor, " B"] | None:
    """Positive kept entries per token of one step's selection: from idx's rows when it is [B, k]
    (the Triton path; idx < 0 marks no entry), else from the step output's `rows` (the token row
    of each flat entry) when it has them; None when it has neither."""
    if res.idx.ndim == 2:
        return ((res.vals > 0) & (res.idx >= 0)).sum(1)
    rows = getattr(res, "rows", None)
    if rows is None:
        return None
    per = torch.zeros(res.tokens, dtype=torch.long, device=rows.device)
    return per.index_add_(0, rows.reshape(-1), (res.vals.reshape(-1) > 0).long())


def target_l0(sae: SparseAutoencoder) -> float:
    """The L0 the rule aims at: k for TopK and g-SAE (k per token), and the average of k per token
    for Mutual Choice (k·B entries per batch) and Feature Choice (capacities summing to k·B)."""
    return float(sae.cfg.k)


@torch.no_grad()
def probe(sae: SparseAutoencoder, x: Float[Tensor, "B d"]) -> dict[str, Any]:
    """Inference encoding of `x`: its L0 histogram and mean, and the reconstruction's norm ratio and
    best rescale about b_dec (float64 sums)."""
    z = sae.encode(x)
    x_hat = sae.decode(z).double()
    per_token = (z > 0).sum(1)
    # about b_dec: what the latents add (x̂ − b_dec = z·W_dec) against what they should
    b = sae.b_dec.detach().double()
    xc, rc = x.double() - b, x_hat - b
    ratio = (rc.norm(dim=1) / xc.norm(dim=1).clamp_min(1e-12)).mean()
    scale = (rc * xc).sum() / (rc * rc).sum().clamp_min(1e-30)
    return {
        "l0_hist": l0_histogram(per_token),
        "l0_infer": float(per_token.float().mean()),
        "l2_ratio": float(ratio),
        "scale_fit": float(scale),
    }


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


class HealthMonitor:
    """The trainer's TrainMonitor for training health (module docstring): pass
    `monitor=HealthMonitor()` to train_sae."""

    def __init__(self, cfg: HealthConfig | None = None):
        self.cfg = cfg or HealthConfig()
        self.counts: Tensor | None = None  # firing counts per latent over the window
        self.tokens = 0
        self.fvus: list[Tensor] = []  # the window's step FVUs, read back at the report
        self.l0s: list[float] = []
        self.l0_counts: Tensor | None = None  # [L0_BINS] tokens per training-selection L0 over the window
        self.best_median = math.inf
        self.threshold: Tensor | None = None  # the JumpReLU threshold at the last report
        self.updates = -1
        self.active: set[str] = set()  # alarms whose condition held at the last report
        self.w_before: Tensor | None = None
        self.reports: list[dict[str, Any]] = []  # every report's health dict, for tests and notebooks

    def observe(self, step: int, sae: SparseAutoencoder, x: Tensor, res) -> dict[str, Any]:
        idx, vals = res.idx.reshape(-1), res.vals.reshape(-1)
        if self.counts is None:
            self.counts = torch.zeros(len(sae.usage), dtype=torch.long, device=idx.device)  # exact at any window
        # index_add_ with a 0/1 weight rather than a boolean filter: no host sync on a GPU
        fired = ((vals > 0) & (idx >= 0)).to(self.counts.dtype)
        self.counts.index_add_(0, idx.clamp_min(0), fired)
        self.tokens += res.tokens
        self.fvus.append(res.fvu.detach())
        self.l0s.append(res.l0)
        per = per_token_l0(res)
        if per is not None:  # index_add_ again: bincount's output size would sync with the host
            if self.l0_counts is None:
                self.l0_counts = torch.zeros(L0_BINS, dtype=torch.long, device=per.device)
            self.l0_counts.index_add_(0, per.clamp(max=L0_BINS - 1), torch.ones_like(per))
        if (step + 2) % self.cfg.every == 0:  # the encoder one step before the report: its update size
            self.w_before = sae.W_enc.detach().clone()
        if (step + 1) % self.cfg.every:
            return {}
        return self._report(step, sae, x)

    def _report(self, step: int, sae: SparseAutoencoder, x: Tensor) -> dict[str, Any]:
        cfg = self.cfg
        counts, tokens = self.counts.cpu(), self.tokens
        fvus = torch.stack(self.fvus).double().cpu().tolist()
        was_training = sae.training
        sae.eval()
        probed = probe(sae, x[: cfg.probe_tokens])
        sae.train(was_training)
        density = counts / tokens
        max_cos, near_dup = max_decoder_cosine(sae.W_dec.detach(), cfg.dup_cosine, cfg.cos_chunk)
        health: dict[str, Any] = {
            "window_tokens": tokens,
            "density_hist": density_histogram(counts, tokens),
            **probed,
            "l0_train": sum(self.l0s) / len(self.l0s),
            "l0_target": target_l0(sae),
            "dead": int((counts == 0).sum()),
            "dense": int((density > cfg.dense_density).sum()),
            "max_density": float(density.max()),
            "max_dec_cos": max_cos,
            "adam_step": self._adam_step(sae),
            "near_dup": near_dup,
            "fvu_median": _quantile(fvus, 0.5),
            "fvu_spread": (_quantile(fvus, 0.9) - _quantile(fvus, 0.1)) / max(_quantile(fvus, 0.5), 1e-12),
        }
        health.update(self._l0_source())
        health.update(self._threshold_state(sae))
        conditions = self._conditions(step, health, len(density))
        self.best_median = min(self.best_median, health["fvu_median"])
        self.counts.zero_()
        self.tokens, self.fvus, self.l0s, self.l0_counts = 0, [], [], None
        alarms = [{"name": n, "message": m} for n, m in conditions.items() if n not in self.active]
        self.active = set(conditions)
        health["alarms_active"] = sorted(conditions)
        self.reports.append({"step": step, **health})
        return {"health": health, "alarms": alarms} if alarms else {"health": health}

    def _l0_source(self) -> dict[str, Any]:
        """The training selection's L0 histogram over the window in place of the inference one, when
        the steps gave token rows."""
        if self.l0_counts is None:
            return {"l0_hist_from": "inference"}
        hist = self.l0_counts.cpu().tolist()
        while len(hist) > 1 and hist[-1] == 0:
            hist.pop()
        return {"l0_hist": hist, "l0_hist_from": "train"}

    def _adam_step(self, sae: SparseAutoencoder) -> float | None:
        """RMS change of an encoder entry over the last step, in units of the Gao et al. learning
        rate for this width (2e-4 / sqrt(F / 16384)). Adam moves each entry by about lr · |m̂|/√v̂,
        whatever the gradient's scale, so this reads the learning rate itself off the weights."""
        if self.w_before is None or self.w_before.shape != sae.W_enc.shape:
            return None
        w = sae.W_enc.detach()
        rms = float((w - self.w_before).double().pow(2).mean().sqrt())
        self.w_before = None
        return rms / (2e-4 / math.sqrt(sae.cfg.d_sae / 16384))

    def _threshold_state(self, sae: SparseAutoencoder) -> dict[str, Any]:
        if not isinstance(sae.rule, JumpReLURule):
            return {}
        thr = sae.threshold.detach().double().cpu()
        updates = int(sae.threshold_updates)
        out: dict[str, Any] = {"threshold_mean": float(thr.mean()), "threshold_updates": updates}
        if self.threshold is not None:
            move = (thr - self.threshold).abs().max() / thr.abs().mean().clamp_min(1e-12)
            out["threshold_move"] = float(move)
            out["threshold_stalled"] = updates == self.updates
        self.threshold, self.updates = thr, updates
        return out

    def _conditions(self, step: int, h: dict[str, Any], F: int) -> dict[str, str]:
        """Alarm name -> message for every condition that holds at this report."""
        cfg = self.cfg
        if step + 1 <= cfg.warmup:
            return {}
        out = {}
        if h["near_dup"] > cfg.dup_share * F:
            out["duplicate_rows"] = (
                f"{h['near_dup']} of {F} decoder rows have a partner at cosine > {cfg.dup_cosine} "
                f"(largest {h['max_dec_cos']:.4f}; threshold: more than {cfg.dup_share:.0%} of latents)"
            )
        med, best = h["fvu_median"], self.best_median
        if math.isfinite(best) and med > cfg.blowup_ratio * best and med > cfg.blowup_floor:
            out["lr_too_high"] = (
                f"median FVU {med:.4g} over the last window is {med / best:.1f}x the best window's "
                f"{best:.4g} (threshold {cfg.blowup_ratio}x): the learning rate is likely too high"
            )
        elif h["adam_step"] is not None and h["adam_step"] > cfg.step_max:
            out["lr_too_high"] = (
                f"encoder entries move by {h['adam_step']:.2f}x the default learning rate per step "
                f"(threshold {cfg.step_max}x; {h['dead']} latents silent over the window): the "
                "learning rate is likely too high"
            )
        elif not math.isfinite(med):
            out["lr_too_high"] = f"FVU is {med} over the window: training diverged"
        if h["max_density"] > cfg.always_on_density:
            out["always_on"] = (
                f"a latent fired on {h['max_density']:.1%} of the window's tokens "
                f"(threshold {cfg.always_on_density:.0%})"
            )
        if "threshold_move" in h and (h["threshold_stalled"] or h["threshold_move"] < cfg.frozen_tol):
            out["frozen_threshold"] = (
                f"the JumpReLU threshold moved by {h['threshold_move']:.2e} (relative) over the window "
                f"and its update counter is at {h['threshold_updates']} (threshold {cfg.frozen_tol:g}): "
                f"inference L0 is {h['l0_infer']:.1f} against a target of {h['l0_target']:g}"
            )
        if h["scale_fit"] > cfg.shrink_scale:
            out["shrinkage"] = (
                f"reconstructions are short: scaling x̂ by {h['scale_fit']:.2f} would fit best "
                f"(threshold {cfg.shrink_scale}; norm ratio {h['l2_ratio']:.2f})"
            )
        return out
