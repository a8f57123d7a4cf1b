"""What makes a run survive kills and preemption: the resumable state and atomic checkpoints (the signals and
fault points are repro.train.signals)."""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from repro.errors import ResultsError
from repro.train.rundir import atomic_write
from repro.train.signals import fault_point


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


