"""The ``samtune`` command line: a thin argparse layer over :mod:`napari_samtune.core`.

Each subcommand lives in its own module of this package with a function
``add_parser(subparsers)`` that registers it and sets ``func`` (taking the parsed
namespace, returning an exit code). Subcommand modules are imported only when
the parser is built, and none of them imports Qt.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

from napari_samtune import __version__
from napari_samtune.cli.console import (  # Terminated: also napari_samtune.cli's
    Terminated,
    deferred_interrupts,
    interrupted,
    is_main_process,
    plain_warnings,
    report_error,
    shell_quote,
    sigterm_interrupts,
    stdout_closed,
    torchrun_world_size,
)

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "models",
    "segment",
    "presets",
    "train",
    "export",
    "evaluate",
    "demo",
    "cache",
)


def output_folder(text: str) -> Path:
    """argparse ``type`` of an output folder: refused at once if it names an existing file."""
    from napari_samtune.core.checkpoints import check_output_folder

    try:
        return check_output_folder(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_output_file(text: str, example: str, hint: str = "") -> Path:
    """``text`` as a Path; ``ValueError`` if it names a folder, existing or written as one
    (``new/``: Path() drops the slash, and a file ``new`` would be written), suggesting
    ``example`` in it, or cannot be written (a file where its folder should be, a
    read-only folder)."""
    from napari_samtune.core.checkpoints import folder_problem

    if text == "":  # Path('') is the current folder
        raise ValueError(f"'' is an empty path; give a file name, e.g. {example}{hint}")
    path = Path(text).expanduser()  # as input paths are (not_empty): '~/x' was ./~/x
    if path.is_dir() or str(text).endswith(("/", os.sep)):
        verb = "is" if path.is_dir() else "names"
        raise ValueError(
            f"{str(text)!r} {verb} a folder; give a file name, e.g. {path / example}{hint}"
        )
    problem = folder_problem(path.parent)
    if problem:
        raise ValueError(f"{str(path)!r} {problem}; give a file in a folder you can write to")
    return path


def output_file(example: str) -> Callable[[str], Path]:
    """argparse ``type`` of a file to write, refused at once if it names an existing folder
    (the error suggests ``example`` inside it)."""

    def check(text: str) -> Path:
        try:
            return check_output_file(text, example)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return check


def not_empty(text: str) -> str:
    """argparse ``type`` of a path: ``''`` (``"$IMAGE"`` with the variable unset) is refused,
    as Path('') is the current folder, which would be read or written unsaid; a leading
    ``~`` (quoted, so the shell left it) is the home folder, as for output paths."""
    if text == "":
        raise argparse.ArgumentTypeError(
            "'' is an empty path; give a file or folder, or '.' for the current folder"
        )
    return os.path.expanduser(text)


def given_path(text: str) -> Path:
    """argparse ``type`` of a path that is read; ``''`` is refused (see :func:`not_empty`)."""
    return Path(not_empty(text))


def model_argument(text: str) -> str:
    """argparse ``type`` of ``--model``: ``''`` is refused, as it was read as the current
    folder (or as no model given, and so ignored)."""
    if text == "":
        raise argparse.ArgumentTypeError(
            "'' is empty; give a model name (see 'samtune models') or a weights file"
        )
    return text


def channel_list(text: str) -> tuple[int, ...]:
    """argparse ``type`` of ``--channels``: one index (gray) or three (RGB), e.g. ``0,1,2``."""
    from napari_samtune.core.images import parse_channels

    try:
        channels = parse_channels(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if channels is None:
        raise argparse.ArgumentTypeError("give one channel index (e.g. 1) or three (e.g. 0,1,2)")
    return channels


def add_channel_options(parser: argparse.ArgumentParser) -> None:
    """``--channel-axis`` and ``--channels``: which channels of multichannel images SAM sees."""
    parser.add_argument(
        "--channel-axis",
        type=int,
        default=None,
        help="axis of the image files holding channels (a stack's planes are axis 0, "
        "unless it is 0: (C, Z, H, W))",
    )
    parser.add_argument(
        "--channels",
        type=channel_list,
        default=None,
        help="channel i as gray, or i,j,k as RGB (e.g. --channels 1 for a nucleus channel)",
    )


SKIP_UNPAIRED_HELP = (
    "leave out image files without a label file (not annotated yet) and label files "
    "without an image, instead of stopping; they are listed"
)


def read_annotated(
    images: list[str],
    labels: list[str],
    what: str,
    skip_unpaired: bool,
    verbose: bool = True,
    channels: tuple[int | None, tuple[int, ...] | None] = (None, None),
    notes: TextIO | None = None,
) -> list:
    """The ``ImageLabelPair`` s of ``--images``/``--labels`` (``what`` names them: "training").

    Every file must pair unless ``skip_unpaired`` (``--skip-unpaired``): then the files
    without a partner are left out and, if ``verbose``, listed on ``notes`` (None: stdout,
    a training run's log; ``samtune evaluate`` keeps its stdout for the results). ``channels``
    is (``--channel-axis``, ``--channels``); every image is checked to have them.
    """
    from napari_samtune.core.data import (
        empty_planes_message,
        foreign_labels_message,
        namesakes_message,
        read_match,
    )
    from napari_samtune.core.data_checks import ChannelError, check_channels
    from napari_samtune.core.label_files import match_files

    match = match_files(images, labels)
    if match.unpaired_message() and not skip_unpaired:
        raise ValueError(
            f"{what} data: {match.unpaired_message()}; or pass --skip-unpaired to use the "
            f"{len(match.pairs)} pair(s) found"
        )
    if match.left_out_message() and verbose:
        print(f"{what} data: {match.left_out_message()}", file=notes)
        listing = match.left_out_listing()
        if listing:
            print("\n".join([f"{what} data: the files left out:", *listing]), file=notes)
    foreign: list[str] = []
    empty_planes: list[str] = []
    namesakes: list[str] = []
    pairs = read_match(match, foreign, *channels, empty_planes, namesakes)
    if namesakes and verbose:
        print(f"{what} data: {namesakes_message(namesakes)}", file=notes)
    if foreign and verbose:
        print(f"warning: {what} data: {foreign_labels_message(foreign)}", file=sys.stderr)
    if empty_planes and verbose:
        print(f"{what} data: {empty_planes_message(empty_planes)}", file=notes)
    for pair in pairs:  # all files, before a model is loaded or a run folder is made
        try:
            check_channels(pair)
        except ChannelError as err:
            raise ChannelError(f"{what} data: {channel_options(str(err))}") from None
    return pairs


def channel_options(message: str) -> str:
    """A core message about channels with the options that set them: where it names
    ``channel_axis`` (which the error report turns into ``--channel-axis``) its bare
    "and channels" becomes ``--channels``, which that report leaves; else they are added."""
    if "channel_axis" in message:
        return re.sub(r"\band channels\b", "and --channels", message)
    return f"{message} (options --channel-axis, --channels)"


def in_option_terms(
    message: str, options: Mapping[str, str], none_means: Mapping[str, str] | None = None
) -> str:
    """``message`` of the core with its Python parameter names as the command's options.

    ``options`` maps names to options (``{"n_objects_per_batch": "--n-objects"}``):
    ``name=value`` becomes ``--option value`` (``n_objects_per_batch=0`` -> ``--n-objects 0``,
    a tuple repeats the option, an empty one is ``none``), and a bare name with an
    underscore, or ``freeze``, becomes the option. ``none_means`` says, per name, what to
    type instead of ``None`` (which cannot be typed) in a message about that name. Names
    inside quotes, paths or longer words (file names) are left alone.
    """
    for name, option in options.items():
        before, key = message, re.escape(name)
        message = re.sub(
            rf"(?<![\w/\\.-]){key}=('[^']*'|\"[^\"]*\"|\([^()]*\)|\[[^\[\]]*\]|[^\s;,]+)",
            lambda found, option=option: _typed(option, found.group(1)),
            message,
        )
        if "_" in name or name == "freeze":
            message = re.sub(rf"(?<![\w'\"/\\.-]){key}(?![\w'\"/\\-]|\.\w)", option, message)
        if message != before and none_means and name in none_means:
            message = re.sub(r"\bNone\b", none_means[name], message)
    return message


COMMA_LISTS = {"--channels"}  # options that take a list as one comma-separated value


def _typed(option: str, value: str) -> str:
    """``option value`` as typed on a command line, from ``value`` as Python shows it."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return f"{option} {value}"
    if isinstance(parsed, (tuple, list)) and option in COMMA_LISTS:
        return f"{option} {','.join(map(str, parsed)) or 'none'}"
    if isinstance(parsed, (tuple, list)):
        return " ".join(f"{option} {shell_quote(str(v))}" for v in parsed) or f"{option} none"
    if isinstance(parsed, str):
        return f"{option} {shell_quote(parsed)}"
    return f"{option} {value}"


@contextmanager
def option_wording(
    options: Mapping[str, str], none_means: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Re-raise a ``ValueError``/``TypeError`` of the block in the words of the command
    line (see :func:`in_option_terms`)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        worded = in_option_terms(str(err), options, none_means)
        if worded == str(err):
            raise
        raise (ValueError if isinstance(err, ValueError) else TypeError)(worded) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samtune",
        description="Segment Anything for microscopy: segment, finetune, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``samtune`` console script; returns the exit code."""
    _printable_anywhere()
    with plain_warnings(lambda text: in_option_terms(text, IMAGE_OPTIONS)):
        return _main(argv)


def _printable_anywhere() -> None:
    """Letters the console's encoding lacks are printed as escapes: Windows writes a
    redirected stdout in cp1252, where a path such as 細胞.tif failed a finished command
    ('charmap' codec can't encode) after its files were written, and stopped a batch."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # (pytest's capture has none)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # closed, or not a text stream of its own
                pass


# the options of the commands that read images, which the core's warnings about them name
IMAGE_OPTIONS = {"channel_axis": "--channel-axis", "channels": "--channels"}


def _main(argv: list[str] | None) -> int:
    try:  # building the parser imports the subcommands, and torch with them: seconds
        with deferred_interrupts():  # raised in an import, a signal broke it (or was lost)
            args = _parse(argv)
    except KeyboardInterrupt as err:
        command = _command_in(sys.argv[1:] if argv is None else argv)
        return interrupted(command, terminated=isinstance(err, Terminated))
    try:  # SIGTERM anywhere (a model's download, say) is said, as Ctrl+C is, not silent
        _check_single_process(args.command)
        with sigterm_interrupts():
            return int(args.func(args) or 0)
    except BrokenPipeError:
        return stdout_closed()
    except (ValueError, TypeError, OSError) as err:
        # User errors carry messages that name the problem and the fix: no traceback.
        report_error(f"samtune {args.command}: error: {err}")
        return 2
    except KeyboardInterrupt as err:
        return interrupted(args.command, str(err), terminated=isinstance(err, Terminated))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line parsed. torchrun's other processes keep what argparse says (a
    mistake, --help) and say a mistake only after :func:`report_error`'s wait, in which
    torchrun ends them once the first has said it: each said it, three times with 3."""
    parser = build_parser()
    if is_main_process():
        return parser.parse_args(argv)
    said = io.StringIO()
    try:
        with redirect_stdout(said), redirect_stderr(said):
            return parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code:
            report_error(said.getvalue().rstrip("\n"))
        raise


def _check_single_process(command: str) -> None:
    """Only ``samtune train`` shares its work among ``torchrun``'s processes; any other
    command ran once in each, each printing and writing the same (the demo failed)."""
    world_size = torchrun_world_size()
    if command == "train" or world_size <= 1:
        return
    raise ValueError(
        f"samtune {command} runs in one process, but torchrun started {world_size} "
        f"(WORLD_SIZE={world_size}): run 'samtune {command}' without torchrun; only "
        "'samtune train' trains in several processes"
    )


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named on a command line not parsed yet (None if there is none)."""
    return next((word for word in argv if word in SUBCOMMAND_MODULES), None)


if __name__ == "__main__":
    sys.exit(main())
