"""Finished runs' metrics.csv into TensorBoard, after the fact (committed runs, runs of an offline cluster):

    python -m repro.export_tb results/fig6_short            # every finished run under it -> runs/
    python -m repro.export_tb results --out runs --unfinished # runs still training too
    tensorboard --logdir runs

Each run becomes <out>/<experiment>/<run> with the scalars logger=tensorboard writes live (err/train, err/test,
loss/..., lr, epoch; repro.train.trackers.TensorBoard). An export replaces what an earlier export (or a live
tracker) wrote there: the CSV is the record, the events a view of it.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from repro.errors import ResultsError, command
from repro.results import METRICS, find_runs, read_meta, read_metrics
from repro.train.trackers import TensorBoard, check


def start_time(meta: dict) -> float:
    """The run's (last) start as seconds since the epoch, for TensorBoard's relative time axis; 0 if unknown."""
    try:
        return datetime.fromisoformat(meta["start_time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0


def export_run(run: Path, out: Path) -> tuple[Path, int]:
    """One run folder's rows into <out>/<experiment>/<run>; (that folder, rows written)."""
    rows = read_metrics(run / METRICS).to_dict("records")
    dest = out / run.parent.name / run.name
    for old in dest.glob("events.out.tfevents.*"):
        old.unlink()
    sink = TensorBoard(dest, purge_step=0, t0=start_time(read_meta(run)))
    sink.send(rows)
    sink.close()
    return dest, len(rows)


@command  # Ctrl-C, a full disk, a read-only folder: one line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.export_tb", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+", help="run folders, or folders holding them (e.g. results)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="TensorBoard log root (default: runs)")
    p.add_argument("--unfinished", action="store_true", help="also export runs that are not done (marked so)")
    args = p.parse_args(argv)
    check("tensorboard")
    runs = find_runs(args.results)
    if not runs:
        raise ResultsError(f"no run folders (with a metrics.csv) under {', '.join(map(str, args.results))}")
    n = 0
    for run in runs:
        status = read_meta(run).get("status", "unknown")
        if status != "done" and not args.unfinished:
            print(f"[export] {run}: {status}, skipped (--unfinished to export it too)")
            continue
        dest, rows = export_run(run, args.out)
        n += 1
        print(f"[export] {run} -> {dest} ({rows} rows{'' if status == 'done' else ', ' + status})")
    print(f"[export] {n} run(s); view them with: tensorboard --logdir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
