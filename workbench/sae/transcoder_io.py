"""Transcoder files: SAELens' (jumprelu_)transcoder / skip-transcoder folders and circuit-tracer's
per-layer safetensors. The workbench's own format (io.save_sae / load_sae) holds every transcoder.

Both foreign formats store an inference encoding that is a ReLU or a JumpReLU, never a per-token
top-k, so what is exported exactly is a transcoder whose inference is a JumpReLU: Mutual Choice
(BatchTopK) and Feature Choice, with the thresholds they learn in training. A TopK or g-SAE
transcoder is refused (a JumpReLU cannot reproduce its per-token top-k); train it with
selection="mutual_choice" for these formats.

SAELens 6.54 (sae_lens/saes/transcoder.py): cfg.json with architecture "jumprelu_transcoder" or
"jumprelu_skip_transcoder", d_in, d_sae, d_out, apply_b_dec_to_input false; weights W_enc
[d_in, F], b_enc, W_dec [F, d_out], b_dec [d_out], threshold [F], W_skip [d_out, d_in];
f(x) = ReLU(pre)·(pre > θ) W_dec + b_dec + x W_skipᵀ with pre = x W_enc + b_enc. Ours is
pre·(pre > θ): the same for θ ≥ 0 (negative thresholds are refused). Plain "transcoder" /
"skip_transcoder" folders (ReLU) load as a JumpReLU at θ = 0, which is ReLU.

circuit-tracer 0.5.0 (transcoder/single_layer_transcoder.py, utils/caching.py): a folder with
config.yaml (model_kind "transcoder_set", feature_input_hook / feature_output_hook as names
inside a block, e.g. "ln2.hook_normalized" and "hook_mlp_out") and one layer_{L}.safetensors per
layer 0..n-1 with W_enc [F, d], W_dec [F, d], b_enc, b_dec, activation_function.threshold and, for
skip transcoders, W_skip [d, d] (skip = x W_skipᵀ), as SingleLayerTranscoder.to_safetensors writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ..runs import CheckpointError, atomic_save_tensors, atomic_write_bytes, load_tensors
from .config import SAEConfig
from .model import SparseAutoencoder

JUMPRELU_RULES = ("mutual_choice", "feature_choice")
SAELENS_ARCHITECTURES = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
CIRCUIT_TRACER_CONFIG = "config.yaml"
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _exportable(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """The transcoder's weights as float32/float64 tensors, or a ValueError naming what cannot be written."""
    cfg = sae.cfg
    if not cfg.transcoder:
        raise ValueError("sae: not a transcoder (cfg.transcoder is false); io.to_saelens writes SAEs")
    if sae.layout.latent:
        raise ValueError("sae: a latent-parallel rank holds only part of the dictionary; gather it first")
    if sae.rule.saelens_architecture != "jumprelu":
        raise ValueError(
            f"sae: selection={cfg.selection!r} encodes by a per-token top-k at inference, which neither "
            "SAELens' nor circuit-tracer's transcoder files can hold (they store a ReLU or JumpReLU); "
            f"train with selection in {JUMPRELU_RULES} (its inference is a JumpReLU) or keep io.save_sae's format"
        )
    if sae.W_enc.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"sae: parameters are {sae.W_enc.dtype}; expected float32 or float64")
    if bool((sae.threshold < 0).any()):
        raise ValueError("sae.threshold: negative JumpReLU thresholds have no ReLU·(pre > θ) equivalent")
    state = {name: getattr(sae, name).detach().cpu() for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    if cfg.skip:
        state["W_skip"] = sae.W_skip.detach().cpu()
    return state


def _load(cfg: SAEConfig, tensors: dict[str, torch.Tensor], threshold: torch.Tensor) -> SparseAutoencoder:
    dtype = torch.float64 if tensors["W_enc"].dtype == torch.float64 else torch.float32
    sae = SparseAutoencoder(cfg).to(dtype)
    with torch.no_grad():
        for name, value in tensors.items():
            target = getattr(sae, name)
            if tuple(target.shape) != tuple(value.shape):
                raise CheckpointError(f"{name}: shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            target.copy_(value.to(dtype))
        sae.threshold.copy_(threshold.to(dtype))
    return sae.eval()


# --- SAELens ---------------------------------------------------------------------------------


def to_saelens_transcoder(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write a JumpReLU-inference transcoder as SAELens' jumprelu_(skip_)transcoder, through SAELens'
    own classes, so `sae_lens.SAE.load_from_disk(folder)` computes the same output."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.transcoder import (
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
    )

    state = _exportable(sae)
    cfg = sae.cfg
    meta = SAEMetadata(
        hook_name=cfg.hook_name or None,
        hook_name_out=cfg.target_hook or None,
        model_name=cfg.model_name or None,
        hook_head_index=None,
        workbench_selection=cfg.selection,
        workbench_k=cfg.k,
    )
    common = dict(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        d_out=cfg.d_target,
        dtype=str(sae.W_enc.dtype).removeprefix("torch."),
        device="cpu",
        apply_b_dec_to_input=False,
        normalize_activations="none",
        reshape_activations="none",
        metadata=meta,
    )
    if cfg.skip:
        lens = JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(**common))
    else:
        lens = JumpReLUTranscoder(JumpReLUTranscoderConfig(**common))
    state["W_enc"] = state["W_enc"].T.contiguous()  # SAELens stores [d_in, F]
    lens.load_state_dict(state)
    lens.save_model(folder)
    return Path(folder)


def from_saelens_transcoder(folder: str | Path) -> SparseAutoencoder:
    """Load a SAELens (jumprelu_)(skip_)transcoder folder as a workbench transcoder with the same
    output (a ReLU one as a JumpReLU at θ = 0). The rule is the one recorded on export, else
    feature_choice (a threshold per latent)."""
    from sae_lens import SAE

    folder = Path(folder)
    cfg_path = folder / "cfg.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not a readable SAELens config ({e})") from e
    arch = raw.get("architecture")
    if arch not in SAELENS_ARCHITECTURES:
        raise CheckpointError(f"{cfg_path}: architecture {arch!r} is not a transcoder ({SAELENS_ARCHITECTURES})")
    lens = SAE.load_from_disk(folder)
    c = lens.cfg
    if c.normalize_activations != "none" or c.reshape_activations != "none":
        raise CheckpointError(
            f"{cfg_path}: normalize_activations={c.normalize_activations!r}, reshape_activations="
            f"{c.reshape_activations!r}: only 'none' translates exactly"
        )
    meta = c.metadata
    rule = meta.workbench_selection if meta.workbench_selection in JUMPRELU_RULES else "feature_choice"
    k = int(meta.workbench_k) if meta.workbench_k else min(32, c.d_sae - 1)
    skip = "skip" in arch
    cfg = SAEConfig(
        d_in=c.d_in,
        d_sae=c.d_sae,
        k=k,
        selection=rule,
        transcoder=True,
        skip=skip,
        d_out=None if c.d_out == c.d_in else c.d_out,
        target_hook=meta.hook_name_out or "",
        hook_name=meta.hook_name or "",
        model_name=meta.model_name or "",
    )
    tensors = {
        "W_enc": lens.W_enc.detach().T,
        "b_enc": lens.b_enc.detach(),
        "W_dec": lens.W_dec.detach(),
        "b_dec": lens.b_dec.detach(),
    }
    if skip:
        tensors["W_skip"] = lens.W_skip.detach()
    theta = lens.threshold.detach() if "jumprelu" in arch else torch.zeros(c.d_sae)
    if bool((theta < 0).any()):
        raise CheckpointError(f"{folder}: negative thresholds: ReLU·(pre > θ) is not pre·(pre > θ) there")
    return _load(cfg, tensors, theta)


# --- circuit-tracer --------------------------------------------------------------------------


def _in_block(hook: str, what: str) -> tuple[int, str]:
    m = _BLOCK.match(hook)
    if m is None:
        raise ValueError(f"{what}={hook!r}: circuit-tracer names a hook inside a block, expected blocks.L.<name>")
    return int(m.group(1)), m.group(2)


def to_circuit_tracer(saes: Mapping[int, SparseAutoencoder], folder: str | Path, scan: str = "") -> Path:
    """Write per-layer transcoders {layer: transcoder} (layers 0..n-1, as circuit-tracer's
    TranscoderSet requires) as config.yaml plus layer_{L}.safetensors. Each transcoder's hook_name
    and target_hook must be blocks.L.<input> and blocks.L.<output>, the same names in every layer."""
    import yaml

    if sorted(saes) != list(range(len(saes))) or not saes:
        raise ValueError(f"saes: circuit-tracer needs one transcoder per layer 0..n-1, got layers {sorted(saes)}")
    hooks = set()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for layer, sae in sorted(saes.items()):
        cfg = sae.cfg
        state = _exportable(sae)
        if cfg.d_target != cfg.d_in:
            raise ValueError(f"saes[{layer}]: d_out={cfg.d_target} != d_in={cfg.d_in}; circuit-tracer writes d_model")
        (li, hin), (lo, hout) = _in_block(cfg.hook_name, "hook_name"), _in_block(cfg.target_hook, "target_hook")
        if li != layer or lo != layer:
            raise ValueError(f"saes[{layer}]: reads {cfg.hook_name} and writes {cfg.target_hook}, not layer {layer}")
        hooks.add((hin, hout))
        state["activation_function.threshold"] = state.pop("threshold")
        files.append(f"layer_{layer}.safetensors")
        atomic_save_tensors(folder / files[-1], {k: v.contiguous() for k, v in state.items()})
    if len(hooks) != 1:
        raise ValueError(f"saes: every layer must read and write the same hooks, got {sorted(hooks)}")
    (hin, hout) = hooks.pop()
    config = {
        "model_kind": "transcoder_set",
        "model_name": saes[0].cfg.model_name,
        "feature_input_hook": hin,
        "feature_output_hook": hout,
        "scan": scan or str(folder.name),
        "transcoders": files,
        "workbench": {str(layer): _meta(sae.cfg) for layer, sae in saes.items()},
    }
    atomic_write_bytes(folder / CIRCUIT_TRACER_CONFIG, yaml.safe_dump(config, sort_keys=False).encode())
    return folder


def _meta(cfg: SAEConfig) -> dict:
    return {"selection": cfg.selection, "k": cfg.k}


def from_circuit_tracer(folder: str | Path) -> dict[int, SparseAutoencoder]:
    """Load a circuit-tracer transcoder set ({layer: transcoder}); files without a threshold are
    ReLU transcoders, loaded as a JumpReLU at θ = 0."""
    import yaml

    folder = Path(folder)
    path = folder / CIRCUIT_TRACER_CONFIG
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: not a readable circuit-tracer config ({e})") from e
    if not isinstance(config, dict) or config.get("model_kind") != "transcoder_set":
        raise CheckpointError(f"{path}: model_kind must be 'transcoder_set' (cross-layer transcoders are not read)")
    hin, hout = config["feature_input_hook"], config["feature_output_hook"]
    ours = config.get("workbench") or {}
    out = {}
    for file in sorted(folder.glob("layer_*.safetensors")):
        layer = int(file.stem.split("_")[1])
        t = load_tensors(file)
        theta = t.pop("activation_function.threshold", None)
        F, d = t["W_enc"].shape
        meta = ours.get(str(layer), {})
        cfg = SAEConfig(
            d_in=d,
            d_sae=F,
            k=int(meta.get("k", min(32, F - 1))),
            selection=meta.get("selection", "feature_choice"),
            transcoder=True,
            skip="W_skip" in t,
            d_out=None if t["W_dec"].shape[1] == d else int(t["W_dec"].shape[1]),
            hook_name=f"blocks.{layer}.{hin}",
            target_hook=f"blocks.{layer}.{hout}",
            model_name=config.get("model_name") or "",
        )
        if cfg.selection not in JUMPRELU_RULES:
            cfg = replace(cfg, selection="feature_choice")
        out[layer] = _load(cfg, t, theta if theta is not None else torch.zeros(F))
    if sorted(out) != list(range(len(out))) or not out:
        raise CheckpointError(f"{folder}: expected layer_0..layer_(n-1).safetensors, found layers {sorted(out)}")
    return out
