#!/usr/bin/env bash
# Installs the workbench into ./.venv.
#   ./install.sh          the library, app.py and notebooks
#   ./install.sh --test   also the test extras and Debian's Chromium (for the viewer's browser tests)
# torch is pinned to 2.13.0: on a machine without a GPU that release is the CPU build.
set -euo pipefail
cd "$(dirname "$0")"
extras="."
if [ "${1:-}" = "--test" ]; then extras=".[test]"; fi
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e "$extras"
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null; then
  sudo_="" ; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
echo "workbench installed in .venv"
