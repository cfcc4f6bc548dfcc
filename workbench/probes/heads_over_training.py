"""Head scores at every saved checkpoint: when do the induction and retrieval heads form?

Olsson et al. (2022) saw induction heads appear in a short phase change, together with a bump in
the loss curve and in-context copying switching on. This probe runs the head-role probe
(`heads.head_roles`: Wu's retrieval score with its Wilson interval, streaming mass with its t
interval, the causal check, TransformerLens' induction and previous-token detectors) plus each
head's attention entropy on every checkpoint, and puts them beside the loss:

- `heads_over_training(checkpoints)` takes any list of (step, model) pairs (or (step, loader)
  with a zero-argument loader, so that only one model is in memory at a time);
- `shipped_heads_over_training()` runs it on the default model's shipped checkpoints
  (data/workbench-tiny/seed0/forward/checkpoints plus the final model), with its logged loss curve;
- `run_heads_over_training(run_dir, model_cfg)` does the same for any run folder `train_lm` wrote.

The phase change is reported as the pair of consecutive checkpoints between which a criterion
first holds and keeps holding to the end (`formed`): "copy" (needle copy accuracy ≥
`copy_threshold`), "induction" (some head's TL induction score ≥ `induction_threshold`) and
"retrieval" (some head labelled retrieval, i.e. its Wilson lower bound ≥ the retrieval threshold
from enough copied steps). Checkpoints are sparse, so the step is only known to lie in that pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..runs import RunDir
from .heads import RETRIEVAL, attention_patterns, head_roles, make_contexts
from .heads_data import HeadsOverTraining, OverTrainingConfig
from .intervals import wilson_interval

Scores = list[list[float]]  # [L][H]
ModelOrLoader = HookedTransformer | Callable[[], HookedTransformer]


@torch.no_grad()
def attention_entropy(model: HookedTransformer, tokens: Int[Tensor, "b s"]) -> Float[Tensor, "L H"]:
    """Each head's mean entropy (nats) of its attention rows, over contexts and queries q ≥ 1
    (row 0 can only attend to itself: always 0). Low = focused (previous-token, induction,
    sink), high = diffuse; the upper bound at query q is log(q + 1)."""
    _, pat = attention_patterns(model, tokens)  # [L, b, H, q, k]
    p = pat.double().clamp_min(1e-30)
    ent = -(pat.double() * p.log()).sum(-1)  # [L, b, H, q]
    return ent[..., 1:].mean((1, 3)).float()


@torch.no_grad()
def held_out_loss(model: HookedTransformer, tokens: Int[Tensor, "b s"], batch: int = 16) -> float:
    total = 0.0
    for chunk in tokens.split(batch):
        total += float(model(chunk, return_type="loss")) * len(chunk)
    return total / len(tokens)


FORMED, NOT_FORMED, UNKNOWN = "formed", "not formed", "too few copied steps"


def _formed(steps: list[int], holds: list[bool | None]) -> list[int] | None:
    """[previous step, first step] from which `holds` stays true to the last checkpoint."""
    return formation(steps, holds)[0]


def formation(steps: list[int], holds: list[bool | None]) -> tuple[list[int] | None, str]:
    """When a criterion formed, and whether it did: `holds` per checkpoint is True, False or None
    (not measurable there, e.g. too few copied steps to label a retrieval head).

    "formed" with [last step known not to hold (or the first checkpoint), first step of the run of
    True that lasts to the end]; "not formed" (None) when the last checkpoint is False;
    "too few copied steps" (None) when it is None: not measurable is not "not formed"."""
    if not holds or holds[-1] is None:
        return None, UNKNOWN
    if not holds[-1]:
        return None, NOT_FORMED
    i = len(holds) - 1
    while i > 0 and holds[i - 1]:
        i -= 1
    j = i - 1
    while j >= 0 and holds[j] is None:  # unmeasured checkpoints: the change lies before them
        j -= 1
    return [steps[max(j, 0)] if i > 0 else steps[i], steps[i]], FORMED


def _metrics_curve(metrics: list[dict]) -> dict:
    """Logged validation loss against updates done (a row's "step" is the update just taken)."""
    rows = [m for m in metrics if m.get("val_loss") is not None]
    return {"step": [int(m["step"]) + 1 for m in rows], "val_loss": [float(m["val_loss"]) for m in rows]}


def heads_over_training(
    checkpoints: Iterable[tuple[int, ModelOrLoader]],
    cfg: OverTrainingConfig = OverTrainingConfig(),
    bos: int | None = None,
    val_tokens: Int[Tensor, "b s"] | None = None,
    metrics: list[dict] | None = None,
    progress: bool = True,
) -> HeadsOverTraining:
    """The head scores at every (step, model) — or (step, zero-argument loader) — pair.

    The loss at each checkpoint is measured on `val_tokens` (held-out windows) when given, else
    read from `metrics` (metrics.jsonl rows: the val_loss logged after exactly `step` updates),
    None where neither has it; the logged curve goes to `loss_curve` for the figure."""
    pairs = list(checkpoints)
    if not pairs:
        raise ValueError("checkpoints: expected at least one (step, model) pair")
    steps = [int(s) for s, _ in pairs]
    if steps != sorted(steps) or len(set(steps)) != len(steps):
        raise ValueError(f"checkpoints: steps must be strictly increasing, got {steps}")
    t0 = time.perf_counter()
    keys = (
        "retrieval",
        "retrieval_ci",
        "streaming",
        "streaming_ci",
        "induction",
        "previous_token",
        "delta_loss",
        "entropy",
        "labels",
        "copy_accuracy",
        "copy_accuracy_ci",
        "n_copied",
        "loss",
    )
    acc: dict[str, list] = {k: [] for k in keys}
    logged = {int(m["step"]) + 1: float(m["val_loss"]) for m in metrics or [] if m.get("val_loss") is not None}
    for step, item in tqdm(pairs, desc="heads over training", disable=not progress):
        model = item() if callable(item) and not isinstance(item, torch.nn.Module) else item
        model.eval()
        r = head_roles(model, cfg.roles, bos=bos)
        ctx = make_contexts(model, cfg.roles, bos).tokens
        lo, hi = wilson_interval(torch.tensor(float(r.n_copied)), torch.tensor(float(r.n_copy_steps)))
        for k, v in (
            ("retrieval", r.retrieval),
            ("retrieval_ci", r.retrieval_ci),
            ("streaming", r.streaming),
            ("streaming_ci", r.streaming_ci),
            ("induction", r.tl_scores["induction"]),
            ("previous_token", r.tl_scores["previous_token"]),
            ("delta_loss", r.delta_loss),
            ("entropy", attention_entropy(model, ctx).tolist()),
            ("labels", r.labels),
            ("copy_accuracy", r.copy_accuracy),
            ("copy_accuracy_ci", [float(lo), float(hi)]),
            ("n_copied", r.n_copied),
        ):
            acc[k].append(v)
        acc["loss"].append(
            held_out_loss(model, val_tokens, cfg.loss_batch) if val_tokens is not None else logged.get(step)
        )
    source = (
        "held-out windows"
        if val_tokens is not None
        else "metrics.jsonl val_loss"
        if any(v is not None for v in acc["loss"])
        else "none"
    )
    holds = {
        "copy": [a >= cfg.copy_threshold for a in acc["copy_accuracy"]],
        "induction": [max(max(row) for row in s) >= cfg.induction_threshold for s in acc["induction"]],
        # with too few copied steps no head can be labelled retrieval: unknown there, not False
        "retrieval": [
            None if n < cfg.roles.min_copied_steps else any(lab == RETRIEVAL for row in labs for lab in row)
            for labs, n in zip(acc["labels"], acc["n_copied"])
        ],
    }
    found = {k: formation(steps, h) for k, h in holds.items()}
    return HeadsOverTraining(
        steps=steps,
        **acc,
        loss_source=source,
        loss_curve=_metrics_curve(metrics or []),
        formed={k: v[0] for k, v in found.items()},
        formed_state={k: v[1] for k, v in found.items()},
        config=asdict(cfg),
        seconds=time.perf_counter() - t0,
    )


def run_checkpoints(run_dir: str | Path, model_cfg) -> list[tuple[int, Callable[[], HookedTransformer]]]:
    """(step, loader) for every checkpoints/step_*.safetensors of a `train_lm` run folder and its
    final model.safetensors (at the logged step count), loaded only when called."""
    from ..models import load_model_file

    run_dir = Path(run_dir)
    paths = sorted((run_dir / "checkpoints").glob("step_*.safetensors"))
    out = [(int(p.stem.split("_")[1]), p) for p in paths]
    final = run_dir / "model.safetensors"
    if final.exists():
        logged = [m["step"] for m in RunDir(run_dir).metrics()]
        out.append((max(logged) + 1 if logged else (out[-1][0] + 1 if out else 0), final))
    if not out:
        raise FileNotFoundError(f"run_dir: {run_dir} has no checkpoints/step_*.safetensors nor model.safetensors")
    return [(s, lambda p=p: load_model_file(p, model_cfg)) for s, p in out]


def run_heads_over_training(
    run_dir: str | Path,
    model_cfg,
    cfg: OverTrainingConfig = OverTrainingConfig(),
    bos: int | None = None,
    val_tokens: Tensor | None = None,
    progress: bool = True,
) -> HeadsOverTraining:
    """`heads_over_training` on a run folder's checkpoints, with its logged loss curve."""
    metrics = RunDir(Path(run_dir)).metrics()
    return heads_over_training(run_checkpoints(run_dir, model_cfg), cfg, bos, val_tokens, metrics, progress)


def shipped_checkpoints(seed: int = 0, direction: str = "forward") -> list[tuple[int, Callable[[], HookedTransformer]]]:
    """(step, loader) of the default model's shipped checkpoints and final model, each file
    checked against the manifest's sha256 when loaded."""
    from ..default_model import load_shipped, manifest, run_dir

    prefix = f"seed{seed}/{direction}/checkpoints/step_"
    steps = sorted(int(k[len(prefix) :].split(".")[0]) for k in manifest()["files"] if k.startswith(prefix))
    logged = [m["step"] for m in RunDir(run_dir(seed, direction)).metrics()]
    final = max(logged) + 1 if logged else (steps[-1] + 1 if steps else 0)
    out = [(s, lambda s=s: load_shipped(direction, seed, checkpoint_step=s)) for s in steps]
    return out + [(final, lambda: load_shipped(direction, seed))]


def shipped_heads_over_training(
    cfg: OverTrainingConfig = OverTrainingConfig(),
    seed: int = 0,
    val_tokens: Tensor | None = None,
    progress: bool = True,
) -> HeadsOverTraining:
    """The default model's head scores at its nine shipped checkpoints and the final model, with
    the loss curve logged during its training (BOS from the byte tokenizer it was trained with)."""
    from ..corpus import ByteTokenizer
    from ..default_model import run_dir

    metrics = RunDir(run_dir(seed, "forward")).metrics()
    return heads_over_training(
        shipped_checkpoints(seed),
        cfg,
        bos=ByteTokenizer.bos_token_id,
        val_tokens=val_tokens,
        metrics=metrics,
        progress=progress,
    )
