"""The demo on a real model: SmolLM2-135M-Instruct, its Q4_1 GGUF weights dequantized to float32 (not
the original bf16 release), built by `python app.py --model smollm2-135m-instruct-q4` in about 16
minutes on 2 cores and reused on the next start.

    <root>/sae-topk/         a TopK SAE on blocks.15.hook_resid_post: 200,704 activations cached with
                             the forward pass stopped at the layer, 1M training tokens drawn from them
                             (d_sae 4608, k 32), evaluated on held-out text; its features decoded with
                             the model's BPE tokenizer (the run records the model by name)
    <root>/probe-sparsity/   act(gate) of the 30 SwiGLU MLPs per layer, and the top-k intervention
    <root>/probe-heads/      roles of the 270 query heads on natural-text needle contexts (each one
                             string tokenized once), the causal check, RazorAttention's scores, the
                             KV-cache trade-off per KV head (exact passkey accuracy at 25% and 50% of
                             the 90 KV heads full, against 40 random rankings) and the head explorer
                             over 30 x 9 heads (patterns in explorer_patterns.safetensors)

The root is `<WORKBENCH_HOME>/demo-<model name>`, apart from the default's demo. The stages are
workbench.demo's (`build_recipes`): a run counts as done once its results.json reads, so a finished
demo opens at once and an interrupted one rebuilds only its unfinished runs. The SAE and heads runs
are of the built-in kinds (their results and viewer pages) with builds of their own here, planned for
this model's cost (about 0.27 GFLOP a token: 1,270 tokens/s stopped at layer 15, 530 for a whole
forward pass, on 2 threads). DuoAttention and the arrow of time are not part of it (the gates train
for minutes per step count; the arrow needs a backward model, which SmolLM2 has not).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .demo import MODELS_STAGE, Recipe, build_recipes, run_complete
from .fielddoc import doc
from .kinds import heads, sae, sparsity
from .kinds.registry import ModelInput
from .models import workbench_home
from .probes.heads_data import HeadRoleConfig
from .probes.kv_data import PasskeyConfig, RazorConfig, TradeoffConfig
from .results import HeadsRunResult, read_results
from .runs import RunDir
from .viewer.build_status import BuildStatus

REAL_MODEL = "smollm2-135m-instruct-q4"  # workbench.gguf_model.SMOLLM2.name (tests check they agree)
DESCRIPTION = "SmolLM2-135M-Instruct, Q4_1 GGUF weights dequantized to float32 (not the original bf16 release)"
# The causal check of the head roles. "screen": attribution patching for every head in one forward and
# backward pass, then the exact restricted forward on n_exact heads (probes/head_screen.py). "exact" is
# one forward per head: 270 here, about 15 minutes on 2 threads at 16 x 128 tokens.
CAUSAL_CHECK = "screen"
# A passkey sentence of its own after the key, so that BPE never merges the key's last digit with
# what follows (benchmarks/smollm_kv.py uses the same layout)
TEXT_PASSKEY = PasskeyConfig(needle_suffix=". Remember it. ")
# The rankings a heads run here gives (probes.head_rankings keys; DuoAttention's gates are not trained)
HEADS_RANKINGS = ("retrieval", "streaming_reversed", "tl_induction", "causal_delta_loss", "razor")


@dataclass(frozen=True)
class RealSAEConfig:
    """The SAE run on a real model: its activations cached once (forward stopped at the hook's
    layer), training drawing `sae_tokens` from them (epochs of the cache), then the evaluation."""

    hook_name: str = doc("blocks.15.hook_resid_post", "the hook the SAE reads (the middle of 30 blocks)")
    d_sae: int = doc(4608, "latents (8 x d_model)")
    k: int = doc(32, "active latents per token (TopK)")
    cache_tokens: int = doc(200_704, "activations computed from the model (49 buffers of 4096)")
    sae_tokens: int = doc(1_003_520, "training tokens drawn from the cache (5 epochs)")
    batch_size: int = doc(4096, "activations per step")
    lr: float | None = doc(None, "Adam learning rate; none: Gao et al.'s 2e-4 / sqrt(d_sae / 16384)")
    seq_len: int = doc(128, "tokens per window after BOS")
    eval_windows: int = doc(16, "held-out windows of the evaluation (FVU, CE loss recovered, feature table)")


@dataclass(frozen=True)
class RealHeadsConfig:
    """The heads run on a real model: head roles with the causal check, RazorAttention's scores and
    the head explorer's data; the KV-cache trade-off when `tradeoff` is given."""

    roles: HeadRoleConfig = field(
        default_factory=lambda: HeadRoleConfig(
            n_contexts=16, seq_len=128, sink=4, window=16, contexts="text", causal=CAUSAL_CHECK, n_exact=40
        )
    )
    razor: RazorConfig = field(default_factory=RazorConfig)  # repeated random segments (~2 s)
    # The trade-off at the heads' T = 128 (window T / 8) against 40 random rankings: the fewest at which
    # Holm over the two fractions can pass (2 / 41 < 0.05; 19 give 2 / 20), with 8 passkeys to pay for
    # them (about 6 minutes here). benchmarks/smollm_kv.py --part tradeoff runs 99 rankings on 16
    # passkeys at T = 256: 56 minutes with or without the compensation token. None: skipped.
    tradeoff: TradeoffConfig | None = field(
        default_factory=lambda: TradeoffConfig(
            fractions=(25, 50),
            sink=4,
            window=16,
            n_random=40,
            max_tie_orders=3,
            seq_len=128,
            n_needle=1,
            n_passkey=8,
            n_text=2,
            passkey=TEXT_PASSKEY,
        )
    )
    tradeoff_rankings: tuple[str, ...] = doc(
        ("retrieval", "razor", "causal_delta_loss"),
        "the rankings the trade-off compares, of HEADS_RANKINGS; each adds one evaluation per fraction and tie order",
    )
    explorer_text: int = doc(1, "held-out text windows among the explorer's contexts (besides needle, repeat)")

    def __post_init__(self):
        unknown = [k for k in self.tradeoff_rankings if k not in HEADS_RANKINGS]
        if unknown or not self.tradeoff_rankings:
            raise ValueError(
                f"tradeoff_rankings: unknown {unknown or 'none given'}; expected at least one of {HEADS_RANKINGS}"
            )


@dataclass(frozen=True)
class RealDemoConfig:
    """Sizes of the real-model demo; the defaults are what `python app.py --model ...` builds."""

    model: str = doc(REAL_MODEL, "the model, by its workbench name (workbench.hub.load_model)")
    threads: int = doc(2, "torch threads (at most the CPU count); 2 nearly double 1 on this model's matmuls")
    sae: RealSAEConfig = field(default_factory=RealSAEConfig)
    sparsity: sparsity.SparsityRunConfig = field(
        default_factory=lambda: sparsity.SparsityRunConfig(
            eval_windows=32, threshold=0.1, topk_ks=(16, 64, 256, 768), over_training_windows=8
        )
    )  # SiLU has no exact zeros: |act(gate)| > 0.1 counts as active (0.01 and 0.05 in RESULTS.md)
    heads: RealHeadsConfig = field(default_factory=RealHeadsConfig)


def real_demo_dir(name: str = REAL_MODEL) -> Path:
    return workbench_home() / f"demo-{name}"


def real_recipes(cfg: RealDemoConfig = RealDemoConfig()) -> list[Recipe]:
    """The real-model demo's runs in build order."""
    return [
        Recipe("sae", cfg.sae, sae.FOLDER, build_sae),
        Recipe("sparsity", cfg.sparsity, sparsity.FOLDER),
        Recipe("heads", cfg.heads, heads.FOLDER, build_heads),
    ]


def tiny_real_config() -> RealDemoConfig:
    """The tests' real-model demo (~30 s on one thread): every run on SmolLM2 at a toy size."""
    return RealDemoConfig(
        threads=1,
        sae=RealSAEConfig(
            d_sae=256, k=8, cache_tokens=2048, sae_tokens=4096, batch_size=512, seq_len=32, eval_windows=2
        ),
        sparsity=sparsity.SparsityRunConfig(
            eval_windows=2, seq_len=32, threshold=0.1, topk_ks=(64,), over_training_windows=1
        ),
        heads=RealHeadsConfig(
            roles=HeadRoleConfig(
                n_contexts=2,
                seq_len=48,
                needle_len=6,
                sink=4,
                window=6,
                contexts="text",
                causal=CAUSAL_CHECK,
                n_exact=2,
            ),
            razor=RazorConfig(n_contexts=2, segment=8, repeats=3),
            tradeoff=TradeoffConfig(
                fractions=(25,),
                sink=4,
                window=6,
                n_random=2,
                max_tie_orders=1,
                seq_len=48,
                n_needle=1,
                n_passkey=2,
                n_text=1,
                passkey=TEXT_PASSKEY,
            ),
            tradeoff_rankings=("razor",),
            explorer_text=0,
        ),
    )


# --- the builds -----------------------------------------------------------------------------------


def build_sae(cfg: RealSAEConfig, model: ModelInput, data, run: RunDir, *, progress: bool = True):
    """Cache `cfg.cache_tokens` activations from consecutive training windows (shuffled, the pass
    stopped after the hooked block), train a TopK SAE on `cfg.sae_tokens` drawn from them, record
    the model by name (the viewer reads its tokenizer) and evaluate on held-out windows."""
    import torch
    from tqdm.auto import tqdm

    from .activations import ActivationStore, TensorSource, capture
    from .corpus import windows
    from .hub import record_model
    from .sae import SAEConfig, SAETrainConfig, train_sae
    from .sae.health import HealthConfig, HealthMonitor
    from .sae.run_eval import evaluate_sae

    if cfg.cache_tokens < cfg.batch_size:
        raise ValueError(f"cache_tokens={cfg.cache_tokens} must hold at least one batch of {cfg.batch_size}")
    lm, tok = model.model, data.tokenizer
    seqs = windows(data.train, cfg.seq_len, bos_token_id=tok.bos_token_id, n=-(-cfg.cache_tokens // cfg.seq_len))
    seqs = seqs[torch.randperm(len(seqs), generator=torch.Generator().manual_seed(0))]
    acts = []
    for chunk in tqdm(seqs.split(16), desc=f"caching {cfg.hook_name}", unit="batch", disable=not progress):
        acts.append(capture(lm, chunk, cfg.hook_name)[0][:, 1:].reshape(-1, lm.cfg.d_model))  # BOS left out
    source = TensorSource(torch.cat(acts)[: cfg.cache_tokens], chunk_size=min(65_536, cfg.cache_tokens))
    del acts
    sae_cfg = SAEConfig(d_in=lm.cfg.d_model, d_sae=cfg.d_sae, k=cfg.k, hook_name=cfg.hook_name, model_name=model.name)
    train = SAETrainConfig(
        total_tokens=cfg.sae_tokens, batch_size=cfg.batch_size, lr=cfg.lr, log_every=5, checkpoint_every=10**9
    )
    health = HealthConfig(every=max(1, train.steps // 20), warmup=train.steps // 5)
    trained = train_sae(
        sae_cfg, train, ActivationStore(source, cfg.batch_size), run, progress=progress, monitor=HealthMonitor(health)
    )
    del source
    record_model(run.path, model.name, corpus="python-docs", model_description=DESCRIPTION)
    val = windows(data.validation, cfg.seq_len, bos_token_id=tok.bos_token_id, n=cfg.eval_windows)
    evaluate_sae(run.path, lm, trained, tok, val, model_name=model.name, progress=progress)
    return read_results(run)


def build_heads(cfg: RealHeadsConfig, model: ModelInput, data, run: RunDir, *, progress: bool = True):
    """Head roles on needle contexts cut from the held-out text, RazorAttention's scores, the
    trade-off when configured, and the explorer's data (patterns beside results.json, read per head)."""
    from .corpus import windows
    from .hub import record_model
    from .probes.head_explorer import default_contexts, explorer_data, save_patterns
    from .probes.heads import head_roles, role_contexts
    from .probes.kv_tradeoff import standard_rankings, tradeoff_curve
    from .probes.razor import razor_scores
    from .runs import EXPLORER_PATTERNS_FILE

    lm, tok = model.model, data.tokenizer
    run.write_config(cfg, kind="heads")  # with the model's record: the viewer labels tokens with its tokenizer
    record_model(run.path, model.name, model_description=DESCRIPTION)
    bos, text = tok.bos_token_id, tok.decode(data.validation.tolist())
    roles = head_roles(lm, cfg.roles, bos, tokenizer=tok, text=text, progress=progress)
    razor = razor_scores(lm, cfg.razor, bos=bos)
    tradeoff = None
    if cfg.tradeoff is not None:
        rankings = standard_rankings(roles, None, razor)
        unknown = sorted(set(cfg.tradeoff_rankings) - set(rankings))
        if unknown:
            raise ValueError(f"tradeoff_rankings: {unknown} not among the rankings this run has, {sorted(rankings)}")
        tradeoff = tradeoff_curve(
            lm,
            {k: rankings[k] for k in cfg.tradeoff_rankings},
            cfg.tradeoff,
            bos=bos,
            haystack=data.validation,
            tokenizer=tok,
            progress=progress,
        )
    T = cfg.roles.seq_len  # every stored pattern is [T, T]
    contexts = {
        "needle (text)": role_contexts(lm, cfg.roles, bos, tok, text).tokens[0],
        "repeated segment": default_contexts(lm, cfg.roles, bos)["repeated segment"],
    }
    if cfg.explorer_text:
        held_out = windows(data.validation, T - 1, bos_token_id=bos, n=cfg.explorer_text)
        contexts |= {f"python docs {i}": w for i, w in enumerate(held_out)}
    explorer = explorer_data(lm, roles, tokenizer=tok, bos=bos, razor=razor, contexts=contexts)
    explorer = save_patterns(run.file(EXPLORER_PATTERNS_FILE), explorer)
    return HeadsRunResult(roles, [], razor=razor, kv_tradeoff=tradeoff, explorer=explorer)


# --- the demo -------------------------------------------------------------------------------------


def _complete(run: RunDir, cfg: RealDemoConfig) -> bool:
    """Done once its results.json reads; a heads run needs its explorer data too, and its trade-off
    while the config asks for one (a demo built before the trade-off joined it is rebuilt)."""

    def lacks(res: Any) -> str | None:
        if isinstance(res, HeadsRunResult) and (
            res.explorer is None or (cfg.heads.tradeoff is not None and res.kv_tradeoff is None)
        ):
            return "it lacks the explorer or the KV trade-off"
        return None

    return run_complete(run, lacks)


def load_inputs(name: str, progress: bool = True) -> tuple[ModelInput, Any]:
    """The model by name (converted once from its GGUF, ~25 s; a load after ~3 s) and the Python-docs
    corpus in its tokenizer."""
    from .corpus import encode_corpus, python_docs_corpus
    from .hub import load_model
    from .token_data import TokenData

    lm, tok = load_model(name)
    corpus = python_docs_corpus()
    data = TokenData(encode_corpus(corpus, tok, "train"), encode_corpus(corpus, tok, "validation"), tok)
    return ModelInput(lm, name), data


def build_real_demo(
    root: str | Path | None = None,
    cfg: RealDemoConfig = RealDemoConfig(),
    progress: bool = True,
    status: BuildStatus | None = None,
) -> Path:
    """Build every missing run of the real-model demo into `root` (default `real_demo_dir`): the
    model, then `real_recipes(cfg)`; `workbench.demo.build_recipes` runs the stages (a failed one is
    recorded and the next still runs; DemoBuildError at the end)."""
    import torch

    root = Path(root) if root is not None else real_demo_dir(cfg.model)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(cfg.threads, os.cpu_count() or 1)))
    try:
        if progress:
            print(f"demo: {DESCRIPTION} into {root}", flush=True)
        load = lambda: load_inputs(cfg.model, progress)  # noqa: E731
        return build_recipes(root, real_recipes(cfg), load, lambda run: _complete(run, cfg), progress, status)
    finally:  # the caller's thread count (a notebook, a test process) is left as it was
        torch.set_num_threads(before)


STAGES: tuple[tuple[str, str | None], ...] = ((MODELS_STAGE, None), *((r.folder, r.folder) for r in real_recipes()))
