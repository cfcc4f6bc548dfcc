"""Start the workbench viewer: `python app.py` (builds the demo run on first start).

    python app.py [--host 127.0.0.1] [--port 8000] [--runs DIR] [--no-build]

The server answers at once: heavy imports (torch, TransformerLens) and the demo build run in a
background thread that starts once the server listens, and `/` shows the build live meanwhile.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
import traceback
from pathlib import Path


def _load_and_build(viewer, status, args) -> None:
    """The background thread: import the full viewer, install it, then build the missing demo runs."""
    from workbench.viewer.build_status import BuildStopped

    try:
        _build(viewer, status, args)
    except BuildStopped:  # Ctrl-C landed while a handler below was already finishing
        status.finish("stopped")


def _build(viewer, status, args) -> None:
    from workbench.viewer.build_status import BuildStopped

    try:
        from workbench.demo import DemoBuildError, build_demo, configure_threads, default_demo_dir
        from workbench.viewer.server import create_app

        configure_threads()
        root = Path(args.runs) if args.runs else default_demo_dir()
        build = args.runs is None and not args.no_build
        viewer.install(
            create_app(
                root,
                benchmarks_md=Path(__file__).parent / "benchmarks" / "RESULTS.md",
                host=args.host,
                port=args.port,
                build=status,
            )
        )
        print(f"runs: {root}" + (" (the demo: built on first start, reused afterwards)" if build else ""), flush=True)
        if build:
            build_demo(root, status=status)
        status.finish()
    except BuildStopped:
        status.finish("stopped")
    except DemoBuildError as e:  # each failed stage shows its own error on the page
        print(f"demo build: {e}", file=sys.stderr, flush=True)
        status.finish()
    except Exception as e:
        traceback.print_exc()
        status.finish(error=f"{type(e).__name__}: {e}")


def _stop(thread: threading.Thread, status) -> None:
    """Ctrl-C: stop the build thread where it is. BuildStopped is raised inside it at its next Python
    bytecode (between two small torch ops), so its `finally` blocks and the atomic writes' clean-up
    run; an unfinished run keeps no results.json and is rebuilt on the next start."""
    from workbench.viewer.build_status import BuildStopped

    status.stop.set()
    if not thread.is_alive():
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(BuildStopped))
    thread.join(timeout=10)
    print("build stopped: unfinished runs are rebuilt on the next start", flush=True)
    if thread.is_alive():  # stuck in one long native call: do not wait for it
        sys.stdout.flush()
        os._exit(130)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="workbench viewer")
    ap.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: loopback only). The viewer answers only requests whose Host "
        "header is this address or loopback (against DNS rebinding); 0.0.0.0 or :: (every interface) "
        "turns that check off: any Host is answered, so bind them only on a trusted network",
    )
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--runs", default=None, help="folder of run directories (default: the demo, built if missing)")
    ap.add_argument("--no-build", action="store_true", help="do not build the demo if it is missing")
    args = ap.parse_args(argv)

    import uvicorn

    from workbench.viewer.build_status import BuildStatus
    from workbench.viewer.front import Viewer

    status = BuildStatus()
    viewer = Viewer(status, args.host, args.port)
    server = uvicorn.Server(uvicorn.Config(viewer, host=args.host, port=args.port, log_level="warning", lifespan="off"))
    worker = threading.Thread(target=_load_and_build, args=(viewer, status, args), name="demo-build", daemon=True)

    def start_when_listening() -> None:  # the imports compete for the GIL: let the server bind first
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if server.started:
            print(f"workbench viewer: http://{args.host}:{args.port}/", flush=True)
            worker.start()

    threading.Thread(target=start_when_listening, daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it caught once it has shut down
        pass
    finally:
        if worker.ident is not None:
            _stop(worker, status)


if __name__ == "__main__":
    main()
