"""What an image's previews were segmented with, kept with its preview layer.

The Annotate widget numbers each model it loads, and each change of an image's pixels or
channels, with numbers unique in the process (:func:`next_basis`); each preview layer
records the pair its previews were made under. Previews of an image chosen again after
another model was loaded, or put back by U after any of these changes, lag their prompts:
committed, the old model's masks were recorded as the new model's work.
"""

from __future__ import annotations

import itertools
import weakref

_NUMBERS = itertools.count(1)
_MADE_UNDER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # preview -> number


def next_basis() -> int:
    """A number no model, channel or pixel change of any widget had before."""
    return next(_NUMBERS)


def made_under(preview) -> tuple[int, int] | None:
    """The (model, pixels and channels) numbers the previews of the preview layer
    ``preview`` were made under; None where no widget segmented into it."""
    return _MADE_UNDER.get(preview)


def record_made_under(preview, basis: tuple[int, int]) -> None:
    """Its previews are (from now on) made under ``basis``."""
    _MADE_UNDER[preview] = basis
