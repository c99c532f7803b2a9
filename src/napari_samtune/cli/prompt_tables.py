"""The table of a ``samtune segment`` prompt file: its header and rows, read as CSV, with
the mistakes of the file's form (no header, other separators, comments, repeated or
unknown columns, values beyond the header) named before a prompt is read from it. Qt-free;
:mod:`napari_samtune.cli.prompt_files` reads the prompts."""

from __future__ import annotations

import csv
from pathlib import Path

Rows = list[tuple[int, dict[str, str]]]  # (line number, {column: text}) per data row


def read_table(path: Path) -> tuple[list[str], Rows]:
    """The lower-cased header and the data rows of a CSV prompt file."""
    if path.is_dir():
        raise ValueError(f"prompt file {str(path)!r} is a folder; give the CSV file in it")
    if not path.exists():  # a pipe is read too: --points <(...), /dev/stdin
        raise ValueError(f"prompt file {str(path)!r} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # Excel writes a BOM
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as err:
        raise ValueError(
            f"prompt file {str(path)!r} is not UTF-8 text (byte {err.start} is "
            f"{err.object[err.start : err.start + 1]!r}): give a CSV file of prompts, "
            "saved as UTF-8 (Excel: 'CSV UTF-8'; napari's File > Save Selected Layers as .csv)"
        ) from None
    if header and all(_is_number(name) for name in header):
        raise ValueError(
            f"{path}: its first line {','.join(header)} holds numbers, not column names: "
            "the file has no header row; add one as its first line, e.g. x,y for points "
            "(x_min,y_min,x_max,y_max for boxes)"
        )
    _refuse_repeated(path, header)
    _refuse_foreign_header(path, header)  # before its rows: they then split in other ways
    for line, row in rows:
        # values beyond the header's columns would be ignored (empty ones, a trailing comma, are)
        if any(value.strip() for value in row.get(None, [])):
            _too_many_values(path, line, header, row)
    return header, rows


def _refuse_foreign_header(path: Path, header: list[str]) -> None:
    """A first line that names no columns the way a CSV file does: a comment (``# ...``),
    or columns separated by ``;`` (Excel in German or French, whose decimal commas then
    split the rows' numbers, and which was told to write 12.5 or add column names)."""
    if header and header[0].startswith("#"):
        raise ValueError(
            f"{path}: its first line {','.join(header)!r} is a comment; remove the comment "
            "lines: the first line must name the columns, e.g. x,y for points"
        )
    if len(header) == 1 and any(sep in header[0] for sep in ";\t"):
        raise ValueError(
            f"{path}: its header {header[0]!r} is not separated by commas; save the file as "
            "comma-separated values with decimal points (12.5), e.g. x,y for points"
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _refuse_repeated(path: Path, header: list[str]) -> None:
    """A column named twice (``x,y,x``; case and spaces do not count) kept only its last
    value: the other was dropped without a word. Unnamed columns may repeat."""
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise ValueError(
            f"{path}: column(s) {repeated!r} appear more than once in the header {header!r}; "
            "name each column once (remove or rename the repeats)"
        )


def _too_many_values(path: Path, line: int, header: list[str], row: dict) -> None:
    values = [*(row[name] for name in header), *row[None]]
    raise ValueError(
        f"{path}, line {line}: {len(values)} values ({','.join(values)}) for the "
        f"{len(header)} columns of the header {header!r}; a decimal comma (12,5) splits a "
        "number in two: write 12.5, or add the missing column names to the first line"
    )


def require(path: Path, header: list[str], columns: tuple[str, ...]) -> None:
    if not header:
        raise ValueError(
            f"{path} is empty; its first line must name the columns: {','.join(columns)}, "
            "then one prompt per line"
        )
    missing = [name for name in columns if name not in header]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing!r} (header is {header!r}); the first line "
            f"must name the columns: {','.join(columns)}"
        )


def refuse_unknown(path: Path, header: list[str], known: tuple[str, ...]) -> None:
    """A column not read would be dropped without a word: ``lable`` (a typo) made every
    point positive, and a comment after the header named no column at all. Unnamed columns
    (the index pandas writes) are left alone."""
    unknown = [name for name in header if name and name not in known]
    if unknown:
        raise ValueError(
            f"{path}: column(s) {unknown!r} are not read (header is {header!r}); the columns "
            f"are {', '.join(known)}: correct a misspelt name, and remove other columns and "
            "comments"
        )


def require_rows(path: Path, rows: Rows) -> None:
    if not rows:
        raise ValueError(f"{path} has a header but no rows; add one prompt per line")
