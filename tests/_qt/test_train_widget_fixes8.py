"""The Finetune widget: a built-in model that cannot be downloaded refuses the run, and
Continue… of a run whose weights file has gone."""

from __future__ import annotations

import shutil
import urllib.error
from dataclasses import replace

from tests._qt.test_train_widget_fixes3 import WAIT_MS, _run_once, _two_pairs_one_epoch


def _errors(notifications) -> list[str]:
    return [str(n) for n in notifications if n.severity == "error"]


def _offline(monkeypatch) -> None:
    """Downloads fail as they do without a network (the core's DownloadError, caused by a
    URLError), whatever the machine running the tests can reach."""
    from napari_samtune.core import download
    from napari_samtune.core.fetch import DownloadError

    def fail(url, dest, *args, **kwargs):
        cause = urllib.error.URLError("[Errno -2] Name or service not known")
        raise DownloadError(
            f"could not download {url}: {cause.reason}. To install it by hand, download {url} "
            f"in a browser and save it as {dest}"
        ) from cause

    monkeypatch.setattr(download, "download_file", fail)


def test_a_model_that_cannot_be_downloaded_is_a_refused_start(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tmp_path, notifications, monkeypatch
):
    """Offline, Start with a built-in model never downloaded said "training failed: download
    failed ...", as if a run had failed. It is a refused Start now: "training not started",
    the file and the manual download named under the buttons, the last run still shown."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    folder = _run_once(qtbot, widget, tmp_path / "runs")
    plotted, result = list(widget.plot.step_losses), widget.result_label.text()
    assert folder is not None and plotted and result
    _offline(monkeypatch)
    widget.settings.model_picker.select_model("vit_t")
    qtbot.waitUntil(lambda: not widget.settings.runner.is_running(), timeout=WAIT_MS)
    notifications.clear()

    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.start() is not None
    errors = _errors(notifications)
    assert len(errors) == 1 and errors[0].startswith("training not started: download failed")
    shown = widget.start_error.text()
    assert "mobile_sam.pt" in shown and "in a browser" in shown and "offline" in shown
    assert "training failed" not in widget.result_label.text()
    assert widget.result_label.text() == result and widget.plot.step_losses == plotted
    assert widget.run_folder == folder and not list((tmp_path / "runs").glob("vit_t*"))
    assert widget.start_button.isEnabled()


def _run_from_own_weights(qtbot, widget, tiny_checkpoint, tmp_path, monkeypatch, trainable_only):
    """A one-epoch run started from a copy of the tiny weights chosen by path (with
    checkpoints of the trained weights only, as ``samtune train --trainable-only`` makes,
    when ``trainable_only``); returns ``(run folder, weights file)``."""
    weights = tmp_path / "mine.pth"
    shutil.copy(tiny_checkpoint, weights)
    settings = widget.settings
    settings.model_picker.select_model(str(weights))
    qtbot.waitUntil(lambda: not settings.runner.is_running(), timeout=WAIT_MS)
    build = settings.build_config
    with monkeypatch.context() as patched:
        patched.setattr(
            settings,
            "build_config",
            lambda: replace(build(), checkpoint_trainable_only=trainable_only),
        )
        folder = _run_once(qtbot, widget, tmp_path / "runs")
    assert folder is not None and widget.result is not None
    return folder, weights


def test_continue_of_a_whole_checkpoint_needs_no_base_weights_file(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tiny_checkpoint, tmp_path, monkeypatch
):
    """A run's checkpoints hold the whole model (the widget's runs do): its weights file,
    moved since, is not needed to continue it."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    folder, weights = _run_from_own_weights(
        qtbot, widget, tiny_checkpoint, tmp_path, monkeypatch, trainable_only=False
    )
    weights.unlink()
    widget.settings.epochs_spin.setValue(2)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    assert widget.result is not None and widget.result.epochs_done == 2


def test_continue_of_trained_weights_only_whose_base_file_has_gone_is_refused(
    qtbot,
    finetune_on_cells,
    add_pair,
    use_tiny_model,
    tiny_checkpoint,
    tmp_path,
    monkeypatch,
    notifications,
):
    """A run whose checkpoints hold only the trained weights (``--trainable-only``) is rebuilt
    on its weights file: moved since, Continue… started the run and it failed in the worker
    ("training failed: ..."). Continue… refuses it now, naming the file and the fix; the
    last run stays shown."""
    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    folder, weights = _run_from_own_weights(
        qtbot, widget, tiny_checkpoint, tmp_path, monkeypatch, trainable_only=True
    )
    plotted, result = list(widget.plot.step_losses), widget.result_label.text()
    weights.rename(tmp_path / "moved.pth")
    widget.settings.epochs_spin.setValue(2)
    notifications.clear()

    assert widget.continue_run(folder) is None
    assert not widget.is_running and widget.run_folder == folder
    shown = widget.start_error.text() + widget.settings.settings_error.text()
    assert repr(str(weights)) in shown and "put it back" in shown
    assert any(repr(str(weights)) in e for e in _errors(notifications))
    assert widget.plot.step_losses == plotted and widget.result_label.text() == result

    (tmp_path / "moved.pth").rename(weights)  # put back: Continue… is accepted again
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    assert widget.result is not None and widget.result.epochs_done == 2


def test_continue_of_a_run_whose_base_has_other_weights_says_what_continue_needs(
    qtbot, finetune_on_cells, add_pair, use_tiny_model, tiny_checkpoint, tmp_path, monkeypatch
):
    """Its base weights file replaced by other weights, Continue… of a run of trained weights
    only fails in the worker, and the result line then said "Continue… goes on from there",
    which fails the same way: it says now that Continue… needs what the error names."""
    import torch

    from napari_samtune.core.architectures import TINY, build_sam

    widget = _two_pairs_one_epoch(finetune_on_cells, add_pair, use_tiny_model)
    folder, weights = _run_from_own_weights(
        qtbot, widget, tiny_checkpoint, tmp_path, monkeypatch, trainable_only=True
    )
    torch.manual_seed(11)
    torch.save(build_sam(TINY).state_dict(), weights)  # another encoder under that name
    widget.settings.epochs_spin.setValue(2)
    with qtbot.waitSignal(widget.run_ended, timeout=WAIT_MS):
        assert widget.continue_run(folder) is not None
    shown = widget.result_label.text()
    assert shown.startswith("training failed") and "different weights" in shown
    assert shown.endswith("Continue… goes on from there once what is named above is fixed")
    assert str(folder) in shown
    # its fix in the panel's terms: no command-line options the panel does not have
    assert "press Continue… again" in shown and "Browse… to RUN/model.pth" in shown
    assert "--model" not in shown and "--whole-checkpoints" not in shown
