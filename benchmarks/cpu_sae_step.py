"""Time full SAE training steps on the CPU: ours (sparse and dense torch paths) vs SAELens'
TopKTrainingSAE and sparsify's SparseCoder (eager decoder), in one process, rounds interleaved.

A step = forward + backward + Adam (ours also: decoder-gradient projection, clipping and
renormalisation; sparsify: its projection and renormalisation), AuxK on with 10% of latents dead.
Prints median ms/step, tokens/s, each step's peak RSS above the RSS before it, the ratio to each
peer and to the floor (encoder GEMM + one torch.topk over it + Adam over both matrices, measured
in the same rounds), and each selection rule's own row on the sparse path.

    python benchmarks/cpu_sae_step.py                 # both shapes of issue 15 (~1-2 min on 2 cores)
    python benchmarks/cpu_sae_step.py --quick         # toy shape, a few rounds (seconds)
    python benchmarks/cpu_sae_step.py --rounds 1      # one round per shape: the order of magnitude
    python benchmarks/cpu_sae_step.py --train-sae     # train_sae end to end on the demo's SAE, dense vs sparse
Peers: `pip install -e .[bench]` brings eai-sparsify; SAELens is a dependency.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # before sparsify is imported: its eager decoder

import torch  # noqa: E402
from topk_sae_step import saelens  # noqa: E402  (the same SAELens step as the GPU benchmark, without autocast)

from workbench.activations import ActivationStore, TensorSource  # noqa: E402
from workbench.sae import SAEConfig, SAETrainConfig, SparseAutoencoder, train_sae  # noqa: E402
from workbench.sae.losses import fvu  # noqa: E402
from workbench.sae.trainer import make_optimizer, optimizer_step, sae_losses  # noqa: E402
from workbench.tasks import SuperpositionConfig, superposition_data  # noqa: E402

SHAPES = [(128, 2048, 16, 4096), (512, 8192, 32, 2048)]  # d, F, k, B (issue 15)
QUICK = [(32, 512, 8, 1024)]
RULES = ("topk", "gradient", "mutual_choice", "feature_choice")


def ours(d, F, k, x, g, rule="topk", sparse=True):
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=F, k=k, selection=rule, dead_tokens=10**12)).train()
    sae.tokens_since_fired[: F // 10] = 10**12  # 10% dead, for good (stats are not updated here)
    cfg = SAETrainConfig(batch_size=len(x), sparse=sparse)
    opt = make_optimizer(sae, cfg)

    def step():
        res = sae_losses(sae, x, g, sparse=sparse)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        optimizer_step(sae, opt, cfg, 100)

    return step


def sparsify(d, F, k, x):
    from sparsify import SaeConfig, SparseCoder

    sae = SparseCoder(d, SaeConfig(num_latents=F, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    dead = torch.zeros(F, dtype=torch.bool)
    dead[: F // 10] = True

    def step():
        out = sae(x, dead_mask=dead)
        opt.zero_grad(set_to_none=True)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()

    return step


def floor_parts(d, F, k, x):
    """The floor's three pieces: they are timed like the candidates."""
    W = torch.randn(F, d) / d**0.5
    b = torch.zeros(F)
    mats = [torch.randn(F, d, requires_grad=True), torch.randn(F, d, requires_grad=True)]
    adam = torch.optim.Adam(mats, fused=True)  # the fastest Adam torch has on the CPU (ours uses it too)
    for p in mats:
        p.grad = torch.randn_like(p)
    return {
        "floor: encoder GEMM": lambda: torch.addmm(b, x, W.T),
        "floor: GEMM + topk": lambda: torch.topk(torch.addmm(b, x, W.T), k, dim=1, sorted=False),
        "floor: Adam (W_enc, W_dec)": adam.step,
    }


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def step_peak_mib(fn) -> float:
    """Peak RSS during one call above the RSS before it (Linux: clear_refs 5 resets the peak).
    Memory the allocator kept from earlier steps is reused and not counted: a lower bound."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def measure(cands: dict, rounds: int, per_round: int) -> dict[str, tuple[float, float]]:
    """{name: (median ms, peak MiB)}; every round runs each candidate `per_round` times in turn."""
    times = {name: [] for name in cands}
    peaks = {}
    for name, fn in cands.items():
        fn()  # warm-up (first-call allocations, lazy imports)
        peaks[name] = step_peak_mib(fn)
    for _ in range(rounds):
        for name, fn in cands.items():
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1e3)
    return {name: (statistics.median(ts), peaks[name]) for name, ts in times.items()}


def bench_shape(d, F, k, B, rounds, per_round, peers=True):
    torch.manual_seed(0)
    x, g = torch.randn(B, d), torch.randn(B, d)
    cands = {
        "workbench sparse (topk)": ours(d, F, k, x, None),
        "workbench dense (topk, today)": ours(d, F, k, x, None, sparse=False),
    }
    for rule in RULES[1:]:
        cands[f"workbench sparse ({rule})"] = ours(d, F, k, x, g if rule == "gradient" else None, rule)
    if peers:
        cands["SAELens TopKTrainingSAE"] = saelens(d, F, k, x, autocast=False)
        try:
            cands["sparsify SparseCoder (eager)"] = sparsify(d, F, k, x)
        except ImportError:
            print("sparsify not installed (pip install -e .[bench]): its row is left out")
    cands.update(floor_parts(d, F, k, x))
    res = measure(cands, rounds, per_round)
    floor = res["floor: GEMM + topk"][0] + res["floor: Adam (W_enc, W_dec)"][0]
    mine = res["workbench sparse (topk)"][0]
    print(
        f"\n### {d} -> {F}, k {k}, B {B} (median of {rounds}x{per_round} steps; floor = GEMM + topk + Adam "
        f"= {floor:.1f} ms)\n"
    )
    print("| step | ms/step | tokens/s | step peak RSS (MiB) | ours' tokens/s ÷ its | ÷ floor |")
    print("|---|---|---|---|---|---|")
    for name, (ms, peak) in res.items():
        ratio = f"{ms / mine:.2f}x" if not name.startswith("floor") else ""
        print(f"| {name} | {ms:.1f} | {B / ms * 1e3:,.0f} | {peak:.0f} | {ratio} | {ms / floor:.2f}x |")
    topk = mine
    rules = {r: res[f"workbench sparse ({r})"][0] / topk for r in RULES[1:]}
    print("\nrule step ÷ topk step: " + ", ".join(f"{r} {v:.2f}x" for r, v in rules.items()))
    return res, floor


def bench_train_sae(steps: int = 128, batch: int = 4096) -> None:
    """train_sae on the demo's SAE shape (128 -> 2048, k 16) from a synthetic store: dense vs sparse."""
    syn = SuperpositionConfig(d=128, n_features=4096, mean_active=12.0, seed=0)
    data = superposition_data(syn, steps * batch // 4 + 20_000)  # the store cycles its chunks
    held_out = data.acts[-20_000:]
    print(f"\n### train_sae, 128 -> 2048, k 16, {steps} steps of {batch} tokens (synthetic superposition data)\n")
    print("| path | seconds | steps/s | held-out FVU |")
    print("|---|---|---|---|")
    results = {}
    for sparse in (False, True):
        store = ActivationStore(TensorSource(data.acts[:-20_000], None, chunk_size=65_536), batch, seed=0)
        cfg = SAEConfig(d_in=128, d_sae=2048, k=16)
        train = SAETrainConfig(total_tokens=steps * batch, batch_size=batch, lr=6e-3, sparse=sparse)
        t = time.perf_counter()
        sae = train_sae(cfg, train, store, progress=False)
        secs = time.perf_counter() - t
        with torch.no_grad():
            f = fvu(held_out, sae(held_out).x_hat).item()
        results[sparse] = (secs, f)
        print(f"| {'sparse' if sparse else 'dense (today)'} | {secs:.1f} | {steps / secs:.2f} | {f:.4f} |")
    (td, fd), (ts, fs) = results[False], results[True]
    print(f"\nsparse is {td / ts:.2f}x faster; FVU {100 * (fs - fd) / fd:+.2f}% relative to dense")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy shape, few rounds")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--no-peers", action="store_true", help="ours and the floor only")
    ap.add_argument("--train-sae", action="store_true", help="time train_sae end to end instead")
    ap.add_argument("--train-steps", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{date.today()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores, "
        f"{args.threads} threads · torch {torch.__version__}"
    )
    if args.train_sae:
        bench_train_sae(args.train_steps)
        return
    shapes = QUICK if args.quick else SHAPES
    rounds = args.rounds or (3 if args.quick else 5)
    for d, F, k, B in shapes:
        bench_shape(d, F, k, B, rounds, per_round=2, peers=not args.no_peers)


if __name__ == "__main__":
    main()
