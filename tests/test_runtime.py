"""Device and backend resolution for every (device, LOCAL_RANK, CUDA present or not), CUDA faked, and how
the runs of a sweep on one host share its GPUs."""
import subprocess
import sys

import pytest
import torch

from repro.errors import ConfigError
from repro.train import runtime
from repro.train.runtime import resolve_device


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with 4 GPUs, as far as resolve_device can tell; records set_device calls."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    return current


@pytest.mark.parametrize("name,rank,expect", [("auto", 0, "cuda:0"), ("auto", 3, "cuda:3"), ("cuda", 2, "cuda:2"),
                                              ("cuda:1", 3, "cuda:1"), ("cpu", 2, "cpu")])
def test_with_gpus_each_rank_gets_its_own(fake_cuda, name, rank, expect):
    assert resolve_device(name, rank) == torch.device(expect)
    assert fake_cuda == ([torch.device(expect)] if expect != "cpu" else [])  # made current before NCCL starts


def test_a_gpu_index_the_machine_lacks_is_one_clear_error(fake_cuda):
    with pytest.raises(ConfigError, match=r"device=cuda:7 \(rank 0\): this machine has 4 GPU\(s\), cuda:0 to cuda:3"):
        resolve_device("cuda:7")
    with pytest.raises(ConfigError, match=r"device=cuda \(rank 5\): this machine has 4 GPU"):
        resolve_device("cuda", 5)  # more processes than GPUs


@pytest.mark.parametrize("name,rank", [("auto", 0), ("auto", 1), ("cpu", 0)])
def test_without_gpus_everything_runs_on_the_cpu(monkeypatch, name, rank):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(name, rank) == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        resolve_device("cuda", rank)
    with pytest.raises(ConfigError, match="'tpu9' is not a device"):
        resolve_device("tpu9")


@pytest.mark.parametrize("cuda,device,backend", [(True, "auto", "nccl"), (True, "cpu", "gloo"), (False, "auto", "gloo")])
def test_the_backend_follows_the_resolved_device(monkeypatch, fake_cuda, cuda, device, backend):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    started = []
    monkeypatch.setattr(runtime, "die_with_launcher", lambda: True)  # not for the test process itself
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda b, timeout=None: started.append(b))
    rank, world, dev = runtime.distributed(device)
    assert (rank, world, started) == (1, 2, [backend])
    assert dev == (torch.device("cuda:1") if cuda and device == "auto" else torch.device("cpu"))


def test_runs_outside_torchrun_each_claim_a_free_gpu(tmp_path):
    """A sweep's runs on one host (joblib workers, each a process) take the GPUs one each, and a run that
    ends frees its GPU."""
    other_run = lambda: int(subprocess.run(  # noqa: E731  (another process: claims, says which, ends)
        [sys.executable, "-c", f"from pathlib import Path; from repro.train.runtime import claim_gpu; "
         f"print(claim_gpu(2, Path({str(tmp_path)!r})))"], capture_output=True, text=True, check=True).stdout)
    assert runtime.claim_gpu(2, tmp_path) == 0  # this process holds GPU 0 ...
    assert other_run() == 1  # ... so another run gets GPU 1
    assert other_run() == 1  # which was freed when that run ended
    assert runtime.claim_gpu(2, tmp_path) == 0  # the next job of a joblib worker: its previous GPU is free again


@pytest.mark.parametrize("local_rank", [None, "0", "1"])
def test_index_less_cuda_is_the_torchrun_rank_or_a_claimed_gpu(fake_cuda, monkeypatch, local_rank):
    monkeypatch.setattr(runtime, "claim_gpu", lambda count: 3)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert runtime.distributed("auto")[2] == torch.device(f"cuda:{3 if local_rank is None else local_rank}")
    assert runtime.distributed("cuda:2")[2] == torch.device("cuda:2")  # an explicit index is kept


@pytest.mark.parametrize("rank", [0, 1])
def test_rank_0_downloads_first_and_the_others_wait(monkeypatch, rank):
    """Rank 0 runs the block (a download) before its barrier, the other ranks after theirs: one download."""
    events = []
    monkeypatch.setattr(runtime.dist, "get_rank", lambda: rank)
    monkeypatch.setattr(runtime.dist, "barrier", lambda: events.append("barrier"))
    with runtime.rank_zero_first(world=2):
        events.append("load")
    assert events == (["load", "barrier"] if rank == 0 else ["barrier", "load"])
    events.clear()
    with runtime.rank_zero_first(world=1):  # alone: no collective at all
        events.append("load")
    assert events == ["load"]
