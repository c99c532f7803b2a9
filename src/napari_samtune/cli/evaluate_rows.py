"""The rows of ``samtune evaluate``'s table: a name for each ``--model`` that tells it apart
from the others (:func:`row_names`) and the table printed (:func:`format_table`)."""

from __future__ import annotations

from pathlib import Path

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("box_iou", "box IoU"),
    ("point_iou", "point IoU"),
    ("msa", "mSA"),
    ("sa50", "SA50"),
    ("sa75", "SA75"),
    ("precision", "P"),
    ("recall", "R"),
    ("f1", "F1"),
)


def model_names() -> set[str]:
    """The names of the built-in and the user models (a name is resolved before a file);
    a broken user model is left out without a warning, which the models evaluated give."""
    from napari_samtune.core.registry import builtin_names
    from napari_samtune.core.user_models import scan_user_models

    return builtin_names() | {spec.name for spec in scan_user_models()[0]}


def row_names(models: list[str], known: set[str] | None = None) -> list[str]:
    """Row names: the model argument, or a file's stem with as many of its folders as tell
    files of the same stem apart (``run1/best``, ``run2/best``; two runs' checkpoints
    ``run1/checkpoints/best``, ``run2/checkpoints/best``); names still repeated get ``#2``,
    ``#3``. A run's own file names (``model``, ``best``, ``last``) say nothing of the run, so
    they keep their run's folder (``run2/model``, ``run2/checkpoints/best``) even alone.
    ``known``: the model names (:func:`model_names`), where the caller has them."""
    known = model_names() if known is None else known  # 'cells.v2': a name, not a suffix
    files = [m not in known and bool(Path(m).suffix) for m in models]
    tails = [
        Path(m).with_suffix("").parts if f else (m,) for m, f in zip(models, files, strict=True)
    ]
    names: list[str] = []
    for index, parts in enumerate(tails):
        rivals = [t for i, t in enumerate(tails) if i != index and t[-1] == parts[-1]]
        depth = _least_depth(parts) if files[index] else 1
        while depth < len(parts) and any(t[-depth:] == parts[-depth:] for t in rivals):
            depth += 1
        name = _printable(Path(*parts[-depth:]).as_posix() if files[index] else parts[0])
        candidate, n = name, 1
        while candidate in names:
            n += 1
            candidate = f"{name}#{n}"
        names.append(candidate)
    return names


RUN_FILE_STEMS = frozenset({"model", "best", "last"})  # what a run names its weights


def _least_depth(parts: tuple[str, ...]) -> int:
    """How many of a weights file's path parts its row name needs at least: 1, or with the
    run's folder for a run's own file name (2; 3 under its ``checkpoints`` folder)."""
    if parts[-1] not in RUN_FILE_STEMS or len(parts) < 2:
        return 1
    folders = 3 if parts[-2] == "checkpoints" else 2
    return min(folders, len(parts))


def _printable(name: str) -> str:
    """``name`` with the bytes of a file name that are no UTF-8 (Python's surrogates, e.g.
    ``m\\udce9`` of a Latin-1 ``mé.pth``) as U+FFFD: the CSV, the chart and stdout, all
    UTF-8, failed at the end of the evaluation and lost its results."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def format_table(results: dict[str, dict[str, float]]) -> str:
    header = "| model | " + " | ".join(t for _, t in TABLE_COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for name, metrics in results.items():
        cells = [f"{metrics[k]:.3f}" if k in metrics else "" for k, _ in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
