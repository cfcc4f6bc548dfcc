"""Train every SAE variant on the same activations of the default model and print one table.

Same activations in the same order, same token budget, same k, same dictionary size, same seed,
for: TopK, g-SAE, Mutual Choice, Feature Choice (uniform and Zipf capacities, with aux_zipf),
and SAELens' own TopK trainer (its SAETrainer and TopKTrainingSAE, default settings otherwise).
Columns: FVU and mean L0 on held-out text, dead % (no firing on 65k held-out tokens), CE loss
recovered (vs zero ablation) and KL with the SAE spliced in, MMCS on the synthetic
superposition set (a separate short run per variant), and training tokens/s on this machine.

    python benchmarks/sae_variants.py [--tokens 1000000] [--json out.json] [--only Zipf SAELens]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import torch

from workbench.activations import ActivationStore, ModelSource, StoreConfig, TensorSource
from workbench.corpus import windows
from workbench.models import default_data, load_default
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae
from workbench.sae.evaluate import reconstruction_metrics, splice_metrics
from workbench.tasks import SuperpositionConfig, mmcs, superposition_data

HOOK = "blocks.1.hook_resid_post"
VARIANTS = {
    "TopK + AuxK": dict(selection="topk", aux="auxk"),
    "g-SAE + AuxK": dict(selection="gradient", aux="auxk"),  # β set from the data below
    "Mutual Choice + AuxK": dict(selection="mutual_choice", aux="auxk"),
    "Feature Choice (uniform) + AuxK": dict(selection="feature_choice", aux="auxk"),
    "Feature Choice (Zipf) + aux_zipf": dict(selection="feature_choice", fc_capacity="zipf", aux="aux_zipf"),
}


def collect(model, stream, n_tokens: int, with_grads: bool, seed: int):
    cfg = StoreConfig(HOOK, buffer_tokens=65_536, with_grads=with_grads, seed=seed)
    src = ModelSource(model, stream, cfg, bos_token_id=256)
    chunks = [src.chunk(i) for i in range(-(-n_tokens // cfg.buffer_tokens))]
    acts = torch.cat([c.acts for c in chunks])[:n_tokens]
    grads = torch.cat([c.grads for c in chunks])[:n_tokens] if with_grads else None
    return acts, grads


def synthetic_mmcs(kwargs: dict) -> float:
    syn = SuperpositionConfig()
    data = superposition_data(syn, 200_000)
    store = ActivationStore(TensorSource(data.acts, data.grads, chunk_size=50_000), 1024)
    cfg = SAEConfig(d_in=syn.d, d_sae=192, k=4, dead_tokens=20_000, **kwargs)
    sae = train_sae(cfg, SAETrainConfig(total_tokens=200 * 1024, batch_size=1024, lr=4e-3, warmup_steps=20),
                    store, progress=False)
    return mmcs(sae.W_dec.detach(), data.features)


def train_saelens_topk(acts, d_sae: int, k: int, train: SAETrainConfig) -> tuple[SparseAutoencoder, float]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(train.seed)
    lens = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, k=k))
    store = ActivationStore(TensorSource(acts), train.batch_size, seed=0)
    cfg = SAETrainerConfig(total_training_samples=train.steps * train.batch_size,
                           train_batch_size_samples=train.batch_size, lr=train.learning_rate(d_sae),
                           lr_end=train.learning_rate(d_sae) / 10, lr_warm_up_steps=train.warmup_steps, device="cpu",
                           logger=LoggingConfig(log_to_wandb=False))
    t0 = time.perf_counter()
    SAETrainer(cfg, lens, data_provider=(b.acts for b in store)).fit()
    elapsed = time.perf_counter() - t0
    # SAELens' TopK rescales by decoder norms by default: fold them into our unit-norm form
    ours = SparseAutoencoder(SAEConfig(d_in=acts.shape[1], d_sae=d_sae, k=k, hook_name=HOOK))
    with torch.no_grad():
        norms = lens.W_dec.norm(dim=1).clamp_min(1e-12)
        ours.W_enc.copy_(lens.W_enc.T * norms[:, None])
        ours.b_enc.copy_(lens.b_enc * norms)
        ours.W_dec.copy_(lens.W_dec / norms[:, None])
        ours.b_dec.copy_(lens.b_dec)
    return ours.eval(), elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_048_576)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--lr", type=float, default=None, help="Adam lr for every row; default 2e-4/sqrt(d_sae/16384)")
    ap.add_argument("--only", nargs="+", default=None, help="rows whose name contains one of these words")
    args = ap.parse_args()

    def wanted(name: str) -> bool:
        return args.only is None or any(w.lower() in name.lower() for w in args.only)

    torch.manual_seed(0)
    model, data = load_default("forward"), default_data()
    print(f"collecting {args.tokens} activations (+ loss gradients) at {HOOK} ...", flush=True)
    acts, grads = collect(model, data.train, args.tokens, with_grads=True, seed=0)
    val_acts, _ = collect(model, data.validation, 65_536, with_grads=False, seed=1)
    val_tokens = windows(data.validation, 128, bos_token_id=256, n=96)
    train = SAETrainConfig(total_tokens=args.tokens, batch_size=4096, log_every=10_000, lr=args.lr)
    rows = []

    def evaluate(name, sae, seconds, syn):
        val_store = ActivationStore(TensorSource(val_acts), 4096)
        rec = reconstruction_metrics(sae, [next(val_store) for _ in range(16)])
        spl = splice_metrics(model, sae, HOOK, val_tokens)
        row = {"variant": name, "fvu": rec["fvu"], "l0": rec["l0"], "dead_pct": 100 * rec["dead_frac"],
               "ce_loss_recovered": spl["ce_loss_recovered"], "kl": spl["kl_sae"], "ce_sae": spl["ce_sae"],
               "mmcs_synthetic": syn, "tokens_per_s": args.tokens / seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)

    # β so that β·|<g, w>| is 1 on average for a random unit direction w: the loss term then
    # weighs as much as the activation itself (with β=1 summed-loss gradients barely register)
    beta = float(acts.shape[1] ** 0.5 / grads.norm(dim=1).mean())
    print(f"g-SAE beta = {beta:.3g}")
    for name, kwargs in VARIANTS.items():
        if not wanted(name):
            continue
        if kwargs["selection"] == "gradient":
            kwargs = {**kwargs, "beta": beta}
        cfg = SAEConfig(d_in=acts.shape[1], d_sae=args.d_sae, k=args.k, hook_name=HOOK,
                        dead_tokens=200_000, **kwargs)
        store = ActivationStore(TensorSource(acts, grads), train.batch_size, seed=0)
        t0 = time.perf_counter()
        sae = train_sae(cfg, train, store, progress=False)
        evaluate(name, sae, time.perf_counter() - t0, synthetic_mmcs({**kwargs, "beta": 1.0}))
    if wanted("SAELens TopKTrainingSAE (its trainer)"):
        sae, seconds = train_saelens_topk(acts, args.d_sae, args.k, train)
        evaluate("SAELens TopKTrainingSAE (its trainer)", sae, seconds, float("nan"))

    print(f"\n{date.today()} · {platform.processor() or platform.machine()} CPU, "
          f"{torch.get_num_threads()} threads · torch {torch.__version__} · {args.tokens:,} tokens, "
          f"d_sae={args.d_sae}, k={args.k}, lr {train.learning_rate(args.d_sae):.2g}, hook {HOOK}, "
          f"g-SAE β={beta:.3g}\n")
    print("| variant | FVU | mean L0 | dead % | CE loss recovered | KL | MMCS (synthetic) | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['fvu']:.4f} | {r['l0']:.2f} | {r['dead_pct']:.1f} | "
              f"{r['ce_loss_recovered']:.4f} | {r['kl']:.4f} | {r['mmcs_synthetic']:.3f} | {r['tokens_per_s']:,.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
