"""Model loading: time and memory from a weights file to a model ready to embed.

For each model a weights file of random weights (nothing can be downloaded here) is written
once; then fresh child processes, alternating, each load it once:

* ``stock``: the official builder with the file, ``segment_anything.sam_model_registry[name]
  (checkpoint=path)`` (``mobile_sam``'s for vit_t): it builds the model with random weights,
  then copies the file's weights in;
* ``samtune``: ``load_model(path)``, what the widgets and the command line do: the model is
  built without weights and takes the file's tensors (``sam_to_load`` / ``load_weights``).
  It also computes the weights' digest (the embedding cache's key for a file that is not a
  registered model).

Each child reports the load's wall time and its peak resident memory (``VmHWM``) above what
the process held before the load. The file is read once before each child, so both find it
in the page cache; the table shows the best of ``--repeats`` of each and the ratio stock /
samtune. The stock load holds the model twice: on a VM that backs new memory slowly, the
second copy costs far more than its read (as a user's load there would).

Run: ``.venv/bin/python benchmarks/bench_load.py [--models vit_t vit_b vit_h] [--repeats 2]
[--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def stock_loader(name: str):
    if name == "vit_t":
        from mobile_sam import sam_model_registry
    else:
        from segment_anything import sam_model_registry
    return lambda path: sam_model_registry[name](checkpoint=str(path))


def samtune_loader(name: str):
    from napari_samtune.core.models import load_model

    if name == "vit_t":  # imported before the clock starts, as the stock loader's is
        import mobile_sam  # noqa: F401

    return lambda path: load_model(path, architecture=name).sam


def child(kind: str, name: str, path: Path) -> dict:
    import torch
    from bench_device import process_status_mb

    load = (stock_loader if kind == "stock" else samtune_loader)(name)
    before = process_status_mb("VmRSS")
    start = time.perf_counter()
    sam = load(path)
    seconds = time.perf_counter() - start
    # the model must be whole: every weight real and finite
    if any(t.is_meta or not torch.isfinite(t).all() for t in sam.state_dict().values()):
        raise RuntimeError(f"{kind} loaded {name} with missing or non-finite weights")
    return {"seconds": seconds, "added_mb": process_status_mb("VmHWM") - before}


def write_weights(name: str, folder: Path) -> Path:
    import torch

    from napari_samtune.core.architectures import build_sam
    from napari_samtune.core.models import export_sam_state_dict

    torch.manual_seed(0)
    return export_sam_state_dict(build_sam(name), folder / f"{name}.pth")


def run_child(kind: str, name: str, path: Path, threads: int) -> dict:
    with open(path, "rb") as file:  # into the page cache, for either loader alike
        while file.read(1 << 24):
            pass
    command = [sys.executable, __file__, "--child", kind, name, str(path)]
    command += ["--threads", str(threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b", "vit_h"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "PATH"), help="internal")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        kind, name, path = args.child
        print(json.dumps(child(kind, name, Path(path))))
        return
    from bench_device import describe

    print(f"Model loading on {describe('cpu')}, {args.threads} threads")
    header = "| model | file | stock s | samtune s | stock / samtune | stock MB | samtune MB |"
    print(header + "\n|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            path = write_weights(name, Path(folder))
            runs = {"stock": [], "samtune": []}
            for repeat in range(args.repeats):
                order = ("stock", "samtune") if repeat % 2 == 0 else ("samtune", "stock")
                for kind in order:
                    runs[kind].append(run_child(kind, name, path, args.threads))
            best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
            added = {k: min(r["added_mb"] for r in v) for k, v in runs.items()}
            size_mb = path.stat().st_size / 2**20
            print(
                f"| {name} | {size_mb:.0f} MB | {best['stock']:.2f} | {best['samtune']:.2f} | "
                f"{best['stock'] / best['samtune']:.1f}x | {added['stock']:.0f} | "
                f"{added['samtune']:.0f} |",
                flush=True,
            )
            path.unlink()


if __name__ == "__main__":
    main()
