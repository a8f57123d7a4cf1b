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
from omegaconf import DictConfig, OmegaConf

from .models import SHORTCUTS, arch_for


class ConfigError(Exception):
    """A config value that cannot work; the message names it and the fix."""


def validate(cfg: DictConfig, world: int = 1) -> None:
    """Catch impossible values before anything is built, read or written."""
    for key in ("eval_every", "optim.batch_size", "optim.total_steps", "data.eval_batch_size", "optim.splits"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads <= 0):
        raise ConfigError(f"threads={cfg.threads!r} must be a positive integer or null")
    o = cfg.optim
    if not o.lr > 0:
        raise ConfigError(f"optim.lr={o.lr} must be positive")
    if any(not 0 < m < 1 for m in o.milestones):
        raise ConfigError(f"optim.milestones={list(o.milestones)} must be fractions of total_steps in (0, 1)")
    if o.schedule not in ("milestones", "plateau"):
        raise ConfigError(f"optim.schedule={o.schedule!r}; valid: milestones, plateau")
    if o.schedule == "plateau" and not cfg.data.get("val_size"):
        raise ConfigError("optim.schedule=plateau decides the lr drops on held-out training images, never on the "
                          "reported test set: set data.val_size (e.g. 10000), or use optim.schedule=milestones")
    if cfg.fast.get("compile") == "reduce-overhead" and o.splits > 1:
        raise ConfigError(f"fast.compile=reduce-overhead with optim.splits={o.splits}: CUDA graphs replay one "
                          f"captured forward, whose outputs the next chunk would overwrite before its backward; "
                          f"use fast.compile=default with splits, or optim.splits=1")
    if o.batch_size % (world * o.splits):
        raise ConfigError(f"optim.batch_size={o.batch_size} must divide evenly over {world} process(es) "
                          f"x optim.splits={o.splits}")
    try:
        arch_for(cfg.model.family, cfg.model.depth, width=cfg.model.width)
        if cfg.model.shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {cfg.model.shortcut!r}; valid: {', '.join(SHORTCUTS)} (none = plain)")
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if cfg.get("logger") is not None:
        from .trackers import check

        check(cfg.logger.name)  # an unknown tracker or a missing package: one line now, not after training


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


def config_dir() -> Path:
    """Hydra's config folder: the copy of experiments/ inside the package when installed from a wheel (it is
    shipped there, pyproject.toml), else the checkout's experiments/ beside the package."""
    here = Path(__file__).resolve().parent
    return here / "experiments" if (here / "experiments" / "config.yaml").is_file() else here.parent / "experiments"


def search_folders(argv: list[str]) -> list[Path] | None:
    """The user's config folders added on the command line (`hydra.searchpath=[file:///my/configs]`, Hydra's
    search path), or None when one of them is a package (pkg://), whose choices are not listed here."""
    folders: list[Path] = []
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key != "hydra.searchpath":
            continue
        for entry in value.strip("[]").split(","):
            entry = entry.strip().strip("'\"")
            if entry.startswith("pkg://"):
                return None
            if entry:
                folders.append(Path(entry.removeprefix("file://")))
    return folders


def check_choices(argv: list[str], experiments: Path) -> str | None:
    """A one-line error for an unknown `exp=`, `+net=` or `logger=` choice on the command line (Hydra's own
    message is a multi-line listing), else None. Comma-separated sweeps are checked choice by choice, against
    `experiments` and the user's folders on Hydra's search path."""
    if (extra := search_folders(argv)) is None:
        return None  # a config package on the search path: Hydra itself reports an unknown choice
    for arg in argv:
        key, _, value = arg.partition("=")
        group = {"exp": "exp", "+net": "net", "net": "net", "logger": "logger"}.get(key)
        if group is None or not value:
            continue
        known = sorted({p.stem for d in (experiments, *extra) for p in (d / group).glob("*.yaml")})
        for choice in value.split(","):
            if choice not in known:
                return f"unknown {group} {choice!r} ({arg}); known: {', '.join(known)}"
    return None
