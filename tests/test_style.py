"""The code is formatted and linted with ruff (pyproject.toml's [tool.ruff]): CI fails on drift."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.fail("ruff is not installed: it is in the test extra (./install.sh --test)")


@pytest.mark.parametrize("args", [["format", "--check", "."], ["check", "."]], ids=["format", "lint"])
def test_ruff_is_clean(args):
    out = subprocess.run(_ruff() + args, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, f"ruff {' '.join(args)} found problems:\n{out.stdout[-4000:]}{out.stderr[-2000:]}"
