"""``samtune segment --auto`` on several images (files, a folder, a glob): labels
``<image>.labels.tif`` each into a folder, skipping those done, one bad image not stopping
the others, and a stopped batch saying how to go on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_samtune.cli import in_option_terms
from napari_samtune.cli.console import shell_path, sigterm_interrupts
from napari_samtune.cli.segment_files import check_record_free, output_for, read_image
from napari_samtune.cli.segment_output import (
    APPEARED,
    OPTION_NAMES,
    auto_config,
    load_segmenter,
    made_by,
    objects_text,
    using,
    write_labels,
)
from napari_samtune.cli.segment_planes import Planes, no_progress, optional_bar, segment_planes
from napari_samtune.core.images import warnings_named
from napari_samtune.core.label_files import labels_file_name


def once_each(files: list[Path]) -> list[Path]:
    """``files`` without repeats of one file (overlapping globs, a file and its folder, a
    relative and an absolute path), said: such a file was segmented and counted twice, or
    refused as two images that "would have the same labels file name"."""
    seen: dict[Path, Path] = {}
    for path in files:
        seen.setdefault(path.resolve(), path)
    if len(seen) < len(files):
        print(f"{len(files) - len(seen)} file(s) given more than once are segmented once")
    return list(seen.values())


def run_batch(args: argparse.Namespace, files: list[Path], folder_asked: bool = False) -> int:
    """--auto on several images: ``<image>.labels.tif`` each in the output folder. Images
    whose labels exist are skipped unless --overwrite (a rerun after a stop goes on where it
    stopped and never replaces corrected labels); one bad image does not stop the others.
    ``folder_asked``: -o ended with a separator (``out.tif/`` is a folder, as the README
    says, not a TIFF file named in error)."""

    from napari_samtune.core.checkpoints import check_output_folder
    from napari_samtune.core.label_files import is_label_file

    if not args.auto:
        given = f"{len(files)} images were given" if len(files) > 1 else "a folder or pattern"
        raise ValueError(
            f"{given} with a prompt file, which belongs to one image; give one image's path "
            "with --points/--boxes, or segment several with --auto"
        )
    files = once_each(files)
    out_dir = check_output_folder(args.output)
    if out_dir.suffix.lower() in (".tif", ".tiff") and not (out_dir.is_dir() or folder_asked):
        raise ValueError(
            f"-o {str(out_dir)!r} names a TIFF file, but a folder, a glob or several images "
            f"write one labels file each into a folder; give a folder, e.g. {out_dir.stem}"
        )
    named = {spec for spec in args.image if spec.is_file()}  # given by name: never left out
    # e.g. earlier outputs in the same folder
    labelled = [f for f in files if is_label_file(f) and f not in named]
    if labelled:
        print(
            f"leaving out {len(labelled)} file(s) named as labels, e.g. {labelled[0].name} "
            "(name an image to segment it all the same)"
        )
    images = [f for f in files if f not in labelled]
    if not images:  # the labels folder given by mistake; images named *_mask, *_seg, ...
        raise ValueError(
            f"all {len(labelled)} TIFF file(s) given are named as labels (e.g. "
            f"{labelled[0].name}), which --auto leaves out, so there is nothing to segment; "
            "give the images' folder, or name an image file to segment it all the same"
        )
    outputs = {f: output_for(f, out_dir) for f in images}
    by_output: dict[Path, list[str]] = {}
    for image, output in outputs.items():
        by_output.setdefault(output, []).append(str(image))
    clashes = [(output, names) for output, names in by_output.items() if len(names) > 1]
    if clashes:
        output, names = clashes[0]
        raise ValueError(
            f"images {names!r} would have the same labels file name ({output.name}), so their "
            "labels would overwrite each other in the output folder; segment them into "
            "separate folders"
        )
    for image, output in outputs.items():  # an -o's labels there share their record
        check_record_free(output, image)
    auto_config(args)  # the options are checked first, even when nothing is left to do
    todo = [f for f in images if args.overwrite or not outputs[f].exists()]
    if len(todo) < len(images):
        print(
            f"skipping {len(images) - len(todo)} image(s) whose labels are already in "
            f"{out_dir} (--overwrite to segment them again)"
        )
    if not todo:
        return 0
    segmenter, model_name = load_segmenter(args)
    config = auto_config(args, segmenter.img_size)
    written = []  # the images whose labels are written
    try:
        with sigterm_interrupts():
            failed = segment_each(args, segmenter, model_name, config, todo, outputs, written)
    except KeyboardInterrupt as err:  # Ctrl+C, or SIGTERM (a batch job's time limit)
        cross_off(out_dir / NOT_SEGMENTED, written)  # given back, it would redo them
        done = f"{len(written)} of {len(todo)} images segmented into {shell_path(out_dir)}"
        raise type(err)(f"{done}; {how_to_go_on(args, todo, written, out_dir)}") from None
    into, model = shell_path(out_dir), using(segmenter, model_name)
    print(f"{len(todo) - failed} of {len(todo)} images segmented into {into} ({model})")
    cross_off(out_dir / NOT_SEGMENTED, written)
    if failed:
        print(f"{failed} image(s) failed; see the messages above", file=sys.stderr)
    return 1 if failed else 0


def how_to_go_on(args, todo: list[Path], written: list[Path], out_dir: Path) -> str:
    """How a stopped batch goes on: the same command skips the images whose labels are
    written; with --overwrite it redid them all, and without it, it kept the earlier labels
    of those not segmented (said to do as the first): these are named, to give alone (more
    than :data:`MAX_NAMED`: listed in a file in ``out_dir``, one per line). Given that list
    (``@out/not-segmented.txt``), the same command goes on: the list is crossed off."""
    if not args.overwrite:
        return "the same command segments the rest (images whose labels are there are skipped)"
    listed = out_dir / NOT_SEGMENTED
    if any(given.resolve() == listed.resolve() for given in getattr(args, "lists", ())):
        return f"the same command segments the rest ({shell_path(listed)} lists them now)"
    rest = [f for f in todo if f not in written]
    said = (
        f"the {len(rest)} not segmented keep any labels they had there before, and the same "
        "command (--overwrite) would segment every image again; to segment just those, give "
        "only them, with --overwrite as before"
    )
    if len(rest) <= MAX_NAMED:
        return f"{said}: {' '.join(shell_path(f) for f in rest)}"
    listed = out_dir / NOT_SEGMENTED
    try:
        # whole paths: read from anywhere, and none begins with @ (another list) or -
        listed.write_text("".join(f"{f.absolute()}\n" for f in rest), encoding="utf-8")
    except OSError as err:
        return f"{said} (the list could not be written to {listed}: {err.strerror or err})"
    return f"{said}: give them as @{shell_path(listed)} (a file listing them, one per line)"


MAX_NAMED = 20  # images named in the note of a stopped batch; more go into a file
NOT_SEGMENTED = "not-segmented.txt"  # that file, in the output folder


def cross_off(listed: Path, written: list[Path]) -> None:
    """Take the images this batch segmented off a stopped batch's list ``listed``, and
    delete it once none is left: given back (``@FILE``) and all done, it stayed, naming
    them as not segmented (and ``samtune evaluate`` of the folder left it out by name)."""
    try:
        lines = [line for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:  # none (the usual case), or not readable: nothing to cross off
        return
    done = {str(image.absolute()) for image in written}
    rest = [line for line in lines if line not in done]
    if len(rest) == len(lines):
        return
    try:
        if rest:
            listed.write_text("".join(f"{line}\n" for line in rest), encoding="utf-8")
        else:
            listed.unlink()
    except OSError:
        return
    left = f"{len(rest)} listed still" if rest else "deleted: every image listed is segmented"
    print(f"{listed}: {left}")


def segment_each(args, segmenter, model_name, config, todo, outputs, written) -> int:
    """Segment and write the images ``todo``, appending each written one to ``written``;
    returns how many failed."""
    from tqdm import tqdm

    made, failed = made_by(args, model_name, config, segmenter.model_id), 0
    with optional_bar(not args.no_progress, "segmenting images", "image") as bar:
        bar = bar or no_progress
        bar(0, len(todo))
        for done, image in enumerate(todo):
            try:
                with warnings_named(image.name):  # which of the folder's images it was
                    planes = Planes(*read_image(image), image, args)
                    labels, _ = segment_planes(
                        segmenter, planes, None, None, config, bars=False, name=image.name
                    )
            except (ValueError, TypeError) as err:
                failed += 1
                why = in_option_terms(str(err), OPTION_NAMES)
                tqdm.write(f"{image}: not segmented: {why}", file=sys.stderr)
            else:
                written_to = write_labels(
                    outputs[image], labels, image, planes.pixels, made, args.overwrite, True
                )
                if written_to is None:  # saved meanwhile: kept
                    failed += 1
                    said = f"{image.name}: not written: {APPEARED.format(outputs[image])}"
                    tqdm.write(said, file=sys.stderr)
                    bar(done + 1, len(todo))
                    continue
                written.append(image)
                renamed = written_to.path.name != labels_file_name(image.stem)
                why = " (its own name there holds another image's labels)" if renamed else ""
                n_objects = written_to.n_objects
                tqdm.write(f"{image.name}: {objects_text(n_objects)} -> {written_to.path}{why}")
            bar(done + 1, len(todo))
    return failed
