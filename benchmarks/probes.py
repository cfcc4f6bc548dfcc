"""Run the three probes on the default models (via the demo runs, built if missing) and print a
short markdown report for benchmarks/RESULTS.md; then the head-role methods of issue 21
(DuoAttention gates, RazorAttention's rule, the KV-cache trade-off, the rankings' agreement, the head
scores over the shipped training checkpoints) on the default model, timed,
with their results saved to benchmarks/results/head_methods.json.

Both read the demo's own recipes (`workbench.demo.demo_recipes`, the list the demo builds and the
widgets show): the report each probe run's folder, the head methods the heads recipe's configs
(with the seeds, the DuoAttention steps and the random rankings of the command line).

    python benchmarks/probes.py [--runs DIR] [--only probes|heads] [--seeds 5] [--n-random 99] [--duo-steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from workbench.demo import Recipe, build_demo, default_demo_dir, demo_recipes
from workbench.results import read_results

RESULTS = Path(__file__).parent / "results" / "head_methods.json"
REPORTED = ("sparsity", "heads", "arrow")  # the probe kinds the report covers (the SAE has its own benchmarks)
SEEDS = (0, 1, 2, 3, 4)  # context seeds: every ranking (gates included) and evaluation re-drawn per seed


def head_methods(seeds: tuple[int, ...] = SEEDS, n_random: int = 99, duo_steps: int = 300) -> dict:
    """Per context seed: Duo gates, Razor scores and Wu's head roles; then the trade-off curve
    (without and with the compensation token) with every point's p-value against random picks on
    seed 0's contexts and a t interval over the seeds' own rankings and contexts, and the rankings'
    agreement with its interval over seeds; each timed; prints a markdown summary. The configs are
    the demo heads recipe's, with these seeds, steps and random rankings."""
    from workbench.hub import load_model
    from workbench.probes.duo import duo_gates
    from workbench.probes.head_agreement import agreement_over_seeds, ranking_agreement
    from workbench.probes.head_rankings import head_rankings
    from workbench.probes.heads import head_roles
    from workbench.probes.heads_over_training import shipped_heads_over_training
    from workbench.probes.kv_tradeoff import tradeoff_curve
    from workbench.probes.razor import razor_scores

    recipe = demo_runs()["heads"].config
    seeded = dataclasses.replace
    model, tok = load_model("workbench-tiny")
    bos, timing = tok.bos_token_id, {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        timing[name] = time.perf_counter() - start
        return out

    duo_cfgs = {s: seeded(recipe.duo, seed=s, steps=duo_steps) for s in seeds}
    duos = [timed(f"duo_seed{s}", lambda s=s: duo_gates(model, duo_cfgs[s], progress=False)) for s in seeds]
    razors = [
        timed(f"razor_seed{s}", lambda s=s: razor_scores(model, seeded(recipe.razor, seed=s), bos=bos)) for s in seeds
    ]
    roles = [
        timed(f"roles_seed{s}", lambda s=s: head_roles(model, seeded(recipe.role_config(), seed=s), bos=bos))
        for s in seeds
    ]
    rankings = {s: head_rankings(r, d, z) for s, r, d, z in zip(seeds, roles, duos, razors)}
    extra = {s: r for s, r in rankings.items() if s != seeds[0]}
    tradeoffs = {}
    for key, comp in (("tradeoff", False), ("tradeoff_compensation", True)):
        cfg = seeded(
            recipe.tradeoff, compensation=comp, n_random=n_random, seed=seeds[0], context_seeds=tuple(seeds[1:])
        )
        tradeoffs[key] = timed(
            key,
            lambda cfg=cfg: tradeoff_curve(model, rankings[seeds[0]], cfg, seed_rankings=extra, progress=False),
        )
    agreement = timed(  # the causal check is the reference the rankings are compared with
        "agreement",
        lambda: agreement_over_seeds(
            [
                ranking_agreement(head_rankings(r, d, z, causal=False), causal=r.delta_loss)
                for r, d, z in zip(roles, duos, razors)
            ],
            list(seeds),
        ),
    )
    over = timed("over_training", lambda: shipped_heads_over_training(progress=False))
    out = {
        "date": str(date.today()),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "model": "workbench-tiny",
        "seeds": list(seeds),
        "timing_s": timing,
        "duo": [d.to_dict() for d in duos],
        "razor": [z.to_dict() for z in razors],
        "roles": [r.to_dict() for r in roles],
        **{k: v.to_dict() for k, v in tradeoffs.items()},
        "agreement": agreement.to_dict(),
        "over_training": over.to_dict(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print_head_methods(out)
    print_agreement_and_over_training(out)
    return out


def demo_runs(root: Path | None = None) -> dict[str, Recipe]:
    """The demo's recipes by kind (`root`: the demo folder; default: the workbench home's)."""
    return {r.kind: r for r in demo_recipes(root=root)}


def _p(p) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def print_head_methods(out: dict) -> None:
    from workbench.figures.kv_tradeoff import share_label
    from workbench.probes.head_rankings import label, tied_heads
    from workbench.probes.kv_tradeoff import TradeoffResult

    t = out["timing_s"]
    seeds = out.get("seeds", [0])
    alphas = torch.tensor([d["alphas"] for d in out["duo"]])  # [seeds, L, H]
    L, H = alphas.shape[1:]
    cfg = out["duo"][0]["config"]
    duo_s = [t[f"duo_seed{s}"] for s in seeds]
    print(
        f"\n**Head methods** ({out['date']} · {out['machine']} · {out['model']}; sink {cfg['sink']} + window "
        f"{cfg['window']}, passkey contexts of {cfg['passkey']['seq_len']} tokens; context seeds "
        f"{', '.join(map(str, seeds))})\n"
    )
    tied = tied_heads(out["duo"][0]["alphas"])
    print(
        f"DuoAttention gates ({cfg['steps']} Adam steps, lr {cfg['lr']}, λ {cfg['lam']}, distance "
        f"{cfg['distance']}): {min(duo_s):.1f}-{max(duo_s):.1f} s per run; α per head, seed {seeds[0]} "
        f"[min, max over seeds]; '=' marks a value tied exactly with another head's (a clamp), whose order "
        f"no ranking decides:\n"
    )
    print("| layer | " + " | ".join(f"H{h}" for h in range(H)) + " |\n|---|" + "---|" * H)
    for layer in range(L):
        a = alphas[:, layer]
        print(
            f"| {layer} | "
            + " | ".join(
                f"{a[0, h]:.3f}{'=' if tied[layer][h] else ''} [{a[:, h].min():.3f}, {a[:, h].max():.3f}]"
                for h in range(H)
            )
            + " |"
        )
    rz = out["razor"][0] if isinstance(out["razor"], list) else out["razor"]
    fmt = lambda m: "; ".join(f"L{i}: " + " ".join(f"{v:.2f}" for v in row) for i, row in enumerate(m))  # noqa: E731
    prot = [f"L{i}H{h}" for i in range(L) for h in range(H) if rz["protected"][i][h]]
    uni = rz.get("uniform_echo_induction") or [float("nan")] * 2
    print(
        f"\nRazorAttention (seed {seeds[0]}, {t.get(f'razor_seed{seeds[0]}', 0):.2f} s): induction "
        f"{fmt(rz['induction'])}; echo {fmt(rz['echo'])} (uniform attention: echo {uni[0]:.3f}, induction "
        f"{uni[1]:.3f}); protected (top {rz['n_induction_protected']} by induction ∪ top {rz['n_echo_protected']} "
        f"by echo, each at least {rz['config'].get('min_score', 0):g}): "
        f"{', '.join(prot) if prot else 'nothing to protect'}.\n"
    )
    for key, what in (("tradeoff", "sink + window"), ("tradeoff_compensation", "sink + window + compensation token")):
        res = TradeoffResult.from_dict(out[key])
        n = res.n_heads
        q = res.config.get("band_quantiles", [0.05, 0.95])
        print(
            f"KV-cache trade-off, streaming heads on {what} ({t[key]:.1f} s; needle copy accuracy at T = "
            f"{res.seq_len}, seed {res.context_seeds[0]} [t 95% over context seeds "
            f"{', '.join(map(str, res.context_seeds))}, "
            f"each seed with its own rankings]; p: Holm-adjusted over the curve's testable points, exact over "
            f"every subset where C(n, m) <= {res.config['exact_max_subsets']}, else {len(res.random_curves)} random "
            f"rankings; '=' tied scores at the cut, mean over tie orders):\n"
        )
        print(
            "| ranking | "
            + " | ".join(f"{share_label(k, n)} full (KV {kv:.2f})" for k, kv in zip(res.n_full, res.kv_fraction))
            + " |\n|---|"
            + "---|" * len(res.fractions)
        )
        for name, c in res.curves.items():
            cells = []
            for i, v in enumerate(c["needle_acc"]):
                ci = res.seed_ci.get(name, {}).get("needle_acc")
                tie = "=" if res.tied[name][i] else ""
                iv = f" [{ci[i][0]:.3f}, {ci[i][1]:.3f}]" if ci else ""
                verdict = res.verdicts[name]["needle_acc"][i]
                mark = (
                    f"; p {_p(res.p_adjusted[name]['needle_acc'][i])}"
                    + (" **beats random**" if verdict == "beats random" else "")
                    if verdict not in ("untestable at this size",)
                    else "; untestable"
                )
                cells.append(f"{v:.3f}{tie}{iv}{mark}")
            print(f"| {label(name)} | " + " | ".join(cells) + " |")
        b = res.random_band["needle_acc"]
        print(
            f"| random picks: mean [{q[0]:g}, {q[1]:g} quantiles] | "
            + " | ".join(f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(b["mean"], b["lo"], b["hi"]))
            + " |"
        )
        print(
            "| smallest attainable p | "
            + " | ".join(f"{mp:.3g} ({'exact' if ex else 'MC'})" for mp, ex in zip(res.min_p, res.null_exact))
            + " |"
        )
        chance = [
            f"{label(m)} (all full {res.full_value[m]:.3f}, chance {res.chance[m]:.3g})"
            for m, at in res.at_chance.items()
            if at
        ]
        i = res.n_full.index(max(k for k in res.n_full if k <= n // 4))
        print(
            f"\nAt {share_label(res.n_full[i], n)} heads full (KV {res.kv_fraction[i]:.2f}): passkey answer-token "
            "accuracy "
            + ", ".join(
                f"{label(nm)} {c['passkey_token_acc'][i]:.3f} ({res.verdicts[nm]['passkey_token_acc'][i]})"
                for nm, c in res.curves.items()
            )
            + f" (random picks {res.random_band['passkey_token_acc']['lo'][i]:.3f}-"
            f"{res.random_band['passkey_token_acc']['hi'][i]:.3f}; all full "
            f"{res.full_value['passkey_token_acc']:.3f}); "
            "text loss "
            + ", ".join(f"{label(nm)} {c['text_loss'][i]:.3f}" for nm, c in res.curves.items())
            + f" (random {res.random_band['text_loss']['lo'][i]:.3f}-{res.random_band['text_loss']['hi'][i]:.3f};"
            f" all full {res.full_value['text_loss']:.3f} nats). Not compared, at chance with every head full: "
            + ("; ".join(chance) if chance else "none")
            + ".\n"
        )


def print_agreement_and_over_training(out: dict) -> None:
    ag, ov, t = out["agreement"], out["over_training"], out["timing_s"]
    ci = lambda c: f"[{c[0]:+.2f}, {c[1]:+.2f}]" if c else "n/a"  # noqa: E731
    print(f"Rank agreement over {ag['n_heads']} heads ({ag['method']}); each ranking against the causal check:\n")
    from workbench.probes.head_rankings import label

    seeds = ag.get("seeds") or []
    print(
        f"| ranking | rho (seed {seeds[0] if seeds else 0}) | Fisher 95% | p | rho per seed | t 95% over "
        f"{len(seeds)} seeds |\n|---|---|---|---|---|---|"
    )
    for name, c in ag["causal"].items():
        rho = "n/a" if c["rho"] is None else f"{c['rho']:+.2f}"
        p = "n/a" if c["p_value"] is None else f"{c['p_value']:.3f}"
        per = ", ".join("n/a" if r is None else f"{r:+.2f}" for r in (ag.get("causal_seed_rho") or {}).get(name, []))
        print(
            f"| {label(name)} | {rho} | {ci(c['ci'])} | {p} | {per} | "
            f"{ci((ag.get('causal_seed_ci') or {}).get(name))} |"
        )
    names = ag["names"]
    pairs = [
        f"{label(a)} vs {label(b)} {ag['rho'][i][j]:+.2f} {ci(ag['ci'][i][j])}"
        + (f" (seeds {ci(ag['seed_ci'][i][j])})" if ag.get("seed_ci") else "")
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
    print(
        f"\nFormed (previous checkpoint, first step it holds to the end): {ov['formed']}; state: "
        f"{ov.get('formed_state', {})}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=None)
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="context seeds (0..n-1)")
    ap.add_argument("--n-random", type=int, default=99, help="random rankings R of the Monte Carlo null")
    ap.add_argument("--duo-steps", type=int, default=300, help="DuoAttention optimisation steps per seed")
    ap.add_argument(
        "--only",
        choices=("probes", "heads"),
        default=None,
        help="only the demo probes' report, or only the head methods",
    )
    args = ap.parse_args()
    if args.only != "probes":
        head_methods(tuple(range(args.seeds)), args.n_random, args.duo_steps)
    if args.only == "heads":
        return
    print_probes(build_demo(Path(args.runs) if args.runs else default_demo_dir()))


def print_probes(root: Path) -> None:
    """The demo probes' markdown report from a demo folder's typed results (each probe recipe's folder)."""
    runs = demo_runs(root)
    sp, hd, ar = (read_results(root / runs[kind].folder) for kind in REPORTED)
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
