"""Time and peak memory of one attribution graph: a 128-byte prompt (BOS + 128 bytes of held-out
text) on the default model (2 layers), with a transcoder of 2048 latents (TopK k=16) on each MLP.

The transcoders are either trained here, quickly (a plain TopK loop: Adam on the default's own
ln2.hook_normalized -> hook_mlp_out pairs over training text; kept apart from the SAE trainer,
which also trains transcoders (SAEConfig.target_hook), so this timing is unchanged), or random-init
(`--random`: timing only, their features mean nothing). The graph is then measured in a fresh
child process, so its peak RSS is the graph's and not the training's.

    cpujob --both .venv/bin/python benchmarks/graphs.py [--random] [--steps 300] [--repeats 3]

`--top-m M` measures the dense graph against one keeping each target's top-M inputs and a remainder
(trace(top_m=M): node influence streamed while tracing, workbench/graphs/sparse.py): time of trace +
node influence, peak RSS, the edge store's size, and the node-influence Spearman between the two.
`--smollm N` profiles a top-m graph of N tokens on SmolLM2-135M (random transcoders on 3 layers).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

D_LATENT, K, PROMPT_BYTES = 2048, 16, 128


def train_transcoders(model, data, steps: int, seed: int = 0) -> tuple[dict, dict]:
    """One TopK transcoder per MLP layer, fitted on 256 training windows (32k tokens); returns
    them and each one's fraction of variance unexplained on 16 held-out windows."""
    from workbench.corpus import windows
    from workbench.graphs.transcoder import random_transcoder

    bos = data.tokenizer.bos_token_id
    train = windows(data.train, 128, bos_token_id=bos, n=256)
    held = windows(data.validation, 128, bos_token_id=bos, n=16)

    def pairs(tokens, l):
        names = [f"blocks.{l}.ln2.hook_normalized", f"blocks.{l}.hook_mlp_out"]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=names)
        return cache[names[0]][:, 1:].flatten(0, 1), cache[names[1]][:, 1:].flatten(0, 1)

    out, fvu = {}, {}
    gen = torch.Generator().manual_seed(seed)
    for l in range(model.cfg.n_layers):
        x, y = pairs(train, l)
        tc = random_transcoder(x.shape[1], D_LATENT, K, seed=seed + l)
        params = [t.requires_grad_() for t in (tc.W_enc, tc.b_enc, tc.W_dec, tc.b_dec)]
        with torch.no_grad():
            tc.b_dec.copy_(y.mean(0))
        opt = torch.optim.Adam(params, lr=2e-3)
        for _ in range(steps):
            i = torch.randint(len(x), (2048,), generator=gen)
            loss = (tc(x[i]) - y[i]).pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
        hx, hy = pairs(held, l)
        fvu[l] = float((tc(hx) - hy).pow(2).sum() / (hy - hy.mean(0)).pow(2).sum())
        out[l] = tc
    return out, fvu


def measure_top_m(folder: str, repeats: int, top_m: int) -> dict:
    """Dense (top_m 0) or top-m graph of the benchmark prompt: trace + node influence (+ the top-m
    prune), best of `repeats`, this process's peak RSS; the node influence goes to `folder`."""
    from workbench.graphs import sparse
    from workbench.graphs.attribute import trace
    from workbench.graphs.prune import influence, normalize
    from workbench.graphs.transcoder import load_transcoders
    from workbench.hub import load_model
    from workbench.runs import atomic_save_tensors
    from workbench.token_data import default_data

    model, data = load_model("workbench-tiny")[0], default_data()
    bos = data.tokenizer.bos_token_id
    tokens = torch.cat([torch.tensor([bos]), data.validation[:PROMPT_BYTES]])
    tcs = load_transcoders(folder)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    best = 1e9
    for _ in range(repeats):
        t0 = time.perf_counter()
        graph, lin = trace(model, tokens, tcs, bos=bos, batch_size=256, top_m=top_m or None)
        del lin
        w = graph.logit_weights()
        if top_m:
            inf = graph.node_influence
            sparse.prune(graph.top_inputs, w, graph.slices()["token"].start, 0.8, 0.98, inf)
        else:
            inf = influence(normalize(graph.adjacency), w)
        best = min(best, time.perf_counter() - t0)
    saved = {"inf": inf.contiguous()}
    if top_m:  # the top-m iteration on the stored entries alone, for comparison
        saved["iterated"] = sparse.influence(graph.top_inputs, w).contiguous()
    atomic_save_tensors(Path(folder) / f"influence_{top_m}.safetensors", saved)
    stored = graph.top_inputs.to_tensors() if top_m else {"adjacency": graph.adjacency}
    return {
        "top_m": top_m,
        "seconds": best,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_graph_mb": rss0,
        "edge_store_mb": sum(t.numel() * t.element_size() for t in stored.values()) / 2**20,
        "nodes": graph.n_nodes,
        "inner": graph.slices()["token"].start,
    }


def compare_top_m(folder: str, repeats: int, top_m: int) -> dict:
    """Dense against top-m, each in its own child process; node-influence Spearman over feature and
    error nodes (the streamed influence, and the top-m iteration on the stored entries)."""
    from scipy.stats import spearmanr

    from workbench.runs import load_tensors

    out = {}
    for m in (0, top_m):
        child = [sys.executable, str(Path(__file__).resolve()), "--measure", folder, "--repeats", str(repeats)]
        run = subprocess.run(child + ["--top-m", str(m)], capture_output=True, text=True, check=True)
        out["dense" if m == 0 else "top_m"] = json.loads(run.stdout.strip().splitlines()[-1])
    inner = out["dense"]["inner"]
    dense = load_tensors(Path(folder) / "influence_0.safetensors")["inf"][:inner]
    top = load_tensors(Path(folder) / f"influence_{top_m}.safetensors")
    out["spearman_streamed"] = float(spearmanr(dense, top["inf"][:inner]).statistic)
    out["spearman_top_m_iteration"] = float(spearmanr(dense, top["iterated"][:inner]).statistic)
    return out


def profile_smollm(
    n_tokens: int, batch_size: int, layers: list[int], top_m: int = 32, min_influence: float = 0.0
) -> dict:
    """A top-m graph on SmolLM2-135M (a TransformerBridge): random TopK transcoders (4096 latents,
    k 16; timing only) on `layers`, every other MLP an error node, the first `n_tokens` tokens of the
    default's held-out text."""
    from workbench.graphs.attribute import trace
    from workbench.graphs.transcoder import random_transcoder
    from workbench.hub import load_model
    from workbench.token_data import default_data

    model, tok = load_model("smollm2-135m-instruct-q4")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = bytes(default_data().validation[: 8 * n_tokens].tolist()).decode("utf-8", "replace")
    tokens = torch.tensor(tok.encode(text)[:n_tokens])
    tcs = {l: random_transcoder(model.cfg.d_model, 4096, 16, seed=l) for l in layers}
    t0 = time.perf_counter()
    graph, _ = trace(
        model, tokens, tcs, batch_size=batch_size, top_m=top_m, max_n_logits=5, min_influence=min_influence
    )
    return {
        "tokens": len(tokens),
        "layers": layers,
        "batch_size": batch_size,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss0,
        "nodes": graph.n_nodes,
        "features": graph.n_features,
        "min_influence": min_influence,
        "rows_traced": len(graph.top_inputs.targets),
        "untraced_mass": graph.untraced_mass,
        "threads": torch.get_num_threads(),
    }


def measure(folder: str, repeats: int) -> dict:
    """The graph of the benchmark prompt, `repeats` times: phase times (best of the repeats) and this
    process's peak RSS."""
    from workbench.graphs.attribute import trace
    from workbench.graphs.heads import head_loadings
    from workbench.graphs.prune import graph_scores, prune
    from workbench.graphs.transcoder import load_transcoders
    from workbench.hub import load_model
    from workbench.token_data import default_data

    model = load_model("workbench-tiny")[0]
    data = default_data()
    bos = data.tokenizer.bos_token_id
    tokens = torch.cat([torch.tensor([bos]), data.validation[:PROMPT_BYTES]])
    tcs = load_transcoders(folder)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    best: dict[str, float] = {}
    for _ in range(repeats):
        t = {"start": time.perf_counter()}
        graph, lin = trace(model, tokens, tcs, bos=bos, batch_size=256)
        t["trace"] = time.perf_counter()
        pr = prune(graph, 0.8, 0.98)
        scores = graph_scores(graph)
        t["prune+scores"] = time.perf_counter()
        tt, ss = pr.edge_mask.nonzero(as_tuple=True)
        head_loadings(model, lin, graph, tt, ss)
        t["head loadings"] = time.perf_counter()
        del lin
        keys = list(t)
        for a, b in zip(keys, keys[1:]):
            best[b] = min(best.get(b, 1e9), t[b] - t[a])
        best["total"] = min(best.get("total", 1e9), t[keys[-1]] - t["start"])
    return {
        "seconds": best,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_graph_mb": rss0,
        "nodes": graph.n_nodes,
        "features": graph.n_features,
        "logits": graph.n_logits,
        "kept_nodes": int(pr.node_mask.sum()),
        "kept_edges": int(pr.edge_mask.sum()),
        "replacement": scores.replacement,
        "completeness": scores.completeness,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random", action="store_true", help="random-init transcoders (timing only)")
    ap.add_argument("--steps", type=int, default=300, help="Adam steps per trained transcoder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top-m", type=int, help="dense against top-m storage with this m (item 3b)")
    ap.add_argument("--smollm", type=int, help="profile a top-m graph of this many tokens on SmolLM2 instead")
    ap.add_argument("--smollm-batch", type=int, default=16)
    ap.add_argument("--smollm-layers", default="8,16,24")
    ap.add_argument("--min-influence", type=float, default=0.0, help="--smollm: skip rows below this influence share")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # the child: a transcoder folder
    args = ap.parse_args()
    if args.smollm:
        layers = [int(x) for x in args.smollm_layers.split(",")]
        print(
            json.dumps(
                profile_smollm(args.smollm, args.smollm_batch, layers, min_influence=args.min_influence), indent=1
            )
        )
        return
    if args.measure:
        if args.top_m is None:
            print(json.dumps(measure(args.measure, args.repeats)))
        else:
            print(json.dumps(measure_top_m(args.measure, args.repeats, args.top_m)))
        return
    from workbench.graphs.transcoder import random_transcoder, save_transcoders
    from workbench.hub import load_model
    from workbench.token_data import default_data

    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        if args.random:
            tcs, fvu = {l: random_transcoder(128, D_LATENT, K, seed=l) for l in range(2)}, None
        else:
            tcs, fvu = train_transcoders(load_model("workbench-tiny")[0], default_data(), args.steps)
        fit_s = time.perf_counter() - t0
        save_transcoders(folder, tcs)
        if args.top_m:
            res = compare_top_m(folder, args.repeats, args.top_m)
        else:
            child = [sys.executable, str(Path(__file__).resolve()), "--measure", folder, "--repeats", str(args.repeats)]
            out = subprocess.run(child, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
    res |= {
        "transcoders": "random-init" if args.random else f"trained ({args.steps} steps)",
        "fit_s": fit_s,
        "fvu": fvu,
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
