"""Several runs of a sweep in one process, stepped in turn: `python -m repro.train -m exp=... hydra/launcher=pack`.

On one GPU the paper's CIFAR nets are launch-bound (repro.train.step), and separate processes on one GPU are
time-sliced, not overlapped. Runs in one process, each replaying its step on its own CUDA stream, overlap on
the device. Each is still a normal run (repro.train.run.Run): its own folder, metrics.csv, meta.json,
checkpoint and lock; skip, reuse and resume; failure and divergence marks; a preemption signal checkpoints
every run of the group. Every run gives the numbers it gives alone (its own streams of draws, its own graph;
the CIFAR tensors on the device are shared, read-only). `hydra.launcher.runs_at_once` runs are stepped
together; when one ends the next of the sweep starts in its place.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Sequence

import torch
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from repro.data.cifar import ImageData, load_image_data
from repro.errors import USER_ERRORS, ConfigError, exit_code
from repro.train.config import validate
from repro.train.loop import train
from repro.train.run import Run, run_dir_for
from repro.train.runtime import resolve_device
from repro.train.signals import SignalFlag
from repro.train.sweep import FAILED_MARK


@dataclass
class Job:
    """One run of the pack: its config, and the Hydra job folder where a failure is marked (None: not in a sweep)."""

    cfg: DictConfig
    mark_dir: Path | None = None
    overrides: str = ""


@dataclass
class Slot:
    """A run being stepped: its lifecycle object, its loop (a `repro.train.loop.train` generator), its CUDA stream."""

    job: Job
    run: Run
    loop: Generator[None, None, str]
    stream: object = None  # None on the CPU


def shared_data(cfg: DictConfig, device: torch.device, cache: dict) -> ImageData | None:
    """The CIFAR-style tensors for `cfg`, loaded once per (data config, device) for the whole pack."""
    if cfg.data.get("format") == "imagefolder":
        return None  # loader workers per run; nothing to share
    key = (json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True, default=str), str(device))
    if key not in cache:
        cache[key] = load_image_data(device, **cfg.data)
    return cache[key]


def on_stream(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


# Settings that are the process's, not a run's: torch's deterministic mode and cuDNN's flags (from
# `deterministic`), the CPU thread count, the CPU allocator's tuning (fast.cpu_allocator)
PROCESS_SETTINGS = ("deterministic", "threads", "fast.cpu_allocator")


def one_process_settings(jobs: Sequence[Job]) -> None:
    """Refuse a pack whose runs ask for different process-wide settings (the last run started would silently
    set them for all), before anything is written."""
    for key in PROCESS_SETTINGS:
        values = {str(OmegaConf.select(job.cfg, key)) for job in jobs}
        if len(values) > 1:
            raise ConfigError(f"hydra/launcher=pack runs every run in one process, but {key} differs between them "
                              f"({', '.join(sorted(values))}) and is the process's, not a run's: set {key} the same "
                              f"for all, or launch them as separate sweeps")


def train_pack(jobs: Sequence[Job], runs_at_once: int) -> list[str]:
    """Train `jobs` in this process, `runs_at_once` at a time, each step of each run in turn; their statuses
    ('done', 'diverged', 'failed', 'error' for bad input, 'preempted'). A run that fails is marked and the
    others go on; a preemption signal checkpoints every running run, then ends the process as the signal
    asks (the rerun resumes them all)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("hydra/launcher=pack runs a sweep's runs in one process on one device; it does not "
                          "combine with torchrun (data-parallel runs: use the basic or slurm launcher)")
    if runs_at_once < 1:
        raise ConfigError(f"hydra.launcher.runs_at_once={runs_at_once}; it must be at least 1")
    one_process_settings(jobs)
    statuses: dict[int, str] = {}
    pending, active = deque(enumerate(jobs)), []
    cache: dict = {}  # the shared data sets
    devices: dict[str, torch.device] = {}  # one device per name for the whole pack (a GPU is claimed once)
    print(f"[pack] {len(jobs)} run(s), {min(runs_at_once, len(jobs))} at a time in this process", flush=True)

    def fail(i: int, job: Job, message: str, status: str) -> None:
        print(f"error: {message}; continuing with the other runs", file=sys.stderr, flush=True)
        statuses[i] = status
        if job.mark_dir is not None:
            job.mark_dir.mkdir(parents=True, exist_ok=True)
            (job.mark_dir / FAILED_MARK).write_text(f"{job.overrides}\n{message}\n")

    def start(i: int, job: Job, flag: SignalFlag) -> Slot | None:
        """The job's run opened and started on its own stream; None when it is done already or failed."""
        r = None
        try:
            validate(job.cfg, 1)
            if job.cfg.device not in devices:
                devices[job.cfg.device] = resolve_device(job.cfg.device, None)
            device = devices[job.cfg.device]
            r = Run(job.cfg, 0, 1, device)
            if not r.open():
                statuses[i] = "done"
                r.close()
                return None
            stream = torch.cuda.Stream(device) if device.type == "cuda" else None
            with on_stream(stream):
                r.start(shared_data(job.cfg, device, cache))
            if stream is not None:
                torch.cuda.synchronize(device)  # data and weights made on other streams are ready
            return Slot(job, r, train(job.cfg, r.t, r.src, r.state, r.rec, flag), stream)
        except Exception as e:  # bad input: one line; anything else: named, and the others go on
            user = isinstance(e, USER_ERRORS)
            fail(i, job, str(e) if user else f"{type(e).__name__}: {e}", "error" if user else "failed")
            if r is not None:
                r.close()
            return None

    def step(i: int, slot: Slot) -> bool:
        """One step of the slot's run; False once the run has ended (finished, diverged, preempted or failed)."""
        try:
            with on_stream(slot.stream):
                next(slot.loop)
            return True
        except StopIteration as end:
            try:
                with on_stream(slot.stream):
                    slot.run.end(end.value)
                statuses[i] = end.value
            except Exception as e:
                slot.run.failed(e)
                fail(i, slot.job, f"{slot.run.dir}: {type(e).__name__}: {e}", "failed")
        except Exception as e:
            failure = slot.run.failed(e)
            fail(i, slot.job, f"{slot.run.dir}: run failed ({type(failure).__name__}: {failure})",
                 "error" if isinstance(failure, ConfigError) else "failed")
        slot.run.close()
        return False

    with SignalFlag() as flag:
        while pending or active:
            while len(active) < runs_at_once and flag.signum is None:
                busy = {slot.run.dir for _, slot in active}  # a sweep may name one run twice: it waits its turn
                ready = [entry for entry in pending if run_dir_for(entry[1].cfg) not in busy]
                if not ready:
                    break
                pending.remove(ready[0])
                if (slot := start(*ready[0], flag)) is not None:
                    active.append((ready[0][0], slot))
            active = [(i, slot) for i, slot in active if step(i, slot)]
        if flag.signum is not None:
            for i, _ in pending:
                statuses[i] = "not started"
            print(f"[pack] signal {flag.signum}: every running run checkpointed; rerun the same command to "
                  f"resume them", flush=True)
            flag.pass_on(flag.signum)
    return [statuses[i] for i in range(len(jobs))]


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Hydra's launch (hydra_plugins.repro_pack.PackLauncher, experiments/hydra/launcher/pack.yaml): each
    job's config composed as the basic launcher composes it, then all trained together by `train_pack`."""
    jobs, hydra_cfgs = [], []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = idx
        hydra_cfg = cfg.hydra
        mark_dir = Path(str(hydra_cfg.sweep.dir)) / str(hydra_cfg.sweep.subdir)
        task_cfg = copy.deepcopy(cfg)  # as hydra.core.utils.run_job hands it to a task
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        jobs.append(Job(task_cfg, mark_dir, " ".join(filter_overrides(overrides))))
        hydra_cfgs.append(hydra_cfg)
    try:
        Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        statuses = train_pack(jobs, launcher.runs_at_once)
    except USER_ERRORS as e:  # the pack's own bad input (Hydra would print a traceback): one line, exit 2
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(exit_code(e))
    return [JobReturn(overrides=list(o), cfg=j.cfg, hydra_cfg=h, working_dir=os.getcwd(), task_name="train",
                      status=JobStatus.COMPLETED, _return_value=s)
            for o, j, h, s in zip(job_overrides, jobs, hydra_cfgs, statuses)]
