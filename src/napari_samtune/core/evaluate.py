"""Interactive segmentation quality and side-by-side comparison of models.

:func:`evaluate_prompts` measures how well a model segments each ground-truth
object from the prompts a person would give in napari:

* box: the object's bounding box, SAM XYXY from the centre of its first to the
  centre of its last pixel, ``[col_min, row_min, col_max, row_max]`` (the
  convention of ``segment_anything``'s own mask-to-box);
* point: one positive click on the object pixel farthest from the object's
  border (Euclidean distance transform; the image edge counts as border);
* iterative prompting: starting from that point, ``n_corrective_clicks`` more
  clicks, each on the pixel farthest from the border of the largest connected
  (4-connected) error region: positive where the object was missed (false
  negatives), negative where the mask spills over (false positives), a missed
  region winning a tie. Every step passes all clicks so far and the previous
  step's prediction (its low-resolution logits) as ``mask_input``. Once a mask
  is perfect no more clicks are placed and its IoU is carried forward.

Points are SAM (x, y) pixel coordinates (pixel centres at integers), converted
from (row, col) only through :func:`napari_samtune.core.coords.napari_to_sam`.
All predictions use ``multimask=False``, as micro-sam's evaluation does. The annotation
widget answers a lone first click otherwise, with the best of SAM's three candidates (by
predicted IoU; :class:`~.click_chain.ClickChain`), and so does training's ``val_iou_point``:
their point IoU and click curve are not these.

Instance metrics of automatic segmentation live in :mod:`.metrics`;
:func:`~.comparison.compare_models` (also importable from here) writes a CSV and a bar
chart for several models.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from napari_samtune.core.comparison import CHART_METRICS as CHART_METRICS
from napari_samtune.core.comparison import ComparisonFiles as ComparisonFiles
from napari_samtune.core.comparison import compare_models as compare_models
from napari_samtune.core.config_checks import kind_of
from napari_samtune.core.coords import napari_to_sam
from napari_samtune.core.metrics import check_label_image, check_not_a_mask
from napari_samtune.core.progress import check_callback
from napari_samtune.core.prompts import PADDING, corrective_point, interior_point


class PromptSegmenter(Protocol):
    """What :func:`evaluate_prompts` needs of :class:`napari_samtune.core.predict.Segmenter`."""

    def set_image(
        self, image: np.ndarray, channel_axis: int | None = None, channels: Any = None
    ) -> None: ...

    def predict(
        self,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_input: Any = None,  # the previous Prediction
        multimask: bool = False,
    ) -> Any: ...  # a Prediction: .mask bool (H, W), .low_res_logits


def mask_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    """Intersection over union of two boolean masks of equal shape; 1.0 when both are empty."""
    union = np.count_nonzero(mask | reference)
    return 1.0 if union == 0 else np.count_nonzero(mask & reference) / union


def mask_dice(mask: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient 2|A & B| / (|A| + |B|) of two boolean masks; 1.0 when both are empty."""
    total = np.count_nonzero(mask) + np.count_nonzero(reference)
    return 1.0 if total == 0 else 2 * np.count_nonzero(mask & reference) / total


def box_prompt(mask: np.ndarray) -> np.ndarray:
    """SAM XYXY box of a non-empty (H, W) mask: float64 ``[col_min, row_min, col_max, row_max]``."""
    rows, cols = np.nonzero(mask)
    corners = np.array([[rows.min(), cols.min()], [rows.max(), cols.max()]])
    return napari_to_sam(corners).reshape(4)


def farthest_interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel of a non-empty 2D mask farthest from the mask's border
    (:func:`napari_samtune.core.prompts.interior_point`, where training clicks too)."""
    col, row = interior_point(mask)
    return int(row), int(col)


def corrective_click(mask: np.ndarray, reference: np.ndarray) -> tuple[int, int, int] | None:
    """The next correction for predicted ``mask`` of object ``reference`` (both (H, W) bool),
    as in training (:func:`napari_samtune.core.prompts.corrective_point`).

    Returns:
        ``(row, col, label)`` with label 1 (add: the largest error region is missed
        object) or 0 (remove: it is spill-over), or None when ``mask`` is perfect.
    """
    (col, row), label = corrective_point(mask, reference)
    return None if label == PADDING else (int(row), int(col), int(label))


@dataclass(frozen=True)
class ObjectPromptScores:
    """How one ground-truth object is segmented from each kind of prompt."""

    image_index: int  # position of the image in the evaluated sequence
    object_id: int  # the object's id in that image's label image
    box_iou: float  # IoU of the mask predicted from the bounding box
    box_dice: float  # Dice of that mask
    point_iou: float  # IoU of the mask predicted from one interior point
    point_dice: float  # Dice of that mask
    iterative_iou: tuple[float, ...]  # IoU after 0..n corrective clicks; [0] is point_iou


@dataclass(frozen=True)
class PromptEvaluation:
    """Prompted-segmentation scores of every evaluated object."""

    objects: tuple[ObjectPromptScores, ...]  # one per object, images in order, ids ascending
    n_corrective_clicks: int  # clicks after the first point

    def mean_iterative_iou(self) -> np.ndarray:
        """float64 (n_corrective_clicks + 1,): mean IoU over objects after 0..n clicks."""
        return np.mean([o.iterative_iou for o in self.objects], axis=0)

    def summary(self) -> dict[str, float]:
        """Means over objects: box/point IoU and Dice, and ``iou_after_<k>_clicks``, k = 1..n."""
        means = {
            name: float(np.mean([getattr(o, name) for o in self.objects]))
            for name in ("box_iou", "box_dice", "point_iou", "point_dice")
        }
        curve = self.mean_iterative_iou()
        for k in range(1, self.n_corrective_clicks + 1):
            means[f"iou_after_{k}_clicks"] = float(curve[k])
        return means


def _predict_mask(segmenter: PromptSegmenter, shape: tuple[int, ...], **prompt: Any) -> Any:
    prediction = segmenter.predict(multimask=False, **prompt)
    if np.shape(prediction.mask) != shape:
        raise ValueError(
            f"the segmenter returned a mask of shape {np.shape(prediction.mask)!r} for labels of "
            f"shape {shape!r}; each label image must match its image's (H, W) (check channel_axis)"
        )
    return prediction


def _iterative_ious(
    segmenter: PromptSegmenter,
    reference: np.ndarray,
    start: tuple[int, int],
    first: Any,
    n_clicks: int,
) -> list[float]:
    """IoU after 0..n_clicks corrective clicks; ``first`` answered the (row, col) ``start``."""
    clicks, click_labels = [start], [1]
    prediction, ious = first, [mask_iou(np.asarray(first.mask, dtype=bool), reference)]
    for _ in range(n_clicks):
        click = corrective_click(np.asarray(prediction.mask, dtype=bool), reference)
        if click is None:  # perfect already: further clicks have nothing to correct
            ious.append(ious[-1])
            continue
        clicks.append(click[:2])
        click_labels.append(click[2])
        prediction = _predict_mask(
            segmenter,
            reference.shape,
            points_xy=napari_to_sam(np.array(clicks)),
            point_labels=np.array(click_labels),
            mask_input=prediction,  # the Segmenter takes a Prediction (re-projects across tiles)
        )
        ious.append(mask_iou(np.asarray(prediction.mask, dtype=bool), reference))
    return ious


def _evaluate_object(
    segmenter: PromptSegmenter, labels: np.ndarray, object_id: int, image_index: int, n_clicks: int
) -> ObjectPromptScores:
    """Scores of one object of (H, W) ``labels`` for box, point and iterative prompts."""
    reference = labels == object_id
    shape = reference.shape
    boxed = _predict_mask(segmenter, shape, box_xyxy=box_prompt(reference))
    box_mask = np.asarray(boxed.mask, dtype=bool)
    start = farthest_interior_point(reference)
    point = napari_to_sam(np.array([start], dtype=np.float64))
    first = _predict_mask(segmenter, shape, points_xy=point, point_labels=np.array([1]))
    point_mask = np.asarray(first.mask, dtype=bool)
    return ObjectPromptScores(
        image_index=image_index,
        object_id=int(object_id),
        box_iou=mask_iou(box_mask, reference),
        box_dice=mask_dice(box_mask, reference),
        point_iou=mask_iou(point_mask, reference),
        point_dice=mask_dice(point_mask, reference),
        iterative_iou=tuple(_iterative_ious(segmenter, reference, start, first, n_clicks)),
    )


def _resolve_segmenter(segmenter: PromptSegmenter | Callable[[], PromptSegmenter]) -> Any:
    if hasattr(segmenter, "set_image") and hasattr(segmenter, "predict"):
        return segmenter
    if callable(segmenter):
        return _resolve_segmenter(segmenter())
    raise TypeError(
        f"segmenter={segmenter!r} is neither a Segmenter (with set_image and predict) nor a "
        "callable returning one; pass e.g. Segmenter(load_model('vit_b').sam)"
    )


def _as_list(items: Iterable[np.ndarray], name: str) -> list[np.ndarray]:
    """Images or label images given as any iterable (a generator too) as a list."""
    if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Iterable):
        raise TypeError(
            f"{name} is {kind_of(items)}; pass a list of arrays, one per image "
            "(read files first, e.g. with tifffile.imread)"
        )
    if getattr(items, "ndim", 3) < 3:  # one image (numpy, torch, dask), not one per image
        raise ValueError(
            f"{name} is an array of shape {tuple(items.shape)!r}, not a list of them; pass "
            "one entry per image, e.g. [image] and [labels] for one"
        )
    return list(items)


def _check_count(value: object, name: str, allowed: str, lowest: int = 0) -> None:
    """A whole number >= ``lowest``; numpy's too (a count taken off an array: np.int64(3) was
    refused as 'expected an int'), not a bool, a float (1.5 raised 'slice indices must be
    integers') or text ('2' raised "'<' not supported")."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} is not a whole number; {allowed}")
    if value < lowest:
        raise ValueError(f"{name}={value!r}; {allowed}")


def _check_prompt_inputs(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_corrective_clicks: int
) -> None:
    _check_count(n_corrective_clicks, "n_corrective_clicks", "expected an int >= 0")
    if len(images) != len(labels):
        raise ValueError(
            f"got {len(images)!r} images but {len(labels)!r} label images; pass one per image"
        )
    for index, image_labels in enumerate(labels):
        image_labels = check_label_image(image_labels, f"labels[{index}]")  # as instance metrics
        if image_labels.ndim != 2:
            raise ValueError(
                f"labels[{index}] has shape {image_labels.shape!r}; expected integer instance "
                "labels of shape (H, W)"
            )
        check_not_a_mask(image_labels, f"labels[{index}]")


def evaluate_prompts(
    segmenter: PromptSegmenter | Callable[[], PromptSegmenter],
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    n_corrective_clicks: int = 7,
    max_objects_per_image: int | None = None,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    each_image: Callable[[int], None] | None = None,
    each_object: Callable[[], None] | None = None,
) -> PromptEvaluation:
    """Box, point and iterative-prompting scores of every object (see module docstring).

    Args:
        segmenter: a ``Segmenter``, or a callable without arguments that makes one
            (called once).
        images: images as ``Segmenter.set_image`` takes them, e.g. (H, W) or (H, W, 3);
            a list or any iterable (a generator is read into a list first).
        labels: integer (H, W) instance labels per image (any iterable); 0 is background.
            Boolean masks are refused, as in training and ``evaluate_instances``.
        n_corrective_clicks: clicks after the first point in the iterative curve.
        max_objects_per_image: evaluate only the objects with the smallest ids, to
            bound run time; None evaluates all.
        channel_axis, channels: passed to ``set_image``.
        each_image: called as ``each_image(index)`` after every image's prompts (images
            without objects too), while its embedding is set: e.g. to segment it
            automatically as well without embedding it a second time.
        each_object: called as ``each_object()`` after every object's prompts (progress
            within an image of thousands of objects).
    """
    check_callback(each_image, "each_image", "each_image(index)")
    check_callback(each_object, "each_object", "each_object()")
    images, labels = _as_list(images, "images"), _as_list(labels, "labels")
    _check_prompt_inputs(images, labels, n_corrective_clicks)
    n_corrective_clicks = int(n_corrective_clicks)
    if max_objects_per_image is not None:
        _check_count(max_objects_per_image, "max_objects_per_image", "use None or >= 1", 1)
        max_objects_per_image = int(max_objects_per_image)
    segmenter = _resolve_segmenter(segmenter)
    results = []
    for index, (image, image_labels) in enumerate(zip(images, labels, strict=True)):
        image_labels = np.asarray(image_labels)
        object_ids = np.unique(image_labels[image_labels != 0])[:max_objects_per_image]
        if object_ids.size == 0 and each_image is None:
            continue
        segmenter.set_image(image, channel_axis=channel_axis, channels=channels)
        for object_id in object_ids:
            results.append(
                _evaluate_object(segmenter, image_labels, object_id, index, n_corrective_clicks)
            )
            if each_object is not None:
                each_object()
        if each_image is not None:
            each_image(index)
    if not results:
        raise ValueError("labels contain no objects; prompted evaluation needs annotated objects")
    return PromptEvaluation(tuple(results), n_corrective_clicks)
