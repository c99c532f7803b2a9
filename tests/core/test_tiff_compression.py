"""Compressed TIFFs, as microscope software, QuPath and Bio-Formats write them: LZW and
others need the codecs of imagecodecs, and a file that could not be decoded was called
"truncated, damaged or still being written"."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune.core.tiff_files import read_tiff


@pytest.mark.parametrize("compression", ["lzw", "zstd", "jpeg"])
def test_compressed_tiffs_read(tmp_path, compression):
    image = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image, compression=compression)
    pixels = read_tiff(path)
    assert pixels.shape == image.shape
    if compression != "jpeg":  # (lossy)
        np.testing.assert_array_equal(pixels, image)


def test_a_codec_tifffile_cannot_load_is_not_called_damage(tmp_path, monkeypatch):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), compression="lzw")

    def no_codec(*args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_codec)
    with pytest.raises(ValueError, match="pip install imagecodecs") as raised:
        read_tiff(path)
    assert "damaged" not in str(raised.value)
