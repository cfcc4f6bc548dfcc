"""One trainer for every SAE variant: Adam, warm-up and decay, clipping, dead latents, resume."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..activations import ActivationBatch, ActivationStore
from ..runs import RunDir, atomic_torch_save, load_state, CheckpointError
from .config import SAEConfig
from .io import save_sae
from .losses import aux_loss, aux_zipf_weights, auxk_weights, fvu
from .model import SparseAutoencoder


@dataclass(frozen=True)
class SAETrainConfig:
    """How an SAE is trained (what it is lives in SAEConfig)."""

    total_tokens: int = 2_000_000  # training tokens; steps = total_tokens // batch_size
    batch_size: int = 4096  # tokens per step (the store must yield batches of this size)
    lr: float | None = None  # Adam learning rate; None: 2e-4 / sqrt(d_sae / 16384) (Gao et al.)
    warmup_steps: int = 50  # linear warm-up from 0
    decay_start: float = 0.8  # fraction of training after which lr decays linearly to 0
    grad_clip: float = 1.0  # max global gradient norm
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 6.25e-10
    b_dec_init: str = "geometric_median"  # "geometric_median" | "mean" | "zeros", from chunk 0
    seed: int = 0  # initialisation (the store's own seed orders the data)
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    use_triton: bool | None = None  # fused kernels; None: on CUDA for topk and gradient rules
    device: str = "cpu"
    wandb_project: str | None = None  # also log to wandb when it is installed and this is set

    @property
    def steps(self) -> int:
        return self.total_tokens // self.batch_size

    def learning_rate(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 16384)


def lr_factor(step: int, cfg: SAETrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_from = int(cfg.decay_start * cfg.steps)
    if step < decay_from:
        return 1.0
    return max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_from))


def make_optimizer(sae: SparseAutoencoder, cfg: SAETrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(sae.parameters(), lr=cfg.learning_rate(sae.cfg.d_sae), betas=cfg.adam_betas,
                            eps=cfg.adam_eps)


def triton_supported(sae_cfg: SAEConfig) -> bool:
    return sae_cfg.selection in ("topk", "gradient") and sae_cfg.aux in ("auxk", "none")


def use_triton(cfg: SAETrainConfig, sae_cfg: SAEConfig) -> bool:
    if cfg.use_triton is None:
        return cfg.device.startswith("cuda") and torch.cuda.is_available() and triton_supported(sae_cfg)
    if cfg.use_triton and not triton_supported(sae_cfg):
        raise ValueError(f"use_triton: the kernels cover selection topk/gradient with aux auxk/none, "
                         f"not {sae_cfg.selection}/{sae_cfg.aux}")
    return cfg.use_triton


def _triton_losses(sae: SparseAutoencoder, x: torch.Tensor, grads: torch.Tensor | None, dead: torch.Tensor):
    from ..kernels.autograd import triton_forward

    cfg = sae.cfg
    n_dead = int(dead.sum())
    idx, vals, x_hat, aux_idx, e_hat = triton_forward(
        x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, cfg.k, dead=dead if cfg.aux == "auxk" and n_dead else None,
        k_aux=cfg.aux_k, grads=grads if cfg.selection == "gradient" else None, beta=cfg.beta)
    mse = fvu(x, x_hat)
    aux = mse * 0.0 if e_hat is None else fvu((x - x_hat).detach(), e_hat) * min(n_dead / cfg.aux_k, 1.0)
    return {"loss": mse + cfg.aux_coef * aux, "fvu": mse, "aux": aux, "sparse": (idx, vals.detach()), "dead": dead,
            "l0": float((vals > 0).sum(1).float().mean())}


def sae_losses(sae: SparseAutoencoder, x: torch.Tensor, grads: torch.Tensor | None,
               triton: bool = False) -> dict[str, Any]:
    """Forward pass and losses of one batch (used by the single- and multi-process trainers)."""
    dead = sae.dead_mask()
    if triton:
        return _triton_losses(sae, x, grads, dead)
    out = sae(x, grads)
    mse = fvu(x, out.x_hat)
    cfg = sae.cfg
    if cfg.aux == "none":
        aux = mse * 0.0
    else:
        weights = auxk_weights(dead) if cfg.aux == "auxk" else aux_zipf_weights(sae.usage, dead, cfg.k)
        aux = aux_loss(out.pre, x - out.x_hat, sae.W_dec, weights, cfg.aux_k)
    return {"loss": mse + cfg.aux_coef * aux, "fvu": mse, "aux": aux, "out": out, "dead": dead,
            "l0": float(out.mask.float().sum(1).mean())}


def update_stats(sae: SparseAutoencoder, res: dict[str, Any]) -> None:
    if "sparse" in res:
        sae.update_stats_sparse(*res["sparse"])
    else:
        sae.update_stats(res["out"].z.detach(), res["out"].mask)


def optimizer_step(sae: SparseAutoencoder, opt: torch.optim.Optimizer, cfg: SAETrainConfig, step: int) -> float:
    """Decoder-gradient projection, clipping, the Adam step, renormalisation. Returns grad norm."""
    sae.remove_parallel_grads()
    norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
    for group in opt.param_groups:
        group["lr"] = cfg.learning_rate(sae.cfg.d_sae) * lr_factor(step, cfg)
    opt.step()
    sae.normalize_decoder()
    return float(norm)


def _checkpoint(run: RunDir, sae, opt, store, step: int) -> None:
    atomic_torch_save(run.file("checkpoint.pt"), {
        "kind": "workbench-sae", "sae_config": asdict(sae.cfg), "sae": sae.state_dict(),
        "optimizer": opt.state_dict(), "store": store.state_dict(), "step": step})


def train_sae(sae_cfg: SAEConfig, cfg: SAETrainConfig, store: ActivationStore, run: RunDir | None = None,
              *, stop_after: int | None = None, progress: bool = True) -> SparseAutoencoder:
    """Train (or resume from `run`'s checkpoint) an SAE on batches from `store`.

    Writes config.json, metrics.jsonl, checkpoint.pt (every `checkpoint_every` steps) and, at the
    end, sae.safetensors + sae_config.json. `stop_after` ends after that many steps (a stand-in
    for an interruption, to test resumption).
    """
    if store.d != sae_cfg.d_in:
        raise ValueError(f"the store yields d={store.d} activations, SAEConfig.d_in is {sae_cfg.d_in}")
    if store.batch_size != cfg.batch_size:
        raise ValueError(f"store.batch_size={store.batch_size} != SAETrainConfig.batch_size={cfg.batch_size}")
    if sae_cfg.selection == "gradient" and not store.has_grads:
        raise ValueError("selection='gradient' needs a store with gradients (StoreConfig.with_grads=True)")
    if sae_cfg.selection == "feature_choice" and sae_cfg.k * cfg.batch_size < sae_cfg.d_sae:
        raise ValueError(f"feature_choice: k·batch = {sae_cfg.k * cfg.batch_size} tokens cannot give each of "
                         f"{sae_cfg.d_sae} latents one")
    if cfg.steps < 1:
        raise ValueError(f"total_tokens={cfg.total_tokens} is less than one batch of {cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    sae = SparseAutoencoder(sae_cfg, seed=cfg.seed).to(cfg.device)
    opt = make_optimizer(sae, cfg)
    start = 0
    ckpt = run.file("checkpoint.pt") if run is not None else None
    if ckpt is not None and ckpt.exists():
        state = load_state(ckpt, kind="workbench-sae")
        if state["sae_config"] != asdict(sae_cfg):
            raise CheckpointError(f"{ckpt} was written for a different SAEConfig: {state['sae_config']}")
        sae.load_state_dict(state["sae"])
        opt.load_state_dict(state["optimizer"])
        store.load_state_dict(state["store"])
        start = state["step"]
        run.truncate_metrics(start - 1)
    else:
        sae.init_b_dec(store.source.chunk(0).acts[: cfg.batch_size].to(cfg.device), cfg.b_dec_init)
        if run is not None:
            run.write_config({"sae": sae_cfg, "train": cfg}, kind="sae")
    wandb_run = _wandb(cfg, sae_cfg)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    triton = use_triton(cfg, sae_cfg)
    bar = tqdm(range(start, end), desc=f"training {sae_cfg.selection} SAE", disable=not progress)
    sae.train()
    for step in bar:
        batch: ActivationBatch = next(store)
        x = batch.acts.to(cfg.device)
        g = batch.grads.to(cfg.device) if batch.grads is not None else None
        res = sae_losses(sae, x, g, triton)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        grad_norm = optimizer_step(sae, opt, cfg, step)
        update_stats(sae, res)
        if step % cfg.log_every == 0 or step + 1 == cfg.steps:
            metrics = {"step": step, "tokens": (step + 1) * cfg.batch_size, "loss": res["loss"].item(),
                       "fvu": res["fvu"].item(), "aux": res["aux"].item(),
                       "l0": res["l0"],
                       "dead_frac": res["dead"].float().mean().item(), "grad_norm": grad_norm,
                       "lr": opt.param_groups[0]["lr"]}
            bar.set_postfix(fvu=f"{metrics['fvu']:.3f}", dead=f"{metrics['dead_frac']:.2f}")
            if run is not None:
                run.log(metrics)
            if wandb_run is not None:
                wandb_run.log(metrics, step=step)
        if run is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == end):
            _checkpoint(run, sae, opt, store, step + 1)
    if run is not None and end == cfg.steps:
        save_sae(sae, run.path)
    if wandb_run is not None:
        wandb_run.finish()
    return sae.eval()


def _wandb(cfg: SAETrainConfig, sae_cfg: SAEConfig):
    if cfg.wandb_project is None:
        return None
    try:
        import wandb
    except ImportError:
        return None
    return wandb.init(project=cfg.wandb_project, config={"sae": asdict(sae_cfg), "train": asdict(cfg)})
