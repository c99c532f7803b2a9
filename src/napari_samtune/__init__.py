"""napari-samtune: annotate with Segment Anything, finetune it, annotate faster.

Importing this package loads neither Qt nor torch; the engine lives in
:mod:`napari_samtune.core`, the widgets in :mod:`napari_samtune._qt`.

On Linux it asks torch (not loaded yet) to back its large CPU tensors with transparent huge
pages, ``THP_MEM_ALLOC_ENABLE=1``, which torch reads once, when it loads; a value already set
is kept. With 2 MB pages instead of 4 kB, the encoders' large maps need far fewer TLB entries
and page faults: on a 2-core AVX-512 BF16 EPYC the vit_b encoder took 3.49-3.59 instead of
4.17-4.18 s and vit_t 0.31 instead of 0.32 s (medians of alternating processes). In a process
that loaded torch first it changes nothing.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

if _sys.platform.startswith("linux"):
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
