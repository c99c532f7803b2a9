"""Live training curves inside the training dock widget (matplotlib, no pyplot).

Two panels share the epoch axis: the training loss (every step, faint, and the
mean of each epoch) and the validation IoU per epoch (the best epoch starred).

The plot runs on the main thread while training competes for the CPU, so it
must cost the event loop little. Redrawing a whole figure (ticks, labels) takes
tens of milliseconds, so the curves are *blitted*: the axes are drawn once with
room to grow, and an update only repaints the curves over that saved background.
A full redraw happens only when the data leave the axes' range (the x range
doubles, the loss range grows by half), i.e. a handful of times per run. The step curve
draws at most :data:`MAX_STEP_POINTS` points, each beyond that the mean of 2, 4, ... steps:
drawn whole, every step cost more than the one before (10-25 ms at 10,000 steps).
"""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

# napari's dark theme; the canvas sits inside a dark dock.
BACKGROUND = "#262930"
FOREGROUND = "#d6d6d6"
LOSS_COLOR = "#5fa8ff"
METRIC_COLOR = "#ffb14e"
INITIAL_EPOCHS = 10  # x range before it has to grow (never more than the run's epochs)
INITIAL_LOSS_TOP = 2.0  # SAM's dice + BCE losses start below this
MAX_STEP_POINTS = 800  # points of the step curve drawn (about the canvas's width in pixels)


class TrainingPlotWidget(QWidget):
    """Loss and validation-IoU curves of one training run.

    ``add_step`` positions a step at fractional epochs (epoch ``e`` step ``s`` of
    ``n`` is drawn at ``e - 1 + s / n``), so per-step losses line up with the
    per-epoch points (drawn at ``e``). Epochs count from 1.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # No layout engine: constrained layout re-measures every text at each draw.
        self.figure = Figure(figsize=(4, 3.2), dpi=80, facecolor=BACKGROUND)
        self.figure.subplots_adjust(left=0.17, right=0.97, top=0.97, bottom=0.14, hspace=0.12)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.canvas.setMinimumHeight(220)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.loss_axes, self.metric_axes = self.figure.subplots(2, 1, sharex=True)
        for axes in (self.loss_axes, self.metric_axes):
            _style(axes)
        self.loss_axes.set_ylabel("training loss", color=FOREGROUND)
        self.metric_axes.set_ylabel("validation IoU", color=FOREGROUND)
        self.metric_axes.set_xlabel("epoch", color=FOREGROUND)
        self.metric_axes.set_ylim(0.0, 1.0)
        self._lines = {
            "steps": self.loss_axes.plot([], [], color=LOSS_COLOR, alpha=0.35, lw=1)[0],
            "loss": self.loss_axes.plot([], [], "o-", color=LOSS_COLOR, ms=4)[0],
            "metric": self.metric_axes.plot([], [], "o-", color=METRIC_COLOR, ms=4)[0],
            "best": self.metric_axes.plot([], [], "*", color="white", ms=10)[0],
        }
        for line in self._lines.values():
            line.set_animated(True)  # drawn by _blit only, over the saved background
        self._backgrounds: list = []
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        self.clear()

    def clear(self, max_epochs: int = INITIAL_EPOCHS) -> None:
        """Forget every point (a new run of at most ``max_epochs`` epochs starts)."""
        self.step_x: list[float] = []
        self.step_losses: list[float] = []
        self.epochs: list[int] = []
        self.epoch_losses: list[float] = []
        self.metric_epochs: list[int] = []
        self.metric_values: list[float] = []
        self.best_epoch: int | None = None
        self._shown_x: list[float] = []  # the step curve drawn: means of `_stride` steps
        self._shown_losses: list[float] = []
        self._shown_counts: list[int] = []  # the steps each point drawn stands for
        self._pending: list[tuple[float, float]] = []  # steps not drawn yet (fewer than a stride)
        self._stride = 1
        self._x_max = self._loss_max = 0.0  # the data's extent, for _grow_axes
        self.max_epochs = max(1, max_epochs)
        self.loss_axes.set_xlim(0, min(INITIAL_EPOCHS, self.max_epochs))
        self.loss_axes.set_ylim(0, INITIAL_LOSS_TOP)
        self._update()
        # Drawn now, as the run begins, rather than at a step while training competes for the CPU.
        self.canvas.draw()

    def add_step(self, epoch: int, step: int, n_steps: int, loss: float) -> None:
        """One optimisation step's loss (steps count from 1 to ``n_steps``)."""
        x, loss = epoch - 1 + step / max(n_steps, 1), float(loss)
        self.step_x.append(x)
        self.step_losses.append(loss)
        self._extend(x, loss)
        self._pending.append((x, loss))
        if len(self._pending) == self._stride:
            self._shown_x.append(self._pending[-1][0])
            self._shown_losses.append(sum(p[1] for p in self._pending) / self._stride)
            self._shown_counts.append(self._stride)
            self._pending.clear()
            if len(self._shown_x) > MAX_STEP_POINTS:
                self._thin_steps()
        self._update()

    def _thin_steps(self) -> None:
        """Halve the step curve drawn: each pair of its points becomes their mean, weighed by
        the steps they stand for (a non-finite loss stays a gap; an odd last point stays as
        it is), and from now on a point is the mean of twice as many steps."""
        x, losses, counts = self._shown_x, self._shown_losses, self._shown_counts
        pairs = [(2 * i, 2 * i + 1) for i in range(len(x) // 2)]
        odd = [len(x) - 1] if len(x) % 2 else []
        self._shown_x = [x[b] for _, b in pairs] + [x[i] for i in odd]
        self._shown_losses = [
            (losses[a] * counts[a] + losses[b] * counts[b]) / (counts[a] + counts[b])
            for a, b in pairs
        ] + [losses[i] for i in odd]
        self._shown_counts = [counts[a] + counts[b] for a, b in pairs] + [counts[i] for i in odd]
        self._stride *= 2

    def _extend(self, x: float, loss: float) -> None:
        self._x_max = max(self._x_max, x)
        if math.isfinite(loss):
            self._loss_max = max(self._loss_max, loss)

    def add_epoch(
        self, epoch: int, train_loss: float, metric: float | None, is_best: bool = False
    ) -> None:
        """An epoch's mean training loss and validation IoU (None: no validation data)."""
        self.epochs.append(epoch)
        self.epoch_losses.append(float(train_loss))
        self._extend(epoch, float(train_loss))
        if metric is not None:
            self.metric_epochs.append(epoch)
            self.metric_values.append(float(metric))
            if is_best:
                self.best_epoch = epoch
        self._update()

    def add_start(self, metric: float) -> None:
        """The validation IoU of the model before training, drawn at epoch 0: where the
        epochs' curve starts from."""
        self.metric_epochs.insert(0, 0)
        self.metric_values.insert(0, float(metric))
        self._update()

    def _update(self) -> None:
        lines = self._lines
        pending = self._pending[-1:]  # the newest step, till its stride is complete
        lines["steps"].set_data(
            self._shown_x + [p[0] for p in pending], self._shown_losses + [p[1] for p in pending]
        )
        lines["loss"].set_data(self.epochs, self.epoch_losses)
        lines["metric"].set_data(self.metric_epochs, self.metric_values)
        best = [] if self.best_epoch is None else [self.best_epoch]
        lines["best"].set_data(
            best, [self.metric_values[self.metric_epochs.index(e)] for e in best]
        )
        if self._grow_axes():
            self.canvas.draw_idle()  # the draw event then blits the curves
        else:
            self._blit()

    def _grow_axes(self) -> bool:
        """Widen the axes when the data left them; True when they changed. A non-finite
        loss (an fp16 step that overflowed, a continued run's diverged epoch, saved as null)
        is drawn as a gap: axis limits cannot be infinite, and NaN would hide the others."""
        changed = False
        x_max = self._x_max
        right = self.loss_axes.get_xlim()[1]
        while x_max > right and right < self.max_epochs:
            right = min(2 * right, self.max_epochs)
            changed = True
        loss_max = self._loss_max
        top = self.loss_axes.get_ylim()[1]
        if loss_max > top:
            top, changed = 1.5 * loss_max, True
        if changed:
            self.loss_axes.set_xlim(0, right)
            self.loss_axes.set_ylim(0, top)
        return changed

    def _on_full_draw(self, _event=None) -> None:
        """After every full draw (resize, new range): save the empty axes, then add curves."""
        self._backgrounds = [
            (axes, self.canvas.copy_from_bbox(axes.bbox))
            for axes in (self.loss_axes, self.metric_axes)
        ]
        self._blit(flush=False)

    def _blit(self, flush: bool = True) -> None:
        if not self._backgrounds:
            return  # not drawn yet: the first full draw shows the curves
        for axes, background in self._backgrounds:
            self.canvas.restore_region(background)
            for line in axes.get_lines():
                axes.draw_artist(line)
            if flush:
                self.canvas.blit(axes.bbox)


def _style(axes) -> None:
    axes.set_facecolor(BACKGROUND)
    axes.tick_params(colors=FOREGROUND, labelsize=8)
    for spine in axes.spines.values():
        spine.set_color("#5a5f6b")
