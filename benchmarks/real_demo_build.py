"""The real-model demo built fresh and end to end in one process (issue 28 item 4): `python app.py
--model smollm2-135m-instruct-q4 --build-only` on an empty WORKBENCH_HOME, so the one-time GGUF
conversion is part of it. Prints each stage's seconds (the app's own stage lines), the conversion, the
process wall time and its peak RSS; writes benchmarks/results/real_demo_fresh.json.

    python benchmarks/real_demo_build.py [--home DIR]   # DIR empty or absent; default a new temp folder
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = HERE.parent / "app.py"
NAME = "smollm2-135m-instruct-q4"
OUT = HERE / "results" / "real_demo_fresh.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="WORKBENCH_HOME to build into (empty or absent)")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="workbench-fresh-"))
    if home.exists() and any(home.iterdir()):
        ap.error(f"--home {home}: not empty (a fresh build needs an empty WORKBENCH_HOME)")
    env = {**os.environ, "WORKBENCH_HOME": str(home)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(APP), "--model", NAME, "--build-only"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = []
    for chunk in iter(lambda: proc.stdout.read(4096), ""):  # progress bars pass through as they come
        sys.stderr.write(chunk)
        out.append(chunk)
    if proc.wait() != 0:
        sys.exit(f"app.py exited with {proc.returncode}")
    wall = time.perf_counter() - start
    log = "".join(out)
    stages = {m[1]: float(m[2]) for m in re.finditer(r"^stage (\S+): done, ([0-9.]+) s", log, re.M)}
    conv = re.search(r"converted in ([0-9.]+) s", log)
    total = re.search(r"demo built in .*: ([0-9.]+) s in all", log)
    rec = {
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": f"WORKBENCH_HOME=<empty folder> python app.py --model {NAME} --build-only",
        "gguf_conversion_seconds": float(conv[1]) if conv else None,
        "stage_seconds": stages,
        "all_stages_seconds": float(total[1]) if total else None,
        "process_wall_seconds": wall,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,  # kB on Linux
    }
    OUT.write_text(json.dumps(rec, indent=1) + "\n")
    print("| stage | seconds |\n|---|---|")
    for name, sec in stages.items():
        print(f"| {name} | {sec:.1f} |")
    print(f"| all stages | {rec['all_stages_seconds']} |")
    print(f"| process wall time | {wall:.1f} ({wall / 60:.1f} min); peak RSS {rec['peak_rss_kb'] / 2**20:.1f} GB |")
    print(f"GGUF conversion (in the models stage): {rec['gguf_conversion_seconds']} s; written to {OUT}")


if __name__ == "__main__":
    main()
