"""``samtune models``: list the built-in and user models and whether their weights are here.

User models' files are checked against the size and sha256 hash recorded when they were
registered (hashed only when changed since their last check), so damaged ones are named.
"""

from __future__ import annotations

import argparse
import sys

from napari_samtune.core import registry
from napari_samtune.core.checkpoints import folder_problem
from napari_samtune.core.download import download_status, local_weights_problem
from napari_samtune.core.registry import ModelSpec, models_cache_dir, user_models_dir
from napari_samtune.core.user_model_rename import rename_fix
from napari_samtune.core.user_models import scan_user_models

COLUMNS = ("name", "architecture", "source", "downloaded", "path")
_STATUS_TEXT = {"verified": "yes", "present": "unverified", "missing": "no"}
_UNVERIFIED_NOTE = (
    "unverified: a file put there by hand, copied, or not used since it came; its hash is "
    "checked when it is first used, and a file that does not match (a truncated or damaged "
    "copy) is set aside and downloaded again"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the available SAM models and whether they are downloaded; remove yours",
        description=(
            "List the built-in SAM models and your registered user models, with their "
            "architecture, source, and whether the weights are on this computer."
        ),
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--remove",
        nargs="+",
        metavar="NAME",
        help="unregister these user models and delete the weights files their descriptions "
        "name (built-in models and any other file stay)",
    )
    action.add_argument(
        "--rename",
        nargs=2,
        metavar=("OLD", "NEW"),
        help="give user model OLD the name NEW (its description and weights file are renamed; "
        "the weights stay as they are); --rename NAME NAME mends files renamed by hand",
    )
    parser.set_defaults(func=run)


def _row(spec: ModelSpec, damaged: dict[str, str]) -> tuple[str, ...]:
    if spec.packaged:
        status = "packaged"
    elif spec.name in damaged:  # a user model whose file no longer matches its record
        status = "DAMAGED"
    elif spec.is_user_model:
        nothing_recorded = spec.file_hash is None and spec.file_size is None
        status = "yes (unchecked)" if nothing_recorded else "yes"
    else:
        status = _STATUS_TEXT[download_status(spec)]
    return (spec.name, spec.architecture, spec.source, status, str(spec.local_path()))


def _damaged_user_models(specs: list[ModelSpec]) -> dict[str, str]:
    """name -> what is wrong, for the user models whose file no longer matches its record."""
    damaged = {}
    for spec in specs:
        try:
            problem = local_weights_problem(spec)
        except OSError as err:  # deleted or unreadable since the scan
            problem = f"at {spec.local_path()} cannot be read ({err})"
        if problem is not None:
            damaged[spec.name] = f"its weights {problem}: the file is damaged or was replaced"
    return damaged


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...] = COLUMNS) -> str:
    """Left-aligned columns separated by two spaces, with a header line."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _print_problems(broken: list[tuple[str, str]], damaged: dict[str, str]) -> None:
    if damaged:
        print(f"\ndamaged user models, which fail to load ({len(damaged)}):")
        for name, reason in damaged.items():
            print(f"  {name}: {reason}")
    if broken:
        print(f"\nbroken user models, offered nowhere ({len(broken)}):")
        for name, reason in broken:
            print(f"  {name}: {reason}")
    renames = {name: fix for name, _ in broken if (fix := rename_fix(name)) is not None}
    for name, fix in renames.items():  # removing these deleted their only weights
        print(f"{name}: {fix}")
    removable = [*damaged, *(name for name, _ in broken if name not in renames)]
    if removable:
        print(f"unregister them with: samtune models --remove {' '.join(removable)}")
        if len(broken) > len(renames):
            print("(or restore the files of the broken ones)")
        if damaged:
            print(
                "(to have one again afterwards, register it anew from its training run: "
                "samtune export RUN/checkpoints/best.pt -o FILE --register NAME)"
            )


def _check_removable(names: list[str]) -> None:
    """Refuse the list before any model is removed when a name in it cannot be (a typo, a
    built-in model): such a name used to stop the command after the ones before it went."""
    from napari_samtune.core.user_model_removal import remove_user_model

    for name in names:
        try:
            registry.validate_model_name(name)
            sidecar = user_models_dir() / f"{name}.json"
            if sidecar.is_file():  # also one named so before a built-in model was
                continue
            remove_user_model(name)  # refuses such a name, before deleting anything
        except ValueError as err:
            raise ValueError(f"{err}; nothing was removed") from None


def _remove(names: list[str]) -> None:
    from napari_samtune.core.user_model_removal import (
        remove_user_model,
        weights_kept_on_removal,
    )

    _check_removable(names)
    for name in names:
        kept = weights_kept_on_removal(name)
        deleted = remove_user_model(name)
        print(f"removed user model {name!r} ({', '.join(p.name for p in deleted)})")
        for path, why in kept:
            print(f"  kept {path} ({why})")


def _rename(old: str, new: str) -> None:
    from napari_samtune.cli import option_wording
    from napari_samtune.core.user_model_rename import rename_user_model

    with option_wording({"old_name": "--rename OLD", "new_name": "--rename NEW"}):
        weights = rename_user_model(old, new)
    if old == new:
        print(f"mended user model {new!r}: {new}.json describes it, with weights {weights.name}")
    else:
        print(f"renamed user model {old!r} to {new!r} ({new}.json, {weights.name})")
    print(f"use it as --model {new}; its weights and embedding caches are unchanged")


def run(args: argparse.Namespace) -> int:
    if args.remove:
        _remove(list(dict.fromkeys(args.remove)))
        return 0
    if args.rename:
        _rename(*args.rename)
        return 0
    user_specs, broken = scan_user_models()
    damaged = _damaged_user_models(user_specs)
    specs = [*registry.BUILTIN_MODELS, *user_specs]
    rows = [_row(spec, damaged) for spec in specs]
    print(format_table(rows))
    print()
    if any(row[3] == _STATUS_TEXT["present"] for row in rows):
        print(_UNVERIFIED_NOTE)
    print(f"download cache: {models_cache_dir()}  (set SAMTUNE_CACHE_DIR to move it)")
    print(f"user models:    {user_models_dir()}  (set SAMTUNE_MODELS_DIR to move it)")
    if user_specs:
        print(
            "user model files were checked against the size and sha256 hash recorded when "
            "they were registered (a file unchanged since its last check is not hashed again)"
        )
    problem = folder_problem(user_models_dir())
    if problem:  # training and --register would refuse it; say so before anyone tries
        print(
            f"warning: the user models folder {str(user_models_dir())!r} {problem}; set "
            "SAMTUNE_MODELS_DIR to a folder you can write to",
            file=sys.stderr,
        )
    elif not user_specs and not broken:
        print("no user models registered yet")
    _print_problems(broken, damaged)
    return 0
