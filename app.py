"""Start the workbench viewer: `python app.py` (builds the demo run on first start).

    python app.py [--host 127.0.0.1] [--port 8000] [--runs DIR] [--no-build]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description="workbench viewer")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--runs", default=None, help="folder of run directories (default: the demo, built if missing)")
    ap.add_argument("--no-build", action="store_true", help="do not build the demo if it is missing")
    args = ap.parse_args()

    import uvicorn

    from workbench.demo import build_demo, default_demo_dir
    from workbench.viewer.server import create_app

    root = Path(args.runs) if args.runs else default_demo_dir()
    if args.runs is None and not args.no_build:
        print(f"demo runs in {root} (built on first start, reused afterwards)", flush=True)
        build_demo(root)
    app = create_app(root, benchmarks_md=Path(__file__).parent / "benchmarks" / "RESULTS.md")
    print(f"workbench viewer: http://{args.host}:{args.port}/  (runs: {root})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
