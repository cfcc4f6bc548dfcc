#!/usr/bin/env bash
# What a lent GPU runs, in one device call (see benchmarks/RESULTS.md for what it measured):
#   device run(command="bash benchmarks/gpu_session.sh [tests|bench|all]", carry=[".gpu-wheels"])
# tests: the kernel tests compiled for the GPU; bench: topk_sae_step.py --parts at both shapes and
# the 300-step FVU parity. Logs go to $OUT. .gpu-wheels/ comes from benchmarks/gpu_wheels.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
what=${1:-all}
py=python3  # the image's Python, which holds torch and triton
if [ -d .gpu-wheels ]; then
  $py -m pip install --no-index --no-deps .gpu-wheels/*.whl >"$out/pip.txt" 2>&1 || tail -3 "$out/pip.txt"
fi
# the package maps kernels/ to workbench.kernels; should pip fail, a link does the same
$py -m pip install --no-index --no-deps --no-build-isolation -e . >>"$out/pip.txt" 2>&1 \
  || ln -sfn ../kernels workbench/kernels
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } | tee "$out/device.txt"
status=0
if [ "$what" != bench ]; then
  $py -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tee "$out/kernel_tests.txt" | tail -5
  status=${PIPESTATUS[0]}
fi
if [ "$what" != tests ]; then
  $py benchmarks/topk_sae_step.py --parts 2>&1 | tee "$out/topk_sae_step.txt"
  status=$((status | PIPESTATUS[0]))
fi
exit $status
