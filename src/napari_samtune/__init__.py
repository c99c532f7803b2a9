"""napari-samtune: annotate with Segment Anything, finetune it, annotate faster.

Importing this package loads neither Qt nor torch; the engine lives in
:mod:`napari_samtune.core`, the widgets in :mod:`napari_samtune._qt`.
"""

__version__ = "0.1.0"
