"""Train every SAE variant at one budget and print one table per data set, budget beside it.

Variants: TopK, g-SAE, Mutual Choice, Feature Choice (uniform; Zipf capacities with aux_zipf),
and SAELens' own TopK trainer (its SAETrainer and TopKTrainingSAE, our lr schedule, its
defaults otherwise). Within a table every variant gets the same activations in the same order,
the same steps × batch tokens (counted as drawn, not assumed), the same k and dictionary size,
and either one shared lr (`--lr`) or each variant at its own best lr of a small sweep
(`--lr-sweep 2e-3,6e-3`), best meaning the lowest FVU on a held-out *selection* split that the
reported metrics do not use. Both the policy and every swept run are printed.

Tables: "model" (the default model's blocks.1.hook_resid_post; FVU, L0 and dead % on 65,536
held-out tokens, CE loss recovered and KL on 96 held-out windows, tokens/s; sparse probing mean
test accuracy at k = 1 and 5 over the byte-level concepts and the absorption-style mean full
absorption rate, workbench/sae/probing.py, on 256 held-out windows) and "synthetic"
(planted superposition features; MMCS against the planted dictionary, held-out FVU and L0).

    python benchmarks/sae_variants.py [--tables model synthetic] [--tokens 1048576] [--lr-sweep 2e-3,6e-3]
        [--syn-features 160 --syn-d 48 --syn-steps 800 --syn-lr-sweep 2e-3,6e-3] [--only TopK SAELens] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import torch

from workbench.activations import ActivationBatch, ActivationStore, TensorSource
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, from_saelens, train_sae
from workbench.sae.evaluate import reconstruction_metrics
from workbench.sae.probing import ABSORPTION_CAVEAT
from workbench.tasks import SuperpositionConfig, mmcs, superposition_data

HOOK = "blocks.1.hook_resid_post"
SAELENS = "SAELens TopKTrainingSAE (its trainer)"
VARIANTS = {
    "TopK + AuxK": dict(selection="topk", aux="auxk"),
    "g-SAE + AuxK": dict(selection="gradient", aux="auxk"),  # β set per table below
    "Mutual Choice + AuxK": dict(selection="mutual_choice", aux="auxk"),
    "Feature Choice (uniform) + AuxK": dict(selection="feature_choice", aux="auxk"),
    "Feature Choice (Zipf) + aux_zipf": dict(selection="feature_choice", fc_capacity="zipf", aux="aux_zipf"),
}


@dataclass(frozen=True)
class Budget:
    """What every variant of one table is trained with, identically."""

    steps: int  # optimiser steps
    batch: int  # tokens per step; every run draws exactly steps × batch tokens, in the same order
    k: int  # active latents per token (on average for Mutual / Feature Choice)
    d_sae: int  # latents
    lrs: tuple[float, ...]  # one: the shared lr; several: each variant at its best on the selection split
    warmup_steps: int = 50  # linear lr warm-up, then constant, then linear decay to 0 over the last 20%
    dead_tokens: int = 200_000  # our AuxK's "dead" horizon

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"budget: steps, batch and every lr must be positive, got {self}")

    @property
    def tokens(self) -> int:
        return self.steps * self.batch

    def train_config(self, lr: float) -> SAETrainConfig:
        return SAETrainConfig(
            total_tokens=self.tokens,
            batch_size=self.batch,
            lr=lr,
            warmup_steps=min(self.warmup_steps, self.steps),
            log_every=10**9,
        )

    def describe(self) -> str:
        lr = (
            f"one shared lr {self.lrs[0]:.3g} for every variant"
            if len(self.lrs) == 1
            else "each variant at its best lr of {"
            + ", ".join(f"{x:.3g}" for x in self.lrs)
            + "} (lowest FVU on a held-out selection split; the reported metrics use another split)"
        )
        return (
            f"{self.steps} steps × {self.batch} tokens = {self.tokens:,} training tokens per variant, "
            f"same activations in the same order; k = {self.k}, d_sae = {self.d_sae}; {lr}; "
            f"warm-up {min(self.warmup_steps, self.steps)} steps, linear decay to 0 over the last 20%"
        )


class CountingStore(ActivationStore):
    """An ActivationStore that counts the tokens a trainer drew (the budget is measured, not assumed)."""

    drawn = 0

    def __next__(self) -> ActivationBatch:
        batch = super().__next__()
        self.drawn += len(batch.acts)
        return batch


Trainer = Callable[[float], tuple[SparseAutoencoder, int, float]]  # lr -> (SAE, tokens drawn, seconds)


def ours(cfg: SAEConfig, budget: Budget, acts: torch.Tensor, grads: torch.Tensor | None) -> Trainer:
    def train(lr: float):
        store = CountingStore(TensorSource(acts, grads), budget.batch, seed=0)
        t0 = time.perf_counter()
        sae = train_sae(cfg, budget.train_config(lr), store, progress=False)
        return sae, store.drawn, time.perf_counter() - t0

    return train


def saelens_topk(budget: Budget, acts: torch.Tensor, hook_name: str) -> Trainer:
    """SAELens' TopK trainer on the same batches and lr schedule; read back with from_saelens,
    which folds its decoder-norm rescaling into our unit-norm form exactly."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    def train(lr: float):
        torch.manual_seed(0)
        lens = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                d_in=acts.shape[1], d_sae=budget.d_sae, k=budget.k, metadata=SAEMetadata(hook_name=hook_name)
            )
        )
        store = CountingStore(TensorSource(acts), budget.batch, seed=0)
        tc = budget.train_config(lr)
        decay = tc.steps - int(tc.decay_start * tc.steps)
        cfg = SAETrainerConfig(
            total_training_samples=budget.tokens,
            train_batch_size_samples=budget.batch,
            lr=lr,
            lr_end=lr,
            lr_warm_up_steps=tc.warmup_steps,
            lr_decay_steps=decay,
            device="cpu",
            logger=LoggingConfig(log_to_wandb=False),
        )
        t0 = time.perf_counter()
        SAETrainer(cfg, lens, data_provider=(b.acts for b in store)).fit()
        seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            lens.save_inference_model(tmp)
            return from_saelens(tmp), store.drawn, seconds

    return train


def best_of_sweep(name: str, train: Trainer, budget: Budget, select: list[ActivationBatch]) -> dict:
    """Train at every lr of the budget; keep the run with the lowest selection-split FVU."""
    runs = []
    for lr in budget.lrs:
        sae, drawn, seconds = train(lr)
        if drawn != budget.tokens:
            raise RuntimeError(f"{name} drew {drawn} training tokens, the budget is {budget.tokens}")
        fvu = reconstruction_metrics(sae, select)["fvu"]
        runs.append({"lr": lr, "fvu_select": fvu, "seconds": seconds, "sae": sae})
        print(json.dumps({"variant": name, "lr": lr, "fvu_select": fvu, "tokens": drawn}), flush=True)
    best = min(runs, key=lambda r: r["fvu_select"] if math.isfinite(r["fvu_select"]) else math.inf)
    return {
        "variant": name,
        "sae": best["sae"],
        "lr": best["lr"],
        "seconds": best["seconds"],
        "tokens": budget.tokens,
        "steps": budget.steps,
        "batch": budget.batch,
        "k": budget.k,
        "d_sae": budget.d_sae,
        "sweep": [{k: v for k, v in r.items() if k != "sae"} for r in runs],
    }


def _batches(acts: torch.Tensor, batch: int) -> list[ActivationBatch]:
    store = ActivationStore(TensorSource(acts), batch)
    return [next(store) for _ in range(len(acts) // batch)]


def run_table(budget: Budget, acts, grads, select_acts, beta: float, wanted, hook_name: str) -> list[dict]:
    """Every wanted variant at `budget` on `acts` (grads for g-SAE); SAEs picked on `select_acts`."""
    select = _batches(select_acts, min(budget.batch, len(select_acts)))
    rows = []
    for name, kwargs in VARIANTS.items():
        if wanted(name):
            extra = {"beta": beta} if kwargs["selection"] == "gradient" else {}
            cfg = SAEConfig(
                d_in=acts.shape[1],
                d_sae=budget.d_sae,
                k=budget.k,
                hook_name=hook_name,
                dead_tokens=budget.dead_tokens,
                **kwargs,
                **extra,
            )
            rows.append(best_of_sweep(name, ours(cfg, budget, acts, grads), budget, select))
    if wanted(SAELENS):
        rows.append(best_of_sweep(SAELENS, saelens_topk(budget, acts, hook_name), budget, select))
    return rows


def synthetic_table(syn: SuperpositionConfig, budget: Budget, wanted=lambda name: True) -> list[dict]:
    """MMCS against the planted dictionary, and FVU/L0 on held-out samples, per variant."""
    n_select = n_eval = 16_384
    data = superposition_data(syn, budget.tokens + n_select + n_eval)
    train, select_acts, eval_acts = data.acts.split([budget.tokens, n_select, n_eval])
    grads = data.grads[: budget.tokens]
    rows = run_table(budget, train, grads, select_acts, 1.0, wanted, "synthetic")
    held_out = _batches(eval_acts, min(budget.batch, n_eval))
    for row in rows:
        rec = reconstruction_metrics(row["sae"], held_out)
        row.update(mmcs=mmcs(row["sae"].W_dec.detach(), data.features), fvu=rec["fvu"], l0=rec["l0"])
    return rows


def model_table(budget: Budget, wanted) -> tuple[list[dict], float]:
    from workbench.activations import ModelSource, StoreConfig
    from workbench.corpus import windows
    from workbench.hub import load_default
    from workbench.models import default_data
    from workbench.sae.evaluate import splice_metrics
    from workbench.sae.probing import evaluate_usefulness

    def collect(stream, n_tokens: int, with_grads: bool, seed: int):
        cfg = StoreConfig(HOOK, buffer_tokens=65_536, with_grads=with_grads, seed=seed)
        src = ModelSource(model, stream, cfg, bos_token_id=256)
        chunks = [src.chunk(i) for i in range(-(-n_tokens // cfg.buffer_tokens))]
        acts = torch.cat([c.acts for c in chunks])[:n_tokens]
        return acts, (torch.cat([c.grads for c in chunks])[:n_tokens] if with_grads else None)

    torch.manual_seed(0)
    model, data = load_default("forward"), default_data()
    print(f"collecting {budget.tokens:,} activations (+ loss gradients) at {HOOK} ...", flush=True)
    acts, grads = collect(data.train, budget.tokens, with_grads=True, seed=0)
    eval_acts, _ = collect(data.validation, 65_536, with_grads=False, seed=1)
    select_acts, _ = collect(data.validation, 16_384, with_grads=False, seed=2)  # other windows
    val_tokens = windows(data.validation, 128, bos_token_id=256, n=96)
    probe_tokens = windows(data.validation, 128, bos_token_id=256, n=256)  # one set for every variant
    # β so that β·|<g, w>| is 1 on average for a random unit direction w: the loss term then
    # weighs as much as the activation itself (with β=1 summed-loss gradients barely register)
    beta = float(acts.shape[1] ** 0.5 / grads.norm(dim=1).mean())
    rows = run_table(budget, acts, grads, select_acts, beta, wanted, HOOK)
    held_out = _batches(eval_acts, 4096)
    for row in rows:
        rec = reconstruction_metrics(row["sae"], held_out)
        spl = splice_metrics(model, row["sae"], HOOK, val_tokens)
        use = evaluate_usefulness(model, row["sae"], HOOK, probe_tokens)
        acc = use.sparse_probing.mean_accuracy()
        row.update(
            fvu=rec["fvu"],
            l0=rec["l0"],
            dead_pct=100 * rec["dead_frac"],
            kl=spl["kl_sae"],
            ce_loss_recovered=spl["ce_loss_recovered"],
            ce_sae=spl["ce_sae"],
            tokens_per_s=budget.tokens / row["seconds"],
            sparse_probing_k1=acc[1],
            sparse_probing_k5=acc[5],
            sparse_probing_llm=use.sparse_probing.mean_llm_accuracy(),
            absorption=use.absorption.mean_full_absorption(),
            usefulness=use.to_dict(),
        )
    return rows, beta


def _lrs(single: float | None, sweep: str | None, default: float) -> tuple[float, ...]:
    if single is not None and sweep is not None:
        raise SystemExit("give either an lr or an lr sweep, not both")
    if sweep is not None:
        return tuple(float(x) for x in sweep.split(","))
    return (single if single is not None else default,)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", nargs="+", default=["model", "synthetic"], choices=["model", "synthetic"])
    ap.add_argument("--tokens", type=int, default=1_048_576, help="model table: training tokens (whole batches)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument(
        "--lr",
        type=float,
        default=None,
        help="model table: one lr for every variant (default 2e-4/sqrt(d_sae/16384), Gao et al.)",
    )
    ap.add_argument("--lr-sweep", default=None, help="model table: comma-separated lrs, each variant at its best")
    ap.add_argument("--syn-d", type=int, default=32)
    ap.add_argument("--syn-features", type=int, default=96)
    ap.add_argument("--syn-d-sae", type=int, default=None, help="default 2 × --syn-features")
    ap.add_argument("--syn-k", type=int, default=4)
    ap.add_argument("--syn-steps", type=int, default=200)
    ap.add_argument("--syn-batch", type=int, default=1024)
    ap.add_argument("--syn-lr", type=float, default=None, help="synthetic table: one lr (default 4e-3)")
    ap.add_argument("--syn-lr-sweep", default=None)
    ap.add_argument("--only", nargs="+", default=None, help="rows whose name contains one of these words")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    def wanted(name: str) -> bool:
        return args.only is None or any(w.lower() in name.lower() for w in args.only)

    out: dict = {}
    stamp = (
        f"{date.today()} · {platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} "
        f"threads · torch {torch.__version__}"
    )
    if "model" in args.tables:
        default_lr = SAETrainConfig().learning_rate(args.d_sae) if args.lr is None else args.lr
        budget = Budget(
            args.tokens // args.batch,
            args.batch,
            args.k,
            args.d_sae,
            _lrs(args.lr, args.lr_sweep, default_lr),
            dead_tokens=200_000,
        )
        rows, beta = model_table(budget, wanted)
        print(f"\n{stamp} · hook {HOOK} of workbench-tiny · g-SAE β={beta:.3g}\nBudget: {budget.describe()}\n")
        if rows:
            print(
                f"Sparse probing: mean test accuracy over {len(rows[0]['usefulness']['sparse_probing']['tasks'])} "
                f"byte-level concepts; probe on the raw activation (all {HOOK} dims): "
                f"{rows[0]['sparse_probing_llm']:.3f}. Absorption-style: mean full-absorption rate over "
                f"first letters ({ABSORPTION_CAVEAT}).\n"
            )
        print(
            "| variant | lr | FVU | mean L0 | dead % | CE loss recovered | KL | tokens/s | sparse probe k=1 | "
            "k=5 | absorption-style |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['variant']} | {r['lr']:.3g} | {r['fvu']:.4f} | {r['l0']:.2f} | {r['dead_pct']:.1f} | "
                f"{r['ce_loss_recovered']:.4f} | {r['kl']:.4f} | {r['tokens_per_s']:,.0f} | "
                f"{r['sparse_probing_k1']:.3f} | {r['sparse_probing_k5']:.3f} | {r['absorption']:.3f} |"
            )
        out["model"] = {"budget": budget.describe(), "beta": beta, "rows": rows}
    if "synthetic" in args.tables:
        syn = SuperpositionConfig(d=args.syn_d, n_features=args.syn_features)
        budget = Budget(
            args.syn_steps,
            args.syn_batch,
            args.syn_k,
            args.syn_d_sae or 2 * args.syn_features,
            _lrs(args.syn_lr, args.syn_lr_sweep, 4e-3),
            warmup_steps=20,
            dead_tokens=20_000,
        )
        rows = synthetic_table(syn, budget, wanted)
        print(
            f"\n{stamp} · synthetic: {syn.n_features} planted features in {syn.d} dims, "
            f"{syn.mean_active:g} active per sample on average (g-SAE β=1)\nBudget: {budget.describe()}\n"
        )
        print("| variant | lr | MMCS | FVU (held out) | mean L0 |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['lr']:.3g} | {r['mmcs']:.3f} | {r['fvu']:.4f} | {r['l0']:.2f} |")
        out["synthetic"] = {"budget": budget.describe(), "rows": rows}
    if args.json:
        for table in out.values():
            for r in table["rows"]:
                r.pop("sae")
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
