"""The results contract and its one reader (torch-free; writing a run folder is repro.train.rundir).

results/<exp>/<run-name>/
  metrics.csv   one row per evaluation (COLUMNS below), flushed and fsynced as written
  config.yaml   the resolved config the run was made with
  meta.json     status (running/done/diverged/failed/preempted/interrupted), versions, git revision, device, params
  checkpoint.pt the latest checkpoint (not committed); model.pt, the final weights (not committed)
  responses.csv per-layer response std on the test set (Fig. 7), written after training
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd
import yaml

from repro.errors import ResultsError
from repro.names import display_name
from repro.protocol import description, deviations, identity, label, protocol_key

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
# A run folder's files, declared once for every reader and writer (the README's CSV contract): the three every
# run has, what a finished run keeps besides (kept_files), and the training state (neither .pt is committed)
METRICS, CONFIG, META = "metrics.csv", "config.yaml", "meta.json"
RESPONSES, FINAL, MODEL, CHECKPOINT = "responses.csv", "final.json", "model.pt", "checkpoint.pt"
# responses.csv beside std (repro.train.analysis)
EXPLAIN_COLUMNS = ("gamma_abs_mean", "beta_std", "branch_over_shortcut")
VAL_COLUMNS = ("val_loss", "val_err")  # with data.val_size: the held-out tail of the training set
# Joined onto every row: who the run is (path: its identity; exp and run are only names), its protocol
# (repro.protocol: the readable label, a key for grouping, the number of deviations from the paper and the
# long description) and how it ended (finished: status done at its total_steps).
INFO_COLUMNS = ("path", "exp", "run", "family", "depth", "shortcut", "seed", "data", "total_steps", "batch_size",
                "status", "finished", "device", "params", "protocol", "protocol_key", "deviations", "scale",
                "data_source", "name")
Net = tuple[int, str]  # (depth, shortcut)


def kept_files(config: dict) -> dict[str, bool]:
    """Which of a finished run's results its config asks it to keep: the weights (save_model), Fig. 7's responses
    (analyze_responses, CIFAR) and the multi-crop evaluation (final_crops)."""
    return {MODEL: bool(config.get("save_model")),
            RESPONSES: bool(config.get("analyze_responses") and config["model"]["family"] == "cifar10"),
            FINAL: bool(config.get("final_crops"))}


def columns_for(with_val: bool) -> tuple[str, ...]:
    return COLUMNS + VAL_COLUMNS if with_val else COLUMNS


def read_meta(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / META).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise ResultsError(f"corrupt {run_dir / 'meta.json'}: {e}") from None


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
    if df.empty:  # a run that has just started: its header only
        return df.astype(float)
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
        found = [p] if (p / METRICS).exists() else sorted(m.parent for m in p.rglob(METRICS))
        runs += [r for r in found if ".old-" not in r.name and not r.name.startswith(".")]
    return runs


def run_info(run: Path) -> dict:
    """The config and meta columns that identify a run (joined onto every row read from it)."""
    cfg_path = run / CONFIG
    if not cfg_path.exists():
        raise ResultsError(f"{run} has results but no config.yaml: cannot tell which net it is")
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
        info = {
            "path": str(run),
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
    except (KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as e:
        raise ResultsError(f"{cfg_path} is not a run config ({type(e).__name__}: {e})") from None
    meta = read_meta(run)
    ident = identity(cfg, meta)
    info.update(status=meta.get("status", "unknown"), device=meta.get("device", "unknown"), params=meta.get("params"),
                protocol=label(ident), protocol_key=protocol_key(ident), deviations=len(deviations(ident)),
                scale=description(ident), data_source=meta.get("data_source", info["data"]),
                name=display_name(info["depth"], info["shortcut"]))
    return info


def read_results(paths: Iterable[str | Path] | str | Path) -> pd.DataFrame:
    """All runs under `paths` as one tidy DataFrame: every metrics row joined with its run's INFO_COLUMNS.
    This is the only way the plotting code reads results."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for run in find_runs(paths):
        df = read_metrics(run / METRICS)
        info = run_info(run)
        info["finished"] = info["status"] == "done" and not df.empty and int(df.step.max()) == info["total_steps"]
        frames.append(df.assign(**info))
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, *INFO_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def net_rows(df: pd.DataFrame, net: Net) -> pd.DataFrame:
    """The rows of one net (depth, shortcut)."""
    return df[(df.depth == net[0]) & (df.shortcut == net[1])]


def distinct_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Each computation once: of the runs with the same protocol, net and seed (one reused by another
    experiment, a copied folder), the rows of the finished one, else of the one read first."""
    if df.empty:
        return df
    order = {p: i for i, p in enumerate(dict.fromkeys(df.path))}
    runs = last_rows(df)
    runs = runs.assign(order=runs.path.map(order)).sort_values(["finished", "order"], ascending=[False, True])
    keep = set(runs.drop_duplicates(["protocol_key", "depth", "shortcut", "seed"]).path)
    return df[df.path.isin(keep)].reset_index(drop=True)


def last_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of each run (by its path), finished or not."""
    return df.sort_values(["path", "step"]).groupby("path", as_index=False).tail(1).reset_index(drop=True)


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The final row of each finished run ("final" is the last evaluation of a run that reached its total
    steps, never the best test epoch), one per (protocol, net, seed): the same computation found twice (a
    run reused by another experiment, a copied folder) is counted once."""
    last = last_rows(distinct_runs(df))
    return last[last.finished.astype(bool)].reset_index(drop=True)


def unfinished(df: pd.DataFrame) -> list[str]:
    """'<exp>/<run> (<status> at step s of N)' for every run that is not finished, for captions."""
    last = last_rows(df)
    return [f"{r.exp}/{r.run} ({r.status} at step {int(r.step)} of {int(r.total_steps)})"
            for r in last.itertuples() if not r.finished]


def read_responses(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every run's responses.csv (Fig. 7: layer, std; newer runs also gamma_abs_mean, beta_std and
    branch_over_shortcut, empty in older files) joined with its run's config columns."""
    frames, columns = [], ["layer", "std", *EXPLAIN_COLUMNS]
    for run in find_runs(paths):
        if (run / RESPONSES).exists():
            df = pd.read_csv(run / RESPONSES)
            if list(df.columns[:2]) != ["layer", "std"]:
                raise ResultsError(f"{run / 'responses.csv'} must start with the columns layer,std; "
                                   f"got {list(df.columns)}")
            frames.append(df.reindex(columns=columns).assign(**run_info(run)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*columns, *INFO_COLUMNS])


def read_finals(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every run's final.json (the final model's multi-crop evaluation: top1_err, top5_err, crops), by path."""
    cols = ["path", "top1_err", "top5_err", "crops"]
    rows = [{**json.loads((run / FINAL).read_text()), "path": str(run)}
            for run in find_runs(paths) if (run / FINAL).exists()]
    return pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
