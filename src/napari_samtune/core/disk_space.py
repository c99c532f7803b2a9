"""Free space for a training run, checked before it starts.

A run writes its checkpoints after each epoch and its model at the end: on a disk without
room for them, it failed only then, after an epoch of (on a CPU, hours of) training. The
bytes a run needs follow from its model, known once it is built: what it writes into its
output folder at the most (best.pt, last.pt and last.pt's next version before it replaces
it, model.pth) and the registered copy of model.pth in the user-models folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from napari_samtune.core.lora import adapter_state_dict

# Adam's two moments per trained weight (exp_avg, exp_avg_sq), as large as the weight
ADAM_MOMENTS = 2
# what torch.save adds per tensor (its zip entry, aligned to 64 bytes, and its key): a
# tenth of a small model's file
FILE_BYTES_PER_TENSOR = 256
# a checkpoint's next version, against the one on disk (its history grows by an epoch)
NEXT_CHECKPOINT_GROWTH = 1.01


def tensor_bytes(tensors: Iterable) -> int:
    """The bytes of ``tensors`` in a file that ``torch.save`` writes."""
    return sum(t.numel() * t.element_size() + FILE_BYTES_PER_TENSOR for t in tensors)


def run_needs(
    sam: nn.Module, trainable_only: bool, out_dir: Path, models_dir: Path
) -> dict[Path, int]:
    """The bytes a run still has to find free in each folder: at its fullest, ``out_dir``
    holds best.pt, last.pt, the next last.pt being written, and model.pth (the files of an
    earlier session of a resumed run count as there already), and ``models_dir`` the
    registered copy of model.pth."""
    model = tensor_bytes(sam.state_dict().values())
    trained = tensor_bytes(p for p in sam.parameters() if p.requires_grad)
    # a whole checkpoint holds the LoRA layers' base weights twice: merged in its model
    # state, and as they are beside the adapters (vit_b's qkv: a quarter of its weights)
    bases = tensor_bytes(adapter_state_dict(sam, with_base=True).values())
    bases -= tensor_bytes(adapter_state_dict(sam, with_base=False).values())
    weights = trained if trainable_only else model + bases  # a checkpoint's model state
    moments = ADAM_MOMENTS * trained  # last.pt's optimizer state
    checkpoints = out_dir / "checkpoints"
    best, last, exported = (
        _size(f) for f in (checkpoints / "best.pt", checkpoints / "last.pt", out_dir / "model.pth")
    )
    # the next last.pt of a resumed run: as large as the one there, which says its size
    # better than its tensors do (its pickled config and history: nano's 0.4 % more, and a
    # run estimated to fit by that much failed writing it), and a little more (its history)
    next_last = max(weights + moments, int(last * NEXT_CHECKPOINT_GROWTH))
    written = (
        max(0, weights - best) + max(0, weights + moments - last) + next_last
        + max(0, model - exported)
    )  # fmt: skip
    if Path(out_dir).absolute() == Path(models_dir).absolute():  # one folder: both there
        return {out_dir: written + model}
    return {out_dir: written, models_dir: model}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def space_problem(needs: dict[Path, int], fixes: dict[Path, str]) -> str | None:
    """What stops a run that ``needs`` the bytes in its folders (:func:`run_needs`): a disk
    with less free space than the folders on it need together, said with ``fixes`` (the
    other folder to choose, by folder). None when they fit, or where the free space cannot
    be read (a network folder, say: its writes will tell)."""
    disks: dict[int, tuple[list[Path], int, int]] = {}
    for folder, need in needs.items():
        try:
            device, free = disk_of(folder)
        except OSError:
            continue
        folders, total, _ = disks.get(device, ([], 0, free))
        disks[device] = (folders + [folder], total + need, free)
    for folders, need, free in disks.values():
        if need > free:
            where = " and ".join(str(f) for f in folders)
            other = " or ".join(fixes[f] for f in folders)
            has, needs = _gb(free), _gb(need)
            if has == needs:  # "has 21 MB free, and this run needs about 21 MB"
                has, needs = f"{free:,} bytes", f"{need:,} bytes"
            return (
                f"the disk holding {where} has {has} free, and this run needs about "
                f"{needs} there for its checkpoints and model; free space on it, or "
                f"{other} on a disk with more room"
            )
    return None


def disk_of(folder: Path) -> tuple[int, int]:
    """``(device id, free bytes)`` of the disk that holds ``folder``, or will: a run's
    folder is made later, so its nearest existing parent is asked."""
    folder = Path(folder).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    return os.stat(existing).st_dev, shutil.disk_usage(existing).free


def _gb(n_bytes: int) -> str:
    if n_bytes < 2**20:
        return f"{n_bytes / 2**10:.0f} KB"
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:.0f} MB"
    return f"{n_bytes / 2**30:.1f} GB"
