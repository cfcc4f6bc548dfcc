"""Evaluate a finished SAE run: results.json, features.safetensors and (byte models) usefulness.

`python -m workbench train-sae` calls this after training (unless --no-eval)."""

from __future__ import annotations

import sys


def load_text(path: str | None, text_field: str):
    """The user's corpus at `path`, or the embedded Python-docs corpus when None."""
    from ..corpus import load_corpus, python_docs_corpus
    return python_docs_corpus() if path is None else load_corpus(path, text_field)


def evaluate_sae_run(out: str, model_name: str, corpus: str | None, text_field: str, n_windows: int) -> bool:
    """results.json and features.safetensors for a finished SAE run, as the demo writes them, on
    the corpus' validation split (its train split when that is shorter than a window). False, with
    the reason printed, when the run's model cannot be loaded (e.g. a cache of synthetic vectors):
    the SAE itself is saved either way."""
    import torch

    from ..activations import ActivationBatch, capture
    from ..corpus import ByteTokenizer, corpus_stream, windows
    from ..models import load_model
    from ..runs import RunDir
    from ..sae.evaluate import feature_table, reconstruction_metrics, splice_metrics
    from ..sae.io import load_sae

    run, sae = RunDir(out), load_sae(out)
    try:
        model, tok = load_model(model_name)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"train-sae: {out}/sae.safetensors is saved, but it was not evaluated: its model {model_name!r} "
              f"cannot be loaded ({e}). Pass --no-eval to skip evaluation.", file=sys.stderr)
        return False
    seq, hook, text = min(128, model.cfg.n_ctx - 1), sae.cfg.hook_name, load_text(corpus, text_field)
    try:
        split, stream = "validation", corpus_stream(text, tok, "validation", seq)
    except ValueError:
        split, stream = "train", corpus_stream(text, tok, "train", seq)
    val = windows(stream, seq, bos_token_id=tok.bos_token_id, n=n_windows)
    acts = torch.cat([capture(model, chunk, hook)[0][:, 1:] for chunk in val.split(32)])  # BOS left out
    rec = reconstruction_metrics(sae, [ActivationBatch(acts.reshape(-1, acts.shape[-1]), None)])
    spl = splice_metrics(model, sae, hook, val)
    feature_table(model, sae, hook, val).save(run.file("features.safetensors"))
    if isinstance(tok, ByteTokenizer):  # the probing concepts are labelled on bytes
        from ..sae.probing import evaluate_usefulness
        from ..sae.saebench_json import write_run_evals
        write_run_evals(out, evaluate_usefulness(model, sae, hook, val, bos_token_id=tok.bos_token_id), sae.cfg,
                        model_name)
    run.write_results({**rec, **spl, "eval_split": split, "eval_windows": len(val)})
    return True
