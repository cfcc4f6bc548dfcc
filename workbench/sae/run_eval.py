"""Evaluate a trained SAE run: results.json (`SAERunResult`), features.safetensors, for an SAE on an
attention output (blocks.L.attn.hook_z) attention.safetensors (head shares and DFA of the top
contexts, `attention.AttentionTable`), output_scores.safetensors (every latent's output score,
`steer.directions.output_scores`, where its decoder writes into the residual stream) and, on
byte-level models, usefulness.json (sparse probing, absorption-style).

A transcoder (SAEConfig.transcoder) gets the same files from the same stages (transcoder_eval.py):
FVU of y at its target_hook against ŷ (skip term included), CE with ŷ spliced at target_hook from
the x its hook_name saw in the same forward, against zero and mean ablation of the MLP's output;
its feature table is an SAE's (the encoder reads x); output scores push its unit decoder rows
where they write. Sparse probing and absorption-style are left out (the decoder is not in x's space).

Three callers, one computation (`evaluate_sae`):
- `python -m workbench train-sae` after training, unless --no-eval (`evaluate_sae_run`);
- the viewer, for a run trained with --no-eval (`evaluate_recorded_run`: the model, its tokenizer
  and the text all come from the run's own config.json record);
- the demo's SAE stage.
Each step is a stage of a `BuildStatus` (what the viewer's page shows live) and a step of one
tqdm bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..viewer.build_status import BuildStatus

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor
    from transformer_lens import HookedTransformer

    from ..corpus import Tokenizer
    from ..results import SAERunResult
    from .model import SparseAutoencoder

EVAL_STAGES = (
    "activations",
    "reconstruction",
    "CE loss and KL",
    "feature table",
    "head attribution",
    "output scores",
    "usefulness",
    "results.json",
)
SCORE_PROMPTS, SCORE_LEN = 8, 17  # output scores: the first 8 held-out windows, BOS + 16 tokens each
SCORE_LOGITS = 1 << 26  # logits held per chunk of latents (256 MB in float32): fewer on a large vocabulary
DEFAULT_WINDOWS = 32  # held-out windows when the run does not say (train-sae's --eval-windows default)


def load_text(path: str | None, text_field: str):
    """The user's corpus at `path`, or the embedded Python-docs corpus when None."""
    from ..corpus import load_corpus, python_docs_corpus

    return python_docs_corpus() if path is None else load_corpus(path, text_field)


def held_out_windows(text, tokenizer: Tokenizer, seq_len: int, n: int) -> tuple[str, Tensor]:
    """`n` windows of the corpus' validation split (its train split when that is shorter than one
    window), and which split it was."""
    from ..corpus import corpus_stream, windows

    try:
        split, stream = "validation", corpus_stream(text, tokenizer, "validation", seq_len)
    except ValueError:
        split, stream = "train", corpus_stream(text, tokenizer, "train", seq_len)
    return split, windows(stream, seq_len, bos_token_id=tokenizer.bos_token_id, n=n)


class _Steps:
    """One tqdm bar over the stages, and each stage marked in `status`."""

    def __init__(self, skip: dict[str, str], status: BuildStatus | None, progress: bool):
        self.status = status if status is not None else BuildStatus()
        self.status.begin([(name, None) for name in EVAL_STAGES])
        for name, reason in skip.items():
            self.status.skip(name, reason)
        self.bar = tqdm(total=len(EVAL_STAGES) - len(skip), desc="evaluate", disable=not progress)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_description(f"evaluate: {name}")
        with self.status.stage(name):
            yield
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _resumes_at_a_layer(model) -> bool:
    from transformer_lens import HookedTransformer

    return isinstance(model, HookedTransformer)


def _skipped(model, sae: SparseAutoencoder, byte_level: bool) -> dict[str, str]:
    """The evaluation's stages `sae` does not have, each with the reason the page shows."""
    from ..steer.directions import output_score_skip
    from ..steer.transcoder_scores import output_score_skip as transcoder_score_skip
    from .attention import is_hook_z

    skip = {}
    if not is_hook_z(sae.cfg.hook_name):
        skip["head attribution"] = "head shares and DFA: an SAE on an attention output (blocks.L.attn.hook_z) only"
    why = transcoder_score_skip(model, sae) if sae.cfg.transcoder else output_score_skip(model, sae)
    if why is not None:
        skip["output scores"] = why
    elif not _resumes_at_a_layer(model):
        skip["output scores"] = (
            "a TransformerBridge cannot resume at a layer (start_at_layer), so scoring every latent runs the "
            "whole model per latent chunk (about 25 minutes for 4608 latents on SmolLM2-135M, 2 cores): not "
            "part of the evaluation; call steer.directions.output_scores on the latents you want"
        )
    if not byte_level:
        skip["usefulness"] = "sparse probing's concepts are labelled on bytes: a byte-level model only"
    elif sae.cfg.transcoder:
        skip["usefulness"] = (
            "absorption-style compares decoder rows with a probe on the activations at hook_name; a "
            "transcoder's decoder writes at its target_hook"
        )
    return skip


def evaluate_sae(
    run_dir: str | Path,
    model: HookedTransformer,
    sae: SparseAutoencoder,
    tokenizer: Tokenizer,
    tokens: Int[Tensor, "n seq"],
    *,
    model_name: str = "",
    split: str = "validation",
    probe_tokens: Int[Tensor, "m seq"] | None = None,
    status: BuildStatus | None = None,
    progress: bool = True,
) -> SAERunResult:
    """Evaluate `sae` on held-out windows `tokens` (BOS first) and write the run's files; results.json
    last, so a run counts as evaluated only once everything is there. Sparse probing and
    absorption-style scores need byte-level text (their concepts are labelled on bytes): they run on
    `probe_tokens` (default `tokens`) only when `tokenizer` is the byte tokenizer."""
    import torch

    from ..activations import ActivationBatch, capture
    from ..corpus import ByteTokenizer
    from ..results import SAERunResult, write_results
    from ..runs import ATTENTION_FILE, FEATURES_FILE, OUTPUT_SCORES_FILE, RunDir
    from ..steer.directions import output_scores, save_output_scores
    from ..steer.transcoder_scores import transcoder_output_scores
    from . import transcoder_eval as te
    from .attention import attention_table, is_hook_z
    from .evaluate import feature_table, reconstruction_metrics, splice_metrics

    run, hook, transcoder = RunDir(run_dir), sae.cfg.hook_name, sae.cfg.transcoder
    if transcoder:
        te.check_transcoder(model, sae, "sae")
    skip = _skipped(model, sae, isinstance(tokenizer, ByteTokenizer))
    step = _Steps(skip, status, progress)
    try:
        with step("activations"):
            if transcoder:  # x at hook_name, y at target_hook
                batches = te.mlp_pairs(model, sae, tokens)
            else:
                acts = torch.cat([capture(model, chunk, hook)[0][:, 1:] for chunk in tokens.split(32)])  # BOS left out
                batches = [ActivationBatch(acts.reshape(-1, acts.shape[-1]), None)]
                del acts
        with step("reconstruction"):
            rec = reconstruction_metrics(sae, batches)
            del batches
        with step("CE loss and KL"):  # a transcoder's ŷ spliced at its target_hook
            spl = (
                te.ce_recovered_many(model, [sae], tokens)._asdict()
                if transcoder
                else splice_metrics(model, sae, hook, tokens)
            )
        with step("feature table"):
            table = feature_table(model, sae, hook, tokens, progress=progress)
            table.save(run.file(FEATURES_FILE))
        if is_hook_z(hook):
            with step("head attribution"):
                attention_table(model, sae, table).save(run.file(ATTENTION_FILE))
        del table
        if "output scores" not in skip:
            with step("output scores"):
                prompts = tokens[:SCORE_PROMPTS, :SCORE_LEN]
                chunk = max(1, min(256, SCORE_LOGITS // (prompts.numel() * model.cfg.d_vocab)))
                score = transcoder_output_scores if transcoder else output_scores
                scores = score(model, sae, prompts, chunk=chunk, progress=progress)
                save_output_scores(run.file(OUTPUT_SCORES_FILE), scores)
        if "usefulness" not in skip:
            with step("usefulness"):
                from .probing import evaluate_usefulness
                from .saebench_json import write_run_evals

                probe = tokens if probe_tokens is None else probe_tokens
                write_run_evals(
                    run.path,
                    evaluate_usefulness(model, sae, hook, probe, bos_token_id=tokenizer.bos_token_id),
                    sae.cfg,
                    model_name,
                )
        with step("results.json"):
            result = SAERunResult.from_metrics(rec, spl, eval_split=split, eval_windows=len(tokens))
            write_results(run, result)
    finally:
        step.close()
    return result


def evaluate_sae_run(out: str, model_name: str, corpus: str | None, text_field: str, n_windows: int) -> bool:
    """train-sae's evaluation: `evaluate_sae` on `n_windows` held-out windows of the corpus. False,
    with the reason printed, when the run's model cannot be loaded (e.g. a cache of synthetic
    vectors): the SAE itself is saved either way."""
    from ..hub import load_model
    from .io import load_sae

    sae = load_sae(out)
    try:
        model, tok = load_model(model_name)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(
            f"train-sae: {out}/sae.safetensors is saved, but it was not evaluated: its model {model_name!r} "
            f"cannot be loaded ({e}). Pass --no-eval to skip evaluation.",
            file=sys.stderr,
        )
        return False
    split, val = held_out_windows(load_text(corpus, text_field), tok, min(128, model.cfg.n_ctx - 1), n_windows)
    evaluate_sae(out, model, sae, tok, val, model_name=model_name, split=split)
    return True


def evaluate_recorded_run(
    run_dir: str | Path, n_windows: int | None = None, status: BuildStatus | None = None, progress: bool = True
) -> SAERunResult:
    """Evaluate an SAE run from what it recorded (the viewer's "compute the evaluation"): its model
    and tokenizer through `hub.model_for_run`, its corpus and text field from config.json,
    `n_windows` (default: the run's recorded eval_windows, else 32) held-out windows."""
    import json

    from ..hub import model_for_run
    from ..runs import CONFIG_FILE
    from .io import load_sae

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / CONFIG_FILE).read_text())
    status = status if status is not None else BuildStatus()
    status.begin([("model", None)] + [(name, None) for name in EVAL_STAGES])  # all shown from the start
    with status.stage("model"):
        sae = load_sae(run_dir)
        model, tok = model_for_run(run_dir)
        corpus = cfg.get("corpus")
        text = load_text(None if corpus in (None, "python-docs") else corpus, cfg.get("text_field", "text"))
        n = n_windows or cfg.get("eval_windows") or DEFAULT_WINDOWS
        split, val = held_out_windows(text, tok, min(128, model.cfg.n_ctx - 1), n)
    model_name = (cfg.get("model_source") or {}).get("model", sae.cfg.model_name)
    return evaluate_sae(
        run_dir, model, sae, tok, val, model_name=model_name, split=split, status=status, progress=progress
    )
