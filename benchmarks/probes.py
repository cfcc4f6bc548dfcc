"""Run the three probes on the default models (via the demo runs, built if missing) and print a
short markdown report for benchmarks/RESULTS.md; then the head-role methods of issue 21
(DuoAttention gates, RazorAttention's rule, the KV-cache trade-off, the rankings' agreement, the head
scores over the shipped training checkpoints) on the default model, timed,
with their results saved to benchmarks/results/head_methods.json.

    python benchmarks/probes.py [--runs DIR] [--only probes|heads]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from workbench.demo import build_demo, default_demo_dir
from workbench.results import read_results

RESULTS = Path(__file__).parent / "results" / "head_methods.json"
DUO_SEEDS = (0, 1, 2)  # the gates' spread over context draws is the verdict's uncertainty


def head_methods() -> dict:
    """Duo gates (3 seeds), Razor scores, Wu's head roles and the trade-off curve (without and with
    the compensation token) on workbench-tiny, each timed; prints a markdown summary."""
    from workbench.models import load_model
    from workbench.probes.duo import DuoConfig, duo_gates
    from workbench.probes.head_agreement import ranking_agreement
    from workbench.probes.heads import HeadRoleConfig, head_roles
    from workbench.probes.heads_over_training import shipped_heads_over_training
    from workbench.probes.kv_tradeoff import TradeoffConfig, standard_rankings, tradeoff_curve
    from workbench.probes.razor import RazorConfig, razor_scores

    model, tok = load_model("workbench-tiny")
    bos, timing = tok.bos_token_id, {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        timing[name] = time.perf_counter() - start
        return out

    duos = [timed(f"duo_seed{s}", lambda s=s: duo_gates(model, DuoConfig(seed=s), progress=False)) for s in DUO_SEEDS]
    razor = timed("razor", lambda: razor_scores(model, RazorConfig(), bos=bos))
    roles = timed("head_roles", lambda: head_roles(model, HeadRoleConfig(), bos=bos))
    rankings = standard_rankings(roles, duos[0], razor)
    plain = timed("tradeoff", lambda: tradeoff_curve(model, rankings, TradeoffConfig(), progress=False))
    comp = timed(
        "tradeoff_compensation",
        lambda: tradeoff_curve(model, rankings, TradeoffConfig(compensation=True), progress=False),
    )
    agreement = timed(  # the causal check is the reference the rankings are compared with
        "agreement",
        lambda: ranking_agreement(
            {k: v for k, v in rankings.items() if k != "causal_delta_loss"}, causal=roles.delta_loss
        ),
    )
    over = timed("over_training", lambda: shipped_heads_over_training(progress=False))
    out = {
        "date": str(date.today()),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "model": "workbench-tiny",
        "timing_s": timing,
        "duo": [d.to_dict() for d in duos],
        "razor": razor.to_dict(),
        "roles": roles.to_dict(),
        "tradeoff": plain.to_dict(),
        "tradeoff_compensation": comp.to_dict(),
        "agreement": agreement.to_dict(),
        "over_training": over.to_dict(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print_head_methods(out)
    print_agreement_and_over_training(out)
    return out


def print_head_methods(out: dict) -> None:
    from workbench.probes.kv_tradeoff import TradeoffResult

    t = out["timing_s"]
    alphas = torch.tensor([d["alphas"] for d in out["duo"]])  # [seeds, L, H]
    L, H = alphas.shape[1:]
    cfg = out["duo"][0]["config"]
    print(
        f"\n**Head methods** ({out['date']} · {out['machine']} · {out['model']}; sink {cfg['sink']} + window "
        f"{cfg['window']}, passkey contexts of {cfg['passkey']['seq_len']} tokens)\n"
    )
    print(
        f"DuoAttention gates ({cfg['steps']} Adam steps, lr {cfg['lr']}, λ {cfg['lam']}, distance "
        f"{cfg['distance']}): {t['duo_seed0']:.1f} s per run; α per head, seed 0 [min, max over seeds "
        f"{', '.join(map(str, DUO_SEEDS))}]:\n"
    )
    print("| layer | " + " | ".join(f"H{h}" for h in range(H)) + " |\n|---|" + "---|" * H)
    for layer in range(L):
        a = alphas[:, layer]
        print(
            f"| {layer} | "
            + " | ".join(f"{a[0, h]:.2f} [{a[:, h].min():.2f}, {a[:, h].max():.2f}]" for h in range(H))
            + " |"
        )
    rz = out["razor"]
    fmt = lambda m: "; ".join(f"L{i}: " + " ".join(f"{v:.2f}" for v in row) for i, row in enumerate(m))  # noqa: E731
    prot = [f"L{i}H{h}" for i in range(L) for h in range(H) if rz["protected"][i][h]]
    print(
        f"\nRazorAttention ({t['razor']:.2f} s): induction {fmt(rz['induction'])}; echo {fmt(rz['echo'])}; "
        f"protected (top {rz['n_induction_protected']} by induction ∪ top {rz['n_echo_protected']} by echo): "
        f"{', '.join(prot)}.\n"
    )
    for key, label in (("tradeoff", "sink + window"), ("tradeoff_compensation", "sink + window + compensation token")):
        res = TradeoffResult.from_dict(out[key])
        print(
            f"KV-cache trade-off, streaming heads on {label} ({t[key]:.1f} s; needle copy accuracy, "
            f"T = {res.seq_len}; random band = min-max of {len(res.random_curves)} random rankings):\n"
        )
        print(
            "| ranking | "
            + " | ".join(f"{p:g}% full (KV {kv:.2f})" for p, kv in zip(res.fractions, res.kv_fraction))
            + " | beats random at 25%? |\n|---|"
            + "---|" * (len(res.fractions) + 1)
        )
        for name, c in res.curves.items():
            print(
                f"| {name} | "
                + " | ".join(f"{v:.3f}" for v in c["needle_acc"])
                + f" | {'yes' if res.beats_random(name, 'needle_acc', 25) else 'no'} |"
            )
        b = res.random_band["needle_acc"]
        print(
            "| random mean [min, max] | "
            + " | ".join(f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(b["mean"], b["min"], b["max"]))
            + " | |"
        )
        i = res.fractions.index(25)
        print(
            f"\nAt 25% heads full (KV {res.kv_fraction[i]:.2f}): passkey answer-token accuracy "
            + ", ".join(f"{n} {c['passkey_token_acc'][i]:.3f}" for n, c in res.curves.items())
            + f" (random {res.random_band['passkey_token_acc']['min'][i]:.3f}-"
            f"{res.random_band['passkey_token_acc']['max'][i]:.3f}; all full "
            f"{res.random_band['passkey_token_acc']['mean'][-1]:.3f}); text loss "
            + ", ".join(f"{n} {c['text_loss'][i]:.3f}" for n, c in res.curves.items())
            + f" (random {res.random_band['text_loss']['min'][i]:.3f}-{res.random_band['text_loss']['max'][i]:.3f};"
            f" all full {res.random_band['text_loss']['mean'][-1]:.3f}, all streaming "
            f"{res.random_band['text_loss']['mean'][0]:.3f} nats).\n"
        )


def print_agreement_and_over_training(out: dict) -> None:
    ag, ov, t = out["agreement"], out["over_training"], out["timing_s"]
    ci = lambda c: f"[{c[0]:+.2f}, {c[1]:+.2f}]" if c else "n/a"  # noqa: E731
    print(f"Rank agreement over {ag['n_heads']} heads ({ag['method']}); each ranking against the causal check:\n")
    print("| ranking | rho | 95% interval | p |\n|---|---|---|---|")
    for name, c in ag["causal"].items():
        rho = "n/a" if c["rho"] is None else f"{c['rho']:+.2f}"
        p = "n/a" if c["p_value"] is None else f"{c['p_value']:.3f}"
        print(f"| {name} | {rho} | {ci(c['ci'])} | {p} |")
    names = ag["names"]
    pairs = [
        f"{a} vs {b} {ag['rho'][i][j]:+.2f} {ci(ag['ci'][i][j])}"
        for i, a in enumerate(names)
        for j, b in enumerate(names)
        if i < j and ag["rho"][i][j] is not None
    ]
    print("\nBetween rankings: " + "; ".join(pairs) + ".\n")
    print(
        f"Heads over training ({t['over_training']:.1f} s, {len(ov['steps'])} checkpoints; "
        f"loss: {ov['loss_source']}):\n"
    )
    print("| step | copy accuracy | top TL induction | layer-1 labels | loss |\n|---|---|---|---|---|")
    for i, step in enumerate(ov["steps"]):
        top = max(v for row in ov["induction"][i] for v in row)
        labels = ", ".join(sorted(set(ov["labels"][i][-1])))
        loss = "n/a" if ov["loss"][i] is None else f"{ov['loss'][i]:.3f}"
        print(f"| {step} | {ov['copy_accuracy'][i]:.3f} | {top:.2f} | {labels} | {loss} |")
    print(f"\nFormed (previous checkpoint, first step it holds to the end): {ov['formed']}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=None)
    ap.add_argument(
        "--only",
        choices=("probes", "heads"),
        default=None,
        help="only the demo probes' report, or only the head methods",
    )
    args = ap.parse_args()
    if args.only != "probes":
        head_methods()
    if args.only == "heads":
        return
    print_probes(build_demo(Path(args.runs) if args.runs else default_demo_dir()))


def print_probes(root: Path) -> None:
    """The demo probes' markdown report from a demo folder's typed results."""
    sp, hd, ar = (read_results(root / n) for n in ("probe-sparsity", "probe-heads", "probe-arrow"))
    sp, hd, ar = sp.to_dict(), hd.roles.to_dict(), ar.to_dict()
    print(
        f"\n{date.today()} · {platform.machine()} CPU, {torch.get_num_threads()} threads · workbench-tiny "
        f"(2 layers, d_model 128, d_mlp 512, ReLU)\n"
    )
    final, over = sp["final"], sp["over_training"]
    print(
        "**Activation sparsity** (fraction of MLP neurons > 0 per token, held-out text):",
        ", ".join(
            f"layer {i}: {100 * a:.1f}% ± {100 * s:.1f}"
            for i, (a, s) in enumerate(zip(final["active_frac"], final["active_frac_std"]))
        ),
        f"; never-firing neurons {final['never_firing']} of {len(final['neuron_freq'][0])}.",
    )
    print(
        "Over training (step: % active per layer):",
        "; ".join(
            f"{s}: " + "/".join(f"{100 * a:.1f}" for a in fr) for s, fr in zip(over["steps"], over["active_frac"])
        ),
    )
    tk = sp["topk"]
    print(
        "Top-k on every MLP layer, loss increase (nats):",
        ", ".join(f"k={k}: {d:+.3f}" for k, d in zip(tk["ks"], tk["delta"])),
        "\n",
    )
    labels = [lab for row in hd["labels"] for lab in row]
    L, H = len(hd["retrieval"]), len(hd["retrieval"][0])
    best = max(((i, h) for i in range(L) for h in range(H)), key=lambda lh: hd["retrieval"][lh[0]][lh[1]])
    ci = hd.get("retrieval_ci", [[[float("nan")] * 2] * H] * L)[best[0]][best[1]]
    counts = ", ".join(f"{labels.count(lab)} {lab}" for lab in dict.fromkeys(labels))
    few = (
        f" **Too few copied steps to label retrieval** ({hd['n_copied']} < {hd['config']['min_copied_steps']})."
        if hd.get("too_few_copied")
        else ""
    )
    print(
        f"**Head roles** (needle copy accuracy {hd['copy_accuracy']:.2f}, {hd.get('n_copied', '?')} of "
        f"{hd.get('n_copy_steps', '?')} copy steps; labels on the 95% lower bounds): {counts} of {len(labels)} "
        f"heads;{few} top retrieval head L{best[0]}H{best[1]} (score {hd['retrieval'][best[0]][best[1]]:.2f}, "
        f"Wilson 95% [{ci[0]:.2f}, {ci[1]:.2f}], copy-loss increase under sink+window "
        f"{hd['delta_loss'][best[0]][best[1]]:+.3f} nats; TransformerLens induction score "
        f"{hd['tl_scores']['induction'][best[0]][best[1]]:.2f}).\n"
    )
    pct = lambda c: f"[{100 * c[0]:+.2f}%, {100 * c[1]:+.2f}%]"  # noqa: E731
    print("**Arrow of time** (gap = (L_backward − L_forward) / L_forward on the same held-out windows):\n")
    print(
        "| data | verdict | per-seed gaps | mean | seed-level 95% CI | same-direction null max | "
        "window-level 95% CI |\n|---|---|---|---|---|---|---|"
    )
    for k, v in ar["datasets"].items():
        seeds = ", ".join(f"{s}: {100 * g:+.2f}%" for s, g in zip(v["seeds"], v["gaps"]))
        print(
            f"| {k} | {v['verdict']} | {seeds} | {100 * v['gap']:+.2f}% | {pct(v['gap_ci_seeds'])} | "
            f"{100 * v['null_max']:.2f}% | {pct(v['gap_ci_windows'])} |"
        )


if __name__ == "__main__":
    main()
