"""SAE files: the workbench's own (sae.safetensors + sae_config.json) and SAELens' layout.

SAELens' layout (cfg.json with "architecture", sae_weights.safetensors; W_enc stored [d_in, F])
is written by SAELens itself, from a SAELens SAE object we fill, so `SAE.load_from_disk` always
reads what we write. Each rule names its SAELens architecture (selection.Rule.saelens_architecture):
TopK and g-SAE export as "topk"; Mutual and Feature Choice as "jumprelu" with their learned
thresholds, which is exactly their inference encoding.

Matryoshka runs (SAEConfig.matryoshka != "none") export the same way: the nested loss changes
training only, and the inference SAE is its rule's, latents ordered by prefix. SAELens has no
Matryoshka inference architecture either: its Matryoshka-BatchTopK trainer saves as "jumprelu",
its widths in metadata.training_architecture_details.matryoshka_widths (increasing, d_sae last).
We write the widths of a "fixed" run there too, and every run's nesting in
metadata.workbench_matryoshka (from_saelens reads it back); "sampled"/"expected" runs have no
fixed widths, so SAELens' field is left out. Mutual and Feature Choice select across the batch
in training only; their per-token inference rule (the JumpReLU) is what is exported, nested or not.

Head-axis hooks (blocks.L.attn.hook_z, hook_q/k/v): the workbench reads one row per token with the
heads concatenated (`activations.token_rows`), which is SAELens' layout too; a hook_z SAE is written
with reshape_activations="hook_z" (SAELens then flattens [..., n_heads, d_head] inputs itself and
splits its reconstruction back), and read from either "hook_z" or "none" (its store flattens the
heads the same way). SAE folders saved before that (one row per head, d_in = d_head) are refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..activations import ROWS, has_head_axis
from ..runs import (
    SAE_CONFIG_FILE,
    SAE_WEIGHTS_FILE,
    CheckpointError,
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
)
from .config import SAEConfig
from .model import SparseAutoencoder

WEIGHTS, CONFIG = SAE_WEIGHTS_FILE, SAE_CONFIG_FILE  # the old names, kept for importers


def save_sae(sae: SparseAutoencoder, folder: str | Path) -> None:
    """Write `sae` as sae.safetensors + sae_config.json; the config records the row layout ("rows":
    one row per token), so a head-axis SAE from before it (one row per head) is told apart on load."""
    folder = Path(folder)
    atomic_save_tensors(folder / WEIGHTS, sae.state_dict(), metadata={"format": "workbench-sae"})
    atomic_write_json(folder / CONFIG, {"format": "workbench-sae/1", "rows": ROWS, "config": asdict(sae.cfg)})


def _refuse_pooled_heads(cfg: SAEConfig, meta: dict, cfg_path: Path) -> None:
    """Every head-axis SAE saved before the row layout was recorded read one row per head: d_in =
    d_head, the heads' vectors pooled as separate samples. It cannot be converted (it never saw a
    token's heads together), so it is refused with how to retrain."""
    if not has_head_axis(cfg.hook_name) or meta.get("rows") == ROWS:
        return
    raise CheckpointError(
        f"{cfg_path}: this SAE on {cfg.hook_name} (d_in={cfg.d_in}, one attention head's width) was trained "
        "on one row per head, the heads' vectors pooled as separate samples, before the workbench read "
        "head-axis hooks as one row per token with the heads concatenated (n_heads·d_head wide, as SAELens "
        "and the attention-SAE papers do). Its latents cannot be mapped onto the concatenated rows; retrain "
        f"it: python -m workbench train-sae --hook {cfg.hook_name} ... (d_in is found from the hook)"
    )


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """Load an SAE saved by `save_sae` (float64 weights stay float64, others load as float32); a
    foreign or corrupt folder gets a CheckpointError."""
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
    _refuse_pooled_heads(cfg, meta, cfg_path)
    state = load_tensors(folder / WEIGHTS)
    float64 = "W_enc" in state and state["W_enc"].dtype == torch.float64
    sae = SparseAutoencoder(cfg).to(torch.float64 if float64 else torch.float32)  # float64 is not rounded
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        raise CheckpointError(f"{folder / WEIGHTS} does not match its config: expected {expected}, found {found}")
    sae.load_state_dict(state)
    return sae.eval()


# --- SAELens ---------------------------------------------------------------------------------
#
# SAELens' TopK SAE computes
#     pre  = (norm(x) − b_dec·apply_b_dec_to_input) W_enc + b_enc,   pre *= ‖W_dec,i‖ if rescaled
#     z    = ReLU(top-k(pre))
#     x̂    = denorm((z / ‖W_dec,i‖ if rescaled) W_dec + b_dec)
# and ours (x − b_dec) W_encᵀ + b_enc, top-k, ReLU, z W_dec + b_dec. Each config field that
# changes that computation is either folded into the weights (exactly, in float64) or refused.

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    # upcast exactly: our modules compute in float32 at least
    "float16": torch.float32,
    "bfloat16": torch.float32,
}
_NORMALIZE_REFUSED = {
    "constant_norm_rescale": "rescales each input to norm sqrt(d_in) at run time (not affine)",
    "layer_norm": "layer-normalises each input at run time (not affine)",
    "expected_average_only_in": "expects inputs pre-scaled by a factor SAELens does not store in the "
    "folder; fold it first (sae.fold_activation_norm_scaling_factor)",
    "covariance_whitening": "expects whitened inputs; fold the whitening first (sae.fold_activation_whitening)",
}


def _refuse(cfg_path: Path, field: str, value, why: str) -> CheckpointError:
    return CheckpointError(f"{cfg_path}: SAELens {field}={value!r} cannot be translated: {why}")


def _check_translatable(lens, cfg_path: Path) -> None:
    """Raise a CheckpointError naming the first config field the workbench cannot reproduce."""
    c = lens.cfg
    if c.normalize_activations != "none":
        why = _NORMALIZE_REFUSED.get(c.normalize_activations, "unknown normalisation")
        raise _refuse(cfg_path, "normalize_activations", c.normalize_activations, why)
    hook = c.metadata.hook_name or ""
    if c.reshape_activations not in ("none", "hook_z"):
        raise _refuse(cfg_path, "reshape_activations", c.reshape_activations, "expected 'none' or 'hook_z'")
    if c.reshape_activations == "hook_z" and not hook.endswith("hook_z"):
        raise _refuse(cfg_path, "reshape_activations", "hook_z", f"its hook_name {hook!r} is not an attention hook_z")
    if c.metadata.hook_head_index is not None:
        raise _refuse(
            cfg_path,
            "hook_head_index",
            c.metadata.hook_head_index,
            "it reads one attention head of its hook; workbench hook names cannot select a head",
        )
    if c.dtype not in _DTYPES:
        raise _refuse(cfg_path, "dtype", c.dtype, f"expected one of {sorted(_DTYPES)}")
    if c.rescale_acts_by_decoder_norm and bool((lens.W_dec.norm(dim=-1) == 0).any()):
        raise _refuse(
            cfg_path, "rescale_acts_by_decoder_norm", True, "a decoder row has norm 0, so SAELens divides by zero"
        )


def to_saelens(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write `sae` in SAELens' on-disk layout; `sae_lens.SAE.load_from_disk(folder)` computes the
    same codes and reconstructions. Every field that changes SAELens' computation is set
    explicitly (not left to its defaults, which differ between its versions and classes)."""
    from sae_lens import JumpReLUSAE, TopKSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAEConfig

    cfg = sae.cfg
    if cfg.transcoder:  # SAELens' transcoder classes (transcoder_io.py)
        from .transcoder_io import to_saelens_transcoder

        return to_saelens_transcoder(sae, folder)
    if sae.layout.latent:
        raise ValueError("sae: a latent-parallel rank holds only part of the dictionary; gather it first")
    dtype = sae.W_enc.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"sae: parameters are {dtype}; expected float32 or float64 (SAELens' own dtypes "
            "would round them differently)"
        )
    # a hook_z SAE reads [..., n_heads, d_head] in SAELens (flattened as ours are); other head-axis
    # hooks have no SAELens reshape and take the flattened rows its store makes
    reshape = "hook_z" if cfg.hook_name.endswith("hook_z") else "none"
    meta = SAEMetadata(
        hook_name=cfg.hook_name or None,
        model_name=cfg.model_name or None,
        hook_head_index=None,
        workbench_selection=cfg.selection,
        **matryoshka_metadata(cfg),
    )
    # ours always subtracts b_dec from the input, never normalises or rescales
    common = dict(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        dtype=str(dtype).removeprefix("torch."),
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        reshape_activations=reshape,
        metadata=meta,
    )
    state = {
        "W_enc": sae.W_enc.detach().T.contiguous(),
        "b_enc": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    if sae.rule.saelens_architecture == "topk":
        lens = TopKSAE(TopKSAEConfig(k=cfg.k, rescale_acts_by_decoder_norm=False, **common))
    else:
        # SAELens' JumpReLU is ReLU(pre)·(pre > θ), ours pre·(pre > θ): equal only for θ ≥ 0
        if bool((sae.threshold < 0).any()):
            raise ValueError("sae.threshold: negative JumpReLU thresholds have no SAELens equivalent")
        lens = JumpReLUSAE(JumpReLUSAEConfig(**common))
        state["threshold"] = sae.threshold.detach()
    lens.load_state_dict({k: v.cpu() for k, v in state.items()})
    lens.save_model(folder)
    return Path(folder)


def matryoshka_metadata(cfg: SAEConfig) -> dict:
    """The SAELens metadata fields that record a Matryoshka run's nesting (module docstring); {} for none."""
    if cfg.matryoshka == "none":
        return {}
    nesting = {
        "matryoshka": cfg.matryoshka,
        "widths": list(cfg.matryoshka_widths),
        "prefixes": cfg.matryoshka_prefixes,
        "power": cfg.matryoshka_power,
    }
    out: dict = {"workbench_matryoshka": nesting}
    if cfg.matryoshka == "fixed":
        out["training_architecture_details"] = {"matryoshka_widths": sorted(set(cfg.matryoshka_widths) | {cfg.d_sae})}
    return out


def _matryoshka_fields(meta, cfg_path: Path) -> dict:
    """SAEConfig's nesting fields from metadata.workbench_matryoshka (none there: {})."""
    nesting = meta.get("workbench_matryoshka")
    if nesting is None:
        return {}
    try:
        return dict(
            matryoshka=nesting["matryoshka"],
            matryoshka_widths=tuple(nesting["widths"]),
            matryoshka_prefixes=int(nesting["prefixes"]),
            matryoshka_power=float(nesting["power"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{cfg_path}: metadata.workbench_matryoshka={nesting!r}: expected matryoshka, widths, prefixes "
            f"and power ({e!r})"
        ) from e


def from_saelens(folder: str | Path) -> SparseAutoencoder:
    """Load a SAELens TopK SAE from disk into a workbench TopK SAE that computes the same codes and
    reconstructions; a Matryoshka run's nesting comes back from metadata.workbench_matryoshka.
    apply_b_dec_to_input=False is folded into the encoder bias (b_enc + b_dec W_enc),
    rescale_acts_by_decoder_norm=True into the weights (which leaves our decoder rows at unit norm);
    fields with no workbench equivalent raise a CheckpointError naming the field and its value.
    float64 SAEs load as float64, float32/float16/bfloat16 ones as float32 (an exact upcast)."""
    from sae_lens import SAE

    folder = Path(folder)
    cfg_path = folder / "cfg.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no cfg.json: not a SAELens SAE folder")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
    arch = raw.get("architecture") if isinstance(raw, dict) else None
    from .transcoder_io import SAELENS_ARCHITECTURES, from_saelens_transcoder

    if arch in SAELENS_ARCHITECTURES:
        return from_saelens_transcoder(folder)
    if arch != "topk":
        why = " (SAELens saves its BatchTopK and Matryoshka-BatchTopK SAEs as 'jumprelu')" if arch == "jumprelu" else ""
        raise CheckpointError(f"{cfg_path}: architecture {arch!r} is not supported (only 'topk'){why}")
    lens = SAE.load_from_disk(folder)  # applies SAELens' own defaults for older config versions
    _check_translatable(lens, cfg_path)
    c = lens.cfg
    W_enc = lens.W_enc.detach().double().T  # [F, d]
    b_enc = lens.b_enc.detach().double()
    W_dec = lens.W_dec.detach().double()
    b_dec = lens.b_dec.detach().double()
    if not c.apply_b_dec_to_input:
        # x W + b = (x − b_dec) W + (b + b_dec W)
        b_enc = b_enc + W_enc @ b_dec
    if c.rescale_acts_by_decoder_norm:
        # pre·n then z/n before W_dec  ==  encoder rows and bias times n, decoder rows over n
        n = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * n[:, None], b_enc * n, W_dec / n[:, None]
    meta = c.metadata
    nesting = _matryoshka_fields(meta, cfg_path)
    try:
        cfg = SAEConfig(
            d_in=c.d_in,
            d_sae=c.d_sae,
            k=c.k,
            selection="topk",
            hook_name=meta.hook_name or "",
            model_name=meta.model_name or "",
            **nesting,
        )
    except ValueError as e:  # FieldError: only the nesting fields can be out of range here
        raise CheckpointError(f"{cfg_path}: metadata.workbench_matryoshka: {e}") from e
    sae = SparseAutoencoder(cfg).to(_DTYPES[c.dtype])
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            getattr(sae, name).copy_(value)
    return sae.eval()
