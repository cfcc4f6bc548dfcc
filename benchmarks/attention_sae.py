"""Attention-output SAEs on planted truth: the figures behind benchmarks/RESULTS.md's hook_z section.

1. The default model (workbench-tiny, forward, seed 0): a layer-1 hook_z TopK SAE (CopySAEConfig:
   1024 latents, k 8, 400k tokens, half Python-docs windows and half [BOS, r, r] contexts) per seed;
   on 300 held-out planted contexts, its copy-step latents (firing >= 10 times, >= 90% of them on
   copy steps) and the share of their firings whose DFA argmax over source positions is the token
   after the earlier occurrence (the induction source); their mean head shares.
2. The hand-set model of tests/handset_attention.py (one induction head among 8 in layer 1): the
   copy latents' smallest and mean share of ‖W_dec‖² on the induction head, and the DFA-source rate.

    python benchmarks/attention_sae.py [--seeds 0 1 2] [--no-handset] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from workbench.sae.attention import (
    CopySAEConfig,
    copy_contexts,
    copy_source_check,
    copy_token_range,
    head_shares,
    train_copy_sae,
)


def default_model_rows(seeds: list[int]) -> list[dict]:
    from workbench.corpus import corpus_stream, python_docs_corpus
    from workbench.hub import load_model

    model, tok = load_model("workbench-tiny")
    text = corpus_stream(python_docs_corpus(), tok, "train", 128)
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        cfg = CopySAEConfig(seed=seed)
        sae = train_copy_sae(model, text, tok.bos_token_id, cfg)
        train_s = time.perf_counter() - t0
        ctx = copy_contexts(300, cfg.segment, copy_token_range(model, tok.bos_token_id, cfg), tok.bos_token_id, 99)
        check = copy_source_check(model, sae, ctx)
        shares = head_shares(sae, model.cfg.n_heads)[check.latents].mean(0)
        rows.append(
            dict(
                seed=seed,
                copy_latents=len(check.latents),
                firings=check.firings,
                dfa_source_rate=check.rate,
                worst_latent_rate=float(check.per_latent_hits.min()) if len(check.latents) else float("nan"),
                mean_head_shares=[round(float(s), 3) for s in shares],
                train_s=round(train_s, 1),
            )
        )
        print(
            f"default seed {seed}: {len(check.latents)} copy latents, {check.firings} firings on copy steps, "
            f"DFA argmax on the induction source {check.rate:.1%} (worst latent {rows[-1]['worst_latent_rate']:.1%}); "
            f"mean shares per head {rows[-1]['mean_head_shares']}; trained in {train_s:.1f} s",
            flush=True,
        )
    return rows


def handset_row() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.handset_attention import BOS, INDUCTION, N_HEADS, handset_attention_model
    from tests.test_attention_sae import _handset_sae

    model = handset_attention_model()
    t0 = time.perf_counter()
    sae = _handset_sae(model).double().eval()
    check = copy_source_check(model, sae, copy_contexts(200, 15, (0, BOS), BOS, seed=9))
    on_head = head_shares(sae, N_HEADS)[check.latents, INDUCTION]
    row = dict(
        copy_latents=len(check.latents),
        min_share_on_induction_head=float(on_head.min()),
        mean_share_on_induction_head=float(on_head.mean()),
        dfa_source_rate=check.rate,
        firings=check.firings,
        train_s=round(time.perf_counter() - t0, 1),
    )
    print(
        f"hand-set (1 induction head of 8): {row['copy_latents']} copy latents, share of ‖W_dec‖² on the "
        f"induction head min {row['min_share_on_induction_head']:.3f} / "
        f"mean {row['mean_share_on_induction_head']:.3f}; "
        f"DFA argmax on the source {check.rate:.1%} of {check.firings} firings",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-handset", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{date.today()} on {platform.machine()} ({torch.get_num_threads()} torch threads)")
    out = {"default": default_model_rows(args.seeds)}
    if not args.no_handset:
        out["handset"] = handset_row()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
