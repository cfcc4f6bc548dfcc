"""SmolLM2-135M-Instruct (Q4_1 GGUF weights dequantized to float32, not the bf16 release) on the CPU:
conversion and load times, perplexity, MLP activation sparsity, activation-caching throughput
against TransformerLens and SAELens, and SAEs trained on a middle layer's residual stream.

Run one part at a time, each under ~10 minutes on 2 cores (`cpujob --both` on the team machine):

    python benchmarks/real_model.py --part load        # conversion into a fresh home, cached load
    python benchmarks/real_model.py --part ppl         # Python-docs validation split + a chosen text
    python benchmarks/real_model.py --part sparsity    # act(gate) per layer, several thresholds
    python benchmarks/real_model.py --part throughput  # caching tokens/s: ours, TL, SAELens
    python benchmarks/real_model.py --part cache       # ~200k tokens of blocks.15.hook_resid_post to disk
    python benchmarks/real_model.py --part sae         # TopK and Mutual Choice SAEs on that cache, evaluated

Every figure is printed and merged into benchmarks/results/real_model.json (RESULTS.md, "A real
model: SmolLM2-135M-Instruct (Q4_1 dequantized)"). Needs `./install.sh --real-model`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import textwrap
import time
from datetime import date
from pathlib import Path

import torch

from workbench.activations import ActivationBatch, ActivationStore, CachedSource, ModelSource, StoreConfig, capture
from workbench.corpus import encode_corpus, python_docs_corpus, windows
from workbench.gguf_model import SMOLLM2, ensure_converted
from workbench.hub import load_model, record_model
from workbench.models import workbench_home

NAME = SMOLLM2.name
LAYER = 15  # the middle of 30 blocks
HOOK = f"blocks.{LAYER}.hook_resid_post"
SEQ = 128  # tokens per window after BOS
OUT_JSON = Path(__file__).parent / "results" / "real_model.json"
BENCH_HOME = "real-model-bench"  # under workbench_home(): the activation cache and the SAE runs


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.machine()} {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"


def record(part: str, figures: dict) -> None:
    """Merge this part's figures into the results JSON (with the date and machine)."""
    OUT_JSON.parent.mkdir(exist_ok=True)
    got = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}
    got[part] = {"date": str(date.today()), "machine": machine(), **figures}
    OUT_JSON.write_text(json.dumps(got, indent=1))


def model_and_tokenizer():
    t0 = time.perf_counter()
    model, tok = load_model(NAME)
    print(f"cached load: {time.perf_counter() - t0:.1f} s")
    return model, tok


# --- load ----------------------------------------------------------------------------------------


def part_load() -> dict:
    """The one-time conversion into a fresh temporary home (deleted after), then a cached load."""
    with tempfile.TemporaryDirectory(dir=workbench_home().parent) as home:
        t0 = time.perf_counter()
        conv = ensure_converted(SMOLLM2, home)
        first = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in conv.folder.iterdir())
        t0 = time.perf_counter()
        ensure_converted(SMOLLM2, home)
        check = time.perf_counter() - t0
    ensure_converted(SMOLLM2, workbench_home())
    t0 = time.perf_counter()
    load_model(NAME)
    load = time.perf_counter() - t0
    print(f"first use (hash check + conversion): {first:.1f} s, of which conversion {conv.seconds:.1f} s")
    print(f"float32 folder: {size / 1e6:.0f} MB; a later call's header + sha256 check: {check:.2f} s")
    print(f"cached load_model({NAME!r}): {load:.1f} s")
    return {
        "first_use_s": first,
        "conversion_s": conv.seconds,
        "folder_mb": size / 1e6,
        "check_s": check,
        "load_s": load,
    }


# --- perplexity ----------------------------------------------------------------------------------


def chosen_text() -> tuple[str, str]:
    """A text of our choice: the source code of the standard library's textwrap module (Python code
    with comments and docstrings, not in the Python-docs corpus, which holds docstrings only)."""
    return "stdlib textwrap.py source", inspect.getsource(textwrap)


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, batch: int = 16) -> tuple[float, float, int]:
    """exp(mean next-token loss) over consecutive windows (BOS first, the BOS position not scored),
    with a 95% interval from the spread of the windows' mean losses. Returns (ppl, half-width in
    nats, tokens scored)."""
    per_window = []
    for chunk in tokens.split(batch):
        losses = model(chunk, return_type="loss", loss_per_token=True)  # [b, seq-1]
        per_window += losses.mean(-1).tolist()
    mean = statistics.fmean(per_window)
    half = 1.96 * statistics.stdev(per_window) / math.sqrt(len(per_window)) if len(per_window) > 1 else float("nan")
    return math.exp(mean), half, tokens.shape[0] * (tokens.shape[1] - 1)


def part_ppl(max_windows: int) -> dict:
    model, tok = model_and_tokenizer()
    out = {}
    name, text = chosen_text()
    for label, stream in [
        ("python-docs validation", encode_corpus(python_docs_corpus(), tok, "validation")),
        (name, torch.tensor(tok.encode(text))),
    ]:
        seqs = windows(stream, SEQ, bos_token_id=tok.bos_token_id, n=max_windows)
        t0 = time.perf_counter()
        ppl, half, n = perplexity(model, seqs)
        dt = time.perf_counter() - t0
        lo, hi = ppl * math.exp(-half), ppl * math.exp(half)
        print(f"perplexity on {label}: {ppl:.2f} (95% interval {lo:.2f}-{hi:.2f}) over {n:,} tokens, {dt:.0f} s")
        out[label] = {"ppl": ppl, "lo": lo, "hi": hi, "tokens": n, "seconds": dt}
    return out


# --- sparsity ------------------------------------------------------------------------------------


def part_sparsity(n_windows: int) -> dict:
    """act(gate) = SiLU(gate pre-activation) per layer (the probe), at several |a| thresholds, and the
    fraction of gate pre-activations above 0 (what a ReLU MLP would leave nonzero)."""
    from workbench.probes.sparsity import activation_sparsity

    model, tok = model_and_tokenizer()
    seqs = windows(
        encode_corpus(python_docs_corpus(), tok, "validation"), SEQ, bos_token_id=tok.bos_token_id, n=n_windows
    )
    t0 = time.perf_counter()
    out: dict = {"windows": n_windows, "tokens": n_windows * SEQ, "threshold": {}}
    for thr in (0.01, 0.05, 0.1):
        r = activation_sparsity(model, seqs, threshold=thr)
        out["threshold"][str(thr)] = {"active_frac": r.active_frac, "std": r.active_frac_std}
    names = [f"blocks.{l}.mlp.hook_pre" for l in range(model.cfg.n_layers)]
    positive = torch.zeros(model.cfg.n_layers, n_windows)
    with torch.no_grad():
        for i, chunk in enumerate(seqs.split(8)):
            _, cache = model.run_with_cache(chunk, names_filter=lambda n: n in names)
            for l, name in enumerate(names):
                positive[l, i * 8 : i * 8 + len(chunk)] = (cache[name][:, 1:] > 0).float().mean((1, 2))
    mean, half = positive.mean(1), 1.96 * positive.std(1) / math.sqrt(n_windows)
    out["gate_positive"] = {"mean": mean.tolist(), "half_width": half.tolist()}
    out["seconds"] = time.perf_counter() - t0
    print(f"{n_windows} windows x {SEQ} tokens of the Python-docs validation split, {out['seconds']:.0f} s")
    print("layer  " + "  ".join(f"|a|>{t:<5}" for t in out["threshold"]) + "  gate>0 (95% interval over windows)")
    for l in range(model.cfg.n_layers):
        row = "  ".join(f"{out['threshold'][t]['active_frac'][l]:9.3f}" for t in out["threshold"])
        print(f"{l:5d}  {row}  {mean[l]:.3f} ± {half[l]:.3f}")
    for t, v in out["threshold"].items():
        print(f"mean over layers |a|>{t}: {statistics.fmean(v['active_frac']):.3f}")
    print(f"mean over layers gate>0: {float(mean.mean()):.3f}")
    return out


# --- caching throughput --------------------------------------------------------------------------


class StoppedSource(ModelSource):
    """ModelSource's windows, with the forward pass stopped after the hooked block
    (`run_with_cache(..., stop_at_layer=L+1)`, which a TransformerBridge honours in TL 3.9)."""

    def chunk(self, i: int) -> ActivationBatch:
        per_seq = self.cfg.seq_len
        n_seq = -(-self.cfg.buffer_tokens // per_seq)
        gen = torch.Generator().manual_seed(self.cfg.seed * 7_919 + i)
        seqs = windows(self.stream, self.cfg.seq_len, bos_token_id=self.bos, n=n_seq, generator=gen)
        acts = [stopped_capture(self.model, b, self.cfg.hook_name)[:, 1:].reshape(-1, self.d) for b in seqs.split(32)]
        return ActivationBatch(torch.cat(acts)[: self.cfg.buffer_tokens], None)


def stopped_capture(model, tokens: torch.Tensor, hook: str) -> torch.Tensor:
    layer = int(hook.split(".")[1])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=layer + 1)
    return cache[hook]


def saelens_store(model, seqs: torch.Tensor):
    """SAELens' ActivationsStore on the same bridge (its get_activations stops at the hooked layer)."""
    from datasets import Dataset
    from sae_lens.training.activations_store import ActivationsStore

    return ActivationsStore(
        model,
        Dataset.from_dict({"input_ids": seqs.tolist()}),
        streaming=False,
        hook_name=HOOK,
        hook_head_index=None,
        context_size=seqs.shape[1],
        d_in=model.cfg.d_model,
        n_batches_in_buffer=2,
        total_training_tokens=10**7,
        store_batch_size_prompts=len(seqs),
        train_batch_size_tokens=4096,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
    )


def part_throughput(rounds: int, batch: int) -> dict:
    model, tok = model_and_tokenizer()
    stream = encode_corpus(python_docs_corpus(), tok, "train")
    seqs = windows(stream, SEQ, bos_token_id=tok.bos_token_id, n=batch, generator=torch.Generator().manual_seed(0))
    store = saelens_store(model, seqs)
    ways = {
        "workbench capture (all 30 layers)": lambda: capture(model, seqs, HOOK)[0],
        "workbench, stopped at the layer": lambda: stopped_capture(model, seqs, HOOK),
        "TL run_with_cache (all layers)": lambda: model.run_with_cache(seqs, names_filter=HOOK)[1][HOOK],
        "SAELens ActivationsStore.get_activations": lambda: store.get_activations(seqs),
    }
    ref = ways["workbench capture (all 30 layers)"]()
    for label, fn in ways.items():  # the same activations from every path (SAELens: [b, s, 1, d])
        got = fn().reshape(ref.shape)
        assert torch.allclose(got, ref, atol=1e-4), f"{label} differs from the full pass"
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):  # interleaved, so drift in the machine's load hits every way alike
        for label, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    n = seqs.numel()
    out = {"tokens_per_round": n, "rounds": rounds}
    print(f"{batch} x {SEQ + 1} tokens ({n:,}) at {HOOK}, {rounds} rounds interleaved, median:")
    for label, ts in times.items():
        med = statistics.median(ts)
        out[label] = {"median_s": med, "tokens_per_s": n / med}
        print(f"  {label:45s} {n / med:7.0f} tokens/s ({med:.2f} s)")
    return out


# --- the activation cache and the SAEs ------------------------------------------------------------


def cache_dir() -> Path:
    return workbench_home() / BENCH_HOME / f"cache-{HOOK}"


def part_cache(tokens: int, shard: int) -> dict:
    from workbench.activations import cache_activations

    model, tok = model_and_tokenizer()
    stream = encode_corpus(python_docs_corpus(), tok, "train")
    n_chunks = -(-tokens // shard)
    source = StoppedSource(model, stream, StoreConfig(HOOK, buffer_tokens=shard, seq_len=SEQ), tok.bos_token_id)
    out = cache_dir()
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cache_activations(source, out, n_chunks, metadata={"model": NAME, "hook": HOOK, "corpus": "python-docs"})
    dt = time.perf_counter() - t0
    n = n_chunks * shard
    print(f"cached {n:,} tokens of {HOOK} (train split of {len(stream):,} tokens) in {dt:.0f} s: {n / dt:.0f} tokens/s")
    return {"tokens": n, "seconds": dt, "tokens_per_s": n / dt, "stream_tokens": len(stream)}


def part_sae(total_tokens: int, eval_windows: int, rules: list[str]) -> dict:
    from workbench.runs import RunDir
    from workbench.sae import SAEConfig, SAETrainConfig, train_sae
    from workbench.sae.run_eval import evaluate_sae, held_out_windows

    model, tok = model_and_tokenizer()
    source = CachedSource(cache_dir())
    split, val = held_out_windows(python_docs_corpus(), tok, SEQ, eval_windows)
    out = {"cache_tokens": source.n_tokens, "train_tokens": total_tokens, "eval_windows": eval_windows}
    for rule in rules:
        run = workbench_home() / BENCH_HOME / f"sae-{rule}"
        shutil.rmtree(run, ignore_errors=True)
        cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=4608, k=32, selection=rule, hook_name=HOOK, model_name=NAME)
        t0 = time.perf_counter()
        sae = train_sae(cfg, SAETrainConfig(total_tokens=total_tokens), ActivationStore(source, 4096), RunDir(run))
        train_s = time.perf_counter() - t0
        record_model(run, NAME, corpus="python-docs")
        t0 = time.perf_counter()
        res = evaluate_sae(run, model, sae, tok, val, model_name=NAME, split=split)
        eval_s = time.perf_counter() - t0
        got = {k: v for k, v in dataclasses.asdict(res).items() if isinstance(v, (int, float, str))}
        got |= {"train_s": train_s, "eval_s": eval_s, "run": str(run)}
        out[rule] = got
        print(f"{rule}: trained on {total_tokens:,} tokens in {train_s:.0f} s, evaluated in {eval_s:.0f} s ({run})")
        for k, v in got.items():
            if isinstance(v, float):
                print(f"  {k}: {v:.4g}")
    print("sparse probing: not run: its concepts are labelled on bytes, and this tokenizer is BPE")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", required=True, choices=["load", "ppl", "sparsity", "throughput", "cache", "sae"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--ppl-windows", type=int, default=400, help="at most this many windows of 128 tokens per text")
    ap.add_argument("--sparsity-windows", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds")
    ap.add_argument("--batch", type=int, default=8, help="throughput: windows of 128 tokens per forward")
    ap.add_argument("--tokens", type=int, default=200_704, help="cache: activations to cache (49 shards of 4096)")
    ap.add_argument("--shard", type=int, default=4096, help="cache: activations per shard")
    ap.add_argument(
        "--sae-tokens", type=int, default=1_003_520, help="sae: training tokens per SAE (epochs of the cache)"
    )
    ap.add_argument("--eval-windows", type=int, default=16, help="sae: held-out windows for FVU / CE recovered")
    ap.add_argument("--rules", nargs="+", default=["topk", "mutual_choice"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{date.today()} {machine()}; {SMOLLM2.description}")
    t0 = time.perf_counter()
    if args.part == "load":
        figures = part_load()
    elif args.part == "ppl":
        figures = part_ppl(args.ppl_windows)
    elif args.part == "sparsity":
        figures = part_sparsity(args.sparsity_windows)
    elif args.part == "throughput":
        figures = part_throughput(args.rounds, args.batch)
    elif args.part == "cache":
        figures = part_cache(args.tokens, args.shard)
    else:
        figures = part_sae(args.sae_tokens, args.eval_windows, args.rules)
    figures["part_s"] = time.perf_counter() - t0
    print(f"part {args.part}: {figures['part_s']:.0f} s")
    record(args.part, figures)


if __name__ == "__main__":
    main()
