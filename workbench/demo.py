"""The demo: real results on the embedded default, built once and reused by app.py and notebooks.

    <root>/sae-topk/         a TopK SAE on the default model (metrics, feature table, its model)
    <root>/probe-sparsity/   MLP sparsity per layer, over training checkpoints, top-k intervention
    <root>/probe-heads/      head roles, causal check, example attention patterns; DuoAttention gates,
                             RazorAttention's rule, the KV-cache trade-off, the rankings' agreement,
                             the heads over training and the head explorer's data (issue 21)
    <root>/probe-arrow/      forward vs backward: natural text and primes×product

Every run folder is self-contained, so the viewer needs nothing outside it.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from .default_model import PRIMES_MODEL, PRIMES_TRAIN
from .hub import default_model_dir, load_default
from .kinds import arrow, heads, sae, sparsity
from .kinds.registry import ModelInput, get_kind
from .kinds.runner import build_run
from .models import (
    DEFAULT_MODEL,
    DEFAULT_TRAIN,
    LMTrainConfig,
    ModelConfig,
    default_data,
    pair_dirs,
    train_pairs,
    workbench_home,
)
from .probes.duo import DuoConfig
from .probes.heads import HeadRoleConfig
from .probes.kv_tradeoff import TradeoffConfig
from .probes.razor import RazorConfig
from .results import HeadsRunResult, ResultsError, read_results
from .runs import CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE, RunDir
from .viewer.build_status import BuildStatus


class Recipe(NamedTuple):
    """One demo run: its kind, the whole config it is built with, and its folder."""

    kind: str  # a registered kind's name
    config: Any  # that kind's config dataclass
    folder: str  # the run folder under the demo's root
    # a build used instead of the kind's, taking `config` (whatever its class); the run stays of that
    # kind: its result type and viewer page (the real-model demo's SAE and heads, workbench.demo_real)
    build: Callable[..., Any] | None = None


MODELS_STAGE = "models"  # the first stage: the language models (cached elsewhere)


class DemoBuildError(RuntimeError):
    """Some stages failed; the others were built. `failures` maps stage name to its error."""

    def __init__(self, failures: dict[str, str]):
        super().__init__("demo stages failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
        self.failures = failures


def configure_threads() -> int:
    """Use one torch thread per process; returns it. Why one: on 2 cores with one busy process
    beside it, 2 intra-op threads collapse (their OpenMP barriers wait on the descheduled thread):
    a 256x512 @ 512x512 matmul loop measured 127/s with 2 threads against 685/s with 1 while a
    training job ran beside it, and the issue measured 311/s against 585/s. Uncontended, 2 threads
    are only about 1.4x faster (826/s), so 1 thread loses little alone and keeps working under load.
    The demo's models are small (d_model 128), where intra-op parallelism gains least."""
    import torch

    torch.set_num_threads(1)
    return 1


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults are what `python app.py` builds (a few minutes on 2 cores)."""

    hook_name: str = "blocks.1.hook_resid_post"  # where the SAE reads
    d_sae: int = 2048
    k: int = 16
    sae_tokens: int = 524_288  # SAE training tokens
    sae_lr: float = 6e-3  # best of 5.7e-4 (Gao et al.'s rule), 2e-3, 6e-3 at 256 steps (benchmarks/RESULTS.md)
    eval_windows: int = 64  # held-out windows for SAE evaluation and probes
    seq_len: int = 128
    topk_ks: tuple[int, ...] = (1, 4, 16, 64, 256, 512)
    head_roles: HeadRoleConfig = HeadRoleConfig()
    # Issue 21's head methods, stored in the heads run's optional fields (~35 s with the demo's 1 thread):
    head_methods: bool = True  # False: the heads run holds the roles and example patterns only
    # DuoAttention gates, one seed. 100 Adam steps, not the method's 300: on the default model every
    # gate is within 0.01 of its 300-step value from step 100 on (benchmarks/results/head_methods.json,
    # seed 0's trajectory), and 300 steps took 35 s of the demo's build with one torch thread.
    duo: DuoConfig = DuoConfig(steps=100)
    razor: RazorConfig = RazorConfig()  # echo and induction scores on repeated random segments (<1 s)
    tradeoff: TradeoffConfig = TradeoffConfig()  # the KV-cache trade-off curve and its random band (~11 s)
    heads_over_training: bool = True  # the head scores at the 10 shipped checkpoints (~9 s; contexts: head_roles)
    primes_model: ModelConfig = PRIMES_MODEL
    primes_train: LMTrainConfig = PRIMES_TRAIN
    arrow_seeds: tuple[int, ...] = (0, 1, 2)  # one forward/backward pair per seed (the arrow's seed-level interval)
    # None: the shipped default pairs; otherwise train these pairs inside the demo (tests)
    model: ModelConfig | None = None
    model_train: LMTrainConfig | None = None
    models_dir: str | None = field(default=None)


def default_demo_dir() -> Path:
    return workbench_home() / "demo"


def _models(cfg: DemoConfig, root: Path, progress: bool) -> ModelInput:
    """The forward model every run reads: the shipped default, or (tests) a pair trained here."""
    if cfg.model is None:
        return ModelInput(load_default("forward"), "workbench-tiny", DEFAULT_MODEL, default_model_dir("forward"))
    base = _models_dir(cfg, root)
    train = cfg.model_train or DEFAULT_TRAIN
    ((fwd, _),) = train_pairs(cfg.model, train, default_data(), base, seeds=cfg.arrow_seeds[:1], progress=progress)
    return ModelInput(fwd, "workbench-tiny", cfg.model, pair_dirs(base, cfg.arrow_seeds[:1])[0][0])


def _models_dir(cfg: DemoConfig, root: Path) -> Path:
    return Path(cfg.models_dir) if cfg.models_dir else root / "_models"


def demo_recipes(cfg: DemoConfig = DemoConfig(), root: str | Path | None = None) -> list[Recipe]:
    """The demo's runs in build order, each a whole config of its kind (`cfg` sets their sizes;
    `root`: the demo folder, where a config that trains its own models keeps them)."""
    root = Path(root) if root is not None else default_demo_dir()
    tiny = cfg.model is not None
    sae_cfg = sae.SAERunConfig(
        hook_name=cfg.hook_name,
        d_sae=cfg.d_sae,
        k=cfg.k,
        sae_tokens=cfg.sae_tokens,
        sae_lr=cfg.sae_lr,
        seq_len=cfg.seq_len,
        eval_windows=cfg.eval_windows,
    )
    sp_cfg = sparsity.SparsityRunConfig(eval_windows=cfg.eval_windows, seq_len=cfg.seq_len, topk_ks=cfg.topk_ks)
    hd_cfg = heads.HeadsRunConfig(
        head_methods=cfg.head_methods,
        over_training=cfg.heads_over_training,
        n_contexts=cfg.head_roles.n_contexts,
        seq_len=cfg.head_roles.seq_len,
        duo_steps=cfg.duo.steps,
        roles=cfg.head_roles,
        duo=cfg.duo,
        razor=cfg.razor,
        tradeoff=cfg.tradeoff,
        shipped_checkpoints=not tiny,
    )
    ar_cfg = arrow.ArrowRunConfig(
        seeds=cfg.arrow_seeds,
        seq_len=cfg.seq_len,
        natural_windows=cfg.eval_windows * 4,
        natural_dir=str(_models_dir(cfg, root)) if tiny else None,
        natural_model=cfg.model,
        natural_train=cfg.model_train,
        primes_model=cfg.primes_model,
        primes_train=cfg.primes_train,
    )
    return [
        Recipe("sae", sae_cfg, sae.FOLDER),
        Recipe("sparsity", sp_cfg, sparsity.FOLDER),
        Recipe("heads", hd_cfg, heads.FOLDER),
        Recipe("arrow", ar_cfg, arrow.FOLDER),
    ]


def tiny_demo_config() -> DemoConfig:
    """The tests' tiny demo (~20 s): 12-step models trained in the demo, every run kind, the real
    file layout; the head methods on 32-token contexts with a 3-step gate optimisation."""
    from .probes.duo import PasskeyConfig

    passkey = PasskeyConfig(seq_len=32, key_len=3, needle_prefix=" key ", question=" key? ")  # 20 of 32 tokens
    return DemoConfig(
        d_sae=256,
        k=8,
        sae_tokens=8 * 4096,
        eval_windows=8,
        seq_len=32,
        topk_ks=(1, 8, 64),
        head_roles=HeadRoleConfig(n_contexts=4, seq_len=32, needle_len=4),
        duo=DuoConfig(n_contexts=4, batch_size=4, steps=3, log_every=1, passkey=passkey),
        razor=RazorConfig(n_contexts=2, segment=8, repeats=3),
        tradeoff=TradeoffConfig(
            fractions=(0, 25, 50, 100),
            n_random=2,
            seq_len=32,
            n_needle=4,
            needle_len=4,
            n_passkey=4,
            passkey=passkey,
            n_text=4,
        ),
        primes_model=ModelConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=33),
        primes_train=LMTrainConfig(steps=10, batch_size=8, seq_len=32, checkpoint_steps=(), eval_every=5),
        arrow_seeds=(0, 1),
        model=ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=33),
        model_train=LMTrainConfig(steps=12, batch_size=8, seq_len=32, checkpoint_steps=(0, 5), eval_every=6),
    )


def tiny_demo_recipes(root: str | Path | None = None) -> list[Recipe]:
    """The tiny demo's runs (`tiny_demo_config`)."""
    return demo_recipes(tiny_demo_config(), root)


# Stage names in build order, and the run folder each writes (the models are cached elsewhere).
STAGES: tuple[tuple[str, str | None], ...] = ((MODELS_STAGE, None), *((r.folder, r.folder) for r in demo_recipes()))


def finished_results(run: RunDir):
    """A demo run's typed results.json (written last), or None when it must be built again: none
    yet, or one that does not read (an older schema that cannot migrate, a torn file; the demo is a
    cache)."""
    if not run.file(RESULTS_FILE).exists():
        return None
    try:
        return read_results(run)
    except ResultsError as e:
        print(f"demo: rebuilding {run.name}: {e}", file=sys.stderr)
        return None


def run_complete(run: RunDir, lacks: Callable[[Any], str | None]) -> bool:
    """Whether a demo run is done: its results.json reads (`finished_results`) and `lacks(results)`
    names nothing the config still asks for (a run an older recipe built is rebuilt, the reason
    printed)."""
    res = finished_results(run)
    if res is None:
        return False
    missing = lacks(res)
    if missing:
        print(f"demo: rebuilding {run.name}: {missing}", file=sys.stderr)
        return False
    return True


def _complete(run: RunDir, cfg: DemoConfig) -> bool:
    """A heads run built before the head methods were (no explorer data) is rebuilt while the config
    asks for them."""

    def lacks(res: Any) -> str | None:
        if isinstance(res, HeadsRunResult) and cfg.head_methods and res.explorer is None:
            return "it has no head methods (DuoAttention, Razor, trade-off, explorer)"
        return None

    return run_complete(run, lacks)


def build_demo(
    root: str | Path | None = None,
    cfg: DemoConfig = DemoConfig(),
    progress: bool = True,
    status: BuildStatus | None = None,
) -> Path:
    """Build every demo run that is missing (each is written last-step-atomically: a run counts
    as done once its results.json exists): the models, then each of `demo_recipes(cfg)` by its
    kind's build.

    Stages run in order (STAGES); a failed stage is recorded in `status` and the next one still
    runs (every stage needs the models, so a models failure skips the rest). Raises DemoBuildError
    after the last stage if any failed, and BuildStopped between stages once `status.stop` is set.
    """
    root = Path(root) if root is not None else default_demo_dir()
    root.mkdir(parents=True, exist_ok=True)

    def load() -> tuple[ModelInput, Any]:
        return _models(cfg, root, progress), default_data()

    return build_recipes(root, demo_recipes(cfg, root), load, lambda run: _complete(run, cfg), progress, status)


def recipe_kind(recipe: Recipe):
    """The kind a recipe builds with: the registered one, its build replaced by the recipe's own."""
    kind = get_kind(recipe.kind)
    if kind is None:
        raise ValueError(f"recipe {recipe.folder}: no run kind {recipe.kind!r} is registered")
    if recipe.build is None:
        return kind
    return dataclasses.replace(kind, config=type(recipe.config), build=recipe.build)


def build_recipes(
    root: Path,
    recipes: list[Recipe],
    load: Callable[[], tuple[ModelInput, Any]],
    complete: Callable[[RunDir], bool],
    progress: bool = True,
    status: BuildStatus | None = None,
) -> Path:
    """`build_demo`'s stages for any recipes: `load()` gives the model and token data every run
    reads (the models stage), then each recipe whose run is not `complete` is built by its kind
    (`recipe_kind`), a failed one recorded and the next still built."""
    root.mkdir(parents=True, exist_ok=True)
    status = status if status is not None else BuildStatus()
    status.begin([(MODELS_STAGE, None), *((r.folder, r.folder) for r in recipes)])
    failures: dict[str, str] = {}

    def report(name: str, error: BaseException | None) -> None:
        if error is not None:
            failures[name] = f"{type(error).__name__}: {error}"
            traceback.print_exception(error, file=sys.stderr)
        if progress:
            st = next(s for s in status.snapshot()["stages"] if s["name"] == name)
            tqdm.write(f"demo: {name} {st['state']}" + (f" in {st['seconds']:.1f} s" if st["seconds"] else ""))

    try:
        with status.stage(MODELS_STAGE):
            model, data = load()
    except Exception as e:
        report(MODELS_STAGE, e)
        for r in recipes:
            status.skip(r.folder, "the language models failed")
        raise DemoBuildError(failures) from e
    report(MODELS_STAGE, None)

    for recipe in recipes:
        status.check_stop()
        run = RunDir(root / recipe.folder)
        if complete(run):
            status.reused(recipe.folder)
            continue
        if not run.file(CHECKPOINT_FILE).exists():  # an interrupted earlier try: a fresh start would append to its log
            run.file(METRICS_FILE).unlink(missing_ok=True)
        try:
            with status.stage(recipe.folder):
                build_run(recipe_kind(recipe), recipe.config, model, data, run, progress=progress)
        except Exception as e:  # recorded; the next stage does not depend on this one
            report(recipe.folder, e)
            continue
        report(recipe.folder, None)
    if failures:
        raise DemoBuildError(failures)
    return root
