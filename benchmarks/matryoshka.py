"""Matryoshka SAEs: what the nested loss costs per step, and what it buys against absorption.

    python benchmarks/matryoshka.py --step         # step time, nested ÷ plain, ours beside SAELens' (2 threads)
    python benchmarks/matryoshka.py --absorption   # planted tree: absorption per edge, 3 rules × nesting × 3 seeds
    python benchmarks/matryoshka.py --quick ...    # toy sizes (seconds)

--step: one training step (forward, backward, Adam; ours also the decoder projection, clipping
and renormalisation) at 128 -> 2048, k 16, B 4096, AuxK on with 10% of latents dead, for each
rule plain and nested (matryoshka "fixed" at widths 128/256/512/1024 and "expected"), beside
SAELens' BatchTopKTrainingSAE and MatryoshkaBatchTopKTrainingSAE with the same widths, all
interleaved in the same rounds (cpu_sae_step.measure).

--absorption: workbench.sae.planted's tree (8 parents × 4 mutually exclusive children, 24
independent features, orthonormal in 64 dims); TopK, Mutual Choice and Feature Choice SAEs of 64
latents at k = 4 (the data's mean L0 is 4.1), with and without the nested loss, the same samples,
steps and lr; scored on fresh samples (planted.edge_scores); mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date

import torch
from cpu_sae_step import measure

from workbench.activations import ActivationStore, TensorSource
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from workbench.sae.matryoshka import prefix_weights
from workbench.sae.planted import PlantedTreeConfig, edge_scores, planted_tree, sample
from workbench.sae.trainer import make_optimizer, optimizer_step, sae_losses

RULES = ("topk", "gradient", "mutual_choice", "feature_choice")
WIDTHS = (128, 256, 512, 1024)  # the fixed prefixes at F = 2048 (F itself is the last)


# --- step time ------------------------------------------------------------------------------


def ours(d, F, k, x, g, rule, nesting):
    extra = dict(matryoshka="fixed", matryoshka_widths=tuple(m for m in WIDTHS if m < F)) if nesting == "fixed" else {}
    if nesting == "expected":
        extra = dict(matryoshka="expected", matryoshka_prefixes=4)
    cfg = SAEConfig(d_in=d, d_sae=F, k=k, selection=rule, dead_tokens=10**12, **extra)
    sae = SparseAutoencoder(cfg).train()
    sae.tokens_since_fired[: F // 10] = 10**12  # 10% dead, for good
    train = SAETrainConfig(batch_size=len(x), sparse=True)
    opt = make_optimizer(sae, train)
    nest = prefix_weights(cfg, 0, 0)

    def step():
        res = sae_losses(sae, x, g, sparse=True, nest=nest)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        optimizer_step(sae, opt, train, 100)

    return step


def saelens(d, F, k, x, nested):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import TrainStepInput

    if nested:
        widths = [m for m in WIDTHS if m < F] + [F]
        sae = MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(d_in=d, d_sae=F, k=k, matryoshka_widths=widths)
        )
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=F, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    dead = torch.zeros(F, dtype=torch.bool)
    dead[: F // 10] = True

    def step():
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=100, is_logging_step=False
            )
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def bench_step(d, F, k, B, rounds, rules):
    torch.manual_seed(0)
    x, g = torch.randn(B, d), torch.randn(B, d)
    cands = {}
    for rule in rules:
        for nesting in ("none", "fixed", "expected"):
            cands[f"{rule} {nesting}"] = ours(d, F, k, x, g if rule == "gradient" else None, rule, nesting)
    cands["SAELens BatchTopK"] = saelens(d, F, k, x, nested=False)
    cands["SAELens Matryoshka-BatchTopK"] = saelens(d, F, k, x, nested=True)
    res = measure(cands, rounds, per_round=2)
    print(f"\n### step time, {d} -> {F}, k {k}, B {B}, AuxK on (median of {rounds}x2 steps)\n")
    print("| step | ms/step | ÷ its plain step |")
    print("|---|---|---|")
    for name, (ms, _) in res.items():
        base = "SAELens BatchTopK" if name.startswith("SAELens") else name.rsplit(" ", 1)[0] + " none"
        print(f"| {name} | {ms:.1f} | {ms / res[base][0]:.2f}x |")


# --- absorption on the planted tree -----------------------------------------------------------


def train_planted(tree_cfg, tree, rule, nesting, seed, steps, batch, lr):
    data = sample(tree_cfg, tree, steps * batch, seed=10_000 + seed)
    store = ActivationStore(TensorSource(data.acts, None, chunk_size=min(len(data.acts), 65_536)), batch, seed=seed)
    extra = {"none": {}, "fixed": dict(matryoshka="fixed", matryoshka_widths=(8, 16, 32))}.get(nesting)
    if extra is None:
        extra = dict(matryoshka=nesting, matryoshka_prefixes=4)
    cfg = SAEConfig(d_in=tree_cfg.d, d_sae=tree_cfg.n_features, k=4, selection=rule, dead_tokens=20 * batch, **extra)
    train = SAETrainConfig(total_tokens=steps * batch, batch_size=batch, lr=lr, warmup_steps=50, seed=seed)
    return train_sae(cfg, train, store, progress=False)


def bench_absorption(seeds, steps, batch, lr, nestings, rules):
    tree_cfg0 = PlantedTreeConfig()
    print(
        f"\n### planted tree: {tree_cfg0.n_parents} parents × {tree_cfg0.n_children} exclusive children + "
        f"{tree_cfg0.n_other} others in {tree_cfg0.d} dims (mean L0 {tree_cfg0.mean_l0:.2f}); SAEs of "
        f"{tree_cfg0.n_features} latents, k 4, {steps} steps × {batch}, lr {lr}; {len(seeds)} seeds\n"
    )
    rows = {}
    t0 = time.perf_counter()
    for seed in seeds:
        tree_cfg = PlantedTreeConfig(seed=seed)
        tree = planted_tree(tree_cfg)
        held = sample(tree_cfg, tree, 20_000, seed=99_999 + seed)
        for rule in rules:
            for nesting in nestings:
                sae = train_planted(tree_cfg, tree, rule, nesting, seed, steps, batch, lr)
                s = edge_scores(sae, tree, held)
                rows.setdefault((rule, nesting), []).append(s)
    print("| rule | nested loss | absorption | parent leak cos | child's share of parent | FVU | L0 |")
    print("|---|---|---|---|---|---|---|")

    def ms(vals):
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.3f}"

    for (rule, nesting), ss in rows.items():
        print(
            f"| {rule} | {nesting} | {ms([float(s.absorption.mean()) for s in ss])} | "
            f"{ms([float(s.leak.mean()) for s in ss])} | {ms([float(s.child_share.mean()) for s in ss])} | "
            f"{ms([s.fvu for s in ss])} | {ms([s.l0 for s in ss])} |"
        )
    print("\nper edge e (parent e // 4, its child e % 4): absorption / parent leak cos, mean over seeds\n")
    cols = list(rows)
    print("| edge | " + " | ".join(f"{r} {n}" for r, n in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for e in range(len(rows[cols[0]][0].absorption)):
        cells = []
        for key in cols:
            ab = statistics.mean(float(s.absorption[e]) for s in rows[key])
            lk = statistics.mean(float(s.leak[e]) for s in rows[key])
            cells.append(f"{ab:.2f} / {lk:+.2f}")
        print(f"| {e} | " + " | ".join(cells) + " |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step", action="store_true")
    ap.add_argument("--absorption", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--nestings", nargs="+", default=["none", "expected", "fixed"])
    ap.add_argument("--rules", nargs="+", default=["topk", "mutual_choice", "feature_choice"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{date.today()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores, "
        f"{args.threads} threads · torch {torch.__version__}"
    )
    if args.step:
        shape = (32, 512, 8, 1024) if args.quick else (128, 2048, 16, 4096)
        bench_step(*shape, rounds=2 if args.quick else args.rounds, rules=RULES)
    if args.absorption:
        steps = 200 if args.quick else args.steps
        bench_absorption(list(range(args.seeds)), steps, args.batch, args.lr, args.nestings, args.rules)


if __name__ == "__main__":
    main()
