"""The local viewer: a Starlette app over one folder of run directories, and its routes.

    GET  /                         every run: its kind and headline (and the demo build, live)
    GET  /run/<name>               the run's page: one module per kind (sae_page, sparsity_page,
                                   heads_page, arrow_page); an SAE run without evaluation offers it
    GET  /benchmarks               benchmarks/RESULTS.md as text
    GET  /api/build                the demo build's state (when the app shows a build)
    /api/run/<name>/...            the JSON APIs (api.py lists them)
    GET  /files/<name>/<path>      a file of a run, sandboxed (it may hold html or svg)
    GET  /static/plotly.min.js     plotly.js from the installed plotly package

It serves only what lies inside those run directories; a run that cannot be read shows an error
naming the file on its own page while the others keep working. Every request's Host header is
checked (front.HostCheck) and every string read from disk is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import plotly
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..results import ResultsError
from ..sae.saebench_json import read_run_evals
from . import api, arrow_page, heads_page, pages, sae_page, sparsity_page
from .build_status import BuildStatus
from .evaluation import Evaluations
from .front import HostCheck, build_api
from .store import ApiError, RunError, RunStore

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
PROBE_PAGES = {m.KIND: m for m in (sparsity_page, heads_page, arrow_page)}  # kind -> summary(res), render(name, res)
PAGE_ERRORS = (RunError, ResultsError, KeyError, ValueError, TypeError, IndexError, AttributeError)


# --- pages (HTML bodies; each takes the store and a run name) -----------------------------------------


def run_summary(store: RunStore, jobs: Evaluations, name: str) -> tuple[str, str]:
    """(kind, headline html) of one run for the overview."""
    kind = store.kind(name)
    if kind == sae_page.KIND:
        if jobs.running(name):
            return kind, '<span class="empty">being evaluated</span>'
        if not store.has_results(name) and (store.root / name / "sae.safetensors").exists():
            return kind, sae_page.NOT_EVALUATED
        return kind, sae_page.summary(store.results(name))
    if kind not in PROBE_PAGES:  # e.g. a language model's training run ("lm"): listed, without a page
        return kind, f'<span class="empty">no page for {html.escape(kind)!s} runs</span>'
    return kind, PROBE_PAGES[kind].summary(store.results(name))


def known_kinds() -> list[str]:
    return [sae_page.KIND, *PROBE_PAGES]


def overview_body(store: RunStore, jobs: Evaluations, build: BuildStatus | None) -> str:
    rows = []
    for run in store.runs():
        try:
            if build is not None and build.state_of(run.name) in ("pending", "running"):
                kind, summary = store.kind(run.name), '<span class="empty">being built</span>'
            else:
                kind, summary = run_summary(store, jobs, run.name)
            kind = html.escape(kind)
        except PAGE_ERRORS as e:
            kind, summary = "?", f'<span class="error">{html.escape(f"{type(e).__name__}: {e}")}</span>'
        rows.append(
            f'<tr><td><a href="/run/{quote(run.name, safe="")}">{html.escape(run.name)}</a></td>'
            f"<td>{kind}</td><td>{summary}</td></tr>"
        )
    body = (
        "<table><tr><th>run</th><th>kind</th><th>headline</th></tr>" + "".join(rows) + "</table>"
        if rows
        else f'<p class="empty">No runs in {html.escape(str(store.root))}.</p>'
    )
    panel = pages.build_panel({**build.snapshot(), "viewer": "ready"}) if build is not None else ""
    return panel + body


def sae_body(store: RunStore, jobs: Evaluations, name: str) -> str:
    d = store.root / name
    if not store.has_results(name) or jobs.running(name):
        if not (d / "sae.safetensors").exists():
            raise RunError("sae.safetensors is missing: the SAE's training has not finished (or was interrupted)")
        return sae_page.render_unevaluated(name, store.metrics(name), jobs.snapshot(name))
    res = store.results(name)
    table = store.feature_table(name)
    return sae_page.render(name, res, store.metrics(name), table.density.tolist(), read_run_evals(d))


def run_body(store: RunStore, jobs: Evaluations, name: str) -> tuple[str, str]:
    """(kind, page body) of a run."""
    kind = store.kind(name)
    if kind == sae_page.KIND:
        return kind, sae_body(store, jobs, name)
    if kind not in PROBE_PAGES:
        raise RunError(f"config.json: unknown run kind {kind!r} (the viewer shows {', '.join(known_kinds())})")
    return kind, PROBE_PAGES[kind].render(name, store.results(name))


# --- the app --------------------------------------------------------------------------------------


def json_route(fn: Callable) -> Callable:
    """An API function's result as JSON, an ApiError as {"error": message} with its status."""

    async def endpoint(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await fn(request))
        except ApiError as e:
            return JSONResponse({"error": str(e)}, e.status)

    return endpoint


def create_app(
    runs_root: str | Path,
    benchmarks_md: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    build: BuildStatus | None = None,
    eval_windows: int | None = None,
) -> Starlette:
    """The viewer over `runs_root`. Requests whose Host is not `host` or loopback (on `port`; any
    port when None) are refused; `build`, when given, is shown live on `/` and at /api/build;
    `eval_windows`: held-out windows when an SAE run is evaluated from its page (None: 32)."""
    store, jobs = RunStore(runs_root), Evaluations(eval_windows)

    async def overview(request: Request) -> HTMLResponse:
        return HTMLResponse(pages.page("Runs", overview_body(store, jobs, build)))

    async def run_page(request: Request) -> HTMLResponse:
        name = request.path_params["name"]
        if store.path(name) is None:
            return HTMLResponse(pages.page("Not found", pages.error_box(f"no run named {name!r}")), 404)
        if build is not None and build.state_of(name) in ("pending", "running"):
            return HTMLResponse(
                pages.page(
                    name,
                    '<p class="empty" id="run-building">This run is being built; '
                    'its page appears when it is done (see <a href="/">Runs</a>).</p>',
                ),
                503,
            )
        try:
            kind, body = run_body(store, jobs, name)
        except PAGE_ERRORS as e:
            return HTMLResponse(pages.page(name, pages.error_box(f"{type(e).__name__}: {e}")), 500)
        return HTMLResponse(pages.page(f"{name} ({kind})", body))

    async def benchmarks(request: Request) -> HTMLResponse:
        path = Path(benchmarks_md) if benchmarks_md else None
        if path is None or not path.exists():
            return HTMLResponse(pages.page("Benchmarks", '<p class="empty">No benchmark results found.</p>'))
        return HTMLResponse(pages.page("Benchmarks", f"<pre>{html.escape(path.read_text())}</pre>"))

    async def feature(request: Request) -> dict:
        return api.feature(store, request.path_params["name"], request.path_params["feature"])

    async def search(request: Request) -> dict:
        return api.search(store, request.path_params["name"], request.query_params.get("q", ""))

    async def prompt(request: Request) -> dict:
        api.run_path(store, request.path_params["name"])
        try:
            body = await request.json()
        except Exception:
            raise ApiError(400, 'the body is not JSON: expected {"text": str, "feature": int}') from None
        return api.prompt(store, request.path_params["name"], body)

    async def attention(request: Request) -> dict:
        return api.attention(store, request.path_params["name"], dict(request.query_params))

    async def head(request: Request) -> dict:
        return api.head(store, request.path_params["name"], dict(request.query_params))

    async def evaluate(request: Request) -> dict:
        name = request.path_params["name"]
        if request.method == "POST":
            return api.start_evaluation(store, jobs, name)
        return api.evaluation_state(store, jobs, name)

    async def run_file(request: Request) -> Response:
        d = store.path(request.path_params["name"])
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
    return Starlette(
        middleware=[Middleware(HostCheck, host=host, port=port)],
        exception_handlers={Exception: unexpected},
        routes=build_routes
        + [
            Route("/", overview),
            Route("/run/{name}", run_page),
            Route("/benchmarks", benchmarks),
            Route("/api/run/{name}/feature/{feature:int}", json_route(feature)),
            Route("/api/run/{name}/search", json_route(search)),
            Route("/api/run/{name}/prompt", json_route(prompt), methods=["POST"]),
            Route("/api/run/{name}/attention", json_route(attention)),
            Route("/api/run/{name}/head", json_route(head)),
            Route("/api/run/{name}/evaluate", json_route(evaluate), methods=["GET", "POST"]),
            Route("/files/{name}/{path:path}", run_file),
            Route("/static/plotly.min.js", plotly_js),
        ],
    )
