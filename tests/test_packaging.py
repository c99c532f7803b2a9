"""The source distribution and the wheel built from it, offline in the project's own
environment (``python -m build --no-isolation``)."""

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEFT_BEHIND = (".git", ".venv", "*.egg-info", "__pycache__", "build", "dist", ".ruff_cache")


def test_the_sdist_carries_the_tests_with_their_fixtures_and_builds_a_wheel(tmp_path):
    """The sdist held the top-level test files only: no conftest.py (whose fixtures keep the
    tests out of the user's model folder: a test then registered a model there), no
    tests/core or tests/_qt, no scripts/setup.sh that its README starts with. And the build
    asked for the 'wheel' package, which the set-up's environment lacks (setuptools builds
    wheels itself), so it failed offline."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*LEFT_BEHIND), symlinks=True)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist")],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "tests/conftest.py",
        "tests/core/conftest.py",
        "tests/_qt/conftest.py",
        "scripts/setup.sh",
        "constraints.txt",
        "napari.yaml",
        "benchmarks/run_all.py",
    ):
        assert needed in names, needed
    assert not any("__pycache__" in name for name in names)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    assert {"napari_samtune/napari.yaml", "napari_samtune/weights/nano.pth"} <= files
    assert not any(name.startswith("tests/") for name in files)  # tests stay out of the wheel
