"""The part of the viewer that answers at once, before torch and the figures are imported.

`Viewer` is the ASGI app that `app.py` serves: until the full viewer (workbench.viewer.server,
whose imports take 10-20 s on 2 cores) is installed, it answers `/` with the build page and
`/api/build` with the build's state, and every other path with a 503 that says it is starting.
`HostCheck` refuses requests whose Host header is not this server's (DNS rebinding: a page on
evil.example that resolves its own name to 127.0.0.1 must not read the viewer), as Jupyter does,
and any request that changes something (POST: evaluate a run, run a prompt) sent by another origin:
a page anywhere could otherwise post a form to 127.0.0.1 and start work in the viewer.
Only light modules (starlette, the build status, the page HTML) are imported here.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from . import pages
from .build_status import BuildStatus

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # bound to every interface: any Host may be legitimate


def host_names(host: str) -> set[str]:
    """Host header names (without port) accepted for a server bound to `host`; empty: any."""
    if host in WILDCARD_HOSTS:
        return set()
    bound = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return {bound.lower(), *LOOPBACK_NAMES}


class HostCheck:
    """ASGI middleware: 403 for a Host header other than the bound host or loopback, with the port.

    port None accepts any port (a server whose port is chosen by the OS, in tests)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.app, self.names, self.port = app, host_names(host), port

    def allowed(self, value: str) -> bool:
        if not self.names:
            return True
        name, sep, port = value.lower().rpartition(":")
        if not sep or name.endswith("[") or (name.startswith("[") and not name.endswith("]")):
            name, port = value.lower(), ""  # no port given (or an IPv6 literal without one)
        if name not in self.names:
            return False
        if self.port is None:
            return port == "" or port.isdigit()
        return port == str(self.port) or (port == "" and self.port == 80)

    @staticmethod
    def cross_origin(scope, host: str) -> str | None:
        """The Origin of a state-changing request from another site (None: allowed). Browsers send
        Origin on every cross-origin POST; tools that send none (curl, tests) are not browsers."""
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin", b"").decode("latin-1")
        if scope.get("method", "GET") in ("GET", "HEAD", "OPTIONS") or not origin:
            return None
        netloc = origin.partition("://")[2].rstrip("/").lower()
        return None if netloc == host.lower() else origin

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            value = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if (origin := self.cross_origin(scope, value)) is not None:
                response = PlainTextResponse(
                    f"a {scope.get('method')} from origin {origin!r} is refused: only this viewer's own pages "
                    "may change anything",
                    403,
                )
                await response(scope, receive, send)
                return
            if not self.allowed(value):
                response = PlainTextResponse(
                    f"Host header {value!r} is refused: this viewer answers only to "
                    f"{', '.join(sorted(self.names))}" + (f" on port {self.port}" if self.port else ""),
                    403,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_api(status: BuildStatus, viewer: str):
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({**status.snapshot(), "viewer": viewer})

    return endpoint


class Viewer:
    """The ASGI app app.py serves: the build page until `install(full_app)`, then the full viewer."""

    def __init__(self, status: BuildStatus, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.status, self.full = status, None

        async def front_page(request: Request) -> HTMLResponse:
            snap = {**status.snapshot(), "viewer": "starting"}
            return HTMLResponse(pages.page("Workbench", pages.build_panel(snap)))

        async def starting(request: Request):
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": "the viewer is still starting; retry in a few seconds"}, 503)
            body = '<p class="empty">The viewer is still starting; this page reloads when it is ready.</p>'
            return HTMLResponse(pages.page("Starting", body + pages.reload_when_ready()), 503)

        self.front = HostCheck(
            Starlette(
                routes=[
                    Route("/", front_page),
                    Route("/api/build", build_api(status, "starting")),
                    Route("/{path:path}", starting, methods=["GET", "POST", "HEAD"]),
                ]
            ),
            host,
            port,
        )

    def install(self, app) -> None:
        self.full = app

    async def __call__(self, scope, receive, send) -> None:
        app = self.full if self.full is not None else self.front
        await app(scope, receive, send)
