"""Hydra's launcher plugin for `hydra/launcher=pack` (experiments/hydra/launcher/pack.yaml): several runs of a
sweep in one process (repro.train.pack). Hydra admits launchers only from the `hydra_plugins` namespace package;
this one ships inside the repro package (repro/_plugins, put on the path by repro.train's command) and stays a thin
shell, so that Hydra's plugin scan, which imports it on every start, imports nothing heavy."""
from __future__ import annotations

from hydra.plugins.launcher import Launcher


class PackLauncher(Launcher):
    def __init__(self, runs_at_once: int = 8) -> None:
        self.runs_at_once = runs_at_once
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx):
        from repro.train.pack import launch

        return launch(self, job_overrides, initial_job_idx)
