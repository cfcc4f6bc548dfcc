"""Cold page loads of the viewer in headless Chromium (issue 27, item 7): for each page, from
navigation start, when its text is first painted (first contentful paint) and, on a page with
figures, when plotly has put the first figure's SVG into the page and when a frame holding it was
first presented (the SVG is on screen only once the script that drew it, and any that run after it
in the same task, have finished); each load in a fresh browser context, so with an empty cache
(plotly.min.js, 4.8 MB, 1.5 MB gzip-compressed, fetched again every time).

    python benchmarks/viewer_load.py [--runs DIR] [--repeats 3] [--build-only] [--label now]

The runs are the demo's, in $WORKBENCH_HOME/demo (built with workbench.demo.build_demo if missing;
--runs takes another folder), served by workbench.viewer.server.create_app under uvicorn on a free
port of 127.0.0.1. Chromium is Debian's (/usr/bin/chromium, or $WORKBENCH_CHROMIUM), launched as the
viewer's tests launch it. The first load of a page after the server started also waits for the
server to draw it (0.1-0.7 s on two cores); later loads are served as drawn (the page cache). Both
are reported: "first" is that first load, the other columns the `--repeats` loads after it. Targets:
a page without a figure shows its text within 1 s; the first figure of a figure page is drawn
within 3 s. Prints one markdown table (median and worst of the repeats); the numbers go to
benchmarks/RESULTS.md by hand, with the date and machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

PAGES = [  # (path, has a figure)
    ("/", False),
    ("/benchmarks", False),
    ("/run/sae-topk", True),
    ("/run/probe-sparsity", True),
    ("/run/probe-heads", True),
    ("/run/probe-arrow", True),
]
TEXT_TARGET_MS, FIGURE_TARGET_MS = 1000, 3000

# Runs before any script of the page: notes when the first plotly figure's SVG enters the page, and
# when the frame holding it has been presented: a requestAnimationFrame callback runs just before the
# next frame is drawn, and a message posted from it is handled once that frame has been (the usual
# way to time a paint that no paint-timing entry reports, an SVG's).
FIRST_FIGURE = """
window.__firstFigure = null; window.__figureShown = null;
new MutationObserver((_, obs) => {
  if (window.__firstFigure === null && document.querySelector(".main-svg")) {
    window.__firstFigure = performance.now(); obs.disconnect();
    requestAnimationFrame(() => {
      const ch = new MessageChannel();
      ch.port1.onmessage = () => { window.__figureShown = performance.now(); };
      ch.port2.postMessage(null);
    });
  }
}).observe(document, {childList: true, subtree: true});
"""

TIMINGS = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  const plotly = performance.getEntriesByType("resource").filter(r => r.name.includes("plotly"));
  return {fcp: fcp ? fcp.startTime : null, dcl: nav.domContentLoadedEventEnd, figure: window.__firstFigure,
          shown: window.__figureShown, plotly_bytes: plotly.reduce((n, r) => n + (r.encodedBodySize || 0), 0)};
}"""


def chromium() -> str:
    path = os.environ.get("WORKBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise SystemExit("Chromium is not installed (./install.sh --test installs Debian's chromium)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runs_folder(runs: str | None) -> Path:
    """--runs, or the demo (built first when it is missing)."""
    if runs:
        return Path(runs)
    from workbench.demo import build_demo, default_demo_dir

    root = default_demo_dir()
    t0 = time.perf_counter()
    build_demo(root, progress=False)  # reuses every run already built
    print(f"demo in {root} (ready after {time.perf_counter() - t0:.1f} s)", flush=True)
    return root


def serve(root: Path, port: int):
    import uvicorn

    from workbench.viewer.server import create_app

    bench = Path(__file__).resolve().parent / "RESULTS.md"
    app = create_app(root, benchmarks_md=bench, port=port)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def measure(browser, url: str, figure: bool) -> dict:
    """One load in a fresh context (empty cache); times in ms from navigation start."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.add_init_script(FIRST_FIGURE)
    response = page.goto(url, wait_until="load", timeout=60_000)
    if response is None or response.status != 200:
        raise SystemExit(f"{url}: HTTP {response.status if response else '?'}")
    if figure:
        page.wait_for_function("window.__figureShown !== null", timeout=60_000)
    page.wait_for_load_state("networkidle")
    # paint entries are reported once the frame is presented, which can be after "load"
    page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length > 0", timeout=60_000)
    out = page.evaluate(TIMINGS)
    context.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=None, help="folder of runs to serve (default: the demo, built if missing)")
    ap.add_argument("--repeats", type=int, default=3, help="cold loads per page (default 3)")
    ap.add_argument("--build-only", action="store_true", help="build the demo if missing, measure nothing")
    ap.add_argument("--label", default="this viewer", help="what the table's rows measured (e.g. a commit)")
    args = ap.parse_args(argv)
    root = runs_folder(args.runs)
    if args.build_only:
        return
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = serve(root, port)
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium(), headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            measure(browser, f"http://127.0.0.1:{port}/", False)  # warm the server's caches, not the browser's
            for path, figure in PAGES:
                loads = [measure(browser, f"http://127.0.0.1:{port}{path}", figure) for _ in range(1 + args.repeats)]
                rows.append((path, figure, loads))
            browser.close()
    finally:
        server.should_exit = True

    def cell(values: list) -> str:
        values = [v for v in values if v is not None]
        return f"{statistics.median(values):.0f} / {max(values):.0f}" if values else "n/a"

    print(
        f"\n{time.strftime('%Y-%m-%d')} · {platform.machine()}, {os.cpu_count()} cores · {args.label} · "
        f"the first load after the server started, then {args.repeats} cold loads per page (a fresh context "
        "each), ms from navigation start, median / worst of the repeats\n"
    )
    print(
        "| page | first load: text / figure shown | text painted (FCP) | first figure's SVG in the page | "
        "first figure shown | plotly.js transferred (MB) | target | met (every load) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path, figure, (first, *loads) in rows:
        fcp, svg, shown = ([x[k] for x in loads] for k in ("fcp", "figure", "shown"))
        key = "shown" if figure else "fcp"
        worst = max((x[key] for x in (first, *loads) if x[key] is not None), default=float("inf"))
        target = FIGURE_TARGET_MS if figure else TEXT_TARGET_MS
        mb = statistics.median(x["plotly_bytes"] for x in loads) / 1e6
        head = f"{first['fcp']:.0f} / {first['shown']:.0f}" if figure else f"{first['fcp']:.0f} / -"
        print(
            f"| `{path}` | {head} | {cell(fcp)} | {cell(svg) if figure else '(no figure)'} | "
            f"{cell(shown) if figure else '(no figure)'} | {mb:.1f} | "
            f"{'figure' if figure else 'text'} ≤ {target / 1000:g} s | {'yes' if worst <= target else 'no'} |"
        )


if __name__ == "__main__":
    main()
