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
        (["--preset", "nope"], "unknown preset 'nope'; choose one of"),
        # the auto-detected preset here (a CPU one) does not train vit_b's encoder
        (["--model", "vit_b", "--preset", "cpu-16gb"], "preset 'cpu-16gb' (CPU, 16 GB"),
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


def test_a_demo_whose_model_cannot_be_downloaded_writes_no_data(tmp_path, capsys, monkeypatch):
    """Offline, ``demo --model vit_t`` generated its images first, then failed to download
    the model: every try left a new ``data-N`` folder."""
    import urllib.error

    import napari_samtune.core.fetch as fetch

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(fetch, "_request", offline)
    out = tmp_path / "demo"
    for _ in range(2):
        assert main(["demo", "--quick", "--model", "vit_t", "--out", str(out)]) != 0
        assert "could not download" in capsys.readouterr().err
    assert not out.exists() or not any(out.glob("data*"))


def test_the_demo_trains_with_the_preset_given(monkeypatch):
    """Its error for vit_b said to choose a preset measured for vit_b, which the demo had
    no option for."""
    from napari_samtune.core import devices
    from napari_samtune.core.demo import DemoConfig, finetune_config

    monkeypatch.setattr(devices, "cuda_available", lambda: True)  # as on a GPU machine

    config, reason = finetune_config(DemoConfig(model="vit_b", preset="cpu-8gb"))
    assert (config.preset, config.freeze, config.model) == ("cpu-8gb", ("image_encoder",), "vit_b")
    assert reason == "chosen as 'cpu-8gb'"
    assert finetune_config(DemoConfig(model="nano", preset="a100"))[0].device == "cuda"
