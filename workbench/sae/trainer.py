"""One trainer for every SAE variant: Adam, warm-up and decay, clipping, dead latents, resume.

Transcoders (SAEConfig.transcoder) train on the same loop: the store yields a target y next to x
(ActivationBatch.targets), the reconstruction term is the FVU of y, the aux loss reconstructs
y − ŷ, and a g-SAE's gradients are the loss gradient at y (the store captures them there)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from typing import Any, NamedTuple, Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..activations import ActivationBatch, ActivationStore
from ..runs import CHECKPOINT_FILE, CheckpointError, RunDir, atomic_torch_save, load_state
from .config import SAEConfig, SAETrainConfig, TritonPath
from .io import save_sae
from .losses import aux_loss, aux_zipf_weights, auxk_weights, fvu
from .matryoshka import nested_fvu_dense, nested_fvu_sparse, prefix_weights
from .model import SparseAutoencoder
from .parallel import SHARDED, SINGLE, Layout, current_layout, full_state, load_full_state
from .selection import RULES, get_rule


class StepOutput(NamedTuple):
    """One batch's forward pass and losses (`sae_losses`), the same on the dense, sparse and
    Triton paths. Under a "data" layout fvu and aux are this rank's shares of the global batch's
    values; under "latent" every rank has the same values."""

    loss: Float[Tensor, ""]
    """What is backpropagated: recon + aux_coef · aux."""
    fvu: Float[Tensor, ""]
    """Fraction of variance unexplained by the whole reconstruction, Σ‖x − x̂‖² / Σ‖x − mean(x)‖²
    (a transcoder's: of its target y)."""
    recon: Float[Tensor, ""]
    """The loss's reconstruction term: fvu, or with a Matryoshka loss the weighted prefix FVUs (matryoshka.py)."""
    aux: Float[Tensor, ""]
    """The auxiliary loss (AuxK or aux_zipf) before its coefficient; 0 without one."""
    dead: Bool[Tensor, " F"]
    """Which of this rank's latents counted as dead when the step began (the aux candidates)."""
    l0: float
    """Mean number of positive latent values per token (as SAELens and SAEBench count L0)."""
    idx: Int[Tensor, "..."]
    """Latent index of every kept entry (flat [n], or the Triton path's [B, k]; < 0: no entry)."""
    vals: Float[Tensor, "..."]
    """Their values, detached, shaped as idx: what the firing statistics are updated from."""
    tokens: int
    """Tokens in this rank's batch."""
    rows: Int[Tensor, " n"] | None = None
    """Token row of each flat idx entry (sparse and dense paths); None on the Triton path, whose
    [B, k] idx is row-aligned. The health monitor's per-token L0 histogram counts from it."""

    def __getitem__(self, key):  # the old dict spelling, res["loss"], for one release
        if isinstance(key, str):
            warnings.warn(
                f'sae_losses(...)["{key}"] is deprecated: use the StepOutput attribute .{key}',
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(self, key)
        return tuple.__getitem__(self, key)


class TrainMonitor(Protocol):
    """Watches a training run from inside the loop (the training-health pane's source).

    `observe` is called after every optimizer step with the step's batch and output; it returns
    extra keys for that step's metrics.jsonl line, or {} (most steps, to keep it cheap). A
    non-empty answer is logged on that step even off the `log_every` cadence; its "alarms" key, a
    list of {"name": str, "message": str}, is also printed on the CLI's output."""

    def observe(self, step: int, sae: SparseAutoencoder, x: Tensor, res: StepOutput) -> dict[str, Any]: ...


def use_sparse(cfg: SAETrainConfig, layout: Layout = SINGLE, triton: TritonPath | None = None) -> bool:
    """Whether the torch path keeps the kept entries only (SAETrainConfig.sparse)."""
    if triton is not None:
        return False  # the fused kernels already are sparse
    if cfg.sparse == "auto":
        return not cfg.device.startswith("cuda") and not layout.latent
    if cfg.sparse and layout.latent:
        raise ValueError(
            "sparse=True: parallel='latent' merges AuxK candidates across ranks densely; "
            "use parallel='data' or sparse=False"
        )
    return bool(cfg.sparse)


def lr_factor(step: int, cfg: SAETrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_from = int(cfg.decay_start * cfg.steps)
    if step < decay_from:
        return 1.0
    return max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_from))


def make_optimizer(sae: SparseAutoencoder, cfg: SAETrainConfig) -> torch.optim.Adam:
    # the fused Adam (CUDA and, since torch 2.4, CPU) is one pass over p, g, m, v: on 2 CPU cores
    # 4 ms instead of 20-40 ms for the two 8192 × 512 matrices of the wide benchmark shape
    fused = sae.W_enc.device.type in ("cpu", "cuda") or None
    return torch.optim.Adam(
        sae.parameters(), lr=cfg.learning_rate(sae.cfg.d_sae), betas=cfg.adam_betas, eps=cfg.adam_eps, fused=fused
    )


def triton_supported(sae_cfg: SAEConfig) -> bool:
    """Whether the fused kernels cover this SAE: its rule says so, the aux loss is AuxK or none,
    it has no Matryoshka loss (the nested loss runs on the torch paths) and it is not a
    transcoder (the kernels centre x by b_dec and reconstruct x)."""
    return (
        get_rule(sae_cfg.selection).triton
        and sae_cfg.aux in ("auxk", "none")
        and sae_cfg.matryoshka == "none"
        and not sae_cfg.transcoder
    )


def use_triton(cfg: SAETrainConfig, sae_cfg: SAEConfig, layout: Layout = SINGLE) -> TritonPath | None:
    """The fused-kernel path's options when this run takes it, else None."""
    path = cfg.triton_path()
    if cfg.use_triton is None:
        auto = (
            cfg.device.startswith("cuda")
            and torch.cuda.is_available()
            and triton_supported(sae_cfg)
            and not layout.latent
        )
        return path if auto else None
    if cfg.use_triton and not triton_supported(sae_cfg):
        covered = [name for name, rule in RULES.items() if rule.triton]
        raise ValueError(
            f"use_triton: the kernels cover SAEs (not transcoders) with selection {'/'.join(covered)}, aux "
            f"auxk/none and no matryoshka, not {sae_cfg.selection}/{sae_cfg.aux}/matryoshka={sae_cfg.matryoshka}"
            f"/transcoder={sae_cfg.transcoder}"
        )
    if cfg.use_triton and layout.latent:
        raise ValueError(
            "use_triton: the fused kernels do not merge candidates across ranks yet; "
            "use parallel='data' or use_triton=False"
        )
    return path if cfg.use_triton else None


def _triton_losses(
    sae: SparseAutoencoder, x: torch.Tensor, grads: torch.Tensor | None, dead: torch.Tensor, path: TritonPath
):
    from ..kernels.autograd import triton_forward

    cfg, layout = sae.cfg, sae.layout
    n_dead = int(dead.sum()) if cfg.aux == "auxk" else 0
    fused_aux = n_dead > 0 and path.aux == "fused"
    idx, vals, x_hat, aux_idx, e_hat = triton_forward(
        x,
        sae.W_enc,
        sae.b_enc,
        sae.W_dec,
        sae.b_dec,
        cfg.k,
        dead=dead if fused_aux else None,
        k_aux=cfg.aux_k,
        grads=grads if sae.rule.needs_grads else None,
        beta=cfg.beta,
        precision=path.precision,
    )
    mse = fvu(x, x_hat, layout)
    if fused_aux:
        aux = fvu((x - x_hat).detach(), e_hat, layout) * min(n_dead / cfg.aux_k, 1.0)
    elif n_dead:
        # AuxK as dense GEMMs over the dead latents' rows alone: with k_aux = d/2 candidates per
        # token, sparse gathers would read k_aux/k times the main path's rows. The rows keep their
        # order, so selection and ties are exactly the torch path's.
        rows = dead.nonzero().squeeze(1)  # [n_dead]
        pre = sae.pre_acts(x, rows)  # [B, n_dead]
        aux = aux_loss(pre, x - x_hat, sae.W_dec[rows], torch.ones_like(rows, dtype=pre.dtype), cfg.aux_k, layout)
    else:
        aux = mse * 0.0
    # L0 counts positive values on every path (as SAELens and SAEBench do), not selected entries
    l0 = float((vals > 0).sum(1).float().mean())
    return StepOutput(mse + cfg.aux_coef * aux, mse, mse, aux, dead, l0, idx, vals.detach(), len(x))


def _aux_weights(sae: SparseAutoencoder, dead: torch.Tensor) -> torch.Tensor | None:
    """Each latent's weight as an aux-loss candidate (losses.py), None without an aux loss."""
    cfg, layout = sae.cfg, sae.layout
    if cfg.aux == "none":
        return None
    if cfg.aux == "auxk":
        return auxk_weights(dead).to(sae.W_dec.dtype)
    # ranks the usage of all latents, wherever they live
    return aux_zipf_weights(layout.gather_latents(sae.usage), layout.gather_latents(dead.float()) > 0, cfg.k)[
        layout.latent_slice(cfg.d_sae)
    ]


def _sparse_losses(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    grads: torch.Tensor | None,
    dead: torch.Tensor,
    nest: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
) -> StepOutput:
    y = x if y is None else y
    cfg, layout = sae.cfg, sae.layout
    weights = _aux_weights(sae, dead)
    # the aux loss as dense GEMMs over its candidate rows alone (as the Triton path's AuxK), their
    # pre-activations read off the selection's GEMM: ascending rows keep the dense path's order,
    # so its selection and ties are unchanged
    rows = None if weights is None else (weights > 0).nonzero().squeeze(1)
    out = sae.forward_sparse(x, grads, rows)
    mse = fvu(y, out.x_hat, layout)
    if weights is None:
        aux = mse * 0.0
    else:
        pre = out.aux_pre if out.aux_pre is not None else sae.pre_acts(x, rows)
        aux = aux_loss(pre, y - out.x_hat, sae.W_dec[rows], weights[rows], cfg.aux_k, layout)
    if nest is None:
        recon = mse
    else:  # x_hat's own graph is then not backpropagated (the full prefix is among the partial sums)
        # a skip transcoder's x W_skipᵀ joins b_dec as every prefix's base ([B, d_out] broadcasts)
        recon = nested_fvu_sparse(y, out.kept, out.vals, sae.W_dec, sae.output_bias(x), nest, layout)
    l0 = float((out.vals > 0).sum()) / len(x)
    return StepOutput(
        recon + cfg.aux_coef * aux, mse, recon, aux, dead, l0, out.kept.cols, out.vals.detach(), len(x), out.kept.rows
    )


def sae_losses(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    grads: torch.Tensor | None,
    triton: TritonPath | bool | None = None,
    sparse: bool = False,
    nest: Float[Tensor, " F"] | None = None,
    y: Float[Tensor, "B d_out"] | None = None,
) -> StepOutput:
    """Forward pass and losses of one batch: the Triton path, else the sparse torch path
    (`sparse`), else the dense reference path. `nest`: the Matryoshka prefix weights w(m) of
    this step (matryoshka.prefix_weights; None: the plain loss). `y`: a transcoder's target
    (required for one; an SAE's target is x itself)."""
    if sae.cfg.transcoder and y is None:
        raise ValueError("y: a transcoder is trained on a target; pass sae_losses(..., y=targets)")
    if y is not None and y.shape != (len(x), sae.cfg.d_target):
        raise ValueError(f"y: expected [{len(x)}, {sae.cfg.d_target}], got {tuple(y.shape)}")
    dead = sae.dead_mask()
    if nest is not None and (triton or sae.layout.latent):
        raise ValueError("matryoshka: the nested loss runs on the torch paths without parallel='latent'")
    if triton:
        if sae.cfg.transcoder:
            raise ValueError("triton: the fused kernels reconstruct x; a transcoder trains on the torch paths")
        return _triton_losses(sae, x, grads, dead, TritonPath() if triton is True else triton)
    if sparse:
        return _sparse_losses(sae, x, grads, dead, nest, y)
    y = x if y is None else y
    out = sae(x, grads)
    cfg, layout = sae.cfg, sae.layout
    mse = fvu(y, out.x_hat, layout)
    weights = _aux_weights(sae, dead)
    if weights is None:
        aux = mse * 0.0
    else:
        aux = aux_loss(out.pre, y - out.x_hat, sae.W_dec, weights, cfg.aux_k, layout)
    recon = mse if nest is None else nested_fvu_dense(y, out.z, sae.W_dec, sae.output_bias(x), nest, layout)
    l0 = float((out.z > 0).float().sum(1).mean())
    nz = out.mask.nonzero()  # by token, then latent: the order the sparse path keeps
    return StepOutput(
        recon + cfg.aux_coef * aux, mse, recon, aux, dead, l0, nz[:, 1], out.z.detach()[out.mask], len(x), nz[:, 0]
    )


def update_stats(sae: SparseAutoencoder, res: StepOutput) -> None:
    """Dead-latent clocks, usage and the rule's threshold from a step's kept entries."""
    sae.update_stats_sparse(res.idx, res.vals, res.tokens)


def optimizer_step(sae: SparseAutoencoder, opt: torch.optim.Optimizer, cfg: SAETrainConfig, step: int) -> float:
    """Decoder-gradient projection, clipping, the Adam step, renormalisation. Returns grad norm."""
    sae.remove_parallel_grads()
    norm = clip_grad_norm(sae, cfg.grad_clip)
    for group in opt.param_groups:
        group["lr"] = cfg.learning_rate(sae.cfg.d_sae) * lr_factor(step, cfg)
    opt.step()
    sae.normalize_decoder()
    return float(norm)


def clip_grad_norm(sae: SparseAutoencoder, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_; under parallel="latent" the norm spans every rank's latents."""
    layout = sae.layout
    if not layout.latent:
        return torch.nn.utils.clip_grad_norm_(sae.parameters(), max_norm)
    sharded = sum(p.grad.pow(2).sum() for name, p in sae.named_parameters() if name in SHARDED)
    total = (layout.sum(sharded) + sae.b_dec.grad.pow(2).sum()).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in sae.parameters():
        p.grad.mul_(coef)
    return total


class _Losses(torch.nn.Module):
    """sae_losses as a module, so DistributedDataParallel can wrap the whole forward."""

    def __init__(self, sae: SparseAutoencoder, triton: TritonPath | None, sparse: bool = False):
        super().__init__()
        self.sae, self.triton, self.sparse = sae, triton, sparse

    def forward(
        self,
        x: torch.Tensor,
        grads: torch.Tensor | None,
        nest: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> StepOutput:
        return sae_losses(self.sae, x, grads, self.triton, self.sparse, nest, y)


def _loss_fn(sae: SparseAutoencoder, triton: TritonPath | None, device: str, sparse: bool = False):
    module = _Losses(sae, triton, sparse)
    if not sae.layout.data:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device)] if device.startswith("cuda") else None
    # buffers (dead clocks, usage, thresholds) stay equal through all-reduced statistics, not broadcasts
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def _next_batch(
    store: ActivationStore, layout: Layout, device: str, dtype: torch.dtype, targets: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """x, its gradients (or None) and, when `targets`, the transcoder's target y (else None)."""
    batch: ActivationBatch = next(store)
    x = batch.acts.to(device, dtype)
    g = batch.grads.to(device, dtype) if batch.grads is not None else None
    y = batch.targets.to(device, dtype) if targets else None
    if layout.latent:  # each rank read 1/W of the batch; every rank's latents see all of it
        x = layout.all_gather(x)
        g = layout.all_gather(g) if g is not None else None
        y = layout.all_gather(y) if y is not None else None
    return x, g, y


def _metrics(res: StepOutput, sae: SparseAutoencoder, step: int, cfg: SAETrainConfig) -> dict[str, Any]:
    """One metrics.jsonl line (its keys are the run format's; the viewer and tests read them)."""
    layout = sae.layout
    fvu_, recon, aux = res.fvu.detach(), res.recon.detach(), res.aux.detach()
    l0 = torch.tensor(res.l0, dtype=torch.float64, device=fvu_.device)
    dead = res.dead.sum().to(fvu_.device)
    if layout.data:  # shares of the global batch; l0 is a mean over equal row slices
        fvu_, recon, aux, l0 = layout.sum(fvu_), layout.sum(recon), layout.sum(aux), layout.sum(l0) / layout.world
    if layout.latent:  # each rank counts its own latents
        l0, dead = layout.sum(l0), layout.sum(dead)
    line = {
        "step": step,
        "tokens": (step + 1) * cfg.batch_size,
        "loss": (recon + sae.cfg.aux_coef * aux).item(),
        "fvu": fvu_.item(),
        "aux": aux.item(),
        "l0": l0.item(),
        "dead_frac": dead.item() / sae.cfg.d_sae,
    }
    if sae.cfg.matryoshka != "none":
        line["nested_fvu"] = recon.item()
    return line


def _checkpoint(run: RunDir | None, sae: SparseAutoencoder, opt, store, step: int) -> None:
    """Collective under parallel="latent": every rank calls it; rank 0 writes the whole SAE."""
    sae_state, opt_state = full_state(sae.layout, sae, opt)
    if run is not None and sae.layout.rank == 0:
        atomic_torch_save(
            run.file(CHECKPOINT_FILE),
            {
                "kind": "workbench-sae",
                "sae_config": asdict(sae.cfg),
                "sae": sae_state,
                "optimizer": opt_state,
                "store": store.state_dict(),
                "step": step,
            },
        )


def _save_final(run: RunDir, sae: SparseAutoencoder) -> None:
    if not sae.layout.latent:
        if sae.layout.rank == 0:
            save_sae(sae, run.path)
        return
    whole, _ = full_state(sae.layout, sae)
    if sae.layout.rank == 0:
        full = SparseAutoencoder(sae.cfg).to(sae.W_dec.dtype)
        full.load_state_dict(whole)
        save_sae(full, run.path)


def _check_targets(store: ActivationStore, sae_cfg: SAEConfig) -> None:
    """A transcoder needs a store with targets of its d_out (and g-SAE's gradients at them)."""
    if not sae_cfg.transcoder:
        return
    if not store.has_targets:
        raise ValueError(
            "transcoder: the store yields no targets; build it from a source with targets "
            "(StoreConfig.target_hook, TensorSource(targets=...), a cache written with a target hook)"
        )
    if store.d_out != sae_cfg.d_target:
        raise ValueError(f"the store's targets have width {store.d_out}, SAEConfig.d_out is {sae_cfg.d_target}")


def _check_store(store: ActivationStore, layout: Layout) -> None:
    if (store.rank, store.world_size) != (layout.rank, layout.world):
        raise ValueError(
            f"store: built as rank {store.rank} of {store.world_size}, but this process is rank "
            f"{layout.rank} of {layout.world}: pass rank= and world_size= to ActivationStore"
        )


def train_sae(
    sae_cfg: SAEConfig,
    cfg: SAETrainConfig,
    store: ActivationStore,
    run: RunDir | None = None,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    monitor: TrainMonitor | None = None,
) -> SparseAutoencoder:
    """Train (or resume from `run`'s checkpoint) an SAE on batches from `store`.

    Writes config.json, metrics.jsonl, checkpoint.pt (every `checkpoint_every` steps) and, at the
    end, sae.safetensors + sae_config.json. `stop_after` ends after that many steps (a stand-in
    for an interruption, to test resumption). `monitor` (TrainMonitor) adds its keys and alarms
    to the metrics lines.

    Inside an initialised torch.distributed process group (torchrun; see parallel.py) it trains
    one SAE across the ranks as `cfg.parallel` says; `store` must be built with this process's
    rank and world_size. Rank 0 writes the run directory; checkpoints and sae.safetensors always
    hold the whole SAE, so a run resumes on any number of ranks. Under parallel="latent" the
    returned module holds this rank's latents only.
    """
    if store.d != sae_cfg.d_in:
        raise ValueError(f"the store yields d={store.d} activations, SAEConfig.d_in is {sae_cfg.d_in}")
    _check_targets(store, sae_cfg)
    if store.batch_size != cfg.batch_size:
        raise ValueError(f"store.batch_size={store.batch_size} != SAETrainConfig.batch_size={cfg.batch_size}")
    get_rule(sae_cfg.selection).check_training(sae_cfg, cfg.batch_size, store.has_grads)
    if cfg.steps < 1:
        raise ValueError(f"total_tokens={cfg.total_tokens} is less than one batch of {cfg.batch_size}")
    layout = current_layout(cfg.parallel)
    _check_store(store, layout)
    if sae_cfg.skip and layout.latent:
        raise ValueError("skip: W_skip's gradient is not merged across ranks under parallel='latent'; use 'data'")
    if sae_cfg.matryoshka != "none" and layout.latent:
        raise ValueError("matryoshka: a prefix spans every rank's latents under parallel='latent'; use 'data'")
    if layout.world > 1 and cfg.device == "cuda":  # one GPU per process: the one torchrun's rank set
        cfg = replace(cfg, device=f"cuda:{torch.cuda.current_device()}")
    lead = layout.rank == 0
    torch.manual_seed(cfg.seed)
    sae = SparseAutoencoder(sae_cfg, seed=cfg.seed, layout=layout).to(cfg.device, cfg.torch_dtype)
    opt = make_optimizer(sae, cfg)
    start = 0
    ckpt = run.file(CHECKPOINT_FILE) if run is not None else None
    if ckpt is not None and ckpt.exists():
        state = load_state(ckpt, kind="workbench-sae")
        if state["sae_config"] != asdict(sae_cfg):
            raise CheckpointError(f"{ckpt} was written for a different SAEConfig: {state['sae_config']}")
        load_full_state(layout, sae, opt, state["sae"], state["optimizer"])
        store.load_state_dict(state["store"])
        start = state["step"]
        if lead:
            run.truncate_metrics(start - 1)
    else:
        first = store.head_targets(cfg.batch_size) if sae_cfg.transcoder else store.head(cfg.batch_size)
        sae.init_b_dec(first.to(cfg.device, cfg.torch_dtype), cfg.b_dec_init)
        if run is not None and lead:
            run.write_config({"sae": sae_cfg, "train": cfg}, kind="sae")
    wandb_run = _wandb(cfg, sae_cfg) if lead else None
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    triton = use_triton(cfg, sae_cfg, layout)
    loss_fn = _loss_fn(sae, triton, cfg.device, use_sparse(cfg, layout, triton))
    scale = layout.world if layout.data else 1.0  # DDP averages; a rank's loss is its share of the sum
    bar = tqdm(range(start, end), desc=f"training {sae_cfg.selection} SAE", disable=not (progress and lead))
    sae.train()
    for step in bar:
        x, g, y = _next_batch(store, layout, cfg.device, cfg.torch_dtype, sae_cfg.transcoder)
        res = loss_fn(x, g, prefix_weights(sae_cfg, cfg.seed, step), y)
        opt.zero_grad(set_to_none=True)
        (res.loss * scale).backward()
        if layout.latent:  # b_dec is replicated: its gradient sums every rank's latents' part
            sae.b_dec.grad = layout.sum(sae.b_dec.grad)
        grad_norm = optimizer_step(sae, opt, cfg, step)
        update_stats(sae, res)
        extra = monitor.observe(step, sae, x, res) if monitor is not None else {}
        for alarm in extra.get("alarms", []) if lead else []:
            tqdm.write(f"alarm at step {step}: {alarm['name']}: {alarm['message']}")
        if step % cfg.log_every == 0 or step + 1 == cfg.steps or extra:
            metrics = _metrics(res, sae, step, cfg) | {"grad_norm": grad_norm, "lr": opt.param_groups[0]["lr"]} | extra
            bar.set_postfix(fvu=f"{metrics['fvu']:.3f}", dead=f"{metrics['dead_frac']:.2f}")
            if run is not None and lead:
                run.log(metrics)
            if wandb_run is not None:
                wandb_run.log(metrics, step=step)
        if run is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == end):
            _checkpoint(run, sae, opt, store, step + 1)
    if run is not None and end == cfg.steps:
        _save_final(run, sae)
    if wandb_run is not None:
        wandb_run.finish()
    layout.barrier()  # the run directory is complete before any rank returns
    return sae.eval()


def _wandb(cfg: SAETrainConfig, sae_cfg: SAEConfig):
    if cfg.wandb_project is None:
        return None
    try:
        import wandb
    except ImportError:
        return None
    return wandb.init(project=cfg.wandb_project, config={"sae": asdict(sae_cfg), "train": asdict(cfg)})
