"""Distributed training: two gloo processes on the CPU train as one."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from napari_samtune.core import distributed as ddp
from napari_samtune.core.architectures import TINY, build_sam
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


def test_more_processes_than_gpus_is_refused_on_every_rank(monkeypatch):
    """`torchrun --nproc-per-node 2` on a machine with one GPU: the second process failed
    with CUDA's "invalid device ordinal", and the first waited for it."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cuda = torch.device("cuda")
    for rank in (0, 1):
        with pytest.raises(ValueError, match=r"started 2 training processes .* has 1 CUDA"):
            ddp.device_for(ddp.DistributedContext(rank, 2, rank), cuda)
    assert chosen == []
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # two machines, one process each
    assert ddp.device_for(ddp.DistributedContext(1, 2, 0), cuda) == torch.device("cuda", 0)
    assert chosen == [0]
    cpu = torch.device("cpu")
    assert ddp.device_for(ddp.DistributedContext(1, 2, 1), cpu) == cpu  # gloo on the CPU


def test_a_gpu_index_under_torchrun_is_refused_on_every_rank(monkeypatch):
    """`torchrun ... samtune train --device cuda:1` trained rank 0 on cuda:0 and rank 1
    on cuda:1 without a word: the index was silently replaced by each rank's own GPU."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for index in (0, 1):
        for rank in (0, 1):  # also where the index is the rank's own: the other refuses
            with pytest.raises(ValueError) as refused:
                ddp.device_for(ddp.DistributedContext(rank, 2, rank), torch.device("cuda", index))
            said = str(refused.value)
            assert said.startswith(f"device='cuda:{index}' names one GPU, but under torchrun")
            assert "the GPU of its LOCAL_RANK (cuda:0..cuda:1 for the 2 process(es)" in said
            assert "pass device='cuda' (no index)" in said and "CUDA_VISIBLE_DEVICES" in said
    assert chosen == []
    cuda = torch.device("cuda")
    assert ddp.device_for(ddp.DistributedContext(1, 2, 1), cuda) == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process per machine: GPU 0 is its own
    one = ddp.DistributedContext(1, 2, 0)
    assert ddp.device_for(one, torch.device("cuda", 0)) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"'cuda:1' names one GPU"):
        ddp.device_for(one, torch.device("cuda", 1))
    assert chosen == [1, 0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun gives worker ``rank``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)


def _worker(rank: int, world_size: int, port: int, config: TrainConfig, data, out_dir, results):
    _join(rank, world_size, port)
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


def test_two_gloo_processes_train_with_synchronised_gradients(tmp_path, capfd):
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
    # DDP's "find_unused_parameters=True was specified ... but did not find any unused
    # parameters" came from every rank, whenever a step used every prompt embedding
    assert "find_unused_parameters" not in capfd.readouterr().err


def test_ddp_looks_for_unused_parameters_only_where_a_step_can_leave_some():
    from napari_samtune.core.model_source import load_base_model
    from napari_samtune.core.train_setup import may_leave_parameters_unused, set_trainable

    sam = load_base_model("random:tiny")[0]
    for freeze, lora_rank, may in [
        ((), 0, True),
        (("image_encoder",), 0, True),
        (("image_encoder", "mask_decoder"), 0, True),  # the prompt embeddings train
        (("prompt_encoder", "mask_decoder"), 0, False),  # the encoder alone: used whole
        (("prompt_encoder", "mask_decoder"), 2, False),  # its LoRA adapters alone
    ]:
        config = TrainConfig(model="random:tiny", freeze=freeze, lora_rank=lora_rank)
        set_trainable(sam, config)
        assert may_leave_parameters_unused(sam) is may, freeze


def _failing_worker(rank: int, port: int, config: TrainConfig, data, out_dir, results):
    """Rank 1 fails on its third training sample (bad data only it sees) and exits."""
    _join(rank, 2, port)
    from napari_samtune.core import trainer
    from napari_samtune.core.train import iter_train

    if rank == 1:
        real, calls = trainer.Trainer._training_input, []

        def bad_third(self, index, epoch):
            calls.append(index)
            if len(calls) == 3:
                raise ValueError("a label image rank 1 cannot read")
            return real(self, index, epoch)

        trainer.Trainer._training_input = bad_third
    try:
        list(iter_train(config, data[0], data[1], out_dir))
    except Exception as err:  # recorded for the test; the process then exits
        (results / f"rank{rank}.txt").write_text(f"{type(err).__name__}: {err}")


def test_a_process_failing_alone_makes_the_others_stop_saying_why(tmp_path):
    """Rank 0 died of gloo's "Connection closed by peer" traceback, naming no cause."""
    config = TrainConfig(
        model="random:tiny",
        epochs=2,
        n_objects_per_batch=1,
        min_samples_per_epoch=8,
        n_iterative_prompts=0,
        mixed_precision="no",
    )
    data = make_dataset(2, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=9)
    args = (_free_port(), config, data, tmp_path / "run", tmp_path)
    mp.spawn(_failing_worker, args=args, nprocs=2, join=True)
    assert (tmp_path / "rank1.txt").read_text() == "ValueError: a label image rank 1 cannot read"
    said = (tmp_path / "rank0.txt").read_text()
    assert said.startswith("PeerLostError: training process 0 of 2 lost contact with the ")
    assert "another process of this run failed or was stopped" in said
    assert "by peer" in said and "pair.cc" not in said  # gloo's words, not its source file


def _stopping_worker(rank: int, ports: tuple, config: TrainConfig, data, out_dir, results):
    """Stop after the first step, then resume (2 processes both times); record the losses."""
    import threading

    from napari_samtune.core.train import EpochDone, StepDone, iter_train

    stop, losses, epoch_losses = threading.Event(), [], []
    for port, resume in zip(ports, (None, out_dir), strict=True):
        _join(rank, 2, port)
        for event in iter_train(config, data[0], None, out_dir, stop, resume):
            if isinstance(event, StepDone):
                losses.append(event.loss)
                if resume is None:
                    stop.set()  # on every rank, as Ctrl+C: after this step
            elif isinstance(event, EpochDone):
                epoch_losses.append(event.train_loss)
        stop.clear()
    torch.save({"losses": losses, "epoch_losses": epoch_losses}, results / f"rank{rank}.pt")


def test_a_run_stopped_mid_epoch_and_resumed_averages_every_processs_loss(tmp_path):
    """The checkpoint kept rank 0's loss sum of the epoch so far, and every resumed rank
    started from it: the epoch's train loss (without validation, the metric that picks
    the best epoch) counted rank 0's first steps twice and rank 1's not at all."""
    config = TrainConfig(
        model="random:tiny",
        epochs=1,
        learning_rate=3e-3,
        n_objects_per_batch=1,
        min_samples_per_epoch=4,
        n_iterative_prompts=0,
        mixed_precision="no",
        val_fraction=0.0,
    )
    data = make_dataset(2, shape=(64, 64), seed=0), None
    args = ((_free_port(), _free_port()), config, data, tmp_path / "run", tmp_path)
    mp.spawn(_stopping_worker, args=args, nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [len(r["losses"]) for r in ranks] == [2, 2]  # 1 step, stop; the other step
    every_step = [loss for r in ranks for loss in r["losses"]]
    assert ranks[0]["epoch_losses"] == ranks[1]["epoch_losses"]
    assert ranks[0]["epoch_losses"] == [pytest.approx(np.mean(every_step))]


if not torch.distributed.is_available():  # pragma: no cover - builds without distributed
    pytestmark = pytest.mark.skip(reason="torch.distributed is not available in this build")


def _data_worker(rank: int, port: int, config: TrainConfig, data, out_dir, results, how):
    """Rank 1 reads one image fewer (its machine's copy of the folder lacks a file), or an
    image of one pixel more than rank 0's."""
    _join(rank, 2, port)
    from napari_samtune.core.train import iter_train

    train = data[0]
    if rank == 1 and how == "a file fewer":
        train = train[1:]
    elif rank == 1:
        image, labels = train[0]
        image = image.copy()
        image[0, 0] = image[0, 0] + 50
        train = [(image, labels), *train[1:]]
    try:
        list(iter_train(config, train, data[1], out_dir))
    except Exception as err:  # recorded for the test; the process then exits
        (results / f"rank{rank}.txt").write_text(f"{type(err).__name__}: {err}")


@pytest.mark.parametrize("how", ["a file fewer", "other pixels"])
def test_processes_given_different_data_are_refused_before_training(tmp_path, how):
    """Each machine reads its own copy of the data: with a file more, a process took more
    steps per epoch, and the others waited for it in DDP until gloo's 30-minute timeout,
    deaf to SIGTERM; with other pixels under the same names, each trained on its own."""
    config = TrainConfig(
        model="random:tiny", epochs=1, n_objects_per_batch=1, min_samples_per_epoch=1,
        n_iterative_prompts=0, mixed_precision="no",
    )  # fmt: skip
    data = make_dataset(3, shape=(64, 64), seed=0), make_dataset(1, shape=(64, 64), seed=9)
    args = (_free_port(), config, data, tmp_path / "run", tmp_path, how)
    processes = mp.spawn(_data_worker, args=args, nprocs=2, join=False)
    deadline = time.monotonic() + 120  # before the check, they hung in DDP
    while not processes.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail("the processes given different data hung instead of being refused")
    for rank, n_images in ((0, 3), (1, 2 if how == "a file fewer" else 3)):
        said = (tmp_path / f"rank{rank}.txt").read_text()
        assert said.startswith("ValueError: the 2 processes of this run were given different ")
        assert f"(this one: {n_images} training and 1 validation images)" in said
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_neck_s_first_weight_takes_the_strides_of_its_gradient():
    """DDP compares a gradient's strides with its bucket's (the weight's) as they are: the
    neck's 1 x 1 convolution takes the tokens channels-last, its gradient comes with
    channels-last strides, and every run training the encoder warned "Grad strides do not
    match bucket view strides"."""
    sam = build_sam(TINY)
    conv = sam.image_encoder.neck[0]
    before = conv.weight.detach().clone()
    ddp.strides_as_gradients(sam)
    tokens = torch.randn(1, 8, 8, conv.in_channels)  # (N, H, W, C), as the ViT's blocks give
    conv(tokens.permute(0, 3, 1, 2)).sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride() != before.stride()
    assert torch.equal(conv.weight, before)
