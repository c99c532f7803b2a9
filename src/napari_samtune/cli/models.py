"""``samtune models``: list the built-in and user models and whether their weights are here."""

from __future__ import annotations

import argparse

from napari_samtune.core import registry
from napari_samtune.core.download import download_status
from napari_samtune.core.registry import (
    ModelSpec,
    models_cache_dir,
    scan_user_models,
    user_models_dir,
)

COLUMNS = ("name", "architecture", "source", "downloaded", "path")
_STATUS_TEXT = {"verified": "yes", "present": "yes (not verified yet)", "missing": "no"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the available SAM models and whether they are downloaded; remove yours",
        description=(
            "List the built-in SAM models and your registered user models, with their "
            "architecture, source, and whether the weights are on this computer."
        ),
    )
    parser.add_argument(
        "--remove",
        nargs="+",
        metavar="NAME",
        help="unregister these user models and delete their files",
    )
    parser.set_defaults(func=run)


def _row(spec: ModelSpec) -> tuple[str, ...]:
    if spec.packaged:
        status = "packaged"
    elif spec.is_user_model:  # checked against its hash at every load: never "not verified"
        status = "yes" if spec.local_path().is_file() else "no"
    else:
        status = _STATUS_TEXT[download_status(spec)]
    return (spec.name, spec.architecture, spec.source, status, str(spec.local_path()))


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = COLUMNS) -> str:
    """Left-aligned columns separated by two spaces, with a header line."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.remove:
        from napari_samtune.core.registry import remove_user_model

        for name in dict.fromkeys(args.remove):
            deleted = remove_user_model(name)
            print(f"removed user model {name!r} ({', '.join(p.name for p in deleted)})")
        return 0
    user_specs, broken = scan_user_models()
    print(format_table([_row(spec) for spec in [*registry.BUILTIN_MODELS, *user_specs]]))
    print()
    print(f"download cache: {models_cache_dir()}  (set SAMTUNE_CACHE_DIR to move it)")
    print(f"user models:    {user_models_dir()}  (set SAMTUNE_MODELS_DIR to move it)")
    if not user_specs and not broken:
        print("no user models registered yet")
    if broken:
        print(f"\nbroken user models, offered nowhere ({len(broken)}):")
        for name, reason in broken:
            print(f"  {name}: {reason}")
        names = " ".join(name for name, _ in broken)
        print(f"restore their files, or unregister them with: samtune models --remove {names}")
    return 0
