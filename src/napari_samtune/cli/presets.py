"""``samtune presets``: the measured resource presets, and what this machine would use."""

from __future__ import annotations

import argparse

from napari_samtune.core.presets import PRESETS, ResourcePreset

HEADER = ("preset", "name", "memory", "model", "trained", "objects/batch", "batch size")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="show the training presets and which one this machine gets",
        description=(
            "Show the measured training presets (memory, model, what is trained, objects "
            "per batch) and which preset '--preset auto' picks on this machine, and why."
        ),
    )
    parser.set_defaults(func=run)


def preset_rows(preset: ResourcePreset) -> list[tuple[str, ...]]:
    rows = []
    for i, setting in enumerate(preset.settings):
        trained = "all" if not setting.freeze else f"all but {', '.join(setting.freeze)}"
        first = i == 0
        rows.append(
            (
                preset.key if first else "",
                preset.name if first else "",
                f"{preset.memory_gb:g} GB" if first else "",
                setting.model,
                trained,
                str(setting.n_objects_per_batch),
                str(setting.batch_size),
            )
        )
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [HEADER, *rows]
    )


def run(args: argparse.Namespace) -> int:
    from napari_samtune.core.architectures import ARCHITECTURES
    from napari_samtune.core.presets import detect_on, for_model, measure_machine

    print(format_table([row for preset in PRESETS for row in preset_rows(preset)]))
    first = PRESETS[0]
    print(
        f"\nall presets: patches of the model's input size, >= {first.min_samples_per_epoch} "
        f"samples per epoch, Adam lr {first.learning_rate:g}, ReduceLROnPlateau, early "
        f"stopping after {first.early_stopping} epochs, at most {first.epochs} epochs"
    )
    found = measure_machine()
    gpu = f"{found.gpu_name}, {found.gpu_memory_gb:.1f} GB" if found.gpu_name else "none"
    note = f" ({found.note})" if found.note else ""
    print(f"\nthis machine: GPU {gpu}{note}; RAM {found.ram_gb:.1f} GB; {found.n_cores} CPU cores")
    preset, reason = detect_on(found)
    print(f"--preset auto chooses {preset.key!r}: {reason}")
    for name in ("vit_t", "vit_b", "vit_l", "vit_h"):  # the models it has no row for
        instead, _ = for_model(preset, ARCHITECTURES[name])
        if instead is not preset:
            print(f"  for {name}: {instead.key}'s setting ({preset.key} has none for it)")
    return 0
