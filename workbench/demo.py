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

import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .activations import ActivationStore, ModelSource, StoreConfig
from .corpus import windows
from .default_model import load_shipped_pairs, primes_dir, shipped_dir
from .models import (
    DEFAULT_MODEL,
    DEFAULT_TRAIN,
    LMTrainConfig,
    ModelConfig,
    default_data,
    default_model_dir,
    load_default,
    save_model,
    workbench_home,
)
from .probes.arrow import PRIMES_MODEL, PRIMES_TRAIN, arrow_over_seeds, pair_dirs, primes_data, train_pairs
from .probes.duo import DuoConfig, PasskeyConfig, duo_gates, passkey_batch
from .probes.head_agreement import ranking_agreement
from .probes.head_explorer import default_contexts, explorer_data
from .probes.heads import HeadRoleConfig, attention_patterns, head_roles, make_contexts
from .probes.heads_over_training import OverTrainingConfig, run_heads_over_training, shipped_heads_over_training
from .probes.kv_tradeoff import TradeoffConfig, standard_rankings, tradeoff_curve
from .probes.razor import RazorConfig, razor_scores
from .probes.sparsity import activation_sparsity, sparsity_over_training, topk_intervention
from .results import (
    ArrowRunResult,
    AttentionExample,
    HeadsRunResult,
    ResultsError,
    SparsityOverTraining,
    SparsityRunResult,
    TopKIntervention,
    read_results,
    write_results,
)
from .runs import RunDir, atomic_write_json
from .sae import SAEConfig, SAETrainConfig, train_sae
from .sae.run_eval import evaluate_sae
from .viewer.build_status import BuildStatus

# Stage names in build order, and the run folder each writes (the models are cached elsewhere).
STAGES: tuple[tuple[str, str | None], ...] = (
    ("models", None),
    ("sae-topk", "sae-topk"),
    ("probe-sparsity", "probe-sparsity"),
    ("probe-heads", "probe-heads"),
    ("probe-arrow", "probe-arrow"),
)


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


def _models(cfg: DemoConfig, root: Path, progress: bool):
    if cfg.model is None:
        fwd, bwd = load_default("forward", progress=progress), load_default("backward", progress=progress)
        return fwd, bwd, DEFAULT_MODEL, DEFAULT_TRAIN, default_model_dir("forward"), default_model_dir("backward")
    base = Path(cfg.models_dir) if cfg.models_dir else root / "_models"
    train = cfg.model_train or DEFAULT_TRAIN
    ((fwd, bwd),) = train_pairs(cfg.model, train, default_data(), base, seeds=cfg.arrow_seeds[:1], progress=progress)
    fwd_dir, bwd_dir = pair_dirs(base, cfg.arrow_seeds[:1])[0]
    return fwd, bwd, cfg.model, train, fwd_dir, bwd_dir


def _arrow_pairs(cfg: DemoConfig, root: Path, ar_run: RunDir, data, progress: bool) -> dict:
    """Both data sets' pairs over `arrow_seeds`: the shipped ones where the config is the shipped
    one (no training at first start), trained here otherwise."""
    seeds = cfg.arrow_seeds
    if cfg.model is None:
        nat_root = shipped_dir()
        natural = load_shipped_pairs(seeds)
    else:
        nat_root = Path(cfg.models_dir) if cfg.models_dir else root / "_models"
        natural = train_pairs(
            cfg.model, cfg.model_train or DEFAULT_TRAIN, data, nat_root, seeds=seeds, progress=progress
        )
    pdata = primes_data()
    if (cfg.primes_model, cfg.primes_train) == (PRIMES_MODEL, PRIMES_TRAIN) and primes_dir().is_dir():
        p_root = primes_dir()
        primes = load_shipped_pairs(seeds, p_root, PRIMES_MODEL)
    else:
        p_root = ar_run.file("primes")
        primes = train_pairs(cfg.primes_model, cfg.primes_train, pdata, p_root, seeds=seeds, progress=progress)
    return {
        "natural text": arrow_over_seeds(
            natural,
            data,
            cfg.seq_len,
            n_windows=cfg.eval_windows * 4,
            seeds=list(seeds),
            run_dirs=pair_dirs(nat_root, seeds),
        ),
        "primes×product": arrow_over_seeds(
            primes, pdata, cfg.primes_train.seq_len, n_windows=256, seeds=list(seeds), run_dirs=pair_dirs(p_root, seeds)
        ),
    }


def head_methods(
    model, roles, cfg: DemoConfig, data, run_dir: Path | None, model_cfg: ModelConfig, progress: bool = True
) -> dict:
    """Issue 21's measurements for the heads run, as HeadsRunResult's optional fields: DuoAttention
    gates (one seed), RazorAttention's scores, the KV-cache trade-off of every ranking against
    random ones, the rankings' agreement, the scores over training (the shipped checkpoints when
    `run_dir` is None, else that training run's) and the head explorer's data. One outer bar names
    the part running; the long parts show their own bars beneath it (the build page shows both)."""
    bos, tok = data.tokenizer.bos_token_id, data.tokenizer
    parts = ["duo gates", "razor", "kv trade-off", "agreement", "over training", "explorer"]
    bar = tqdm(total=len(parts), desc="head methods", disable=not progress)
    out: dict = {}

    def step(name: str) -> None:
        bar.set_postfix_str(name, refresh=False)
        bar.update(0 if name == parts[0] else 1)

    try:
        step("duo gates")
        duo = duo_gates(model, cfg.duo, haystack=data.train, bos=bos, tokenizer=tok, progress=progress)
        step("razor")
        razor = razor_scores(model, cfg.razor, bos=bos)
        step("kv trade-off")
        rankings = standard_rankings(roles, duo, razor)
        tradeoff = tradeoff_curve(
            model, rankings, cfg.tradeoff, bos=bos, haystack=data.validation, tokenizer=tok, progress=progress
        )
        step("agreement")  # the causal check is the reference, not one of the compared rankings
        agreement = ranking_agreement(
            {k: v for k, v in rankings.items() if k != "causal_delta_loss"}, causal=roles.delta_loss
        )
        step("over training")
        over_cfg = OverTrainingConfig(roles=cfg.head_roles)
        over = None
        if cfg.heads_over_training:
            over = (
                shipped_heads_over_training(over_cfg, progress=progress)
                if run_dir is None
                else run_heads_over_training(run_dir, model_cfg, over_cfg, bos=bos, progress=progress)
            )
        step("explorer")
        # a passkey context as long as the needle ones, so that every stored pattern is [T, T] alike
        pk = PasskeyConfig(**{**asdict(cfg.duo.passkey), "seq_len": min(cfg.head_roles.seq_len, model.cfg.n_ctx)})
        contexts = {
            **default_contexts(model, cfg.head_roles, bos),
            "passkey": passkey_batch(1, pk, data.validation, bos=bos, tokenizer=tok, seed=1).tokens[0],
        }
        explorer = explorer_data(model, roles, tokenizer=tok, bos=bos, duo=duo, razor=razor, contexts=contexts)
        bar.update(1)
        out = {
            "duo": duo.to_dict(),
            "razor": razor.to_dict(),
            "kv_tradeoff": tradeoff.to_dict(),
            "agreement": agreement.to_dict(),
            "over_training": over.to_dict() if over is not None else None,
            "explorer": explorer,
        }
    finally:
        bar.close()
    return out


def _complete(run: RunDir, cfg: DemoConfig) -> bool:
    """Whether a demo run is done: its results.json (written last) reads. One that does not (an older
    schema that cannot migrate, a torn file) is rebuilt: the demo is a cache. So is a heads run built
    before the head methods were (no explorer data) while the config asks for them."""
    if not run.file("results.json").exists():
        return False
    try:
        res = read_results(run)
    except ResultsError as e:
        print(f"demo: rebuilding {run.name}: {e}", file=sys.stderr)
        return False
    if isinstance(res, HeadsRunResult) and cfg.head_methods and res.explorer is None:
        print(
            f"demo: rebuilding {run.name}: it has no head methods (DuoAttention, Razor, trade-off, explorer)",
            file=sys.stderr,
        )
        return False
    return True


def build_demo(
    root: str | Path | None = None,
    cfg: DemoConfig = DemoConfig(),
    progress: bool = True,
    status: BuildStatus | None = None,
) -> Path:
    """Build every demo run that is missing (each is written last-step-atomically: a run counts
    as done once its results.json exists).

    Stages run in order (STAGES); a failed stage is recorded in `status` and the next one still
    runs (every stage needs the models, so a models failure skips the rest). Raises DemoBuildError
    after the last stage if any failed, and BuildStopped between stages once `status.stop` is set.
    """
    root = Path(root) if root is not None else default_demo_dir()
    root.mkdir(parents=True, exist_ok=True)
    status = status if status is not None else BuildStatus()
    status.begin(list(STAGES))
    failures: dict[str, str] = {}

    def report(name: str, error: BaseException | None) -> None:
        if error is not None:
            failures[name] = f"{type(error).__name__}: {error}"
            traceback.print_exception(error, file=sys.stderr)
        if progress:
            st = next(s for s in status.snapshot()["stages"] if s["name"] == name)
            tqdm.write(f"demo: {name} {st['state']}" + (f" in {st['seconds']:.1f} s" if st["seconds"] else ""))

    try:
        with status.stage("models"):
            fwd, bwd, model_cfg, train_cfg, fwd_dir, bwd_dir = _models(cfg, root, progress)
            data = default_data()
            val = windows(data.validation, cfg.seq_len, bos_token_id=data.tokenizer.bos_token_id, n=cfg.eval_windows)
    except Exception as e:
        report("models", e)
        for name, _ in STAGES[1:]:
            status.skip(name, "the language models failed")
        raise DemoBuildError(failures) from e
    report("models", None)

    sae_run = RunDir(root / "sae-topk")

    def sae_stage() -> None:
        store_cfg = StoreConfig(cfg.hook_name, batch_size=4096, buffer_tokens=65_536, seq_len=cfg.seq_len)
        store = ActivationStore(ModelSource(fwd, data.train, store_cfg, data.tokenizer.bos_token_id), 4096)
        sae_cfg = SAEConfig(
            d_in=fwd.cfg.d_model,
            d_sae=cfg.d_sae,
            k=cfg.k,
            hook_name=cfg.hook_name,
            model_name="workbench-tiny",
            dead_tokens=200_000,
        )
        train = SAETrainConfig(
            total_tokens=cfg.sae_tokens, batch_size=4096, lr=cfg.sae_lr, log_every=5, checkpoint_every=10**9
        )
        sae = train_sae(sae_cfg, train, store, sae_run, progress=progress)
        save_model(fwd, sae_run.file("model.safetensors"), model_cfg)  # the run opens without the cache
        atomic_write_json(sae_run.file("model_config.json"), asdict(model_cfg))
        # sparse probing + absorption-style on twice the windows (about 5 s on 2 cores)
        probe_val = windows(
            data.validation, cfg.seq_len, bos_token_id=data.tokenizer.bos_token_id, n=2 * cfg.eval_windows
        )
        evaluate_sae(
            sae_run.path,
            fwd,
            sae,
            data.tokenizer,
            val,
            model_name="workbench-tiny",
            probe_tokens=probe_val,
            progress=progress,
        )

    sp_run = RunDir(root / "probe-sparsity")

    def sparsity_stage() -> None:
        sp_run.write_config({"model": model_cfg, "ks": cfg.topk_ks}, kind="sparsity")
        final = activation_sparsity(fwd, val)
        over = sparsity_over_training(fwd_dir, model_cfg, val[:16])
        ks = [k for k in cfg.topk_ks if k <= model_cfg.d_mlp]
        write_results(
            sp_run,
            SparsityRunResult(
                final, SparsityOverTraining(**over), TopKIntervention(**topk_intervention(fwd, val[:16], ks))
            ),
        )

    hd_run = RunDir(root / "probe-heads")

    def heads_stage() -> None:
        hcfg = cfg.head_roles
        hd_run.write_config(hcfg, kind="heads")
        roles = head_roles(fwd, hcfg, bos=data.tokenizer.bos_token_id)
        example = make_contexts(fwd, hcfg, data.tokenizer.bos_token_id).tokens[:1]
        _, pat = attention_patterns(fwd, example)
        toks = [data.tokenizer.token_str(int(t)) for t in example[0]]
        extra = (
            head_methods(fwd, roles, cfg, data, fwd_dir if cfg.model is not None else None, model_cfg, progress)
            if cfg.head_methods
            else {}
        )
        write_results(hd_run, HeadsRunResult(roles, [AttentionExample("needle", toks, pat[:, 0].tolist())], **extra))

    ar_run = RunDir(root / "probe-arrow")

    def arrow_stage() -> None:
        seeds = cfg.arrow_seeds
        ar_run.write_config(
            {
                "natural": {"model": model_cfg, "train": train_cfg, "seeds": seeds},
                "primes": {"model": cfg.primes_model, "train": cfg.primes_train, "seeds": seeds},
            },
            kind="arrow",
        )
        results = _arrow_pairs(cfg, root, ar_run, data, progress)
        write_results(ar_run, ArrowRunResult(results))

    for (name, _), run, build in zip(
        STAGES[1:], (sae_run, sp_run, hd_run, ar_run), (sae_stage, sparsity_stage, heads_stage, arrow_stage)
    ):
        status.check_stop()
        if _complete(run, cfg):
            status.reused(name)
            continue
        if not run.file("checkpoint.pt").exists():  # an interrupted earlier try: a fresh start would append to its log
            run.file("metrics.jsonl").unlink(missing_ok=True)
        try:
            with status.stage(name):
                build()
        except Exception as e:  # recorded; the next stage does not depend on this one
            report(name, e)
            continue
        report(name, None)
    if failures:
        raise DemoBuildError(failures)
    return root
