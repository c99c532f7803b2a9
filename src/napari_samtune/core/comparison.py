"""Comparison of models' evaluation metrics: a CSV table and a grouped bar chart.

:func:`compare_models` takes each model's scores (from
:func:`~napari_samtune.core.metrics.evaluate_instances` and
:func:`~napari_samtune.core.evaluate.evaluate_prompts`, or their ``summary()`` dicts).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_samtune.core.checkpoints import atomic_write, check_output_folder, first_free
from napari_samtune.core.config_checks import kind_of

# The files of one comparison: a free name is one that none of them has.
OUTPUT_SUFFIXES = (".csv", ".png", ".json")

# Metrics drawn in the comparison chart: (summary key, axis label).
CHART_METRICS: tuple[tuple[str, str], ...] = (
    ("msa", "mSA"),
    ("sa50", "SA50"),
    ("box_iou", "box IoU"),
    ("point_iou", "point IoU"),
)


@dataclass(frozen=True)
class ComparisonFiles:
    """Where :func:`compare_models` wrote its outputs."""

    csv_path: Path  # one row per model, one column per metric
    png_path: Path  # grouped bar chart of CHART_METRICS
    settings_path: Path | None = None  # how the metrics were measured, when given


def _metric_dict(name: str, metrics: Any) -> dict[str, float]:
    """A model's metrics as a flat dict, from a mapping, a ``summary()`` owner or a list."""
    if isinstance(metrics, Mapping):
        try:
            return {str(key): float(value) for key, value in metrics.items()}
        except (TypeError, ValueError) as err:
            raise TypeError(f"results[{name!r}] has a non-numeric metric value: {err}") from err
    if hasattr(metrics, "summary"):
        return _metric_dict(name, metrics.summary())
    if isinstance(metrics, (list, tuple)):
        merged: dict[str, float] = {}
        for part in metrics:
            merged.update(_metric_dict(name, part))
        return merged
    raise TypeError(
        f"results[{name!r}] is {kind_of(metrics)}; expected a dict of metric values, an "
        "InstanceEvaluation / PromptEvaluation, or a list of those"
    )


def _by_model(results: object) -> Mapping[str, Any]:
    """``results`` as {model: metrics}, from a mapping or a list of (model, metrics) pairs
    (which raised "'list' object has no attribute 'items'")."""
    if isinstance(results, Mapping):
        return _without_repeats(list(results.items()))
    pairs = list(results) if isinstance(results, (list, tuple)) else None
    if pairs is None or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise TypeError(
            f"results is {kind_of(results)}; pass {{model name: metrics}}, e.g. "
            "{'vit_b': evaluation}, or a list of (model name, metrics) pairs"
        )
    return _without_repeats([(model, metrics) for model, metrics in pairs])


def _without_repeats(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """``pairs`` as a dict; a model named twice (as written: ``1`` and ``"1"`` too) kept
    only its last results, the table's other row dropped without a word."""
    names = [str(model) for model, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"model name(s) {repeated!r} appear more than once in results; give each model's "
            "results a name of its own, e.g. 'nano' and 'nano finetuned'"
        )
    return dict(pairs)


def _write_csv(path: Path, table: dict[str, dict[str, float]], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:  # names in any script
        writer = csv.writer(file)
        writer.writerow(["model", *columns])
        for model, metrics in table.items():
            writer.writerow([model, *(repr(metrics[c]) if c in metrics else "" for c in columns)])


def _write_chart(path: Path, table: dict[str, dict[str, float]], chart: list[tuple]) -> None:
    # Figure + Agg canvas, not pyplot: no global backend switch inside a running napari.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.6 + 1.4 * len(chart), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(table)
    positions = np.arange(len(chart))
    for i, (model, metrics) in enumerate(table.items()):
        heights = [metrics.get(key, math.nan) for key, _ in chart]
        axes.bar(
            positions + (i - (len(table) - 1) / 2) * width,
            heights,
            width,
            label=_legend_text(model),
        )
    axes.set_xticks(positions, [label for _, label in chart])
    axes.set_ylim(0, 1)
    axes.set_ylabel("score")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


def _check_output_dir(output_dir: str | os.PathLike) -> Path:
    """``output_dir`` as a Path; ``ValueError`` when it, or a folder above it, is a file."""
    output_dir = check_output_folder(output_dir, "output_dir")
    above = next((folder for folder in output_dir.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(
            f"output_dir {str(output_dir)!r} cannot be made: {str(above)!r} is a file; give a "
            "folder (created if missing)"
        )
    return output_dir


def _legend_text(model: str) -> str:
    """``model`` as matplotlib shows it in a legend: a leading "_" hid the entry, and text
    between two "$" came out as math ("cost $5 $x" as "cost 5x")."""
    text = model.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def compare_models(
    results: Mapping[str, Any],
    output_dir: str | Path,
    name: str = "model_comparison",
    overwrite: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> ComparisonFiles:
    """Write a CSV of every model's metrics and a grouped bar chart (mSA, SA50, box/point IoU).

    Args:
        results: model name -> its metrics (a dict, or a list of (name, metrics) pairs):
            a dict of floats (as ``summary()`` returns), an
            :class:`~.metrics.InstanceEvaluation` or :class:`PromptEvaluation`, or a list of
            those (merged). Models missing a metric get an empty CSV cell and no bar.
        output_dir: folder for ``<name>.csv`` and ``<name>.png``; created if needed (a
            file there is refused with ``ValueError``).
        name: file name stem (a ".csv" or ".png" given with it is dropped). Where
            ``<name>.csv`` or ``<name>.png`` is there already (an earlier comparison), the
            first free ``<name>-2``, ``<name>-3``, ... is used, unless ``overwrite``; the
            returned paths say which.
        settings: how the metrics were measured (data, models, prompts, versions), written
            as ``<name>.json`` beside the table: a CSV row alone cannot be reproduced or
            told apart from a row measured with other settings.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        raise ValueError(
            f"name={name!r} is not a file name stem; give one such as 'comparison' (the "
            "files are written to output_dir)"
        )
    name = name.removesuffix(".csv").removesuffix(".png") or name  # "x.csv" wrote x.csv.csv
    output_dir = _check_output_dir(output_dir)
    results = _by_model(results)
    if not results:
        raise ValueError("results is empty; pass {model name: metrics} for at least one model")
    table = {str(model): _metric_dict(str(model), metrics) for model, metrics in results.items()}
    columns = list(dict.fromkeys(key for metrics in table.values() for key in metrics))
    chart = [(key, label) for key, label in CHART_METRICS if key in columns]
    if not chart:
        raise ValueError(
            f"no model has any of the chart metrics {[k for k, _ in CHART_METRICS]!r}; "
            "evaluate with evaluate_instances and/or evaluate_prompts first"
        )
    if not overwrite:
        name = first_free(
            name,
            lambda stem: any((output_dir / f"{stem}{ext}").exists() for ext in OUTPUT_SUFFIXES),
        )
    settings_path = None
    if settings is not None:  # first: settings that are not JSON write no table either
        text = _settings_json(settings)
        settings_path = atomic_write(
            output_dir / f"{name}.json", lambda tmp: tmp.write_text(text, encoding="utf-8")
        )
    csv_path = atomic_write(output_dir / f"{name}.csv", lambda tmp: _write_csv(tmp, table, columns))
    png_path = atomic_write(output_dir / f"{name}.png", lambda tmp: _write_chart(tmp, table, chart))
    if settings_path is None:  # an overwritten comparison's settings are not this one's
        (output_dir / f"{name}.json").unlink(missing_ok=True)
    return ComparisonFiles(csv_path, png_path, settings_path)


def _settings_json(settings: Mapping[str, Any]) -> str:
    """``settings`` as indented JSON (paths as strings); ``TypeError`` naming what is not."""
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings is {kind_of(settings)}; pass a dict or None")
    try:
        return json.dumps(settings, indent=2, default=_path_text, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"settings must be JSON data (str, numbers, lists, dicts, paths): {err}"
        ) from None


def _path_text(value: object) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON data")
