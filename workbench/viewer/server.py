"""The local viewer: a Starlette app over one folder of run directories, and its routes.

    GET  /                         every run: its kind and headline (and the demo build, live)
    GET  /run/<name>               the run's page: one module per kind (sae_page, sparsity_page,
                                   heads_page, arrow_page); an SAE run without evaluation offers it
    GET  /run/<name>/health        an SAE run's training health, live while it trains (health.py)
    GET  /benchmarks               benchmarks/RESULTS.md, its Markdown drawn as HTML (markdown.py)
    GET  /api/build                the demo build's state (when the app shows a build)
    /api/run/<name>/...            the JSON APIs (api.py lists them); every error is JSON
    GET  /files/<name>/<path>      a file of a run, sandboxed (it may hold html or svg)
    GET  /static/plotly-<v>.min.js plotly.js from the installed plotly package, cached as immutable
                                   and gzip-compressed for a browser that accepts it (4.8 -> 1.5 MB)
    GET  /static/draw-<v>.js       the figure scheduler's resume step (pages.DRAW_RESUME_JS)

It serves only what lies inside those run directories (a symlink out of the runs folder, or a
FIFO or device in place of a run's file, is refused); a run that cannot be read shows an error
naming the file on its own page while the others keep working. No route blocks the event loop:
every one that reads files or computes runs in a worker thread (Work), so /api/build and the
overview answer while pages are built. Every request's Host header is checked (front.HostCheck)
and every string read from disk is escaped.
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread
import plotly
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..kinds.registry import Page, get_kind, kind_names
from ..results import ResultsError
from ..sae.ladder import LADDER_META_FILE
from . import api, markdown, pages, sae_page
from . import health as health_pane
from . import ladder as ladder_api
from . import steer as steer_api
from .build_status import BuildStatus
from .evaluation import Evaluations
from .front import HostCheck, build_api
from .page_cache import PageCache
from .store import ApiError, RunError, RunStore, regular_file

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
IMMUTABLE = "public, max-age=31536000, immutable"
_GZIP_LOCK = threading.Lock()


@functools.cache
def _gzipped(path: Path, mtime_ns: int) -> bytes:
    return gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)


def gzipped(path: Path) -> bytes:
    """`path` gzip-compressed, once per state of the file (0.2 s for plotly.min.js; the lock keeps
    several first requests from each compressing it)."""
    with _GZIP_LOCK:
        return _gzipped(path, path.stat().st_mtime_ns)


def accepts_gzip(request: Request) -> bool:
    """Whether Accept-Encoding names gzip (or *) with a weight above 0."""
    for part in request.headers.get("accept-encoding", "").lower().split(","):
        coding, _, params = part.partition(";")
        weight = params.strip().removeprefix("q=")
        if coding.strip() in ("gzip", "*") and weight not in ("0", "0.0", "0.00", "0.000"):
            return True
    return False


def PROBE_PAGES(kind: str) -> Page | None:  # noqa: N802 (was the kind -> page dict; one name for the lookup)
    """The page of a run kind other than "sae", from the registry of kinds: summary(res) and
    render(name, res), its module imported when first drawn; None for a kind without a page."""
    k = get_kind(kind) if kind != sae_page.KIND else None
    return None if k is None else k.viewer_page()


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
    page = PROBE_PAGES(kind)
    if page is None:  # e.g. a language model's training run ("lm"): listed, without a page
        return kind, f'<span class="empty">no page for {html.escape(kind)!s} runs</span>'
    return kind, page.summary(store.results(name))


def known_kinds() -> list[str]:
    """The kinds the viewer has a page for (the registry's, plugins included)."""
    return [k for k in kind_names() if k == sae_page.KIND or PROBE_PAGES(k) is not None]


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
        if not (d / "sae.safetensors").exists():  # still training (or interrupted): the live health pane
            return health_pane.body(name)
        return health_link(name) + sae_page.render_unevaluated(name, store.metrics(name), jobs.snapshot(name))
    res = store.results(name)
    table = store.feature_table(name)
    scores = store.output_scores(name)  # None for a run evaluated before output scores
    return health_link(name) + sae_page.render(
        name,
        res,
        store.metrics(name),
        table.density.tolist(),
        store.evals(name),
        ladder_html(store, name),
        output_score=None if scores is None else scores.score.tolist(),
    )


def ladder_html(store: RunStore, name: str) -> str:
    """The run's width-ladder section; "" when it has none, the fault in its place when it is unreadable."""
    if not (store.root / name / LADDER_META_FILE).exists():
        return ""
    try:
        return ladder_api.ladder_section(name, ladder_api.load_run_ladder(store, name))
    except ApiError as e:
        return pages.error_box(str(e), "The width ladder could not be read.")


def health_link(name: str) -> str:
    return f'<p class="note"><a href="/run/{quote(name, safe="")}/health">training health</a></p>'


def run_body(store: RunStore, jobs: Evaluations, name: str) -> tuple[str, str]:
    """(kind, page body) of a run."""
    kind = store.kind(name)
    if kind == sae_page.KIND:
        return kind, sae_body(store, jobs, name)
    page = PROBE_PAGES(kind)
    if page is None:
        raise RunError(f"config.json: unknown run kind {kind!r} (the viewer shows {', '.join(known_kinds())})")
    return kind, page.render(name, store.results(name))


# --- the app --------------------------------------------------------------------------------------


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: JSON has no NaN (a NaN from disk would
    make the response fail to encode), and the pages read null as "no value"."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_bytes(value: Any) -> bytes:
    return json.dumps(finite(value), allow_nan=False, separators=(",", ":")).encode()


class Work:
    """Runs the viewer's blocking work (reading run files, building figures, loading a model) in
    worker threads, never on the event loop, so that /api/build and every other request answer
    while it runs. "heavy" work (a run's page, the feature, prompt and head APIs) runs at most
    `heavy` at a time (more would only share the same cores), "light" work (the run listing, a
    file, the benchmarks page) at most `light`; requests beyond wait without holding a thread."""

    def __init__(self, heavy: int = 2, light: int = 8) -> None:
        self.limiters = {"heavy": anyio.CapacityLimiter(heavy), "light": anyio.CapacityLimiter(light)}

    async def run(self, kind: str, fn: Callable, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiters[kind])


def json_route(
    work: Work, fn: Callable, kind: str = "heavy", body: bool = False, expects: str = "a JSON object"
) -> Callable:
    """An API function `fn(request, body)` run in a worker thread: its result as JSON (NaN as
    null), an ApiError as {"error": message} with its status. `body`: parse the JSON body first
    (`expects` says what it should hold, for the error)."""

    def answer(request: Request, parsed: Any) -> Response:
        try:
            return Response(json_bytes(fn(request, parsed)), media_type="application/json")
        except ApiError as e:
            return JSONResponse({"error": str(e)}, e.status)

    async def endpoint(request: Request) -> Response:
        parsed = None
        if body:
            try:
                parsed = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                return JSONResponse({"error": f"the body is not JSON: expected {expects}"}, 400)
        return await work.run(kind, answer, request, parsed)

    return endpoint


def create_app(
    runs_root: str | Path,
    benchmarks_md: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    build: BuildStatus | None = None,
    eval_windows: int | None = None,
    heavy_workers: int = 2,
) -> Starlette:
    """The viewer over `runs_root`. Requests whose Host is not `host` or loopback (on `port`; any
    port when None) are refused; `build`, when given, is shown live on `/` and at /api/build;
    `eval_windows`: held-out windows when an SAE run is evaluated from its page (None: 32);
    `heavy_workers`: run pages and API answers computed at once (Work)."""
    store, jobs, work = RunStore(runs_root), Evaluations(eval_windows), Work(heavy_workers)
    drawn = PageCache()

    def overview_page() -> HTMLResponse:
        return HTMLResponse(pages.page("Runs", overview_body(store, jobs, build)))

    async def overview(request: Request) -> HTMLResponse:
        return await work.run("light", overview_page)

    def render_run(name: str) -> HTMLResponse:
        try:
            store.locate(name)
        except RunError as e:
            return HTMLResponse(pages.error_page("Not found", str(e), "No such run."), 404)
        if build is not None and build.state_of(name) in ("pending", "running"):
            return HTMLResponse(
                pages.page(
                    name,
                    '<p class="empty" id="run-building">This run is being built; '
                    'its page appears when it is done (see <a href="/">Runs</a>).</p>',
                ),
                503,
            )
        try:  # a finished run's page is drawn once per state of its files (an SAE being evaluated: live)
            key = store.fingerprint(name) if store.has_results(name) and not jobs.running(name) else None
        except RunError:
            key = None  # run_body names the file at fault
        if key is not None and (page := drawn.get(name, key)) is not None:
            return HTMLResponse(page)
        try:
            kind, body = run_body(store, jobs, name)
        except PAGE_ERRORS as e:
            return HTMLResponse(pages.page(name, pages.error_box(f"{type(e).__name__}: {e}")), 500)
        page = pages.page(f"{name} ({kind})", body)
        if key is not None:
            drawn.put(name, key, page)
        return HTMLResponse(page)

    async def run_page(request: Request) -> HTMLResponse:
        return await work.run("heavy", render_run, request.path_params["name"])

    def benchmarks_page() -> HTMLResponse:
        path = Path(benchmarks_md) if benchmarks_md else None
        try:
            found = path is not None and regular_file(path) is not None
        except RunError as e:
            return HTMLResponse(pages.error_page("Benchmarks", str(e), "The benchmark results cannot be read."), 500)
        if not found:
            return HTMLResponse(pages.page("Benchmarks", '<p class="empty">No benchmark results found.</p>'))
        text = path.read_text(encoding="utf-8", errors="replace")
        return HTMLResponse(pages.page("Benchmarks", markdown.to_html(text)))

    async def benchmarks(request: Request) -> HTMLResponse:
        return await work.run("light", benchmarks_page)

    def feature(request: Request, _) -> dict:
        return api.feature(store, request.path_params["name"], request.path_params["feature"])

    def search(request: Request, _) -> dict:
        return api.search(store, request.path_params["name"], request.query_params.get("q", ""))

    def prompt(request: Request, body: Any) -> dict:
        api.run_path(store, request.path_params["name"])
        return api.prompt(store, request.path_params["name"], body)

    def ladder(request: Request, _) -> dict:
        return ladder_api.ladder(store, request.path_params["name"], dict(request.query_params))

    def health(request: Request, _) -> dict:
        return health_pane.health(store, request.path_params["name"], dict(request.query_params))

    def render_health(name: str) -> HTMLResponse:
        try:
            store.locate(name)
        except RunError as e:
            return HTMLResponse(pages.error_page("Not found", str(e), "No such run."), 404)
        return HTMLResponse(pages.page(f"{name} (training health)", health_pane.body(name)))

    async def health_page(request: Request) -> HTMLResponse:
        return await work.run("light", render_health, request.path_params["name"])

    def steer(request: Request, body: Any) -> dict:
        return steer_api.steer(store, request.path_params["name"], body)

    def attention(request: Request, _) -> dict:
        return api.attention(store, request.path_params["name"], dict(request.query_params))

    def head(request: Request, _) -> dict:
        return api.head(store, request.path_params["name"], dict(request.query_params))

    def evaluate(request: Request, _) -> dict:
        name = request.path_params["name"]
        if request.method == "POST":
            return api.start_evaluation(store, jobs, name)
        return api.evaluation_state(store, jobs, name)

    def file_response(name: str, rel: str) -> Response:
        """A file of a run: only a regular file that resolves inside that run's folder (itself inside
        the runs folder), else a 404 page naming why; a name no file can have is a 400."""

        def refused(status: int, why: str) -> HTMLResponse:
            return HTMLResponse(pages.error_page("Not found", why, "This file is not served."), status)

        parts = rel.split("/")
        if "\x00" in rel or len(rel) > 1024 or any(len(part.encode()) > 255 for part in parts):
            return refused(400, "the file name is not a valid path (a NUL byte, or a name over 255 bytes)")
        try:
            d = store.locate(name)
            target = (d / rel).resolve()
            if not target.is_relative_to(d):
                return refused(404, f"{rel!r} lies outside run {name!r}")
            st = regular_file(target)
        except (RunError, OSError, ValueError) as e:
            return refused(404, str(e))
        if st is None:
            return refused(404, f"run {name!r} has no file {rel!r}")
        # A run folder may hold anything (an .html or .svg): never let it run script on our origin.
        return FileResponse(
            target,
            stat_result=st,
            headers={"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"},
        )

    async def run_file(request: Request) -> Response:
        return await work.run("light", file_response, request.path_params["name"], request.path_params["path"])

    async def plotly_js(request: Request) -> Response:
        """plotly.js at its versioned URL: the same bytes for as long as that URL exists, gzipped
        (4.8 MB is 1.5 MB: what a browser on another machine, `--host 0.0.0.0`, waits for)."""
        headers = {"Cache-Control": IMMUTABLE, "Vary": "Accept-Encoding"}
        if not accepts_gzip(request):
            return FileResponse(PLOTLY_JS, media_type="application/javascript", headers=headers)
        body = await work.run("light", gzipped, PLOTLY_JS)
        return Response(body, media_type="application/javascript", headers={**headers, "Content-Encoding": "gzip"})

    async def draw_js(request: Request) -> Response:
        return Response(pages.DRAW_RESUME_JS, media_type="application/javascript", headers={"Cache-Control": IMMUTABLE})

    async def plotly_js_unversioned(request: Request) -> FileResponse:  # for pages saved before the change
        return FileResponse(PLOTLY_JS, media_type="application/javascript", headers={"Cache-Control": "no-cache"})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        """404 (no such route) and 405 (wrong method): JSON under /api/, a page elsewhere."""
        path = request.url.path
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {path} (allowed: {allowed})"
        elif exc.status_code == 404:
            message = f"nothing is served at {path}"
        else:
            message = f"{exc.status_code}: {exc.detail}"
        if path.startswith("/api/"):
            return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)
        return HTMLResponse(pages.error_page("Not found", message, "No such page."), exc.status_code, exc.headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        """Anything unforeseen: APIs still answer JSON naming what failed, pages an error page."""
        message = f"{type(exc).__name__}: {exc}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, 500)
        return HTMLResponse(pages.page("Error", pages.error_box(message)), 500)

    build_routes = [Route("/api/build", build_api(build, "ready"))] if build is not None else []
    return Starlette(
        middleware=[Middleware(HostCheck, host=host, port=port)],
        exception_handlers={HTTPException: http_error, Exception: unexpected},
        routes=build_routes
        + [
            Route("/", overview),
            Route("/run/{name}", run_page),
            Route("/run/{name}/health", health_page),
            Route("/benchmarks", benchmarks),
            Route("/api/run/{name}/feature/{feature}", json_route(work, feature)),
            Route("/api/run/{name}/search", json_route(work, search)),
            Route(
                "/api/run/{name}/prompt",
                json_route(work, prompt, body=True, expects='{"text": str, "feature": int}'),
                methods=["POST"],
            ),
            Route(
                "/api/run/{name}/steer",
                json_route(work, steer, body=True, expects='{"feature": int, "strength": float, "prompt": str}'),
                methods=["POST"],
            ),
            Route("/api/run/{name}/attention", json_route(work, attention)),
            Route("/api/run/{name}/head", json_route(work, head)),
            Route("/api/run/{name}/health", json_route(work, health, "light")),
            Route("/api/run/{name}/ladder", json_route(work, ladder)),
            Route("/api/run/{name}/evaluate", json_route(work, evaluate, "light"), methods=["GET", "POST"]),
            Route("/files/{name}/{path:path}", run_file),
            Route(pages.PLOTLY_URL, plotly_js),
            Route(pages.DRAW_URL, draw_js),
            Route("/static/plotly.min.js", plotly_js_unversioned),
        ],
    )
