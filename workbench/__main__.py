"""Command line: `python -m workbench …` (also installed as `workbench`).

The flags are the fields of SAEConfig and SAETrainConfig (cache-acts': of StoreConfig), with the
documentation, type and accepted values each field declares (fielddoc.py), so the command line and
the library train the same thing. Under torchrun every process runs the same command; --parallel picks how
one SAE is spread over them (see workbench/sae/parallel.py).

    workbench cache-acts --hook blocks.1.hook_resid_post --tokens 2000000 --out cache/l1
    workbench train-sae --cache cache/l1 --d-sae 2048 --k 16 --out runs/sae
    torchrun --standalone --nproc_per_node 8 -m workbench train-sae --cache cache/l1 \\
        --d-sae 262144 --k 32 --parallel latent --device cuda --out runs/wide
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .activations import StoreConfig
from .fielddoc import FieldError, add_flags, from_args
from .sae.config import SAEConfig, SAETrainConfig

FILLED_BY_RUN = ("d_in", "hook_name", "model_name")  # SAEConfig fields the data source decides, not a flag
STORE_FLAGS = {"hook_name": "hook", "buffer_tokens": "shard_tokens", "with_grads": "with_grads", "seed": "seed"}


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="workbench-tiny",
        help="workbench-tiny, a folder saved with Hugging "
        "Face save_pretrained (GPT-2, GPT-NeoX/Pythia, Llama, ...), or a TransformerLens name",
    )
    parser.add_argument(
        "--corpus",
        default=None,
        help="your own text: a UTF-8 file, a .jsonl file, or a folder "
        "of .txt/.md/.py files (default: the embedded Python-docs corpus)",
    )
    parser.add_argument("--text-field", default="text", help="the field holding the text in .jsonl rows")


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    ap = argparse.ArgumentParser(prog="workbench")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine two threads collapse when "
        "another process is busy; see benchmarks/RESULTS.md, 'Cold start'); 0 keeps torch's default",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("cache-acts", help="write a model's activations at a hook as safetensors shards")
    _add_source_flags(ca)
    add_flags(ca, StoreConfig, only=STORE_FLAGS, rename=STORE_FLAGS)
    ca.add_argument("--tokens", type=int, required=True, help="activations to write (whole shards)")
    ca.add_argument("--device", default="cpu", help="where the model runs (default: cpu)")
    ca.add_argument("--out", required=True, help="the cache folder (shards and manifest.json)")
    tr = sub.add_parser("train-sae", help="train an SAE on a model's activations at a hook, or on a cache")
    _add_source_flags(tr)
    tr.add_argument(
        "--no-eval",
        action="store_true",
        help="skip results.json and features.safetensors (the viewer then offers to compute them)",
    )
    add_flags(tr, StoreConfig, only={"buffer_tokens"})  # with --hook: a live model's chunks
    tr.add_argument(
        "--eval-windows", type=int, default=32, help="held-out windows for results.json and the feature table"
    )
    tr.add_argument("--hook", help="TransformerLens hook name, e.g. blocks.1.hook_resid_post (without --cache)")
    tr.add_argument("--cache", help="a folder written by cache-acts (the way to train on many ranks)")
    tr.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    add_flags(tr, SAEConfig, skip=FILLED_BY_RUN)
    add_flags(tr, SAETrainConfig)
    td = sub.add_parser(
        "train-default",
        help="retrain the embedded default workbench-tiny (every seed, both "
        "directions) and pack it into data/ (see data/README.md)",
    )
    td.add_argument("--out", default="runs/workbench-tiny", help="where the full-precision runs are trained")
    td.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    td.add_argument("--jobs", type=int, default=2, help="models trained at once (one CPU thread each)")
    td.add_argument("--steps", type=int, default=None, help="fewer steps than the recipe (a quick check)")
    td.add_argument(
        "--pack",
        default=None,
        help="write the shipped layout here (default: data/workbench-tiny for the full recipe, nothing with --steps)",
    )
    td.add_argument(
        "--primes",
        action="store_true",
        help="instead, the arrow probe's primes×product pairs (runs/arrow-primes, packed into data/arrow-primes)",
    )
    return ap, {"cache-acts": ca, "train-sae": tr, "train-default": td}


def train_configs(
    args: argparse.Namespace, d_in: int, hook_name: str = "", model_name: str = ""
) -> tuple[SAEConfig, SAETrainConfig]:
    """The SAE and training configs a parsed `train-sae` command line asks for."""
    return (
        from_args(SAEConfig, args, d_in=d_in, hook_name=hook_name, model_name=model_name),
        from_args(SAETrainConfig, args),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check a command line; a value its config refuses exits as argparse does, naming the flag."""
    ap, subs = _parsers()
    args = ap.parse_args(argv)
    if args.command == "train-sae":
        try:  # before any model loads; d_in (known once the source is) is not checked against anything here
            train_configs(args, d_in=1)
        except FieldError as e:
            subs["train-sae"].error(f"argument --{e.field.replace('_', '-')}: {e}")
    return args


def train_default(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from . import default_model as dm
    from .models import DEFAULT_TRAIN

    if args.primes:
        out = args.out if args.out != "runs/workbench-tiny" else "runs/arrow-primes"
        man = dm.train_primes(out, tuple(args.seeds), args.pack)
        print(f"packed {len(man['files'])} files into {args.pack or dm.primes_dir()}")
        return 0
    cfg = (
        DEFAULT_TRAIN
        if args.steps is None
        else replace(
            DEFAULT_TRAIN,
            steps=args.steps,
            checkpoint_steps=tuple(s for s in DEFAULT_TRAIN.checkpoint_steps if s < args.steps),
        )
    )
    dm.train_default(args.out, tuple(args.seeds), jobs=args.jobs, train_cfg=cfg)
    dest = args.pack or (None if args.steps is None else "")
    if dest != "":
        man = dm.pack(args.out, dest)
        print(f"packed {len(man['files'])} files into {dest or dm.shipped_dir()}")
    return 0


def _model_source(
    model_name: str,
    hook: str,
    device: str,
    with_grads: bool,
    seed: int,
    buffer_tokens: int,
    corpus: str | None = None,
    text_field: str = "text",
):
    from .activations import ModelSource, StoreConfig
    from .corpus import corpus_stream
    from .models import load_model
    from .sae.run_eval import load_text

    model, tok = load_model(model_name, device=device)
    seq = min(128, model.cfg.n_ctx - 1)
    cfg = StoreConfig(hook, seq_len=seq, with_grads=with_grads, seed=seed, buffer_tokens=buffer_tokens)
    return ModelSource(model, corpus_stream(load_text(corpus, text_field), tok, "train", seq), cfg, tok.bos_token_id)


def cache_acts(args: argparse.Namespace) -> int:
    from .activations import cache_activations
    from .pretrained import model_record

    if args.buffer_tokens < 1:
        raise SystemExit(f"cache-acts: --shard-tokens must be at least 1, got {args.buffer_tokens}")
    if args.tokens < args.buffer_tokens:
        raise SystemExit(
            f"cache-acts: --tokens {args.tokens} is less than one shard (--shard-tokens {args.buffer_tokens}); "
            "the cache holds whole shards"
        )
    src = _model_source(
        args.model,
        args.hook_name,
        args.device,
        args.with_grads,
        args.seed,
        args.buffer_tokens,
        args.corpus,
        args.text_field,
    )
    n = args.tokens // args.buffer_tokens
    corpus = None if args.corpus is None else str(Path(args.corpus).resolve())  # found again from anywhere
    meta = {
        "model": model_record(args.model)["model"],
        "hook_name": args.hook_name,
        "seed": args.seed,
        "corpus": corpus,
        "text_field": args.text_field,
    }
    cache_activations(src, args.out, n, metadata=meta)
    print(f"wrote {n} shards of {args.buffer_tokens} activations to {args.out}")
    return 0


def train(args: argparse.Namespace) -> int:
    from .activations import ActivationStore, CachedSource
    from .pretrained import model_record, record_model
    from .runs import RunDir
    from .sae.parallel import init_from_env
    from .sae.selection import get_rule
    from .sae.trainer import train_sae

    if (args.cache is None) == (args.hook is None):
        raise SystemExit("train-sae: give exactly one of --hook (a live model) or --cache (a cache-acts folder)")
    rank, local_rank, world = init_from_env()
    values = vars(args)
    if world > 1 and values["device"] == "cuda":
        values["device"] = f"cuda:{local_rank}"  # one GPU per process
    gradient = get_rule(values["selection"]).needs_grads  # g-SAE reads dL/d(activation)
    if args.cache is not None:
        src = CachedSource(args.cache)
        meta = src.manifest["metadata"]
        hook, model_name = meta.get("hook_name", ""), meta.get("model", "")
        corpus = args.corpus or meta.get("corpus")  # the user's --corpus and --text-field win over the cache's
        text_field = args.text_field if args.corpus else meta.get("text_field", args.text_field)
    else:
        hook, model_name = args.hook, model_record(args.model)["model"]
        corpus, text_field = args.corpus, args.text_field
        src = _model_source(
            args.model, args.hook, values["device"], gradient, values["seed"], args.buffer_tokens, corpus, text_field
        )
    corpus = None if corpus is None else str(Path(corpus).resolve())
    sae_cfg, train_cfg = train_configs(args, src.d, hook, model_name)
    store = ActivationStore(src, train_cfg.batch_size, seed=train_cfg.seed, rank=rank, world_size=world)
    train_sae(sae_cfg, train_cfg, store, RunDir(args.out), progress=rank == 0)
    if rank == 0:
        print(f"saved {args.out}/sae.safetensors")
        record_model(args.out, model_name, corpus=corpus or "python-docs", text_field=text_field)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank == 0 and not args.no_eval:  # on the CPU, from the saved SAE: the whole SAE on every layout
        from .sae.run_eval import evaluate_sae_run

        if evaluate_sae_run(args.out, model_name, corpus, text_field, args.eval_windows):
            print(f"wrote {args.out}/results.json and features.safetensors")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    return {"cache-acts": cache_acts, "train-sae": train, "train-default": train_default}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
