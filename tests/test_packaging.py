"""A non-editable install ships kernels/ only as workbench.kernels: no top-level `kernels` module
that would shadow the PyPI package transformers probes for."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pypi_kernels_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


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
        # the wheel adds no top-level `kernels`: the name is free for the PyPI package (which
        # transformers >= 5.25 installs), or unbound where transformers does not need it
        "s = importlib.util.find_spec('kernels'); assert s is None or not (s.origin or '').startswith(sys.argv[1]);"
        "from workbench.default_model import load_shipped, shipped_dir;"
        "assert str(shipped_dir()).startswith(sys.argv[1]); load_shipped('forward', 1)"
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, cwd=tmp_path)


def test_repo_root_on_sys_path_does_not_shadow_pypi_kernels():
    """From the repository root (`python app.py`, `python -m pytest`) sys.path holds the root, where
    the folder kernels/ sits. transformers >= 5.25 depends on the PyPI package `kernels` and imports
    it at start-up; the folder must hand that name to the installed package, or transformers (and
    TransformerLens with it) fails to import."""
    code = "import transformer_lens, kernels, workbench.kernels as wk; print(kernels.__file__); print(wk.__file__)"
    if not _pypi_kernels_installed():
        code = "import transformer_lens, workbench.kernels as wk; print('-'); print(wk.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    pypi_file, ours = out.stdout.splitlines()[-2:]
    assert Path(ours).resolve() == ROOT / "kernels" / "__init__.py"
    if pypi_file != "-":
        assert Path(pypi_file).resolve().parent != ROOT / "kernels", pypi_file


def test_kernels_folder_without_the_pypi_package_and_in_two_checkouts(tmp_path):
    """Two copies of the folder on sys.path (a second checkout or worktree) must not hand the name to
    each other; with no PyPI `kernels` installed the folder stays an empty module without
    __version__ (transformers then reads kernels as unavailable, as before 5.25)."""
    import shutil

    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        (root / "kernels").mkdir(parents=True)
        shutil.copy(ROOT / "kernels" / "__init__.py", root / "kernels")
        (root / "kernels" / "topk_encoder.py").write_text("")
    code = (
        "import sys; sys.path[:0] = sys.argv[1:]; import kernels; "
        "print(kernels.__file__); print(hasattr(kernels, '__version__'))"
    )
    # -S: no site-packages, so no PyPI package: the first copy on sys.path keeps the name, empty
    bare = subprocess.run([sys.executable, "-S", "-c", code, *map(str, roots)], capture_output=True, text=True)
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert bare.stdout.splitlines() == [str(roots[0] / "kernels" / "__init__.py"), "False"]
    if not _pypi_kernels_installed():
        return
    # with site-packages both copies step aside for the installed package
    full = subprocess.run([sys.executable, "-c", code, *map(str, roots)], capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    installed, has_version = full.stdout.splitlines()
    assert tmp_path not in Path(installed).resolve().parents and has_version == "True"
