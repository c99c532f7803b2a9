"""Losses for finetuning SAM: Dice + BCE (or focal) on masks, MSE on the IoU head.

Shapes: ``logits`` are (n, k, H, W) mask logits for n objects with k candidate
masks each (k = 3 with multimask output, else 1); ``target`` is (n, 1, H, W)
float in [0, 1] (soft at object borders after downsampling). Everything is
computed in float32, whatever the autocast dtype of the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # the values of SAM's paper


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per mask: (n, k)."""
    prob = logits.float().sigmoid()
    target = target.float().expand_as(prob)
    intersection = (prob * target).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    return 1.0 - (2.0 * intersection + EPS) / (total + EPS)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged per mask: (n, k)."""
    logits = logits.float()
    target = target.float().expand_as(logits)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return loss.mean(dim=(-2, -1))


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss averaged per mask: (n, k); down-weights easy pixels."""
    logits = logits.float()
    target = target.float().expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = logits.sigmoid()
    p_true = prob * target + (1 - prob) * (1 - target)
    weight = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return (weight * (1 - p_true) ** FOCAL_GAMMA * bce).mean(dim=(-2, -1))


def hard_truth(target: torch.Tensor) -> torch.Tensor:
    """bool, shaped as ``target`` (..., L, L): where each soft low-res target counts as its
    object: more than half covered; for an object less than half of every block (a 2 px
    filament, a 4 x 4 px cell off the 4 px grid), its most covered blocks. Those objects
    had an empty truth: an empty prediction was trained toward IoU 1, and their corrective
    click went beside them."""
    truth = target > 0.5
    peak = target.amax(dim=(-2, -1), keepdim=True)
    thin = ~truth.any(dim=(-2, -1), keepdim=True) & (peak > 0)
    return truth | (thin & (target == peak))


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with :func:`hard_truth` of ``target`` per mask: (n, k), no
    gradient.

    Two empty masks score 1 (nothing to find, nothing claimed).
    """
    with torch.no_grad():
        pred = logits > 0
        truth = hard_truth(target).expand_as(pred)
        intersection = (pred & truth).sum(dim=(-2, -1)).float()
        union = (pred | truth).sum(dim=(-2, -1)).float()
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def sam_loss(
    logits: torch.Tensor, iou_predictions: torch.Tensor, target: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss of one decoder pass, and the index of the candidate trained per object.

    The mask loss (Dice + BCE, or Dice + focal with ``kind="dice_focal"``) counts
    only the best candidate of each object (SAM's multimask training); the IoU
    head learns the true IoU of every candidate (MSE).

    Returns:
        ``(loss, best)``: scalar float32 tensor; int64 (n,) index of the best candidate.
    """
    pixel_loss = focal_loss if kind == "dice_focal" else bce_loss
    per_candidate = dice_loss(logits, target) + pixel_loss(logits, target)
    best = per_candidate.detach().argmin(dim=1)
    mask_term = per_candidate.gather(1, best[:, None]).mean()
    iou_term = F.mse_loss(iou_predictions.float(), mask_iou(logits, target))
    return mask_term + iou_term, best
