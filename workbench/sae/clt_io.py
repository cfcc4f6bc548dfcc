"""A cross-layer transcoder in circuit-tracer's CLT layout (the workbench's own files are
clt_train.save_clt / load_clt).

circuit-tracer 0.5 (transcoder/cross_layer_transcoder.py, `to_safetensors` / `load_clt`): a folder
with config.yaml (model_kind "cross_layer_transcoder", feature_input_hook / feature_output_hook
as names inside a block) and, per layer i, W_enc_{i}.safetensors holding W_enc_{i} [F, d],
b_enc_{i} [F], b_dec_{i} [d] and threshold_{i} [F], and W_dec_{i}.safetensors holding W_dec_{i}
[F, L − i, d]. Its encoding is a JumpReLU pre·(pre > θ) (or a ReLU), so, as for transcoders
(transcoder_io.py), only a CLT whose inference is a JumpReLU (Mutual or Feature Choice) is
written exactly; a TopK CLT is refused. Its files carry no skip matrix, so a skip CLT is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..runs import CheckpointError, atomic_save_tensors, atomic_write_bytes, load_tensors
from .clt import CLTConfig, CrossLayerTranscoder

CONFIG = "config.yaml"
_IN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _inner(hooks: tuple[str, ...], name: str) -> str:
    """The one hook name inside a block that every layer's hook uses (blocks.l.<inner>, l = 0..L-1)."""
    parts = [_IN_BLOCK.match(h) for h in hooks]
    inner = {m.group(2) for m in parts if m}
    if not hooks or None in parts or [int(m.group(1)) for m in parts] != list(range(len(hooks))) or len(inner) != 1:
        raise ValueError(f"{name}={hooks}: circuit-tracer needs blocks.l.<the same hook> for l = 0..n_layers-1")
    return inner.pop()


def to_circuit_tracer_clt(clt: CrossLayerTranscoder, folder: str | Path, scan: str = "") -> Path:
    import yaml

    cfg = clt.cfg
    if clt.rule.saelens_architecture != "jumprelu":
        raise ValueError(
            f"clt: selection={cfg.selection!r} encodes by a per-token top-k, which circuit-tracer's JumpReLU "
            "cannot hold; train with selection 'mutual_choice' or 'feature_choice'"
        )
    if cfg.skip:
        raise ValueError("clt: circuit-tracer's CLT files hold no skip matrix; train with skip=False")
    if cfg.d_target != cfg.d_in:
        raise ValueError(f"clt: d_out={cfg.d_target} != d_in={cfg.d_in}; circuit-tracer's CLT maps d_model to d_model")
    if bool((clt.threshold < 0).any()):
        raise ValueError("clt.threshold: negative thresholds have no pre·(pre > θ) meaning here")
    hin, hout = _inner(cfg.input_hooks, "input_hooks"), _inner(cfg.target_hooks, "target_hooks")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grab = lambda t: t.detach().cpu().contiguous()  # noqa: E731
    for i in range(cfg.n_layers):
        enc = {f"W_enc_{i}": clt.W_enc[i], f"b_enc_{i}": clt.b_enc[i], f"b_dec_{i}": clt.b_dec[i]}
        enc[f"threshold_{i}"] = clt.threshold[i]
        atomic_save_tensors(folder / f"W_enc_{i}.safetensors", {k: grab(v) for k, v in enc.items()})
        atomic_save_tensors(folder / f"W_dec_{i}.safetensors", {f"W_dec_{i}": grab(clt.W_dec[i])})
    config = {
        "model_kind": "cross_layer_transcoder",
        "model_name": cfg.model_name,
        "feature_input_hook": hin,
        "feature_output_hook": hout,
        "scan": scan or folder.name,
        "workbench": {"selection": cfg.selection, "k": cfg.k},
    }
    atomic_write_bytes(folder / CONFIG, yaml.safe_dump(config, sort_keys=False).encode())
    return folder


def from_circuit_tracer_clt(folder: str | Path) -> CrossLayerTranscoder:
    """A CLT folder in circuit-tracer's layout as a workbench CLT with a JumpReLU inference (its
    thresholds; none stored: 0, a ReLU), selection from the folder's workbench entry or mutual_choice."""
    import yaml

    folder = Path(folder)
    try:
        config = yaml.safe_load((folder / CONFIG).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{folder / CONFIG}: not a readable circuit-tracer config ({e})") from e
    if not isinstance(config, dict) or config.get("model_kind") != "cross_layer_transcoder":
        raise CheckpointError(f"{folder / CONFIG}: model_kind is not 'cross_layer_transcoder'")
    L = len(list(folder.glob("W_enc_*.safetensors")))
    if L == 0:
        raise CheckpointError(f"{folder} holds no W_enc_<i>.safetensors")
    enc = [load_tensors(folder / f"W_enc_{i}.safetensors") for i in range(L)]
    dec = [load_tensors(folder / f"W_dec_{i}.safetensors")[f"W_dec_{i}"] for i in range(L)]
    F, d = enc[0]["W_enc_0"].shape
    meta = config.get("workbench") or {}
    cfg = CLTConfig(
        n_layers=L,
        d_in=d,
        d_sae=F,
        k=int(meta.get("k", 1)),
        selection=meta.get("selection", "mutual_choice"),
        input_hooks=tuple(f"blocks.{i}.{config['feature_input_hook']}" for i in range(L)),
        target_hooks=tuple(f"blocks.{i}.{config['feature_output_hook']}" for i in range(L)),
        model_name=config.get("model_name") or "",
    )
    clt = CrossLayerTranscoder(cfg).to(dec[0].dtype if dec[0].dtype == torch.float64 else torch.float32)
    with torch.no_grad():
        for i, (e, w) in enumerate(zip(enc, dec)):
            clt.W_enc[i].copy_(e[f"W_enc_{i}"])
            clt.b_enc[i].copy_(e[f"b_enc_{i}"])
            clt.b_dec[i].copy_(e[f"b_dec_{i}"])
            clt.threshold[i].copy_(e.get(f"threshold_{i}", torch.zeros(F)))
            clt.W_dec[i].copy_(w)
    return clt.eval()
