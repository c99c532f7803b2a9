"""Which file holds each user model's weights in the user-models folder: the one its
description names, the two it alternates between as it is replaced, where new weights go
without writing over a file another model (or nobody) names, and which stray file holds
the very same weights (a registration cut short)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from napari_samtune.core.checkpoints import one_file
from napari_samtune.core.registry import user_models_dir

# the files a description may name as its weights (registering writes .pt)
WEIGHTS_SUFFIXES = (".pt", ".pth")


def new_weights_path(name: str, replaced: Path | None) -> tuple[Path, list[Path]]:
    """Where user model ``name``'s new weights go: ``<name>.pt``, or ``<name>.pth`` when
    they replace the weights in that file, so that the model's description names whole
    weights at every moment (the old file until the new description is written). No file
    there is written over: one that another description names (copied by hand), nor one
    that none names (the weights ``samtune models --remove`` kept, a file put there by
    hand: replaced unsaid, they were lost), which is said; the weights then go to
    ``<name>-2.pt`` (or the next free name; a model named ``<name>-2`` then stores its own
    in ``<name>-2.pth``). Returns the path and those files."""
    in_use, strays = weights_in_use(), []

    def free(path: Path) -> bool:
        if path == replaced or path in in_use:
            return False
        if is_stray(path, in_use):
            strays.append(path)
            return False
        return True

    numbered = (user_models_dir() / f"{name}-{n}.pt" for n in itertools.count(2))
    path = next(filter(free, itertools.chain(own_weights(name), numbered)))
    return path, strays


def is_stray(path: Path, in_use: set[Path]) -> bool:
    """Whether ``path`` is a file in the user models folder that no description names
    (``in_use``: :func:`weights_in_use`): never written over, and said where left."""
    return path not in in_use and path.exists()


def onto_own_stray(weights_path: Path, strays: list[Path]) -> Path:
    """``weights_path``, or the stray file (of ``strays``, then dropped from them) that holds
    the very same weights, moved over by them: a registration of the same model killed
    between its weights and its description (a run's end, ``samtune export --register``)
    left them, and registering again kept two copies and asked to delete one by hand.
    (By the tensors: torch writes a file's name into it, so the bytes differ.)"""
    ours = None
    for stray in strays:
        theirs = weights_digest(stray)
        if theirs is None:
            continue
        ours = ours or weights_digest(weights_path)
        if theirs == ours:
            weights_path.replace(stray)
            strays.remove(stray)
            return stray
    return weights_path


def weights_digest(path: Path) -> str | None:
    """The digest of the state dict in ``path`` (mapped, not read whole), or None where the
    file holds none."""
    import torch

    from napari_samtune.core.models import state_dict_digest

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a PyTorch file, or cut short: not these weights
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return state_dict_digest(state)


def own_weights(name: str) -> list[Path]:
    """The two files user model ``name``'s weights alternate between as it is replaced."""
    return [user_models_dir() / f"{name}{suffix}" for suffix in WEIGHTS_SUFFIXES]


def weights_in_use(besides: Path | None = None) -> set[Path]:
    """The weights files the model descriptions name, but description ``besides`` (under
    any of its names: ``Cells.json`` is ``cells.json`` on a case-insensitive disk)."""
    sidecars = user_models_dir().glob("*.json")
    return {
        weights_named_by(sidecar)
        for sidecar in sidecars
        if besides is None or not (sidecar == besides or one_file(sidecar, besides))
    }


def named_weights(sidecar: Path) -> Path | None:
    """The weights file that description ``sidecar`` names; None where it names none, or a
    file of another kind: a description naming another model's description had
    ``samtune models --remove`` delete that one (and --rename move it)."""
    try:
        filename = json.loads(sidecar.read_text(encoding="utf-8"))["filename"]
        named = user_models_dir() / Path(str(filename)).name
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return named if named.suffix in WEIGHTS_SUFFIXES else None


def weights_named_by(sidecar: Path) -> Path:
    """The weights file that user model description ``sidecar`` names (for a broken one
    that names none, its usual ``<name>.pt``, kept from being written over)."""
    return named_weights(sidecar) or sidecar.with_suffix(".pt")


def stray_note(stray: Path, name: str, stored: Path) -> str:
    """The warning that file ``stray``, named by no user model, was left as it is beside
    user model ``name``'s weights ``stored``."""
    return (
        f"{stray} is named by no user model (weights kept by 'samtune models --remove', "
        "a registration cut short, or a file put there by hand), so it is left as it "
        f"is; {name!r} is stored in {stored.name}. Delete {stray.name} by hand if "
        "it is not needed"
    )
