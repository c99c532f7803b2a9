"""Regenerate docs/screenshots/annotate.png: the annotation widget docked in napari.

Usage (a virtual display is enough):

    xvfb-run -a .venv/bin/python scripts/screenshot_annotate.py [--model NAME_OR_PATH]

The scene: synthetic nuclei, two objects committed from a point and from a box, and a
current object being prompted with a positive and a negative point. Prompts are placed
on objects of the image's ground truth, the way a user would click them; every mask
comes from the model through the widget.

Which model: ``--model`` (a registry name such as ``vit_t_lm``, or a weights file).
Without it: the packaged offline generalist ``nano`` when it is installed; otherwise
the script first trains the tiny test architecture from random weights on other
synthetic nuclei images with the project's own trainer (``--train-epochs``, default
40: a few minutes on a CPU, validation IoU about 0.75) and uses that.
``--train-epochs 0`` uses the untrained random model (arbitrary masks).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _wait(app, condition, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.02)


def _centre(labels: np.ndarray, object_id: int) -> list[float]:
    rows, cols = np.nonzero(labels == object_id)
    return [float(np.median(rows)), float(np.median(cols))]


def _box(labels: np.ndarray, object_id: int, margin: float = 3.0) -> np.ndarray:
    rows, cols = np.nonzero(labels == object_id)
    low, high = (
        [rows.min() - margin, cols.min() - margin],
        [rows.max() + margin, cols.max() + margin],
    )
    return np.array([low, [low[0], high[1]], high, [high[0], low[1]]], dtype=float)


def _packaged_model(name: str) -> bool:
    """Whether registry model ``name`` exists and its weights are on this machine."""
    from napari_samtune.core.model_lookup import get_model_spec

    try:
        return get_model_spec(name).local_path().is_file()
    except ValueError:
        return False


def _train_nano_model(epochs: int, out_dir: Path) -> Path:
    """Train the tiny architecture on synthetic nuclei; returns the exported weights file."""
    from napari_samtune.core.presets import TrainConfig
    from napari_samtune.core.synthetic import make_dataset
    from napari_samtune.core.train import iter_train

    config = TrainConfig(
        model="random:tiny",
        epochs=epochs,
        learning_rate=1e-3,
        early_stopping=None,
        min_samples_per_epoch=40,
        n_iterative_prompts=1,
        n_objects_per_batch=8,
        device="cpu",
    )
    data = make_dataset(24, (256, 256), seed=100)  # not the screenshot's image (seed 3)
    for event in iter_train(config, data, out_dir=out_dir, model_name="screenshot_nano"):
        if type(event).__name__ == "EpochDone":
            print(f"epoch {event.epoch}: {event.val_metrics}", flush=True)
    return out_dir / "model.pth"


def _use_model(widget, app, model: str | None) -> None:
    if model is None:
        import torch

        from napari_samtune.core.architectures import TINY, build_sam

        torch.manual_seed(0)
        widget.set_model(build_sam(TINY), "tiny (random test model)", "tiny-screenshot")
    else:
        widget.select_model(model)
        widget.load_model()
        _wait(app, lambda: not widget.runner.is_running("loading model"))
        if widget.segmenter is None:
            raise SystemExit(f"could not load model {model!r}; see the messages above")
    _wait(app, lambda: widget.is_embedded(None))


def _annotate(widget, app, labels: np.ndarray) -> None:
    layers = widget.session.layers
    ids = np.unique(labels)[1:]
    sizes = [(labels == i).sum() for i in ids]
    first, second, third = (int(ids[i]) for i in np.argsort(sizes)[::-1][:3])
    layers.points.add(_centre(labels, first))
    widget.commit()
    layers.boxes.add_rectangles(_box(labels, second))
    widget.commit()
    layers.points.add(_centre(labels, third))
    widget.toggle_polarity()
    row, col = _centre(labels, third)
    layers.points.add([row, col + 25.0])  # a negative point beside the object
    widget.toggle_polarity()
    layers.boxes.add_rectangles(_box(labels, third, margin=6.0))
    _wait(app, lambda: not widget.runner.is_running())


def _close_notification_popups(viewer) -> None:
    """Close napari's toasts (e.g. its PyQt5 deprecation notice): they would cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for popup in viewer.window._qt_window.findChildren(NapariQtNotification):
        popup.close()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="registry name or weights file (default: train one)")
    parser.add_argument("--train-epochs", type=int, default=40, help="0: untrained model")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/screenshots/annotate.png")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="samtune-shot-"))
    for variable, folder in (
        ("ANNOTATIONS", "annotations"),
        ("CACHE", "cache"),
        ("MODELS", "models"),
    ):
        os.environ.setdefault(
            f"SAMTUNE_{variable}_DIR", str(scratch / folder)
        )  # user dirs untouched
    if args.model is None and _packaged_model("nano"):
        args.model = "nano"
    elif args.model is None and args.train_epochs > 0:
        args.model = str(_train_nano_model(args.train_epochs, scratch / "run"))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune.core.synthetic import make_image

    viewer = napari.Viewer(title="napari-samtune: annotate")
    app = QApplication.instance()
    image, labels = make_image((384, 384), seed=3)
    viewer.add_image(image, name="nuclei")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate with SAM", area="right")
    viewer.window._qt_window.resize(1500, 1000)
    _use_model(widget, app, args.model)
    _annotate(widget, app, labels)
    viewer.layers.selection.active = widget.session.layers.points
    viewer.reset_view()
    _close_notification_popups(viewer)
    _wait(app, lambda: True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    viewer.close()
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
