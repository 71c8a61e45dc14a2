"""What users install is what we built: the compiled core, its stub, clean archives.

``test_compiled_core_loaded`` runs everywhere, including against every wheel
cibuildwheel builds.  ``test_sdist_and_wheel_contents`` builds both archives
the way a release does (``python -m build``: the sdist, then the wheel from
the sdist, in an isolated environment that fetches the pinned Cython) and
checks what they carry; it is marked ``build`` because it needs the package
index and ~20 s.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import fastelect
import fastelect._core

ROOT = Path(__file__).resolve().parents[1]


def test_compiled_core_loaded() -> None:
    """``fastelect._core`` is the extension module, not a Python fallback."""
    path = fastelect._core.__file__
    assert path is not None
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    assert path.endswith(suffixes), f"fastelect._core loaded from {path}, not a shared library"
    assert isinstance(fastelect._core.__loader__, importlib.machinery.ExtensionFileLoader)


def test_typing_files_ship_beside_the_core() -> None:
    """PEP 561: the marker and the hand-written stub are installed with the package."""
    package = Path(fastelect.__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_core.pyi").is_file()


def _copy_source_tree(dest: Path) -> Path:
    """Copy the checkout without build products, so building never writes into it."""
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "venv",
        "build",
        "dist",
        "wheelhouse",
        "*.egg-info",
        "__pycache__",
        ".*_cache",
        ".benchmarks",
        ".hypothesis",
        "*.so",
        "*.c",
        "*.html",
    )
    tree = dest / "src-tree"
    shutil.copytree(ROOT, tree, ignore=ignore)
    return tree


@pytest.mark.build
@pytest.mark.timeout(900)
def test_sdist_and_wheel_contents(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="needs the 'build' package (in the test extras)")
    if not (ROOT / "setup.py").is_file() or not (ROOT / "src" / "fastelect").is_dir():
        pytest.skip("needs the source tree (tests run from a copy without it)")
    tree = _copy_source_tree(tmp_path)
    out = tmp_path / "dist"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(tree)],
        capture_output=True,
        text=True,
        env=env,
        timeout=840,
        check=False,
    )
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout}\n{result.stderr}"

    (sdist,) = out.glob("fastelect-*.tar.gz")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        members = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    for needed in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "src/fastelect/_core.pyx",
        "src/fastelect/_core.pxd",
        "src/fastelect/_core.pyi",
        "src/fastelect/py.typed",
        "tests/conftest.py",
        "docs/safety.md",
        "docs/operations.md",
    ):
        assert needed in members, f"the sdist lacks {needed}"
    generated = sorted(m for m in members if m.endswith((".c", ".so", ".pyc")))
    assert not generated, f"the sdist carries build products: {generated}"

    (wheel,) = out.glob("fastelect-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert not [n for n in names if n.endswith(".c")], "the wheel carries generated C"
    assert {"fastelect/_core.pyi", "fastelect/_core.pxd", "fastelect/py.typed"} <= names
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    assert [n for n in names if n.startswith("fastelect/_core") and n.endswith(suffixes)], (
        f"the wheel has no compiled core: {sorted(names)}"
    )

    # The wheel's core imports with Cython unavailable: it is compiled, not built on import.
    target = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    check = (
        "import sys; sys.modules['Cython'] = None; "
        "import fastelect._core as core; print(core.__file__)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().startswith(str(target)), loaded.stdout
