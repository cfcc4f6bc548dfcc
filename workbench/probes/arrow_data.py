"""The arrow-of-time probe's result, as a plain dataclass: no torch, no TransformerLens.

Reading an arrow run's results.json needs this class and nothing of `probes.arrow`, which computes
it (and re-exports it under its old name)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FORWARD, BACKWARD, NO_ARROW = "forward easier", "backward easier", "no arrow detected at this size"


@dataclass
class ArrowResult:
    """The arrow-of-time probe over S seeds on one data set (JSON-able via to_dict/from_dict)."""

    seeds: list[int]
    loss_forward: list[float]  # [S] mean nats/token of each seed's forward model on the held-out windows
    loss_backward: list[float]  # [S] the same windows reversed, each seed's backward model
    gaps: list[float]  # [S] (L_backward − L_forward) / L_forward per seed
    gap: float  # mean of `gaps`
    gap_ci_seeds: list[float]  # [lo, hi] t interval over the per-seed gaps (df = S − 1)
    null_gaps: list[dict]  # {"direction", "seeds": [a, b], "gap": (L_b − L_a) / L_a} for every pair a < b
    null_max: float  # largest |null gap|
    verdict: str  # "forward easier" | "backward easier" | "no arrow detected at this size"
    gap_ci_windows: list[float]  # [lo, hi] of the mean gap with windows resampled, seeds fixed
    seed_window_cis: list[list[float]]  # [S][lo, hi] each seed's own window interval
    over_training: dict  # {"step", "gaps": [S][steps], "mean", "ci_lo", "ci_hi"} from the run dirs
    curves: dict  # {"seed s": {"forward": {"step", "val_loss"}, "backward": {...}}}
    n_windows: int
    seq_len: int
    level: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArrowResult:
        names = {f.name for f in fields(cls)}
        missing = names - set(d) - {"level"}
        if missing:
            raise ValueError(f"not an ArrowResult: missing {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})
