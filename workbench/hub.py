"""A model by name or folder, and the model a run was made with: the one loader above the sources.

As TransformerLens' `loading_from_pretrained` sits above its model code, this module sits above
the three places models come from, and none of them imports it (not even inside a function):

- `workbench.default_model`: the shipped `workbench-tiny` weights (trained by `workbench.models`);
- `workbench.pretrained`: a local `save_pretrained` folder (a TransformerBridge) or a
  TransformerLens hub name;
- `workbench.models.load_model_dir`: a run's own copy of a workbench model.

`load_model(name)` picks the source; `model_record`/`record_model` write into a run's config.json
where its model came from, and `model_for_run`/`tokenizer_for_run` read it back (how the viewer
opens a run made on someone's own model). `load_model("workbench-tiny", bridge=True)` serves the
default as a TransformerBridge (`workbench.bridge`: its weights in a transformers GPT-2, the same
logits and activations).

These names lived in `workbench.models` (`load_model`, `load_default`, `default_model_dir`) and
`workbench.pretrained` (`model_record`, `record_model`, `model_for_run`, `tokenizer_for_run`)
before; they are here only, because an alias below this module could reach it only by importing
it, a circle (tests/test_imports.py counts imports inside functions too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .corpus import ByteTokenizer, Tokenizer
from .default_model import load_shipped, run_dir
from .gguf_model import GGUF_MODELS, ensure_converted
from .models import DEFAULT_MODEL_NAME, Direction, load_model_dir, workbench_home
from .pretrained import ModelFolderError, is_model_folder, load_pretrained, load_tokenizer
from .runs import CONFIG_FILE, MODEL_CONFIG_FILE, RunDir, atomic_write_json

WORKBENCH_NAMES = (DEFAULT_MODEL_NAME, f"{DEFAULT_MODEL_NAME}-forward", f"{DEFAULT_MODEL_NAME}-backward")


def default_model_dir(direction: Direction = "forward", seed: int = 0) -> Path:
    """The shipped run folder of the default (metrics.jsonl; checkpoints for seed 0 forward)."""
    return run_dir(seed, direction)


def load_default(direction: Direction = "forward", seed: int = 0, *, bridge: bool = False) -> torch.nn.Module:
    """The embedded default from its shipped weights (data/workbench-tiny; nothing is trained):
    a HookedTransformer, or with `bridge=True` the same network as a TransformerBridge."""
    model = load_shipped(direction, seed)
    if not bridge:
        return model
    from .bridge import as_bridge

    return as_bridge(model, f"{DEFAULT_MODEL_NAME}-{direction}")


def load_model(name: str | Path = DEFAULT_MODEL_NAME, device: str = "cpu", *, bridge: bool = False):
    """A model and its tokenizer by name: "workbench-tiny" (or "workbench-tiny-backward"; with
    `bridge=True` served as a TransformerBridge), a folder saved with `save_pretrained` (always a
    bridge), or any TransformerLens pretrained name ("gpt2", "pythia-70m", ...) when the hub or
    a local cache has it. Returns (model, tokenizer)."""
    if str(name) in WORKBENCH_NAMES:
        direction = "backward" if str(name).endswith("backward") else "forward"
        return load_default(direction, bridge=bridge).to(device), ByteTokenizer()
    if str(name) in GGUF_MODELS:  # "smollm2-135m-instruct-q4": a Q4_1 GGUF in an installed package
        return load_pretrained(gguf_folder(str(name)), device)
    return load_pretrained(name, device)


def gguf_folder(name: str) -> Path:
    """The float32 save_pretrained folder (weights and tokenizer) of a GGUF model by its name,
    converted from the installed file the first time (`workbench.gguf_model.ensure_converted`)."""
    if name not in GGUF_MODELS:
        raise ValueError(f"name: {name!r} is no GGUF model the workbench knows (known: {', '.join(GGUF_MODELS)})")
    return ensure_converted(GGUF_MODELS[name], workbench_home()).folder


# --- where a run's model came from ---------------------------------------------------------------


def model_record(name: str | Path) -> dict[str, str]:
    """What a run stores to find its model again: the workbench name, a GGUF model's name, the
    folder's absolute path (a relative one would break once the viewer runs elsewhere), or the hub
    name."""
    if str(name) in WORKBENCH_NAMES:
        return {"source": "workbench", "model": str(name), "tokenizer": "byte"}
    if str(name) in GGUF_MODELS:  # its own source, so that the tokenizer is read without the model
        return {"source": "gguf", "model": str(name), "tokenizer": str(name)}
    if is_model_folder(name):
        path = str(Path(name).resolve())
        return {"source": "hf-folder", "model": path, "tokenizer": path}
    return {"source": "transformer-lens", "model": str(name), "tokenizer": str(name)}


def record_model(run_dir: str | Path, name: str | Path, **extra: Any) -> None:
    """Add the model record (and e.g. the corpus) to a run's config.json, next to "kind"."""
    run = RunDir(run_dir)
    atomic_write_json(run.file(CONFIG_FILE), {**run.read_config(), "model_source": model_record(name), **extra})


def _run_record(run_dir: Path) -> dict[str, str] | None:
    cfg = json.loads((run_dir / CONFIG_FILE).read_text())
    rec = cfg.get("model_source")
    if rec is None and not (run_dir / MODEL_CONFIG_FILE).is_file():
        name = cfg.get("config", {}).get("sae", {}).get("model_name")  # runs from before the record
        rec = model_record(name) if name else None
    if rec is not None and rec.get("source") == "transformer-lens" and rec.get("model") in GGUF_MODELS:
        rec = model_record(rec["model"])  # recorded before GGUF models had their own source
    return rec


def _gone(run_dir: Path, folder: str) -> ModelFolderError:
    return ModelFolderError(
        f"{run_dir}/{CONFIG_FILE}: the run's model folder {folder} no longer exists (moved or deleted?)"
    )


def _known_gguf(run_dir: Path, name: str) -> str:
    if name not in GGUF_MODELS:
        raise ModelFolderError(
            f"{run_dir}/{CONFIG_FILE}: the run's GGUF model {name!r} is not one this workbench knows "
            f"({', '.join(GGUF_MODELS)}): a newer workbench made it?"
        )
    return name


def model_for_run(run_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Tokenizer]:
    """The model and tokenizer a run was made with: its own copy (model.safetensors +
    model_config.json, as the demo keeps it), else what its config.json's model record names."""
    run_dir = Path(run_dir)
    rec = _run_record(run_dir)
    if rec is None:
        return load_model_dir(run_dir).to(device), ByteTokenizer()
    if rec["source"] == "hf-folder" and not is_model_folder(rec["model"]):
        raise _gone(run_dir, rec["model"])
    if rec["source"] == "gguf":
        _known_gguf(run_dir, rec["model"])
    return load_model(rec["model"], device=device)


def tokenizer_for_run(run_dir: str | Path) -> Tokenizer:
    """Just the run's tokenizer (the viewer's feature pages need no model)."""
    run_dir = Path(run_dir)
    rec = _run_record(run_dir)
    if rec is None or rec["tokenizer"] == "byte":
        return ByteTokenizer()
    if rec["source"] == "gguf":  # the converted folder's tokenizer files; the weights stay unread
        return load_tokenizer(gguf_folder(_known_gguf(run_dir, rec["tokenizer"])))
    if rec["source"] == "hf-folder":
        if not is_model_folder(rec["tokenizer"]):
            raise _gone(run_dir, rec["tokenizer"])
        return load_tokenizer(rec["tokenizer"])
    return model_for_run(run_dir)[1]
