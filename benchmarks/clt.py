"""A 2-layer cross-layer transcoder on the default model against the per-layer transcoder pair, at
equal total L0; and (--two-hop) the planted two-hop circuit study (sae/clt_twohop.py).

Default mode: every layer's (MLP input, MLP output) rows of `--tokens` training tokens are
captured once (blocks.l.ln2.hook_normalized -> blocks.l.hook_mlp_out, l = 0, 1; clt_data.CLTSource)
and both replacements train on exactly those batches: the CLT (train_clt, k per layer) and one
transcoder per layer (train_sae, the same k, d_sae, lr, schedule). Reported: training wall time,
held-out FVU of each layer's MLP output, total inference L0, and CE loss recovered with both
MLPs replaced at once against zero-ablating both (clt_eval.splice_ce), on held-out windows.

    python benchmarks/clt.py --tokens 100000             # the check (about 1-2 min)
    cpujob --both .venv/bin/python benchmarks/clt.py     # 1M tokens
    python benchmarks/clt.py --two-hop                   # the planted study (about 1 min)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import date

import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.sae import SAEConfig, SAETrainConfig, train_sae
from workbench.sae.clt import CLTConfig
from workbench.sae.clt_data import CLTSource, CLTStoreConfig, LayerSource, capture_layers, mlp_hooks
from workbench.sae.clt_eval import clt_output, splice_ce, transcoders_output
from workbench.sae.clt_train import train_clt

CHUNK = 131_072
BATCH = 4096


def capture(tokens: int, seed: int = 0):
    """The default model, the rows of `tokens` training tokens (whole chunks) as one TensorSource,
    and the held-out windows."""
    from workbench.corpus import windows
    from workbench.hub import load_default
    from workbench.token_data import default_data

    model = load_default("forward")
    data = default_data()
    ins, outs = mlp_hooks(range(model.cfg.n_layers))
    cfg = CLTStoreConfig(ins, outs, buffer_tokens=CHUNK, seq_len=model.cfg.n_ctx - 1, seed=seed)
    src = CLTSource(model, data.train, cfg, data.tokenizer.bos_token_id)
    chunks = [src.chunk(i) for i in range(math.ceil(tokens / CHUNK))]
    acts, targets = torch.cat([c.acts for c in chunks]), torch.cat([c.targets for c in chunks])
    held = windows(data.validation, model.cfg.n_ctx - 1, bos_token_id=data.tokenizer.bos_token_id)[:64]
    return model, (ins, outs), TensorSource(acts, targets=targets, chunk_size=CHUNK), held


def held_out_fvu(model, hooks, held, predict) -> list[float]:
    x, y, _ = capture_layers(model, held, *hooks)
    x, y = x[:, 1:].flatten(0, 1), y[:, 1:].flatten(0, 1)
    with torch.no_grad():
        y_hat = predict(x)
    return [
        float((y[:, j] - y_hat[:, j]).pow(2).sum() / (y[:, j] - y[:, j].mean(0)).pow(2).sum())
        for j in range(y.shape[1])
    ]


def default_model(args) -> None:
    t = time.perf_counter()
    model, hooks, source, held = capture(args.tokens)
    n_layers = len(hooks[0])
    d = source.d // n_layers
    print(f"captured {len(source.acts):,} rows of {n_layers} layers in {time.perf_counter() - t:.1f} s")
    train = SAETrainConfig(
        total_tokens=args.tokens, batch_size=BATCH, lr=args.lr, warmup_steps=20, checkpoint_every=10**9
    )
    common = dict(d_sae=args.d_sae, k=args.k, dead_tokens=args.dead_tokens)
    rows = []

    t = time.perf_counter()
    ccfg = CLTConfig(n_layers=n_layers, d_in=d, input_hooks=hooks[0], target_hooks=hooks[1], **common)
    clt = train_clt(ccfg, train, ActivationStore(source, BATCH, seed=0), progress=False)
    secs = time.perf_counter() - t
    fvus = held_out_fvu(model, hooks, held, lambda x: clt(x).y_hat)
    rows.append(("CLT", secs, fvus, splice_ce(model, held, *hooks, clt_output(clt))))

    t = time.perf_counter()
    pair = []
    for layer in range(n_layers):
        scfg = SAEConfig(d_in=d, transcoder=True, hook_name=hooks[0][layer], target_hook=hooks[1][layer], **common)
        store = ActivationStore(LayerSource(source, layer, n_layers), BATCH, seed=0)
        pair.append(train_sae(scfg, train, store, progress=False).eval())
    secs = time.perf_counter() - t
    fvus = held_out_fvu(model, hooks, held, lambda x: torch.stack([s(x[:, j]).x_hat for j, s in enumerate(pair)], 1))
    rows.append(("per-layer pair", secs, fvus, splice_ce(model, held, *hooks, transcoders_output(pair))))

    n_held = held.shape[0] * (held.shape[1] - 1)
    print(
        f"\n### {train.steps} steps x {BATCH} tokens ({train.steps * BATCH:,}), {args.d_sae} latents/layer, "
        f"TopK k {args.k}/layer, lr {args.lr:g}; held-out {n_held:,} tokens\n"
    )
    print(
        "| replacement | train s | FVU layer 0 / 1 | total L0 | CE clean | CE spliced | CE zero-abl. | CE recovered |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, secs, fvus, ce in rows:
        f = " / ".join(f"{v:.4f}" for v in fvus)
        print(
            f"| {name} | {secs:.1f} | {f} | {ce.l0:.1f} | {ce.ce_clean:.4f} | {ce.ce_spliced:.4f} "
            f"| {ce.ce_zero:.4f} | {ce.recovered:.4f} |"
        )
    print(f"\nCE recovered: CLT {rows[0][3].recovered:.4f} vs per-layer pair {rows[1][3].recovered:.4f}")


def two_hop(args) -> None:
    from workbench.sae.clt_twohop import two_hop_data, two_hop_report

    data = two_hop_data(60_000)
    held = two_hop_data(8_000, draw=1)
    d = data.x.shape[-1]
    train = SAETrainConfig(total_tokens=400 * 512, batch_size=512, lr=1e-2, warmup_steps=10, checkpoint_every=10**9)
    print(f"two-hop: d {d}, {args.two_hop_d_sae} latents/layer, k {args.two_hop_k}/layer, {train.steps} steps x 512")
    head = "| seed | FVU CLT l0/l1 | FVU pair l0/l1 | AND share (CLT) | chain share (CLT) "
    print(head + "| AND r CLT l0/l1 | AND r pair l0/l1 | w-FVU CLT / pair |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        tr = SAETrainConfig(**{**train.__dict__, "seed": seed})
        common = dict(d_sae=args.two_hop_d_sae, k=args.two_hop_k, dead_tokens=20_000)
        src = TensorSource(data.x.flatten(1), targets=data.y.flatten(1), chunk_size=30_000)
        clt = train_clt(
            CLTConfig(n_layers=2, d_in=d, **common), tr, ActivationStore(src, 512, seed=seed), progress=False
        )
        pair = [
            train_sae(
                SAEConfig(d_in=d, transcoder=True, **common),
                tr,
                ActivationStore(LayerSource(src, j, 2), 512, seed=seed),
                progress=False,
            )
            for j in range(2)
        ]
        r = two_hop_report(clt, pair, held)
        pair_f = lambda xs: " / ".join(f"{v:.3f}" for v in xs)  # noqa: E731
        print(
            f"| {seed} | {pair_f(r.clt_fvu)} | {pair_f(r.pair_fvu)} | {r.and_share:.3f} | {r.chain_share:.3f} "
            f"| {pair_f(r.clt_and_r)} | {pair_f(r.pair_and_r)} | {r.clt_and_fvu:.3f} / {r.pair_and_fvu:.3f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (whole chunks are captured)")
    ap.add_argument("--d-sae", type=int, default=2048, help="latents per layer")
    ap.add_argument("--k", type=int, default=16, help="TopK latents per token and layer (both replacements)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dead-tokens", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--two-hop", action="store_true", help="run the planted two-hop study instead")
    ap.add_argument("--two-hop-d-sae", type=int, default=64)
    ap.add_argument("--two-hop-k", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{date.today()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores, "
        f"{args.threads} threads · torch {torch.__version__}"
    )
    two_hop(args) if args.two_hop else default_model(args)


if __name__ == "__main__":
    main()
