"""Prompted evaluation with deterministic fake segmenters, and the model comparison outputs."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy import ndimage

from napari_samtune.core.evaluate import (
    box_prompt,
    compare_models,
    corrective_click,
    evaluate_prompts,
    farthest_interior_point,
    mask_dice,
    mask_iou,
)
from napari_samtune.core.metrics import evaluate_instances


@dataclass
class FakePrediction:
    mask: np.ndarray
    score: float
    low_res_logits: object


@dataclass
class FakeSegmenter:
    """Answers each prompt with a known mask of the object under it, and records every call.

    The "image" given to set_image is the label image itself. The prompted object is the
    one under the box centre or under the first point. ``make_mask(object_mask, n_points)``
    turns that object's mask into the answer.
    """

    make_mask: object = staticmethod(lambda mask, n_points: mask)
    labels: np.ndarray | None = None
    calls: list = field(default_factory=list)
    n_images_set: int = 0

    def set_image(self, image, channel_axis=None, channels=None, progress=None):
        self.labels = np.asarray(image)
        self.n_images_set += 1

    def predict(
        self, points_xy=None, point_labels=None, box_xyxy=None, mask_input=None, multimask=False
    ):
        if box_xyxy is not None:
            x, y = (box_xyxy[0] + box_xyxy[2]) / 2, (box_xyxy[1] + box_xyxy[3]) / 2
        else:
            x, y = points_xy[0]
        object_mask = self.labels == self.labels[int(round(y)), int(round(x))]
        n_points = 0 if points_xy is None else len(points_xy)
        mask = self.make_mask(object_mask, n_points)
        logits = object()  # a unique token: the evaluation must feed it back in mask_input
        self.calls.append(
            dict(
                points=points_xy,
                labels=point_labels,
                box=box_xyxy,
                mask_input=mask_input,
                multimask=multimask,
                logits=logits,
            )
        )
        return FakePrediction(mask, 1.0, logits)


def _dilate_cross(mask, n_points):
    return ndimage.binary_dilation(mask)  # 4-connected: adds a 1-pixel strip on each side


def _square_labels() -> np.ndarray:
    labels = np.zeros((20, 30), dtype=np.uint16)
    labels[2:6, 2:6] = 7  # 4x4 = 16 pixels
    labels[10:14, 20:24] = 3
    return labels


def test_mask_iou_and_dice():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0 and mask_dice(a, b) == 1.0  # both empty: perfect
    a[0, :2] = True
    b[0, 1:4] = True  # |a|=2, |b|=3, overlap 1, union 4
    assert mask_iou(a, b) == pytest.approx(1 / 4)
    assert mask_dice(a, b) == pytest.approx(2 / 5)


def test_box_prompt_is_xyxy_of_first_and_last_pixel():
    mask = np.zeros((20, 30), bool)
    mask[10:13, 20:25] = True  # rows 10..12, cols 20..24
    assert box_prompt(mask).tolist() == [20, 10, 24, 12]


def test_farthest_interior_point():
    rows, cols = np.ogrid[:40, :50]
    disk = (rows - 12) ** 2 + (cols - 30) ** 2 <= 25
    assert farthest_interior_point(disk) == (12, 30)
    edge = np.zeros((10, 10), bool)
    edge[:, :3] = True  # touches the image edge, which counts as border: centre column 1
    assert farthest_interior_point(edge)[1] == 1


def test_corrective_click_targets_the_largest_error_region():
    reference = np.zeros((20, 20), bool)
    reference[0:10, 0:10] = True
    assert corrective_click(reference.copy(), reference) is None
    missed = reference.copy()
    missed[:, 5:] = False  # 50 missed pixels in rows 0..9, cols 5..9
    assert corrective_click(missed, reference) == (2, 7, 1)  # first pixel at distance 3
    spill = reference.copy()
    spill[12:20, 12:20] = True  # 64 extra pixels beat 10 missed ones
    spill[0, :] = False
    assert corrective_click(spill, reference) == (15, 15, 0)
    tie = reference.copy()
    tie[0, :] = False  # 10 missed ...
    tie[15, 0:10] = True  # ... and 10 extra: a tie goes to the missed region
    assert corrective_click(tie, reference)[2] == 1


def test_perfect_segmenter_scores_one_and_needs_no_clicks():
    segmenter = FakeSegmenter()
    result = evaluate_prompts(segmenter, [_square_labels()], [_square_labels()], 3)
    assert [(o.image_index, o.object_id) for o in result.objects] == [(0, 3), (0, 7)]
    for scores in result.objects:
        assert (scores.box_iou, scores.box_dice, scores.point_iou, scores.point_dice) == (
            1,
            1,
            1,
            1,
        )
        assert scores.iterative_iou == (1.0, 1.0, 1.0, 1.0)
    assert len(segmenter.calls) == 4  # box + point per object; nothing left to correct
    assert not any(call["multimask"] for call in segmenter.calls)
    assert segmenter.calls[1]["points"].tolist() == [[21, 11]]  # (x, y) of the object's centre


def test_dilated_masks_give_hand_computed_scores():
    segmenter = FakeSegmenter(make_mask=_dilate_cross)
    labels = _square_labels()
    result = evaluate_prompts(segmenter, [labels], [labels], n_corrective_clicks=2)
    # 16 object pixels, 16 + 4 * 4 predicted: IoU 16/32, Dice 2*16/(16+32).
    for scores in result.objects:
        assert scores.box_iou == pytest.approx(0.5) and scores.box_dice == pytest.approx(2 / 3)
        assert scores.point_iou == pytest.approx(0.5) and scores.point_dice == pytest.approx(2 / 3)
        assert scores.iterative_iou == pytest.approx((0.5, 0.5, 0.5))
    # Object 3 (rows 10..13, cols 20..23): the four spill strips tie; the top one (row 9) wins
    # and its first pixel (col 20) gets a negative click, fed back with the previous logits.
    box_call, point_call, first_fix, second_fix = segmenter.calls[:4]
    assert box_call["box"].tolist() == [20, 10, 23, 13]
    assert first_fix["points"].tolist() == [[21, 11], [20, 9]]
    assert first_fix["labels"].tolist() == [1, 0]
    assert first_fix["mask_input"].low_res_logits is point_call["logits"]
    assert second_fix["mask_input"].low_res_logits is first_fix["logits"]
    assert len(second_fix["points"]) == 3


def test_iterative_curve_improves_with_a_positive_click():
    def left_half_until_corrected(mask, n_points):
        if n_points != 1:
            return mask
        rows, cols = np.nonzero(mask)
        half = mask.copy()
        half[:, cols.min() + 5 :] = False
        return half

    labels = np.zeros((30, 30), dtype=np.int32)
    labels[10:20, 10:20] = 1  # 100 pixels; the left half has 50
    segmenter = FakeSegmenter(make_mask=left_half_until_corrected)
    result = evaluate_prompts(segmenter, [labels], [labels], n_corrective_clicks=3)
    (scores,) = result.objects
    assert scores.box_iou == 1.0 and scores.point_iou == pytest.approx(0.5)
    assert scores.iterative_iou == pytest.approx((0.5, 1.0, 1.0, 1.0))
    fix = segmenter.calls[2]
    assert fix["points"].tolist() == [[14, 14], [17, 12]] and fix["labels"].tolist() == [1, 1]
    assert len(segmenter.calls) == 3  # perfect after one correction: no more predictions
    assert result.mean_iterative_iou() == pytest.approx([0.5, 1.0, 1.0, 1.0])
    summary = result.summary()
    assert summary["point_iou"] == pytest.approx(0.5) and summary["box_dice"] == 1.0
    assert [k for k in summary if k.startswith("iou_after")] == [
        "iou_after_1_clicks",
        "iou_after_2_clicks",
        "iou_after_3_clicks",
    ]


def test_several_images_factory_and_object_limit():
    labels = _square_labels()
    empty = np.zeros_like(labels)
    made = []

    def factory():
        made.append(FakeSegmenter(make_mask=_dilate_cross))
        return made[-1]

    result = evaluate_prompts(
        factory, [labels, empty, labels], [labels, empty, labels], 1, max_objects_per_image=1
    )
    assert len(made) == 1 and made[0].n_images_set == 2  # the empty image is skipped
    assert [(o.image_index, o.object_id) for o in result.objects] == [(0, 3), (2, 3)]
    assert result.summary()["box_iou"] == pytest.approx(0.5)


def test_tiny_sam_segmenter_gives_well_formed_scores(tiny_sam, nuclei_image):
    from napari_samtune.core.predict import Segmenter

    image, labels = nuclei_image
    segmenter = Segmenter(tiny_sam, model_id="tiny-test", use_disk_cache=False)
    mask_inputs = []
    predict = segmenter.predict

    def spy(**prompt):
        mask_inputs.append(prompt.get("mask_input"))
        return predict(**prompt)

    segmenter.predict = spy
    result = evaluate_prompts(segmenter, [image], [labels], 2, max_objects_per_image=3)
    refined = [m for m in mask_inputs if m is not None]
    assert refined and all(m.low_res_logits.shape == (1, 64, 64) for m in refined)
    assert [o.object_id for o in result.objects] == [1, 2, 3]
    for scores in result.objects:
        values = [scores.box_iou, scores.box_dice, scores.point_iou, scores.point_dice]
        assert all(0.0 <= v <= 1.0 for v in [*values, *scores.iterative_iou])
        assert len(scores.iterative_iou) == 3 and scores.iterative_iou[0] == scores.point_iou
        assert scores.box_dice >= scores.box_iou  # Dice >= IoU for any pair of masks
    again = evaluate_prompts(segmenter, [image], [labels], 2, max_objects_per_image=3)
    assert again == result  # deterministic


def test_bad_inputs_are_clear_errors():
    labels = _square_labels()
    with pytest.raises(ValueError, match="n_corrective_clicks=-1"):
        evaluate_prompts(FakeSegmenter(), [labels], [labels], -1)
    with pytest.raises(TypeError, match="n_corrective_clicks=2.5"):
        evaluate_prompts(FakeSegmenter(), [labels], [labels], 2.5)
    with pytest.raises(ValueError, match="one per image"):
        evaluate_prompts(FakeSegmenter(), [labels, labels], [labels])
    with pytest.raises(TypeError, match=r"labels\[0\] has dtype .*float64.*integer label"):
        evaluate_prompts(FakeSegmenter(), [labels], [labels.astype(float)])
    with pytest.raises(ValueError, match=r"labels\[0\] has shape \(1, 20, 30\).*\(H, W\)"):
        evaluate_prompts(FakeSegmenter(), [labels], [labels[None]])
    with pytest.raises(TypeError, match="images is text; pass a list of arrays"):
        evaluate_prompts(FakeSegmenter(), "image.tif", [labels])
    with pytest.raises(ValueError, match="no objects"):
        evaluate_prompts(FakeSegmenter(), [labels], [np.zeros_like(labels)])
    with pytest.raises(ValueError, match="max_objects_per_image=0"):
        evaluate_prompts(FakeSegmenter(), [labels], [labels], max_objects_per_image=0)
    with pytest.raises(TypeError, match="neither a Segmenter"):
        evaluate_prompts(3, [labels], [labels])
    wrong_shape = FakeSegmenter(make_mask=lambda mask, n: mask[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        evaluate_prompts(wrong_shape, [labels], [labels])


def test_images_and_labels_may_be_any_iterable():
    labels = [_square_labels(), _square_labels()[::-1]]
    expected = evaluate_prompts(FakeSegmenter(), labels, labels, 1)
    images = (image for image in labels)  # a generator has no len()
    assert evaluate_prompts(FakeSegmenter(), images, iter(labels), 1) == expected
    assert len(expected.objects) == 4


def test_boolean_masks_are_refused_by_both_evaluations_as_by_training():
    """A foreground mask has no object ids: all its objects would count as one."""
    labels = _square_labels()
    mask = labels > 0
    hint = "is boolean .*foreground mask.*scipy.ndimage.label"
    with pytest.raises(TypeError, match=rf"labels\[0\] {hint}"):
        evaluate_prompts(FakeSegmenter(), [labels], [mask])
    with pytest.raises(TypeError, match=rf"image 0: labels {hint}"):
        evaluate_instances([mask], [labels])
    with pytest.raises(TypeError, match=rf"image 0: prediction {hint}"):
        evaluate_instances([labels], [mask])
    one_object = evaluate_instances([mask.astype(np.uint8)], [mask.astype(np.uint8)])
    assert one_object.pooled.msa == 1.0


def test_a_mask_of_integers_is_refused_as_ground_truth_of_both_evaluations_as_by_training():
    """0/255 masks (Fiji's Convert to Mask) of many objects counted as one object."""
    labels = _square_labels()
    labels[14:18, 2:6] = 5
    mask = np.where(labels > 0, 255, 0).astype(np.uint8)
    with pytest.raises(ValueError, match=r"labels\[1\] give the one id 255 to 3 separate"):
        evaluate_prompts(FakeSegmenter(), [labels, labels], [labels, mask])
    assert len(evaluate_prompts(FakeSegmenter(), [labels], [labels]).objects) == 3
    with pytest.raises(ValueError, match=r"image 1: labels give the one id 255 to 3 separate"):
        evaluate_instances([labels, mask], [labels, labels])
    merged = evaluate_instances([labels], [mask])  # a prediction may merge objects: scored
    assert merged.pooled.msa == 0.0


def test_instance_evaluation_takes_any_iterable():
    labels = _square_labels()
    expected = evaluate_instances([labels, labels], [labels, labels * (labels != 7)])
    pairs = [(labels, labels), (labels, labels * (labels != 7))]
    got = evaluate_instances((gt for gt, _ in pairs), (pred for _, pred in pairs))
    assert got == expected


def _read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_compare_models_writes_csv_and_png(tmp_path):
    results = {
        "vit_b": {"msa": 0.5, "sa50": 0.75, "box_iou": 0.8, "point_iou": 0.6},
        "finetuned": {"msa": 0.625, "sa50": 0.875, "box_iou": 0.9},  # no point IoU
    }
    files = compare_models(results, tmp_path / "out", name="cmp")
    assert files.csv_path == tmp_path / "out" / "cmp.csv"
    rows = _read_csv(files.csv_path)
    assert [row["model"] for row in rows] == ["vit_b", "finetuned"]
    assert list(rows[0]) == ["model", "msa", "sa50", "box_iou", "point_iou"]
    assert float(rows[1]["msa"]) == 0.625 and float(rows[0]["point_iou"]) == 0.6
    assert rows[1]["point_iou"] == ""
    png = files.png_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    import matplotlib.image

    pixels = matplotlib.image.imread(files.png_path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0


def test_a_second_comparison_of_the_same_name_keeps_the_first(tmp_path):
    first = compare_models({"a": {"msa": 0.5}}, tmp_path, name="cmp")
    (tmp_path / "other.png").write_bytes(b"")  # a lone PNG takes its name too
    second = compare_models({"b": {"msa": 0.25}}, tmp_path, name="cmp")
    other = compare_models({"c": {"msa": 0.75}}, tmp_path, name="other")
    assert (second.csv_path.name, second.png_path.name) == ("cmp-2.csv", "cmp-2.png")
    assert other.csv_path.name == "other-2.csv"
    assert _read_csv(first.csv_path)[0]["model"] == "a"
    assert _read_csv(second.csv_path)[0]["model"] == "b"
    replaced = compare_models({"d": {"msa": 1.0}}, tmp_path, name="cmp", overwrite=True)
    assert replaced.csv_path == first.csv_path and _read_csv(first.csv_path)[0]["model"] == "d"


def test_the_settings_of_a_comparison_go_beside_it_and_take_its_name(tmp_path):
    files = compare_models({"a": {"msa": 0.5}}, tmp_path, "cmp", settings={"data": tmp_path})
    assert files.settings_path == tmp_path / "cmp.json"
    assert json.loads(files.settings_path.read_text()) == {"data": str(tmp_path)}
    assert compare_models({"b": {"msa": 0.5}}, tmp_path, "lone").settings_path is None
    (tmp_path / "lone.csv").unlink()
    (tmp_path / "lone.png").unlink()
    (tmp_path / "solo.json").write_text("{}")  # a lone settings file takes its name too
    assert compare_models({"c": {"msa": 0.5}}, tmp_path, "solo").csv_path.name == "solo-2.csv"


def test_settings_that_are_not_json_write_nothing(tmp_path):
    with pytest.raises(TypeError, match="settings must be JSON data"):
        compare_models({"a": {"msa": 0.5}}, tmp_path, "cmp", settings={"clicks": object()})
    with pytest.raises(TypeError, match="settings must be JSON data"):
        compare_models({"a": {"msa": 0.5}}, tmp_path, "cmp", settings={"iou": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_compare_models_takes_evaluation_objects(tmp_path):
    labels = _square_labels()
    instances = evaluate_instances([labels], [labels * (labels != 7)])  # object 7 missed
    prompts = evaluate_prompts(FakeSegmenter(make_mask=_dilate_cross), [labels], [labels], 1)
    files = compare_models({"model": [instances, prompts]}, tmp_path)
    (row,) = _read_csv(files.csv_path)
    assert float(row["msa"]) == pytest.approx(0.5) and float(row["box_iou"]) == pytest.approx(0.5)
    assert float(row["image_mean_recall"]) == pytest.approx(0.5)
    assert float(row["iou_after_1_clicks"]) == pytest.approx(0.5)


def test_compare_models_errors(tmp_path):
    with pytest.raises(ValueError, match="results is empty"):
        compare_models({}, tmp_path)
    with pytest.raises(ValueError, match="chart metrics"):
        compare_models({"a": {"f1": 0.5}}, tmp_path)
    with pytest.raises(TypeError, match="results\\['a'\\]"):
        compare_models({"a": 0.5}, tmp_path)
    with pytest.raises(TypeError, match="non-numeric"):
        compare_models({"a": {"msa": "high"}}, tmp_path)
    for name in ("a/b", "..", ""):  # "a/b" wrote a/b.csv in a folder of its own
        with pytest.raises(ValueError, match=f"name={name!r} is not a file name stem"):
            compare_models({"a": {"msa": 0.5}}, tmp_path, name)
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_compare_models_names_an_output_dir_that_is_a_file(tmp_path):
    results = {"a": {"msa": 0.5}}
    taken = tmp_path / "results.csv"
    taken.write_text("kept")
    with pytest.raises(ValueError, match=r"output_dir '.*results.csv' is a file; give a folder"):
        compare_models(results, taken)
    with pytest.raises(ValueError, match=r"output_dir '.*results.csv/out' cannot be made: '.*re"):
        compare_models(results, taken / "out")
    assert taken.read_text() == "kept" and sorted(tmp_path.iterdir()) == [taken]


def test_model_metrics_embeds_each_image_once(tiny_sam, monkeypatch):
    """Prompted and automatic scores share one embedding per image (vit_b: ~9 s each on
    2 cores), and the numbers are those of the two evaluations run apart."""
    from napari_samtune.core import view_predictor
    from napari_samtune.core.automatic import AutoSegmentConfig
    from napari_samtune.core.demo import model_metrics
    from napari_samtune.core.predict import Segmenter
    from napari_samtune.core.synthetic import make_dataset

    images, labels = zip(*make_dataset(3, shape=(64, 64), seed=5), strict=True)
    labels = [labels[0], np.zeros_like(labels[1]), labels[2]]  # an empty field of view too
    auto = AutoSegmentConfig(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0)
    embedded, progress = [], []
    embed_tiles = view_predictor.embed_tiles

    def counting(*args, **kwargs):
        embedded.append(1)
        return embed_tiles(*args, **kwargs)

    monkeypatch.setattr(view_predictor, "embed_tiles", counting)
    metrics = model_metrics(
        tiny_sam, "tiny", images, labels, auto, 1, progress=lambda *done: progress.append(done)
    )
    # a step per object's prompts and per image's automatic segmentation: an image of
    # thousands of objects showed 0 of 1 image for minutes
    n_steps = sum(len(np.unique(lab[lab > 0])) for lab in labels) + 3
    assert len(embedded) == 3 and n_steps > 5
    assert progress == [(done, n_steps) for done in range(1, n_steps + 1)]

    segmenter = Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    prompts = evaluate_prompts(segmenter, images, labels, 1)
    predictions = []
    for image in images:
        segmenter.set_image(image)
        predictions.append(segmenter.segment_all(auto))
    apart = {**prompts.summary(), **evaluate_instances(labels, predictions).summary()}
    assert metrics == pytest.approx(apart)
    assert predictions[1].any()  # the empty field of view counts too (its false positives)


def test_model_names_in_any_script_are_written_whatever_the_system_s_encoding(
    tmp_path, monkeypatch
):
    """On Windows (cp1252 by default) 'α-tubulin' raised after every model was evaluated."""
    import builtins

    from napari_samtune.core import comparison

    def windows_open(*args, **kwargs):
        return builtins.open(*args, **{"encoding": "cp1252", **kwargs})

    monkeypatch.setattr(comparison, "open", windows_open, raising=False)
    files = compare_models({"α-tubulin 細胞": {"msa": 0.5}}, tmp_path, "cmp")
    assert _read_csv(files.csv_path)[0]["model"] == "α-tubulin 細胞"
