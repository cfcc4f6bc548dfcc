"""SynthSAEBench at CPU scale, with SAELens' own generator, trainer and evaluator.

`sae_lens.synthetic` ships SynthSAEBench's pieces: `SyntheticModel` (a feature dictionary with
Zipf firing probabilities, a hierarchy forest and low-rank correlated firing) and
`eval_sae_on_synthetic_data` (MCC, uniqueness, per-latent precision/recall/F1 against the true
features, shrinkage, explained variance, dead latents). Here every workbench variant is trained
with `train_sae` on one fixed set of samples from that model, exported with `to_saelens`, and
scored by SAELens' evaluator on fresh samples; beside them SAELens' own TopK is trained with its
`train_toy_sae` on the same samples in the same order, with the same k, width and lr.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..activations import ActivationStore, TensorSource
from .config import SAEConfig
from .io import to_saelens
from .model import SparseAutoencoder
from .trainer import SAETrainConfig, train_sae

SAELENS_TOPK = "SAELens TopK (train_toy_sae)"
# g-SAE is left out: it ranks latents by their effect on a model's loss, and synthetic samples have no loss
VARIANTS = {
    "TopK + AuxK": dict(selection="topk", aux="auxk"),
    "Mutual Choice + AuxK": dict(selection="mutual_choice", aux="auxk"),
    "Feature Choice (uniform) + AuxK": dict(selection="feature_choice", aux="auxk"),
    "Feature Choice (Zipf) + aux_zipf": dict(selection="feature_choice", fc_capacity="zipf", aux="aux_zipf"),
}


@dataclass(frozen=True)
class SynthBenchConfig:
    """One CPU-scale SynthSAEBench run (SynthSAEBench itself: 16k features in 768 dims)."""

    num_features: int = 1024  # ground-truth features of the synthetic model
    hidden_dim: int = 96  # width of its activations
    zipf_exponent: float = 0.5  # firing probability of feature rank r ∝ r^-exponent ...
    max_prob: float = 0.2  # ... from this for the most frequent feature
    min_prob: float = 0.004  # ... down to this for the rarest
    hierarchy_roots: int = 64  # hierarchy forest: root features (0 turns the hierarchy off)
    hierarchy_branching: int = 4  # children per parent
    hierarchy_depth: int = 1  # levels below the roots
    mutually_exclusive: float = 0.5  # fraction of parents whose children never fire together
    correlation_rank: int = 16  # low-rank correlation of firing (0 turns it off)
    correlation_scale: float = 0.1
    d_sae: int = 256  # SAE latents (SynthSAEBench: a quarter of the true features)
    k: int | None = None  # active latents per sample; None: the synthetic model's mean L0, rounded
    training_samples: int = 524_288  # drawn once; every trainer gets all of them, same order
    batch_size: int = 1024  # samples per optimiser step
    lr: float = 3e-3  # every trainer's lr, with the same warm-up (50 steps) and linear decay over the last 20%
    eval_samples: int = 32_768  # fresh samples for SAELens' evaluator
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_features < 2 or self.hidden_dim < 2 or self.d_sae < 2:
            raise ValueError(f"num_features, hidden_dim and d_sae must be at least 2, got {self}")
        if self.training_samples < self.batch_size:
            raise ValueError(
                f"training_samples={self.training_samples} is less than one batch (batch_size={self.batch_size})"
            )
        if not 0 < self.min_prob <= self.max_prob <= 1:
            raise ValueError(f"expected 0 < min_prob <= max_prob <= 1, got {self.min_prob}, {self.max_prob}")

    def model_config(self):
        from sae_lens.synthetic import (
            HierarchyConfig,
            LowRankCorrelationConfig,
            SyntheticModelConfig,
            ZipfianFiringProbabilityConfig,
        )

        hierarchy = (
            HierarchyConfig(
                total_root_nodes=self.hierarchy_roots,
                branching_factor=self.hierarchy_branching,
                max_depth=self.hierarchy_depth,
                mutually_exclusive_portion=self.mutually_exclusive,
                compensate_probabilities=True,
            )
            if self.hierarchy_roots
            else None
        )
        correlation = (
            LowRankCorrelationConfig(
                rank=self.correlation_rank, correlation_scale=self.correlation_scale, seed=self.seed
            )
            if self.correlation_rank
            else None
        )
        return SyntheticModelConfig(
            num_features=self.num_features,
            hidden_dim=self.hidden_dim,
            firing_probability=ZipfianFiringProbabilityConfig(
                exponent=self.zipf_exponent, max_prob=self.max_prob, min_prob=self.min_prob
            ),
            hierarchy=hierarchy,
            correlation=correlation,
            seed=self.seed,
        )


def make_model(cfg: SynthBenchConfig):
    from sae_lens.synthetic import SyntheticModel

    return SyntheticModel(cfg.model_config())


def training_samples(synth, cfg: SynthBenchConfig) -> tuple[Float[Tensor, "n d"], float]:
    """cfg.training_samples activations drawn once (seeded), and their true mean L0."""
    torch.manual_seed(cfg.seed + 100)
    chunks, l0 = [], 0.0
    for start in range(0, cfg.training_samples, 65_536):
        n = min(65_536, cfg.training_samples - start)
        hidden, feats = synth.sample_with_features(n)
        chunks.append(hidden.float())
        l0 += float((feats != 0).sum())
    return torch.cat(chunks), l0 / cfg.training_samples


class CountingStore(ActivationStore):
    """Counts the samples a trainer drew, so the budget is measured, not assumed."""

    drawn = 0

    def __next__(self):
        batch = super().__next__()
        self.drawn += len(batch.acts)
        return batch


def _batches(acts: Tensor, batch: int, seed: int) -> CountingStore:
    # one store per trainer, same seed: every trainer sees the same batches in the same order
    return CountingStore(TensorSource(acts), batch, seed=seed)


class _Replay(torch.nn.Module):
    """train_toy_sae draws `activations_generator(batch)` and maps it through `feature_dict`;
    this is both: it hands back the next batch of our store and maps it by the identity, so
    SAELens' trainer sees exactly the samples our trainer sees."""

    def __init__(self, store: ActivationStore, d: int):
        super().__init__()
        self.store = store
        self.feature_vectors = torch.zeros(1, d)  # train_toy_sae reads its device

    def __call__(self, x_or_batch):  # noqa: D401 - generator call and identity map share the name
        if isinstance(x_or_batch, int):
            return next(self.store).acts
        return x_or_batch


def _train_config(cfg: SynthBenchConfig) -> SAETrainConfig:
    return SAETrainConfig(
        total_tokens=cfg.training_samples // cfg.batch_size * cfg.batch_size,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=min(50, cfg.training_samples // cfg.batch_size),
        log_every=10**9,
    )


def train_ours(name: str, cfg: SynthBenchConfig, acts: Tensor, k: int) -> tuple[SparseAutoencoder, float, int]:
    sae_cfg = SAEConfig(d_in=acts.shape[1], d_sae=cfg.d_sae, k=k, hook_name="synthetic", **VARIANTS[name])
    store = _batches(acts, cfg.batch_size, cfg.seed)
    train = _train_config(cfg)
    t0 = time.perf_counter()
    sae = train_sae(sae_cfg, train, store, progress=False)
    return sae, time.perf_counter() - t0, store.drawn


def train_saelens_topk(cfg: SynthBenchConfig, acts: Tensor, k: int):
    """SAELens' TopKTrainingSAE through its train_toy_sae, on our store's batches."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.synthetic import train_toy_sae

    torch.manual_seed(cfg.seed)
    lens = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=cfg.d_sae, k=k))
    store = _batches(acts, cfg.batch_size, cfg.seed)
    replay = _Replay(store, acts.shape[1])
    t0 = time.perf_counter()
    ours = _train_config(cfg)  # the same warm-up and final linear decay as our trainer
    train_toy_sae(
        lens,
        replay,
        replay,
        training_samples=ours.total_tokens,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_warm_up_steps=ours.warmup_steps,
        lr_decay_steps=ours.steps - int(ours.decay_start * ours.steps),
    )
    return lens, time.perf_counter() - t0, store.drawn


def evaluate(lens_sae, synth, cfg: SynthBenchConfig) -> dict:
    """SAELens' eval_sae_on_synthetic_data on cfg.eval_samples fresh samples (seeded)."""
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    torch.manual_seed(cfg.seed + 200)
    res = eval_sae_on_synthetic_data(
        lens_sae, synth.feature_dict, synth.activation_generator, num_samples=cfg.eval_samples, batch_size=8192
    )
    out = asdict(res)
    out.update({f"{k}": v for k, v in out.pop("classification").items()})
    return out


def as_saelens(sae: SparseAutoencoder):
    """Our SAE as the SAELens SAE that `to_saelens` writes and SAELens reads back."""
    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as tmp:
        to_saelens(sae, tmp)
        return SAE.load_from_disk(tmp)


def _saelens_inference(lens):
    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as tmp:
        lens.save_inference_model(tmp)
        return SAE.load_from_disk(tmp)


def run_bench(cfg: SynthBenchConfig, wanted=lambda name: True, log=print) -> dict:
    """Every wanted variant and SAELens' TopK on one synthetic model: a row of SAELens' metrics each."""
    synth = make_model(cfg)
    acts, true_l0 = training_samples(synth, cfg)
    k = cfg.k or max(1, round(true_l0))
    rows = []
    names = [n for n in VARIANTS if wanted(n)] + ([SAELENS_TOPK] if wanted(SAELENS_TOPK) else [])
    for name in names:
        if name == SAELENS_TOPK:
            lens, seconds, drawn = train_saelens_topk(cfg, acts, k)
            scored = _saelens_inference(lens)
        else:
            sae, seconds, drawn = train_ours(name, cfg, acts, k)
            scored = as_saelens(sae)
        row = {"variant": name, "seconds": seconds, "samples_drawn": drawn, **evaluate(scored, synth, cfg)}
        log(row)
        rows.append(row)
    return {"config": asdict(cfg), "k": k, "true_l0": true_l0, "rows": rows}
