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
    best = max(((l, h) for l in range(len(hd["retrieval"])) for h in range(len(hd["retrieval"][0]))),
               key=lambda lh: hd["retrieval"][lh[0]][lh[1]])
    print(f"**Head roles** (needle copy accuracy {hd['copy_accuracy']:.2f}): {labels.count('retrieval')} retrieval, "
          f"{labels.count('streaming')} streaming, {labels.count('other')} other of {len(labels)} heads; "
          f"top retrieval head L{best[0]}H{best[1]} (score {hd['retrieval'][best[0]][best[1]]:.2f}, copy-loss "
          f"increase under sink+window {hd['delta_loss'][best[0]][best[1]]:+.3f} nats; TransformerLens induction "
          f"score {hd['tl_scores']['induction'][best[0]][best[1]]:.2f}).\n")
    print("**Arrow of time**:", "; ".join(
        f"{k}: forward {v['loss_forward']:.4f}, backward {v['loss_backward']:.4f} nats/token, gap "
        f"{100 * v['gap']:+.2f}% (95% CI {100 * v['gap_ci95'][0]:+.2f} to {100 * v['gap_ci95'][1]:+.2f})"
        for k, v in ar["gaps"].items()))


if __name__ == "__main__":
    main()
