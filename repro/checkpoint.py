"""What makes a run survive kills and preemption: the resumable state, atomic checkpoints, the
SLURM/submitit signal handling (and Ctrl-C's), and the fault-injection points the reliability tests use."""
from __future__ import annotations

import errno
import io
import os
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import INTERRUPTED
from .results import ResultsError
from .rundir import atomic_write


@dataclass
class State:
    """Everything a resumed run needs besides model and optimiser. The batches and augmentations are
    pure functions of (seed, step), so `step` is the data order position."""

    step: int = 0
    warmup_done: bool = False
    warmup_exit_step: int | None = None  # the step the warm-up ended at (§4.2, ResNet-110); None: not yet or
    # a checkpoint older than this field (warmup_done stays the switch for those)
    wall_time: float = 0.0  # training seconds before this process started
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, errors, n since last row
    wsums: list[float] = field(default_factory=lambda: [0.0, 0.0])  # warm-up window: errors, n
    decays: int = 0  # plateau schedule: lr divisions so far
    best_err: float = float("inf")  # plateau schedule: best evaluation error so far ...
    since_best: int = 0  # ... and evaluations since it


def fault_point(name: str, step: int) -> None:
    """Fault injection for the reliability tests: REPRO_FAULT=<name>:<step> kills this process with
    SIGKILL when the loop reaches that point ('kill': the end of any step; 'term' sends SIGTERM there, as a
    scheduler would; 'term_launcher': rank 0 sends SIGTERM to its parent, torchrun, as SLURM signals the job
    step, which hands it on to every rank; 'kill_launcher': rank 0 SIGKILLs torchrun alone, as an
    out-of-memory kill or a closed terminal does; 'stop': SIGSTOP, a peer alive but stalled; 'raise' raises;
    'int' sends SIGINT, Ctrl-C, and 'int2' two of them, a second Ctrl-C while the first is handled; 'enospc'
    fails the checkpoint write as a full disk does). REPRO_FAULT_RANK=<r>: only rank r acts. Unset in normal use."""
    rank = os.environ.get("RANK", "0")
    if os.environ.get("REPRO_FAULT") == f"{name}:{step}" and os.environ.get("REPRO_FAULT_RANK", rank) == rank:
        if name == "raise":
            raise RuntimeError(f"injected failure at step {step}")
        if name == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if name in ("int", "int2"):
            for _ in range(1 if name == "int" else 2):
                os.kill(os.getpid(), signal.SIGINT)
            return
        if name in ("term_launcher", "kill_launcher"):
            if rank == "0":
                os.kill(os.getppid(), signal.SIGTERM if name == "term_launcher" else signal.SIGKILL)
            return
        if name == "stop":  # a test waits for this line (progress), then knows the process holds still
            print(f"[fault] pid {os.getpid()} stops at step {step}", flush=True)
        os.kill(os.getpid(), {"term": signal.SIGTERM, "stop": signal.SIGSTOP}.get(name, signal.SIGKILL))


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: State) -> None:
    """Model, optimiser (momentum buffers), state and torch's RNG, written atomically."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": asdict(state),
                "torch_rng": torch.get_rng_state()}, buf)
    def before_replace() -> None:  # the temp file is written: a kill or a full disk here leaves the old one
        fault_point("checkpoint", state.step)
        fault_point("enospc", state.step)

    atomic_write(path, buf.getvalue(), before_replace=before_replace)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, data: bytes | None = None) -> State:
    """The state of `path` (or of `data`, its bytes as rank 0 read them: every rank of a data-parallel run
    resumes from the one file rank 0 saw, even if it is replaced meanwhile) into `model` and `opt`."""
    try:
        ck = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu",
                        weights_only=True)  # safe: tensors and plain data only
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        follow_params(opt)
        state = State(**ck["state"])
    except Exception as e:
        raise ResultsError(f"cannot resume from {path} ({type(e).__name__}: {e}); move it aside or "
                           f"rerun with overwrite=true to start the run afresh") from None
    torch.set_rng_state(ck["torch_rng"])
    return state


def follow_params(opt: torch.optim.Optimizer) -> None:
    """The optimiser as this process built it, with the checkpoint's state: its implementation switches
    (fused, foreach: load_state_dict would take the checkpoint's) and momentum buffers laid out like their
    parameters (a run resumed with another fast.channels_last keeps the old strides, which CUDA's fused SGD
    rejects)."""
    for group in opt.param_groups:
        for key in ("fused", "foreach"):
            if key in opt.defaults:
                group[key] = opt.defaults[key]
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if isinstance(buf, torch.Tensor) and buf.stride() != p.stride():
                opt.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)


class SignalFlag:
    """SIGTERM/SIGUSR1/SIGUSR2 (what SLURM and submitit send before a kill) and SIGINT (Ctrl-C) set a flag
    that the loop checks once per step; the loop then checkpoints at that step and hands the signal on to the
    previous handler (Ctrl-C: exit 130, no traceback). A second Ctrl-C while the first is handled exits at
    once: the last checkpoint on disk stands (an atomic write in flight leaves it whole). SIGINT is left alone
    where the process started with it ignored (a background job, nohup), as shells intend."""

    NAMES = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "SignalFlag":
        for name in self.NAMES:
            if hasattr(signal, name):
                s = getattr(signal, name)
                if s == signal.SIGINT and signal.getsignal(s) in (signal.SIG_IGN, None):
                    continue
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            os.write(2, b"second Ctrl-C: stopped at once; the last checkpoint stands: rerun the same command "
                        b"to resume from it\n")
            os._exit(INTERRUPTED)
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous = {}

    def pass_on(self, signum: int) -> None:
        """Restore the previous handler and re-deliver the signal (submitit requeues on USR2; the default
        action ends the process, as SLURM expects), then exit 128+signum if still alive. Ctrl-C: exit 130
        (Python's own handler would raise KeyboardInterrupt: a traceback for a clean stop)."""
        self.__exit__()
        if signum == signal.SIGINT:
            sys.exit(INTERRUPTED)
        signal.raise_signal(signum)
        sys.exit(128 + signum)
