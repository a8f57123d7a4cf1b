"""The learning-rate schedule as pure functions of the step (§4.2, §3.4): no scheduler object whose state
can drift. The loop keeps the little state there is (warm-up done, plateau decays) in its checkpoint."""
from __future__ import annotations

from repro.train.checkpoint import State


def lr_at(step: int, optim, warming_up: bool = False, decays: int = 0) -> float:
    """Learning rate of iteration `step` (0-based): warmup_lr while warming up (§4.2); else the base lr
    divided by 1/gamma at each milestone (fractions of total_steps), or — with schedule 'plateau' — once
    for each plateau of the held-out error so far (§3.4)."""
    if warming_up:
        return float(optim["warmup_lr"])
    if optim["schedule"] == "plateau":
        passed = decays
    else:
        passed = sum(step >= round(m * optim["total_steps"]) for m in optim["milestones"])
    return float(f"{optim['lr'] * optim['gamma'] ** passed:.12g}")  # 0.001, not 0.0010000000000000002


def uses_warmup(optim, depth: int) -> bool:
    """§4.2: ResNet-110 and deeper warm up (optim.warmup_from_depth; null = every depth, warmup_lr null = none)."""
    start = optim["warmup_from_depth"]
    return optim["warmup_lr"] is not None and (start is None or depth >= start)


def plateau_step(state: State, err: float, optim) -> bool:
    """Update the plateau rule with a new held-out error; True when the lr should drop now."""
    if err < state.best_err - optim["plateau_threshold"]:
        state.best_err, state.since_best = err, 0
        return False
    state.since_best += 1
    if state.since_best >= optim["plateau_patience"] and state.decays < optim["plateau_max_decays"]:
        state.decays, state.since_best = state.decays + 1, 0
        return True
    return False
