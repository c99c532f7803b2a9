"""Opening *Annotate with SAM* in a running napari crashed Python where Mesa's OpenGL had
loaded libLLVM (a VM, a virtual or remote display): torchvision's ops import torch._dynamo,
which imported triton, whose LLVM crashed beside Mesa's. The tests' conftest imports torch
before any viewer exists, so only a fresh process, in napari's order, shows it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from napari_samtune._qt.llvm_guard import mesa_llvm_loaded

NAPARI_FIRST = textwrap.dedent(
    """
    import napari

    viewer = napari.Viewer(show=False)  # its OpenGL context: Mesa loads libLLVM here
    maps = open("/proc/self/maps").read()
    print("libLLVM mapped:", "libLLVM" in maps)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-samtune", "Annotate with SAM")
    import torch._dynamo  # what torchvision's ops import; it looks for triton
    from torch.utils._triton import has_triton_package

    print("triton:", has_triton_package())
    print("opened", type(widget).__name__)
    viewer.close()
    """
)


PACKAGE_FIRST = "import napari_samtune._qt.layer_names\n" + NAPARI_FIRST


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("script", [NAPARI_FIRST, PACKAGE_FIRST], ids=["napari", "package"])
def test_the_annotate_dock_opens_in_a_running_napari(script):
    """ "package": a light module of this package imported before the viewer, whose canvas
    then loads libLLVM: the guard, run at that first import, found none and did nothing."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "opened AnnotateWidget" in done.stdout
    if "libLLVM mapped: True" in done.stdout:  # (as on this project's CI, Mesa's llvmpipe)
        assert "triton: False" in done.stdout  # kept away, not crashed


def test_a_mapped_libllvm_is_seen(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f1c2000-7f1c3000 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n"
    )
    assert mesa_llvm_loaded(str(maps))
    maps.write_text("7f1c2000-7f1c3000 r-xp 00000000 08:01 123 /usr/lib/libGL.so.1\n")
    assert not mesa_llvm_loaded(str(maps))
    assert not mesa_llvm_loaded(str(tmp_path / "none"))  # unreadable: cannot tell
