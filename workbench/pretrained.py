"""Models the workbench did not train: a local Hugging Face folder, or a TransformerLens hub name.

A folder saved with `save_pretrained` (config.json, safetensors or .bin weights, tokenizer files)
loads fully offline through TransformerLens' own path for Hugging Face models,
`TransformerBridge.boot_transformers`, whose architecture adapters turn config.json into a
TransformerLens config and convert the weights; `enable_compatibility_mode()` then gives
HookedTransformer numerics and hook names (`blocks.0.hook_resid_post`, `blocks.0.attn.hook_pattern`,
`blocks.0.mlp.hook_post`). The folder is checked first, so a wrong folder fails with the file and
field at fault instead of a traceback from inside transformers.

Choosing between this, the shipped default and a run's own copy is `workbench.hub` (one level up,
with `model_record`, `record_model`, `model_for_run` and `tokenizer_for_run`); this module never
imports it, not even inside a function (tests/test_imports.py checks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .bridge import quiet_hooked_deprecation
from .corpus import HFTokenizer

WORKBENCH_NAMES = ("workbench-tiny", "workbench-tiny-forward", "workbench-tiny-backward")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Any one of these is a tokenizer AutoTokenizer can build offline.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))


class ModelFolderError(ValueError):
    """A local model folder that cannot be loaded; the message names the file and the field."""


def is_model_folder(name: str | Path) -> bool:
    return bool(str(name)) and Path(name).is_dir()  # Path("") is the working directory


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(
            f"{folder}: no config.json (a Hugging Face model folder is written by model.save_pretrained(folder))"
        )
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    return cfg


def _check_architecture(folder: Path, cfg: dict[str, Any]) -> str:
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    archs = cfg.get("architectures") or []
    supported = sorted(a for a in SUPPORTED_ARCHITECTURES if a.endswith(("ForCausalLM", "LMHeadModel")))
    if not archs:
        raise ModelFolderError(
            f"{folder / 'config.json'}: field 'architectures' is missing; expected a causal "
            f"LM class such as GPT2LMHeadModel, GPTNeoXForCausalLM or LlamaForCausalLM"
        )
    if archs[0] not in supported:
        raise ModelFolderError(
            f"{folder / 'config.json'}: field 'architectures' is {archs!r} (model_type "
            f"{cfg.get('model_type')!r}), not a causal LM that TransformerLens supports; supported include "
            f"GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM ({len(supported)} in all)"
        )
    return archs[0]


def _check_tokenizer(folder: Path) -> None:
    if not any(all((folder / f).is_file() for f in group) for group in TOKENIZER_FILES):
        expected = ", or ".join(" + ".join(group) for group in TOKENIZER_FILES)
        raise ModelFolderError(
            f"{folder}: no tokenizer files (expected {expected}); save the model's "
            "tokenizer there too: tokenizer.save_pretrained(folder)"
        )


def _load_hf(folder: Path, cfg: dict[str, Any], device: str):
    """The transformers model, with every stored tensor checked against the shape config.json
    implies: transformers itself would only warn and re-initialise a mismatched tensor at random."""
    from transformers import AutoModelForCausalLM

    found = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not found:
        raise ModelFolderError(f"{folder}: no weights (expected one of {', '.join(WEIGHT_FILES)})")
    model, info = AutoModelForCausalLM.from_pretrained(
        folder,
        local_files_only=True,
        dtype=torch.float32,
        attn_implementation="eager",
        output_loading_info=True,
        ignore_mismatched_sizes=True,
    )
    for key, stored, implied in sorted(info["mismatched_keys"]):
        # name the config fields behind the dimensions that disagree, e.g. vocab_size=500
        fields = [
            f"{k}={v}"
            for k, v in cfg.items()
            if isinstance(v, int) and not isinstance(v, bool) and v in set(implied) - set(stored)
        ]
        raise ModelFolderError(
            f"{found[0]}: tensor {key} has shape {list(stored)}, but {folder / 'config.json'} implies "
            f"{list(implied)} (field {', '.join(fields) or 'of the architecture'}): the weights were saved "
            "from a different config"
        )
    missing = sorted(info["missing_keys"])
    if missing:
        raise ModelFolderError(
            f"{found[0]}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''} "
            f"that {folder / 'config.json'} implies (field num_hidden_layers/n_layer?)"
        )
    return model.to(device).eval()


def load_tokenizer(folder: str | Path) -> HFTokenizer:
    """The folder's own tokenizer (transformers' AutoTokenizer, local files only)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    _check_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tok.bos_token_id is None and tok.eos_token_id is None:
        raise ModelFolderError(
            f"{folder / 'tokenizer_config.json'}: neither field bos_token nor eos_token is "
            "set; the workbench puts one of them before every window"
        )
    return HFTokenizer(tok)


def load_folder(folder: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, HFTokenizer]:
    """A causal LM saved with `save_pretrained` in `folder`, and its tokenizer, fully offline."""
    from transformer_lens.model_bridge import TransformerBridge

    folder = Path(folder)
    cfg = _read_config(folder)
    _check_architecture(folder, cfg)
    tokenizer = load_tokenizer(folder)
    hf_model = _load_hf(folder, cfg, device)
    model = TransformerBridge.boot_transformers(str(folder), device=device, tokenizer=tokenizer.tok, hf_model=hf_model)
    model.enable_compatibility_mode()
    if tokenizer.vocab_size > model.cfg.d_vocab:
        raise ModelFolderError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but config.json "
            f"field vocab_size is {model.cfg.d_vocab}"
        )
    return model.eval(), tokenizer


def load_hub(name: str, device: str = "cpu") -> tuple[torch.nn.Module, HFTokenizer]:
    """A TransformerLens pretrained name ("gpt2", "pythia-70m", ...) from the hub or its cache."""
    from transformer_lens import HookedTransformer

    try:
        with quiet_hooked_deprecation():  # why: bridge.HOOKED_DEPRECATION
            model = HookedTransformer.from_pretrained(name, device=device)
    except Exception as e:
        raise RuntimeError(
            f"pretrained model {name!r} could not be loaded: no hub access and no local copy in "
            f"the Hugging Face cache ({type(e).__name__}: {str(e)[:200]}). Offline, use the embedded "
            f"default, load_model({WORKBENCH_NAMES[0]!r}), or a folder saved with save_pretrained: "
            "load_model('path/to/folder')"
        ) from e
    return model, HFTokenizer(model.tokenizer)


def load_pretrained(name: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, HFTokenizer]:
    """A local folder if `name` is one, else a TransformerLens hub name."""
    return load_folder(name, device) if is_model_folder(name) else load_hub(str(name), device)
