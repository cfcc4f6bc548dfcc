"""The head explorer's data: every per-head score with its interval, the roles, attention
patterns on a few contexts and DuoAttention's gate trajectory, as one `ExplorerData`
(`probes.heads_data`; JSON through its to_dict/from_dict).

The figures (`workbench.figures.heads`), the widget (`workbench.widgets.heads.HeadExplorer`) and
the viewer's head page all read it and never a model, so a run saves it in results.json and any
surface can draw it later. Layout: see `workbench.figures.heads`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from ..runs import atomic_save_tensors
from ..tasks import repeated_segments
from .heads import HeadRoleConfig, _token_range, attention_patterns, make_contexts
from .heads_data import ContextPatterns, ExplorerData, GateCurve, pattern_key
from .heads_over_training import attention_entropy

Scores = list[list[float]]


def save_patterns(path: str | Path, data: ExplorerData) -> ExplorerData:
    """Write `data`'s context patterns to `path` (atomically) and return `data` naming the file,
    so that its to_dict() (results.json) leaves them out; the in-memory patterns are kept."""
    names = list(data.contexts)
    tensors = {
        pattern_key(i): torch.tensor(data.contexts[n]["patterns"], dtype=torch.float32) for i, n in enumerate(names)
    }
    atomic_save_tensors(path, tensors, metadata={"contexts": json.dumps(names)})
    return dataclasses.replace(data, patterns_file=Path(path).name)


def _as_dict(x) -> dict | None:
    if x is None:
        return None
    if isinstance(x, dict):
        return x
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if is_dataclass(x):
        return asdict(x)
    raise TypeError(f"expected a result dataclass or its to_dict(), got {type(x).__name__}")


def _round(x, nd: int = 4):
    if isinstance(x, list):
        return [_round(v, nd) for v in x]
    return round(float(x), nd)


def default_contexts(model: HookedTransformer, cfg: HeadRoleConfig, bos: int | None) -> dict[str, Tensor]:
    """One needle context (the head-role probe's first) and one repeated random segment."""
    needle = make_contexts(model, cfg, bos).tokens[0]
    lo, hi = _token_range(model, cfg, bos)
    seg = max(4, (cfg.seq_len - 1) // 3)
    rep = repeated_segments(1, seg, 3, hi - lo, bos=None, seed=cfg.seed + 1)[0] + lo
    if bos is not None:
        rep = torch.cat([torch.tensor([bos]), rep])
    return {"needle": needle, "repeated segment": rep[: min(cfg.seq_len, model.cfg.n_ctx)]}


@torch.no_grad()
def context_patterns(
    model: HookedTransformer, tokens: Int[Tensor, " s"], tokenizer=None, digits: int = 3
) -> ContextPatterns:
    """{"ids", "tokens", "patterns": [L][H][q][k]} of one context (rounded: this goes to JSON)."""
    if tokens.ndim != 1:
        raise ValueError(f"tokens: expected one context [s], got shape {tuple(tokens.shape)}")
    if len(tokens) > model.cfg.n_ctx:
        raise ValueError(f"tokens: {len(tokens)} tokens exceed the model's n_ctx={model.cfg.n_ctx}")
    _, pat = attention_patterns(model, tokens[None].to(model.cfg.device))
    ids = [int(t) for t in tokens]
    strs = [tokenizer.token_str(i) for i in ids] if tokenizer is not None else [str(i) for i in ids]
    return ContextPatterns(ids=ids, tokens=strs, patterns=_round(pat[:, 0].float().cpu().tolist(), digits))


def explorer_data(
    model: HookedTransformer,
    roles,
    *,
    tokenizer=None,
    bos: int | None = None,
    duo=None,
    razor=None,
    contexts: dict[str, Tensor] | None = None,
    extra_metrics: dict[str, Scores] | None = None,
) -> ExplorerData:
    """The explorer's data from the head-role probe's result (`HeadRoles` or its dict), with the
    optional DuoAttention (`DuoResult`) and RazorAttention (`RazorResult`) results, attention
    patterns on `contexts` ({name: 1-D token ids}; default: a needle and a repeated segment) and
    each head's attention entropy on the probe's needle contexts."""
    r = _as_dict(roles)
    cfg = HeadRoleConfig(
        **{**r["config"], "token_range": tuple(r["config"]["token_range"]) if r["config"].get("token_range") else None}
    )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if len(r["retrieval"]) != L or len(r["retrieval"][0]) != H:
        raise ValueError(
            f"roles: scores [{len(r['retrieval'])}][{len(r['retrieval'][0])}] do not match the model's [{L}][{H}] heads"
        )
    model.eval()
    needles = make_contexts(model, cfg, bos).tokens
    metrics = {
        "retrieval score": r["retrieval"],
        "streaming mass": r["streaming"],
        "causal Δloss": r["delta_loss"],
        "TL induction": r["tl_scores"]["induction"],
        "TL previous-token": r["tl_scores"]["previous_token"],
        "attention entropy": _round(attention_entropy(model, needles).tolist()),
    }
    intervals = {"retrieval score": r.get("retrieval_ci"), "streaming mass": r.get("streaming_ci")}
    d = _as_dict(duo)
    gate_curve = None
    if d is not None:
        metrics["Duo α"] = d["alphas"]
        if d.get("trajectory_steps"):
            gate_curve = GateCurve(step=d["trajectory_steps"], alpha=d["trajectory"])
    z = _as_dict(razor)
    if z is not None:
        metrics["Razor echo"] = z["echo"]
        metrics["Razor induction"] = z["induction"]
    for name, scores in (extra_metrics or {}).items():
        if len(scores) != L or len(scores[0]) != H:
            raise ValueError(f"extra_metrics[{name!r}]: expected [{L}][{H}] scores")
        metrics[name] = scores
    ctx = contexts if contexts is not None else default_contexts(model, cfg, bos)
    return ExplorerData(
        n_layers=L,
        n_heads=H,
        metrics=metrics,
        intervals={k: v for k, v in intervals.items() if v},
        labels=r["labels"],
        contexts={k: context_patterns(model, t, tokenizer) for k, t in ctx.items()},
        gate_curve=gate_curve,
        razor_protected=z["protected"] if z is not None else None,
        roles_config=json.loads(json.dumps(r["config"])),  # as results.json gives it back: tuples are lists
        copy_accuracy=r["copy_accuracy"],
    )
