"""SynthSAEBench at CPU scale: every workbench variant and SAELens' own TopK, scored by SAELens.

The synthetic model, trainer for the reference TopK (`train_toy_sae`) and evaluator
(`eval_sae_on_synthetic_data`) are SAELens' `sae_lens.synthetic`; see workbench/sae/synth_bench.py.
g-SAE is not in this table: it ranks latents by their effect on a model's loss, which synthetic
samples do not have (its synthetic MMCS on our own generator stays in benchmarks/sae_variants.py).

    python benchmarks/synth_bench.py [--features 1024 --dim 96 --d-sae 256 --samples 524288 --lr 3e-3]
        [--only TopK SAELens] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import fields
from datetime import date

import torch

from workbench.sae.synth_bench import SynthBenchConfig, run_bench

COLUMNS = (
    "mcc",
    "uniqueness",
    "f1_score",
    "precision",
    "recall",
    "explained_variance",
    "shrinkage",
    "sae_l0",
    "dead_latents",
    "seconds",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    d = {f.name: f.default for f in fields(SynthBenchConfig)}
    ap.add_argument("--features", type=int, default=d["num_features"])
    ap.add_argument("--dim", type=int, default=d["hidden_dim"])
    ap.add_argument("--d-sae", type=int, default=d["d_sae"])
    ap.add_argument("--k", type=int, default=None, help="default: the synthetic model's mean L0, rounded")
    ap.add_argument("--samples", type=int, default=d["training_samples"])
    ap.add_argument("--batch", type=int, default=d["batch_size"])
    ap.add_argument("--lr", type=float, default=d["lr"])
    ap.add_argument("--eval-samples", type=int, default=d["eval_samples"])
    ap.add_argument("--no-hierarchy", action="store_true")
    ap.add_argument("--no-correlation", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", default=None, help="rows whose name contains one of these words")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = SynthBenchConfig(
        num_features=args.features,
        hidden_dim=args.dim,
        d_sae=args.d_sae,
        k=args.k,
        training_samples=args.samples,
        batch_size=args.batch,
        lr=args.lr,
        eval_samples=args.eval_samples,
        seed=args.seed,
        hierarchy_roots=0 if args.no_hierarchy else d["hierarchy_roots"],
        correlation_rank=0 if args.no_correlation else d["correlation_rank"],
    )

    def wanted(name: str) -> bool:
        return args.only is None or any(w.lower() in name.lower() for w in args.only)

    res = run_bench(cfg, wanted, log=lambda row: print(json.dumps(row), flush=True))
    print(
        f"\n{date.today()} · {platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads · "
        f"SynthSAEBench (sae_lens.synthetic): {cfg.num_features} features in {cfg.hidden_dim} dims, Zipf firing "
        f"{cfg.max_prob:g}..{cfg.min_prob:g}, hierarchy {cfg.hierarchy_roots} roots × {cfg.hierarchy_branching} "
        f"(depth {cfg.hierarchy_depth}), low-rank correlation rank {cfg.correlation_rank}; true L0 "
        f"{res['true_l0']:.2f}; every SAE: d_sae = {cfg.d_sae}, k = {res['k']}, lr {cfg.lr:g}, the same "
        f"{cfg.training_samples:,} samples in the same order; scored on {cfg.eval_samples:,} fresh samples\n"
    )
    print("| variant | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for r in res["rows"]:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        print(f"| {r['variant']} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
