"""Instance segmentation metrics: matching predicted objects to ground-truth objects.

Conventions used throughout:

* Label images are integer arrays of any shape (usually (H, W)); 0 is background,
  every other value is one object. Ids need not be consecutive or ordered: only
  which pixels share an id matters. Boolean masks are refused, as in training: their
  objects have no ids.
* Two objects match at threshold ``t`` when their IoU is strictly greater than
  ``t``. Matching is one-to-one. For ``t >= 0.5`` a match is unique by itself
  (IoU > 0.5 means the pair shares more than half of each object, and disjoint
  objects cannot both do that), so the matches are simply the pairs above the
  threshold. For ``t < 0.5`` the number of matches is maximised with
  a maximum bipartite matching of the pairs above it (optimal, not greedy).
* Segmentation accuracy ``SA(t) = TP / (TP + FP + FN)``; mSA is its mean over
  the thresholds 0.50, 0.55, ..., 0.95 (:data:`IOU_THRESHOLDS`). Precision
  ``TP / (TP + FP)``, recall ``TP / (TP + FN)`` and F1 ``2 TP / (2 TP + FP + FN)``
  are reported at IoU 0.5.
* Empty cases: when neither ground truth nor prediction has an object, there
  was nothing to find and nothing was claimed, so every score is 1.0. Any other
  0 / 0 (precision of an empty prediction, recall against empty ground truth)
  scores 0.0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from napari_samtune.core.config_checks import kind_of
from napari_samtune.core.tiff_files import float_labels_problem

WHOLE_FLOATS_FIX = "their values are whole numbers, so convert them with .astype(np.uint32)"
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _index_instances(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted instance ids (without 0) and a flat per-pixel index: 0 = background, i = ids[i-1]."""
    flat = labels.ravel()
    if flat.size and int(flat.max()) <= 4 * flat.size + 1024:  # cheap O(N) relabelling
        present = np.bincount(flat.astype(np.int64, copy=False)) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(len(present), dtype=np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        return ids, lut[flat]
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids.size and ids[0] == 0:
        return ids[1:], inverse.reshape(-1)
    return ids, inverse.reshape(-1) + 1


def check_label_image(labels: np.ndarray, name: str) -> np.ndarray:
    """``labels`` as an array of instance labels; ``TypeError`` for a boolean mask (its
    objects have no ids: one id per object is needed, as training needs) or another
    non-integer dtype (saying how to convert whole-number floats) or a file name,
    ``ValueError`` for negative ids; ``name`` names it."""
    if isinstance(labels, (str, os.PathLike)):  # was "has dtype dtype('<U9')"
        raise TypeError(
            f"{name} is the file name {str(labels)!r}, not its label image; read the file "
            f"first, e.g. tifffile.imread({str(labels)!r})"
        )
    labels = np.asarray(labels)
    if labels.dtype == bool:
        raise TypeError(
            f"{name} is boolean (a foreground mask); instance labels are needed, with one id "
            "per object: label connected components, e.g. scipy.ndimage.label (or "
            ".astype(np.uint8) if the mask is one object)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        floating = np.issubdtype(labels.dtype, np.floating)
        # float labels of whole numbers (a TIFF saved as float32) were refused with no way on
        fix = (float_labels_problem(labels) or WHOLE_FLOATS_FIX) if floating else ""
        raise TypeError(
            f"{name} has dtype {labels.dtype!r}; instance metrics need integer label images "
            "(0 = background, one id per object)" + (f": {fix}" if fix else "")
        )
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError(f"{name} contains negative ids (min {labels.min()!r}); use ids >= 0")
    return labels


# one id over this many separate regions of at least MASK_REGION_AREA pixels: a foreground
# mask, not one object (an object cut in two by another is seen; in three, hardly ever)
MASK_REGIONS, MASK_REGION_AREA = 3, 16


def mask_regions(labels: np.ndarray) -> int:
    """How many separate regions (of at least MASK_REGION_AREA pixels) integer ``labels``
    give their only id, where that makes them a foreground mask (MASK_REGIONS or more);
    else 0. Labels of several ids cost no pass over their pixels beyond finding that."""
    top = labels.max(initial=0)
    if top == 0 or np.any((labels != 0) & (labels != top)):
        return 0
    from scipy import ndimage

    regions, _ = ndimage.label(labels == top)
    n_regions = int((np.bincount(regions.ravel())[1:] >= MASK_REGION_AREA).sum())
    return n_regions if n_regions >= MASK_REGIONS else 0


def check_not_a_mask(labels: np.ndarray, what: str) -> None:
    """``ValueError`` naming ``what`` (e.g. "labels of 'a.tif'") for integer labels (e.g.
    (H, W)) whose only id covers several separate regions: a foreground mask saved as integers (0/1,
    or 0/255 as Fiji's Convert to Mask saves it), which training and evaluation would take
    as one object. The regions are only counted for labels of a single id: other labels
    cost a pass over their pixels."""
    n_regions = mask_regions(labels)
    if n_regions:
        top = labels.max()
        raise ValueError(
            f"{what} give the one id {int(top)} to {n_regions} separate regions: a foreground "
            "mask (e.g. 0/255 from Fiji's Convert to Mask), whose objects would count as one; "
            "give each object its own id, e.g. with scipy.ndimage.label(labels > 0)[0], or "
            "paint each with a new label in napari"
        )


@dataclass(frozen=True)
class Overlaps:
    """The IoU of every pair of a ground-truth and a predicted object that share a pixel
    (all other pairs have IoU 0), as parallel arrays: pair ``k`` is ground-truth object
    ``gt_ids[gt_index[k]]`` and predicted object ``pred_ids[pred_index[k]]``."""

    iou: np.ndarray  # float64 (n_pairs,)
    gt_index: np.ndarray  # int64 (n_pairs,), rows of gt_ids
    pred_index: np.ndarray  # int64 (n_pairs,), rows of pred_ids
    gt_ids: np.ndarray  # the ground truth's ids, ascending, background excluded
    pred_ids: np.ndarray  # the prediction's ids, ascending, background excluded


def overlaps(labels: np.ndarray, prediction: np.ndarray) -> Overlaps:
    """The overlapping pairs of ground-truth and predicted objects, with their IoU.

    Args:
        labels: ground-truth instance labels, integer array of any shape.
        prediction: predicted instance labels, same shape.

    Time and memory are linear in the number of pixels (and pairs): a dense table of
    every pair took 3.3 GB and 73 s for 10,000 objects in 2000 x 2000 px.
    """
    labels = check_label_image(labels, "labels")
    prediction = check_label_image(prediction, "prediction")
    if labels.shape != prediction.shape:
        raise ValueError(
            f"labels has shape {labels.shape!r} but prediction has shape {prediction.shape!r}; "
            "they must be label images of the same image"
        )
    gt_ids, gt_index = _index_instances(labels)
    pred_ids, pred_index = _index_instances(prediction)
    gt_sizes = np.bincount(gt_index, minlength=len(gt_ids) + 1)[1:]
    pred_sizes = np.bincount(pred_index, minlength=len(pred_ids) + 1)[1:]
    both = (gt_index > 0) & (pred_index > 0)
    n_cols = len(pred_ids) + 1
    pairs, intersection = np.unique(gt_index[both] * n_cols + pred_index[both], return_counts=True)
    rows, cols = pairs // n_cols - 1, pairs % n_cols - 1
    union = gt_sizes[rows] + pred_sizes[cols] - intersection  # > 0: objects are non-empty
    return Overlaps(intersection / union, rows, cols, gt_ids, pred_ids)


def iou_matrix(
    labels: np.ndarray, prediction: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every ground-truth object with every predicted object, as a dense table.

    Returns:
        ``(iou, gt_ids, pred_ids)``: float64 ``iou`` of shape (n_gt, n_pred), row ``i``
        for object ``gt_ids[i]`` and column ``j`` for ``pred_ids[j]`` (ids sorted
        ascending, background excluded). Its memory grows with n_gt x n_pred: the scores
        use :func:`overlaps`.
    """
    found = overlaps(labels, prediction)
    iou = np.zeros((len(found.gt_ids), len(found.pred_ids)))
    iou[found.gt_index, found.pred_index] = found.iou
    return iou, found.gt_ids, found.pred_ids


def _n_matches(found: Overlaps, threshold: float) -> int:
    """Largest number of one-to-one (gt, prediction) pairs with IoU > threshold."""
    hits = found.iou > threshold
    if threshold >= 0.5:  # each object is in at most one hit (see module docstring)
        return int(hits.sum())
    if not hits.any():
        return 0
    # imported here: the label checks above are imported with the training data, and
    # scipy takes 0.17 s to import
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    shape = (len(found.gt_ids), len(found.pred_ids))
    graph = csr_matrix(
        (np.ones(int(hits.sum())), (found.gt_index[hits], found.pred_index[hits])), shape
    )
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def match_counts(
    labels: np.ndarray,
    prediction: np.ndarray,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> np.ndarray:
    """True positives, false positives and false negatives at each IoU threshold.

    Args:
        labels: ground-truth instance labels, integer array of any shape.
        prediction: predicted instance labels, same shape.
        thresholds: IoU thresholds in [0, 1); a pair matches when IoU > threshold.

    Returns:
        int64 array of shape (len(thresholds), 3): columns TP, FP, FN.
    """
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not 0.0 <= t < 1.0 for t in thresholds):
        raise ValueError(f"thresholds={thresholds!r}; give one or more IoU values in [0, 1)")
    found = overlaps(labels, prediction)
    counts = np.zeros((len(thresholds), 3), dtype=np.int64)
    for row, threshold in enumerate(thresholds):
        n_tp = _n_matches(found, threshold)
        counts[row] = (n_tp, len(found.pred_ids) - n_tp, len(found.gt_ids) - n_tp)
    return counts


def _ratio(numerator: float, denominator: float, n_objects: int) -> float:
    if denominator > 0:
        return float(numerator / denominator)
    return 1.0 if n_objects == 0 else 0.0  # nothing to find and nothing claimed: perfect


@dataclass(frozen=True)
class SegmentationScores:
    """Instance segmentation scores, each in [0, 1]."""

    msa: float  # mean segmentation accuracy over IoU thresholds 0.50:0.05:0.95
    sa50: float  # segmentation accuracy TP / (TP + FP + FN) at IoU 0.5
    sa75: float  # segmentation accuracy at IoU 0.75
    precision: float  # TP / (TP + FP) at IoU 0.5
    recall: float  # TP / (TP + FN) at IoU 0.5
    f1: float  # 2 TP / (2 TP + FP + FN) at IoU 0.5

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> SegmentationScores:
        """Scores from a (len(IOU_THRESHOLDS), 3) TP/FP/FN table as :func:`match_counts` makes."""
        counts = np.asarray(counts)
        if counts.shape != (len(IOU_THRESHOLDS), 3):
            raise ValueError(
                f"counts has shape {counts.shape!r}; expected ({len(IOU_THRESHOLDS)}, 3): "
                "TP, FP, FN at each of IOU_THRESHOLDS"
            )
        tp, fp, fn = (counts[:, k].astype(np.float64) for k in range(3))
        n_objects = int(tp[0] + fp[0] + fn[0])  # 0 only when both sides are empty
        sa = [_ratio(tp[i], tp[i] + fp[i] + fn[i], n_objects) for i in range(len(tp))]
        at50 = IOU_THRESHOLDS.index(0.5)
        return cls(
            msa=float(np.mean(sa)),
            sa50=sa[at50],
            sa75=sa[IOU_THRESHOLDS.index(0.75)],
            precision=_ratio(tp[at50], tp[at50] + fp[at50], n_objects),
            recall=_ratio(tp[at50], tp[at50] + fn[at50], n_objects),
            f1=_ratio(2 * tp[at50], 2 * tp[at50] + fp[at50] + fn[at50], n_objects),
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def instance_scores(labels: np.ndarray, prediction: np.ndarray) -> SegmentationScores:
    """Scores of one predicted label image against its ground truth (see module docstring)."""
    return SegmentationScores.from_counts(match_counts(labels, prediction))


@dataclass(frozen=True)
class InstanceEvaluation:
    """Instance scores of a set of images, per image and aggregated two ways.

    ``pooled`` sums TP/FP/FN over all images first and scores the totals, so
    every object weighs the same (an image with many objects counts more).
    ``image_mean`` averages the per-image scores, so every image weighs the same.
    """

    per_image: tuple[SegmentationScores, ...]  # one entry per image, in input order
    pooled: SegmentationScores  # scores of the TP/FP/FN summed over images
    image_mean: SegmentationScores  # mean of the per-image scores
    counts: np.ndarray = field(compare=False, repr=False)  # int64 (n_images, n_thresholds, 3)

    def summary(self) -> dict[str, float]:
        """Flat dict: pooled scores under their names, image means as ``image_mean_<name>``."""
        pooled = self.pooled.as_dict()
        means = {f"image_mean_{key}": value for key, value in self.image_mean.as_dict().items()}
        return {**pooled, **means}


def _image_counts(index: int, labels: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    try:
        # the ground truth only: a prediction may well give its one object several pieces
        check_not_a_mask(check_label_image(labels, "labels"), "labels")
        return match_counts(labels, prediction)
    except (ValueError, TypeError) as err:  # say which image of the set is wrong
        raise type(err)(f"image {index}: {err}") from err


def evaluate_instances(
    labels: Sequence[np.ndarray], predictions: Sequence[np.ndarray]
) -> InstanceEvaluation:
    """Score predicted label images against ground truth, per image and over the set.

    Args:
        labels: ground-truth instance label images (integer arrays, e.g. (H, W); not
            boolean masks, see :func:`check_label_image`), any iterable of them.
        predictions: predicted instance label images, one per entry of ``labels``
            with the same shape.
    """
    for name, given in (("labels", labels), ("predictions", predictions)):
        if isinstance(given, (str, bytes, os.PathLike)) or not isinstance(given, Iterable):
            raise TypeError(
                f"{name} is {kind_of(given)}; pass a list of label images, one per "
                "image (read files first, e.g. with tifffile.imread)"
            )
        if getattr(given, "ndim", 3) < 3:  # an array of any kind: else scored row by row
            raise ValueError(
                f"{name} is an array of shape {tuple(given.shape)!r}, not label images; pass one "
                "entry per image, e.g. evaluate_instances([labels], [prediction]) for one"
            )
    labels, predictions = list(labels), list(predictions)
    if len(labels) != len(predictions):
        raise ValueError(
            f"got {len(labels)!r} label images but {len(predictions)!r} predictions; "
            "pass one prediction per ground-truth image"
        )
    if len(labels) == 0:
        raise ValueError("labels is empty; pass at least one (ground truth, prediction) pair")
    counts = np.stack([_image_counts(i, labels[i], predictions[i]) for i in range(len(labels))])
    per_image = tuple(SegmentationScores.from_counts(c) for c in counts)
    image_mean = SegmentationScores(
        **{
            f.name: float(np.mean([getattr(s, f.name) for s in per_image]))
            for f in fields(SegmentationScores)
        }
    )
    return InstanceEvaluation(
        per_image=per_image,
        pooled=SegmentationScores.from_counts(counts.sum(axis=0)),
        image_mean=image_mean,
        counts=counts,
    )
