"""``samtune segment``: prompt files and automatic mode with a tiny checkpoint on disk."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_samtune.cli
from napari_samtune.cli import main
from napari_samtune.core.embedding_cache import default_cache_dir
from napari_samtune.core.predict import Segmenter
from napari_samtune.core.synthetic import make_image


@pytest.fixture(autouse=True)
def _segment_subcommand(monkeypatch):
    monkeypatch.setattr(napari_samtune.cli, "SUBCOMMAND_MODULES", ("segment",))


@pytest.fixture
def image_file(tmp_path):
    image = make_image((200, 240), seed=0, dtype=np.uint16)[0]
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, image)
    return path, image


def write_csv(path, text: str):
    path.write_text(text)
    return path


SPANNING_SHAPE = (
    "index,shape-type,vertex-index,axis-0,axis-1,axis-2\n0,rectangle,0,0,1,1\n"
    "0,rectangle,1,1,1,9\n0,rectangle,2,1,9,9\n0,rectangle,3,1,9,1\n"
)


SHAPE_OUTSIDE = (
    "index,shape-type,vertex-index,axis-0,axis-1\n0,rectangle,0,300,1\n0,rectangle,1,310,9\n"
)


def reference(tiny_sam, image, **set_image) -> Segmenter:
    segmenter = Segmenter(tiny_sam, model_id="reference", use_disk_cache=False)
    segmenter.set_image(image, **set_image)
    return segmenter


def segment(tiny_checkpoint, image_path, out, *options: str) -> int:
    """``samtune segment``; ``image_path`` may be a list of several."""
    images = image_path if isinstance(image_path, list) else [image_path]
    return main(
        [
            "segment",
            *map(str, images),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(out),
            "--device",
            "cpu",
            *options,
        ]
    )


def test_boxes_file_gives_the_segmenters_labels(tmp_path, tiny_sam, tiny_checkpoint, image_file):
    path, image = image_file
    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n10,10,60,70\n120,20,220,90\n")
    out = tmp_path / "out" / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--boxes", str(boxes)) == 0
    labels = tifffile.imread(out)
    expected = reference(tiny_sam, image).predict_boxes([[10, 10, 60, 70], [120, 20, 220, 90]])
    assert labels.dtype == np.uint32 and labels.max() > 0
    np.testing.assert_array_equal(labels, expected)


def test_a_box_may_end_on_the_images_far_edges_and_is_clipped(
    tmp_path, tiny_sam, tiny_checkpoint, image_file, capsys
):
    """``0,0,240,200`` on a 240 x 200 image (the whole image in pixel-edge coordinates) was
    refused as lying outside; its far corner may lie on the edges, and it is clipped to the
    image (pixel centres at integers: x up to 239.5), as the widget clips napari boxes."""
    from napari_samtune.cli.prompt_files import read_boxes_csv

    path, image = image_file
    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n0,0,240,200\n5,6,239.7,90\n")
    read = read_boxes_csv(boxes, (200, 240))
    np.testing.assert_array_equal(read.boxes_xyxy, [[0, 0, 239.5, 199.5], [5, 6, 239.5, 90]])
    out = tmp_path / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--boxes", str(boxes)) == 0, capsys.readouterr()
    expected = reference(tiny_sam, image).predict_boxes(read.boxes_xyxy)
    np.testing.assert_array_equal(tifffile.imread(out), expected)

    # a box past the edges is clipped to the image, as the widget and napari's shapes files
    # have it (a detector's boxes, one drawn past the border): it was refused
    past = "x_min,y_min,x_max,y_max\n-20,-20,30,30\n0,0,240.5,201\n"
    read = read_boxes_csv(write_csv(tmp_path / "past.csv", past), (200, 240))
    np.testing.assert_array_equal(read.boxes_xyxy, [[-0.5, -0.5, 30, 30], [0, 0, 239.5, 199.5]])
    for row in (
        "240,0,240,10",  # the near corner on the far edge: no pixel inside
        "-30,0,-1,20",
        "0,200,20,220",
        "-30,0,-0.5,20",  # touching an edge from outside: clipped, a line
        "239.5,0,260,10",
        "0,-9,20,-0.5",
    ):
        text = f"x_min,y_min,x_max,y_max\n{row}\n"
        shown = ", ".join(row.split(","))
        with pytest.raises(
            ValueError, match=rf"line 2: the box \({shown}\) lies outside the image"
        ):
            read_boxes_csv(write_csv(tmp_path / "bad.csv", text), (200, 240))


def test_a_point_must_lie_on_a_pixel(tmp_path):
    """A point names a pixel: x = W (pixel-edge coordinates of the far edge) lies beyond the
    last pixel, whose centre is W - 1 and whose far edge is W - 0.5; it stays refused, as
    the core (``check_points``) and the widget (which drops such points) do."""
    from napari_samtune.cli.prompt_files import read_points_csv

    inside = read_points_csv(
        write_csv(tmp_path / "p.csv", "x,y\n239.5,199.5\n-0.5,0\n"), (200, 240)
    )
    np.testing.assert_array_equal(inside.points_xy, [[239.5, 199.5], [-0.5, 0]])
    for row in ("240,10", "10,200", "-0.6,10"):
        with pytest.raises(ValueError, match=r"line 2: .* lies outside the image of width 240"):
            read_points_csv(write_csv(tmp_path / "p.csv", f"x,y\n{row}\n"), (200, 240))


def test_prompts_whose_object_comes_out_empty_are_named(
    tmp_path, tiny_checkpoint, image_file, capsys, monkeypatch
):
    real = Segmenter.predict_boxes

    def without_object_2(self, boxes):  # the real labels, with the second box's object lost
        labels = real(self, boxes)
        assert {1, 2, 3} <= set(np.unique(labels).tolist())
        labels[labels == 2] = 0
        return labels

    monkeypatch.setattr(Segmenter, "predict_boxes", without_object_2)
    path, _ = image_file
    text = "x_min,y_min,x_max,y_max\n10,10,60,70\n120,20,220,90\n20,100,120,190\n"
    boxes = write_csv(tmp_path / "b.csv", text)
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--boxes", str(boxes)) == 0
    captured = capsys.readouterr()
    note = "note: 1 of 3 prompted objects came out empty (ids 2, from the data rows)"
    assert note in captured.err
    assert "2 objects written" in captured.out


def test_each_positive_point_is_one_object(tmp_path, tiny_sam, tiny_checkpoint, image_file):
    path, image = image_file
    points = write_csv(tmp_path / "p.csv", "x,y,label\n30,40,1\n200,150,1\n")
    out = tmp_path / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--points", str(points)) == 0
    expected = reference(tiny_sam, image).predict_points_batched([[30, 40], [200, 150]])
    assert expected.max() > 0
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_an_object_column_groups_points_into_one_prompt(
    tmp_path, tiny_sam, tiny_checkpoint, image_file
):
    path, image = image_file
    """An object's points are answered click by click from its first positive one, in file
    order, as the widget answers clicks (all at once, nano's IoU with 3 corrective clicks
    was 0.765 where the widget's was 0.882)."""
    from napari_samtune.core.click_chain import ClickChain

    path, image = image_file
    text = "x,y,label,object\n50,60,0,5\n30,40,1,5\n200,150,1,2\n40,45,1,5\n"
    points = write_csv(tmp_path / "p.csv", text)
    out = tmp_path / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--points", str(points)) == 0
    labels = tifffile.imread(out)
    segmenter = reference(tiny_sam, image)
    clicks = np.array([[30.0, 40], [50, 60], [40, 45]])
    first = ClickChain().predict(segmenter, clicks, np.array([1, 0, 1])).mask
    second = segmenter.predict([[200, 150]], multimask=True).mask
    assert first.any()
    np.testing.assert_array_equal(labels == 5, first)
    np.testing.assert_array_equal(labels == 2, second & ~first)


def napari_points_file(path, rows_cols, labels):
    """A points layer with the annotation widget's positive/negative feature, saved by
    napari's own writer (File > Save Selected Layers): index,axis-0,...,label."""
    import pandas as pd
    from napari.layers import Points
    from napari_builtins.io import napari_write_points

    features = pd.DataFrame({"label": pd.Categorical(labels, ["positive", "negative"])})
    layer = Points(np.asarray(rows_cols, dtype=float), features=features)
    data, meta, _ = layer.as_layer_data_tuple()
    return Path(napari_write_points(str(path), data, meta))


def test_points_saved_from_napari_and_files_without_labels(
    tmp_path, tiny_sam, tiny_checkpoint, image_file
):
    path, image = image_file
    expected = reference(tiny_sam, image).predict_points_batched([[30, 40], [200, 150]])
    assert expected.max() > 0
    saved = napari_points_file(tmp_path / "p.csv", [[40, 30], [150, 200]], ["positive"] * 2)
    assert saved.read_text().startswith("index,axis-0,axis-1,label\n")  # (row, column)
    unlabelled = write_csv(tmp_path / "xy.csv", "x,y\n30,40\n200,150\n")  # all positive
    # pandas' to_csv writes its index as an unnamed first column
    indexed = write_csv(tmp_path / "pandas.csv", ",x,y\n0,30,40\n1,200,150\n")
    for i, points in enumerate((saved, unlabelled, indexed)):
        assert segment(tiny_checkpoint, path, tmp_path / f"{i}.tif", "--points", str(points)) == 0
        np.testing.assert_array_equal(tifffile.imread(tmp_path / f"{i}.tif"), expected)


def test_negative_points_without_an_object_column_are_background_for_every_object(
    tmp_path, tiny_sam, tiny_checkpoint, image_file, capsys
):
    """As napari saves the annotation widget's points layer (positive and negative), and as
    Excel saves CSV (with a byte-order mark and CRLF line ends)."""
    path, image = image_file
    segmenter = reference(tiny_sam, image)
    negatives = [[100, 100], [10, 190]]
    masks = {
        object_id: segmenter.predict([point, *negatives], [1, 0, 0], multimask=False).mask
        for object_id, point in [(1, [30, 40]), (3, [200, 150])]
    }
    both = masks[1] & masks[3]  # where they overlap, the larger logit wins
    expected = np.where(masks[1] & ~both, 1, np.where(masks[3] & ~both, 3, 0))
    assert (expected == 1).any() and (expected == 3).any()
    saved = napari_points_file(
        tmp_path / "p.csv",
        [[40, 30], [100, 100], [150, 200], [190, 10]],
        ["positive", "negative", "positive", "negative"],
    )
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbfx,y,label\r\n30,40,1\r\n100,100,0\r\n200,150,1\r\n10,190,0\r\n")
    for i, points in enumerate((saved, excel)):
        assert segment(tiny_checkpoint, path, tmp_path / f"{i}.tif", "--points", str(points)) == 0
        written = tifffile.imread(tmp_path / f"{i}.tif")
        np.testing.assert_array_equal(np.where(both, 0, written), expected)
        assert np.isin(written[both], [1, 3]).all()
    assert "came out empty" not in capsys.readouterr().err  # negative rows are not objects


def napari_shapes_file(path, shapes, shape_types):
    """A shapes layer saved by napari's own writer: index,shape-type,vertex-index,axis-0,..."""
    from napari.layers import Shapes
    from napari_builtins.io import napari_write_shapes

    layer = Shapes([np.asarray(s, dtype=float) for s in shapes], shape_type=shape_types)
    data, meta, _ = layer.as_layer_data_tuple()
    return Path(napari_write_shapes(str(path), data, meta))


def test_shapes_saved_from_napari_are_boxes_by_their_bounding_box(
    tmp_path, tiny_sam, tiny_checkpoint, image_file
):
    path, image = image_file  # 200 rows x 240 columns
    rectangle = [[10, 20], [10, 60], [70, 60], [70, 20]]  # rows 10..70, columns 20..60
    ellipse = [[100, 120], [100, 220], [190, 220], [190, 120]]  # its bounding box
    beyond = [[150, 200], [150, 300], [230, 300], [230, 200]]  # past the bottom-right corner
    shapes = napari_shapes_file(
        tmp_path / "s.csv", [rectangle, ellipse, beyond], ["rectangle", "ellipse", "rectangle"]
    )
    assert shapes.read_text().startswith("index,shape-type,vertex-index,axis-0,axis-1\n")
    out = tmp_path / "boxes.tif"
    assert segment(tiny_checkpoint, path, out, "--boxes", str(shapes)) == 0
    expected_boxes = [[20, 10, 60, 70], [120, 100, 220, 190], [200, 150, 239.5, 199.5]]
    expected = reference(tiny_sam, image).predict_boxes(expected_boxes)
    assert expected.max() > 0
    np.testing.assert_array_equal(tifffile.imread(out), expected)


@pytest.fixture
def stack_file(tmp_path):
    """A (3, 120, 160) uint16 stack whose planes differ."""
    stack = np.stack([make_image((120, 160), seed=s, dtype=np.uint16)[0] for s in (3, 4, 5)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    return path, stack


def test_a_stack_is_segmented_plane_by_plane_from_3d_prompts(
    tmp_path, tiny_sam, tiny_checkpoint, stack_file, capsys
):
    path, stack = stack_file
    plane_0 = reference(tiny_sam, stack[0])
    plane_2 = reference(tiny_sam, stack[2])
    points = napari_points_file(tmp_path / "p.csv", [[2, 50, 60], [0, 30, 40]], ["positive"] * 2)
    out = tmp_path / "points.tif"
    assert segment(tiny_checkpoint, path, out, "--stack", "--points", str(points)) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (3, 120, 160) and labels.dtype == np.uint32
    expected_2 = plane_2.predict_points_batched([[60, 50]])  # row 1 of the file: id 1
    expected_0 = plane_0.predict_points_batched([[40, 30]])  # row 2: id 2
    assert expected_0.max() == 1 and expected_2.max() == 1
    np.testing.assert_array_equal(labels[2], expected_2)
    np.testing.assert_array_equal(labels[0], expected_0 * 2)
    assert not labels[1].any()  # no prompt there
    assert "2 objects in 2 of 3 planes written" in capsys.readouterr().out  # 1 left empty

    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max,z\n10,10,60,70,2\n")
    shapes = napari_shapes_file(
        tmp_path / "s.csv", [[[2, 10, 10], [2, 10, 60], [2, 70, 60], [2, 70, 10]]], "rectangle"
    )
    for prompts in (boxes, shapes):
        options = ["--stack", "--boxes", str(prompts), "--overwrite"]
        assert segment(tiny_checkpoint, path, out, *options) == 0
        labels = tifffile.imread(out)
        np.testing.assert_array_equal(labels[2], plane_2.predict_boxes([[10, 10, 60, 70]]))
        assert not labels[:2].any()


def test_a_blank_plane_of_a_stack_is_left_empty_and_named(
    tmp_path, tiny_checkpoint, stack_file, capsys
):
    """Prompts on a blank plane were said to have "come out empty ... try a box", and
    --auto kept whatever the model made up there; the widget names the blank plane."""
    path, stack = stack_file
    stack = stack.copy()
    stack[1] = 700
    tifffile.imwrite(path, stack)
    points = napari_points_file(tmp_path / "p.csv", [[1, 50, 60], [2, 30, 40]], ["positive"] * 2)
    out = tmp_path / "points.tif"
    assert segment(tiny_checkpoint, path, out, "--stack", "--points", str(points)) == 0
    err = capsys.readouterr().err
    assert "note: plane 1 is left empty, with the 1 prompt there: it is one value everywhere" in err
    assert "ids 1," not in err and "(ids 1 " not in err  # row 1, on plane 1: not "empty"
    assert not tifffile.imread(out)[1].any()

    keep_all = ["--points-per-side", "4", "--pred-iou-thresh", "-1", "--stability-score-thresh"]
    assert (
        segment(tiny_checkpoint, path, out, "--stack", "--auto", *keep_all, "0", "--overwrite") == 0
    )
    assert "note: plane 1 is left empty: it is one value everywhere" in capsys.readouterr().err
    labels = tifffile.imread(out)
    assert labels[0].any() and not labels[1].any() and labels[2].any()
    copy = tmp_path / "copy.tif"  # of several images, the note names its image
    copy.write_bytes(path.read_bytes())
    options = ["--stack", "--auto", *keep_all, "0", "--no-progress"]
    assert segment(tiny_checkpoint, [path, copy], tmp_path / "all", *options) == 0
    assert "note: copy.tif: plane 1 is left empty: it is one value" in capsys.readouterr().err


def test_auto_on_a_stack_gives_ids_unique_across_planes(
    tmp_path, tiny_checkpoint, stack_file, capsys, monkeypatch
):
    from napari_samtune.core import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # a log line at once, off a terminal
    path, stack = stack_file
    out = tmp_path / "auto.tif"
    options = ["--points-per-side", "4", "--pred-iou-thresh", "-1", "--stability-score-thresh"]
    assert segment(tiny_checkpoint, path, out, "--stack", "--auto", *options, "0") == 0
    bars = capsys.readouterr().err  # a plane of --auto may take minutes: its own bars too
    assert "segmenting planes" in bars and "segmenting plane 2" in bars
    assert "embedding plane 2" in bars
    labels = tifffile.imread(out)
    ids = [set(np.unique(plane[plane > 0]).tolist()) for plane in labels]
    assert labels.shape == (3, 120, 160) and all(ids)
    assert max(ids[0]) < min(ids[1]) and max(ids[1]) < min(ids[2])
    one = tmp_path / "plane1.tif"
    tifffile.imwrite(tmp_path / "plane1_in.tif", stack[1])
    assert segment(tiny_checkpoint, tmp_path / "plane1_in.tif", one, "--auto", *options, "0") == 0
    alone = tifffile.imread(one)
    np.testing.assert_array_equal(labels[1] > 0, alone > 0)
    np.testing.assert_array_equal(labels[1][alone > 0] - max(ids[0]), alone[alone > 0])


@pytest.mark.parametrize(
    ("options", "prompt", "message"),
    [
        ((), "x,y\n1,2\n", "channel axis is ambiguous.*For a z-stack .* pass --stack"),
        (("--stack",), "x,y\n1,2\n", r"missing column\(s\) \['z'\]"),
        (("--stack",), "x,y,z\n1,2,3\n", "line 2: plane .z. is 3; the image has 3 planes"),
        (("--stack",), "x,y,z\n1,2,1.5\n", "plane .z. is 1.5; .* 0..2: give a whole number"),
        (("--stack",), "index,axis-0,axis-1\n0,1,2\n", "2D points .* --stack needs each point"),
        (
            ("--stack", "--channel-axis", "-3"),
            "x,y,z\n1,2,0\n",
            "--channel-axis -3: .*axis of planes",
        ),
        (("--stack",), SPANNING_SHAPE, r"shape 0 spans planes \[0.0, 1.0\]; draw each box"),
        (  # its negative point alone on plane 1 was a prompt there: a neighbour segmented
            ("--stack",),
            "x,y,label,object,z\n10,10,1,1,0\n30,30,0,1,1\n",
            "line 3: object 1 has only negative points on plane 1; give it a positive point "
            "\\(label 1\\) on the object on plane 1",
        ),
    ],
)
def test_stack_mistakes_are_named(
    tmp_path, tiny_checkpoint, stack_file, capsys, options, prompt, message
):
    path, _ = stack_file
    prompts = write_csv(tmp_path / "p.csv", prompt)
    kind = "--boxes" if prompt.startswith("index,shape-type") else "--points"
    code = segment(tiny_checkpoint, path, tmp_path / "o.tif", *options, kind, str(prompts))
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o.tif").exists()


def test_a_stack_or_channels_hint_names_each_option_once(
    tmp_path, tiny_checkpoint, stack_file, capsys
):
    """It said "pass --channel-axis (e.g. 0 or -1) and channels (...). For a z-stack ... pass
    --stack; for channels pass --channel-axis and --channels": channels twice, the second
    time without the values to give."""
    path, _ = stack_file
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--auto") == 2
    err = capsys.readouterr().err
    assert err.count("--channel-axis") == 1 and err.count("--channels") == 1
    assert re.search(r"pass --stack; for channels pass --channel-axis \(e\.g\. 0 or -1\) and "
                     r"--channels \(one index", err)  # fmt: skip


def test_two_channels_last_are_not_offered_as_a_stack(tmp_path, tiny_checkpoint, capsys):
    """(H, W, 2) was told "For a z-stack or time series (planes first) pass --stack", which
    then refused it as "2 channels last (RGB, RGBA...)"."""
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.zeros((48, 40, 2), np.uint16) + np.arange(2, dtype=np.uint16))
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--auto") == 2
    err = capsys.readouterr().err
    assert "--stack" not in err and "its last axis holds 2 channels" in err
    assert "pass --channel-axis -1 and --channels (one index" in err
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--auto", "--stack") == 2
    err = capsys.readouterr().err
    assert "RGB" not in err and "(pass --channel-axis -1 --channels)" in err
    ten = tmp_path / "ten.tif"  # a stack saved planes last: both ways are offered, as before
    tifffile.imwrite(ten, np.zeros((48, 40, 10), np.uint16) + np.arange(10, dtype=np.uint16))
    assert segment(tiny_checkpoint, ten, tmp_path / "o.tif", "--auto") == 2
    assert "pass --stack" in capsys.readouterr().err


def test_a_stack_with_its_channels_first_is_segmented_plane_by_plane(
    tmp_path, tiny_checkpoint, stack_file
):
    """(C, Z, H, W), as OME-TIFF often holds it, with --channel-axis 0: as (Z, C, H, W)
    with --channel-axis 1."""
    path, stack = stack_file
    noise = np.random.default_rng(2).integers(0, 65535, stack.shape, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "czyx.tif", np.stack([noise, stack]))
    tifffile.imwrite(tmp_path / "zcyx.tif", np.stack([noise, stack], axis=1))
    points = write_csv(tmp_path / "p.csv", "x,y,z\n40,30,0\n100,60,2\n")
    for name, axis in [("czyx", "0"), ("zcyx", "1")]:
        options = ["--stack", "--channel-axis", axis, "--channels", "1", "--points", str(points)]
        out = tmp_path / f"{name}.labels.tif"
        assert segment(tiny_checkpoint, tmp_path / f"{name}.tif", out, *options) == 0
    from_czyx = tifffile.imread(tmp_path / "czyx.labels.tif")
    from_zcyx = tifffile.imread(tmp_path / "zcyx.labels.tif")
    assert from_czyx.shape == (3, 120, 160)
    np.testing.assert_array_equal(from_czyx, from_zcyx)
    assert (
        segment(tiny_checkpoint, path, tmp_path / "gray.tif", "--stack", "--points", str(points))
        == 0
    )
    np.testing.assert_array_equal(from_czyx, tifffile.imread(tmp_path / "gray.tif"))  # channel 1


def test_a_stack_with_unclear_channels_names_the_axis_counted_in_the_stack(
    tmp_path, tiny_checkpoint, stack_file, capsys
):
    """A (Z, C, H, W) stack's error suggested "--channel-axis (e.g. 0 or -1)", counted in
    one plane; given so, 0 took the planes for channels and -1 the image's width."""
    _, stack = stack_file
    path = tmp_path / "zcyx.tif"
    tifffile.imwrite(path, np.stack([stack, stack // 2], axis=1))
    points = write_csv(tmp_path / "p.csv", "x,y,z\n40,30,0\n")
    code = segment(tiny_checkpoint, path, tmp_path / "o.tif", "--stack", "--points", str(points))
    assert code == 2
    err = capsys.readouterr().err
    assert "--channel-axis, counted in the whole stack (1 for (Z, C, H, W)" in err
    assert "e.g. 0 or -1" not in err
    assert not (tmp_path / "o.tif").exists()


def test_channels_given_for_a_grayscale_stack_call_it_a_stack(
    tmp_path, tiny_checkpoint, stack_file, capsys
):
    """--stack --channels 1 on a gray (Z, H, W) stack: "the image is 2D grayscale"."""
    path, _ = stack_file
    points = write_csv(tmp_path / "p.csv", "x,y,z\n40,30,0\n")
    argv = ["--stack", "--channels", "1", "--points", str(points)]
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", *argv) == 2
    err = capsys.readouterr().err
    assert "grayscale planes, with no channels to choose from" in err and "2D" not in err
    assert "segment it without --channels" in err


def test_an_image_without_a_finite_pixel_is_refused(tmp_path, tiny_checkpoint, capsys):
    """An all-NaN export was "segmented" into "0 objects written", exit 0."""
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, np.full((120, 160), np.nan, np.float32))
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--auto") == 2
    err = capsys.readouterr().err
    assert f"{path} holds no finite pixel value (all NaN or infinite)" in err
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("shape", [(1, 1, 200, 240), (200, 240, 1, 1)])
def test_an_image_saved_with_axes_of_one_entry_is_segmented_as_2d(
    tmp_path, tiny_sam, tiny_checkpoint, image_file, shape
):
    """Refused, with the hint to pass --stack, which made (H, W, 1, 1) H planes 1 pixel wide."""
    _, image = image_file
    path = tmp_path / "single_axes.tif"
    tifffile.imwrite(path, image.reshape(shape))
    points = write_csv(tmp_path / "p.csv", "x,y\n50,60\n150,40\n")
    out = tmp_path / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--points", str(points)) == 0
    expected = reference(tiny_sam, image).predict_points_batched([[50, 60], [150, 40]])
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_stack_on_a_single_plane_is_refused(tmp_path, tiny_checkpoint, image_file, capsys):
    path, _ = image_file
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--stack", "--auto") == 2
    assert "a single 2D plane; leave out --stack" in capsys.readouterr().err


def test_stack_on_an_rgb_image_is_refused(tmp_path, tiny_checkpoint, capsys):
    """An (H, W, 3) image with --stack was "segmented" as H planes 3 pixels wide into an
    (H, W, 3) labels file, exit 0."""
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.stack([make_image((48, 64), seed=1)[0]] * 3, axis=-1))
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--stack", *AUTO) == 2
    err = capsys.readouterr().err
    assert "has shape (48, 64, 3), an image with 3 channels last" in err
    assert "leave out --stack" in err and not (tmp_path / "o.tif").exists()


def test_stack_on_a_plane_saved_with_trailing_axes_of_one_entry_is_refused(
    tmp_path, tiny_checkpoint, capsys
):
    """An (H, W, 1, 1) image with --stack was "segmented" as H planes 1 pixel wide, exit 0."""
    path = tmp_path / "plane.tif"
    tifffile.imwrite(path, make_image((48, 64), seed=1)[0].reshape(48, 64, 1, 1))
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--stack", *AUTO) == 2
    err = capsys.readouterr().err
    assert "has shape (48, 64, 1, 1), a single 2D plane" in err
    assert "leave out --stack" in err and not (tmp_path / "o.tif").exists()


GRAY, TWO_CHANNELS = (120, 160), (2, 120, 160)


@pytest.mark.parametrize(
    ("options", "shape", "message"),
    [
        (["--points-per-side", "0"], GRAY, "error: --points-per-side 0; use a positive"),
        (["--min-area", "-1"], GRAY, "error: --min-area -1; use a whole number >= 0"),
        (["--device", "gpu"], GRAY, "error: --device gpu is not a device; choose one of"),
        (
            ["--channel-axis", "3", "--channels", "1"],
            TWO_CHANNELS,
            "error: --channel-axis 3 is out of range for an image of shape (2, 120, 160)",
        ),
        (
            ["--channel-axis", "0", "--channels", "0,1,5"],
            TWO_CHANNELS,
            "error: --channels 0,1,5 is invalid for an image with 2 channels; give one or",
        ),
        (
            ["--channels", "1"],
            GRAY,
            "error: --channels 1 was given but the image is 2D grayscale, with no channels to",
        ),
    ],
)
def test_option_errors_name_the_options_as_typed(
    tmp_path, tiny_checkpoint, capsys, options, shape, message
):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random(shape))  # not blank: refused
    assert segment(tiny_checkpoint, path, tmp_path / "o.tif", "--auto", *options) == 2
    err = capsys.readouterr().err
    assert message in err
    # not the Python names, nor the advice to pass the channel options just given
    assert not re.search(r"\w_?\w+=", err) and "pass --channel-axis and --channels" not in err


def test_auto_on_a_tiled_multichannel_image(tmp_path, tiny_checkpoint, capsys):
    image = make_image((256, 400), seed=1)[0]
    stack = np.stack([np.zeros_like(image), image], axis=0)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    out = tmp_path / "labels.tif"
    options = [
        "--auto",
        "--channel-axis",
        "0",
        "--channels",
        "1",
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "-1",
        "--stability-score-thresh",
        "0",
        "--min-area",
        "1",
    ]
    assert segment(tiny_checkpoint, path, out, *options) == 0
    labels = tifffile.imread(out)
    ids = np.unique(labels[labels > 0]).tolist()
    assert labels.shape == (256, 400) and labels.dtype == np.uint32
    assert ids and ids == list(range(1, len(ids) + 1))
    captured = capsys.readouterr()
    assert "embedding" in captured.err and "2/2" in captured.err  # the tile progress bar
    assert f"{len(ids)} objects written" in captured.out


def test_auto_defaults_follow_the_model_size(tmp_path):
    """SAM's thresholds keep no object of the packaged nano model (its IoU head is far less
    confident); nano-sized models get nano's defaults, as in ``samtune evaluate``."""
    from napari_samtune.core.automatic import NANO_AUTO_CONFIG
    from napari_samtune.core.models import load_model

    image = make_image((128, 128), seed=0)[0]
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "cells.tif", image)
    nano = load_model("nano")
    segmenter = Segmenter(nano.sam, nano.model_id, use_disk_cache=False)
    segmenter.set_image(image)
    expected = segmenter.segment_all(NANO_AUTO_CONFIG)
    assert expected.max() >= 3
    single, folder = tmp_path / "images" / "cells.tif", tmp_path / "images"
    for source, out in ((single, tmp_path / "one.tif"), (folder, tmp_path / "labels")):
        argv = ["segment", str(source), "--auto", "--model", "nano", "--no-cache"]
        assert main([*argv, "-o", str(out), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "one.tif"), expected)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels/cells.labels.tif"), expected)


def test_a_second_run_reuses_the_cached_embeddings(tmp_path, tiny_checkpoint, image_file):
    path, _ = image_file
    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n10,10,60,70\n")
    out = tmp_path / "labels.tif"
    assert segment(tiny_checkpoint, path, out, "--boxes", str(boxes)) == 0
    files = list(default_cache_dir().glob("*.pt"))
    assert len(files) == 1
    inode = files[0].stat().st_ino  # a rewrite (atomic: a new file renamed over) changes it
    assert segment(tiny_checkpoint, path, out, "--boxes", str(boxes), "--overwrite") == 0
    assert [f.stat().st_ino for f in default_cache_dir().glob("*.pt")] == [inode]


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        ("--points", "col,row\n1,2\n", r"p.csv: missing column\(s\) \['x', 'y'\]"),
        (
            "--points",
            "index,axis-0,axis-1,axis-2\n0,1,2,3\n1,4,5,6\n",
            r"holds 3D points on 2 planes \(axis-0: 1, 4\), as napari saves them for a stack; "
            "pass --stack for a stack, or, for this 2D image, save the points of one plane",
        ),
        ("--points", "axis-0,axis-1,axis-2,axis-3\n0,1,2,3\n", "2D points .* or, with --stack"),
        ("--points", "x,y,label\n1,2,1\nabc,3,1\n", "p.csv, line 3: column 'x' is 'abc', not a"),
        ("--points", "x,y,label\n1,2,1\n300,3,1\n", r"p.csv, line 3: \(x=300, y=3\) lies outside"),
        ("--points", "x,y,label\n5,3,0\n", "holds only negative points; add a positive"),
        (
            "--points",
            "x,y,label,object\n1,2,1,1\n5,3,0,2\n",
            "line 3: object 2 has only negative points; give it a positive point",
        ),
        ("--points", "x,y,label\n1,2,2\n", "line 2: label is '2'; use 1 .or positive."),
        ("--points", "x,y,label,object\n1,2,1,0.5\n", "object ids are whole numbers"),
        (  # it said to write "pixel coordinates and labels as plain numbers, e.g. 12.5"
            "--points",
            "x,y,label,object\n1,2,1,cell_a\n",
            "line 2: column 'object' is 'cell_a', not a number; object ids are whole numbers "
            "from 1, e.g. 1 for every point of the first object",
        ),
        (
            "--points",
            "x,y,label,object\n1,2,1,5000000000\n",
            "line 2: object is 5000000000; object ids are whole numbers from 1 to 4294967295",
        ),
        ("--points", "x,y,label\n", "has a header but no rows"),
        ("--points", "", "p.csv is empty; its first line must name the columns: x,y, then"),
        ("--points", "x;y\n1;2\n", "p.csv: its header 'x;y' is not separated by commas; save"),
        (  # German Excel: its decimal commas split the rows; it was told to write 12.5
            "--points",
            "x;y\n40,5;30\n",
            "p.csv: its header 'x;y' is not separated by commas; save the file as "
            "comma-separated values with decimal points",
        ),
        (
            "--points",
            "# clicked in Fiji\nx,y\n40,30\n",
            "p.csv: its first line '# clicked in fiji' is a comment; remove the comment lines",
        ),
        ("--points", "x,y\n12,5,30,5\n", r"line 2: 4 values \(12,5,30,5\) for the 2 columns"),
        (
            "--points",
            "x,y,lable\n1,2,1\n5,3,0\n",
            r"p.csv: column\(s\) \['lable'\] are not read .* the columns are x, y, label, object",
        ),
        (
            "--points",
            "x,y,label   # 1 = positive, 0 = negative\n1,2,1\n5,3,0\n",
            r"column\(s\) \['label   # 1 = positive', '0 = negative'\] are not read",
        ),
        (
            "--boxes",
            "x_min,y_min,x_max,y_max,object\n1,2,3,4,7\n",
            r"column\(s\) \['object'\] are not read .* x_min, y_min, x_max, y_max, z:",
        ),
        (
            "--points",
            "x,y,z\n1,2,0\n5,3,2\n",
            "p.csv: column 'z' gives each prompt's plane, but without --stack .* pass --stack",
        ),
        (
            "--boxes",
            "x_min,y_min,x_max,y_max,z\n1,2,3,4,1\n",
            "p.csv: column 'z' gives each prompt's plane, but without --stack",
        ),
        ("--boxes", "x_min,y_min,x_max,y_max\n1,2,3,4,5\n", "line 2: 5 values .* write 12.5"),
        # the last x was taken and the first dropped unsaid: the point went to x = 1
        ("--points", "x,y,x\n30,40,1\n", r"p.csv: column\(s\) \['x'\] appear more than once"),
        (
            "--boxes",
            "X_min,y_min,x_max,y_max,x_min\n1,2,30,40,5\n",
            r"column\(s\) \['x_min'\] appear more than once in the header",
        ),
        ("--boxes", "x_min,y_min,x_max,y_max\n50,5,10,20\n", "line 2: x_min > x_max"),
        # napari's files kept every other column unread: the misspelt label made the
        # negative point an object, and a shapes file's corners became one object each
        (
            "--points",
            "index,axis-0,axis-1,lable\n0,105,141,1\n1,20,78,0\n",
            r"column\(s\) \['lable'\] are not read .* index, axis-0, axis-1, label, object",
        ),
        (
            "--points",
            SHAPE_OUTSIDE,
            "p.csv holds shapes .*, not points: each corner would become a point; pass it with --b",
        ),
        ("--boxes", SPANNING_SHAPE, "holds 3D shapes on 2 planes .*pass --stack for a stack"),
        ("--boxes", SHAPE_OUTSIDE, "line 2: shape 0 lies outside the image of width 240"),
        ("--boxes", "x_min,y_min,x_max,y_max\n5,205,10,250\n", "line 2: .* lies outside"),
    ],
)
def test_bad_prompt_files_name_the_file_line_and_fix(
    tmp_path, tiny_checkpoint, image_file, capsys, option, text, message
):
    path, _ = image_file
    prompt_file = write_csv(tmp_path / "p.csv", text)
    code = segment(tiny_checkpoint, path, tmp_path / "out.tif", option, str(prompt_file))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("samtune segment: error:")
    assert re.search(message, err), err
    assert not (tmp_path / "out.tif").exists()


def test_the_readme_prompt_files_read_as_written(tmp_path):
    """Copied from the README, its examples had a comment in the header line: the points
    file then had no label column, and its negative point became an object."""
    from napari_samtune.cli.prompt_files import read_boxes_csv, read_points_csv

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("**Prompt files**", 1)[1]
    points_text, boxes_text = re.findall(r"```\n(.*?)```", section, re.DOTALL)[:2]
    points = read_points_csv(write_csv(tmp_path / "p.csv", points_text), (200, 200))
    np.testing.assert_array_equal(points.points_xy, [[120.5, 88], [131, 95]])
    np.testing.assert_array_equal(points.labels, [1, 0])
    boxes = read_boxes_csv(write_csv(tmp_path / "b.csv", boxes_text), (200, 200))
    np.testing.assert_array_equal(boxes.boxes_xyxy, [[100, 60, 150, 118]])


def test_an_image_named_with_glob_characters_is_that_image(
    tmp_path, tiny_sam, tiny_checkpoint, image_file, capsys
):
    """``well[A1].tif`` was taken as a pattern that matched no file, and ``img*.tif`` as a
    batch of one image that a prompt file cannot go with."""
    path, image = image_file
    points = write_csv(tmp_path / "p.csv", "x,y\n30,40\n200,150\n")
    expected = reference(tiny_sam, image).predict_points_batched([[30, 40], [200, 150]])
    for i, name in enumerate(("well[A1].tif", "img*star.tif")):
        named = tmp_path / name
        named.write_bytes(path.read_bytes())
        out = tmp_path / f"{i}.tif"
        assert segment(tiny_checkpoint, named, out, "--points", str(points)) == 0, (
            capsys.readouterr()
        )
        np.testing.assert_array_equal(tifffile.imread(out), expected)
    # a pattern is a batch, even of one image: it goes with --auto only
    pattern = tmp_path / "image.t?f"
    assert segment(tiny_checkpoint, pattern, tmp_path / "o.tif", "--points", str(points)) == 2
    assert "a folder or pattern with a prompt file, which belongs to one image; give one" in (
        capsys.readouterr().err
    )


def test_automatic_segmentation_options_are_refused_with_a_prompt_file(
    tmp_path, tiny_checkpoint, image_file, capsys
):
    points = write_csv(tmp_path / "p.csv", "x,y\n30,40\n")
    options = ["--points", str(points), "--points-per-side", "8", "--min-area", "5"]
    assert segment(tiny_checkpoint, image_file[0], tmp_path / "o.tif", *options) == 2
    assert (
        "--points-per-side and --min-area set automatic segmentation (--auto), which prompt "
        "files do not use; remove them, or segment with --auto"
    ) in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()
    one = ["--points", str(points), "--min-area", "5"]
    assert segment(tiny_checkpoint, image_file[0], tmp_path / "o.tif", *one) == 2
    assert (
        "--min-area sets automatic segmentation (--auto), which prompt files do not use; "
        "remove it," in capsys.readouterr().err
    )


def test_a_folder_as_prompt_file_is_named_a_folder(tmp_path, tiny_checkpoint, image_file, capsys):
    (tmp_path / "prompts").mkdir()
    options = ["--points", str(tmp_path / "prompts")]
    assert segment(tiny_checkpoint, image_file[0], tmp_path / "o.tif", *options) == 2
    err = capsys.readouterr().err
    assert "prompts' is a folder; give the CSV file in it" in err  # it said: does not exist
    assert not (tmp_path / "o.tif").exists()


def test_existing_labels_are_replaced_only_with_overwrite(
    tmp_path, tiny_checkpoint, image_file, capsys
):
    out = tmp_path / "image.labels.tif"
    corrected = np.arange(200 * 240, dtype=np.uint32).reshape(200, 240) % 7
    tifffile.imwrite(out, corrected)  # e.g. labels corrected in napari since the first run
    assert segment(tiny_checkpoint, image_file[0], out, "--auto") == 2
    err = capsys.readouterr().err
    assert "image.labels.tif' exists already; pass --overwrite to replace it" in err
    np.testing.assert_array_equal(tifffile.imread(out), corrected)  # it was overwritten
    assert segment(tiny_checkpoint, image_file[0], out, *AUTO, "--overwrite") == 0
    assert not np.array_equal(tifffile.imread(out), corrected)


def test_labels_saved_while_the_image_was_segmented_are_kept(
    tmp_path, tiny_checkpoint, image_file, monkeypatch, capsys
):
    """-o was checked only at the start: labels the annotation widget (or another run)
    saved there meanwhile were replaced without --overwrite."""
    from napari_samtune.cli import segment as segment_command

    out = tmp_path / "image.labels.tif"
    corrected = np.full((200, 240), 7, np.uint32)
    real = segment_command.segment_planes

    def saved_meanwhile(*args, **kwargs):
        labels = real(*args, **kwargs)
        tifffile.imwrite(out, corrected)
        return labels

    monkeypatch.setattr(segment_command, "segment_planes", saved_meanwhile)
    assert segment(tiny_checkpoint, image_file[0], out, *AUTO) == 1
    err = capsys.readouterr().err
    assert (
        f"not written: {out} was saved meanwhile (by the annotation widget or another run?)" in err
    )
    np.testing.assert_array_equal(tifffile.imread(out), corrected)
    assert segment(tiny_checkpoint, image_file[0], out, *AUTO, "--overwrite") == 0
    assert not np.array_equal(tifffile.imread(out), corrected)


def test_the_same_labels_written_meanwhile_by_another_run_count_as_done(
    tmp_path, tiny_checkpoint, image_file, monkeypatch, capsys
):
    """Two `samtune segment --auto` runs of one folder at once: each found the other's file
    written meanwhile, called every image failed ("by the annotation widget?") and exited 1,
    though the files held what it had made."""
    from napari_samtune.cli import segment as segment_command

    out = tmp_path / "image.labels.tif"
    real = segment_command.segment_planes

    def the_other_run_writes_the_same(*args, **kwargs):
        labels, rest = real(*args, **kwargs)
        tifffile.imwrite(out, labels)
        return labels, rest

    monkeypatch.setattr(segment_command, "segment_planes", the_other_run_writes_the_same)
    assert segment(tiny_checkpoint, image_file[0], out, *AUTO) == 0
    assert "not written" not in capsys.readouterr().err


def test_labels_named_beside_the_widget_s_keep_their_record(
    tmp_path, tiny_checkpoint, image_file, capsys
):
    """``-o out/image.tif`` beside the widget's ``out/image.labels.tif`` rewrote the record
    both share, ``out/image.prompts.json``: those labels lost their prompts and fingerprint."""
    path, _ = image_file
    (tmp_path / "out").mkdir()
    assert segment(tiny_checkpoint, path, tmp_path / "out", "--auto") == 0
    record = tmp_path / "out" / "image.prompts.json"
    saved = record.read_bytes()
    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n10,10,60,70\n")
    out = tmp_path / "out" / "image.tif"
    assert segment(tiny_checkpoint, path, out, "--boxes", str(boxes)) == 2
    err = capsys.readouterr().err
    assert "which is the record of the labels" in err and "image-cli.tif" in err
    assert record.read_bytes() == saved and not out.exists()
    assert segment(tiny_checkpoint, path, tmp_path / "out" / "image-cli.tif", *AUTO) == 0


@pytest.mark.parametrize("images", ["one image", "a folder"])
def test_labels_written_into_a_folder_keep_the_record_of_an_o_beside_them(
    tmp_path, tiny_checkpoint, image_file, capsys, images
):
    """The other way round: ``-o out/image.tif``, then the image (or its folder) segmented
    into ``out/``: its ``image.labels.tif`` rewrote the record of ``out/image.tif``."""
    path, _ = image_file
    (tmp_path / "out").mkdir()
    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n10,10,60,70\n")
    assert (
        segment(tiny_checkpoint, path, tmp_path / "out" / "image.tif", "--boxes", str(boxes)) == 0
    )
    record = tmp_path / "out" / "image.prompts.json"
    saved = record.read_bytes()
    given = path if images == "one image" else path.parent
    assert segment(tiny_checkpoint, given, tmp_path / "out", *AUTO) == 2
    err = capsys.readouterr().err
    assert f"which is the record of the labels {str(tmp_path / 'out' / 'image.tif')!r}" in err
    assert "write into another folder, or move image.tif and image.prompts.json out of" in err
    assert record.read_bytes() == saved and not (tmp_path / "out" / "image.labels.tif").exists()
    (tmp_path / "out2").mkdir()
    assert segment(tiny_checkpoint, given, tmp_path / "out2", *AUTO) == 0  # elsewhere: fine


def test_a_missing_image_is_a_clear_error(tmp_path, tiny_checkpoint, capsys):
    code = segment(tiny_checkpoint, tmp_path / "nope.tif", tmp_path / "o.tif", "--auto")
    assert code == 2
    assert "nope.tif' does not exist" in capsys.readouterr().err
    # with an -o to mend as well: the missing image is named, not "-o ... does not end in .tif"
    assert segment(tiny_checkpoint, tmp_path / "nope.tif", tmp_path / "o2", "--auto") == 2
    assert "nope.tif' does not exist" in capsys.readouterr().err


def test_a_bad_output_is_refused_before_any_work(
    tmp_path, tiny_checkpoint, image_file, capsys, monkeypatch
):
    import napari_samtune.core.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(models, "load_model", no_loading)
    path, _ = image_file
    raw = path.read_bytes()
    assert segment(tiny_checkpoint, path, path, "--auto") == 2  # the input image itself
    assert (
        "is the input image: writing the labels there would destroy it" in capsys.readouterr().err
    )
    assert segment(tiny_checkpoint, path, tmp_path / "labels.png", "--auto") == 2
    assert "does not end in .tif: labels are written as a TIFF" in capsys.readouterr().err
    assert path.read_bytes() == raw and not (tmp_path / "labels.png").exists()
    # a new folder's name without its trailing / (which the README asks for) was given only
    # the file advice
    assert segment(tiny_checkpoint, path, tmp_path / "new_folder", "--auto") == 2
    err = capsys.readouterr().err
    assert f"or, for a folder, write it with a trailing /: {tmp_path / 'new_folder'}/" in err
    assert not (tmp_path / "new_folder").exists()


def test_a_folder_as_output_receives_the_labels_under_the_widget_s_name(
    tmp_path, tiny_checkpoint, image_file, capsys
):
    """One image with -o a folder was refused ("a folder is for several images"), though
    the error itself knew the file to write."""
    path, _ = image_file
    (tmp_path / "out").mkdir()
    assert segment(tiny_checkpoint, path, tmp_path / "out", "--auto") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "image.labels.tif",
        "image.prompts.json",
    ]
    assert segment(tiny_checkpoint, path, tmp_path / "out", "--auto") == 0  # a rerun skips
    assert "skipping 1 image(s) whose labels are already in" in capsys.readouterr().out
    points = write_csv(tmp_path / "p.csv", "x,y\n40,50\n150,100\n")
    new_folder = f"{tmp_path / 'new'}/"  # not made yet: a folder by its slash
    assert segment(tiny_checkpoint, path, new_folder, "--points", str(points)) == 0
    written = tifffile.imread(tmp_path / "new" / "image.labels.tif")
    assert written.shape == (200, 240) and written.max() >= 1
    assert f"written to {tmp_path / 'new' / 'image.labels.tif'}" in capsys.readouterr().out
    assert segment(tiny_checkpoint, path, new_folder, "--points", str(points)) == 2
    assert "exists already; pass --overwrite" in capsys.readouterr().err


def test_a_point_grid_too_fine_to_compute_is_refused_before_any_work(
    tmp_path, tiny_checkpoint, image_file, capsys, monkeypatch
):
    import napari_samtune.core.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(models, "load_model", no_loading)
    out = tmp_path / "labels.tif"
    code = segment(tiny_checkpoint, image_file[0], out, "--auto", "--points-per-side", "100000")
    assert code == 2  # it was accepted, and the grid's arrays ran out of memory: a traceback
    err = capsys.readouterr().err
    assert "100000; use a positive integer up to 256" in err
    assert not out.exists()


AUTO = ["--auto", "--points-per-side", "4", "--pred-iou-thresh", "-1"]


def test_auto_on_a_folder_writes_labels_that_pair_for_training(
    tmp_path, tiny_sam, tiny_checkpoint, stack_file, capsys
):
    from napari_samtune.core.data import load_pairs
    from napari_samtune.core.label_files import pair_files

    _, stack = stack_file
    images = tmp_path / "imgs"
    images.mkdir()
    for i, plane in enumerate(stack):
        tifffile.imwrite(images / f"cell_{i}.tif", plane)
    out = tmp_path / "labels"
    assert segment(tiny_checkpoint, images, out, *AUTO) == 0
    names = [f"cell_{i}.{kind}" for i in range(3) for kind in ("labels.tif", "prompts.json")]
    assert sorted(p.name for p in out.iterdir()) == names
    one = tmp_path / "one.tif"
    assert segment(tiny_checkpoint, images / "cell_1.tif", one, *AUTO) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "cell_1.labels.tif"), tifffile.imread(one))
    assert [i.name for i, _ in pair_files(images, out)] == [f"cell_{i}.tif" for i in range(3)]
    assert "3 of 3 images segmented" in capsys.readouterr().out

    # a rerun skips what is done (corrected labels stay); the others are segmented
    tifffile.imwrite(out / "cell_0.labels.tif", np.ones((120, 160), np.uint32))  # "corrected"
    (out / "cell_2.labels.tif").unlink()
    assert segment(tiny_checkpoint, str(images / "cell_*.tif"), out, *AUTO) == 0
    assert (tifffile.imread(out / "cell_0.labels.tif") == 1).all()
    assert (out / "cell_2.labels.tif").exists()
    printed = capsys.readouterr().out
    assert "skipping 2 image(s) whose labels are already in" in printed
    assert "1 of 1 images segmented" in printed
    # with nothing left to do, a bad option is still refused (it passed with exit 0)
    assert segment(tiny_checkpoint, images, out, *AUTO, "--min-area", "-5") == 2
    assert "--min-area -5; use a whole number >= 0" in capsys.readouterr().err
    assert segment(tiny_checkpoint, images, out, *AUTO, "--overwrite") == 0
    np.testing.assert_array_equal(tifffile.imread(out / "cell_1.labels.tif"), tifffile.imread(one))
    assert not (tifffile.imread(out / "cell_0.labels.tif") == 1).all()

    # cell_1.labels.tif saved in napari for another image named cell_1: neither skipped as
    # done nor overwritten; this image's labels go beside it, as the widget names them
    from napari_samtune.core.label_files import image_fingerprint

    tifffile.imwrite(out / "cell_1.labels.tif", np.full((120, 160), 5, np.uint32))
    (out / "cell_1.prompts.json").write_text(json.dumps({"image_fingerprint": "0" * 16}))
    assert segment(tiny_checkpoint, images, out, *AUTO, "--overwrite") == 0
    assert (tifffile.imread(out / "cell_1.labels.tif") == 5).all()
    own = out / f"cell_1-{image_fingerprint(tifffile.imread(images / 'cell_1.tif'))}.labels.tif"
    np.testing.assert_array_equal(tifffile.imread(own), tifffile.imread(one))
    assert [lab.name for _, lab in pair_files(images, out)] == [
        "cell_0.labels.tif", "cell_1.labels.tif", "cell_2.labels.tif"
    ]  # fmt: skip
    assert [p.name for p in load_pairs(images, out)][1] == f"cell_1.tif / {own.name}"


def test_images_of_the_same_name_from_two_folders_keep_their_own_labels(
    tmp_path, tiny_checkpoint, capsys
):
    """Image_001.tif of a second experiment, segmented into the same folder, is neither
    skipped as done nor saved over the first's labels, and each trains with its own."""
    from napari_samtune.core.annotation_files import load_annotations
    from napari_samtune.core.data import load_pairs
    from napari_samtune.core.label_files import image_fingerprint

    out, pixels = tmp_path / "annotations", {}
    for seed, experiment in enumerate(["exp1", "exp2"]):
        (tmp_path / experiment).mkdir()
        pixels[experiment] = make_image((96, 128), seed=seed)[0]
        tifffile.imwrite(tmp_path / experiment / "Image_001.tif", pixels[experiment])
        assert segment(tiny_checkpoint, tmp_path / experiment, out, *AUTO) == 0
    assert "skipping" not in capsys.readouterr().out
    second = f"Image_001-{image_fingerprint(pixels['exp2'])}"
    assert sorted(p.name for p in out.iterdir()) == [
        f"{second}.labels.tif", f"{second}.prompts.json",
        "Image_001.labels.tif", "Image_001.prompts.json",
    ]  # fmt: skip
    for experiment, labels_name in [("exp1", "Image_001"), ("exp2", second)]:
        (pair,) = load_pairs(tmp_path / experiment, out)
        assert pair.name == f"Image_001.tif / {labels_name}.labels.tif"
        labels, record = load_annotations(out / f"{labels_name}.labels.tif")
        assert record["image_fingerprint"] == image_fingerprint(pixels[experiment])
        assert record["image"] == "Image_001" and record["shape"] == [96, 128]
        (made,) = record["objects"]
        assert made["source"] == "automatic"
        assert made["model"] == str(tiny_checkpoint.resolve())  # not every export's "model"
        assert made["ids"] == [int(i) for i in np.unique(labels) if i]
        assert made["settings"]["points_per_side"] == 4


def test_prompted_labels_record_their_prompts_file(tmp_path, tiny_checkpoint, image_file):
    from napari_samtune.core.annotation_files import load_annotations
    from napari_samtune.core.models import load_model

    path, _ = image_file
    boxes = write_csv(tmp_path / "b.csv", "x_min,y_min,x_max,y_max\n10,10,60,70\n")
    assert segment(tiny_checkpoint, path, tmp_path / "out.tif", "--boxes", str(boxes)) == 0
    _, record = load_annotations(tmp_path / "out.tif")
    assert (tmp_path / "out.prompts.json").is_file()
    (made,) = record["objects"]
    assert made["source"] == "boxes file" and made["prompts_file"] == str(boxes)
    assert record["image"] == "image" and record["format"] == "napari-samtune-annotations"
    assert made["weights_id"] == load_model(str(tiny_checkpoint)).model_id  # beside its name


def test_a_bad_image_in_a_batch_does_not_stop_the_others(
    tmp_path, tiny_checkpoint, image_file, capsys
):
    path, _ = image_file
    (tmp_path / "broken.tif").write_text("not a tiff")
    (tmp_path / "image_labels.tif").write_bytes(path.read_bytes())  # named as labels: left out
    out = tmp_path / "out"
    code = segment(tiny_checkpoint, [tmp_path], out, *AUTO)  # (files given by name all count)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["image.labels.tif", "image.prompts.json"]
    captured = capsys.readouterr()
    assert "broken.tif: not segmented: cannot read" in captured.err
    assert "leaving out 1 file(s) named as labels, e.g. image_labels.tif" in captured.out
    assert "1 of 2 images segmented" in captured.out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: ["--points", str(write_csv(d / "p.csv", "x,y\n1,2\n"))], "--auto"),
        (lambda d: [*AUTO, "-o", str(write_csv(d / "f.txt", ""))], "is a file; give a folder"),
        (lambda d: [*AUTO, "-o", str(d / "labels.tif")], "names a TIFF file, but a folder"),
    ],
)
def test_batch_mistakes_are_named_before_any_work(
    tmp_path, tiny_checkpoint, image_file, capsys, monkeypatch, make, message
):
    import napari_samtune.core.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was found")

    monkeypatch.setattr(models, "load_model", no_loading)
    path, _ = image_file
    other = tmp_path / "sub" / "image.tif"
    other.parent.mkdir()
    other.write_bytes(path.read_bytes())
    options = make(tmp_path)
    assert segment(tiny_checkpoint, tmp_path, tmp_path / "out", *options) == 2
    assert message in capsys.readouterr().err
    assert segment(tiny_checkpoint, [path, other], tmp_path / "out", *AUTO) == 2
    assert "would have the same labels file name (image.labels.tif)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_named_like_a_tiff_with_a_separator_is_a_folder(
    tmp_path, tiny_checkpoint, image_file
):
    """-o out.tif/ (the README: a trailing / marks a folder) was refused as a TIFF file
    with --auto, for one image ("several images" it said) or a folder of them."""
    path, _ = image_file
    for images, out in ((path, "one.tif/"), (path.parent, "many.tiff" + os.sep)):
        assert segment(tiny_checkpoint, images, f"{tmp_path}{os.sep}{out}", *AUTO) == 0
        assert (tmp_path / out / "image.labels.tif").is_file()


def test_prompts_are_required(tmp_path, tiny_checkpoint, image_file):
    path, _ = image_file
    with pytest.raises(SystemExit):
        main(["segment", str(path), "--model", str(tiny_checkpoint), "-o", str(tmp_path / "o")])


def test_labels_saved_while_a_batch_runs_are_not_replaced(
    tmp_path, tiny_checkpoint, capsys, monkeypatch
):
    """A person corrected and saved an image's labels in napari while `segment --auto` went
    through the folder: its result for that image replaced them, unsaid."""
    from napari_samtune.cli import segment_batch as segment_module

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        tifffile.imwrite(images / f"cell_{i}.tif", make_image((96, 128), seed=i)[0])
    out = tmp_path / "labels"
    corrected = np.full((96, 128), 7, np.uint32)
    real, calls = segment_module.segment_planes, []

    def while_a_person_saves(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # cell_1 is being segmented: its labels are saved meanwhile
            out.mkdir(exist_ok=True)
            tifffile.imwrite(out / "cell_1.labels.tif", corrected)
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_module, "segment_planes", while_a_person_saves)
    assert segment(tiny_checkpoint, images, out, *AUTO) == 1
    np.testing.assert_array_equal(tifffile.imread(out / "cell_1.labels.tif"), corrected)
    assert (out / "cell_0.labels.tif").exists()
    said = capsys.readouterr().err
    assert "cell_1.tif: not written:" in said and "was saved meanwhile" in said


@pytest.mark.parametrize("overwrite", [False, True])
def test_another_image_s_labels_saved_while_a_batch_runs_stay_and_these_go_beside(
    tmp_path, tiny_checkpoint, capsys, monkeypatch, overwrite
):
    """Another image of the same name had its annotations saved (the annotation widget,
    another batch) under the name the batch had chosen: --overwrite replaced them unsaid,
    and without it the image failed, "--overwrite replaces it" (which it did not: a rerun
    wrote them beside, as <name>-<fingerprint>)."""
    from napari_samtune.cli import segment_batch as segment_module
    from napari_samtune.core.annotation_files import write_annotations
    from napari_samtune.core.label_files import image_fingerprint

    images = tmp_path / "images"
    images.mkdir()
    pixels = make_image((96, 128), seed=0)[0]
    tifffile.imwrite(images / "cell_0.tif", pixels)
    out = tmp_path / "labels"
    theirs = np.full((96, 128), 7, np.uint32)
    real = segment_module.segment_planes

    def while_another_image_s_are_saved(*args, **kwargs):
        out.mkdir(exist_ok=True)
        other = {"image_fingerprint": "0123456789abcdef", "objects": [], "prompts": {}}
        write_annotations(out / "cell_0.labels.tif", "cell_0", theirs, other)
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_module, "segment_planes", while_another_image_s_are_saved)
    extra = ["--overwrite"] if overwrite else []
    assert segment(tiny_checkpoint, images, out, *AUTO, *extra) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "cell_0.labels.tif"), theirs)
    beside = out / f"cell_0-{image_fingerprint(pixels)}.labels.tif"
    assert beside.exists()
    said = capsys.readouterr()
    assert f"-> {beside} (its own name there holds another image's labels)" in said.out
    assert "not written" not in said.err


def test_a_labels_file_named_with_overwrite_is_replaced_whoever_s_it_was(
    tmp_path, tiny_checkpoint, image_file, capsys
):
    """-o FILE --overwrite over labels recorded for other pixels: kept, "saved meanwhile ...
    --overwrite replaces it" (it was there before, and --overwrite was given)."""
    from napari_samtune.core.annotation_files import write_annotations

    out = tmp_path / "cell.labels.tif"
    other = {"image_fingerprint": "0123456789abcdef", "objects": [], "prompts": {}}
    write_annotations(out, "cell", np.full((200, 240), 7, np.uint32), other)
    assert segment(tiny_checkpoint, image_file[0], out, *AUTO, "--overwrite") == 0
    assert not (tifffile.imread(out) == 7).all()
    assert "not written" not in capsys.readouterr().err


def test_3d_prompts_on_one_plane_segment_a_2d_image(tmp_path, tiny_checkpoint, image_file):
    """A 2D image annotated in a viewer that also held a stack: napari saved its layers 3D.
    Without --stack they were refused with "pass --stack", and with it the image was 2D."""
    path, _ = image_file
    flat = write_csv(tmp_path / "flat.csv", "index,axis-0,axis-1\n0,50,60\n")
    deep = write_csv(tmp_path / "deep.csv", "index,axis-0,axis-1,axis-2\n0,3,50,60\n")
    assert segment(tiny_checkpoint, path, tmp_path / "flat.tif", "--points", str(flat)) == 0
    assert segment(tiny_checkpoint, path, tmp_path / "deep.tif", "--points", str(deep)) == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "deep.tif"), tifffile.imread(tmp_path / "flat.tif")
    )
    corners = "".join(f"0,rectangle,{k},2,{r},{c}\n" for k, (r, c) in enumerate(
        [(40, 50), (40, 90), (80, 90), (80, 50)]
    ))  # fmt: skip
    shapes = write_csv(
        tmp_path / "s.csv", "index,shape-type,vertex-index,axis-0,axis-1,axis-2\n" + corners
    )
    assert segment(tiny_checkpoint, path, tmp_path / "box.tif", "--boxes", str(shapes)) == 0


@pytest.mark.parametrize("options", [["--auto"], ["--points", "POINTS"]])
def test_a_blank_image_is_refused_by_name(tmp_path, tiny_checkpoint, capsys, options):
    """Its prompted objects came out empty with advice to try boxes or a finetuned model;
    --auto wrote 0 objects unexplained; a flat alpha channel gave made-up masks."""
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((2, 96, 96), 255, np.uint8), photometric="minisblack")
    (tmp_path / "points.csv").write_text("x,y,label\n40,40,1\n", encoding="utf-8")
    options = [str(tmp_path / "points.csv") if o == "POINTS" else o for o in options]
    channel = ["--channel-axis", "0", "--channels", "1"]
    assert segment(tiny_checkpoint, path, tmp_path / "out.tif", *options, *channel) == 2
    err = capsys.readouterr().err
    assert f"{path} is one value everywhere (blank) as SAM sees it" in err
    assert "the channel chosen (--channels)" in err and not (tmp_path / "out.tif").exists()


def test_a_napari_points_file_of_one_plane_takes_a_z_column_added(tmp_path):
    """--stack refused it advising "add a z column", and refused it again once added."""
    from napari_samtune.cli.prompt_files import read_points_csv

    path = tmp_path / "points.csv"
    path.write_text("index,axis-0,axis-1,z\n0,20,30,1\n1,5,6,0\n", encoding="utf-8")
    points = read_points_csv(path, (64, 64), n_planes=2)
    assert points.planes.tolist() == [1, 0]
    assert points.points_xy.tolist() == [[30, 20], [6, 5]]
    path.write_text("index,axis-0,axis-1\n0,20,30\n", encoding="utf-8")
    with pytest.raises(ValueError, match="or add a z column"):
        read_points_csv(path, (64, 64), n_planes=2)
    path.write_text("index,axis-0,axis-1,z\n0,20,30,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="pass --stack"):  # not "a misspelt name"
        read_points_csv(path, (64, 64))


def test_the_warning_about_a_varying_fourth_channel_names_the_option(
    tmp_path, tiny_checkpoint, capsys
):
    """It told the command line to "pass channels=[3]", a Python parameter."""
    rgba = np.random.default_rng(0).integers(0, 255, (96, 96, 4), np.uint8)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    (tmp_path / "points.csv").write_text("x,y,label\n40,40,1\n", encoding="utf-8")
    points = str(tmp_path / "points.csv")
    assert segment(tiny_checkpoint, path, tmp_path / "out.tif", "--points", points) == 0
    err = capsys.readouterr().err
    assert "taken as RGBA" in err and "pass --channels 3 (or three indices)" in err
    assert "channels=[3]" not in err


def test_a_file_given_twice_is_segmented_once(tmp_path, tiny_checkpoint, capsys):
    """Overlapping globs, or a file and its folder: it was segmented and counted twice; a
    relative and an absolute path to it were refused as two images with one labels name."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        tifffile.imwrite(images / f"cell_{i}.tif", make_image((64, 64), seed=i)[0])
    given = [str(images / "cell_[0-1].tif"), str(images / "cell_[1-2].tif"), str(images)]
    out = tmp_path / "labels"
    assert segment(tiny_checkpoint, given, out, *AUTO) == 0
    printed = capsys.readouterr().out
    assert "file(s) given more than once are segmented once" in printed
    assert printed.count("cell_1.tif:") == 1 and "3 of 3 images segmented" in printed


def test_a_folder_s_rgba_warnings_name_each_image(tmp_path, tiny_checkpoint, capsys):
    """Two 4-channel images of one shape in a folder: one warning, naming neither."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        rgba = rng.integers(0, 255, (64, 64, 4), np.uint8)
        tifffile.imwrite(
            images / f"{name}.tif", rgba, photometric="rgb", extrasamples=["unassalpha"]
        )
    assert segment(tiny_checkpoint, images, tmp_path / "out", *AUTO) == 0
    err = capsys.readouterr().err
    assert "warning: a.tif: image of shape (64, 64, 4) is taken as RGBA" in err
    assert "warning: b.tif: image of shape (64, 64, 4) is taken as RGBA" in err


def test_the_result_line_names_paths_as_a_shell_reads_them(
    tmp_path, tiny_checkpoint, image_file, capsys
):
    """'1 object written to out dir/x.tif (model runs/my run/model.pth, …)' could not be
    pasted into a command."""
    import shlex

    out = tmp_path / "out dir" / "x.tif"
    out.parent.mkdir()
    assert segment(tiny_checkpoint, image_file[0], out, *AUTO) == 0
    printed = capsys.readouterr().out
    assert f"written to {shlex.quote(str(out))} " in printed
    assert shlex.quote(str(out)) != str(out)
