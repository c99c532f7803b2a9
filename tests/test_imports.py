"""The package's import arrows: core and CLI never load Qt; the manifest resolves."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

QT_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt")
ROOT = Path(__file__).resolve().parents[1]


def _loaded_modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_package_import_loads_neither_qt_nor_torch():
    loaded = _loaded_modules_after("import napari_samtune")
    assert not loaded & {*QT_MODULES, "torch"}


def test_core_and_cli_load_no_qt():
    loaded = _loaded_modules_after(
        "import napari_samtune.core, napari_samtune.cli, "
        "napari_samtune.core.architectures, napari_samtune.core.synthetic"
    )
    assert "napari_samtune" in loaded
    assert not loaded & set(QT_MODULES)


def test_every_python_name_in_the_manifest_imports():
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    commands = manifest["contributions"]["commands"]
    assert commands
    for command in commands:
        module_name, attr = command["python_name"].split(":")
        assert module_name.startswith(("napari_samtune._qt", "napari_samtune._sample_data"))
        assert callable(getattr(importlib.import_module(module_name), attr))


def test_manifest_is_installed_with_the_package_and_validates():
    import napari_samtune

    packaged = Path(napari_samtune.__file__).parent / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-samtune"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_command_line_prints_the_installed_version(capsys):
    from importlib.metadata import version

    import napari_samtune
    from napari_samtune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"samtune {version('napari-samtune')}\n"
    assert napari_samtune.__version__ == version("napari-samtune")


def test_every_string_of_the_sources_encodes_as_utf_8():
    """A docstring's '\\udce9' (a lone surrogate, not an escaped backslash) compiled on
    Python 3.10-3.12, but 3.13 encodes docstrings as UTF-8 to strip their indentation and
    refused the whole module: every `samtune` command failed, even --help."""
    import ast

    bad = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                try:
                    node.value.encode("utf-8")
                except UnicodeEncodeError:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad


def test_the_command_line_runs_without_docstrings():
    """python -OO (PYTHONOPTIMIZE=2, as some containers set) drops docstrings: the
    segment command's help was its docstring, and every command failed building it."""
    run = [sys.executable, "-OO", "-m", "napari_samtune.cli", "segment", "--help"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: samtune segment" in out.stdout
