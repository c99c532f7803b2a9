"""Screenshot of the training widget after a short run: docs/screenshots/train.png.

Opens a real napari viewer with two synthetic images and their instance labels,
docks "Annotate with SAM" and "Finetune SAM", adds both (image, labels) pairs,
finetunes a model (frozen encoder, a few epochs) and saves the whole window during
the last epoch, with the progress bar and the live curves showing. The model: the
packaged offline generalist ``nano`` when it is installed (the validation IoU then
shows real learning), else ``--model``, else the tiny random test model (its
validation IoU stays near 0). Model folders are temporary, so nothing is added to
your own models.

Needs a display (on a server: ``xvfb-run -a python scripts/screenshot_train.py``).

    python scripts/screenshot_train.py [--out docs/screenshots/train.png] [--epochs 8]
        [--model nano] [--learning-rate 1e-3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots/train.png"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", default="1e-3")
    parser.add_argument(
        "--model",
        help="registry name or weights file (default: nano if installed, else a tiny random model)",
    )
    return parser.parse_args()


def packaged_model(name: str) -> bool:
    """Whether registry model ``name`` exists and its weights are on this machine."""
    from napari_samtune.core.model_lookup import get_model_spec

    try:
        return get_model_spec(name).local_path().is_file()
    except ValueError:
        return False


def tiny_checkpoint(folder: Path) -> Path:
    """The tiny random SAM used by the tests, saved as a plain state dict."""
    import torch

    from napari_samtune.core.architectures import TINY, build_sam

    torch.manual_seed(0)
    path = folder / "tiny_sam.pth"
    torch.save(build_sam(TINY).state_dict(), path)
    return path


def wait(app, condition, timeout_s: float = 600.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the viewer did not reach the expected state in time")
        app.processEvents()
        time.sleep(0.01)


def build_viewer(model: str, args: argparse.Namespace):
    import napari
    import napari._qt.qt_main_window as main_window

    from napari_samtune._qt.annotate import AnnotateWidget
    from napari_samtune._qt.train_widget import TrainWidget
    from napari_samtune.core.synthetic import make_image

    main_window.SHOW_QT_WARNING = False  # napari's PyQt5 deprecation toast would cover the view
    viewer = napari.Viewer(title="napari-samtune: finetune SAM")
    viewer.window.resize(1600, 1050)
    for i in range(2):
        image, labels = make_image((256, 256), seed=i)
        viewer.add_image(image, name=f"cells{i}")
        viewer.add_labels(labels, name=f"cells{i} labels", opacity=0.4)
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="Annotate with SAM")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Finetune SAM", tabify=True)
    for i in range(2):
        widget.train_data.image_combo.setCurrentText(f"cells{i}")
        widget.train_data.labels_combo.setCurrentText(f"cells{i} labels")
        widget.train_data.add_current_pair()
    widget.settings.model_picker.select_model(model)
    return viewer, widget


def configure(app, widget, args: argparse.Namespace) -> None:
    settings = widget.settings
    wait(app, lambda: settings.architecture() is not None)
    settings.epochs_spin.setValue(args.epochs)
    settings.samples_spin.setValue(6)
    settings.objects_spin.setValue(5)
    settings.lr_edit.setText(args.learning_rate)
    settings.freeze_checks["image_encoder"].setChecked(True)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["SAMTUNE_MODELS_DIR"] = str(folder / "models")
        os.environ["SAMTUNE_CACHE_DIR"] = str(folder / "cache")
        from qtpy.QtWidgets import QApplication

        model = args.model or ("nano" if packaged_model("nano") else None)
        viewer, widget = build_viewer(model or str(tiny_checkpoint(folder)), args)
        app = QApplication.instance()
        configure(app, widget, args)
        widget.start()
        # Shoot during the last epoch: progress bar (epoch, step, ETA) and curves both show.
        wait(app, lambda: len(widget.plot.epochs) == args.epochs - 1)
        steps = (args.epochs - 1) * widget.started.steps_per_epoch + 3
        wait(app, lambda: len(widget.plot.step_x) >= steps)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.reset_view()
        viewer.screenshot(str(args.out), canvas_only=False, flash=False)
        wait(app, lambda: not widget.is_running)
        print(f"saved {args.out}; {widget.result_label.text()}")
        viewer.close()


if __name__ == "__main__":
    main()
