"""What a training run does when its loss stops being finite: it stops before a non-finite
loss reaches the weights (fp32, bf16), or after a few skipped steps in a row (fp16, whose
scaler skips a step that overflowed), with an error naming the learning rate to try.

A mixin of :class:`~napari_samtune.core.trainer.Trainer` (it uses its ``dist``,
``device``, ``files``, ``progress``, ``resume_from``, ``steps_done`` and
``nonfinite_in_a_row``, and its ``_lr()``).
"""

from __future__ import annotations

import math

from napari_samtune.core import distributed as ddp
from napari_samtune.core.presets import TrainConfig

# fp16: steps in a row whose loss is not finite before the run counts as diverged (the
# scaler skips such steps; a few in a row happen while it lowers its scale)
FP16_NONFINITE_STEPS = 5


class TrainerDivergenceMixin:
    """The checks of a step's loss: :meth:`_count_skipped` (fp16), :meth:`_refuse_divergence`."""

    def _count_skipped(self, loss: float, epoch: int) -> None:
        """fp16: a step of non-finite loss is skipped by the scaler (an overflow now and
        then is its job); :data:`FP16_NONFINITE_STEPS` in a row is a run that diverged, which
        went on skipping every step to its last epoch, reporting a NaN loss."""
        nonfinite = ddp.any_rank(not math.isfinite(loss), self.dist, self.device)
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if nonfinite else 0
        if self.nonfinite_in_a_row >= FP16_NONFINITE_STEPS:
            self._refuse_divergence(loss, epoch)

    def _refuse_divergence(self, loss: float, epoch: int, gradients: float = 0.0) -> None:
        """Stop before a non-finite loss or gradient (``gradients``: their 2-norm; on any
        rank) reaches the weights: the run has diverged, and what it would save and
        register from here on is not a model. Its checkpoints on disk are from before."""
        if not ddp.any_rank(not _finite(loss, gradients), self.dist, self.device):
            return
        if not math.isfinite(loss):
            became = f"the loss became {loss}"
        else:
            became = f"the gradients' norm became {gradients} (at a loss of {loss:.3g})"
        if self.resume_from is not None and self.steps_done == 0:
            raise ValueError(
                f"training diverged at the first step resumed from {str(self.resume_from)!r}: "
                f"{became} before any step of this session, so the weights in that "
                "checkpoint had diverged already and no learning rate helps them; train "
                "again from the start (the base model) with a lower learning_rate, e.g. "
                f"{_calmer(self._lr()):g}"
            )
        self._diverged(f"at epoch {epoch + 1}, step {self.progress.step_in_epoch + 1}", became)

    def _refuse_non_finite_weights(self, weights: float, when: str) -> None:
        """Stop before checkpoints are written (``when``: "by the end of epoch 2") where
        the optimizer made a weight non-finite (``weights``: their 2-norm, on any rank)."""
        if ddp.any_rank(not math.isfinite(weights), self.dist, self.device):
            self._diverged(when, f"a step made the weights' norm {weights}")

    def _diverged(self, where: str, became: str) -> None:
        lr, files = self._lr(), self.files
        earlier = [str(f) for f in (files.best, files.last) if f.exists()]
        saved = (
            f"; the checkpoints written before are kept ({', '.join(earlier)}): resume from "
            "the last one with a lower learning_rate (if that diverges at its first step, its "
            "weights had diverged already: train again from the start)"
            if earlier
            else ""
        )
        raise ValueError(
            f"training diverged {where}: {became}; learning_rate={lr:g} is too high for this "
            "run (or the data holds non-finite values). Lower it, e.g. "
            f"learning_rate={_calmer(lr):g} (the presets use {TrainConfig.learning_rate:g}), "
            f"and train again{saved}"
        )


def _finite(*values: float) -> bool:
    return all(map(math.isfinite, values))


def _calmer(learning_rate: float) -> float:
    """A learning rate to try after ``learning_rate`` diverged: a tenth of it, but no more
    than ten times the presets' (1e-4), which finetuning SAM takes; a tenth of 1e8 would
    diverge again."""
    return min(learning_rate / 10, 10 * TrainConfig.learning_rate)
