"""The "arrow" run kind: the arrow of time (`probes.arrow.arrow_over_seeds`) on natural text and on
primes×product, one forward/backward pair per seed on each (the shipped pairs where the recipe is
the shipped one, trained into the run otherwise)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..fielddoc import doc
from ..probes.arrow_data import ArrowResult
from ..results import ResultsError, take

FOLDER = "probe-arrow"
PAGE = "workbench.viewer.arrow_page"
PRIMES_FOLDER = "primes"  # inside the run: the primes pairs trained when the shipped ones do not fit


@dataclass(frozen=True)
class ArrowRunConfig:
    """The seeds, the held-out windows, and the pairs: shipped or trained."""

    seeds: tuple[int, ...] = doc((0, 1, 2), "one forward/backward pair per seed (the seed-level interval)")
    seq_len: int = doc(128, "tokens per natural-text window")
    natural_windows: int = doc(256, "held-out natural-text windows")
    primes_windows: int = doc(256, "held-out primes×product windows")
    # Set by a recipe, not flags. The models' configs are typed Any here so that reading this config
    # (the CLI's flags) imports no model code: models.ModelConfig and models.LMTrainConfig.
    natural_dir: str | None = field(default=None)  # None: the shipped workbench-tiny pairs; else train them here
    natural_model: Any = field(default=None)  # ModelConfig of the pairs trained in natural_dir
    natural_train: Any = field(default=None)  # their LMTrainConfig; None: DEFAULT_TRAIN
    primes_model: Any = field(default=None)  # ModelConfig; None: the shipped recipe (PRIMES_MODEL)
    primes_train: Any = field(default=None)  # LMTrainConfig; None: PRIMES_TRAIN


@dataclass
class ArrowRunResult:
    """The arrow of time (`probes.arrow.arrow_over_seeds`) on each data set, by its name."""

    KIND: ClassVar[str] = "arrow"
    SCHEMA: ClassVar[int] = 1

    datasets: dict[str, ArrowResult]

    def to_dict(self) -> dict:
        return {"datasets": {k: v.to_dict() for k, v in self.datasets.items()}}

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> ArrowRunResult:
        if not isinstance(d, dict) or not isinstance(d.get("datasets"), dict):
            raise ResultsError(f"{where} lacks datasets (an ArrowRunResult)")
        return cls({k: take(ArrowResult, v, f"{where}.datasets[{k!r}]") for k, v in d["datasets"].items()})

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:
        if schema == 0 and "datasets" not in d and "gaps" in d:
            raise ResultsError(
                "it holds a one-seed arrow result (gaps and curves, from before seeds), which has "
                "no seed-level interval and no verdict; delete it and rebuild the run"
            )
        return d


def build(cfg: ArrowRunConfig, model, data, run, *, progress: bool = True) -> ArrowRunResult:
    """Both data sets' pairs over `seeds` and the arrow on each. `model` is not used: the probe
    compares pairs trained in both directions (its `data` is the natural text)."""
    from pathlib import Path

    from ..default_model import PRIMES_MODEL, PRIMES_TRAIN, load_shipped_pairs, primes_data, primes_dir, shipped_dir
    from ..models import DEFAULT_TRAIN, pair_dirs, train_pairs
    from ..probes.arrow import arrow_over_seeds

    seeds = tuple(cfg.seeds)
    if cfg.natural_dir is None:
        nat_root, natural = shipped_dir(), load_shipped_pairs(seeds)
    else:
        if cfg.natural_model is None:
            raise ValueError("natural_model: required with natural_dir (the pairs to train there)")
        nat_root = Path(cfg.natural_dir)
        train = cfg.natural_train or DEFAULT_TRAIN
        natural = train_pairs(cfg.natural_model, train, data, nat_root, seeds=seeds, progress=progress)
    pm, pt = cfg.primes_model or PRIMES_MODEL, cfg.primes_train or PRIMES_TRAIN
    pdata = primes_data()
    if (pm, pt) == (PRIMES_MODEL, PRIMES_TRAIN) and primes_dir().is_dir():
        p_root = primes_dir()
        primes = load_shipped_pairs(seeds, p_root, PRIMES_MODEL)
    else:
        p_root = run.file(PRIMES_FOLDER)
        primes = train_pairs(pm, pt, pdata, p_root, seeds=seeds, progress=progress)
    return ArrowRunResult(
        {
            "natural text": arrow_over_seeds(
                natural,
                data,
                cfg.seq_len,
                n_windows=cfg.natural_windows,
                seeds=list(seeds),
                run_dirs=pair_dirs(nat_root, seeds),
            ),
            "primes×product": arrow_over_seeds(
                primes,
                pdata,
                pt.seq_len,
                n_windows=cfg.primes_windows,
                seeds=list(seeds),
                run_dirs=pair_dirs(p_root, seeds),
            ),
        }
    )
