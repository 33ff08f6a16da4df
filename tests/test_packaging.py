"""The package as a user installs it: a wheel built from the sources, installed into a fresh
virtual environment, runs `spa --version` and `python -m spa --version`; the sdist builds.

The sources are copied to a temporary folder first, so building leaves no build/ or
*.egg-info in the checkout. The fresh environment gets no copy of onnx and onnxruntime from
PyPI: a .pth file puts this interpreter's site-packages after its own (a path listed in a .pth
is searched, the .pth files inside it are not run, so an editable install of the checkout
there stays inert). Whatever `spa` the fresh environment imports is the wheel's.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

DISTRIBUTION = "spa-prune"


def _version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def _sources(tmp_path: Path) -> Path:
    """What a build reads (pyproject.toml, README.md, spa/), copied to tmp_path/src."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "spa", source / "spa", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return source


def _run(*command, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_wheel_installs_and_reports_its_version(tmp_path):
    source = _sources(tmp_path)
    _run(sys.executable, "-m", "pip", "wheel", source, "--no-deps", "-w", tmp_path / "dist", "-q", cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"spa_prune-{_version()}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "spa/cli.py" in names and "spa/__main__.py" in names and "spa/io/inputs.py" in names
    assert not any(n.startswith(("tests/", "models/", "tools/")) for n in names)
    assert "spa = spa.cli:main" in entry_points

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel,
         cwd=tmp_path)
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout
    (Path(purelib.strip()) / "_spa_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tests run with PYTHONPATH=.
    # cwd is tmp_path: `python -m` puts the working folder first on sys.path, and the checkout must not be it
    assert _run(venv / "bin" / "spa", "--version", cwd=tmp_path, env=env).stdout == f"spa {_version()}\n"
    assert _run(python, "-m", "spa", "--version", cwd=tmp_path, env=env).stdout == f"spa {_version()}\n"
    where = _run(python, "-c", "import spa, importlib.metadata as m; print(spa.__file__); print(spa.__version__); "
                 f"print(m.version({DISTRIBUTION!r}))", cwd=tmp_path, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and where[1:] == [_version(), _version()]


def _build_sdist(source: Path, out: Path) -> None:
    """With `build` if installed (pip cannot make an sdist), else setuptools' PEP 517 hook
    (the backend pyproject.toml names), run in the source folder."""
    if importlib.util.find_spec("build"):
        _run(sys.executable, "-m", "build", "--sdist", "--outdir", out, source, cwd=source)
    elif importlib.util.find_spec("setuptools"):
        _run(sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})",
             cwd=source)
    else:
        pytest.skip("neither `build` nor setuptools is installed: no way to build an sdist here")


def test_sdist_builds_with_the_sources(tmp_path):
    source = _sources(tmp_path)
    _build_sdist(source, tmp_path / "dist")
    [sdist] = (tmp_path / "dist").glob("*.tar.gz")
    top = sdist.name.removesuffix(".tar.gz")
    assert top in (f"spa_prune-{_version()}", f"spa-prune-{_version()}")  # PEP 625 (setuptools >= 69.3), older
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
        info = archive.extractfile(f"{top}/PKG-INFO").read().decode()
    assert {f"{top}/{n}" for n in ("pyproject.toml", "README.md", "spa/cli.py", "spa/__main__.py")} <= names
    assert f"Name: {DISTRIBUTION}\n" in info and f"Version: {_version()}\n" in info


@pytest.mark.parametrize("preset, expected", [(None, "4"), ("30", "30")])
def test_importing_spa_first_puts_openblas_workers_to_sleep_at_once(preset, expected):
    """spa's import sets OPENBLAS_THREAD_TIMEOUT before numpy loads OpenBLAS (spinning workers
    of numpy's, scipy's and onnxruntime's pools take each other's cores), and keeps a user's value."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    code = "import spa, numpy, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected
