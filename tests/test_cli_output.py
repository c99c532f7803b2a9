"""What ``samtune`` prints where: warnings, progress and errors on stderr, results on stdout."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import tifffile
import torch

import napari_samtune.cli as cli
from napari_samtune.core import registry
from napari_samtune.core.architectures import TINY
from napari_samtune.core.registry import ModelSpec, user_models_dir
from napari_samtune.core.synthetic import make_dataset
from napari_samtune.core.user_models import register_user_model

SRC = str(Path(cli.__file__).resolve().parents[2])


@pytest.fixture
def annotated(tmp_path):
    """One small image and its labels, as --images and --labels folders."""
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    image, labels = make_dataset(1, shape=(64, 64), seed=1)[0]
    tifffile.imwrite(tmp_path / "img" / "a.tif", image)
    tifffile.imwrite(tmp_path / "lab" / "a_mask.tif", labels)
    return str(tmp_path / "img"), str(tmp_path / "lab")


@pytest.fixture
def broken_user_model(tiny_checkpoint):
    """User model 'ghost' whose weights file is gone (its .json sidecar stays)."""
    weights = register_user_model(tiny_checkpoint, "ghost", TINY)
    weights.unlink()
    assert (user_models_dir() / "ghost.json").is_file()
    return "ghost"


def _evaluate_argv(annotated, model_file) -> list[str]:
    """An evaluate that looks the user models up twice (a file, then an unknown name) and
    stops before any model is loaded."""
    images, labels = annotated
    argv = ["evaluate", "--images", images, "--labels", labels]
    return [*argv, "--model", str(model_file), "--model", "nosuch"]


def _samtune(argv: list[str], **options) -> subprocess.Popen:
    """``samtune ARGV`` in a new process, as a shell runs it."""
    code = "import sys; from napari_samtune.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *argv], env=env, text=True, **options)


def test_a_broken_user_model_is_one_plain_warning_line_on_stderr(
    annotated, broken_user_model, tiny_checkpoint, capsys
):
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert cli.main(_evaluate_argv(annotated, tiny_checkpoint)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    said = [line for line in lines if "skipping user model 'ghost'" in line]
    assert len(said) == 1, captured.err
    assert said[0].startswith("warning: skipping user model 'ghost' (")
    assert "samtune models --remove ghost" in said[0]
    assert "UserWarning" not in captured.err and ".py:" not in captured.err
    assert "ghost" not in captured.out


def test_the_warning_reaches_the_terminal_plainly_in_a_real_process(
    annotated, broken_user_model, tiny_checkpoint
):
    argv = _evaluate_argv(annotated, tiny_checkpoint)
    process = _samtune(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("warning: skipping user model 'ghost' ("), err
    assert lines[1].startswith("samtune evaluate: error: --model nosuch:"), err
    assert len(lines) == 2, err


def test_other_libraries_warnings_keep_their_category(capsys):
    def command(args):
        warnings.warn("a library's note", FutureWarning, stacklevel=1)
        warnings.warn("a library's note", FutureWarning, stacklevel=1)
        return 0

    with cli.plain_warnings():
        command(None)
    err = capsys.readouterr().err
    assert err == "warning: FutureWarning: a library's note\n"


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """``samtune presets | head -1``: it said 'samtune presets: error: [Errno 32] Broken
    pipe' and exited 2, as if the command had failed."""
    process = _samtune(["presets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes: it starts in seconds
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141, err
    assert err == ""


def _finished(stopped_by_user: bool) -> SimpleNamespace:
    """What print_summary reads of a TrainingFinished event."""
    return SimpleNamespace(
        exported_model_path=Path("run/model.pth"), stopped_by_user=stopped_by_user,
        stopped_early=False, best_epoch=None, total_time_s=1.0, registered_name="run",
        last_checkpoint_path=Path("run/checkpoints/last.pt"),
        trained_summary=lambda: "1 of 6 steps of epoch 1", no_better_message=lambda: "",
        name_taken=None, folder_name_taken=None, name_note=lambda: "",
    )  # fmt: skip


@pytest.mark.parametrize("world_size", ["1", "2"])
@pytest.mark.parametrize("stopped_by_user", [False, True])
def test_a_stop_under_torchrun_says_what_torchrun_s_traceback_means(
    world_size, stopped_by_user, monkeypatch, capsys
):
    """torchrun ends a Ctrl+C with a SignalException traceback and exit code 1 after the
    workers stopped cleanly; the summary now says so before it, on stderr."""
    from napari_samtune.cli.train_report import print_summary

    monkeypatch.setenv("WORLD_SIZE", world_size)
    print_summary(_finished(stopped_by_user))
    out, err = capsys.readouterr()
    assert "stopped on request" in out if stopped_by_user else "stopped" not in out
    told = "torchrun passed the Ctrl+C on to this run, which stopped cleanly" in err
    assert told == (stopped_by_user and world_size == "2")
    assert "SignalException" not in out


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def downloadable_model(tiny_checkpoint, monkeypatch):
    """Built-in model 'fetched' (the tiny weights), served by a local web server."""
    handler = functools.partial(_QuietHandler, directory=tiny_checkpoint.parent)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{tiny_checkpoint.name}"
    file_hash = "sha256:" + hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    spec = ModelSpec("fetched", "tiny", "fetched.pt", url, file_hash, source="test")
    monkeypatch.setattr(registry, "BUILTIN_MODELS", (spec,))
    yield spec
    httpd.shutdown()
    httpd.server_close()


def test_train_no_progress_downloads_its_model_without_a_bar(
    annotated, downloadable_model, tmp_path, capsys
):
    images, labels = annotated
    argv = ["train", "--preset", "cpu-16gb", "--model", "fetched", "--images", images]
    argv += ["--labels", labels, "--epochs", "1", "--min-samples", "1", "--n-objects", "1"]
    argv += ["--mixed-precision", "no", "--iterative-prompts", "0", "--no-progress"]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert downloadable_model.local_path().is_file()
    err = capsys.readouterr().err
    assert "%|" not in err and "ownloading" not in err, err


def test_a_note_of_the_core_s_log_is_a_warning_line(
    annotated, downloadable_model, monkeypatch, capsys
):
    """A damaged download moved aside was told by logging's last resort, a bare line."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a shell: none set up
    downloadable_model.local_path().parent.mkdir(parents=True)
    downloadable_model.local_path().write_bytes(b"not the published file")
    images, labels = annotated
    argv = ["evaluate", "--images", images, "--labels", labels, "--model", "fetched"]
    assert cli.main([*argv, "--model", "nosuch"]) == 2
    lines = capsys.readouterr().err.splitlines()
    moved = [line for line in lines if "the published file was downloaded" in line]
    assert len(moved) == 1, lines
    assert moved[0].startswith("warning: ") and "fetched.pt" in moved[0]
    assert not logging.getLogger().handlers  # the command's own handler is gone again


@pytest.mark.parametrize("batch", [False, True])
def test_segment_no_progress_leaves_stderr_empty(
    annotated, downloadable_model, tmp_path, capsys, batch
):
    """A script segmenting image after image got four bar lines on stderr for each (and the
    download's): embedding and segmenting, at 0% and at 100%."""
    images, _ = annotated
    target = [images, "-o", str(tmp_path / "out")] if batch else [
        f"{images}/a.tif", "-o", str(tmp_path / "a_labels.tif")
    ]  # fmt: skip
    argv = ["segment", *target, "--model", "fetched", "--auto", "--points-per-side", "4"]
    assert cli.main([*argv, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "written to" in out or "segmented into" in out


def test_evaluate_no_progress_shows_no_bar(annotated, downloadable_model, tmp_path, capsys):
    images, labels = annotated
    argv = ["evaluate", "--images", images, "--labels", labels, "--model", "fetched"]
    argv += ["--out", str(tmp_path / "eval"), "--clicks", "0", "--points-per-side", "4"]
    assert cli.main([*argv, "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert err == "evaluating fetched on 1 image ...\n"
    assert "| fetched |" in out


def test_no_progress_holds_for_the_base_model_a_checkpoint_downloads(
    annotated, downloadable_model, tmp_path, capsys
):
    """A checkpoint of trained weights only, its base model not downloaded (another
    machine, a cleared cache): the base's download drew a bar whatever --no-progress said."""
    images, labels = annotated
    argv = ["train", "--preset", "cpu-16gb", "--model", "fetched", "--images", images]
    argv += ["--labels", labels, "--epochs", "1", "--min-samples", "1", "--n-objects", "1"]
    argv += ["--mixed-precision", "no", "--iterative-prompts", "0", "--no-progress"]
    argv += ["--freeze", "image_encoder", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)["model_state"]  # the trained weights only
    assert state and not any(key.startswith("image_encoder.") for key in state)
    capsys.readouterr()
    shutil.rmtree(downloadable_model.local_path().parent)
    argv = ["segment", f"{images}/a.tif", "-o", str(tmp_path / "a_labels.tif"), "--model"]
    argv += [str(best), "--auto", "--points-per-side", "4", "--no-progress"]
    assert cli.main(argv) == 0
    assert downloadable_model.local_path().is_file()  # downloaded again, quietly
    out, err = capsys.readouterr()
    assert err == "" and "written to" in out


def test_the_download_bar_counts_in_scaled_bytes():
    """It showed raw counts ("501703/501703 ... 487782776.94B/s"): 10 digits for vit_h."""
    from napari_samtune.cli.segment_planes import Progress

    with Progress("downloading model", "B") as progress:
        progress(501703, 501703)
        shown = str(progress.bar)
    assert "490k/490k" in shown and "501703" not in shown, shown


def test_segment_and_evaluate_write_their_results_with_stderr_closed(
    annotated, downloadable_model, tmp_path, monkeypatch
):
    """``2>&-``: sys.stderr is None, and the first progress bar's write failed with an
    AttributeError that could not be reported: exit 1, no labels, no evaluation."""
    images, labels = annotated
    monkeypatch.setattr(sys, "stderr", None)
    segment = ["segment", f"{images}/a.tif", "-o", str(tmp_path / "a_labels.tif")]
    assert cli.main([*segment, "--model", "fetched", "--auto", "--points-per-side", "4"]) == 0
    assert tifffile.imread(tmp_path / "a_labels.tif").shape == (64, 64)
    evaluate = ["evaluate", "--images", images, "--labels", labels, "--model", "fetched"]
    evaluate += ["--out", str(tmp_path / "eval"), "--clicks", "0", "--points-per-side", "4"]
    assert cli.main(evaluate) == 0
    assert (tmp_path / "eval" / "evaluation.csv").is_file()


@pytest.mark.parametrize("world_size", [None, "1", "2"])
def test_a_rank_left_set_without_torchrun_is_the_main_process(monkeypatch, capsys, world_size):
    """RANK=1 exported by a scheduler, one process: samtune printed nothing (a finished
    train's result neither), and its errors came after the workers' 10 s wait."""
    from napari_samtune.cli import console
    from napari_samtune.core import distributed

    monkeypatch.setenv("RANK", "1")
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    alone = world_size != "2"
    assert console.is_main_process() is alone
    assert distributed.is_main_process() is alone
    if alone:
        monkeypatch.setattr(console.time, "sleep", lambda s: pytest.fail("waited as a worker"))
        console.report_error("samtune segment: error: x")
        assert capsys.readouterr().err == "samtune segment: error: x\n"


def test_commands_to_paste_are_quoted_for_the_system_s_shell(monkeypatch):
    """POSIX single quotes around a Windows path are part of the path in cmd.exe."""
    from napari_samtune.cli import console
    from napari_samtune.core import shell_words

    path = r"C:\Users\ana\my runs\cells"
    assert [console.shell_quote(word) for word in (path, "x y", "train")] == [
        r"'C:\Users\ana\my runs\cells'",
        "'x y'",
        "train",
    ]
    monkeypatch.setattr(shell_words, "_on_windows", lambda: True)
    assert [console.shell_quote(word) for word in (path, "x y", "train")] == [
        r'"C:\Users\ana\my runs\cells"',
        '"x y"',
        "train",
    ]
    assert console.shell_quote(r"C:\runs\cells") == r"C:\runs\cells"  # no quotes needed
    # '&' ended the command in cmd.exe (and PowerShell refused it), ';' and ',' in PowerShell
    for path in (r"C:\R&D\run", r"C:\x;y\run", r"C:\a,b", r"C:\(old)\run", r"C:\100%\run"):
        assert console.shell_quote(path) == f'"{path}"'
    assert console.shell_quote('say "hi"\\') == r'"say \"hi\"\\"'  # as Windows splits it


def test_a_path_the_console_cannot_encode_is_printed_escaped(tmp_path):
    """Windows writes a redirected stdout in cp1252: a path such as 細胞 failed a finished
    command ("'charmap' codec can't encode", exit 2) after its files were written."""
    folder = tmp_path / "細胞"
    env = {**os.environ, "SAMTUNE_CACHE_DIR": str(folder), "PYTHONIOENCODING": "cp1252"}
    done = subprocess.run(
        [sys.executable, "-m", "napari_samtune.cli", "cache"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path}/\\u7d30\\u80de/embeddings".encode() in done.stdout
