"""Where one KV-cache trade-off evaluation's time goes on SmolLM2-135M-Instruct (issue 28: the
trade-off at 99 random rankings misses its hour; this is its profile).

    python benchmarks/tradeoff_profile.py [--threads 2] [--batch 16] [--seq-len 256]

One evaluation is one forward pass over the passkey batch with a random 25% of the 90 KV heads full
and the rest sink 4 + window 32 (`attention_restrict.keep_full_hooks`), without and with
RazorAttention's compensation token, beside the plain forward; torch.profiler's self CPU time per op.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from workbench.hub import load_model
    from workbench.probes.attention_restrict import keep_full_hooks
    from workbench.probes.gqa import expand_kv, kv_heads
    from workbench.probes.kv_tradeoff import n_full_heads

    model, _ = load_model("smollm2-135m-instruct-q4")
    L, H, G = model.cfg.n_layers, model.cfg.n_heads, kv_heads(model)
    gen = torch.Generator().manual_seed(0)
    kv = torch.zeros(L * G, dtype=torch.bool)
    kv[torch.randperm(L * G, generator=gen)[: n_full_heads(25, L * G)]] = True
    keep = expand_kv(kv.view(L, G), H)
    x = torch.randint(100, 40_000, (args.batch, args.seq_len), generator=gen)
    n = x.numel()
    print(f"torch threads {torch.get_num_threads()}; {args.batch} x {args.seq_len} = {n} tokens per forward")
    runs = {"plain": [], "restricted": keep_full_hooks(model, keep, 4, 32)}
    runs["restricted + compensation"] = keep_full_hooks(model, keep, 4, 32, compensation=True)
    print("| forward | seconds | tokens/s | top ops by self CPU time |")
    print("|---|---|---|---|")
    for name, hooks in runs.items():
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(x)  # warm-up at the timed size, so that its allocations are not timed
            start = time.perf_counter()
            model(x)
            secs = time.perf_counter() - start
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]
        shares = ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in top)
        print(f"| {name} | {secs:.2f} s | {n / secs:.0f} tokens/s | {shares} |")


if __name__ == "__main__":
    main()
