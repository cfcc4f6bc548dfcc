"""Command line: `python -m workbench …` (also installed as `workbench`).

`workbench run <kind>` builds one run of a registered kind (workbench.kinds; a user's own with
--plugin module.path), its flags the documented fields of the kind's config dataclass.
train-sae's flags are the fields of SAEConfig and SAETrainConfig (cache-acts': of StoreConfig), with the
documentation, type and accepted values each field declares (fielddoc.py), so the command line and
the library train the same thing. Under torchrun every process runs the same command; --parallel picks how
one SAE is spread over them (see workbench/sae/parallel.py).

    workbench run heads --model workbench-tiny --out runs/heads --n-contexts 16
    workbench run my-kind --plugin my_module --corpus notes.txt --out runs/mine
    workbench cache-acts --hook blocks.1.hook_resid_post --tokens 2000000 --out cache/l1
    workbench train-sae --cache cache/l1 --d-sae 2048 --k 16 --out runs/sae
    torchrun --standalone --nproc_per_node 8 -m workbench train-sae --cache cache/l1 \\
        --d-sae 262144 --k 32 --parallel latent --device cuda --out runs/wide
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .activations import StoreConfig
from .fielddoc import FieldError, add_flags, field_help, from_args
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


def _plugins(argv: list[str] | None) -> list[str]:
    """The --plugin modules on a command line (loaded before the parser is built: their kinds are
    subcommands of `run`)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    return pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0].plugin


def _kind_flags(cls) -> list[str]:
    """A kind config's fields that are flags: the documented ones (nested configs and other
    Python-only fields are set by a recipe)."""
    return [f.name for f in dataclasses.fields(cls) if field_help(f)]


def _add_run_parsers(sub) -> dict[str, argparse.ArgumentParser]:
    from .kinds.registry import all_kinds

    run = sub.add_parser("run", help="build one run of a kind (sae, sparsity, heads, arrow, a plugin's)")
    kinds = run.add_subparsers(dest="kind", required=True, metavar="KIND")
    out = {}
    for name, kind in sorted(all_kinds().items()):
        if kind.config is type(None):  # a result-only kind (results.register): nothing to build
            continue
        kp = kinds.add_parser(name, help=kind.help)
        _add_source_flags(kp)
        kp.add_argument("--out", default=None, help=f"run directory (default: runs/{kind.folder})")
        kp.add_argument("--device", default="cpu", help="where the model runs (default: cpu)")
        kp.add_argument(
            "--plugin", action="append", default=[], help="a module that registers kinds (import path; repeatable)"
        )
        add_flags(kp, kind.config, only=_kind_flags(kind.config))
        out[name] = kp
    return out


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
    tr.add_argument(
        "--no-health",
        action="store_true",
        help="no training-health reports or alarms in metrics.jsonl and on the output (workbench/sae/health.py)",
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
    runs = _add_run_parsers(sub)
    return ap, {"cache-acts": ca, "train-sae": tr, "train-default": td, **{f"run {k}": p for k, p in runs.items()}}


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
    from .kinds.registry import load_plugin

    for module in _plugins(argv):
        load_plugin(module)
    ap, subs = _parsers()
    args = ap.parse_args(argv)
    if args.command == "run":
        try:
            kind_config(args)
        except FieldError as e:
            subs[f"run {args.kind}"].error(f"argument --{e.field.replace('_', '-')}: {e}")
        except (TypeError, ValueError) as e:
            subs[f"run {args.kind}"].error(str(e))
    if args.command == "train-sae":
        try:  # before any model loads; d_in (known once the source is) is not checked against anything here
            train_configs(args, d_in=1)
        except FieldError as e:
            subs["train-sae"].error(f"argument --{e.field.replace('_', '-')}: {e}")
    return args


def kind_config(args: argparse.Namespace):
    """The config a parsed `run <kind>` command line asks for."""
    from .fielddoc import check_choices
    from .kinds.registry import get_kind

    cfg = from_args(
        get_kind(args.kind).config, argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "kind"})
    )
    check_choices(cfg)
    return cfg


def _model_input(name: str, device: str):
    """--model as the ModelInput a build takes: workbench-tiny (with its training run, for the
    checkpoints), a save_pretrained folder or a TransformerLens name."""
    from .hub import WORKBENCH_NAMES, default_model_dir, load_model
    from .kinds.registry import ModelInput
    from .models import DEFAULT_MODEL

    model, tok = load_model(name, device=device)
    if name in WORKBENCH_NAMES:
        direction = "backward" if name.endswith("backward") else "forward"
        return ModelInput(model, name, DEFAULT_MODEL, default_model_dir(direction)), tok
    return ModelInput(model, name), tok


def run_kind(args: argparse.Namespace) -> int:
    """`workbench run <kind>`: the model, the corpus as train/validation token streams, the build."""
    from .corpus import encode_corpus
    from .hub import record_model
    from .kinds.registry import get_kind
    from .kinds.runner import build_run
    from .sae.run_eval import load_text
    from .token_data import TokenData, default_data

    kind, cfg = get_kind(args.kind), kind_config(args)
    model, tok = _model_input(args.model, args.device)
    if args.corpus is None and args.model in ("workbench-tiny",):
        data = default_data()
    else:
        text = load_text(args.corpus, args.text_field)
        data = TokenData(encode_corpus(text, tok, "train"), encode_corpus(text, tok, "validation"), tok)
    out = Path(args.out) if args.out else Path("runs") / kind.folder
    build_run(kind, cfg, model, data, out, progress=True)
    corpus = str(Path(args.corpus).resolve()) if args.corpus else "python-docs"
    record_model(out, args.model, corpus=corpus, text_field=args.text_field)
    print(f"wrote {out}/results.json ({kind.name} run)")
    return 0


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
    target_hook: str = "",
):
    from .activations import ModelSource, StoreConfig
    from .corpus import corpus_stream
    from .hub import load_model
    from .sae.run_eval import load_text

    model, tok = load_model(model_name, device=device)
    seq = min(128, model.cfg.n_ctx - 1)
    cfg = StoreConfig(
        hook, seq_len=seq, with_grads=with_grads, seed=seed, buffer_tokens=buffer_tokens, target_hook=target_hook
    )
    return ModelSource(model, corpus_stream(load_text(corpus, text_field), tok, "train", seq), cfg, tok.bos_token_id)


def cache_acts(args: argparse.Namespace) -> int:
    from .activations import cache_activations
    from .hub import model_record

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
    from .hub import model_record, record_model
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
            args.model,
            args.hook,
            values["device"],
            gradient,
            values["seed"],
            args.buffer_tokens,
            corpus,
            text_field,
            values.get("target_hook") or "",  # a transcoder's store yields its targets too
        )
    corpus = None if corpus is None else str(Path(corpus).resolve())
    sae_cfg, train_cfg = train_configs(args, src.d, hook, model_name)
    store = ActivationStore(src, train_cfg.batch_size, seed=train_cfg.seed, rank=rank, world_size=world)
    from .sae.health import HealthMonitor

    monitor = None if args.no_health else HealthMonitor()
    train_sae(sae_cfg, train_cfg, store, RunDir(args.out), progress=rank == 0, monitor=monitor)
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
    commands = {"cache-acts": cache_acts, "train-sae": train, "train-default": train_default, "run": run_kind}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
