"""Where the Segmenter runs: where the model was loaded, unless a device is asked for."""

from __future__ import annotations

from napari_samtune.core.architectures import TINY, build_sam
from napari_samtune.core.devices import resolve_device
from napari_samtune.core.predict import Segmenter


def test_the_segmenter_leaves_the_model_on_the_device_it_was_loaded_to():
    """Its default device was "cpu": Segmenter(load_model(name, device="cuda").sam) moved the
    model back to the CPU. The meta device stands in for a GPU (every machine has it; a move
    from it to the CPU fails)."""
    sam = build_sam(TINY).to("meta")
    segmenter = Segmenter(sam, model_id="tiny", use_disk_cache=False)
    assert segmenter.model.device.type == "meta"


def test_a_device_asked_for_is_where_the_model_goes(tiny_sam):
    segmenter = Segmenter(tiny_sam, model_id="tiny", device="auto", use_disk_cache=False)
    assert segmenter.model.device.type == resolve_device("auto").type
