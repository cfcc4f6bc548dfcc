"""Command line: `python -m workbench train-sae …` (also installed as `workbench`).

The flags are the fields of SAEConfig, SAETrainConfig and StoreConfig, so the command line and
the library train the same thing. Single process; multi-process training is not built yet.

    python -m workbench train-sae --hook blocks.1.hook_resid_post --d-sae 2048 --k 16 --out runs/sae
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .sae.config import SAEConfig
from .sae.trainer import SAETrainConfig


def _add_fields(parser: argparse.ArgumentParser, cls, skip: set[str]) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip or f.type not in ("int", "float", "str", "bool", "int | None", "float | None",
                                            "bool | None", "str | None"):
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type.split(" |")[0], str)
        flag = "--" + f.name.replace("_", "-")
        if f.type.startswith("bool"):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
        else:
            parser.add_argument(flag, type=kind, default=f.default)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbench")
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train-sae", help="train an SAE on a model's activations at a hook")
    tr.add_argument("--model", default="workbench-tiny", help="workbench-tiny or a TransformerLens pretrained name")
    tr.add_argument("--hook", required=True, help="TransformerLens hook name, e.g. blocks.1.hook_resid_post")
    tr.add_argument("--d-sae", type=int, required=True)
    tr.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    _add_fields(tr, SAEConfig, skip={"d_in", "d_sae", "hook_name", "model_name"})
    _add_fields(tr, SAETrainConfig, skip=set())
    args = ap.parse_args(argv)

    from .activations import ActivationStore, ModelSource, StoreConfig, hook_dim
    from .corpus import encode_corpus, python_docs_corpus
    from .models import load_model
    from .runs import RunDir
    from .sae.trainer import train_sae

    model, tok = load_model(args.model, device=args.device)
    d = hook_dim(model, args.hook)
    values = vars(args)
    sae_cfg = SAEConfig(d_in=d, d_sae=args.d_sae, hook_name=args.hook, model_name=args.model,
                        **{f.name: values[f.name] for f in dataclasses.fields(SAEConfig)
                           if f.name in values and f.name not in ("d_in", "d_sae")})
    train_cfg = SAETrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(SAETrainConfig)
                                  if f.name in values})
    seq = min(128, model.cfg.n_ctx - 1)
    src = ModelSource(model, encode_corpus(python_docs_corpus(), tok, "train"),
                      StoreConfig(args.hook, seq_len=seq, with_grads=sae_cfg.selection == "gradient",
                                  seed=train_cfg.seed), tok.bos_token_id)
    train_sae(sae_cfg, train_cfg, ActivationStore(src, train_cfg.batch_size, seed=train_cfg.seed), RunDir(args.out))
    print(f"saved {args.out}/sae.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
