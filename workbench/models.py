"""Small TransformerLens models that the workbench trains itself: configs, training, checkpoints.

The embedded default, `workbench-tiny`, is a 2-layer ReLU HookedTransformer on the byte-level
Python-docs corpus, trained in both directions (forward, and backward = every window reversed)
with the same config, data and seed; `train_pairs` trains such forward/backward pairs, one per
seed, in the seed/direction layout `pair_dir` spells (the shipped weights use it too, see
`default_model`). Checkpoints saved along the way feed the probes over training.

Loading a model by name or folder, and the model a run was made with, live one level up in
`workbench.hub` (`load_model`, `load_default`, `default_model_dir`): it imports this module and
nothing here imports it back, not even inside a function (tests/test_imports.py checks).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Int
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from .bridge import quiet_hooked_deprecation
from .corpus import windows
from .runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    RunDir,
    atomic_save_tensors,
    atomic_torch_save,
    load_state,
    load_tensors,
)
from .token_data import TokenData, default_data

__all__ = ["TokenData", "default_data"]  # re-exported: they moved to token_data (a leaf)

Direction = Literal["forward", "backward"]
DEFAULT_MODEL_NAME = "workbench-tiny"


def workbench_home() -> Path:
    """Where trained defaults and the demo run live: $WORKBENCH_HOME or ~/.cache/workbench."""
    return Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".cache" / "workbench"))


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a workbench-trained model (becomes a HookedTransformerConfig)."""

    n_layers: int = 2  # transformer blocks
    d_model: int = 128  # residual stream width
    n_heads: int = 4  # attention heads per layer; d_head = d_model // n_heads
    d_mlp: int = 512  # MLP hidden width (0 with attn_only)
    n_ctx: int = 129  # longest sequence, BOS included
    d_vocab: int = 257  # byte tokenizer: 256 bytes + BOS
    act_fn: str = "relu"  # "relu" keeps exact zeros (lazy neurons); "gelu" selectable
    attn_only: bool = False  # no MLPs (toy copy-task models)

    def to_hooked(self, seed: int) -> HookedTransformerConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return HookedTransformerConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            d_mlp=None if self.attn_only else self.d_mlp,
            n_ctx=self.n_ctx,
            d_vocab=self.d_vocab,
            act_fn=None if self.attn_only else self.act_fn,
            attn_only=self.attn_only,
            normalization_type="LN",
            seed=seed,
            default_prepend_bos=False,
            device="cpu",
        )


@dataclass(frozen=True)
class LMTrainConfig:
    """How a workbench model is trained. Only `direction` differs between an arrow-of-time pair."""

    direction: Direction = "forward"  # "backward": each training window reversed before BOS
    steps: int = 400  # optimizer steps
    batch_size: int = 32  # windows per step
    seq_len: int = 128  # tokens per window after BOS (must be < n_ctx)
    lr: float = 2e-3  # peak AdamW learning rate, reached after warmup then cosine-decayed
    warmup_steps: int = 40
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0  # initialisation and data order; windows of step s come from seed and s alone
    checkpoint_steps: tuple[int, ...] = (0, 10, 25, 50, 100, 200, 300)  # kept for probes
    eval_every: int = 100  # validation loss every N steps (and at the end)
    eval_windows: int = 64  # validation windows per evaluation
    # Share of each batch's windows whose tail is one random segment repeated to the window's end.
    # Natural text alone forms no induction head at this size in minutes (issue 13; shared/NOTES.md:
    # one copy per window was not enough in 2,000 steps), so the mix is what lets the default model
    # show retrieval heads. Held-out loss is always measured on unmixed text.
    copy_frac: float = 0.0
    copy_period: tuple[int, int] = (8, 48)  # segment length, drawn uniformly from [lo, hi]
    copy_tokens: tuple[int, int] = (32, 127)  # segment token ids [lo, hi): printable ASCII bytes


DEFAULT_MODEL = ModelConfig()
# The embedded default's recipe (benchmarks/RESULTS.md, issue 13): half the windows end in a repeated
# random segment, which forms induction heads between steps 1,000 and 1,250 (shared/NOTES.md).
DEFAULT_TRAIN = LMTrainConfig(
    steps=1500,
    lr=3e-3,
    warmup_steps=100,
    copy_frac=0.5,
    eval_every=125,
    checkpoint_steps=(0, 25, 50, 100, 250, 500, 750, 1000, 1250),
)


CHECKPOINTS_DIR = "checkpoints"  # a training run's weights along the way, one file per kept step


def checkpoint_name(step: int) -> str:
    """A training checkpoint's path inside its run folder (train_lm writes it, the probes over
    training and the shipped default's manifest read it)."""
    return f"{CHECKPOINTS_DIR}/step_{step:06d}.safetensors"


def checkpoint_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, weights) of every checkpoint `train_lm` kept in `run_dir`, ascending, and the final
    model.safetensors as the step after the last logged one. Empty when there is none."""
    run_dir = Path(run_dir)
    found = [(int(p.stem.split("_")[1]), p) for p in sorted((run_dir / CHECKPOINTS_DIR).glob("step_*.safetensors"))]
    final = run_dir / MODEL_WEIGHTS_FILE
    if final.exists():
        logged = [m["step"] for m in RunDir(run_dir).metrics()]
        found.append((max(logged) + 1 if logged else (found[-1][0] + 1 if found else 0), final))
    return found


def _lr_at(step: int, cfg: LMTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_batch(data: TokenData, cfg: LMTrainConfig, step: int) -> Int[torch.Tensor, "batch seq"]:
    """The windows of one step: a function of (seed, step) only, so a resumed run sees the same.

    The copy mix is drawn before the direction is applied, so a backward model sees exactly the
    forward model's windows reversed (copy segments included)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    seqs = windows(data.train, cfg.seq_len, bos_token_id=data.tokenizer.bos_token_id, n=cfg.batch_size, generator=gen)
    if cfg.copy_frac > 0:
        seqs = _mix_copies(seqs, cfg, gen)
    if cfg.direction == "backward":
        seqs = torch.cat([seqs[:, :1], seqs[:, 1:].flip(-1)], dim=1)
    return seqs


def _mix_copies(seqs: Int[torch.Tensor, "b s"], cfg: LMTrainConfig, gen: torch.Generator) -> Int[torch.Tensor, "b s"]:
    """Overwrite the tail of a `copy_frac` share of windows with a random segment repeated to the
    end (random period and start, at least two periods), the rest of the window staying text."""
    lo, hi = cfg.copy_period
    if not 1 <= lo <= hi or 2 * hi > cfg.seq_len:
        raise ValueError(
            f"copy_period={cfg.copy_period}: need 1 <= lo <= hi and two periods within seq_len={cfg.seq_len}"
        )
    if not 0 <= cfg.copy_frac <= 1:
        raise ValueError(f"copy_frac={cfg.copy_frac} must lie in [0, 1]")
    seqs = seqs.clone()
    b, n = len(seqs), cfg.seq_len
    chosen = torch.rand(b, generator=gen) < cfg.copy_frac
    periods = torch.randint(lo, hi + 1, (b,), generator=gen)
    segs = torch.randint(cfg.copy_tokens[0], cfg.copy_tokens[1], (b, hi), generator=gen)
    frac_start = torch.rand(b, generator=gen)
    for i in torch.nonzero(chosen).flatten().tolist():
        p = int(periods[i])
        start = 1 + int(frac_start[i] * (n - 2 * p + 1))  # position 0 is BOS
        reps = -(-(n + 1 - start) // p)
        seqs[i, start:] = segs[i, :p].repeat(reps)[: n + 1 - start]
    return seqs


@torch.no_grad()
def evaluate_lm(model: HookedTransformer, data: TokenData, direction: Direction, n_windows: int, seq_len: int) -> float:
    """Mean next-token loss (nats) on the first `n_windows` consecutive validation windows."""
    model.eval()
    seqs = windows(
        data.validation, seq_len, bos_token_id=data.tokenizer.bos_token_id, reverse=direction == "backward", n=n_windows
    )
    losses = [model(chunk, return_type="loss").item() * len(chunk) for chunk in seqs.split(32)]
    return sum(losses) / len(seqs)


def new_model(cfg: ModelConfig, seed: int) -> HookedTransformer:
    torch.manual_seed(seed)
    with quiet_hooked_deprecation():
        return HookedTransformer(cfg.to_hooked(seed))


def _optimizer(model: HookedTransformer, cfg: LMTrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))


def save_model(model: HookedTransformer, path: str | Path, model_cfg: ModelConfig) -> None:
    meta = {"format": "workbench-model", **{k: str(v) for k, v in asdict(model_cfg).items()}}
    atomic_save_tensors(path, model.state_dict(), metadata=meta)


def load_model_file(path: str | Path, model_cfg: ModelConfig) -> HookedTransformer:
    """Load weights saved by `save_model` into a fresh model of `model_cfg`."""
    state = load_tensors(path)
    model = new_model(model_cfg, seed=0)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit ModelConfig (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    model.load_state_dict(state)
    return model.eval()


def load_model_dir(folder: str | Path) -> HookedTransformer:
    """A model saved as MODEL_WEIGHTS_FILE + MODEL_CONFIG_FILE (model.safetensors + model_config.json,
    as run directories keep it)."""
    folder = Path(folder)
    cfg = ModelConfig(**json.loads((folder / MODEL_CONFIG_FILE).read_text()))
    return load_model_file(folder / MODEL_WEIGHTS_FILE, cfg)


def train_lm(
    model_cfg: ModelConfig,
    train_cfg: LMTrainConfig,
    data: TokenData,
    run: RunDir | None = None,
    *,
    stop_after: int | None = None,
    progress: bool = True,
) -> HookedTransformer:
    """Train (or resume) a language model; returns it in eval mode.

    With a run directory, writes config.json, metrics.jsonl, checkpoints/step_XXXXXX.safetensors
    at `checkpoint_steps`, model.safetensors at the end, and checkpoint.pt (model, optimizer and
    step) after every eval, from which a second call resumes exactly. `stop_after` ends early
    after that many steps (to test resumption).
    """
    if train_cfg.seq_len >= model_cfg.n_ctx:
        raise ValueError(f"seq_len={train_cfg.seq_len} must be < n_ctx={model_cfg.n_ctx} (BOS takes one)")
    if data.tokenizer.vocab_size > model_cfg.d_vocab:
        raise ValueError(f"tokenizer has {data.tokenizer.vocab_size} ids, d_vocab is {model_cfg.d_vocab}")
    torch.manual_seed(train_cfg.seed)
    model = new_model(model_cfg, train_cfg.seed)
    opt = _optimizer(model, train_cfg)
    start = 0
    if run is not None:
        ckpt = run.file(CHECKPOINT_FILE)
        if ckpt.exists():
            state = load_state(ckpt, kind="workbench-lm")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start = state["step"]
            run.truncate_metrics(start - 1)
        else:
            run.write_config({"model": model_cfg, "train": train_cfg}, kind="lm")
    end = train_cfg.steps if stop_after is None else min(train_cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), desc=f"training {train_cfg.direction} LM", disable=not progress)
    for step in bar:
        if run is not None and step in train_cfg.checkpoint_steps:
            save_model(model, run.file(checkpoint_name(step)), model_cfg)
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, train_cfg)
        loss = model(train_batch(data, train_cfg, step), return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        last = step + 1 == train_cfg.steps
        if (step + 1) % train_cfg.eval_every == 0 or last or step + 1 == end:
            val = evaluate_lm(model, data, train_cfg.direction, train_cfg.eval_windows, train_cfg.seq_len)
            if run is not None:
                run.log({"step": step, "train_loss": loss.item(), "val_loss": val})
                atomic_torch_save(
                    run.file(CHECKPOINT_FILE),
                    {
                        "kind": "workbench-lm",
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "step": step + 1,
                    },
                )
        elif run is not None:
            run.log({"step": step, "train_loss": loss.item()})
    if run is not None and end == train_cfg.steps:
        save_model(model, run.file(MODEL_WEIGHTS_FILE), model_cfg)
    return model.eval()


# --- forward/backward pairs: one layout for every seed/direction folder ---------------------------


SEED_PREFIX = "seed"  # root/seed{s}/{direction}


def pair_dir(root: str | Path, seed: int, direction: Direction) -> Path:
    """root/seed{seed}/{direction}: where one model of a pair lives (`train_pairs`, the shipped
    default's data/workbench-tiny and data/arrow-primes, the demo's arrow runs)."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    return Path(root) / f"{SEED_PREFIX}{seed}" / direction


def pair_seeds(root: str | Path) -> list[int]:
    """The seeds that have a folder in `pair_dir`'s layout under `root`, ascending."""
    names = (p.name[len(SEED_PREFIX) :] for p in Path(root).glob(f"{SEED_PREFIX}*") if p.is_dir())
    return sorted(int(n) for n in names if n.isdigit())


def pair_dirs(root: str | Path, seeds=(0, 1, 2)) -> list[tuple[Path, Path]]:
    """(forward, backward) folders of each seed under `root`, in `pair_dir`'s layout."""
    return [(pair_dir(root, s, "forward"), pair_dir(root, s, "backward")) for s in seeds]


def _trained_with(run: RunDir) -> tuple[object, object]:
    """(seed, direction) a finished run folder's config.json records, (None, None) without one."""
    got = run.read_config().get("config", {}).get("train", {}) if run.file(CONFIG_FILE).exists() else {}
    return got.get("seed"), got.get("direction")


def train_pairs(
    model_cfg: ModelConfig,
    train_cfg: LMTrainConfig,
    data: TokenData,
    root: str | Path,
    seeds=(0, 1, 2),
    progress: bool = True,
) -> list[tuple[HookedTransformer, HookedTransformer]]:
    """Train (or reuse) one forward/backward pair per seed under root/seed{s}/{forward,backward};
    the seed sets both the initialisation and the batch order. A finished run (model.safetensors)
    is loaded, an interrupted one resumes; a folder trained with another seed or direction is
    refused rather than silently reused."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    out = []
    for s, dirs in zip(seeds, pair_dirs(root, seeds)):
        pair = []
        for direction, path in zip(("forward", "backward"), dirs):
            run, cfg = RunDir(path), replace(train_cfg, seed=s, direction=direction)
            weights = run.file(MODEL_WEIGHTS_FILE)
            if weights.exists():
                got = _trained_with(run)
                if got != (s, direction):
                    raise ValueError(
                        f"{path} holds a model trained with seed={got[0]}, direction="
                        f"{got[1]}; expected seed={s}, direction={direction}"
                    )
                pair.append(load_model_file(weights, model_cfg))
            else:
                pair.append(train_lm(model_cfg, cfg, data, run, progress=progress))
        out.append((pair[0], pair[1]))
    return out
