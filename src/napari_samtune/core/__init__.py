"""Headless engine of napari-samtune: models, images, prompts, segmentation, training.

Nothing under this package imports Qt, napari, magicgui or superqt, so scripts,
the command line and remote training jobs can use it without a display.
"""
