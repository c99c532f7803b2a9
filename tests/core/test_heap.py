"""glibc allocator settings: interactive, and for long batch work (training, automatic)."""

import platform
import subprocess
import sys

import numpy as np
import pytest

from napari_samtune.core import automatic, heap, predict
from napari_samtune.core.heap import tune_cpu_allocator

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)


@glibc_only
def test_allocator_tuning_is_accepted_by_glibc():
    assert tune_cpu_allocator() is True  # False if glibc refused either threshold


HEAP_SCRIPT = """
import ctypes
import torch  # the heap as the real jobs have it (small allocations reuse its free chunks)
from napari_samtune.core.heap import keep_freed_memory, tune_cpu_allocator

FIELDS = ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost")

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.mallinfo2.restype = MallInfo2

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def mapped_apart(mib):  # glibc serves a block this large with its own mmap
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(mib * 2**20)
    mapped = libc.mallinfo2().hblkhd - before >= mib * 2**20
    libc.free(block)
    return mapped

def freed_blocks_kept(mib, count):
    blocks = [libc.malloc(mib * 2**20) for _ in range(count)]
    for block in blocks:
        libc.memset(block, 1, mib * 2**20)
    before = rss_mib()
    for block in reversed(blocks):
        libc.free(block)
    return before - rss_mib() < 100  # True: what was freed stayed with the process

def both():  # a 300 MiB block first, while the heap's top is still small
    return mapped_apart(300), freed_blocks_kept(100, 6)

tune_cpu_allocator()
results = [*both()]
with keep_freed_memory() as done:
    with keep_freed_memory():
        pass
    results += both()  # still inside the outer job
    inside = rss_mib()
results.append(inside - rss_mib() > 400)  # handed back when the last job ended
results += both()  # the interactive settings are back
print(done, *results)
"""


@glibc_only
def test_batch_work_keeps_freed_memory_for_reuse_and_returns_it_afterwards():
    done = subprocess.run(
        [sys.executable, "-c", HEAP_SCRIPT], capture_output=True, text=True, check=True
    )
    took, *seen = (word == "True" for word in done.stdout.split())
    assert took
    interactive, batch, returned, interactive_again = seen[:2], seen[2:4], seen[4], seen[5:]
    assert interactive == [True, False]  # 300 MiB mapped apart; 600 MiB of free heap trimmed
    assert batch == [False, True]  # 300 MiB from the heap; the 600 MiB kept for the next step
    assert returned
    assert interactive_again == [True, False]


def test_batched_decoding_on_the_cpu_keeps_freed_memory(tiny_sam, monkeypatch):
    """Automatic segmentation, and one object per box or point over several chunks: the
    settings for batch work are on while they decode, and off again afterwards."""
    entered = []
    original = predict.keep_freed_memory

    def recording():
        entered.append(True)
        return original()

    monkeypatch.setattr(predict, "keep_freed_memory", recording)
    segmenter = predict.Segmenter(tiny_sam, model_id="tiny", use_disk_cache=False)
    segmenter.set_image(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    segmenter.segment_all(automatic.AutoSegmentConfig(points_per_side=4))
    boxes = np.array([[5.0, 5.0, 30.0, 30.0], [20.0, 20.0, 60.0, 50.0]])
    points = np.array([[10.0, 12.0], [40.0, 30.0]])
    segmenter.predict_boxes(boxes)  # one chunk: interactive settings kept (switching costs)
    segmenter.predict_points_batched(points)
    assert entered == [True]
    segmenter.batch_size = 1  # now two chunks each
    segmenter.predict_boxes(boxes)
    segmenter.predict_points_batched(points)
    assert entered == [True, True, True]
    assert heap._batch_work == 0
