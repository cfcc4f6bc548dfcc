"""Run the three probes on the default models (via the demo runs, built if missing) and print a
short markdown report for benchmarks/RESULTS.md.

    python benchmarks/probes.py [--runs DIR]
"""

from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

import torch

from workbench.demo import build_demo, default_demo_dir
from workbench.runs import RunDir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=None)
    args = ap.parse_args()
    root = build_demo(Path(args.runs) if args.runs else default_demo_dir())
    read = lambda name: RunDir(root / name).read_results()  # noqa: E731
    sp, hd, ar = read("probe-sparsity"), read("probe-heads"), read("probe-arrow")
    print(f"\n{date.today()} · {platform.machine()} CPU, {torch.get_num_threads()} threads · workbench-tiny "
          f"(2 layers, d_model 128, d_mlp 512, ReLU)\n")
    final, over = sp["final"], sp["over_training"]
    print("**Activation sparsity** (fraction of MLP neurons > 0 per token, held-out text):",
          ", ".join(f"layer {l}: {100 * a:.1f}% ± {100 * s:.1f}" for l, (a, s) in
                    enumerate(zip(final["active_frac"], final["active_frac_std"]))),
          f"; never-firing neurons {final['never_firing']} of {len(final['neuron_freq'][0])}.")
    print("Over training (step: % active per layer):",
          "; ".join(f"{s}: " + "/".join(f"{100 * a:.1f}" for a in fr) for s, fr in zip(over["steps"], over["active_frac"])))
    tk = sp["topk"]
    print("Top-k on every MLP layer, loss increase (nats):",
          ", ".join(f"k={k}: {d:+.3f}" for k, d in zip(tk["ks"], tk["delta"])), "\n")
    labels = [lab for row in hd["labels"] for lab in row]
    L, H = len(hd["retrieval"]), len(hd["retrieval"][0])
    best = max(((l, h) for l in range(L) for h in range(H)), key=lambda lh: hd["retrieval"][lh[0]][lh[1]])
    ci = hd.get("retrieval_ci", [[[float("nan")] * 2] * H] * L)[best[0]][best[1]]
    counts = ", ".join(f"{labels.count(lab)} {lab}" for lab in dict.fromkeys(labels))
    few = (f" **Too few copied steps to label retrieval** ({hd['n_copied']} < "
           f"{hd['config']['min_copied_steps']})." if hd.get("too_few_copied") else "")
    print(f"**Head roles** (needle copy accuracy {hd['copy_accuracy']:.2f}, {hd.get('n_copied', '?')} of "
          f"{hd.get('n_copy_steps', '?')} copy steps; labels on the 95% lower bounds): {counts} of {len(labels)} "
          f"heads;{few} top retrieval head L{best[0]}H{best[1]} (score {hd['retrieval'][best[0]][best[1]]:.2f}, "
          f"Wilson 95% [{ci[0]:.2f}, {ci[1]:.2f}], copy-loss increase under sink+window "
          f"{hd['delta_loss'][best[0]][best[1]]:+.3f} nats; TransformerLens induction score "
          f"{hd['tl_scores']['induction'][best[0]][best[1]]:.2f}).\n")
    pct = lambda c: f"[{100 * c[0]:+.2f}%, {100 * c[1]:+.2f}%]"  # noqa: E731
    if "datasets" not in ar:
        print("**Arrow of time** (one seed, window-level interval only, no verdict):", "; ".join(
            f"{k}: gap {100 * v['gap']:+.2f}% {pct(v['gap_ci95'])}" for k, v in ar["gaps"].items()))
        return
    print("**Arrow of time** (gap = (L_backward − L_forward) / L_forward on the same held-out windows):\n")
    print("| data | verdict | per-seed gaps | mean | seed-level 95% CI | same-direction null max | "
          "window-level 95% CI |\n|---|---|---|---|---|---|---|")
    for k, v in ar["datasets"].items():
        seeds = ", ".join(f"{s}: {100 * g:+.2f}%" for s, g in zip(v["seeds"], v["gaps"]))
        print(f"| {k} | {v['verdict']} | {seeds} | {100 * v['gap']:+.2f}% | {pct(v['gap_ci_seeds'])} | "
              f"{100 * v['null_max']:.2f}% | {pct(v['gap_ci_windows'])} |")

if __name__ == "__main__":
    main()
