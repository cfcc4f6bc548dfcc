"""Measure the embedded default against issue 13's targets and print markdown for RESULTS.md.

    python benchmarks/default_model.py [--root data/workbench-tiny] [--seeds 0 1 2]

Per model (seed × direction): held-out loss, copy accuracy on [BOS, r, r] with r 40 random
printable bytes, the best TransformerLens induction score, the head-role probe's needle copy
accuracy, its retrieval and streaming heads with their causal check; and for seed 0 forward, the
share of active MLP neurons and the copy accuracy at every shipped checkpoint.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import torch

from workbench import default_model as dm
from workbench.corpus import windows
from workbench.models import DEFAULT_TRAIN, default_data, evaluate_lm, load_model_file
from workbench.probes.heads import HeadRoleConfig, head_roles, tl_detector_scores
from workbench.probes.sparsity import activation_sparsity

BOS = 256


@torch.no_grad()
def repeat_copy(model, n: int = 48, length: int = 40, seed: int = 0) -> tuple[float, float]:
    """Copy accuracy on the second r of [BOS, r, r] (r printable bytes), and the best head's
    TransformerLens induction score on the same sequences."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(32, 127, (n, length), generator=gen)
    toks = torch.cat([torch.full((n, 1), BOS), r, r], dim=1)
    pred = model(toks).argmax(-1)[:, length + 1 : -1]  # predictions of r[1:] in the second copy
    acc = float((pred == toks[:, length + 2 :]).float().mean())
    induction = tl_detector_scores(model, toks[:8])["induction"]
    return acc, float(induction.max())


def describe(model, direction: str, data) -> dict:
    acc, ind = repeat_copy(model)
    roles = head_roles(model, HeadRoleConfig(), bos=BOS).to_dict()
    loss = evaluate_lm(model, data, direction, 128, DEFAULT_TRAIN.seq_len)
    return {"loss": loss, "repeat_copy": acc, "induction": ind, "roles": roles}


def head_line(roles: dict) -> str:
    out = []
    for l, row in enumerate(roles["labels"]):
        for h, lab in enumerate(row):
            if lab in ("retrieval", "streaming"):
                out.append(
                    f"L{l}H{h} {lab[:4]}. (ret {roles['retrieval'][l][h]:.2f}, str "
                    f"{roles['streaming'][l][h]:.2f}, Δloss {roles['delta_loss'][l][h]:+.2f})"
                )
    return "; ".join(out) or "none"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=None, help="a folder in the shipped layout (default: data/workbench-tiny)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(dm.DEFAULT_SEEDS))
    ap.add_argument("--checkpoints", action="store_true", help="also follow seed 0 forward over its checkpoints")
    args = ap.parse_args()
    root = Path(args.root) if args.root else dm.shipped_dir()
    torch.set_num_threads(1)
    data, t0 = default_data(), time.time()
    val = windows(data.validation, DEFAULT_TRAIN.seq_len, bos_token_id=BOS, n=64)
    print(f"\n{date.today()} · {platform.machine()} CPU · {root}\n")
    print(
        "| model | held-out nats/byte | [BOS,r,r] copy acc | best induction | needle copy acc | "
        "% MLP active (L0/L1) | retrieval / streaming heads |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for direction in ("forward", "backward"):
            folder = dm.run_dir(seed, direction, root)
            model = load_model_file(folder / "model.safetensors", dm.DEFAULT_MODEL)
            d = describe(model, direction, data)
            sp = activation_sparsity(model, val).active_frac
            print(
                f"| seed {seed} {direction} | {d['loss']:.3f} | {d['repeat_copy']:.3f} | {d['induction']:.2f} | "
                f"{d['roles']['copy_accuracy']:.2f} | {100 * sp[0]:.1f} / {100 * sp[1]:.1f} | "
                f"{head_line(d['roles'])} |",
                flush=True,
            )
    if args.checkpoints:
        folder = dm.run_dir(0, "forward", root)
        print(
            "\nSeed 0 forward over training:\n\n| step | % MLP active (L0/L1) | [BOS,r,r] copy acc | best induction |"
        )
        print("|---|---|---|---|")
        for path in sorted((folder / "checkpoints").glob("step_*.safetensors")) + [folder / "model.safetensors"]:
            model = load_model_file(path, dm.DEFAULT_MODEL)
            step = path.stem.split("_")[1] if "step_" in path.stem else "final"
            sp = activation_sparsity(model, val).active_frac
            acc, ind = repeat_copy(model)
            print(f"| {step} | {100 * sp[0]:.1f} / {100 * sp[1]:.1f} | {acc:.3f} | {ind:.2f} |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
