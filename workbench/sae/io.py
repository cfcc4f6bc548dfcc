"""SAE files: the workbench's own (sae.safetensors + sae_config.json) and SAELens' layout.

SAELens' layout (cfg.json with "architecture", sae_weights.safetensors; W_enc stored [d_in, F])
is written by SAELens itself, from a SAELens SAE object we fill, so `SAE.load_from_disk` always
reads what we write. TopK and g-SAE export as "topk"; Mutual and Feature Choice as "jumprelu"
with their learned thresholds, which is exactly their inference encoding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..runs import CheckpointError, atomic_save_tensors, atomic_write_json, load_tensors
from .config import SAEConfig
from .model import SparseAutoencoder

WEIGHTS, CONFIG = "sae.safetensors", "sae_config.json"


def save_sae(sae: SparseAutoencoder, folder: str | Path) -> None:
    folder = Path(folder)
    atomic_save_tensors(folder / WEIGHTS, sae.state_dict(), metadata={"format": "workbench-sae"})
    atomic_write_json(folder / CONFIG, {"format": "workbench-sae/1", "config": asdict(sae.cfg)})


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """Load an SAE saved by `save_sae`; a foreign or corrupt folder gets a CheckpointError."""
    folder = Path(folder)
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        hint = " (it looks like a SAELens SAE: use from_saelens)" if (folder / "cfg.json").exists() else ""
        raise CheckpointError(f"{folder} has no {CONFIG}{hint}")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != "workbench-sae/1":
        raise CheckpointError(f"{cfg_path} is not a workbench SAE config")
    known = {f.name for f in fields(SAEConfig)}
    cfg = SAEConfig(**{k: v for k, v in meta["config"].items() if k in known})
    sae = SparseAutoencoder(cfg)
    state = load_tensors(folder / WEIGHTS)
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        raise CheckpointError(f"{folder / WEIGHTS} does not match its config: expected {expected}, found {found}")
    sae.load_state_dict(state)
    return sae.eval()


def to_saelens(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write `sae` in SAELens' on-disk layout; `sae_lens.SAE.load_from_disk(folder)` reads it."""
    from sae_lens import JumpReLUSAE, TopKSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAEConfig

    cfg = sae.cfg
    meta = SAEMetadata(hook_name=cfg.hook_name or None, model_name=cfg.model_name or None,
                       workbench_selection=cfg.selection)
    common = dict(d_in=cfg.d_in, d_sae=cfg.d_sae, dtype="float32", device="cpu", metadata=meta)
    if cfg.selection in ("topk", "gradient"):
        lens = TopKSAE(TopKSAEConfig(k=cfg.k, **common))
    else:
        lens = JumpReLUSAE(JumpReLUSAEConfig(**common))
    state = {"W_enc": sae.W_enc.detach().T.contiguous(), "b_enc": sae.b_enc.detach(),
             "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}
    if cfg.selection in ("mutual_choice", "feature_choice"):
        state["threshold"] = sae.threshold.detach()
    lens.load_state_dict({k: v.float().cpu() for k, v in state.items()})
    lens.save_model(folder)
    return Path(folder)


def from_saelens(folder: str | Path) -> SparseAutoencoder:
    """Load a SAELens TopK SAE from disk into a workbench TopK SAE."""
    from sae_lens import SAE

    folder = Path(folder)
    cfg_path = folder / "cfg.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no cfg.json: not a SAELens SAE folder")
    raw = json.loads(cfg_path.read_text())
    arch = raw.get("architecture")
    if arch != "topk":
        raise CheckpointError(f"{cfg_path}: architecture {arch!r} is not supported (only 'topk')")
    if raw.get("normalize_activations", "none") != "none" or raw.get("rescale_acts_by_decoder_norm"):
        raise CheckpointError(f"{cfg_path}: input normalisation / decoder-norm rescaling is not supported")
    lens = SAE.load_from_disk(folder)
    meta = lens.cfg.metadata
    cfg = SAEConfig(d_in=lens.cfg.d_in, d_sae=lens.cfg.d_sae, k=lens.cfg.k, selection="topk",
                    hook_name=meta.hook_name or "", model_name=meta.model_name or "")
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(lens.W_enc.T)
        sae.b_enc.copy_(lens.b_enc)
        sae.W_dec.copy_(lens.W_dec)
        sae.b_dec.copy_(lens.b_dec)
    return sae.eval()
