"""The "sae" run kind: a TopK (or any registered rule's) SAE trained on a model's activations at one
hook, evaluated on held-out text (results.json: `SAERunResult`), its feature table and the model
beside it, so the viewer opens the run without the model cache.

`workbench train-sae` is this kind's full command line (every SAEConfig and SAETrainConfig field);
`workbench run sae` builds it from the small config below, as the demo does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..fielddoc import doc
from ..results import _plain, take

FOLDER = "sae-topk"  # the demo's SAE run
PAGE = "workbench.viewer.sae_page"


@dataclass(frozen=True)
class SAERunConfig:
    """An SAE run: where it reads, its size, its training tokens and its evaluation."""

    hook_name: str = doc("blocks.1.hook_resid_post", "TransformerLens hook the SAE reads")
    d_sae: int = doc(2048, "latents")
    k: int = doc(16, "active latents per token (TopK)")
    sae_tokens: int = doc(524_288, "training tokens")
    # best of 5.7e-4 (Gao et al.'s rule), 2e-3, 6e-3 at 256 steps (benchmarks/RESULTS.md)
    sae_lr: float = doc(6e-3, "Adam learning rate")
    dead_tokens: int = doc(200_000, "tokens without firing after which a latent counts as dead (AuxK)")
    batch_size: int = doc(4096, "activations per step")
    seq_len: int = doc(128, "tokens per context the activations are read from")
    eval_windows: int = doc(64, "held-out windows for results.json (the probing scores read twice as many)")
    target_hook: str = doc(
        "", "a transcoder: the hook it predicts from hook_name's input, e.g. blocks.1.hook_mlp_out; empty: an SAE"
    )
    skip: bool = doc(False, "a transcoder: add a learned skip matrix (a skip transcoder)")


@dataclass
class SAERunResult:
    """An SAE run's evaluation on held-out text: `reconstruction_metrics` and `splice_metrics` of
    workbench.sae.evaluate, and where it was measured. The feature table is features.safetensors and
    the sparse probing / absorption-style scores usefulness.json, beside it."""

    KIND: ClassVar[str] = "sae"
    SCHEMA: ClassVar[int] = 1

    fvu: float  # fraction of variance unexplained
    explained_variance: float  # 1 - fvu
    l0: float  # mean active latents per token
    l0_hist: list[int]  # tokens with exactly i active latents, i = 0, 1, ...
    dead_frac: float  # latents firing on no evaluated token
    dense_frac: float  # latents firing on more than DENSE_ABOVE of the tokens
    log10_density: list[float]  # [F] log10 of each latent's firing rate (floored at 1e-10)
    cos_sim: float  # mean cosine(x, x_hat)
    l2_ratio: float  # mean |x_hat| / |x|
    n_tokens: int  # tokens the reconstruction was measured on
    ce_clean: float  # the model's CE loss (nats/token)
    ce_sae: float  # with the SAE spliced in at its hook
    ce_zero_ablation: float
    ce_mean_ablation: float
    ce_loss_recovered: float | None  # (CE_zero - CE_sae) / (CE_zero - CE_clean); None where undefined
    ce_loss_recovered_vs_mean: float | None  # the same against mean ablation
    kl_sae: float  # KL(clean || spliced) per token
    eval_split: str = "validation"  # the corpus split the windows came from
    eval_windows: int | None = None  # held-out windows the splice and the feature table used

    @classmethod
    def from_metrics(cls, reconstruction: dict, splice: dict, **extra: Any) -> SAERunResult:
        """From `reconstruction_metrics(...)` and `splice_metrics(...)` (keys they add later and
        this class does not know are left out)."""
        return take(cls, {**reconstruction, **splice, **extra}, "SAE metrics")

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> SAERunResult:
        return take(cls, d, where)

    @staticmethod
    def migrate(d: dict, schema: int) -> dict:
        return d  # schema 0 was the same flat object


def build(cfg: SAERunConfig, model, data, run, *, progress: bool = True) -> SAERunResult:
    """Train the SAE on `model.model`'s activations over `data.train`, save the model beside it and
    evaluate both on `data.validation` (results.json is written by the evaluation)."""
    from dataclasses import asdict

    from ..activations import ActivationStore, ModelSource, StoreConfig
    from ..corpus import windows
    from ..models import ModelConfig, save_model
    from ..results import read_results
    from ..runs import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE, atomic_write_json
    from ..sae import SAEConfig, SAETrainConfig, train_sae
    from ..sae.health import HealthConfig, HealthMonitor
    from ..sae.run_eval import evaluate_sae

    lm, bos = model.model, data.tokenizer.bos_token_id
    store_cfg = StoreConfig(
        cfg.hook_name,
        batch_size=cfg.batch_size,
        buffer_tokens=65_536,
        seq_len=cfg.seq_len,
        target_hook=cfg.target_hook,
    )
    store = ActivationStore(ModelSource(lm, data.train, store_cfg, bos), cfg.batch_size)
    sae_cfg = SAEConfig(
        d_in=lm.cfg.d_model,
        d_sae=cfg.d_sae,
        k=cfg.k,
        hook_name=cfg.hook_name,
        model_name=model.name,
        dead_tokens=cfg.dead_tokens,
        target_hook=cfg.target_hook,
        skip=cfg.skip,
    )
    train = SAETrainConfig(
        total_tokens=cfg.sae_tokens, batch_size=cfg.batch_size, lr=cfg.sae_lr, log_every=5, checkpoint_every=10**9
    )
    # the demo's runs are short: about 20 health reports a run, the first after a fifth of it
    health = HealthConfig(every=max(1, train.steps // 20), warmup=train.steps // 5)
    sae = train_sae(sae_cfg, train, store, run, progress=progress, monitor=HealthMonitor(health))
    if isinstance(model.config, ModelConfig):  # the run opens without the model cache
        save_model(lm, run.file(MODEL_WEIGHTS_FILE), model.config)
        atomic_write_json(run.file(MODEL_CONFIG_FILE), asdict(model.config))
    val = windows(data.validation, cfg.seq_len, bos_token_id=bos, n=cfg.eval_windows)
    probe_val = windows(data.validation, cfg.seq_len, bos_token_id=bos, n=2 * cfg.eval_windows)
    evaluate_sae(
        run.path, lm, sae, data.tokenizer, val, model_name=model.name, probe_tokens=probe_val, progress=progress
    )
    return read_results(run)
