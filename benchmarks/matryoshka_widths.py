"""Widths 512 / 2048 / 8192 on the default model: prefixes of ONE Matryoshka SAE against SEPARATE SAEs.

    python benchmarks/matryoshka_widths.py [--tokens 1048576] [--seeds 2] [--widths 512 2048 8192]
    python benchmarks/matryoshka_widths.py --quick      # toy sizes (a minute)

Per training seed: one TopK SAE of F = the largest width with the nested loss at fixed prefixes
(matryoshka "fixed", the smaller widths), and one plain TopK SAE per width, all on the same
activations of the default model's blocks.1.hook_resid_post in the same order (the store's seed is
the training seed), the same k, steps, batch and lr. The seed sets initialisation and batch order,
the largest source of variance; the activations and the evaluation sets are fixed.

Each width is scored as an SAE of its own: the Matryoshka prefix as `matryoshka.prefix_sae` (TopK
re-selects k latents inside the prefix, so every row has L0 = k), the separate SAE as trained.
Columns: FVU and dead % on held-out activations; the absorption-style mean full-absorption rate and
absorption fraction (probing.absorption, SAEBench's first-letter rule); sparse probing mean test
accuracy at k = 1 and 5 (probing.sparse_probing, byte-level concepts); and, for the prefixes, the
FVU and L0 of the prefix as training reconstructs it (the whole SAE's top k, cut at the width).
Each figure is the mean over seeds with [min, max].
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

from workbench.activations import ActivationBatch, ActivationStore, TensorSource
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from workbench.sae.evaluate import reconstruction_metrics
from workbench.sae.matryoshka import prefix_sae
from workbench.sae.probing import ABSORPTION_CAVEAT, ProbingConfig, evaluate_usefulness

HOOK = "blocks.1.hook_resid_post"


def collect(model, stream, n_tokens: int, seed: int) -> torch.Tensor:
    from workbench.activations import ModelSource, StoreConfig

    cfg = StoreConfig(HOOK, buffer_tokens=65_536, seed=seed)
    src = ModelSource(model, stream, cfg, bos_token_id=256)
    return torch.cat([src.chunk(i).acts for i in range(-(-n_tokens // cfg.buffer_tokens))])[:n_tokens]


def train(acts, F: int, k: int, batch: int, lr: float, seed: int, widths: tuple[int, ...] = ()) -> SparseAutoencoder:
    nest = dict(matryoshka="fixed", matryoshka_widths=widths) if widths else {}
    cfg = SAEConfig(d_in=acts.shape[1], d_sae=F, k=k, hook_name=HOOK, dead_tokens=200_000, **nest)
    tc = SAETrainConfig(total_tokens=len(acts) // batch * batch, batch_size=batch, lr=lr, seed=seed, log_every=10**9)
    return train_sae(cfg, tc, ActivationStore(TensorSource(acts), batch, seed=seed), progress=False)


@torch.no_grad()
def masked_prefix(sae: SparseAutoencoder, eval_acts: torch.Tensor, width: int) -> tuple[float, float]:
    """(FVU, L0) of the prefix as the nested loss sees it: the whole SAE's code, latents ≥ width zeroed."""
    err = l0 = 0.0
    for x in eval_acts.split(4096):
        z = sae.encode(x)[:, :width]
        err += float((x - z @ sae.W_dec[:width] - sae.b_dec).pow(2).sum())
        l0 += float((z > 0).sum())
    var = float((eval_acts - eval_acts.mean(0)).pow(2).sum())
    return err / var, l0 / len(eval_acts)


def score(sae, model, eval_acts, probe_tokens, probing: ProbingConfig) -> dict:
    rec = reconstruction_metrics(sae, [ActivationBatch(x, None) for x in eval_acts.split(4096)])
    use = evaluate_usefulness(model, sae, HOOK, probe_tokens, probing)
    acc = use.sparse_probing.mean_accuracy()
    return {
        "fvu": rec["fvu"],
        "l0": rec["l0"],
        "dead_pct": 100 * rec["dead_frac"],
        "absorption": use.absorption.mean_full_absorption(),
        "absorption_fraction": use.absorption.mean_absorption_fraction(),
        "probe_k1": acc[1],
        "probe_k5": acc[5],
        "probe_llm": use.sparse_probing.mean_llm_accuracy(),
    }


def fmt(vals: list[float], digits: int = 3) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} [{min(vals):.{digits}f}, {max(vals):.{digits}f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1_048_576, help="training tokens per SAE (whole batches)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--lr", type=float, default=4e-3, help="one lr for every SAE")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--eval-tokens", type=int, default=32_768)
    ap.add_argument("--probe-windows", type=int, default=128, help="128-byte windows for probing/absorption")
    ap.add_argument("--quick", action="store_true", help="toy sizes: 64/128/256 latents, 65k tokens, 1 seed")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.widths, args.seeds, args.eval_tokens, args.probe_windows = 65_536, [64, 128, 256], 1, 8192, 32
    widths = tuple(sorted(args.widths))
    from workbench.corpus import windows
    from workbench.hub import load_default
    from workbench.models import default_data

    t_start = time.perf_counter()
    torch.manual_seed(0)
    model, data = load_default("forward"), default_data()
    acts = collect(model, data.train, args.tokens, seed=0)
    eval_acts = collect(model, data.validation, args.eval_tokens, seed=1)
    probe_tokens = windows(data.validation, 128, bos_token_id=256, n=args.probe_windows)
    probing = ProbingConfig()
    rows: dict[tuple[str, int], list[dict]] = {}
    times: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        mat = train(acts, widths[-1], args.k, args.batch, args.lr, seed, widths[:-1])
        times.setdefault("matryoshka", []).append(time.perf_counter() - t0)
        for m in widths:
            s = score(prefix_sae(mat, m) if m < widths[-1] else mat, model, eval_acts, probe_tokens, probing)
            s["masked_fvu"], s["masked_l0"] = masked_prefix(mat, eval_acts, m)
            rows.setdefault(("Matryoshka prefix", m), []).append(s)
            t0 = time.perf_counter()
            sep = train(acts, m, args.k, args.batch, args.lr, seed)
            times.setdefault(f"separate {m}", []).append(time.perf_counter() - t0)
            rows.setdefault(("separate SAE", m), []).append(score(sep, model, eval_acts, probe_tokens, probing))
        print(f"seed {seed} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    steps = args.tokens // args.batch
    print(
        f"\n{date.today()} · {platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads · "
        f"torch {torch.__version__} · workbench-tiny {HOOK}\n"
        f"Budget per SAE: {steps} steps × {args.batch} = {steps * args.batch:,} training tokens (the same "
        f"activations for every SAE, ordered by the seed), TopK k = {args.k}, lr {args.lr:g} for every SAE, "
        f"AuxK; the Matryoshka SAE: d_sae {widths[-1]}, matryoshka fixed at {list(widths[:-1])} (+ {widths[-1]}). "
        f"{args.seeds} training seeds; mean [min, max] over seeds.\n"
        f"FVU/L0/dead on {len(eval_acts):,} held-out activations; probing and absorption on "
        f"{args.probe_windows} held-out 128-byte windows ({ABSORPTION_CAVEAT}).\n"
    )
    print(
        "| width | dictionary | FVU | dead % | absorption-style (full rate) | absorption fraction | "
        "sparse probe k=1 | k=5 | FVU as trained (prefix cut) | L0 as trained |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in widths:
        for kind in ("Matryoshka prefix", "separate SAE"):
            ss = rows[(kind, m)]
            col = lambda key, d=3: fmt([s[key] for s in ss], d)  # noqa: E731
            masked = (col("masked_fvu", 4), col("masked_l0", 2)) if "masked_fvu" in ss[0] else ("–", "–")
            print(
                f"| {m} | {kind} | {col('fvu', 4)} | {col('dead_pct', 1)} | {col('absorption')} | "
                f"{col('absorption_fraction')} | {col('probe_k1')} | {col('probe_k5')} | {masked[0]} | {masked[1]} |"
            )
    print(
        f"\nprobe on the raw activation (all dims): {fmt([s['probe_llm'] for s in rows[('separate SAE', widths[0])]])}"
    )
    print("training seconds per SAE: " + ", ".join(f"{k} {fmt(v, 0)}" for k, v in times.items()))
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
