"""The local viewer: a Starlette app over one folder of run directories.

It serves only what lies inside those run directories (and plotly.js from the installed plotly
package); a run that cannot be read shows an error on its own page while the others keep working.
"""

from __future__ import annotations

import html
import json
import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import plotly
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..figures import evals as ef
from ..figures import probes as pf
from ..figures import sae as sf
from ..runs import RunDir, iter_runs
from ..sae.saebench_json import read_run_evals
from . import pages
from .build_status import BuildStatus
from .front import HostCheck, build_api

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class RunError(Exception):
    """A run's file is missing or unreadable; the message names the file and what is wrong."""


def _check_safetensors(path: Path) -> None:
    """RunError naming the file unless `path` is a readable safetensors file (reads only its header)."""
    if not path.exists():
        raise RunError(f"{path.name} is missing")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:
        raise RunError(f"{path.name} is unreadable: {e}") from e


def _kind(run_dir: Path) -> str:
    try:
        return RunDir(run_dir).read_config()["kind"]
    except Exception as e:
        raise RunError(f"config.json is unreadable: {e}") from e


def _results(run_dir: Path) -> dict:
    if not (run_dir / "results.json").exists():
        raise RunError("results.json is missing: the run has not finished (or was interrupted)")
    try:
        return RunDir(run_dir).read_results()
    except json.JSONDecodeError as e:
        raise RunError(f"results.json is not valid JSON: {e}") from e


def create_app(runs_root: str | Path, benchmarks_md: str | Path | None = None, host: str = "127.0.0.1",
               port: int | None = None, build: BuildStatus | None = None) -> Starlette:
    """The viewer over `runs_root`. Requests whose Host is not `host` or loopback (on `port`; any
    port when None) are refused; `build`, when given, is shown live on `/` and at /api/build."""
    root = Path(runs_root).resolve()

    @lru_cache(maxsize=8)
    def tokenizer(name: str):
        """The run's own tokenizer (bytes for workbench models, the folder's for a local HF model)."""
        from ..pretrained import tokenizer_for_run
        return tokenizer_for_run(root / name)

    def run_dir(name: str) -> Path | None:
        for run in iter_runs(root):
            if run.name == name:
                return run.path.resolve()
        return None

    @lru_cache(maxsize=8)
    def feature_table(name: str, mtime: float):
        from ..sae.evaluate import FeatureTable
        return FeatureTable.load(root / name / "features.safetensors")

    def table_for(name: str):
        path = root / name / "features.safetensors"
        if not path.exists():
            raise RunError("features.safetensors is missing")
        try:
            return feature_table(name, os.path.getmtime(path))
        except Exception as e:
            raise RunError(f"features.safetensors is unreadable: {e}") from e

    @lru_cache(maxsize=2)
    def model_and_sae(name: str):
        from ..pretrained import model_for_run
        from ..sae.io import load_sae
        return model_for_run(root / name)[0], load_sae(root / name)

    # --- pages ---------------------------------------------------------------------------------

    async def overview(request: Request) -> HTMLResponse:
        rows = []
        for run in iter_runs(root):
            building = build is not None and build.state_of(run.name) in ("pending", "running")
            try:
                kind = _kind(run.path)
                summary = ('<span class="empty">being built</span>' if building
                           else _summary(kind, _results(run.path)))
                kind = html.escape(kind)
            except (RunError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
                kind, summary = "?", f'<span class="error">{html.escape(f"{type(e).__name__}: {e}")}</span>'
            rows.append(f'<tr><td><a href="/run/{quote(run.name, safe="")}">{html.escape(run.name)}</a></td>'
                        f'<td>{kind}</td><td>{summary}</td></tr>')
        body = ("<table><tr><th>run</th><th>kind</th><th>headline</th></tr>" + "".join(rows) + "</table>"
                if rows else f'<p class="empty">No runs in {html.escape(str(root))}.</p>')
        panel = pages.build_panel({**build.snapshot(), "viewer": "ready"}) if build is not None else ""
        return HTMLResponse(pages.page("Runs", panel + body))

    async def run_page(request: Request) -> HTMLResponse:
        name = request.path_params["name"]
        d = run_dir(name)
        if d is None:
            return HTMLResponse(pages.page("Not found", pages.error_box(f"no run named {name!r}")), 404)
        if build is not None and build.state_of(name) in ("pending", "running"):
            return HTMLResponse(pages.page(name, '<p class="empty" id="run-building">This run is being built; '
                                           'its page appears when it is done (see <a href="/">Runs</a>).</p>'), 503)
        try:
            kind = _kind(d)
            body = RENDERERS[kind](name, d, _results(d))
        except (RunError, KeyError, ValueError, TypeError, IndexError) as e:
            return HTMLResponse(pages.page(name, pages.error_box(f"{type(e).__name__}: {e}")), 500)
        return HTMLResponse(pages.page(f"{name} ({kind})", body))

    def render_sae(name: str, d: Path, res: dict) -> str:
        table = table_for(name)
        body = pages.metrics_table(res, ["fvu", "explained_variance", "l0", "dead_frac", "dense_frac",
                                         "ce_loss_recovered", "ce_loss_recovered_vs_mean", "kl_sae", "ce_clean",
                                         "ce_sae", "n_tokens"])
        body += pages.figure_div(sf.training_curves(RunDir(d).metrics()), "curves")
        body += '<div class="grid">' + pages.figure_div(sf.density_histogram(res["log10_density"]), "density")
        body += pages.figure_div(sf.l0_histogram(res["l0_hist"]), "l0") + "</div>"
        ev = read_run_evals(d)  # sparse probing + absorption-style, where the run computed them
        body += "<h2>Sparse probing and absorption-style</h2>" + ef.usefulness_html(ev)
        body += pages.figure_div(ef.usefulness_figure(ev), "usefulness") if ev else ""
        first = int(table.density.argmax()) if float(table.density.max()) > 0 else 0
        return body + pages.feature_browser(name, len(table.density), first)

    def render_sparsity(name: str, d: Path, res: dict) -> str:
        final = res["final"]
        body = pages.figure_div(pf.sparsity_by_layer(final["active_frac"], final["active_frac_std"],
                                                     final["threshold"]), "by-layer")
        body += pages.figure_div(pf.sparsity_over_training(res["over_training"]), "over-training")
        body += '<div class="grid">' + pages.figure_div(pf.neuron_frequencies(final["neuron_freq"]), "neurons")
        body += pages.figure_div(pf.topk_curve(res["topk"]), "topk") + "</div>"
        never = ", ".join(f"L{l}: {int(n)}" for l, n in enumerate(final["never_firing"]))
        return body + f"<p>Never-firing neurons on {int(final['n_tokens'])} tokens: {never}.</p>"

    def render_heads(name: str, d: Path, res: dict) -> str:
        body = pf.head_roles_summary_html(res) + pages.figure_div(pf.head_role_map(res), "roles")
        body += pages.figure_div(pf.causal_check(res), "causal")
        L, H = len(res["retrieval"]), len(res["retrieval"][0])
        if res.get("retrieval_ci"):
            ci = lambda key, l, h: f"{res[key][l][h][0]:.2f} – {res[key][l][h][1]:.2f}"  # noqa: E731
            rows = "".join(f"<tr><td>L{l}H{h}</td><td>{html.escape(str(res['labels'][l][h]))}</td>"
                           f"<td>{res['retrieval'][l][h]:.2f} ({int(res['retrieval_hits'][l][h])}/{int(res['n_copied'])})</td>"
                           f"<td>{ci('retrieval_ci', l, h)}</td><td>{res['streaming'][l][h]:.2f}</td>"
                           f"<td>{ci('streaming_ci', l, h)}</td><td>{res['delta_loss'][l][h]:+.3f}</td></tr>"
                           for l in range(L) for h in range(H))
            body += ("<table><tr><th>head</th><th>role</th><th>retrieval (hits/copied)</th><th>Wilson 95%</th>"
                     "<th>streaming</th><th>t 95% over contexts</th><th>Δ copy loss</th></tr>" + rows + "</table>")
        return body + pages.attention_picker(json.dumps(name)[1:-1], L, H)

    def render_arrow(name: str, d: Path, res: dict) -> str:
        if "datasets" in res:  # seeds: verdict, seed-level interval, null, window-level interval
            body = pages.figure_div(pf.arrow_gaps(res["datasets"]), "gaps")
            for i, (k, v) in enumerate(res["datasets"].items()):
                body += pf.arrow_summary_html(k, v) + '<div class="grid">'
                body += pages.figure_div(pf.arrow_gap_over_training(v["over_training"], "gap over training"),
                                         f"over-{i}")
                body += pages.figure_div(pf.arrow_seed_curves(v["curves"], "validation loss over training"),
                                         f"curves-{i}") + "</div>"
            return body
        body = ('<p class="error">One seed only: the interval below resamples held-out windows, not seeds, '
                "so no verdict is given; rebuild the run to train several seeds.</p>")
        body += pages.figure_div(pf.arrow_gaps(res["gaps"]), "gaps")
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['loss_forward']:.4f}</td><td>{v['loss_backward']:.4f}</td>"
                       f"<td>{100 * v['gap']:+.2f}% [{100 * v['gap_ci95'][0]:+.2f}, {100 * v['gap_ci95'][1]:+.2f}]</td></tr>"
                       for k, v in res["gaps"].items())
        body += ("<table><tr><th>data</th><th>forward loss</th><th>backward loss</th><th>gap (window-level 95% CI)</th></tr>"
                 + rows + "</table>")
        for i, (k, c) in enumerate(res["curves"].items()):
            body += pages.figure_div(pf.arrow_curves(c, f"{k}: validation loss over training"), f"curves-{i}")
        return body

    RENDERERS = {"sae": render_sae, "sparsity": render_sparsity, "heads": render_heads, "arrow": render_arrow}

    async def benchmarks(request: Request) -> HTMLResponse:
        path = Path(benchmarks_md) if benchmarks_md else None
        if path is None or not path.exists():
            return HTMLResponse(pages.page("Benchmarks", '<p class="empty">No benchmark results found.</p>'))
        return HTMLResponse(pages.page("Benchmarks", f"<pre>{html.escape(path.read_text())}</pre>"))

    # --- API -----------------------------------------------------------------------------------

    def table_or_error(request: Request):
        """(feature table, None), or (None, the JSON error response) for the feature APIs."""
        name = request.path_params["name"]
        if run_dir(name) is None:
            return None, JSONResponse({"error": "no such run"}, 404)
        try:
            return table_for(name), None
        except RunError as e:
            return None, JSONResponse({"error": str(e)}, 500)

    async def feature_api(request: Request) -> JSONResponse:
        table, error = table_or_error(request)
        if error is not None:
            return error
        f = request.path_params["feature"]
        if not 0 <= f < len(table.density):
            return JSONResponse({"error": f"feature must lie in [0, {len(table.density)})"}, 404)
        tok = tokenizer(request.path_params["name"])
        figs = {"feat-hist": sf.feature_histogram(table, f), "feat-logits": sf.logit_effects(table, f, tok),
                "feat-corr": sf.correlated_features(table, f)}
        return JSONResponse({"feature": f, "contexts_html": sf.contexts_html(table, f, tok),
                             "figures": {k: json.loads(v.to_json()) for k, v in figs.items()}})

    async def search_api(request: Request) -> JSONResponse:
        from ..sae.evaluate import features_matching
        table, error = table_or_error(request)
        if error is not None:
            return error
        ids = tokenizer(request.path_params["name"]).encode(request.query_params.get("q", ""))
        return JSONResponse({"features": features_matching(table, ids)})

    async def prompt_api(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if run_dir(name) is None:
            return JSONResponse({"error": "no such run"}, 404)
        try:
            body = await request.json()
        except Exception:
            return JSONResponse({"error": "the body is not JSON: expected {\"text\": str, \"feature\": int}"}, 400)
        if not isinstance(body, dict) or set(body) != {"text", "feature"}:
            return JSONResponse({"error": "expected a JSON object with exactly the keys text (str) and feature (int)"}, 400)
        text, feature = body["text"], body["feature"]
        if not isinstance(text, str):
            return JSONResponse({"error": f"text must be a string, got {type(text).__name__}"}, 400)
        if not isinstance(feature, int) or isinstance(feature, bool):
            return JSONResponse({"error": f"feature must be an integer, got {type(feature).__name__}"}, 400)
        if not text:
            return JSONResponse({"error": "text is empty"}, 400)
        from ..sae.evaluate import feature_on_text
        d = run_dir(name)
        if not (d / "sae.safetensors").exists():
            return JSONResponse({"error": f"run {name!r} has no SAE (sae.safetensors is missing): "
                                          "the prompt API needs an SAE run"}, 400)
        try:
            for file in ("sae.safetensors", "model.safetensors"):  # a local HF model has no model.safetensors
                if file == "sae.safetensors" or (d / file).exists():
                    _check_safetensors(d / file)
            model, sae = model_and_sae(name)
        except RunError as e:
            return JSONResponse({"error": f"run {name!r}: {e}"}, 500)
        except Exception as e:
            return JSONResponse({"error": f"run {name!r}: its model or SAE could not be loaded "
                                          f"(sae.safetensors, sae_config.json, model.safetensors, "
                                          f"model_config.json): {type(e).__name__}: {e}"}, 500)
        if not 0 <= feature < sae.cfg.d_sae:
            return JSONResponse({"error": f"feature must lie in [0, {sae.cfg.d_sae})"}, 400)
        ids, acts = feature_on_text(model, sae, tokenizer(name), text, feature)
        return JSONResponse({"html": sf.prompt_html(ids, acts, tokenizer(name))})

    async def attention_api(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        d = run_dir(name)
        if d is None:
            return JSONResponse({"error": "no such run"}, 404)
        try:
            res = _results(d)
        except RunError as e:
            return JSONResponse({"error": f"run {name!r}: {e}"}, 500)
        patterns = res.get("example_patterns") if isinstance(res, dict) else None
        if not isinstance(patterns, list) or not patterns or not isinstance(patterns[0], list):
            return JSONResponse({"error": f"run {name!r} has no attention patterns "
                                          "(results.json lacks example_patterns: not a heads run)"}, 400)
        n_layers, n_heads = len(patterns), len(patterns[0])
        try:
            layer, head = int(request.query_params["layer"]), int(request.query_params["head"])
        except (KeyError, ValueError):
            return JSONResponse({"error": "layer and head must be given as integers"}, 400)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            return JSONResponse({"error": f"layer must lie in [0, {n_layers}) and head in [0, {n_heads}), "
                                          f"got layer={layer}, head={head}"}, 400)
        pattern = patterns[layer][head]
        fig = pf.attention_pattern(pattern, res["example_tokens"], f"layer {layer}, head {head}")
        return JSONResponse(json.loads(fig.to_json()))

    async def run_file(request: Request) -> Response:
        d = run_dir(request.path_params["name"])
        if d is None:
            return PlainTextResponse("not found", 404)
        target = (d / request.path_params["path"]).resolve()
        if not target.is_relative_to(d) or not target.is_file():
            return PlainTextResponse("not found", 404)
        # A run folder may hold anything (an .html or .svg): never let it run script on our origin.
        return FileResponse(target, headers={"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"})

    async def plotly_js(request: Request) -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="application/javascript")

    async def unexpected(request: Request, exc: Exception) -> Response:
        """Anything unforeseen: APIs still answer JSON naming what failed, pages an error page."""
        message = f"{type(exc).__name__}: {exc}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, 500)
        return HTMLResponse(pages.page("Error", pages.error_box(message)), 500)

    build_routes = [Route("/api/build", build_api(build, "ready"))] if build is not None else []
    return Starlette(middleware=[Middleware(HostCheck, host=host, port=port)],
                     exception_handlers={Exception: unexpected}, routes=build_routes + [
        Route("/", overview), Route("/run/{name}", run_page), Route("/benchmarks", benchmarks),
        Route("/api/run/{name}/feature/{feature:int}", feature_api),
        Route("/api/run/{name}/search", search_api),
        Route("/api/run/{name}/prompt", prompt_api, methods=["POST"]),
        Route("/api/run/{name}/attention", attention_api),
        Route("/files/{name}/{path:path}", run_file),
        Route("/static/plotly.min.js", plotly_js),
    ])


def _summary(kind: str, res: dict) -> str:
    if kind == "sae":
        return f"FVU {res['fvu']:.3f} · L0 {res['l0']:.1f} · CE loss recovered {res['ce_loss_recovered']:.3f}"
    if kind == "sparsity":
        return "active " + ", ".join(f"L{l} {100 * a:.1f}%" for l, a in enumerate(res["final"]["active_frac"]))
    if kind == "heads":
        n = sum(row.count("retrieval") for row in res["labels"])
        s = sum(row.count("streaming") for row in res["labels"])
        few = (f"; too few copied steps to label retrieval ({int(res['n_copied'])} < "
               f"{int(res['config']['min_copied_steps'])})" if res.get("too_few_copied") else "")
        return f"{n} retrieval, {s} streaming heads (copy accuracy {res['copy_accuracy']:.2f}{few})"
    if kind == "arrow":
        if "datasets" in res:
            return " · ".join(f"{html.escape(k)}: {html.escape(v['verdict'])} (gap {100 * v['gap']:+.2f}%, "
                              f"seed-level CI [{100 * v['gap_ci_seeds'][0]:+.2f}, {100 * v['gap_ci_seeds'][1]:+.2f}])"
                              for k, v in res["datasets"].items())
        return " · ".join(f"{html.escape(k)}: gap {100 * v['gap']:+.2f}% (one seed, no verdict)"
                          for k, v in res["gaps"].items())
    return ""
