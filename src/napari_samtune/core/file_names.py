"""File-name-safe names of images and models: any script's letters kept, cut to fit file
systems' 255 bytes, and never a name Windows keeps for a device."""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata

# an autosave of an image whose name was taken by another image's: <name>-<fingerprint>,
# or <name>-<fingerprint>-<n> where the earlier ones could not be read back
NAMESAKE_STEM = re.compile(r"^(.*)-[0-9a-f]{16}(?:-[0-9]+)?$")
# Longest name (UTF-8 bytes) in a file name stem: with ".ome", a namesake's "-<fingerprint>-<n>",
# ".prompts.json" and atomic_write's temporary ".<name>.<8>.tmp" it stays under 255 bytes.
# Longer names are cut to SHORT_NAME bytes, the last NAME_HASH_DIGITS a hash.
MAX_NAME, SHORT_NAME, NAME_HASH_DIGITS = 200, 180, 12


def safe_stem(image_name: str) -> str:
    """A file-name-safe version of a layer or file name: letters and digits of any script,
    ``._-``; any run of other characters becomes ``_`` (``"cell 1"`` -> ``"cell_1"``,
    ``"Zelle ä"`` -> ``"Zelle_ä"``). Unicode is composed first (NFC: macOS names files
    decomposed), and the name does not begin with ``-`` (read as an option by commands).
    A name longer than :data:`MAX_NAME` bytes is cut (:func:`_within_limit`). Only ASCII
    was kept before, so ``日本`` and ``中国`` were both "image", and paired with each
    other's labels."""
    composed = unicodedata.normalize("NFC", _as_utf8(image_name))
    namesake = NAMESAKE_STEM.match(composed)
    if namesake and not _sanitised(namesake.group(1)):  # "🙂-<fingerprint>": the strip
        # ate the name and its "-", leaving "<fingerprint>", which pairs with no image
        composed = "image" + composed[namesake.end(1) :]
    return _as_os_name(_within_limit(not_a_device(_sanitised(composed) or "image")))


def _as_utf8(name: str) -> str:
    """``name`` as a UTF-8 system reads its file name's bytes. Under another locale (Latin-1,
    or C with Python's UTF-8 mode off) Python reads ``中国.tif`` as ``ä¸\xadå\x9b½.tif``
    (or as surrogates): its labels were named ``ä_å_½`` (or ``image``) there, and paired
    with nothing on a UTF-8 machine (nor ``日本`` with its own: both were ``image``). A name
    the locale cannot write (a layer named in a script) is taken as it is."""
    encoding = _non_utf8_encoding()
    if encoding is None:
        return name
    try:
        raw = name.encode(encoding, "surrogateescape")
    except UnicodeEncodeError:
        return name
    return raw.decode("utf-8", "surrogateescape")


def _non_utf8_encoding() -> str | None:
    """The file system's encoding where it is not UTF-8 (a Latin-1 locale, or C without
    Python's UTF-8 mode); None where it is."""
    encoding = sys.getfilesystemencoding()
    return None if encoding.lower().replace("-", "") == "utf8" else encoding


def _as_os_name(stem: str) -> str:
    """The inverse of :func:`_as_utf8`: the ``str`` that this locale writes as the UTF-8
    bytes of ``stem`` (the file names a UTF-8 system gives)."""
    encoding = _non_utf8_encoding()
    if encoding is None:
        return stem
    return stem.encode("utf-8", "surrogateescape").decode(encoding, "surrogateescape")


def _sanitised(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).lstrip("-._").rstrip("._")


def earlier_stems(image_name: str) -> list[str]:
    """The names earlier versions saved ``image_name``'s annotations under, where they
    differ from :func:`safe_stem`'s: ASCII letters only (before 2026-12-06: ``Zelle ä``
    was ``Zelle``, ``cells 10µm`` ``cells_10_m``, ``-cells`` itself), and any letters but
    a Windows device's name kept (``aux``, before 2026-12-07). Their files were found no
    more, unsaid."""
    ascii_only = re.sub(r"[^A-Za-z0-9._-]+", "_", image_name).strip("._") or "image"
    composed = unicodedata.normalize("NFC", image_name)
    any_letters = _within_limit(_sanitised(composed) or "image")
    current = safe_stem(image_name)
    return [s for s in dict.fromkeys((ascii_only, any_letters)) if s != current]


# Names Windows keeps for devices, whatever follows their first dot ("NUL.txt" is NUL).
WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", *(f"{port}{i}" for port in ("COM", "LPT") for i in range(1, 10))]
)


def is_device_name(name: str) -> bool:
    """Whether Windows takes a file of this name for a device (``aux.labels.tif``)."""
    return name.split(".", 1)[0].upper() in WINDOWS_DEVICES


def not_a_device(stem: str) -> str:
    """``stem`` with ``_`` after its first part where Windows would take a file of that name
    for a device: an image named ``aux`` (a channel) is saved as ``aux_.labels.tif``, which
    pairs with it, as ``aux.labels.tif`` (written elsewhere) still does."""
    if not is_device_name(stem):
        return stem
    first, dot, rest = stem.partition(".")
    return f"{first}_{dot}{rest}"


def _within_limit(stem: str) -> str:
    """``stem`` whose name part (without a namesake's ``-<fingerprint>`` and an OME
    ``.ome``, which stay) is cut to :data:`SHORT_NAME` bytes (UTF-8) where it is longer
    than :data:`MAX_NAME`, ending in a hash of the whole, so that the files named after it
    fit the usual limit of 255 bytes (a microscope's export names can be longer). The hash
    is of the name in lower case, as pairing compares names."""
    namesake = NAMESAKE_STEM.match(stem)
    base = namesake.group(1) if namesake else stem
    ome = ".ome" if base.lower().endswith(".ome") else ""
    name = base[: len(base) - len(ome)]
    if len(name.encode()) <= MAX_NAME:
        return stem
    digest = hashlib.sha256(name.lower().encode()).hexdigest()[:NAME_HASH_DIGITS]
    kept = name.encode()[: SHORT_NAME - NAME_HASH_DIGITS - 1].decode(errors="ignore")
    return f"{kept}_{digest}{ome}{stem[len(base) :]}"
