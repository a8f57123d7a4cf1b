"""The results contract: run folders, the metrics CSV, metadata, checkpoints, and the one reader.

results/<exp>/<run-name>/
  metrics.csv   one row per evaluation (COLUMNS below), flushed and fsynced as written
  config.yaml   the resolved config the run was made with
  meta.json     status (running/done/diverged/failed/preempted), versions, git revision, device, params
  checkpoint.pt the latest checkpoint (not committed); model.pt, the final weights (not committed)
  responses.csv per-layer response std on the test set (Fig. 7), written after training
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import yaml

from .names import display_name

# What each column means (the README repeats this):
#   step        optimiser steps done (iterations, §4.2's unit)
#   epoch       passes over the training set done (step * batch / train size)
#   lr          learning rate of the last step
#   train_loss  mean cross-entropy over the mini-batches since the previous row (augmented, train mode)
#   train_err   mean top-1 error (fraction) over the same mini-batches: the paper's dashed curves
#   test_loss   cross-entropy over the whole test set, eval mode, original view
#   test_err    top-1 error (fraction) over the whole test set: the paper's bold curves
#   wall_time   seconds of training so far (summed over resumes); the only column that varies run to run
COLUMNS = ("step", "epoch", "lr", "train_loss", "train_err", "test_loss", "test_err", "wall_time")
VAL_COLUMNS = ("val_loss", "val_err")  # with data.val_size: the held-out tail of the training set
STATUSES = ("running", "done", "diverged", "failed", "preempted")
INFO_COLUMNS = ("exp", "run", "family", "depth", "shortcut", "seed", "data", "total_steps", "batch_size", "status",
                "device", "params", "scale", "data_source", "name")
# Keys that do not change the experiment, so they may differ when resuming a run: where it runs and the
# speed switches (fast.*: checked against the fp32 path by tests/test_fidelity.py; a run may start on a CPU
# and finish on a GPU, or pick up switches added by a newer version of this code).
VOLATILE_KEYS = ("overwrite", "device", "results_dir", "log_every", "threads")
VOLATILE_GROUPS = ("fast",)


class ResultsError(Exception):
    """Malformed results or a run folder that cannot be used as asked; the message says what to do."""


def columns_for(with_val: bool) -> tuple[str, ...]:
    return COLUMNS + VAL_COLUMNS if with_val else COLUMNS


def atomic_write(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Write to a temp file, fsync, rename: a reader (or a crash) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "meta.json").read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise ResultsError(f"corrupt {run_dir / 'meta.json'}: {e}") from None


def update_meta(run_dir: Path, **fields: Any) -> dict:
    meta = {**read_meta(run_dir), **fields}
    atomic_write(run_dir / "meta.json", (json.dumps(meta, indent=2, default=str) + "\n").encode())
    return meta


def git_revision() -> tuple[str, bool]:
    """(commit, dirty) of the code that made a run; ('unknown', False) outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        # the code and configs only: results/ and plots/ change as runs are made
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/repro",
                                ":/experiments", ":/pyproject.toml", ":/requirements.lock"], cwd=here,
                               capture_output=True, text=True, check=True)
        return rev.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring VOLATILE_KEYS and VOLATILE_GROUPS."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    volatile = lambda k: k.split(".")[-1] in VOLATILE_KEYS or k.split(".")[0] in VOLATILE_GROUPS  # noqa: E731
    return [k for k in keys if not volatile(k) and a.get(k, "<absent>") != b.get(k, "<absent>")]


def prepare_run_dir(run_dir: Path, config: dict, overwrite: bool = False) -> str:
    """Decide what to do with `run_dir` before a run: 'fresh', 'resume' or 'skip' (already done).

    A folder made with a different config is never reused silently: without `overwrite` it is an
    error naming the differing keys; with it, the old folder is moved aside (never deleted)."""

    if not run_dir.exists() or not (run_dir / "config.yaml").exists():
        return "fresh"
    old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    diff = config_diff(old, config)
    if diff and not overwrite:
        shown = ", ".join(f"{k}: {flatten(old).get(k, '<absent>')} -> {flatten(config).get(k, '<absent>')}"
                          for k in diff[:8])
        raise ResultsError(
            f"{run_dir} holds a run made with a different config ({shown}); rerun with overwrite=true "
            f"to move it aside and start fresh, or change results_dir"
        )
    if diff or overwrite:
        n = 1
        while run_dir.with_name(f"{run_dir.name}.old-{n}").exists():
            n += 1
        aside = run_dir.with_name(f"{run_dir.name}.old-{n}")
        shutil.move(str(run_dir), str(aside))
        print(f"[results] moved the previous {run_dir} aside to {aside}", flush=True)
        return "fresh"
    status = read_meta(run_dir).get("status")
    return "skip" if status == "done" else "resume"


class MetricsWriter:
    """Appends one row per evaluation to metrics.csv, flushing and fsyncing each row so a live or
    killed run leaves a readable file."""

    def __init__(self, path: Path, columns: Iterable[str]):
        self.path, self.columns = path, tuple(columns)
        new = not path.exists() or path.stat().st_size == 0
        self._f = open(path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.columns)
        if new:
            self._w.writeheader()
            self._sync()

    def write(self, row: dict) -> None:
        self._w.writerow({k: row[k] for k in self.columns})
        self._sync()

    def _sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop rows after `last_step` (written after the checkpoint we resume from); returns rows kept."""
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    keep = [r for r in body if r and len(r) == len(header) and int(r[0]) <= last_step]
    lines = [header] + keep
    text = "".join(",".join(r) + "\r\n" for r in lines)  # csv's default line terminator
    atomic_write(path, text.encode())
    return len(keep)


def curve_gaps(a: pd.DataFrame, b: pd.DataFrame, cols: Iterable[str] = ("train_loss", "train_err", "test_err")
               ) -> dict[str, tuple[float, float]]:
    """Mean and largest |a - b| of each column over two runs evaluated at the same steps: how far one
    curve is from another (the fast path from the fp32 path, one seed from another)."""
    if list(a.step) != list(b.step):
        raise ResultsError(f"the runs were evaluated at different steps ({len(a)} vs {len(b)} rows); "
                           f"compare runs of the same schedule and eval_every")
    return {c: (float((a[c] - b[c]).abs().mean()), float((a[c] - b[c]).abs().max())) for c in cols}


def read_metrics(path: Path) -> pd.DataFrame:
    """One run's metrics.csv, checked against the contract; ResultsError names the file otherwise."""
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise ResultsError(f"cannot read {path}: {e}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    unknown = [c for c in df.columns if c not in COLUMNS + VAL_COLUMNS]
    if missing or unknown:
        raise ResultsError(
            f"{path} does not have the metrics columns {', '.join(COLUMNS)}: "
            f"missing {missing or 'none'}, unexpected {unknown or 'none'}"
        )
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise ResultsError(f"{path}: non-numeric values in column(s) {', '.join(bad)}")
    return df


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (those holding a metrics.csv) under each path; folders moved aside are ignored."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ResultsError(f"results folder {p} does not exist")
        found = [p] if (p / "metrics.csv").exists() else sorted(m.parent for m in p.rglob("metrics.csv"))
        runs += [r for r in found if ".old-" not in r.name and not r.name.startswith(".")]
    return runs


def run_info(run: Path) -> dict:
    """The config and meta columns that identify a run (joined onto every row read from it)."""

    cfg_path = run / "config.yaml"
    if not cfg_path.exists():
        raise ResultsError(f"{run} has results but no config.yaml: cannot tell which net it is")
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
        info = {
            "exp": run.parent.name,
            "run": run.name,
            "family": cfg["model"]["family"],
            "depth": int(cfg["model"]["depth"]),
            "shortcut": str(cfg["model"]["shortcut"]),
            "seed": int(cfg["seed"]),
            "data": cfg["data"]["name"],
            "total_steps": int(cfg["optim"]["total_steps"]),
            "batch_size": int(cfg["optim"]["batch_size"]),
        }
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ResultsError(f"{cfg_path} is not a run config ({type(e).__name__}: {e})") from None
    meta = read_meta(run)
    info.update(status=meta.get("status", "unknown"), device=meta.get("device", "unknown"), params=meta.get("params"),
                scale=meta.get("scale", "unknown"), data_source=meta.get("data_source", info["data"]),
                name=display_name(info["depth"], info["shortcut"]))
    return info


def read_results(paths: Iterable[str | Path] | str | Path) -> pd.DataFrame:
    """All runs under `paths` as one tidy DataFrame: every metrics row joined with its run's config
    columns (exp, run, name, family, depth, shortcut, seed, data, total_steps, batch_size) and meta
    (status, device, params). This is the only way the plotting code reads results."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = [read_metrics(run / "metrics.csv").assign(**run_info(run)) for run in find_runs(paths)]
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, *INFO_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def read_responses(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every run's responses.csv (Fig. 7: layer, std) joined with its run's config columns."""
    frames = []
    for run in find_runs(paths):
        if (run / "responses.csv").exists():
            df = pd.read_csv(run / "responses.csv")
            if list(df.columns) != ["layer", "std"]:
                raise ResultsError(f"{run / 'responses.csv'} must have the columns layer,std; got {list(df.columns)}")
            frames.append(df.assign(**run_info(run)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["layer", "std", *INFO_COLUMNS])


def read_finals(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every run's final.json (the final model's multi-crop evaluation: top1_err, top5_err, crops)."""
    rows = []
    for run in find_runs(paths):
        if (run / "final.json").exists():
            rows.append({**json.loads((run / "final.json").read_text()), "run": run.name})
    return pd.DataFrame(rows, columns=["run", "top1_err", "top5_err", "crops"]) if rows else \
        pd.DataFrame(columns=["run", "top1_err", "top5_err", "crops"])
