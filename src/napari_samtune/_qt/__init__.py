"""The napari widgets of napari-samtune (the only place Qt, napari and magicgui are used).

napari imports these modules only when a user opens a widget (see napari.yaml).
"""
