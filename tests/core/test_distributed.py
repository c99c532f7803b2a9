"""Distributed training: two gloo processes on the CPU train as one."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from napari_samtune.core import distributed as ddp
from napari_samtune.core.presets import TrainConfig
from napari_samtune.core.synthetic import make_dataset


def test_shards_are_equal_sized_and_cover_everything():
    indices = np.arange(7)
    shards = [ddp.shard(indices, ddp.DistributedContext(rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert set(np.concatenate(shards)) == set(range(7))  # one index repeats to even them out
    even = [set(ddp.shard(np.arange(6), ddp.DistributedContext(r, 3))) for r in range(3)]
    assert set.union(*even) == set(range(6)) and sum(map(len, even)) == 6
    assert np.array_equal(ddp.shard(indices, ddp.DistributedContext()), indices)
    rng = np.random.default_rng(0)
    owned = [set(ddp.shard(rng.permutation(7), ddp.DistributedContext(1, 3))) for _ in range(5)]
    assert all(o == {1, 4} for o in owned)  # a rank keeps its samples (and cached embeddings)
    single = ddp.DistributedContext()
    assert not single.enabled and single.is_main
    assert ddp.all_reduce_sum([1.0, 2.0], single, torch.device("cpu")).tolist() == [1.0, 2.0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, config: TrainConfig, data, out_dir, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    from napari_samtune.core.train import Trainer

    trainer = Trainer(config, data[0], data[1], out_dir, None, None, None)
    try:
        events = list(trainer.run())
    finally:
        ddp.shutdown(trainer.dist)
    summary = {
        "losses": [e.loss for e in events if type(e).__name__ == "StepDone"],
        "val": [e.val_metrics for e in events if type(e).__name__ == "EpochDone"],
        "exported": events[-1].exported_model_path,
        "world_size": events[0].world_size,
    }
    torch.save({"state": trainer.sam.state_dict(), "summary": summary}, f"{results}/rank{rank}.pt")


def test_two_gloo_processes_train_with_synchronised_gradients(tmp_path):
    config = TrainConfig(
        model="random:tiny",
        epochs=2,
        learning_rate=3e-3,
        n_objects_per_batch=2,
        min_samples_per_epoch=4,
        n_iterative_prompts=1,
        mixed_precision="no",
        early_stopping=None,
    )
    data = make_dataset(3, shape=(96, 96), seed=0), make_dataset(2, shape=(96, 96), seed=9)
    port = _free_port()
    mp.spawn(_worker, args=(2, port, config, data, tmp_path / "run", tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    first, second = (r["summary"] for r in ranks)
    assert first["world_size"] == 2 and len(first["losses"]) == 4  # 2 steps per epoch each
    assert first["losses"] != second["losses"]  # each rank trained on its own patches ...
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # ... yet the weights stay identical
    from napari_samtune.core.model_source import load_base_model

    initial = load_base_model("random:tiny")[0].state_dict()
    assert not torch.equal(
        a["mask_decoder.iou_token.weight"], initial["mask_decoder.iou_token.weight"]
    )
    assert first["val"] == second["val"]  # metrics reduced over ranks
    assert first["exported"] is not None and second["exported"] is None  # only rank 0 writes
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


if not torch.distributed.is_available():  # pragma: no cover - builds without distributed
    pytestmark = pytest.mark.skip(reason="torch.distributed is not available in this build")
