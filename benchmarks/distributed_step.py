"""Milliseconds per SAE training step in each distributed layout, through the public trainer.

    torchrun --standalone --nproc_per_node 8 benchmarks/distributed_step.py --device cuda \\
        --d-in 768 --d-sae 24576 --k 32 --batch 4096
    python benchmarks/distributed_step.py ...          # one process: the baseline

Each case trains on in-memory random activations for n1 and for n2 steps and reports the median
over three repeats of (t2 − t1)/(n2 − n1), after one warm-up run, so set-up and initialisation
cancel out. Rank 0
prints one line per (layout, rule) with ms/step, tokens/s over all ranks and peak memory per
rank. Two processes on one GPU, or gloo on a laptop's cores, are not a speed test: they show
what the layouts cost in communication, not what W GPUs gain.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

from workbench.activations import ActivationStore, TensorSource
from workbench.sae import SAEConfig, SAETrainConfig, train_sae
from workbench.sae.parallel import init_from_env


def timed(sae_cfg: SAEConfig, train: SAETrainConfig, data: torch.Tensor, rank: int, world: int) -> float:
    store = ActivationStore(TensorSource(data), train.batch_size, rank=rank, world_size=world)
    if train.device.startswith("cuda"):
        torch.cuda.synchronize()
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    train_sae(sae_cfg, train, store, progress=False)
    if train.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=64)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1024, help="global batch (tokens per step, all ranks)")
    ap.add_argument("--steps", type=int, nargs=2, default=(5, 25), help="n1 n2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rules", nargs="+", default=["topk", "mutual_choice"])
    args = ap.parse_args()
    rank, local_rank, world = init_from_env()
    device = f"cuda:{local_rank}" if args.device == "cuda" else args.device
    n1, n2 = args.steps
    data = torch.randn(n2 * args.batch, args.d_in, generator=torch.Generator().manual_seed(0))
    layouts = ["data", "latent"] if world > 1 else ["data"]
    if rank == 0:
        print(
            f"{world} process(es), device {device}"
            f"{' ' + torch.cuda.get_device_name(device) if device.startswith('cuda') else ''}; "
            f"d_in={args.d_in} d_sae={args.d_sae} k={args.k} global batch={args.batch}"
        )
        print(f"{'layout':8} {'rule':14} {'ms/step':>9} {'tokens/s':>12} {'peak MiB/rank':>14}")
    for layout in layouts:
        for rule in args.rules:
            sae_cfg = SAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, selection=rule)
            cfgs = [
                SAETrainConfig(
                    total_tokens=n * args.batch,
                    batch_size=args.batch,
                    device=device,
                    parallel=layout,
                    warmup_steps=1,
                    log_every=10**9,
                    b_dec_init="zeros",
                )
                for n in (n1, n2)
            ]
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            timed(sae_cfg, cfgs[0], data, rank, world)  # warm-up: allocator, thread pools, kernels
            ms = sorted(
                (timed(sae_cfg, cfgs[1], data, rank, world) - timed(sae_cfg, cfgs[0], data, rank, world))
                / (n2 - n1)
                * 1e3
                for _ in range(3)
            )[1]  # median of three
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else float("nan")
            if rank == 0:
                name = layout if world > 1 else "single"
                print(f"{name:8} {rule:14} {ms:9.2f} {args.batch / ms * 1e3:12,.0f} {peak:14.0f}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
