"""Whole-run overhead of the training-health monitor (workbench/sae/health.py) over no monitor.

train_sae end to end on planted superposition data (the sparse CPU path), once without a monitor
and once with HealthMonitor at its defaults (a report every 100 steps), runs interleaved and
repeated; prints each run's seconds, the median of each arm and the overhead (target: < 3%).

    python benchmarks/health_overhead.py             # 128 -> 2048, k 16, batch 4096, 300 steps, 3 rounds
    python benchmarks/health_overhead.py --quick     # toy shape (seconds)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.sae import SAEConfig, SAETrainConfig, train_sae
from workbench.sae.health import HealthConfig, HealthMonitor
from workbench.tasks import SuperpositionConfig, superposition_data


def one_run(data, d: int, F: int, k: int, batch: int, steps: int, monitor) -> float:
    store = ActivationStore(TensorSource(data.acts, None, chunk_size=len(data.acts) // 2), batch, seed=0)
    cfg = SAEConfig(d_in=d, d_sae=F, k=k, dead_tokens=10 * batch * steps)
    train = SAETrainConfig(total_tokens=steps * batch, batch_size=batch, log_every=10)
    t0 = time.perf_counter()
    train_sae(cfg, train, store, progress=False, monitor=monitor)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="toy shape, one round")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--every", type=int, default=HealthConfig.every, help="HealthConfig.every")
    args = ap.parse_args()
    d, F, k, batch = (32, 512, 8, 1024) if args.quick else (128, 2048, 16, 4096)
    steps, rounds = (60, 1) if args.quick else (args.steps, args.rounds)
    data = superposition_data(SuperpositionConfig(d=d, n_features=F // 2, mean_active=k / 2, noise=0.01), 400_000)
    print(
        f"{d} -> {F}, k {k}, batch {batch}, {steps} steps; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    one_run(data, d, F, k, batch, min(steps, 20), None)  # warm-up: allocator, first GEMMs
    times: dict[str, list[float]] = {"none": [], "health": []}
    for r in range(rounds):
        for arm in ("none", "health") if r % 2 == 0 else ("health", "none"):
            monitor = HealthMonitor(HealthConfig(every=args.every)) if arm == "health" else None
            times[arm].append(one_run(data, d, F, k, batch, steps, monitor))
            print(f"  round {r}: {arm:6s} {times[arm][-1]:.2f} s")
    base, mon = statistics.median(times["none"]), statistics.median(times["health"])
    print(f"median: none {base:.2f} s, health {mon:.2f} s ({base / steps * 1e3:.1f} ms/step without)")
    print(f"health monitor overhead over the whole run: {100 * (mon / base - 1):+.2f}% (target < 3%)")


if __name__ == "__main__":
    main()
