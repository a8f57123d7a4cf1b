"""Rank 0's side of the training loop: each evaluation row to metrics.csv, the status line, the checkpoint
after it, the rows on to the tracker once their checkpoint is on disk (repro.train.trackers), and the checkpoint a
preemption signal asks for."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from repro.results import CHECKPOINT, METRICS, columns_for
from repro.train.checkpoint import State, save_checkpoint
from repro.train.rundir import MetricsWriter, update_meta
from repro.train.signals import fault_point


class Recorder:
    """Rank 0's side of the loop: each row to the CSV, the status line and the checkpoint, and the
    preemption checkpoint; on other ranks (run_dir None) it only keeps time."""

    def __init__(self, run_dir: Path | None, name: str, total: int, batch: int, with_val: bool, wall_time: float):
        self.dir, self.name, self.total, self.batch = run_dir, name, total, batch
        self.writer = MetricsWriter(run_dir / METRICS, columns_for(with_val)) if run_dir else None
        self.t0 = self.t_row = time.perf_counter()
        self.wall_time = wall_time
        self.tracker = None  # repro.train.trackers.Tracker (logger=tensorboard|wandb), set by the run on rank 0
        self.untracked: list[dict] = []  # rows written to the CSV whose checkpoint is not on disk yet
        self.saved_step: int | None = None  # the step of the last checkpoint this process wrote

    def row(self, row: dict, step_row: int) -> None:
        now = time.perf_counter()
        row["wall_time"] = round(self.wall_time + now - self.t0, 3)
        if self.writer:
            self.writer.write(row)  # row first, then the checkpoint: a kill in between only repeats work
            fault_point("after_row", row["step"])
            if self.tracker:
                self.untracked.append(dict(row))
            ips = (row["step"] - step_row) * self.batch / max(now - self.t_row, 1e-9)
            val = f" val_err {row['val_err']:.4f}" if "val_err" in row else ""
            print(f"[{self.name}] step {row['step']:>6}/{self.total} ({100 * row['step'] / self.total:5.1f}%) lr "
                  f"{row['lr']:.4g} train_err {row['train_err']:.4f} test_err {row['test_err']:.4f}{val} | "
                  f"{ips:,.0f} img/s | ETA {(self.total - row['step']) * self.batch / max(ips, 1e-9) / 60:.1f} min",
                  flush=True)
        self.t_row = now

    def note(self, **fields) -> None:
        """Facts of the run learned while training (the warm-up's exit step) into meta.json."""
        if self.dir:
            update_meta(self.dir, **fields)

    def elapsed(self) -> float:
        """Training seconds so far (summed over resumes); restarts the interval."""
        now = time.perf_counter()
        self.wall_time, self.t0 = self.wall_time + now - self.t0, now
        return self.wall_time

    def checkpoint(self, t, state: State) -> None:
        if self.dir:
            save_checkpoint(self.dir / CHECKPOINT, t.model, t.opt, state)
            self.saved_step = state.step
            fault_point("after_checkpoint", state.step)
            self.track()

    def preempted(self, t, state: State, signum: int) -> None:
        """A signal stopped the run at this step: its checkpoint, and the status that says why ('interrupted'
        for Ctrl-C, 'preempted' for a scheduler's signal); either resumes from here."""
        if self.dir:
            save_checkpoint(self.dir / CHECKPOINT, t.model, t.opt, state)
            ctrl_c = signum == signal.SIGINT
            update_meta(self.dir, status="interrupted" if ctrl_c else "preempted", preempted_at_step=state.step)
            self.track()
            why = "Ctrl-C" if ctrl_c else f"signal {signum}"
            print(f"[{self.name}] {why}: stopped at step {state.step}/{self.total}, checkpoint saved in {self.dir}; "
                  f"rerun the same command to resume", flush=True)
        self.close()

    def track(self) -> None:
        """The rows whose checkpoint is now on disk, to the tracker."""
        if self.tracker and self.untracked:
            self.tracker.send(self.untracked)
            self.untracked = []

    def close(self, final: bool = False) -> None:
        """`final`: the run ended (done or diverged), so its last rows are final without a checkpoint after
        them; else (a failure) untracked rows stay untracked, to be recomputed by the resume. Idempotent."""
        if final:
            self.track()
        if self.tracker:
            self.tracker.close()
            self.tracker = None
        if self.writer:
            self.writer.close()
