"""``samtune`` command line: mistakes found by using it as a first-time user would."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune.cli import main
from napari_samtune.core.synthetic import make_image


def segment(checkpoint, image, out, *options: str) -> int:
    return main(["segment", str(image), "--model", str(checkpoint), "-o", str(out), *options])


def test_prompted_labels_into_a_folder_keep_a_namesake_s_labels(tmp_path, tiny_checkpoint, capsys):
    """With -o a folder, a prompt file's labels took ``<image>.labels.tif`` even where that
    file held another image's labels of the same name (Image_001.tif of another experiment):
    it was refused as this image's, suggesting --overwrite, which destroyed the other's. As
    with --auto, they now go beside it under ``<image>-<fingerprint>.labels.tif``."""
    from napari_samtune.core.label_files import image_fingerprint

    out, points = tmp_path / "annotations", tmp_path / "p.csv"
    points.write_text("x,y\n40,50\n")
    for seed, experiment in enumerate(["exp1", "exp2"]):
        (tmp_path / experiment).mkdir()
        tifffile.imwrite(tmp_path / experiment / "cell.tif", make_image((96, 128), seed=seed)[0])
    assert segment(tiny_checkpoint, tmp_path / "exp1" / "cell.tif", f"{out}/", "--auto") == 0
    first = tifffile.imread(out / "cell.labels.tif")
    second = tmp_path / "exp2" / "cell.tif"
    own = out / f"cell-{image_fingerprint(tifffile.imread(second))}.labels.tif"
    assert segment(tiny_checkpoint, second, out, "--points", str(points)) == 0
    assert f"written to {own}" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(out / "cell.labels.tif"), first)
    assert tifffile.imread(own).max() >= 1
    # its own labels are then the ones a rerun finds, and keeps unless --overwrite
    assert segment(tiny_checkpoint, second, out, "--points", str(points)) == 2
    assert f"-o {str(own)!r} exists already" in capsys.readouterr().err
    assert segment(tiny_checkpoint, second, out, "--points", str(points), "--overwrite") == 0
    np.testing.assert_array_equal(tifffile.imread(out / "cell.labels.tif"), first)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--epochs", "0"], "--epochs 0; use a whole number >= 1"),
        (["--samples", "0"], "--samples 0; use a whole number >= 1"),
        (["--lr", "-1"], "--lr -1.0; use a positive number"),
        (["--model", "nope"], "--model nope is neither a model name"),
        (["--model", "random:bogus"], "unknown architecture 'bogus'"),
    ],
)
def test_demo_mistakes_name_the_options_and_write_nothing(tmp_path, capsys, options, said):
    """``samtune demo`` named its options by the core's names (``samples_per_epoch=0``,
    ``model='nope'``), and an unknown --model (or one the preset cannot fit) was refused
    only after the demo's images had been written into --out."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), *options]) == 2
    err = capsys.readouterr().err
    assert said in err and "=" not in err.split(said)[0]
    assert not out.exists()
