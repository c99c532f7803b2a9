"""The napari widgets of napari-samtune (the only place Qt, napari and magicgui are used).

napari imports these modules only when a user opens a widget (see napari.yaml).
"""

from napari_samtune._qt.llvm_guard import keep_triton_away

keep_triton_away()  # before any widget module imports torch's extras (see llvm_guard)
