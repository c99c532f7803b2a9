"""The offline demo: segment an unseen domain with nano, finetune on 2 images, measure the gain.

:func:`run_demo` runs the whole loop of the product without a download:

1. generate a sample data set of a domain the packaged ``nano`` generalist never
   saw (:data:`~napari_samtune.core.synthetic.DARK_CELLS`: large, elongated, dark
   cells on a bright background) and save it as TIFF files;
2. evaluate nano on held-out images (box / point prompts, iterative clicks,
   automatic segmentation);
3. finetune nano on 2 annotated images with the auto-detected resource preset's
   settings (epochs, samples and learning rate scaled to a few CPU minutes);
4. evaluate the finetuned model on the same held-out images, and write the
   comparison table (CSV) and chart (PNG).

:func:`model_metrics` is the one evaluation both the demo and ``samtune evaluate`` use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_samtune.core.automatic import NANO_AUTO_CONFIG, AutoSegmentConfig

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from napari_samtune.core.models import LoadedModel
    from napari_samtune.core.presets import TrainConfig
    from napari_samtune.core.train_events import TrainingFinished

# Headline metrics of the demo table: (key of model_metrics, column title).
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("box_iou", "box IoU"),
    ("point_iou", "point IoU"),
    ("iou_after_3_clicks", "IoU, 1+3 clicks"),
    ("msa", "auto mSA"),
    ("sa50", "auto SA50"),
)


@dataclass(frozen=True)
class DemoConfig:
    """Size and settings of the demo; :meth:`quick` is the reduced version for tests."""

    model: str = "nano"  # the generalist to start from
    preset: str = "auto"  # the resource preset's key; "auto": the one detected here
    n_train_images: int = 2  # annotated images to finetune on
    n_test_images: int = 6  # held-out images for before/after evaluation
    image_size: int = 256  # side of the generated square images, pixels
    epochs: int = 20  # finetuning epochs
    samples_per_epoch: int = 24  # patches per epoch
    learning_rate: float | None = 1e-4  # None: the preset's (1e-5, made for big models)
    n_iterative_prompts: int | None = None  # training clicks; None: the config's default
    n_corrective_clicks: int = 3  # clicks after the first point in the evaluation
    max_objects_per_image: int | None = None  # evaluate only this many objects per image
    auto_config: AutoSegmentConfig = field(default_factory=lambda: NANO_AUTO_CONFIG)
    seed: int = 0  # seeds data generation and training

    def __post_init__(self) -> None:
        for name in ("n_train_images", "n_test_images", "epochs", "samples_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}; use a whole number >= 1")
        if self.image_size < 64:
            raise ValueError(f"image_size={self.image_size!r}; use at least 64 pixels")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r}; use a positive number")

    def quick(self) -> DemoConfig:
        """A reduced demo (about a minute on 2 CPU cores) that still shows the gain."""
        return replace(
            self, n_test_images=3, epochs=4, samples_per_epoch=12, n_corrective_clicks=1,
            max_objects_per_image=6,
        )  # fmt: skip


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured and wrote."""

    before: dict[str, float]  # metrics of the generalist on the held-out images
    after: dict[str, float]  # metrics of the finetuned model on the same images
    train_config: dict  # the effective finetuning config (asdict)
    preset_reason: str  # why the preset was chosen
    finetune_seconds: float  # wall time of the finetuning
    total_seconds: float  # wall time of the whole demo
    csv_path: Path  # comparison table
    png_path: Path  # comparison chart
    model_path: Path | None  # the finetuned model (plain SAM state dict)
    registered_name: str | None  # its user-model name (load_model(name) works)


def model_metrics(
    sam: Sam,
    model_id: str | None,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    auto_config: AutoSegmentConfig | None = None,
    n_corrective_clicks: int = 3,
    max_objects_per_image: int | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Prompted and automatic segmentation metrics of one model on annotated images; each
    image is embedded once for both. ``progress(steps_done, n_steps)`` after each step: an
    object's prompts, or an image's automatic segmentation (an image of thousands of
    objects took minutes at 0 of 1 image).

    Args:
        sam: a ``segment_anything`` Sam model.
        model_id: stable weights id (keys the embedding cache); None computes one.
        images: (H, W) or (H, W, C) images as ``Segmenter.set_image`` takes them.
        labels: (H, W) integer instance labels, one per image.
        auto_config: automatic segmentation settings; None uses SAM's defaults.

    Returns:
        ``box_iou``, ``point_iou``, ``iou_after_<k>_clicks`` (k = 1..n), Dice values
        (:meth:`PromptEvaluation.summary`) and the pooled automatic-segmentation
        scores ``msa``, ``sa50``, ``sa75``, ``precision``, ``recall``, ``f1``
        (:meth:`InstanceEvaluation.summary`, plus ``image_mean_*``).
    """
    from napari_samtune.core.annotation_files import count_objects
    from napari_samtune.core.evaluate import evaluate_prompts
    from napari_samtune.core.metrics import evaluate_instances
    from napari_samtune.core.predict import Segmenter

    segmenter = Segmenter(sam, model_id=model_id, device=device, use_disk_cache=False)
    predictions = []
    n_objects = [count_objects(lab) for lab in labels]
    limit = max_objects_per_image or max(n_objects, default=0)
    n_steps, done = sum(min(n, limit) for n in n_objects) + len(images), [0]

    def step() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], n_steps)

    def segment_automatically(index: int) -> None:  # the image's embedding is still set
        predictions.append(segmenter.segment_all(auto_config))
        step()

    prompts = evaluate_prompts(
        segmenter,
        images,
        labels,
        n_corrective_clicks,
        max_objects_per_image,
        each_image=segment_automatically,
        each_object=step,
    )
    instances = evaluate_instances(list(labels), predictions)
    return {**prompts.summary(), **instances.summary()}


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, the :data:`TABLE_METRICS` columns."""
    keys = [(k, t) for k, t in TABLE_METRICS if any(k in m for m in rows.values())]
    lines = [
        "| model | " + " | ".join(t for _, t in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, metrics in rows.items():
        cells = [f"{metrics[k]:.3f}" if k in metrics else "" for k, _ in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_demo_data(
    config: DemoConfig, data_dir: Path | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """(train pairs, test pairs) of DARK_CELLS images; saved as TIFFs under ``data_dir``."""
    from napari_samtune.core.synthetic import DARK_CELLS, make_dataset

    shape = (config.image_size, config.image_size)
    train = make_dataset(config.n_train_images, shape, DARK_CELLS, seed=config.seed + 10_000)
    test = make_dataset(config.n_test_images, shape, DARK_CELLS, seed=config.seed + 20_000)
    if data_dir is not None:
        import tifffile

        for split, pairs in (("train", train), ("test", test)):
            folder = data_dir / split
            folder.mkdir(parents=True, exist_ok=True)
            for i, (image, labels) in enumerate(pairs):
                tifffile.imwrite(folder / f"image_{i:03d}.tif", image)
                tifffile.imwrite(folder / f"image_{i:03d}_labels.tif", labels)
    return train, test


def finetune_config(config: DemoConfig) -> tuple[TrainConfig, str]:
    """The preset's settings (``config.preset``, by default the auto-detected one) for
    ``config.model``, sized for a short demo.

    Returns ``(TrainConfig, reason)``: the preset decides the device, which parts
    train and the objects per patch; the demo sets epochs, samples per epoch, the
    learning rate (presets use 1e-5, tuned for the large pretrained models; nano
    needs a larger step to move in a few minutes) and turns early stopping off.
    """
    from napari_samtune.core.devices import cuda_available, why_no_cuda
    from napari_samtune.core.model_source import architecture_of
    from napari_samtune.core.presets import config_from_preset, resolve_preset

    preset, reason = resolve_preset(config.preset, arch=architecture_of(config.model))
    if preset.device == "cuda" and not cuda_available():  # the core's advice names device=
        raise ValueError(
            f"preset {preset.key!r} trains on cuda, but CUDA is not available here "
            f"{why_no_cuda()}; leave the preset out (the "
            "one detected here) or choose a CPU preset ('samtune presets' lists them)"
        )
    overrides = {
        "epochs": config.epochs,
        "min_samples_per_epoch": config.samples_per_epoch,
        "early_stopping": None,
        "seed": config.seed,
    }
    if config.learning_rate is not None:
        overrides["learning_rate"] = config.learning_rate
    if config.n_iterative_prompts is not None:
        overrides["n_iterative_prompts"] = config.n_iterative_prompts
    return config_from_preset(preset, config.model, **overrides), reason


def _new_run_names(out_dir: Path) -> tuple[Path, Path, str]:
    """The data folder, finetuning run folder and comparison files' stem of a new demo in
    ``out_dir``: ``data``, ``finetune`` and ``comparison``, or ``data-2``, ``finetune-2`` and
    ``comparison-2``, ... where an earlier demo (or anything else) left one of them there:
    none is replaced, and each run stays beside the images it was trained and scored on."""
    from napari_samtune.core.checkpoints import first_free

    def taken(tag: str) -> bool:  # "" or "-2", ...: first_free's numbering of ""
        names = (f"data{tag}", f"finetune{tag}", f"comparison{tag}.csv", f"comparison{tag}.png")
        return any((out_dir / name).exists() for name in names)

    tag = first_free("", taken)
    return out_dir / f"data{tag}", out_dir / f"finetune{tag}", f"comparison{tag}"


def _finetune(
    train_config: TrainConfig,
    train_pairs: list,
    run_dir: Path,
    stop_event: threading.Event | None,
    log: Callable[[str], None],
) -> TrainingFinished:
    """Run the training, logging one line per epoch; returns ``TrainingFinished``."""
    from napari_samtune.core.train import EpochDone, TrainingFinished, iter_train
    from napari_samtune.core.train_export import unique_model_name

    name = unique_model_name(f"{train_config.model}_demo_finetuned")
    # the two training images also pick the best epoch: no annotation is held back
    events = iter_train(train_config, train_pairs, train_pairs, run_dir, stop_event, None, name)
    finished = None
    for event in events:
        if isinstance(event, EpochDone):
            log(
                f"  epoch {event.epoch + 1}/{train_config.epochs}: loss {event.train_loss:.3f}, "
                f"IoU on the training images {event.metric:.3f} ({event.epoch_seconds:.0f} s)"
            )
        elif isinstance(event, TrainingFinished):
            finished = event
    return finished


def _evaluate(
    loaded: LoadedModel, test_pairs: list, config: DemoConfig, device: str
) -> dict[str, float]:
    images, labels = [p[0] for p in test_pairs], [p[1] for p in test_pairs]
    return model_metrics(
        loaded.sam, loaded.model_id, images, labels, config.auto_config,
        config.n_corrective_clicks, config.max_objects_per_image, device,
    )  # fmt: skip


class DemoStopped(RuntimeError):
    """The demo's finetuning was stopped before its first step: there is no model to
    compare."""


def run_demo(
    config: DemoConfig,
    out_dir: str | Path = "samtune-demo",
    log: Callable[[str], None] = print,
    stop_event: threading.Event | None = None,
    tuning: threading.Event | None = None,
) -> DemoResult:
    """Run the demo (see module docstring), logging progress through ``log``.
    ``stop_event`` stops the finetuning after its step; ``tuning`` is set while it runs (a
    Ctrl+C handler stops the finetuning then, and the demo otherwise). A demo stopped
    before its finetuning's first step raises :class:`DemoStopped`.

    Writes to ``out_dir``: ``data/{train,test}/image_NNN[_labels].tif``, the
    finetuning run folder ``finetune/``, ``comparison.csv`` and ``comparison.png``
    (``data-2/``, ``finetune-2/``, ``comparison-2.csv``, ... where an earlier demo's are).
    """
    from dataclasses import asdict

    from napari_samtune.core.comparison import compare_models
    from napari_samtune.core.models import load_model
    from napari_samtune.core.train_export import check_registration

    start, out_dir = time.perf_counter(), Path(out_dir).expanduser()
    train_config, reason = finetune_config(config)
    check_registration(None)  # a read-only models folder: before the data and the evaluation
    # first: a model that cannot be downloaded left a new data folder at every try
    base = load_model(config.model, device=train_config.device)
    data_dir, run_dir, comparison = _new_run_names(out_dir)
    train_pairs, test_pairs = make_demo_data(config, data_dir)
    log(
        f"generated {len(train_pairs)} training + {len(test_pairs)} held-out images of an unseen "
        f"domain (dark cells on a bright background) in {data_dir}"
    )
    log(f"evaluating {config.model!r} on the held-out images ...")
    before = _evaluate(base, test_pairs, config, train_config.device)
    log(f"preset: {reason}")
    from napari_samtune.core.preset_memory import preset_memory_short

    short = preset_memory_short(train_config)  # a preset of more memory than here has
    if short:
        log(f"warning: {short}")
    log(f"finetuning {config.model!r} on {len(train_pairs)} images with: {train_config}")
    tune_start = time.perf_counter()
    if tuning is not None:
        tuning.set()
    try:
        finished = _finetune(train_config, train_pairs, run_dir, stop_event, log)
    finally:
        if tuning is not None:
            tuning.clear()
    finetune_seconds = time.perf_counter() - tune_start
    if finished.exported_model_path is None:  # stopped before its first step
        raise DemoStopped(f"demo stopped: {finished.outcome_message()}")
    tuned = load_model(finished.exported_model_path, device=train_config.device)
    log("evaluating the finetuned model on the held-out images ...")
    after = _evaluate(tuned, test_pairs, config, train_config.device)
    names = (config.model, f"{config.model} finetuned")
    try:
        files = compare_models({names[0]: before, names[1]: after}, out_dir, comparison)
    except OSError:  # a full disk: the scores and the model were not said, as if lost
        scores = format_table({names[0]: before, names[1]: after})
        log(f"held-out images, before and after finetuning:\n{scores}")
        model = finished.exported_model_path
        log(f"finetuned model: {model} (load_model({finished.registered_name!r}))")
        raise
    return DemoResult(
        before=before, after=after, train_config=asdict(train_config), preset_reason=reason,
        finetune_seconds=finetune_seconds, total_seconds=time.perf_counter() - start,
        csv_path=files.csv_path, png_path=files.png_path,
        model_path=finished.exported_model_path, registered_name=finished.registered_name,
    )  # fmt: skip
