"""Our evaluations in SAEBench's per-eval JSON layout, so SAEBench's plotting reads them.

The layout is SAEBench's `BaseEvalOutput` (sae_bench/evals/base_eval_output.py): eval_type_id,
eval_config, eval_id, datetime_epoch_millis, eval_result_metrics (categories of flat metrics),
eval_result_details (one object per dataset or letter), sae_bench_commit_hash, sae_lens_id,
sae_lens_release_id, sae_lens_version, sae_cfg_dict, eval_result_unstructured. Field names of
the metrics follow its sparse_probing and absorption_first_letter outputs; `sae_bench_commit_hash`
says these numbers come from the workbench's offline reimplementation, not from SAEBench.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path

from ..runs import atomic_write_json
from .probing import ABSORPTION_CAVEAT, AbsorptionResult, ProbingConfig, SparseProbingResult

SAEBENCH_KS = (1, 2, 5, 10, 20, 50, 100)  # the k of SAEBench's sae_top_{k}_test_accuracy fields
NOT_SAEBENCH = "workbench offline reimplementation (not run by SAEBench)"
REQUIRED = (
    "eval_type_id",
    "eval_config",
    "eval_id",
    "datetime_epoch_millis",
    "eval_result_metrics",
    "eval_result_details",
    "sae_bench_commit_hash",
    "sae_lens_id",
    "sae_lens_release_id",
    "sae_lens_version",
    "sae_cfg_dict",
    "eval_result_unstructured",
)


def _envelope(eval_type_id: str, config: dict, metrics: dict, details: list, sae_cfg, unstructured) -> dict:
    try:
        from importlib.metadata import version

        lens_version = version("sae-lens")
    except Exception:  # noqa: BLE001 - a missing distribution only loses a metadata field
        lens_version = None
    cfg_dict = asdict(sae_cfg) if is_dataclass(sae_cfg) else (dict(sae_cfg) if sae_cfg else None)
    return {
        "eval_type_id": eval_type_id,
        "eval_config": config,
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        "sae_bench_commit_hash": NOT_SAEBENCH,
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": lens_version,
        "sae_cfg_dict": cfg_dict,
        "eval_result_unstructured": unstructured,
    }


def sparse_probing_json(
    result: SparseProbingResult, cfg: ProbingConfig = ProbingConfig(), sae_cfg=None, model_name: str = ""
) -> dict:
    """SAEBench's "sparse_probing" output: metrics {"llm": {...}, "sae": {...}} averaged over
    tasks, one detail per task (dataset_name = the concept). k values SAEBench has no field for
    stay in eval_result_unstructured; SAEBench's LLM top-k channel probes are not computed (null)."""
    mean = result.mean_accuracy()
    llm = {"llm_test_accuracy": result.mean_llm_accuracy(), **{f"llm_top_{k}_test_accuracy": None for k in SAEBENCH_KS}}
    sae = {"sae_test_accuracy": None, **{f"sae_top_{k}_test_accuracy": mean.get(k) for k in SAEBENCH_KS}}
    details = [
        {
            "dataset_name": t,
            "llm_test_accuracy": result.llm_accuracy[t],
            **{f"llm_top_{k}_test_accuracy": None for k in SAEBENCH_KS},
            "sae_test_accuracy": None,
            **{f"sae_top_{k}_test_accuracy": result.sae_accuracy[t].get(k) for k in SAEBENCH_KS},
        }
        for t in result.tasks
    ]
    config = {
        **asdict(cfg),
        "model_name": model_name,
        "dataset_names": result.tasks,
        "k_values": list(result.ks),
        "concepts": "byte-level concepts of workbench.sae.probing.byte_concepts",
    }
    return _envelope(
        "sparse_probing",
        config,
        {"llm": llm, "sae": sae},
        details,
        sae_cfg,
        {
            "mean_accuracy_by_k": {str(k): v for k, v in mean.items()},
            "n_train": result.n_train,
            "n_test": result.n_test,
        },
    )


def absorption_json(
    result: AbsorptionResult, cfg: ProbingConfig = ProbingConfig(), sae_cfg=None, model_name: str = ""
) -> dict:
    """SAEBench's "absorption_first_letter" output: metrics {"mean": {...}}, one detail per letter."""
    rows = result.letters
    sd = lambda xs: statistics.pstdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    fracs = [r.mean_absorption_fraction for r in rows]
    fulls = [r.full_absorption_rate for r in rows]
    splits = [len(r.main_latents) for r in rows]
    metrics = {
        "mean": {
            "mean_absorption_fraction_score": result.mean_absorption_fraction(),
            "mean_full_absorption_score": result.mean_full_absorption(),
            "mean_num_split_features": sum(splits) / max(1, len(splits)),
            "std_dev_absorption_fraction_score": sd(fracs),
            "std_dev_full_absorption_score": sd(fulls),
            "std_dev_num_split_features": sd(splits),
        }
    }
    details = [
        {
            "first_letter": r.letter,
            "mean_absorption_fraction": r.mean_absorption_fraction,
            "full_absorption_rate": r.full_absorption_rate,
            "num_full_absorption": r.num_full_absorption,
            "num_probe_true_positives": r.num_probe_true_positives,
            "num_split_features": len(r.main_latents),
        }
        for r in rows
    ]
    config = {**asdict(cfg), "model_name": model_name, "concept": "word starts with letter L, at its last byte"}
    return _envelope(
        "absorption_first_letter",
        config,
        metrics,
        details,
        sae_cfg,
        {
            "caveat": ABSORPTION_CAVEAT,
            "main_latents": {r.letter: r.main_latents for r in rows},
            "f1_by_k": {r.letter: r.f1_by_k for r in rows},
        },
    )


def write_sparse_probing_json(result: SparseProbingResult, path: str | Path, **kw) -> Path:
    atomic_write_json(Path(path), sparse_probing_json(result, **kw))
    return Path(path)


def write_absorption_json(result: AbsorptionResult, path: str | Path, **kw) -> Path:
    atomic_write_json(Path(path), absorption_json(result, **kw))
    return Path(path)


def read_eval_json(path: str | Path) -> dict:
    """A per-eval JSON file, checked for every top-level field of SAEBench's layout."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    missing = [k for k in REQUIRED if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not a SAEBench per-eval JSON file (missing {missing})")
    return data


USEFULNESS = "usefulness.json"  # in an SAE run folder: SAEEvals.to_dict()


def write_run_evals(
    folder: str | Path, evals, sae_cfg=None, model_name: str = "", cfg: ProbingConfig = ProbingConfig()
) -> Path:
    """An SAE run's usefulness.json (what the viewer and FeatureExplorer show) and the two
    SAEBench per-eval files beside it (saebench_sparse_probing.json, saebench_absorption_first_letter.json)."""
    folder = Path(folder)
    atomic_write_json(folder / USEFULNESS, evals.to_dict())
    write_sparse_probing_json(
        evals.sparse_probing, folder / "saebench_sparse_probing.json", cfg=cfg, sae_cfg=sae_cfg, model_name=model_name
    )
    write_absorption_json(
        evals.absorption,
        folder / "saebench_absorption_first_letter.json",
        cfg=cfg,
        sae_cfg=sae_cfg,
        model_name=model_name,
    )
    return folder / USEFULNESS


def read_run_evals(folder: str | Path) -> dict | None:
    """usefulness.json of an SAE run folder, or None where it was not computed (or is unreadable)."""
    path = Path(folder) / USEFULNESS
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and {"sparse_probing", "absorption"} <= set(data) else None
