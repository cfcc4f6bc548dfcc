"""Head roles over all 270 query heads of SmolLM2-135M-Instruct (30 layers x 9, 3 KV heads a
layer) with the attribution-patching screen as the causal check (issue 28).

Contexts: natural text (the Python-docs validation split) with a span repeated at the end, each
context one string tokenized once (`heads.text_contexts`); sink 4, window T/8. The causal check:
`head_screen.screen_check`, the first-order estimate for every head from one forward and one
backward, then the exact restricted forward on `--n-exact` heads (half the screen's top, half at
random) and their agreement. Prints the wall time (and where it goes), the screen-vs-exact
Spearman with its Fisher z interval (and a percentile bootstrap over the checked heads), the
top-10 recall, the share of heads with a retrieval score above 0.1 and the role counts.

    cpujob --both .venv/bin/python benchmarks/smollm_heads.py [--n-contexts 8 --seq-len 192 --n-exact 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import torch

from workbench.corpus import python_docs_corpus
from workbench.hub import load_model
from workbench.probes.head_agreement import rank_average
from workbench.probes.heads import HeadRoleConfig, head_roles

TOKEN_RANGE = (17, 49152)  # past the tokenizer's special and added tokens (0-16), for TL's repeated segments


def bootstrap_spearman(a, b, n: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of Spearman's rho over heads resampled with replacement."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    gen, out = np.random.default_rng(seed), []
    for _ in range(n):
        i = gen.integers(0, len(a), len(a))
        ra, rb = rank_average(a[i]), rank_average(b[i])
        if ra.std() > 0 and rb.std() > 0:
            out.append(float(np.corrcoef(ra, rb)[0, 1]))
    return [float(np.quantile(out, 0.025)), float(np.quantile(out, 0.975))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-contexts", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=192)
    ap.add_argument("--needle-len", type=int, default=16)
    ap.add_argument("--n-exact", type=int, default=40)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct-q4")
    text = python_docs_corpus().text("validation")
    t_load = time.perf_counter() - t0
    cfg = HeadRoleConfig(
        n_contexts=args.n_contexts,
        seq_len=args.seq_len,
        needle_len=args.needle_len,
        sink=4,
        window=args.seq_len // 8,
        token_range=TOKEN_RANGE,
        contexts="text",
        causal="screen",
        n_exact=args.n_exact,
    )
    t1 = time.perf_counter()
    roles = head_roles(model, cfg, bos=tok.bos_token_id, tokenizer=tok, text=text, progress=True)
    wall = time.perf_counter() - t1
    sc = roles.screen
    est = [sc.score[l][h] for l, h in sc.heads]
    retrieval = np.asarray(roles.retrieval)
    counts = Counter(x for row in roles.labels for x in row)
    out = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "config": {k: v for k, v in roles.config.items()},
        "heads": int(retrieval.size),
        "wall_s": round(wall, 1),
        "load_s": round(t_load, 1),
        "screen_s": round(sc.seconds["screen"], 1),
        "exact_s": round(sc.seconds["exact"], 1),
        "rest_s": round(wall - sc.seconds["screen"] - sc.seconds["exact"], 1),
        "tokens_per_forward": args.n_contexts * args.seq_len,
        "copy_accuracy": roles.copy_accuracy,
        "n_copied": roles.n_copied,
        "clean_copy_loss": roles.clean_copy_loss,
        "spearman": sc.spearman.rho,
        "spearman_ci_fisher": sc.spearman.ci,
        "spearman_ci_bootstrap": bootstrap_spearman(est, sc.exact),
        "spearman_p": sc.spearman.p_value,
        "spearman_random": sc.spearman_random.rho,
        "spearman_random_ci": sc.spearman_random.ci,
        "top_k": sc.top_k,
        "top_k_recall": sc.top_k_recall,
        "retrieval_share_above_0.1": float((retrieval > 0.1).mean()),
        "roles": dict(counts),
        "exact_max": max(sc.exact),
        "screen_max": max(max(r) for r in sc.score),
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
