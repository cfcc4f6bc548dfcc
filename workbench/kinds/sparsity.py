"""The "sparsity" run kind: MLP activation sparsity of a model at the end of training, over its
training checkpoints (when its run folder is known) and under a top-k intervention."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..fielddoc import doc
from ..probes.sparsity_data import SparsityOverTraining, SparsityResult, TopKIntervention
from ..results import ResultsError, take

FOLDER = "probe-sparsity"
PAGE = "workbench.viewer.sparsity_page"


@dataclass(frozen=True)
class SparsityRunConfig:
    """Where the MLP sparsity is measured and which top-k interventions are tried."""

    eval_windows: int = doc(64, "held-out windows the sparsity is measured on")
    seq_len: int = doc(128, "tokens per window")
    threshold: float = doc(0.0, "|a| > threshold counts as an active neuron")
    topk_ks: tuple[int, ...] = doc((1, 4, 16, 64, 256, 512), "k of the top-k interventions (k > d_mlp left out)")
    over_training_windows: int = doc(16, "windows per checkpoint over training and for the top-k intervention")


@dataclass
class SparsityRunResult:
    """MLP activation sparsity of a model: at the end of training, over its checkpoints, and the
    top-k intervention."""

    KIND: ClassVar[str] = "sparsity"
    SCHEMA: ClassVar[int] = 1

    final: SparsityResult
    over_training: SparsityOverTraining | None = None  # None: no checkpoints measured
    topk: TopKIntervention | None = None  # None: not measured

    def to_dict(self) -> dict:
        return {
            "final": self.final.to_dict(),
            "over_training": None if self.over_training is None else dataclasses.asdict(self.over_training),
            "topk": None if self.topk is None else dataclasses.asdict(self.topk),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> SparsityRunResult:
        if not isinstance(d, dict) or "final" not in d:
            raise ResultsError(f"{where} lacks final (a SparsityRunResult)")
        over, topk = d.get("over_training"), d.get("topk")
        return cls(
            final=take(SparsityResult, d["final"], f"{where}.final"),
            over_training=take(SparsityOverTraining, over, f"{where}.over_training") if over else None,
            topk=take(TopKIntervention, topk, f"{where}.topk") if topk else None,
        )

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:
        return d  # schema 0: the same keys, with {} for "not measured"


def build(cfg: SparsityRunConfig, model, data, run, *, progress: bool = True) -> SparsityRunResult:
    """`activation_sparsity` on held-out windows; over the checkpoints of `model.run_dir` when it is
    known; the loss with only the top k MLP activations kept."""
    from ..corpus import windows
    from ..probes.sparsity import activation_sparsity, sparsity_over_training, topk_intervention

    lm = model.model
    val = windows(data.validation, cfg.seq_len, bos_token_id=data.tokenizer.bos_token_id, n=cfg.eval_windows)
    few = val[: cfg.over_training_windows]
    final = activation_sparsity(lm, val, cfg.threshold)
    over = None
    if model.run_dir is not None and model.config is not None:
        over = SparsityOverTraining(**sparsity_over_training(model.run_dir, model.config, few, cfg.threshold))
    ks = [k for k in cfg.topk_ks if k <= lm.cfg.d_mlp]
    return SparsityRunResult(final, over, TopKIntervention(**topk_intervention(lm, few, ks)))
