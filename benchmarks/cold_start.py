"""First start of `python app.py` on an empty WORKBENCH_HOME: seconds to the first HTTP 200 on `/`,
seconds until every demo run is done, alone and with one busy process beside it
(`python -c "while True: pass"`), and the ratio of the two build times (the issue's bar: 2.5x).

    python benchmarks/cold_start.py [--conditions alone busy] [--timeout 1800] [--write]

Prints a markdown section; --write also puts it into benchmarks/RESULTS.md (replacing an older
"## Cold start" section) and the raw numbers go to benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = HERE.parent / "app.py"
HEADING = "## Cold start (`benchmarks/cold_start.py`)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def measure(busy: bool, timeout: float) -> dict:
    """One cold start in a fresh WORKBENCH_HOME; the clock starts just before the process does."""
    home = Path(tempfile.mkdtemp(prefix="workbench-cold-"))
    port = _free_port()
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    env = {**os.environ, "WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = open(home / "app.log", "w")
    t0 = time.perf_counter()
    app = subprocess.Popen([sys.executable, str(APP), "--port", str(port)], env=env, stdout=log, stderr=log)
    first = done = None
    snapshot: dict = {}
    try:
        while time.perf_counter() - t0 < timeout:
            if app.poll() is not None:
                raise RuntimeError(f"app.py exited with {app.returncode}; see {home / 'app.log'}")
            try:
                if first is None:
                    if _get(f"http://127.0.0.1:{port}/")[0] == 200:
                        first = time.perf_counter() - t0
                    else:
                        time.sleep(0.02)
                    continue
                status, body = _get(f"http://127.0.0.1:{port}/api/build")
                snapshot = json.loads(body)
                if status == 200 and snapshot.get("phase") in ("finished", "stopped"):
                    done = time.perf_counter() - t0
                    break
            except OSError:  # not listening yet
                time.sleep(0.02)
                continue
            time.sleep(0.5)
    finally:
        app.send_signal(signal.SIGINT)  # the Ctrl-C path: the build thread stops, the server exits
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
        if competitor is not None:
            competitor.kill()
            competitor.wait()
        log.close()
    stages = {
        s["name"]: {"state": s["state"], "seconds": s["seconds"], "error": s["error"]}
        for s in snapshot.get("stages", [])
    }
    return {
        "condition": "one busy process beside it" if busy else "alone",
        "first_200_s": first,
        "demo_done_s": done,
        "stages": stages,
        "home": str(home),
    }


def report(rows: list[dict]) -> str:
    stage_names = list(rows[0]["stages"]) if rows and rows[0]["stages"] else []
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        HEADING,
        "",
        f"{date.today()} · {platform.machine()}, {os.cpu_count()} cores · `python app.py` on an "
        "empty `WORKBENCH_HOME` (the install not counted); the build uses 1 torch thread "
        "(`workbench.demo.configure_threads`).",
        "",
        "| condition | first HTTP 200 (s) | every demo run done (s) | " + " | ".join(stage_names) + " |",
        "|---|---|---|" + "---|" * len(stage_names),
    ]
    for r in rows:
        cells = [
            fmt(r["stages"][n]["seconds"])
            + ("" if r["stages"][n]["state"] == "done" else f" ({r['stages'][n]['state']})")
            for n in stage_names
        ]
        lines.append(
            f"| {r['condition']} | {fmt(r['first_200_s'])} | {fmt(r['demo_done_s'])} | " + " | ".join(cells) + " |"
        )
    alone = next((r for r in rows if r["condition"] == "alone"), None)
    busy = next((r for r in rows if r["condition"] != "alone"), None)
    if alone and busy and alone["demo_done_s"] and busy["demo_done_s"]:
        lines += [
            "",
            f"With one busy process the build took {busy['demo_done_s'] / alone['demo_done_s']:.2f}x "
            "its time alone (the bar: at most 2.5x).",
        ]
    return "\n".join(lines) + "\n"


def write_results(section: str, path: Path = HERE / "RESULTS.md") -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda m: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conditions", nargs="+", choices=["alone", "busy"], default=["alone", "busy"])
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one build")
    ap.add_argument("--write", action="store_true", help="also write the section into benchmarks/RESULTS.md")
    args = ap.parse_args()
    rows = [measure(c == "busy", args.timeout) for c in args.conditions]
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cold_start.json").write_text(json.dumps(rows, indent=1))
    section = report(rows)
    print(section)
    if args.write:
        write_results(section)


if __name__ == "__main__":
    main()
