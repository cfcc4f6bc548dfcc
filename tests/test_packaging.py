"""A non-editable install ships kernels/ only as workbench.kernels: no top-level `kernels` module
that would shadow the PyPI package transformers probes for."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_has_no_top_level_kernels(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("workbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "kernels" not in tops
    assert "workbench/kernels/topk_encoder.py" in names
    # a subpackage left out of pyproject's list is missing from the wheel (workbench.kinds once was)
    subpackages = {
        f"{p.parent.relative_to(ROOT).as_posix()}/__init__.py" for p in (ROOT / "workbench").rglob("__init__.py")
    }
    assert subpackages - set(names) == set(), "pyproject.toml [tool.setuptools] packages lacks these"
    # the shipped default travels inside the package, so a wheel install needs no checkout
    assert {
        "workbench/data/workbench-tiny/manifest.json",
        "workbench/data/workbench-tiny/seed0/forward/model.safetensors",
        "workbench/data/workbench-tiny/seed0/forward/checkpoints/step_000000.safetensors",
        "workbench/data/arrow-primes/seed2/backward/model.safetensors",
    } <= set(names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    code = (
        "import importlib.util, sys; sys.path.insert(0, sys.argv[1]);"
        "import workbench.kernels.reference as r; assert r.__file__.startswith(sys.argv[1]);"
        "assert importlib.util.find_spec('kernels') is None;"
        "from transformers.utils import is_kernels_available; assert not is_kernels_available();"
        "from workbench.default_model import load_shipped, shipped_dir;"
        "assert str(shipped_dir()).startswith(sys.argv[1]); load_shipped('forward', 1)"
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, cwd=tmp_path)
