"""The viewer's JSON APIs, as plain functions of the run store and the request's parameters: each
returns a JSON-ready dict or raises `ApiError` (status and a message naming the file or argument at
fault). server.py turns them into routes.

    GET  /api/run/<name>/feature/<i>           one feature's contexts and figures (for a hook_z SAE also
                                               its heads and DFA: attention_html and its figures)
    GET  /api/run/<name>/search?q=             features whose top context ends in q, or that promote it
    POST /api/run/<name>/prompt                {"text": str, "feature": int}: the feature on your text
    GET  /api/run/<name>/attention?layer=&head=[&example=]   a head's attention pattern (heads runs)
    GET  /api/run/<name>/head?layer=&head=[&context=][&x=&y=]  a head of the explorer: pattern, scores
                                               with intervals, gate curve, detail and scatter figures
    GET  /api/run/<name>/evaluate              the SAE run's evaluation state (evaluated, stages, bars)
    POST /api/run/<name>/evaluate              start evaluating an SAE run that has none
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..figures import sae as sf
from ..runs import OUTPUT_SCORES_FILE, RESULTS_FILE, SAE_WEIGHTS_FILE
from . import attention_sae, heads_page
from .evaluation import Evaluations
from .store import ApiError, RunError, RunStore

INDEX = re.compile(r"[+-]?[0-9]{1,18}")  # an index as the URL spells it; more digits cannot be in range


def run_path(store: RunStore, name: str) -> Path:
    try:
        return store.locate(name)
    except RunError as e:
        raise ApiError(404, f"no such run: {e}") from None


def _table(store: RunStore, name: str):
    run_path(store, name)
    try:
        return store.feature_table(name)
    except RunError as e:
        raise ApiError(500, str(e)) from e


def _tokenizer(store: RunStore, name: str):
    try:
        return store.tokenizer(name)
    except RunError as e:
        raise ApiError(500, f"run {name!r}: {e}") from e


def url_int(raw: str, what: str) -> int:
    """An integer as the URL spells it; ApiError 400 "{what}, got ..." otherwise (a 5000-digit
    number is refused before int() sees it, and shown shortened)."""
    text = str(raw)
    if not INDEX.fullmatch(text):
        shown = text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"
        raise ApiError(400, f"{what}, got {shown!r}")
    return int(text)


def feature_index(raw: str, n: int) -> int:
    """The URL's feature index as an int in [0, n): ApiError 400 (not an integer) or 404 (out of
    range), both naming the range."""
    what = f"feature must be an integer in [0, {n})"
    f = url_int(raw, what)
    if not 0 <= f < n:
        raise ApiError(404, f"{what}, got {f}: there is no feature {f}")
    return f


def check_text(text: str, what: str) -> None:
    """ApiError(400) when `text` is not valid Unicode (a lone surrogate, which JSON can spell)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            400, f"{what} holds a lone surrogate (U+{ord(text[e.start]):04X} at index {e.start}): not valid Unicode"
        ) from None


def feature_output_score(store: RunStore, name: str, feature: int) -> float | None:
    """Latent `feature`'s stored output score for the feature API, None for a run without
    output_scores.safetensors; ApiError 500 naming the file when it is unreadable or holds another
    number of latents than the feature table."""
    try:
        scores, n = store.output_scores(name), len(store.feature_table(name).density)
    except RunError as e:
        raise ApiError(500, f"run {name!r}: {e}") from e
    if scores is None:
        return None
    if len(scores.score) != n:
        raise ApiError(
            500,
            f"run {name!r}: {OUTPUT_SCORES_FILE} scores {len(scores.score)} latents, the feature table {n}: "
            "evaluate the run again",
        )
    return float(scores.score[feature])


def feature(store: RunStore, name: str, raw: str | int) -> dict:
    """`raw`: the feature index as the URL spells it."""
    table = _table(store, name)
    f = feature_index(str(raw), len(table.density))
    tok = _tokenizer(store, name)
    figs = {
        "feat-hist": sf.feature_histogram(table, f),
        "feat-logits": sf.logit_effects(table, f, tok),
        "feat-corr": sf.correlated_features(table, f),
    }
    heads = attention_sae.feature_section(store, name, table, f, tok)  # empty unless a hook_z SAE
    return {
        "feature": f,
        "contexts_html": sf.contexts_html(table, f, tok),
        "attention_html": heads.html,
        "output_score": feature_output_score(store, name, f),  # None: no output_scores.safetensors
        "figures": {**{k: json.loads(v.to_json()) for k, v in figs.items()}, **heads.figures},
    }


def search(store: RunStore, name: str, q: str) -> dict:
    from ..sae.evaluate import features_matching

    table = _table(store, name)
    check_text(q, "q")
    return {"features": features_matching(table, _tokenizer(store, name).encode(q))}


def prompt(store: RunStore, name: str, body: Any) -> dict:
    """`body` is the parsed JSON body; ApiError(400) names what is wrong with it."""
    d = run_path(store, name)
    if not isinstance(body, dict) or set(body) != {"text", "feature"}:
        raise ApiError(400, "expected a JSON object with exactly the keys text (str) and feature (int)")
    text, f = body["text"], body["feature"]
    if not isinstance(text, str):
        raise ApiError(400, f"text must be a string, got {type(text).__name__}")
    if not isinstance(f, int) or isinstance(f, bool):
        raise ApiError(400, f"feature must be an integer, got {type(f).__name__}")
    if not text:
        raise ApiError(400, "text is empty")
    check_text(text, "text")
    if not (d / SAE_WEIGHTS_FILE).exists():
        raise ApiError(400, f"run {name!r} has no SAE ({SAE_WEIGHTS_FILE} is missing): the prompt API needs an SAE run")
    try:
        model, sae = store.model_and_sae(name)
    except RunError as e:
        raise ApiError(500, f"run {name!r}: {e}") from e
    if not 0 <= f < sae.cfg.d_sae:
        raise ApiError(400, f"feature must lie in [0, {sae.cfg.d_sae})")
    from ..sae.evaluate import feature_on_text

    tok = _tokenizer(store, name)
    ids, acts = feature_on_text(model, sae, tok, text, f)
    return {"html": sf.prompt_html(ids, acts, tok)}


def _heads_results(store: RunStore, name: str, lacks: str):
    run_path(store, name)
    try:
        kind = store.kind(name)
        if kind != heads_page.KIND:
            raise ApiError(400, f"run {name!r} is a {kind!r} run, not a heads run: it has no {lacks}")
        return store.results(name)
    except RunError as e:
        raise ApiError(500, f"run {name!r}: {e}") from e


def attention(store: RunStore, name: str, query: dict) -> dict:
    return heads_page.attention(name, _heads_results(store, name, "attention patterns"), query)


def head(store: RunStore, name: str, query: dict) -> dict:
    """The explorer's head detail; token labels by the run's own tokenizer (the labels stored at
    build time when it cannot be loaded or does not cover the ids)."""
    res = _heads_results(store, name, "head explorer")
    try:
        tok = store.tokenizer(name)
    except RunError:
        tok = None
    # _heads_results checked every RUN_FILES entry, the patterns file too (no link out, no FIFO)
    out = heads_page.head(name, res, query, tok, run_path(store, name))
    # the latents of the store's hook_z SAEs that write through this head (attention_sae.py)
    return {**out, "sae_latents": attention_sae.head_explorer_section(store, out["layer"], out["head"]).json()}


def evaluation_state(store: RunStore, jobs: Evaluations, name: str) -> dict:
    """{"evaluated": bool, "phase", "error", "stages"}: phase "idle" before any evaluation was started."""
    run_path(store, name)
    snap = jobs.snapshot(name) or {"phase": "idle", "error": None, "stages": []}
    return {**snap, "evaluated": store.has_results(name) and not jobs.running(name)}


def start_evaluation(store: RunStore, jobs: Evaluations, name: str) -> dict:
    d = run_path(store, name)
    try:
        kind = store.kind(name)
    except RunError as e:
        raise ApiError(500, f"run {name!r}: {e}") from e
    if kind != "sae":
        raise ApiError(400, f"run {name!r} is a {kind!r} run: only SAE runs are evaluated from the viewer")
    if not (d / SAE_WEIGHTS_FILE).exists():
        raise ApiError(400, f"run {name!r} has no {SAE_WEIGHTS_FILE}: its training has not finished")
    if store.has_results(name):
        raise ApiError(409, f"run {name!r} is already evaluated ({RESULTS_FILE} exists)")
    try:
        snap = jobs.start(name, d)
    except RuntimeError as e:
        raise ApiError(409, str(e)) from e
    return {**snap, "evaluated": False}
