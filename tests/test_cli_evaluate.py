"""``samtune evaluate``: metrics of several models on TIFF files, as CSV, PNG and a table."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal

import numpy as np
import pytest
import tifffile
import torch

import napari_samtune.cli as cli
from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.synthetic import make_dataset


def _save_tiny(path, seed):
    torch.manual_seed(seed)
    torch.save(build_sam(TINY).state_dict(), path)
    return path


def test_evaluate_writes_one_row_per_model_with_all_metrics(tmp_path, annotated_folder, capsys):
    images, labels = annotated_folder
    first = _save_tiny(tmp_path / "first.pth", 0)
    second = _save_tiny(tmp_path / "second.pth", 1)
    out = tmp_path / "eval é #1"  # the files are named as a shell reads them
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", str(first),
        "--model", str(second), "--out", str(out), "--clicks", "2", "--max-objects", "3",
        "--points-per-side", "4",
    ])  # fmt: skip
    assert code == 0
    with open(out / "evaluation.csv") as file:
        rows = list(csv.DictReader(file))
    assert [r["model"] for r in rows] == ["first", "second"]
    for key in ("box_iou", "point_iou", "iou_after_2_clicks", "msa", "sa50", "sa75", "f1"):
        values = [float(r[key]) for r in rows]
        assert all(0.0 <= v <= 1.0 for v in values), key
    # different random weights give different masks
    assert rows[0]["box_iou"] != rows[1]["box_iou"]
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| first |" in printed and "| second |" in printed
    assert "IoU after 0..2 clicks" in printed
    earlier = (out / "evaluation.csv").read_bytes()
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", str(second),
        "--out", str(out), "--clicks", "0", "--points-per-side", "4",
    ])  # fmt: skip
    assert code == 0  # a rerun into the same folder keeps the earlier results
    assert (out / "evaluation.csv").read_bytes() == earlier
    with open(out / "evaluation-2.csv") as file:
        assert [r["model"] for r in csv.DictReader(file)] == ["second"]
    assert (out / "evaluation-2.png").is_file()
    printed = capsys.readouterr().out.split("wrote ")[1]
    named = shlex.split(printed.replace(",", " ").replace(" and ", " "))
    assert named == [str(out / f"evaluation-2.{suffix}") for suffix in ("csv", "png", "json")]


def test_the_settings_of_an_evaluation_are_written_beside_its_table(tmp_path, annotated_folder):
    """A CSV row alone could not be told apart from one measured with other clicks, other
    data or other weights of the same file name."""
    images, labels = annotated_folder
    first = _save_tiny(tmp_path / "first.pth", 0)
    out = tmp_path / "eval"
    args = ["evaluate", "--images", str(images), "--labels", str(labels), "--model", str(first),
            "--out", str(out), "--points-per-side", "4", "--device", "cpu"]  # fmt: skip
    assert cli.main([*args, "--clicks", "2", "--max-objects", "3"]) == 0
    settings = json.loads((out / "evaluation.json").read_text())
    assert settings["corrective_clicks"] == 2 and settings["max_objects_per_image"] == 3
    assert settings["images"] == [str(images.absolute())]
    assert sorted(settings["pairs"]) == ["img0.tif / img0_labels.tif", "img1.tif / img1_labels.tif"]
    model = settings["models"]["first"]
    assert model["file"] == str(first.absolute()) and model["architecture"] == "tiny"
    assert model["automatic"]["points_per_side"] == 4
    assert settings["device"] == "cpu" and settings["versions"]["torch"] == torch.__version__
    _save_tiny(first, 1)  # other weights, same file: the record tells them apart
    assert cli.main([*args, "--clicks", "1"]) == 0
    again = json.loads((out / "evaluation-2.json").read_text())
    assert again["corrective_clicks"] == 1 and again["max_objects_per_image"] is None
    assert again["models"]["first"]["model_id"] != model["model_id"]


def test_evaluate_scores_a_perfect_segmenter_higher_than_random(tmp_path, annotated_folder):
    """Ground truth as 'prediction' would be 1.0; the tiny random model must be far below it."""
    images, labels = annotated_folder
    out = tmp_path / "eval"
    model = _save_tiny(tmp_path / "tiny.pth", 0)
    cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", str(model),
        "--out", str(out), "--clicks", "0", "--points-per-side", "4",
    ])  # fmt: skip
    with open(out / "evaluation.csv") as file:
        row = next(csv.DictReader(file))
    assert float(row["box_iou"]) < 0.9 and float(row["msa"]) < 0.9


def test_evaluate_reports_unpaired_files_without_traceback(tmp_path, annotated_folder, capsys):
    images, _ = annotated_folder
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    tifffile.imwrite(lonely / "other.tif", np.zeros((8, 8), np.uint16))
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(lonely), "--model", "nano",
    ])  # fmt: skip
    assert code == 2
    assert "could not pair files" in capsys.readouterr().err


def test_evaluate_leaves_out_unpaired_files_on_request(tmp_path, annotated_folder, capsys):
    images, labels = annotated_folder
    tifffile.imwrite(images / "not_annotated.tif", np.zeros((96, 96), np.uint8))
    model = _save_tiny(tmp_path / "tiny.pth", 0)
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--model", str(model)]
    argv += ["--out", str(tmp_path / "eval"), "--clicks", "0", "--points-per-side", "4"]
    assert cli.main(argv) == 2
    said = capsys.readouterr().err
    assert "images without labels ['not_annotated.tif']" in said
    assert "labels without images" not in said  # none: "[]" read as a fault
    assert cli.main([*argv, "--skip-unpaired"]) == 0
    out, err = capsys.readouterr()
    assert "iterative prompting" not in out  # --clicks 0: no "IoU after 0..0 clicks"
    assert "evaluation data: left out 1 image(s) without a label file" in err  # not a result
    assert "evaluating tiny on 2 images" in err and "evaluating" not in out
    assert "left out" not in out
    assert "the files left out" not in err  # one file: the line named it
    for i in range(4):  # more than the line names: "and 2 more" told nobody which
        tifffile.imwrite(images / f"later_{i}.tif", np.zeros((96, 96), np.uint8))
    assert cli.main([*argv, "--skip-unpaired"]) == 0
    err = capsys.readouterr().err
    assert "left out 5 image(s) without a label file" in err and "and 2 more" in err
    listing = err.split("evaluation data: the files left out:\n")[1].splitlines()[:5]
    assert listing == [f"  later_{i}.tif" for i in range(4)] + ["  not_annotated.tif"]


def test_evaluate_rejects_negative_clicks(tmp_path, annotated_folder, capsys):
    images, labels = annotated_folder
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", "nano",
        "--clicks", "-1",
    ])  # fmt: skip
    assert code == 2
    assert "--clicks -1" in capsys.readouterr().err


def test_multichannel_images_and_float_labels_score_as_their_plain_versions(
    tmp_path, annotated_folder, capsys
):
    """Two-channel files (noise, cells) with --channels 1 and labels saved as float32 (as
    some ImageJ plugins save them) give the scores of the plain grayscale files."""
    images, labels = annotated_folder
    two_channel, float_labels = tmp_path / "two_channel", tmp_path / "float_labels"
    two_channel.mkdir()
    float_labels.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    for i in range(2):
        image = tifffile.imread(images / f"img{i}.tif")
        tifffile.imwrite(two_channel / f"img{i}.tif", np.stack([noise, image]))
        label = tifffile.imread(labels / f"img{i}_labels.tif").astype(np.float32)
        tifffile.imwrite(float_labels / f"img{i}_labels.tif", label)
    model = str(_save_tiny(tmp_path / "tiny.pth", 0))
    rows = []
    for name, folders, extra in [
        ("plain", (images, labels), []),
        ("channels", (two_channel, float_labels), ["--channels", "1"]),
    ]:
        code = cli.main([
            "evaluate", "--images", str(folders[0]), "--labels", str(folders[1]),
            "--model", model, "--out", str(tmp_path / name), "--clicks", "1",
            "--points-per-side", "4", *extra,
        ])  # fmt: skip
        assert code == 0
        with open(tmp_path / name / "evaluation.csv") as file:
            rows.append(next(csv.DictReader(file)))
    assert rows[0] == rows[1]

    code = cli.main([
        "evaluate", "--images", str(two_channel), "--labels", str(float_labels),
        "--model", "no-such-model", "--out", str(tmp_path / "x"),
    ])  # fmt: skip
    assert code == 2  # the files are checked before any model is loaded
    err = capsys.readouterr().err
    assert "evaluation data: image of 'img0.tif / img0_labels.tif'" in err
    assert "channel axis is ambiguous; pass --channel-axis (e.g. 0 or -1) and --channels (" in err
    assert "(options" not in err  # each option named once


@pytest.fixture
def evaluations(monkeypatch):
    """The models ``model_metrics`` is called with (the evaluation itself still runs)."""
    from napari_samtune.core import demo

    calls, real = [], demo.model_metrics
    monkeypatch.setattr(
        demo,
        "model_metrics",
        lambda *args, **kwargs: calls.append(args[1]) or real(*args, **kwargs),
    )
    return calls


@pytest.mark.parametrize("bad", ["missing", "folder", "not_weights"])
def test_every_model_is_checked_before_any_is_evaluated(
    tmp_path, annotated_folder, capsys, evaluations, bad
):
    images, labels = annotated_folder
    (tmp_path / "folder").mkdir()
    (tmp_path / "not_weights").write_text("epoch 3, loss 0.2\n")
    model = {"missing": "no-such-model.pth", "folder": str(tmp_path / "folder")}.get(
        bad, str(tmp_path / "not_weights")
    )
    first = str(_save_tiny(tmp_path / "first.pth", 0))
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", first,
        "--model", model, "--out", str(tmp_path / "eval"), "--clicks", "0",
        "--points-per-side", "4",
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"--model {model}: " in err and "nothing was evaluated" in err
    if bad == "missing":  # a file name is not called an unknown model, as samtune segment says
        assert "is neither a model name (built-in: [" in err and "nor an existing file" in err
    assert evaluations == []
    assert not (tmp_path / "eval").exists()


def test_an_image_without_a_finite_pixel_is_refused_naming_it(tmp_path, annotated_folder, capsys):
    """An all-NaN image (a failed export) was scored as a black image: 0.000 everywhere,
    pulling the means down without a word; ``samtune segment`` refused it already."""
    images, labels = annotated_folder
    shape = tifffile.imread(images / "img1.tif").shape
    tifffile.imwrite(images / "img1.tif", np.full(shape, np.nan, np.float32))
    model = _save_tiny(tmp_path / "tiny.pth", 0)
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", str(model),
        "--out", str(tmp_path / "eval"), "--clicks", "0", "--points-per-side", "4",
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "'img1.tif / img1_labels.tif' holds no finite pixel value (all NaN or infinite)" in err
    assert not (tmp_path / "eval" / "evaluation.csv").exists()


def test_labels_without_objects_are_refused_up_front_naming_the_files(
    tmp_path, annotated_folder, capsys, evaluations
):
    images, labels = annotated_folder
    for i in range(2):
        tifffile.imwrite(labels / f"img{i}_labels.tif", np.zeros((96, 96), np.uint16))
    model = str(_save_tiny(tmp_path / "tiny.pth", 0))
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", model,
        "--out", str(tmp_path / "eval"),
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "evaluation data: none of the 2 pair(s) has any object" in err
    assert "img0.tif / img0_labels.tif, img1.tif / img1_labels.tif" in err
    assert "check that --labels names the right files" in err
    assert evaluations == []


@pytest.mark.parametrize(
    ("folder", "name", "pixels", "said"),
    [
        ("labels", "img1_labels.tif", 0, "without any object (labels all 0)"),
        ("images", "img1.tif", 500, "whose image is one value everywhere (blank), which no "
         "model can segment"),  # it scored 0 and dragged every mean down, unsaid
    ],
)  # fmt: skip
def test_pairs_without_objects_are_left_out_and_named(
    tmp_path, annotated_folder, capsys, evaluations, folder, name, pixels, said
):
    """As in training: an empty field of view, or an image whose labels are not done yet;
    or a blank image."""
    images, labels = annotated_folder
    where = {"images": images, "labels": labels}[folder]
    tifffile.imwrite(where / name, np.full((96, 96), pixels, np.uint16))
    model = str(_save_tiny(tmp_path / "tiny.pth", 0))
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", model,
        "--out", str(tmp_path / "eval"), "--clicks", "0", "--points-per-side", "4",
    ])  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    assert (
        f"evaluation data: left out 1 pair(s) {said}: img1.tif / img1_labels.tif"
    ) in err  # stdout keeps only the results (> scores.md)
    assert "left out" not in out
    assert "evaluating tiny on 1 image ..." in err
    assert len(evaluations) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-objects", "0"], "--max-objects 0; use 1 or more, or leave it out"),
        (["--points-per-side", "0"], "--points-per-side 0; use a positive integer"),
        (["--points-per-side", "100000"], "--points-per-side 100000; use a positive integer up to"),
        (["--stability-score-thresh", "2"], "--stability-score-thresh 2.0; use a value in [0, 1]"),
        (["--stability-thresh", "2"], "--stability-score-thresh 2.0; use a value in [0, 1]"),
        (["--device", "tpu"], "--device tpu is not a device"),
    ],
)
def test_option_errors_name_the_options_before_any_evaluation(
    tmp_path, annotated_folder, capsys, evaluations, extra, message
):
    images, labels = annotated_folder
    model = str(_save_tiny(tmp_path / "tiny.pth", 0))
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--model", model]
    assert cli.main([*argv, "--out", str(tmp_path / "eval"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "max_objects_per_image" not in err and "None" not in err and "device=" not in err
    assert evaluations == []


def test_the_help_names_the_stability_option_s_value_as_the_option(capsys):
    """It read "--stability-score-thresh STABILITY_THRESH", the value of its old name."""
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--stability-score-thresh STABILITY_SCORE_THRESH, --stability-thresh" in out


def test_a_model_given_twice_is_refused_before_any_evaluation(
    tmp_path, annotated_folder, capsys, evaluations, monkeypatch
):
    images, labels = annotated_folder
    model = _save_tiny(tmp_path / "tiny.pth", 0)
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--clicks", "0"]
    twice = ["--model", str(model), "--model", "tiny.pth", "--points-per-side", "2"]
    assert cli.main([*argv, *twice, "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert f"--model tiny.pth is given twice (as {str(model)!r} before)" in err
    assert evaluations == []  # it was evaluated twice, as tiny and tiny#2


def test_a_model_given_by_name_and_by_its_file_is_refused_as_given_twice(
    tmp_path, annotated_folder, capsys, evaluations
):
    """The user model 'cells' and its weights file were evaluated twice, one row each."""
    from napari_samtune.core.model_lookup import get_model_spec
    from napari_samtune.core.user_models import register_user_model

    images, labels = annotated_folder
    register_user_model(_save_tiny(tmp_path / "tiny.pth", 0), "cells", TINY)
    weights = get_model_spec("cells").local_path()
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--clicks", "0"]
    twice = ["--model", "cells", "--model", str(weights), "--points-per-side", "2"]
    assert cli.main([*argv, *twice, "--out", str(tmp_path / "eval")]) == 2
    assert f"--model {weights} is given twice (as 'cells' before)" in capsys.readouterr().err
    assert evaluations == []


def test_a_registered_model_and_the_file_it_was_registered_from_are_refused_as_the_same(
    tmp_path, annotated_folder, capsys, evaluations
):
    """A run's registered model and its model.pth (the registered one is a copy): both were
    evaluated, two rows of the same scores, one of them named 'model'."""
    from napari_samtune.core.user_models import register_user_model

    images, labels = annotated_folder
    (tmp_path / "run").mkdir()
    exported = _save_tiny(tmp_path / "run" / "model.pth", 0)
    register_user_model(exported, "run", TINY)
    other = _save_tiny(tmp_path / "other.pth", 1)
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--clicks", "0"]
    argv += ["--points-per-side", "2", "--no-progress", "--out", str(tmp_path / "eval")]
    models = ["--model", "run", "--model", str(exported), "--model", str(other)]
    assert cli.main([*argv, *models]) == 0
    out, err = capsys.readouterr()
    assert f"--model {exported} holds the same weights as run, evaluated already: left out" in err
    assert len(evaluations) == 2
    with open(tmp_path / "eval" / "evaluation.csv") as file:
        assert [row["model"] for row in csv.DictReader(file)] == ["run", "other"]


def test_a_model_name_with_a_dot_keeps_it_in_its_row_name(tmp_path):
    """'cells.v2' and 'cells' were rows 'cells' and 'cells#2': the first model's scores
    under the second one's name."""
    import warnings

    from napari_samtune.cli.evaluate_rows import row_names
    from napari_samtune.core.registry import user_models_dir
    from napari_samtune.core.user_models import register_user_model

    weights = _save_tiny(tmp_path / "tiny.pth", 0)
    for name in ("cells.v2", "cells", "lost"):
        register_user_model(weights, name, TINY)
    next(user_models_dir().glob("lost*.pt")).unlink()  # a broken model, not evaluated
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its warning comes where it is used, not here
        names = row_names(["cells.v2", "cells", "run/cells.v3.pth"])
    assert names == [
        "cells.v2",
        "cells",
        "cells.v3",
    ]


def test_row_names_tell_files_of_the_same_name_apart():
    """run1/best.pth and run2/best.pth were rows 'best' and 'best#2': which run is which?"""
    from napari_samtune.cli.evaluate_rows import row_names

    models = ["nano", "run1/best.pth", "run2/best.pth", "other/model.pth", "best.pt"]
    assert row_names(models) == ["nano", "run1/best", "run2/best", "other/model", "best"]
    assert row_names(["a/x/m.pth", "b/x/m.pth"]) == ["a/x/m", "b/x/m"]
    # two runs' checkpoints were rows 'checkpoints/best' and 'checkpoints/best#2'
    runs = ["/data/run1/checkpoints/best.pt", "run2/checkpoints/best.pt", "run2/model.pth"]
    assert row_names(runs) == ["run1/checkpoints/best", "run2/checkpoints/best", "run2/model"]
    # a run's own file names say nothing of the run alone either: they keep its folder
    assert row_names(["/data/run7/model.pth"]) == ["run7/model"]
    assert row_names(["run7/checkpoints/last.pt"]) == ["run7/checkpoints/last"]
    assert row_names(["checkpoints/best.pt", "cells/m.pth"]) == ["checkpoints/best", "m"]
    assert row_names(["x/m.pth", "x/m.pt"]) == ["x/m", "x/m#2"]


def test_a_run_folder_given_as_a_model_names_its_model_file(tmp_path, annotated_folder, capsys):
    """``--model RUN/`` said "a folder; give the weights file inside it", naming none."""
    from napari_samtune.core.models import load_model

    images, labels = annotated_folder
    run = tmp_path / "run"
    run.mkdir()
    _save_tiny(run / "model.pth", 0)
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--model", str(run)]
    assert cli.main([*argv, "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert (
        f"--model {run}: a folder; give the weights file inside it, e.g. {run / 'model.pth'}" in err
    )
    with pytest.raises(ValueError, match=r"is a folder; give the weights file inside it, e\.g\."):
        load_model(run)
    (run / "model.pth").unlink()
    with pytest.raises(ValueError, match=r"inside it \(a \.pth or \.pt file\)"):
        load_model(run)


@pytest.mark.parametrize("how", ["an error", "Ctrl+C", "SIGTERM"])
def test_models_evaluated_before_a_later_one_fails_keep_their_results(
    tmp_path, annotated_folder, capsys, monkeypatch, how
):
    """A later model that fails (weights that do not load are refused before the first
    model runs), or Ctrl+C during it: the earlier models' results (hours for a large model)
    were neither written nor printed."""
    from napari_samtune.core import demo

    images, labels = annotated_folder
    first = _save_tiny(tmp_path / "first.pth", 0)
    second = _save_tiny(tmp_path / "second.pth", 1)
    copy = tmp_path / "copy.pth"  # left out as first's weights: done, not "stopped before"
    copy.write_bytes(first.read_bytes())
    real, calls = demo.model_metrics, []

    def interrupted_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and how == "SIGTERM":  # a batch job's time limit
            os.kill(os.getpid(), signal.SIGTERM)
        elif len(calls) == 2 and how == "Ctrl+C":
            raise KeyboardInterrupt
        elif len(calls) == 2:
            raise ValueError("the second model failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "model_metrics", interrupted_second)
    out = tmp_path / "eval"
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", str(first),
        "--model", str(copy), "--model", str(second), "--out", str(out), "--clicks", "1",
        "--points-per-side", "4",
    ])  # fmt: skip
    assert code == {"an error": 2, "Ctrl+C": 130, "SIGTERM": 143}[how]
    with open(out / "evaluation.csv") as file:
        assert [r["model"] for r in csv.DictReader(file)] == ["first"]
    assert list(json.loads((out / "evaluation.json").read_text())["models"]) == ["first"]
    captured = capsys.readouterr()
    assert "| first |" in captured.out
    assert "evaluation stopped before 'second'; the results of 'first' are kept" in captured.err


def test_the_planes_of_a_stack_score_an_object_per_piece_as_training_takes_them(tmp_path):
    """A 3D object in two pieces on a plane was one object in evaluate and two in training:
    the validation curve and evaluate scored the same stack differently."""
    from napari_samtune.cli.evaluate_data import normalised_pairs
    from napari_samtune.core.data import split_planes

    image = make_dataset(1, (48, 48), seed=3)[0][0]
    plane = np.zeros((48, 48), np.uint16)
    plane[5:20, 5:15] = plane[5:20, 30:40] = 4  # one object, two pieces
    planes = np.stack([image, image[::-1]])  # other pixels: not a repeat, left out
    pairs = split_planes(planes, np.stack([plane, plane]), "cells.tif")
    _, labels, _ = normalised_pairs(pairs)
    assert [len(np.unique(label)) - 1 for label in labels] == [2, 2]


@pytest.mark.parametrize(("fast_bf16", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_the_settings_name_the_precision_the_encoder_ran_in(
    tmp_path, annotated_folder, monkeypatch, fast_bf16, expected
):
    """Scores in bf16 differ a little from float32's: the record says which was measured."""
    from napari_samtune.core import accelerate, view_predictor

    monkeypatch.setattr(accelerate, "cpu_has_fast_bf16", lambda: fast_bf16)
    used = []
    real_init = view_predictor.ViewPredictor.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        used.append(str(self.compute_dtype or torch.float32).removeprefix("torch."))

    monkeypatch.setattr(view_predictor.ViewPredictor, "__init__", init)
    images, labels = annotated_folder
    first = _save_tiny(tmp_path / "first.pth", 0)
    out = tmp_path / "eval"
    args = ["evaluate", "--images", str(images), "--labels", str(labels), "--model", str(first),
            "--out", str(out), "--points-per-side", "4", "--device", "cpu"]  # fmt: skip
    assert cli.main([*args, "--clicks", "1"]) == 0
    model = json.loads((out / "evaluation.json").read_text())["models"]["first"]
    assert used and set(used) == {expected}
    assert model["encoder_precision"] == expected


def test_a_model_file_name_of_no_utf8_is_evaluated_and_written(tmp_path, annotated_folder, capsys):
    """A Latin-1 file name (``m\\xe9.pth``, read as ``m\\udce9``): the whole evaluation ran,
    then writing its CSV failed ('surrogates not allowed'), and its results were lost."""
    images, labels = annotated_folder
    model = os.fsdecode(os.fsencode(str(tmp_path)) + b"/m\xe9.pth")
    _save_tiny(model, 0)
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--model", model]
    argv += ["--clicks", "0", "--points-per-side", "2", "--no-progress"]
    assert cli.main([*argv, "--out", str(tmp_path / "eval")]) == 0
    with open(tmp_path / "eval" / "evaluation.csv", encoding="utf-8") as file:
        assert [row["model"] for row in csv.DictReader(file)] == ["m\ufffd"]
    assert (tmp_path / "eval" / "evaluation.png").is_file()
    assert "| m\ufffd |" in capsys.readouterr().out


def test_the_help_says_the_defaults_of_clicks_and_the_automatic_settings(capsys):
    """--clicks (7) and the automatic settings (per model size) showed no default."""
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "corrective clicks after the point (default: 7)" in shown
    assert "defaults as in SAM, or for nano-sized models 24 points per side" in shown


def test_the_scores_are_printed_when_their_files_cannot_be_written(
    tmp_path, annotated_folder, capsys, monkeypatch
):
    """A full disk under --out failed the comparison files, and the table of a whole run's
    scores was never printed."""
    import errno

    from napari_samtune.core import evaluate

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluate, "compare_models", full_disk)
    images, labels = annotated_folder
    model = _save_tiny(tmp_path / "first.pth", 0)
    code = cli.main([
        "evaluate", "--images", str(images), "--labels", str(labels), "--model", str(model),
        "--out", str(tmp_path / "eval"), "--clicks", "1", "--max-objects", "2",
        "--points-per-side", "4",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code != 0 and "space" in captured.err
    assert "| first |" in captured.out and "IoU after 0..1 clicks" in captured.out
