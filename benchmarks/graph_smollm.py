"""A long-prompt attribution graph on SmolLM2-135M-Instruct (Q4_1 GGUF weights dequantized to
float32, not the original bf16) with transcoders trained here (issue 30 item 3: 512 tokens within
4 GB RSS and 10 minutes on 2 cores).

    cpujob --both .venv/bin/python benchmarks/graph_smollm.py --tokens 512

Steps: (1) cache (MLP input, MLP output) pairs of `--layers` on windows of the Python docs' train
split, the forward pass stopped after the highest of them; (2) train one TopK transcoder per layer
with the workbench trainer (runs kept under WORKBENCH_HOME/graph-smollm-bench and reused); (3) trace
a top-m graph of the first `--tokens` tokens of the validation split, every other MLP an error
node, rows below `--min-influence` of the total influence skipped (graph.untraced_mass bounds what
that misses). Prints the time of each step, the peak RSS, the transcoders' held-out FVU and where
the logits' influence goes (features, error nodes, tokens).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import torch

from workbench.activations import ActivationStore, TensorSource
from workbench.corpus import encode_corpus, python_docs_corpus, windows
from workbench.gguf_model import SMOLLM2
from workbench.graphs.attribute import trace
from workbench.graphs.transcoder import INPUT_HOOK, OUTPUT_HOOK, from_runs
from workbench.hub import load_model
from workbench.models import workbench_home
from workbench.runs import SAE_CONFIG_FILE, RunDir
from workbench.sae import SAEConfig, SAETrainConfig, train_sae

SEQ = 128


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB."""
    cur = int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
    return cur, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pairs(model, stream: torch.Tensor, layers: list[int], n_windows: int, seed: int, bos: int) -> dict[int, tuple]:
    """{layer: (x [n, d], y [n, d])} over `n_windows` windows (BOS rows left out), one stopped pass."""
    names = [f"blocks.{l}.{h}" for l in layers for h in (INPUT_HOOK, OUTPUT_HOOK)]
    seqs = windows(stream, SEQ, bos_token_id=bos, n=n_windows,
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
    got: dict[str, list] = {n: [] for n in names}
    with torch.no_grad():
        for b in seqs.split(16):
            _, cache = model.run_with_cache(b, names_filter=names, stop_at_layer=max(layers) + 1)
            for n in names:
                got[n].append(cache[n][:, 1:].reshape(-1, cache[n].shape[-1]).clone())
    return {
        l: (torch.cat(got[f"blocks.{l}.{INPUT_HOOK}"]), torch.cat(got[f"blocks.{l}.{OUTPUT_HOOK}"])) for l in layers
    }


def fvu(tc, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((tc(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512, help="prompt length (BOS added)")
    ap.add_argument("--layers", default="4,8,12", help="MLP layers with transcoders; the others are error nodes")
    ap.add_argument("--windows", type=int, default=512, help="training windows of 128 tokens per layer")
    ap.add_argument("--train-tokens", type=int, default=400_000, help="trainer tokens per transcoder")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--top-m", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16, help="rows per backward pass")
    ap.add_argument("--min-influence", type=float, default=1e-5)
    ap.add_argument("--retrain", action="store_true", help="train the transcoders again")
    args = ap.parse_args()
    layers = [int(s) for s in args.layers.split(",")]
    out: dict = {"threads": torch.get_num_threads(), "layers": layers, "args": vars(args)}

    t0 = time.perf_counter()
    model, tok = load_model(SMOLLM2.name)
    out["load_s"], (out["rss_after_load_mb"], out["peak_rss_after_load_mb"]) = time.perf_counter() - t0, rss_mb()
    corpus = python_docs_corpus()
    home = workbench_home() / "graph-smollm-bench"
    folders = [home / f"tc-{l}-{args.d_sae}-k{args.k}-{args.train_tokens}" for l in layers]
    held = pairs(model, encode_corpus(corpus, tok, "validation"), layers, 16, seed=1, bos=tok.bos_token_id)
    if args.retrain or not all((f / SAE_CONFIG_FILE).exists() for f in folders):
        t0 = time.perf_counter()
        data = pairs(model, encode_corpus(corpus, tok, "train"), layers, args.windows, seed=0, bos=tok.bos_token_id)
        out["cache_s"] = time.perf_counter() - t0
        out["cache_tokens_per_layer"] = len(data[layers[0]][0])
        t0 = time.perf_counter()
        for l, folder in zip(layers, folders):
            shutil.rmtree(folder, ignore_errors=True)
            x, y = data[l]
            cfg = SAEConfig(
                d_in=x.shape[1], d_sae=args.d_sae, k=args.k, hook_name=f"blocks.{l}.{INPUT_HOOK}",
                target_hook=f"blocks.{l}.{OUTPUT_HOOK}", model_name=SMOLLM2.name,
            )  # fmt: skip
            store = ActivationStore(TensorSource(x, targets=y, chunk_size=min(8192, len(x))), min(4096, len(x)))
            train_sae(cfg, SAETrainConfig(total_tokens=args.train_tokens), store, RunDir(folder))
        out["train_s"] = time.perf_counter() - t0
        del data
    tcs = from_runs(*folders)
    out["heldout_fvu"] = {l: fvu(tcs[l], *held[l]) for l in layers}
    del held

    stream = encode_corpus(corpus, tok, "validation")
    tokens = torch.cat([torch.tensor([tok.bos_token_id]), stream[: args.tokens]])
    t0 = time.perf_counter()
    graph, lin = trace(
        model, tokens, tcs, bos=tok.bos_token_id, batch_size=args.batch, top_m=args.top_m,
        max_n_logits=5, min_influence=args.min_influence, progress=True,
    )  # fmt: skip
    del lin
    out["trace_s"] = time.perf_counter() - t0
    out["rss_after_trace_mb"], out["peak_rss_mb"] = rss_mb()
    sl, inf = graph.slices(), graph.node_influence
    total = float(inf[: sl["logit"].start].sum())
    out |= {
        "prompt_tokens": len(tokens),
        "features": graph.n_features,
        "nodes": graph.n_nodes,
        "rows_traced": len(graph.top_inputs.targets),
        "untraced_mass": graph.untraced_mass,
        "influence_share": {k: float(inf[sl[k]].sum()) / total for k in ("feature", "error", "token")},
        "top_logit": tok.token_str(int(graph.logit_tokens[0])),
        "top_logit_prob": float(graph.logit_probs[0]),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
