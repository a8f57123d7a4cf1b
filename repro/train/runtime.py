"""Where a run runs: its device, its rank under torchrun, and the config checks done before anything is
built, read or written (one clear error each, naming the value and the fix)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from repro.errors import ConfigError


def resolve_device(name: str, local_rank: int | None = 0) -> torch.device:
    """The torch device of this process: 'auto' = CUDA when present, else the CPU; 'cuda' without an index
    = this rank's GPU (LOCAL_RANK under torchrun; outside torchrun, `local_rank` None, the first GPU no other
    run of ours holds: claim_gpu), made the current one; a bad name or index is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} asked for, but CUDA is not available here; use device=auto or cpu")
        count = torch.cuda.device_count()
        if dev.index is None:
            dev = torch.device("cuda", claim_gpu(count) if local_rank is None else local_rank)
        if dev.index >= count:
            raise ConfigError(f"device={name} (rank {local_rank or 0}): this machine has {count} GPU(s), cuda:0 to "
                              f"cuda:{count - 1}; use device=auto (one GPU per torchrun process)")
        torch.cuda.set_device(dev)  # before the process group: NCCL binds each rank to its own GPU
    return dev


def distributed(device_name: str, timeout_s: float = 600) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; starts the process group with the backend
    of the resolved device (NCCL for CUDA, gloo for the CPU). A collective that has not completed after
    `timeout_s` seconds (a peer lost or stalled) raises instead of waiting for ever; under torchrun this
    process also stops when its launcher dies (die_with_launcher)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local = os.environ.get("LOCAL_RANK")  # unset outside torchrun: a sweep's runs spread over the GPUs
    if local is not None:
        die_with_launcher()
    device = resolve_device(device_name, None if local is None else int(local))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return rank, world, device


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_launcher() -> bool:
    """Ask the kernel for SIGTERM when our parent (torchrun, which starts its workers in sessions of their own,
    so a kill of its process group misses them) dies: the loop treats it as a preemption — checkpoint at a step
    all ranks agree on, then exit — instead of training on unsupervised. Linux only; False elsewhere."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getppid()
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


_held: list = []  # the lock file of the GPU this process claimed (kept open: the lock lasts as long)


def claim_gpu(count: int, lock_dir: Path | None = None) -> int:
    """The first of `count` GPUs that no other process of ours holds, held (an flock on a file per GPU)
    until this process ends or claims again: the runs of a sweep on one host (hydra/launcher=parallel,
    `make cifar JOBS=N`) each get their own GPU. With more runs at once than GPUs, the extra ones share
    (chosen by process id); under SLURM (one GPU visible per job) every job gets its own."""
    import fcntl  # POSIX; imported here so that the module loads everywhere

    lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"repro-gpus-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    for f in _held:  # a joblib worker runs job after job: the previous job's GPU is free again
        f.close()
    _held.clear()
    for i in range(count):
        f = open(lock_dir / f"cuda{i}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _held.append(f)
        return i
    return os.getpid() % count  # all held: share one


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Numerics switches of this process. fp32 means fp32: TF32 off for convolutions and matmuls (torch
    enables it for cuDNN convolutions by default; bf16 runs use autocast instead). `deterministic`: the same
    kernels on every run, so a CUDA run resumes bit-exactly (docs/gpus-and-clusters.md; it costs cuDNN's
    autotuning and its fastest non-deterministic kernels); otherwise cuDNN picks the fastest kernel per shape
    (our shapes are static: every training batch is full-sized). The CPU is deterministic either way."""
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call imports torch._inductor (seconds)
        torch.use_deterministic_algorithms(deterministic)
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' condition for determinism


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op)
    return t


@contextlib.contextmanager
def rank_zero_first(world: int):
    """Rank 0 runs the block first (a download, an extraction), the other ranks after it: one download."""
    if world > 1 and dist.get_rank() != 0:
        dist.barrier()
    yield
    if world > 1 and dist.get_rank() == 0:
        dist.barrier()


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's BN running statistics on every rank: what an evaluation measures is the model that is
    saved (in training DDP broadcasts them before each forward, then each rank updates its own)."""
    if dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, 0)


def broadcast(value, world: int):
    if world > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value






