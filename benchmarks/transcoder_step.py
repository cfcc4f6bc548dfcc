"""Transcoder training steps on the CPU: ours (sparse torch path) vs sparsify's SparseCoder with
transcode=True (eager decoder), per-layer and skip, 128 -> 2048, k 16, on the default model's
MLP (x = blocks.1.ln2.hook_normalized, the MLP's input; y = blocks.1.hook_mlp_out).

Two parts, one process:
- speed: a step = forward + backward + Adam (ours also decoder-gradient projection, clipping
  and renormalisation), AuxK on with 10% of latents dead; median ms over interleaved rounds
  (cpu_sae_step.measure), tokens/s and ours ÷ sparsify.
- quality: each trains `--steps` steps of B tokens from the same batches (no dead latents, no
  aux loss: both are then plain TopK transcoders) at each lr of `--lrs`; held-out FVU of y at
  each one's best lr (the two parametrise differently: our decoder rows are unit-norm, the
  latent values carry the scale; sparsify's transcoder decoder starts at 0 and is free).

    python benchmarks/transcoder_step.py              # ~3-5 min on 2 cores
    python benchmarks/transcoder_step.py --quick      # small, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # before sparsify is imported: its eager decoder
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from cpu_sae_step import measure  # noqa: E402

from workbench.activations import ModelSource, StoreConfig  # noqa: E402
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder  # noqa: E402
from workbench.sae.losses import fvu  # noqa: E402
from workbench.sae.trainer import make_optimizer, optimizer_step, sae_losses, update_stats  # noqa: E402

HOOK, TARGET = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def mlp_data(tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (the MLP's input) and y (its output) of the default model over `tokens` tokens."""
    from workbench.hub import load_default
    from workbench.token_data import default_data

    model = load_default("forward")
    data = default_data()
    cfg = StoreConfig(HOOK, buffer_tokens=tokens, seq_len=model.cfg.n_ctx - 1, target_hook=TARGET, seed=seed)
    chunk = ModelSource(model, data.train, cfg, data.tokenizer.bos_token_id).chunk(0)
    return chunk.acts, chunk.targets


def ours(d, F, k, skip, lr, dead_frac=0.1, aux="auxk"):
    cfg = SAEConfig(d_in=d, d_sae=F, k=k, transcoder=True, skip=skip, aux=aux, dead_tokens=10**12)
    sae = SparseAutoencoder(cfg).train()
    if dead_frac:
        sae.tokens_since_fired[: int(F * dead_frac)] = 10**12  # dead for good (stats not updated)
    train = SAETrainConfig(batch_size=4096, lr=lr, warmup_steps=1, grad_clip=1e9)
    opt = make_optimizer(sae, train)

    def step(x, y):
        res = sae_losses(sae, x, None, sparse=True, y=y)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        optimizer_step(sae, opt, train, 100)
        if not dead_frac:
            update_stats(sae, res)

    return sae, step


def sparsify(d, F, k, skip, lr, dead_frac=0.1):
    from sparsify import SparseCoder, TranscoderConfig

    sae = SparseCoder(d, TranscoderConfig(num_latents=F, k=k, skip_connection=skip))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    dead = None
    if dead_frac:
        dead = torch.zeros(F, dtype=torch.bool)
        dead[: int(F * dead_frac)] = True

    def step(x, y):
        out = sae(x, y, dead_mask=dead)
        opt.zero_grad(set_to_none=True)
        (out.fvu + out.auxk_loss / 32).backward()
        opt.step()  # sparsify neither projects nor renormalises a transcoder's decoder

    return sae, step


def held_out_fvu(name: str, sae, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        if name == "workbench":
            return float(fvu(y, sae.eval()(x).x_hat))
        return float(sae(x, y).fvu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shape and few steps")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300, help="training steps for the FVU comparison")
    ap.add_argument("--lr", type=float, default=1e-3, help="the speed part's lr")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3], help="the quality part's lr sweep")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, F, k, B = (128, 2048, 16, 4096) if not args.quick else (128, 512, 8, 1024)
    steps = args.steps if not args.quick else 20
    print(
        f"{date.today()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores, "
        f"{args.threads} threads · torch {torch.__version__}"
    )
    t = time.perf_counter()
    x_all, y_all = mlp_data(B * 16 + 8192)
    print(f"cached {len(x_all)} tokens of {HOOK} -> {TARGET} in {time.perf_counter() - t:.1f} s")
    x_held, y_held = x_all[-8192:], y_all[-8192:]
    x_train, y_train = x_all[:-8192], y_all[:-8192]
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    x_train, y_train = x_train[perm], y_train[perm]
    try:
        import sparsify as _  # noqa: F401

        peers = True
    except ImportError:
        print("sparsify not installed (pip install eai-sparsify): its rows are left out")
        peers = False

    x, y = x_train[:B], y_train[:B]
    print(f"\n### speed: {d} -> {F}, k {k}, B {B}, AuxK with 10% dead (median of {args.rounds}x2 steps)\n")
    print("| step | ms/step | tokens/s | ours ÷ sparsify (tokens/s) |")
    print("|---|---|---|---|")
    for skip in (False, True):
        kind = "skip transcoder" if skip else "per-layer transcoder"
        cands = {f"workbench sparse, {kind}": ours(d, F, k, skip, args.lr)[1]}
        if peers:
            cands[f"sparsify transcode=True, {kind}"] = sparsify(d, F, k, skip, args.lr)[1]
        res = measure({n: (lambda s=s: s(x, y)) for n, s in cands.items()}, args.rounds, 2)
        mine = res[f"workbench sparse, {kind}"][0]
        for name, (ms, _peak) in res.items():
            ratio = f"{ms / mine:.2f}x" if name.startswith("sparsify") else ""
            print(f"| {name} | {ms:.1f} | {B / ms * 1e3:,.0f} | {ratio} |")

    print(f"\n### quality: {steps} steps of {B} tokens (same batches, no aux), held-out FVU of y\n")
    lrs = " / ".join(f"{lr:g}" for lr in args.lrs)
    print(f"| transcoder | workbench FVU (lr {lrs}) | sparsify FVU (lr {lrs}) | best ÷ best |")
    print("|---|---|---|---|")
    for skip in (False, True):
        got = {}
        makers = {"workbench": lambda lr: ours(d, F, k, skip, lr, 0.0, "none")}
        if peers:
            makers["sparsify"] = lambda lr: sparsify(d, F, k, skip, lr, 0.0)
        for name, make in makers.items():
            for lr in args.lrs:
                torch.manual_seed(0)
                sae, step = make(lr)
                for i in range(steps):
                    j = (i * B) % (len(x_train) - B + 1)
                    step(x_train[j : j + B], y_train[j : j + B])
                got.setdefault(name, []).append(held_out_fvu(name, sae, x_held, y_held))
        mine, theirs = got["workbench"], got.get("sparsify", [float("nan")])
        rel = (min(mine) - min(theirs)) / min(theirs)
        kind = "skip" if skip else "per-layer"
        show = lambda fs: " / ".join(f"{f:.4f}" for f in fs)  # noqa: E731
        print(f"| {kind} | {show(mine)} | {show(theirs)} | {100 * rel:+.1f}% |")


if __name__ == "__main__":
    main()
