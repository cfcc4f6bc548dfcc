"""Small TransformerLens models that the workbench trains itself, and pretrained ones by name.

The embedded default, `workbench-tiny`, is a 2-layer ReLU HookedTransformer on the byte-level
Python-docs corpus, trained in both directions (forward, and backward = every window reversed)
with the same config, data and seed. It is trained on first use (a couple of minutes on 2 CPU
cores, with a progress bar) and cached under `workbench_home()`; checkpoints saved along the way
feed the sparsity-over-training probe.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Int
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from .corpus import ByteTokenizer, Tokenizer, encode_corpus, python_docs_corpus, windows
from .runs import RunDir, atomic_save_tensors, atomic_torch_save, load_state, load_tensors

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


@dataclass
class TokenData:
    """A train and a validation token stream and the tokenizer that made them."""

    train: Int[torch.Tensor, " n_train"]
    validation: Int[torch.Tensor, " n_val"]
    tokenizer: Tokenizer = field(repr=False)


def default_data() -> TokenData:
    corpus, tok = python_docs_corpus(), ByteTokenizer()
    return TokenData(encode_corpus(corpus, tok, "train"), encode_corpus(corpus, tok, "validation"), tok)


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
    """A model saved as model.safetensors + model_config.json (as run directories keep it)."""
    folder = Path(folder)
    cfg = ModelConfig(**json.loads((folder / "model_config.json").read_text()))
    return load_model_file(folder / "model.safetensors", cfg)


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
        ckpt = run.file("checkpoint.pt")
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
            save_model(model, run.file(f"checkpoints/step_{step:06d}.safetensors"), model_cfg)
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
                    run.file("checkpoint.pt"),
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
        save_model(model, run.file("model.safetensors"), model_cfg)
    return model.eval()


def default_model_dir(direction: Direction = "forward", seed: int = 0) -> Path:
    """The shipped run folder of the default (metrics.jsonl; checkpoints for seed 0 forward)."""
    from .default_model import run_dir

    return run_dir(seed, direction)


def load_default(direction: Direction = "forward", seed: int = 0, *, progress: bool = True) -> HookedTransformer:
    """The embedded default model from its shipped weights (data/workbench-tiny; nothing is
    trained). `progress` is kept for callers written when the default was trained on first use."""
    from .default_model import load_shipped

    return load_shipped(direction, seed)


def load_model(name: str = DEFAULT_MODEL_NAME, device: str = "cpu") -> tuple[HookedTransformer, Tokenizer]:
    """A model and its tokenizer by name: "workbench-tiny" (or "workbench-tiny-backward"), or
    any TransformerLens pretrained name ("gpt2", "pythia-70m", ...) when the hub or a local
    cache has it."""
    if name in (DEFAULT_MODEL_NAME, f"{DEFAULT_MODEL_NAME}-forward", f"{DEFAULT_MODEL_NAME}-backward"):
        direction = "backward" if name.endswith("backward") else "forward"
        return load_default(direction).to(device), ByteTokenizer()
    from .pretrained import load_pretrained  # a local save_pretrained folder, or a hub name

    return load_pretrained(name, device)
