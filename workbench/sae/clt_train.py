"""Training and files of a cross-layer transcoder (clt.py), on the SAE trainer's schedule.

`train_clt` is the SAE trainer's loop (trainer.py: Adam, warm-up and linear decay, clipping,
AuxK, resumable checkpoints) over a store of every-layer rows (clt_data.py). What it does not
take: the Triton kernels (they reconstruct x), Matryoshka losses, and torch.distributed
(one process); each is refused with the reason. The run folder holds config.json,
metrics.jsonl, checkpoint.pt and, at the end, clt.safetensors + clt_config.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..activations import ActivationStore
from ..runs import (
    CHECKPOINT_FILE,
    CheckpointError,
    RunDir,
    atomic_save_tensors,
    atomic_torch_save,
    atomic_write_json,
    load_state,
    load_tensors,
)
from .clt import CLTConfig, CLTStepOutput, CrossLayerTranscoder, clt_losses
from .clt_data import split_layers
from .config import SAETrainConfig
from .selection import get_rule
from .trainer import lr_factor, use_sparse

CLT_WEIGHTS_FILE = "clt.safetensors"
CLT_CONFIG_FILE = "clt_config.json"
CLT_FORMAT = "workbench-clt/1"
CHECKPOINT_KIND = "workbench-clt"


def save_clt(clt: CrossLayerTranscoder, folder: str | Path) -> None:
    """clt.safetensors (the state dict: W_enc, b_enc, W_dec.{l}, b_dec, thresholds, statistics) and
    clt_config.json (the CLTConfig: n_layers, hooks and the rest)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(folder / CLT_WEIGHTS_FILE, clt.state_dict(), metadata={"format": CLT_FORMAT})
    atomic_write_json(folder / CLT_CONFIG_FILE, {"format": CLT_FORMAT, "config": asdict(clt.cfg)})


def load_clt(folder: str | Path) -> CrossLayerTranscoder:
    """A CLT saved by `save_clt` (float64 stays float64, else float32), in eval mode; a missing,
    foreign or corrupt folder gets a CheckpointError naming the file."""
    folder = Path(folder)
    path = folder / CLT_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CLT_CONFIG_FILE} (not a saved cross-layer transcoder)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != CLT_FORMAT:
        raise CheckpointError(f"{path} is not a {CLT_FORMAT} config")
    known = {f.name for f in fields(CLTConfig)}
    cfg = CLTConfig(**{k: v for k, v in meta["config"].items() if k in known})
    state = load_tensors(folder / CLT_WEIGHTS_FILE)
    clt = CrossLayerTranscoder(cfg)
    if state.get("W_enc", torch.empty(0)).dtype == torch.float64:
        clt = clt.double()
    try:
        clt.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{folder / CLT_WEIGHTS_FILE} does not fit {path}: {e}") from e
    return clt.eval()


def _check(cfg: CLTConfig, train: SAETrainConfig, store: ActivationStore) -> None:
    L = cfg.n_layers
    if store.d != L * cfg.d_in:
        raise ValueError(
            f"the store yields rows of {store.d}, a CLT of {L} layers x d_in={cfg.d_in} needs {L * cfg.d_in}"
        )
    if not store.has_targets or store.d_out != L * cfg.d_target:
        raise ValueError(
            f"the store's targets are {store.d_out if store.has_targets else 'absent'}; a CLT needs every layer's "
            f"target, {L} x {cfg.d_target} = {L * cfg.d_target} per row (clt_data.CLTSource)"
        )
    if store.batch_size != train.batch_size:
        raise ValueError(f"store.batch_size={store.batch_size} != SAETrainConfig.batch_size={train.batch_size}")
    if train.steps < 1:
        raise ValueError(f"total_tokens={train.total_tokens} is less than one batch of {train.batch_size}")
    if train.use_triton:
        raise ValueError("use_triton: the fused kernels reconstruct x; a CLT trains on the torch paths")
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        raise ValueError("a CLT trains in one process (its layers' selections are not merged across ranks yet)")
    get_rule(cfg.selection).check_training(cfg.layer_config(0), train.batch_size, store.has_grads)


def _metrics(res: CLTStepOutput, step: int, train: SAETrainConfig, aux_coef: float) -> dict:
    return {
        "step": step,
        "tokens": (step + 1) * train.batch_size,
        "loss": float(res.fvu + aux_coef * res.aux),
        "fvu": float(res.fvu),
        "fvu_layers": [float(f) for f in res.fvus],
        "aux": float(res.aux),
        "l0": res.l0,
        "l0_layers": res.l0s,
        "dead_frac": float(res.dead.float().mean()),
    }


def _checkpoint(run: RunDir, clt: CrossLayerTranscoder, opt, store: ActivationStore, step: int) -> None:
    state = {"clt_config": asdict(clt.cfg), "clt": clt.state_dict(), "optimizer": opt.state_dict()}
    atomic_torch_save(
        run.file(CHECKPOINT_FILE), {"kind": CHECKPOINT_KIND, **state, "store": store.state_dict(), "step": step}
    )


def train_clt(
    cfg: CLTConfig,
    train: SAETrainConfig,
    store: ActivationStore,
    run: RunDir | None = None,
    *,
    stop_after: int | None = None,
    progress: bool = True,
) -> CrossLayerTranscoder:
    """Train (or resume from `run`'s checkpoint) a CLT on every-layer rows from `store`.
    `stop_after` ends after that many steps (a stand-in for an interruption)."""
    _check(cfg, train, store)
    torch.manual_seed(train.seed)
    clt = CrossLayerTranscoder(cfg, seed=train.seed).to(train.device, train.torch_dtype)
    lr = train.learning_rate(cfg.d_sae)
    fused = clt.W_enc.device.type in ("cpu", "cuda") or None
    opt = torch.optim.Adam(clt.parameters(), lr=lr, betas=train.adam_betas, eps=train.adam_eps, fused=fused)
    ckpt = run.file(CHECKPOINT_FILE) if run is not None else None
    start = 0
    if ckpt is not None and ckpt.exists():
        state = load_state(ckpt, kind=CHECKPOINT_KIND)
        if state["clt_config"] != asdict(cfg):
            raise CheckpointError(f"{ckpt} was written for a different CLTConfig: {state['clt_config']}")
        clt.load_state_dict(state["clt"])
        opt.load_state_dict(state["optimizer"])
        store.load_state_dict(state["store"])
        start = state["step"]
        run.truncate_metrics(start - 1)
    else:
        first = split_layers(store.head_targets(train.batch_size), cfg.n_layers)
        clt.init_b_dec(first.to(train.device, train.torch_dtype), train.b_dec_init)
        if run is not None:
            run.write_config({"clt": cfg, "train": train}, kind="clt")
    sparse = use_sparse(train)
    end = train.steps if stop_after is None else min(train.steps, start + stop_after)
    clt.train()
    for step in tqdm(range(start, end), desc=f"training {cfg.selection} CLT", disable=not progress):
        batch = next(store)
        x = split_layers(batch.acts, cfg.n_layers).to(train.device, train.torch_dtype)
        y = split_layers(batch.targets, cfg.n_layers).to(train.device, train.torch_dtype)
        g = None if batch.grads is None else split_layers(batch.grads, cfg.n_layers).to(train.device, train.torch_dtype)
        res = clt_losses(clt, x, y, g, sparse=sparse)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(clt.parameters(), train.grad_clip))
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, train)
        opt.step()
        for layer in range(cfg.n_layers):
            clt.update_stats(layer, res.cols[layer], res.vals[layer], res.tokens)
        if run is not None and (step % train.log_every == 0 or step + 1 == train.steps):
            run.log(
                _metrics(res, step, train, cfg.aux_coef) | {"grad_norm": grad_norm, "lr": opt.param_groups[0]["lr"]}
            )
        if run is not None and ((step + 1) % train.checkpoint_every == 0 or step + 1 == end):
            _checkpoint(run, clt, opt, store, step + 1)
    if run is not None and end == train.steps:
        save_clt(clt, run.path)
    return clt.eval()
