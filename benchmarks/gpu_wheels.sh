#!/usr/bin/env bash
# Fills .gpu-wheels/ (about 40 MB, gitignored) with benchmarks/gpu-wheels.txt as wheels for the lent
# GPU machine (Python 3.12, x86_64, no package index there). Run here, where PyPI is reachable, then
# carry the folder: device run(command="bash benchmarks/gpu_session.sh", carry=[".gpu-wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."
pip=".venv/bin/python -m pip"
mkdir -p .gpu-wheels
grep -v '^#' benchmarks/gpu-wheels.txt | while read -r req; do
  [ -n "$req" ] || continue
  # a binary wheel for the device's Python; else (pure-Python sdists) build one here
  $pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .gpu-wheels "$req" 2>/dev/null \
    || $pip wheel -q --no-deps -w .gpu-wheels "$req"
done
du -sh .gpu-wheels
