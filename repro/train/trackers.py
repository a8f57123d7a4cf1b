"""Optional trackers, `logger=none|tensorboard|wandb`: each evaluation row of metrics.csv also sent to
TensorBoard or Weights & Biases, to watch a sweep live. metrics.csv stays the record; a tracker is a view of it.

A tracker gets a row only once the checkpoint after that row is on disk (repro.train.recorder), so a resumed run
never has to take a row back; meta.json's `tracked_step` says how far it got, and a resume first sends the
kept rows it had not (at most the last one, when a kill came between the checkpoint and the send). TensorBoard
also writes a purge step at every start, so a row sent twice is shown once. Rank 0 only; one call per
evaluation row: nothing per step, no host synchronisation added to the step.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Iterable

from repro.errors import ConfigError
from repro.results import METRICS, read_meta, read_metrics
from repro.train.rundir import update_meta

# metrics.csv column -> scalar tag (errors and losses grouped, so train and test sit side by side)
TAGS = {"train_err": "err/train", "test_err": "err/test", "val_err": "err/val", "train_loss": "loss/train",
        "test_loss": "loss/test", "val_loss": "loss/val", "lr": "lr", "epoch": "epoch"}
TRACKERS = ("tensorboard", "wandb")  # each one's package and the extra that installs it have its name
SCHEDULERS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")  # a batch job: W&B offline unless asked otherwise


def check(name: str) -> None:
    """ConfigError (one line, exit 2) for an unknown tracker or one whose package is not installed."""
    if name == "none":
        return
    if name not in TRACKERS:
        raise ConfigError(f"logger={name}: unknown tracker; use logger=none, logger=tensorboard or logger=wandb")
    try:
        __import__(name)
    except ImportError:
        raise ConfigError(f"logger={name} needs the {name} package, not installed here: pip install "
                          f"'repro[{name}]' (or uv sync --extra {name}), or run with logger=none") from None


def wandb_mode(mode: str) -> str:
    """logger.mode=auto: offline in a batch job or without WANDB_API_KEY (sync later: wandb sync DIR), else
    online; online, offline and disabled as W&B has them."""
    if mode != "auto":
        return mode
    if any(os.environ.get(v) for v in SCHEDULERS) or not os.environ.get("WANDB_API_KEY"):
        return "offline"
    return "online"


def scalars(row: dict) -> dict[str, float]:
    return {tag: float(row[col]) for col, tag in TAGS.items() if col in row}


class TensorBoard:
    """Event files in `log_dir`. `t0`: rows are stamped t0 + their wall_time (the exporter: a finished run's
    own time axis) instead of now (live)."""

    def __init__(self, log_dir: Path, purge_step: int, t0: float | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # events at or after purge_step written by an earlier start of this run are dropped by TensorBoard
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.t0 = t0

    def send(self, rows: Iterable[dict]) -> None:
        for row in rows:
            when = None if self.t0 is None else self.t0 + float(row["wall_time"])
            for tag, value in scalars(row).items():
                self.writer.add_scalar(tag, value, int(row["step"]), walltime=when)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, logger: Any, run_dir: Path, config: dict, run_id: str):
        import wandb

        self.run = wandb.init(project=logger.project, entity=logger.entity, group=run_dir.parent.name,
                              name=f"{run_dir.parent.name}/{run_dir.name}", id=run_id, resume="allow",
                              dir=str(Path(logger.dir)), mode=wandb_mode(logger.mode), config=config)

    def send(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.run.log(scalars(row), step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """One run's tracker: `send` the rows whose checkpoint is on disk, `close` at the end."""

    def __init__(self, sink, run_dir: Path):
        self.sink, self.dir = sink, run_dir

    def send(self, rows: list[dict]) -> None:
        if rows:
            self.sink.send(rows)
            update_meta(self.dir, tracked_step=int(rows[-1]["step"]))

    def close(self) -> None:
        self.sink.close()


def log_dir(logger: Any, run_dir: Path) -> Path:
    """<logger.dir>/<experiment>/<run>: `tensorboard --logdir runs` shows every sweep."""
    return Path(logger.dir) / run_dir.parent.name / run_dir.name


def open_tracker(logger: Any, run_dir: Path, config: dict, step: int) -> Tracker | None:
    """The run's tracker (None for logger=none), started at checkpoint `step` (0: a fresh run). A resume first
    sends the rows metrics.csv kept that the tracker had not got."""
    if logger.name == "none":
        return None  # (an unknown name or a missing package was refused by runtime.validate)
    meta = read_meta(run_dir)
    # rows the tracker has, up to the checkpoint (a diverged run rerun from its checkpoint had its last rows sent)
    done = min(int(meta.get("tracked_step", -1)), step) if step else -1
    if logger.name == "tensorboard":
        sink = TensorBoard(log_dir(logger, run_dir), purge_step=done + 1)
    else:
        run_id = meta.get("tracker_id") if step else None
        run_id = run_id or uuid.uuid4().hex[:12]  # a fresh start (overwrite=true too) is a new tracked run
        update_meta(run_dir, tracker_id=run_id)
        sink = WandB(logger, run_dir, config, run_id)
    tracker = Tracker(sink, run_dir)
    kept = read_metrics(run_dir / METRICS).to_dict("records") if step else []
    tracker.send([r for r in kept if done < int(r["step"]) <= step])
    return tracker
