"""The training loop, and one run driven to its end (`run`); the command over it is repro.train.__main__.

A run goes one way (repro.train.run.Run): name its folder from the config alone -> skip it (done), reuse it
(the same run, finished by another experiment), resume it or start it -> build the model -> load the data ->
train -> finish. The loop (`train`) is iteration-based, as §4.2 is: the learning rate is a function of the
step (repro.train.schedule), the batches are a pure function of (seed, step), and running sums stay on the device
until an evaluation point, where one CSV row is written and flushed and then a checkpoint is saved. The loop
is a generator that yields after every step, so one process can interleave several runs (repro.train.pack);
`run` drives one to its end. Under torchrun the same loop runs data-parallel (DDP): every rank trains on
its slice of the global batch, sums are all-reduced, rank 0 alone writes results.
"""
from __future__ import annotations

import math
import os
import signal
from typing import Generator

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from repro.data.sources import Source
from repro.errors import ConfigError, storage_error
from repro.names import display_name
from repro.train.checkpoint import State
from repro.train.config import validate
from repro.train.diagnostics import Watch
from repro.train.recorder import Recorder
from repro.train.run import Run, Trainee
from repro.train.runtime import all_reduce, distributed, sync_buffers
from repro.train.schedule import lr_at, plateau_step, uses_warmup
from repro.train.signals import SignalFlag, fault_point
from repro.train.step import bn_counter_check, bn_counts, make_step
from repro.train.sweep import is_multirun, mark_interrupted

AGREE_EVERY = 10  # data-parallel: steps between the ranks' votes on a preemption signal (a stop within 10 steps)


def evaluate(net: torch.nn.Module, src: Source, sums: torch.Tensor, step: int, lr: float, batch_size: int) -> dict:
    """One CSV row at `step`: the training window's mean loss and error (`sums`, all ranks) and each
    evaluation split's, in eval mode, of the model rank 0 saves."""
    sync_buffers(net)
    loss_sum, err_sum, n = all_reduce(sums.clone()).tolist()
    row = {"step": step, "epoch": round(step * batch_size / src.train_size, 4), "lr": lr,
           "train_loss": loss_sum / n, "train_err": err_sum / n}
    for split, fn in src.splits.items():
        ls, es, ns = all_reduce(fn(net)).tolist()
        row[f"{split}_loss"], row[f"{split}_err"] = ls / ns, es / ns
    return row


def preempt_now(flag: SignalFlag, step: int, device: torch.device) -> bool:
    """Whether to stop for a preemption signal after this step. Alone: as soon as one came. Data-parallel:
    the ranks get the signal at different steps, and a rank that left alone would leave the others blocked in
    a collective until its timeout, so every AGREE_EVERY steps they vote (the max of their flags) and all
    stop at the same step."""
    if not dist.is_initialized():
        return flag.signum is not None
    if step % AGREE_EVERY:
        return False
    vote = torch.tensor([int(flag.signum is not None)], device=device)
    return bool(all_reduce(vote, dist.ReduceOp.MAX).item())


def train(cfg: DictConfig, t: Trainee, src: Source, state: State, rec: Recorder,
          flag: SignalFlag) -> Generator[None, None, str]:
    """The training loop, from `state` to optim.total_steps, yielding after every step. Returns 'done',
    'diverged', or 'preempted' (a signal came: the checkpoint is saved; the caller hands the signal on)."""
    o, name = cfg.optim, display_name(cfg.model.depth, cfg.model.shortcut)
    warm = uses_warmup(o, cfg.model.depth)
    device = next(t.model.parameters()).device
    # [loss*n, errors, n] over two windows train_step fills at once: since the last row (sums) and since the
    # last warm-up check (wsums: errors, n; the warm-up window's loss is not used). A checkpoint holds the
    # sums of all ranks together: rank 0 carries them on, the others start from zero.
    carries = not dist.is_initialized() or dist.get_rank() == 0
    windows = torch.tensor([state.sums, [0.0, *state.wsums]] if carries else [[0.0] * 3] * 2, device=device,
                           dtype=torch.float64)
    sums, wsums = windows[0], windows[1, 1:]
    step_row = state.step
    step = make_step(t, src, windows, o.splits, state.step, device, name, rec.note)  # eager, or one CUDA graph
    # the reliability tests' fault points (REPRO_FAULT): looked up once, nothing per step in normal use
    faults = ("raise", "kill", "term", "stop", "term_launcher", "kill_launcher", "int", "int2") \
        if os.environ.get("REPRO_FAULT") else ()
    bn_start, step_start = bn_counts(t.model), state.step  # what BN had counted when this process took over
    watch = Watch.start(cfg, src.tensors, rec.dir, state.step)  # diagnostics.every: off unless asked
    if watch:
        watch.take(t.model, state.step, lr_at(state.step, o, warm and not state.warmup_done, state.decays))
    t.net.train()
    while state.step < o.total_steps:
        warming_up = warm and not state.warmup_done
        lr = lr_at(state.step, o, warming_up, state.decays)
        step(state.step, lr)
        state.step += 1
        if warming_up and state.step % o.warmup_check_every == 0:
            # §4.2: "0.01 to warm up the training until the training error is below 80%"; never re-entered
            errs, n = all_reduce(wsums.clone()).tolist()
            wsums.zero_()
            if errs / n < o.warmup_until_err:
                state.warmup_done, state.warmup_exit_step = True, state.step
                rec.note(warmup_exit_step=state.step)
                print(f"[{name}] warm-up done at step {state.step} (train_err {errs / n:.3f} < "
                      f"{o.warmup_until_err}): lr back to the schedule's {lr_at(state.step, o, False, state.decays)}",
                      flush=True)
        if state.step % cfg.eval_every == 0 or state.step == o.total_steps:
            if (broken := bn_counter_check(t.model, bn_start, state.step - step_start, o.splits)) is not None:
                raise RuntimeError(f"the training step is not the eager one ({step.kind}): {broken}")
            row = evaluate(t.net, src, sums, state.step, lr, o.batch_size)
            rec.row(row, step_row)
            if watch and watch.take(t.model, state.step, lr):
                rec.note(diagnostics_s=round(watch.seconds, 2))  # this process's share (a resumed run: since then)
            sums.zero_()
            step_row = state.step
            if not math.isfinite(row["train_loss"]):
                return "diverged"  # a result (plain-110 may do this), not a crash
            if o.schedule == "plateau" and plateau_step(state, row["val_err"], o):
                print(f"[{name}] held-out error plateaued: lr divided by {1 / o.gamma:g} (drop {state.decays})",
                      flush=True)
            state.wall_time = rec.elapsed()
            state.sums, state.wsums = [0.0, 0.0, 0.0], all_reduce(wsums.clone()).tolist()
            rec.checkpoint(t, state)
        for fault in faults:
            fault_point(fault, state.step)
        if preempt_now(flag, state.step, device):  # checkpoint mid-interval, then let the signal act
            flag.signum = flag.signum or signal.SIGTERM  # a rank outvoted before its own signal came
            state.sums, state.wsums = all_reduce(sums.clone()).tolist(), all_reduce(wsums.clone()).tolist()
            state.wall_time = rec.elapsed()
            rec.preempted(t, state, flag.signum)
            if dist.is_initialized():
                dist.barrier()  # no rank leaves before rank 0's checkpoint is on disk
            return "preempted"
        yield
    return "done"


def to_end(loop: Generator[None, None, str]) -> str:
    """Drive a training loop (a `train` generator) to its end; its status."""
    while True:
        try:
            next(loop)
        except StopIteration as end:
            return end.value


def run(cfg: DictConfig) -> str:
    """One run in this process (group), from its config to its status (repro.train.run.Run)."""
    validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    rank, world, device = distributed(cfg.device, cfg.dist_timeout_s)
    r = Run(cfg, rank, world, device)
    try:
        try:
            if not r.open():
                return "done"
            r.start()
        except OSError as e:  # a folder that cannot be written, a full disk: before any step was trained
            raise storage_error(e) or e
        with SignalFlag() as flag:
            try:
                status = to_end(train(cfg, r.t, r.src, r.state, r.rec, flag))
            except Exception as e:
                failure = r.failed(e)
                if failure is e:
                    raise
                raise failure from (None if isinstance(failure, ConfigError) else e)
            if status == "preempted" and flag.signum == signal.SIGINT and is_multirun():
                mark_interrupted()  # Ctrl-C in a sweep: this run stopped at its step; no further run starts
                r.end(status)
                return "interrupted"
            if status == "preempted":
                flag.pass_on(flag.signum)
        r.end(status)
        return status
    finally:
        r.close()






