"""Sweep bookkeeping for Hydra multiruns: a failed run is marked in its Hydra output folder and the sweep
goes on; at the end, SweepSummary lists the failures and exits 1 (any launcher: basic, joblib, submitit)."""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

FAILED_MARK = "FAILED"  # in a multirun job's Hydra output folder: this run failed


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


class SweepSummary(Callback):
    """After a multirun: if runs failed, say which and exit 1, so a script or a CI job that launched the
    sweep notices. The other runs' results are complete either way."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        marks = sorted(Path(config.hydra.sweep.dir).glob(f"*/{FAILED_MARK}"))
        if not marks:
            return
        lines = [m.read_text().splitlines() for m in marks]
        print(f"error: {len(marks)} run(s) of this sweep failed:", file=sys.stderr)
        for overrides, *message in lines:
            print(f"  {overrides}: {' '.join(message)}", file=sys.stderr)
        print("Fix the cause and rerun the same command: finished runs are skipped, interrupted ones resume.",
              file=sys.stderr, flush=True)
        sys.exit(1)
