"""Peak memory of `feature_table` at a wide SAE: 768 -> 24,576 TopK (k = 32) on 16 windows of 64
tokens of a random-init 1-layer HookedTransformer with d_model 768 (nothing is downloaded).

    flock /tmp/heavy.lock timeout 600 .venv/bin/python benchmarks/feature_table_memory.py

Prints the process's resident memory just before the call, the peak increase during it (two ways:
ru_maxrss minus the RSS before, an upper bound since ru_maxrss also covers the set-up; and the
largest RSS a 5 ms sampler thread saw, a lower bound), and the call's wall time. The previous
implementation (an F x F float64 correlation matrix and every activation kept) raised the peak by
18,949 MiB on this shape."""

from __future__ import annotations

import argparse
import gc
import os
import resource
import threading
import time

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.sae.config import SAEConfig
from workbench.sae.evaluate import feature_table
from workbench.sae.model import SparseAutoencoder

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-sae", type=int, default=24_576)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument(
        "--warm",
        action="store_true",
        help="run the model once before measuring, so torch's "
        "one-time buffers (thread pools, the first forward's allocations) are not counted",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=args.d_in,
        n_heads=12,
        d_head=args.d_in // 12,
        d_mlp=4 * args.d_in,
        n_ctx=args.seq,
        d_vocab=512,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
        device="cpu",
    )
    model = HookedTransformer(cfg).eval()
    hook = "blocks.0.hook_resid_post"
    sae = SparseAutoencoder(SAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, hook_name=hook), seed=0)
    tokens = torch.randint(0, cfg.d_vocab, (args.windows, args.seq), generator=torch.Generator().manual_seed(0))
    if args.warm:
        with torch.no_grad():
            model.run_with_cache(tokens, names_filter=hook)
            sae.encode(torch.randn(args.windows * args.seq, args.d_in))
    gc.collect()
    before = rss_mib()
    seen, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(rss_mib())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    table = feature_table(model, sae, hook, tokens)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    alive = int((table.density > 0).sum())
    print(
        f"feature_table {args.d_in} -> {args.d_sae} (k={args.k}) over {args.windows} x {args.seq} tokens: "
        f"{seconds:.1f} s, {alive} features fired, correlations over {int(table.corr_tokens)} tokens"
    )
    print(f"RSS before the call: {before:,.0f} MiB")
    print(
        f"peak RSS increase: {peak_mib() - before:,.0f} MiB (ru_maxrss, upper bound); "
        f"{max(seen) - before:,.0f} MiB (sampled, lower bound)"
    )


if __name__ == "__main__":
    main()
