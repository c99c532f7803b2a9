"""``samtune export``: a training checkpoint -> a plain SAM state dict (LoRA merged)."""

from __future__ import annotations

import argparse

from napari_samtune.cli import output_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a training checkpoint as a plain SAM model file",
        description=(
            "Write the model of a napari-samtune training checkpoint (best.pt or last.pt) "
            "as a plain Segment Anything state dict, LoRA adapters merged, which the "
            "official segment_anything code loads with strict loading."
        ),
    )
    parser.add_argument("checkpoint", help="a training checkpoint (best.pt / last.pt)")
    parser.add_argument(
        "-o", "--output", type=output_file("model.pth"), required=True, help="model file to write"
    )
    parser.add_argument("--register", metavar="NAME", help="also register it as user model NAME")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_samtune.core.train_checkpoints import export_model

    exported, arch = export_model(args.checkpoint, args.output)
    print(f"exported {arch.name} model: {exported}")
    if args.register:
        from napari_samtune.core.registry import register_user_model
        from napari_samtune.core.train_export import check_model_name

        name = check_model_name(args.register)
        path = register_user_model(exported, name, arch, {"exported_from": str(args.checkpoint)})
        print(f"registered as {name!r}: {path}")
    return 0
