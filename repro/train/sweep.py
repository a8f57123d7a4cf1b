"""Sweep bookkeeping for Hydra multiruns: a failed run is marked in its Hydra output folder and the sweep
goes on; at the end, SweepSummary lists the failures and exits 1 (any launcher: basic, joblib, submitit).
SweepInterrupt keeps a parallel sweep's launching process alive through a Ctrl-C while its runs checkpoint."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

FAILED_MARK = "FAILED"  # in a multirun job's Hydra output folder: this run failed
INTERRUPTED_MARK = "INTERRUPTED"  # in a multirun's sweep folder: Ctrl-C came, no further run starts


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def mark_failed(message: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = " ".join(HydraConfig.get().overrides.task)
    (out / FAILED_MARK).write_text(f"{overrides}\n{message}\n")


def sweep_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir)


def mark_interrupted(folder: Path | None = None) -> None:
    """Ctrl-C came: the runs still to start in this sweep are not started (repro.train.main looks)."""
    folder = folder or sweep_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INTERRUPTED_MARK).touch()


def sweep_interrupted() -> bool:
    return is_multirun() and (sweep_dir() / INTERRUPTED_MARK).exists()


class SweepSummary(Callback):
    """After a multirun: if runs failed, say which and exit 1, so a script or a CI job that launched the
    sweep notices; if Ctrl-C stopped it, say how to resume it and exit 130. The other runs' results are
    complete either way."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir)
        marks = sorted(folder.glob(f"*/{FAILED_MARK}"))
        if marks:
            lines = [m.read_text().splitlines() for m in marks]
            print(f"error: {len(marks)} run(s) of this sweep failed:", file=sys.stderr)
            for overrides, *message in lines:
                print(f"  {overrides}: {' '.join(message)}", file=sys.stderr)
        if (folder / INTERRUPTED_MARK).exists():
            print("[sweep] interrupted (Ctrl-C): the runs that were training stopped at their step with a checkpoint; "
                  "rerun the same command to resume the sweep (finished runs are skipped)", file=sys.stderr,
                  flush=True)
            sys.exit(130)
        if marks:
            print("Fix the cause and rerun the same command: finished runs are skipped, interrupted ones resume.",
                  file=sys.stderr, flush=True)
            sys.exit(1)


class SweepInterrupt(Callback):
    """Ctrl-C in a sweep: each training run stops at its step with a checkpoint (repro.train.signals.SignalFlag),
    marks the sweep interrupted and returns, so no further run starts and SweepSummary ends the sweep with exit
    130. Where the runs are worker processes (hydra/launcher=parallel, joblib), the terminal's SIGINT reaches
    every process of the group, and the launching process must outlive its workers meanwhile (on
    KeyboardInterrupt joblib kills them, mid-checkpoint perhaps): its first SIGINT only marks the sweep; a second
    one, when the runs exit at once too, ends it. A sweep started with SIGINT ignored keeps ignoring it."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir)
        (folder / INTERRUPTED_MARK).unlink(missing_ok=True)  # a rerun into the same folder resumes the sweep
        if "joblib" not in str(config.hydra.launcher.get("_target_", "")) or \
                signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
            return
        seen: list[int] = []

        def note(signum, frame) -> None:
            if seen:
                raise KeyboardInterrupt
            seen.append(signum)
            mark_interrupted(folder)
            print("[sweep] Ctrl-C: each run stops at its current step with a checkpoint, then the sweep ends "
                  "(Ctrl-C again: at once)", file=sys.stderr, flush=True)

        signal.signal(signal.SIGINT, note)
