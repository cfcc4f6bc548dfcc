"""The embedded default `workbench-tiny`: its recipe, its shipped weights, and how to rebuild them.

Three seeds of a forward/backward pair (same config, data and seed within a pair, differing only
in direction) are trained by `python -m workbench train-default` and shipped in `data/` as bf16
safetensors, so `load_model("workbench-tiny")` trains nothing. Layout (each folder a RunDir as
`train_lm` writes it, minus the optimizer state):

    data/workbench-tiny/manifest.json                     sha256, size and held-out loss of every file
    data/workbench-tiny/seed{s}/{forward,backward}/       config.json, metrics.jsonl, model.safetensors
    data/workbench-tiny/seed0/forward/checkpoints/        step_XXXXXX.safetensors (sparsity and heads
                                                          over training)

Seed 0 is the model every notebook, widget and the viewer open; seeds 1 and 2 exist so the
arrow-of-time probe can put a seed-level interval on its gap. The seed/direction folders are
`models.pair_dir`'s layout, the one `train_pairs` writes.

The arrow probe's second shipped set, data/arrow-primes (the same layout and manifest), is trained
from the primes recipe kept here beside it: `PRIMES_MODEL`, `PRIMES_TRAIN`, `primes_data`.
Loading by name ("workbench-tiny") is `workbench.hub.load_model`, one level up.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from .corpus import ByteTokenizer
from .models import (
    CHECKPOINTS_DIR,
    DEFAULT_MODEL,
    DEFAULT_TRAIN,
    Direction,
    LMTrainConfig,
    ModelConfig,
    TokenData,
    checkpoint_name,
    default_data,
    evaluate_lm,
    load_model_file,
    pair_dir,
    pair_seeds,
    save_model,
    train_lm,
    train_pairs,
)
from .runs import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_WEIGHTS_FILE,
    CheckpointError,
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    sha256_file,
)
from .tasks import primes_product_text

DEFAULT_SEEDS = (0, 1, 2)
REBUILD = "python -m workbench train-default"
_CHECKPOINTS_OF = (0, "forward")  # (seed, direction) whose training checkpoints are shipped


def shipped_dir() -> Path:
    """data/workbench-tiny, beside the package in a checkout and inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for base in (here.parent / "data", here / "data"):
        if (base / "workbench-tiny").is_dir():
            return base / "workbench-tiny"
    return here.parent / "data" / "workbench-tiny"


def primes_dir() -> Path:
    """data/arrow-primes: three seed pairs of the arrow probe's primes×product models (the same
    layout and manifest as workbench-tiny; `python -m workbench train-default --primes` rebuilds)."""
    return shipped_dir().parent / "arrow-primes"


def run_dir(seed: int = 0, direction: Direction = "forward", root: Path | None = None) -> Path:
    """One shipped model's folder: `models.pair_dir` under `root` (default: `shipped_dir()`)."""
    return pair_dir(root or shipped_dir(), seed, direction)


def manifest(root: Path | None = None) -> dict:
    path = (root or shipped_dir()) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the shipped default weights are not there. "
            f"Rebuild them with `{REBUILD}` (see data/README.md)"
        )
    return json.loads(path.read_text())


def load_shipped(
    direction: Direction = "forward",
    seed: int = 0,
    root: Path | None = None,
    checkpoint_step: int | None = None,
    model_cfg: ModelConfig = DEFAULT_MODEL,
) -> HookedTransformer:
    """One shipped model in float32, after checking its file against the manifest's hash."""
    folder = run_dir(seed, direction, root)
    name = MODEL_WEIGHTS_FILE if checkpoint_step is None else checkpoint_name(checkpoint_step)
    path = folder / name
    rel = path.relative_to(root or shipped_dir()).as_posix()
    entry = manifest(root)["files"].get(rel)
    if entry is None or not path.exists():
        raise FileNotFoundError(f"{path} is missing from the shipped default weights; rebuild them with `{REBUILD}`")
    if sha256_file(path) != entry["sha256"]:
        raise CheckpointError(
            f"{path} is corrupt: its sha256 differs from {root or shipped_dir()}/manifest.json; "
            f"restore it from git or rebuild with `{REBUILD}`"
        )
    return load_model_file(path, model_cfg)


def load_shipped_pairs(
    seeds: tuple[int, ...] = DEFAULT_SEEDS, root: Path | None = None, model_cfg: ModelConfig = DEFAULT_MODEL
) -> list[tuple[HookedTransformer, HookedTransformer]]:
    """(forward, backward) of every seed, as the arrow probe takes them."""
    return [
        (load_shipped("forward", s, root, model_cfg=model_cfg), load_shipped("backward", s, root, model_cfg=model_cfg))
        for s in seeds
    ]


def _train_one(job: tuple[int, str, str, LMTrainConfig]) -> str:
    seed, direction, out, train_cfg = job
    torch.set_num_threads(1)  # one job per core: two 1-thread jobs beat one 2-thread job here
    cfg = replace(train_cfg, seed=seed, direction=direction)
    train_lm(DEFAULT_MODEL, cfg, default_data(), RunDir(run_dir(seed, direction, Path(out))), progress=True)
    return f"seed {seed} {direction}"


def train_default(
    out: str | Path, seeds: tuple[int, ...] = DEFAULT_SEEDS, jobs: int = 2, train_cfg: LMTrainConfig = DEFAULT_TRAIN
) -> Path:
    """Train (or resume) every seed and direction of the default into `out`, `jobs` at a time."""
    out = Path(out)
    todo = [
        (s, d, str(out), train_cfg)
        for s in seeds
        for d in ("forward", "backward")
        if not (run_dir(s, d, out) / MODEL_WEIGHTS_FILE).exists()
    ]
    if jobs <= 1:
        for job in todo:
            print(_train_one(job), "done", flush=True)
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for name in pool.imap_unordered(_train_one, todo):
                print(name, "done", flush=True)
    return out


def pack(
    runs: str | Path,
    dest: str | Path | None = None,
    eval_windows: int = 128,
    *,
    model_cfg: ModelConfig = DEFAULT_MODEL,
    data: TokenData | None = None,
    seq_len: int = DEFAULT_TRAIN.seq_len,
    checkpoints_of: tuple[int, str] | None = _CHECKPOINTS_OF,
) -> dict:
    """Copy trained runs into the shipped layout (bf16 weights, no optimizer state) and write the
    manifest: each file's sha256 and size, and each final model's held-out loss measured on the
    packed weights (so the recorded loss is what `load_model` gives)."""
    runs, dest = Path(runs), Path(dest) if dest is not None else shipped_dir()
    data, files, losses = data or default_data(), {}, {}
    for stale in pair_seeds(dest):  # the manifest lists exactly what this call writes
        shutil.rmtree(pair_dir(dest, stale, "forward").parent)
    for seed in pair_seeds(runs):
        for direction in ("forward", "backward"):
            src, dst = pair_dir(runs, seed, direction), pair_dir(dest, seed, direction)
            if not (src / MODEL_WEIGHTS_FILE).exists():
                continue
            dst.mkdir(parents=True, exist_ok=True)
            names = [MODEL_WEIGHTS_FILE]
            if (seed, direction) == checkpoints_of:
                ckpts = sorted((src / CHECKPOINTS_DIR).glob("*.safetensors"))
                names += [f"{CHECKPOINTS_DIR}/{p.name}" for p in ckpts]
            for name in names:
                save_model_bf16(load_model_file(src / name, model_cfg), dst / name, model_cfg)
            for name in (CONFIG_FILE, METRICS_FILE):
                atomic_write_bytes(dst / name, (src / name).read_bytes())
            packed = load_model_file(dst / MODEL_WEIGHTS_FILE, model_cfg)
            key = pair_dir("", seed, direction).as_posix()  # "seed0/forward"
            losses[key] = evaluate_lm(packed, data, direction, eval_windows, seq_len)
    for path in sorted(dest.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            files[path.relative_to(dest).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    train = RunDir(pair_dir(runs, pair_seeds(runs)[0], "forward")).read_config()["config"]["train"]
    man = {
        "model": asdict(model_cfg),
        "train": {**train, "seed": "per folder"},
        "storage": "bfloat16",
        "val_windows": eval_windows,
        "val_loss": losses,
        "files": files,
    }
    atomic_write_json(dest / "manifest.json", man)
    return man


def save_model_bf16(model: HookedTransformer, path: Path, model_cfg: ModelConfig = DEFAULT_MODEL) -> None:
    """Weights stored as bf16 (half the bytes); loading upcasts to float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.bfloat16)
    save_model(model, path, model_cfg)
    model.float()


# --- the arrow probe's primes×product recipe (data/arrow-primes) ------------------------------------


def primes_data(n_train: int = 20_000, n_val: int = 2_000, max_prime: int = 100, seed: int = 0) -> TokenData:
    """Byte-level 'p*q=r' lines (r reversed): forward is multiplication, backward factorisation.

    Primes below 100 by default: with 3-digit primes neither direction of a 2-layer model learned
    any arithmetic in 1,500 steps (gap −0.08%, 95% CI [−0.38%, +0.21%]); with 2-digit primes the
    forward model wins by ~15% after 600 steps (benchmarks/RESULTS.md)."""
    tok = ByteTokenizer()
    enc = lambda text: torch.tensor(tok.encode(text), dtype=torch.long)  # noqa: E731
    return TokenData(
        enc(primes_product_text(n_train, max_prime, seed=seed)),
        enc(primes_product_text(n_val, max_prime, seed=seed + 1)),
        tok,
    )


PRIMES_MODEL = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=65)
PRIMES_TRAIN = LMTrainConfig(steps=600, batch_size=32, seq_len=64, lr=3e-3, checkpoint_steps=(), eval_every=100)


def train_primes(out: str | Path, seeds: tuple[int, ...] = DEFAULT_SEEDS, dest: str | Path | None = None) -> dict:
    """Train (or reuse) the arrow probe's primes×product pairs into `out` and pack them (one
    process: each model is small, about a minute on one core)."""
    torch.set_num_threads(1)
    data = primes_data()
    train_pairs(PRIMES_MODEL, PRIMES_TRAIN, data, out, seeds=seeds)
    return pack(
        out,
        dest if dest is not None else primes_dir(),
        256,
        model_cfg=PRIMES_MODEL,
        data=data,
        seq_len=PRIMES_TRAIN.seq_len,
        checkpoints_of=None,
    )
