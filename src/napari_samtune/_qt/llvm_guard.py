"""Keep triton from loading beside the LLVM of Mesa's OpenGL drivers, which crashes Python.

napari's canvas opens an OpenGL context as the viewer starts; with Mesa's drivers
(llvmpipe in a VM, a remote or virtual display, radeonsi on AMD GPUs) that loads
``libLLVM``. Opening *Annotate with SAM* then imports segment_anything, whose torchvision
ops import ``torch._dynamo``, which imports triton if it is installed (torch's Linux wheels
bring it), and triton's own LLVM crashes in ``triton._C.libtriton`` ("Segmentation fault";
measured with libLLVM-15, triton 3.8, torch 2.14). triton loaded before the viewer starts
is fine. The widgets use neither triton nor ``torch.compile``; without triton, torch runs
everything else as before.
"""

from __future__ import annotations

import sys


def mesa_llvm_loaded(maps_path: str = "/proc/self/maps") -> bool:
    """Whether this process has a ``libLLVM`` mapped (Linux; False where it cannot tell)."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:
        return False


def keep_triton_away() -> bool:
    """Make ``import triton`` fail cleanly (``ImportError``, which torch takes for "not
    installed") where a ``libLLVM`` is loaded and triton is not yet; returns whether it did.

    Called as this package is first imported, and again as each dock widget's module is: a
    script that imported a light module of the package before making its viewer (whose
    canvas loads Mesa's libLLVM) crashed when it then opened a widget."""
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False  # loaded already (no crash then), or no /proc/self/maps to read
    if not mesa_llvm_loaded():
        return False
    sys.modules["triton"] = None  # the import system raises ImportError for a None entry
    return True
