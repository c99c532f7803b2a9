"""What an image's previews were segmented with, kept with its preview layer.

The Annotate widget numbers each change that makes every preview stale (another model,
other channels, new pixels) with a number unique in the process (:func:`next_basis`), and
each preview layer records the number its previews were made under. Previews of an image
chosen again after another one, or put back by U, that were made under an earlier number
lag their prompts: committed, the old model's masks were recorded as the new model's work.
"""

from __future__ import annotations

import itertools
import weakref

_NUMBERS = itertools.count(1)
_MADE_UNDER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # preview -> number


def next_basis() -> int:
    """A number no model, channel or pixel change of any widget had before."""
    return next(_NUMBERS)


def made_under(preview) -> int | None:
    """The number the previews of the preview layer ``preview`` were made under; None
    where no widget segmented into it."""
    return _MADE_UNDER.get(preview)


def record_made_under(preview, basis: int) -> None:
    """Its previews are (from now on) made under ``basis``."""
    _MADE_UNDER[preview] = basis
