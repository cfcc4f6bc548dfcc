"""Steering on the default model, measured (issue 31): output concepts with target token sets
steered at blocks.0's residual stream by the output-score-selected SAE latents (Arad et al. 2025),
by the input-selected latent, and by the difference-of-means direction at the latents' norm; concept
gain against KL, the gain interpolated at KL 0.1 and 0.5 nats, and Arad's claim (filtered latents
reach >= 80% of the baseline's gain at equal KL) decided either way. Also times the output score of
every latent (2048) in one batched pass.

    cpujob --both .venv/bin/python benchmarks/steering.py [--sae RUN_DIR] [--sae-tokens 524288] [--json out.json]
    cpujob --both .venv/bin/python benchmarks/steering.py --eval-only [--sae RUN_DIR] [--sae-tokens 16384]

--eval-only instead runs the SAE run's whole evaluation (sae.run_eval.evaluate_sae, as train-sae
does after training: 32 held-out windows of 128 tokens) and prints each stage's seconds, the
output scores of every latent among them (their cost does not depend on how long the SAE trained).

Without --sae a TopK SAE (d_sae 2048, k 16) is trained on blocks.0.hook_resid_post first (a run
folder under a temporary directory, or --save-sae DIR to keep it).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

HOOK = "blocks.0.hook_resid_post"
STRENGTHS = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)  # x the mean |h| at the hook
CLAIM = 0.8  # Arad et al.: filtered latents reach >= 80% of the baseline's gain at equal KL


def train_sae_at(model, data, out: Path, tokens: int, d_sae: int, k: int, seed: int = 0):
    from workbench.activations import ActivationStore, ModelSource, StoreConfig
    from workbench.runs import RunDir
    from workbench.sae import SAEConfig, SAETrainConfig, train_sae

    store_cfg = StoreConfig(HOOK, batch_size=4096, buffer_tokens=65_536, seq_len=128)
    store = ActivationStore(ModelSource(model, data.train, store_cfg, data.tokenizer.bos_token_id), 4096)
    cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, k=k, hook_name=HOOK, model_name="workbench-tiny")
    train = SAETrainConfig(
        total_tokens=tokens, batch_size=4096, lr=6e-3, log_every=10**9, checkpoint_every=10**9, seed=seed
    )
    return train_sae(cfg, train, store, RunDir(out), progress=False)


def time_evaluation(model, tok, sae, where: str) -> None:
    """evaluate_sae into a temporary run folder, with each stage's wall time."""
    from workbench.runs import RunDir
    from workbench.sae.run_eval import DEFAULT_WINDOWS, evaluate_sae, held_out_windows, load_text
    from workbench.viewer.build_status import BuildStatus

    split, val = held_out_windows(load_text(None, "text"), tok, min(128, model.cfg.n_ctx - 1), DEFAULT_WINDOWS)
    run = RunDir(tempfile.mkdtemp(prefix="steer-eval-"))
    status = BuildStatus()
    t0 = time.perf_counter()
    evaluate_sae(run.path, model, sae, tok, val, split=split, status=status, progress=False)
    total = time.perf_counter() - t0
    print(
        f"evaluate_sae on {torch.get_num_threads()} threads ({platform.processor() or platform.machine()}), "
        f"SAE d_sae {sae.cfg.d_sae} k {sae.cfg.k} at {sae.cfg.hook_name} ({where}), {len(val)} windows "
        f"x {val.shape[1]} tokens: {total:.1f} s in all"
    )
    for st in status.snapshot()["stages"]:
        took = "" if st.get("seconds") is None else f"{st['seconds']:.2f} s"
        print(f"  {st['name']:<18} {st['state']:<8} {took}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", help="an SAE run folder (sae.safetensors) at blocks.0.hook_resid_post")
    ap.add_argument("--save-sae", help="train into this folder (kept)")
    ap.add_argument("--sae-tokens", type=int, default=524_288)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--sae-seed", type=int, default=0, help="the SAE's initialisation")
    ap.add_argument("--windows", type=int, default=32, help="concept windows and, as many again, cost windows")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--n-latents", type=int, default=3)
    ap.add_argument("--json", help="write every curve here")
    ap.add_argument("--eval-only", action="store_true", help="time the run's evaluation stages instead")
    args = ap.parse_args()

    from workbench.corpus import windows
    from workbench.hub import load_model
    from workbench.models import default_data
    from workbench.sae.evaluate import feature_activations
    from workbench.sae.io import load_sae
    from workbench.steer.compare import OUTPUT_CONCEPTS, compare_concept, concept_targets
    from workbench.steer.curves import SteerEvaluator
    from workbench.steer.directions import hook_rows, output_scores
    from workbench.steer.intervene import random_direction

    torch.manual_seed(0)
    model, tok = load_model("workbench-tiny")
    data = default_data()
    bos = tok.bos_token_id
    t0 = time.perf_counter()
    if args.sae:
        sae = load_sae(args.sae)
        where = args.sae
    else:
        out = Path(args.save_sae or tempfile.mkdtemp(prefix="steer-sae-"))
        sae = train_sae_at(model, data, out, args.sae_tokens, args.d_sae, args.k, args.sae_seed)
        took = time.perf_counter() - t0
        where = f"trained here (seed {args.sae_seed}, {args.sae_tokens:,} tokens, {took:.0f} s) in {out}"
    sae.eval()
    if args.eval_only:
        return time_evaluation(model, tok, sae, where)
    if sae.cfg.hook_name != HOOK:
        raise SystemExit(f"--sae: its hook is {sae.cfg.hook_name!r}, the benchmark steers at {HOOK}")
    targets = concept_targets(tok, OUTPUT_CONCEPTS)
    val = windows(data.validation, args.seq_len, bos_token_id=bos)
    neutral = windows(data.train, 16, bos_token_id=bos, n=8, generator=torch.Generator().manual_seed(1))
    concept_toks, cost_toks = val[: args.windows], val[args.windows : 2 * args.windows]
    train_w = windows(data.train, args.seq_len, bos_token_id=bos, n=256, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        start = time.perf_counter()
        scores = output_scores(model, sae, neutral, targets=targets)
        score_s = time.perf_counter() - start
        rows = hook_rows(model, HOOK, train_w)
        z = torch.cat([feature_activations(model, sae, HOOK, c) for c in train_w.split(32)])
        rnorm = float(rows[:, 1:].norm(dim=-1).mean())
        ev = SteerEvaluator(model, concept_toks, cost_toks, targets)
        results = [
            compare_concept(ev, sae, name, rows, train_w, scores, [a * rnorm for a in STRENGTHS], z=z)
            for name in targets
        ]
        cs = [a * rnorm for a in STRENGTHS]
        rand = random_direction(rows.shape[-1], 0)  # unit norm, as the latents' decoder rows
        controls = {name: ev.curve(HOOK, rand, cs, name, "random direction (seed 0)") for name in targets}
    cutoff = float(scores.score.topk(max(1, round(0.2 * len(scores.score)))).values[-1])
    total_s = time.perf_counter() - t0

    print(
        f"## Steering, measured (`benchmarks/steering.py`, issue 31)\n\n"
        f"{time.strftime('%Y-%m-%d')} · {platform.machine()} CPU, {torch.get_num_threads()} threads · "
        f"torch {torch.__version__} · `workbench-tiny`, steered at `{HOOK}` (mean |h| = {rnorm:.2f}) · "
        f"SAE: TopK d_sae {sae.cfg.d_sae}, k {sae.cfg.k}, {where}\n"
    )
    print(
        f"**Output score of all {sae.cfg.d_sae} latents** (one batched pass: {len(neutral)} neutral "
        f"training windows x {neutral.shape[1]} tokens, amplification c = {scores.strength:.2f}, logit-lens top 5): "
        f"**{score_s:.1f} s**. Whole benchmark {total_s:.0f} s.\n"
    )
    print(
        f"Concept gain = mean Δ log p(target set) on {len(concept_toks)} held-out windows x {args.seq_len}; "
        f"cost = mean KL(clean || steered) on {len(cost_toks)} other held-out windows; strengths "
        f"{STRENGTHS[0]}..{STRENGTHS[-1]} x mean |h|; the baseline is mean(h | next token in set) − "
        f"mean(h | not) on 256 training windows, scaled to the latents' norm (1). Filtered latents: the "
        f"top 20% by output score (score >= {cutoff:.2f}), then the {args.n_latents} with the largest rise of the "
        f"target set on the neutral windows. A random unit direction is the control.\n"
    )
    print("| concept | direction | output score | gain @ KL 0.1 | gain @ KL 0.5 | max KL |")
    print("|---|---|---|---|---|---|")
    verdicts = []
    for r in results:
        for c in [*r.latents, *([r.input_latent] if r.input_latent else []), r.baseline, controls[r.name]]:
            os_ = "" if c.output_score is None else f"{c.output_score:.3f}"
            print(f"| {r.name} | {c.label} | {os_} | {c.gain_at(0.1):.3f} | {c.gain_at(0.5):.3f} | {max(c.kl):.2f} |")
        for kl in r.kl_points:
            verdicts.append((r.name, kl, r.best_gain(kl), r.baseline.gain_at(kl), r.ratio(kl)))
    print("\n| concept | KL | best filtered latent's gain | baseline's gain | ratio | >= 80%? |")
    print("|---|---|---|---|---|---|")
    for name, kl, best, base, ratio in verdicts:
        ok = "n/a" if math.isnan(ratio) else ("yes" if ratio >= CLAIM else "no")
        print(f"| {name} | {kl} | {best:.3f} | {base:.3f} | {ratio:.2f} | {ok} |")
    held = [v for v in verdicts if not math.isnan(v[4])]
    n_yes = sum(v[4] >= CLAIM for v in held)
    print(f"\n**Verdict:** Arad's claim holds in {n_yes} of {len(held)} (concept, KL) comparisons.")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "output_score_s": score_s,
                    "concepts": [r.to_dict() for r in results],
                    "controls": {n: c.to_dict() for n, c in controls.items()},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
