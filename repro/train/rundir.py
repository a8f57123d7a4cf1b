"""Writing a run folder (the reading side, torch-free, is repro.results): deciding whether a folder is
fresh, to resume or done; atomic files; the metrics CSV writer; metadata; the code's git revision."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from repro.errors import ResultsError
from repro.protocol import IMAGEFOLDER_STREAM, flatten, identity
from repro.results import CONFIG, FINAL, META, METRICS, MODEL, RESPONSES, kept_files, read_meta


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)  # the previous file stands
        if isinstance(e, OSError) and e.filename != str(path):  # name the file meant, not its temp copy
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    fsync_dir(path.parent)  # the rename itself on disk: a power cut cannot undo it


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new or removed file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunBusy(ResultsError):
    """The run folder is held by another live process (one owner per run folder)."""


class RunLock:
    """One owner per run folder: an exclusive flock on `results/<exp>/.<run>.lock`, beside the folder (so it
    survives the folder being moved aside), held by the process that trains the run for the run's life. It is
    an OS lock: it dies with its process (kill -9 included), so there is never a stale lock to delete by hand;
    the file says who holds it (pid, host, since when). `acquire` waits up to `wait_s` seconds for a holder to
    let go (a killed launcher's workers checkpointing on their way out, a run started twice) and then raises
    RunBusy naming the holder."""

    def __init__(self, run_dir: Path):
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.run_dir = run_dir
        self._fd: int | None = None
        self._made: list[Path] = []

    def _try(self) -> bool:
        import fcntl  # POSIX; imported here so that the module loads everywhere

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:  # the file may have been released (unlinked) between our open and our lock: then try again
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            h = json.loads(self.path.read_text() or "{}")
            return f"pid {h['pid']} on {h['host']} since {h['since']}"
        except (OSError, ValueError, KeyError):
            return "another process"

    def acquire(self, wait_s: float, poll_s: float = 0.5) -> "RunLock":
        # folders made for the lock alone (innermost first) are removed with it if nothing else went in them
        self._made = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._try():
            return self
        holder = self.holder()
        print(f"[results] {self.run_dir} is being trained by {holder}; waiting up to {wait_s:g} s for it to "
              f"finish or stop", flush=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            if self._try():
                print(f"[results] {self.run_dir}: {holder} let go of it", flush=True)
                return self
        raise RunBusy(f"{self.run_dir} is being trained by {self.holder()} (lock {self.path}); let it finish "
                      f"(rerun then: a finished run is skipped) or stop that process, then rerun the same command")

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # unlink first, then close: a waiter re-checks the inode
            os.close(self._fd)
            self._fd = None
            for folder in self._made:  # a folder still holding something is kept (rmdir fails)
                with contextlib.suppress(OSError):
                    folder.rmdir()


def update_meta(run_dir: Path, **fields: Any) -> dict:
    meta = {**read_meta(run_dir), **fields}
    atomic_write(run_dir / META, (json.dumps(meta, indent=2, default=str) + "\n").encode())
    return meta


def git_revision() -> tuple[str, bool]:
    """(commit, dirty) of the code that made a run; ('unknown', False) outside a git checkout of this project
    (an installed wheel: its folder may sit inside some other repository)."""
    here = Path(__file__).resolve().parents[1]  # repro/
    if not (here.parent / "pyproject.toml").is_file():
        return "unknown", False
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        # the code and configs only: results/ and plots/ change as runs are made
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/repro",
                                ":/experiments", ":/pyproject.toml", ":/uv.lock"], cwd=here,
                               capture_output=True, text=True, check=True)
        return rev.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def run_key(config: dict, meta: dict) -> dict[str, Any]:
    """What makes a run this run: its protocol (repro.protocol), net and seed — less which copy of the data
    (checked where the md5s are known: a new run's are not until its data is read) and an arithmetic
    that an old folder did not record."""
    flat = flatten(config)
    key = {**identity(config, meta), **{k: flat.get(k) for k in ("model.depth", "model.shortcut", "seed")}}
    key.pop("data.copy", None)
    if flat.get("data.format") == "imagefolder":  # and which random stream its draws came from
        key["data.stream"] = meta.get("data_stream", 1)
    return key


def run_diff(old: dict, old_meta: dict, new: dict, arith: str, processes: int = 1) -> dict[str, tuple]:
    """{key: (old value, new value)} where a run folder's run (`old` config and meta) and a new one (config
    `new` in arithmetic `arith` on `processes` data-parallel processes) differ. Keys that change no numbers
    (paths, devices, threads, speed switches, what is kept afterwards) are not compared; an arithmetic the old
    folder did not record is not either."""
    a = run_key(old, old_meta)
    b = run_key(new, {"fast": {"bf16": arith == "bf16"}, "processes": processes, "data_stream": IMAGEFOLDER_STREAM})
    if a["arithmetic"] == "unrecorded":
        b["arithmetic"] = "unrecorded"
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")}


def prepare_run_dir(run_dir: Path, config: dict, arith: str, overwrite: bool = False, processes: int = 1) -> str:
    """Decide what to do with `run_dir` before a run: 'fresh', 'resume' or 'skip' (already done), from
    the config and the arithmetic resolved for this device ('bf16'/'fp32') alone: no data is read.

    A folder made with a different run (another protocol, net or seed) is never reused silently: without
    `overwrite` it is an error naming the differing keys; with it, the old folder is moved aside (never
    deleted). Keys that change no numbers (paths, devices, speed switches, what is kept afterwards) may
    differ: the run is the same."""

    if not run_dir.exists() or not (run_dir / CONFIG).exists():
        return "fresh"
    old = yaml.safe_load((run_dir / CONFIG).read_text()) or {}
    meta = read_meta(run_dir)
    diff = run_diff(old, meta, config, arith, processes)
    if diff and not overwrite:
        shown = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in list(diff.items())[:8])
        if "optim.splits" in diff:
            shown += " (BN chunks of a batch: optim.splits x data-parallel processes)"
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
        fsync_dir(run_dir.parent)
        print(f"[results] moved the previous {run_dir} aside to {aside}", flush=True)
        return "fresh"
    return "skip" if meta.get("status") == "done" else "resume"


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
            fsync_dir(path.parent)

    def write(self, row: dict) -> None:
        try:
            self._w.writerow({k: row[k] for k in self.columns})
            self._sync()
        except OSError as e:  # a full disk: named (a half row is dropped on resume, by truncate_metrics)
            raise OSError(e.errno, e.strerror, str(self.path)) from e

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


def find_finished(results_root: Path, run_dir: Path, config: dict, arith: str,
                  same_data: Callable[[dict, dict], bool], processes: int = 1) -> Path | None:
    """A finished run under `results_root` (another experiment's) that is this very run — no `run_diff`,
    data that `same_data(its_config, its_meta)` confirms is the same copy — and that kept what this config
    asks to keep (weights, Fig. 7's responses, the multi-crop evaluation). None when there is none."""
    for cfg_path in sorted(Path(results_root).glob("*/*/config.yaml")):
        other = cfg_path.parent
        if other.resolve() == run_dir.resolve() or ".old-" in other.name:
            continue
        meta = read_meta(other)
        if meta.get("status") != "done" or meta.get("reused_from"):
            continue
        old = yaml.safe_load(cfg_path.read_text()) or {}
        missing = any(want and not (other / f).exists() for f, want in kept_files(config).items())
        if run_diff(old, meta, config, arith, processes) or missing or not same_data(old, meta):
            continue
        return other
    return None


REUSED_FILES = (METRICS, RESPONSES, FINAL, MODEL)


def reuse_run(origin: Path, run_dir: Path, config: dict) -> None:
    """Fill `run_dir` with the finished run `origin` (its results, this experiment's config); meta.json
    says where it came from (the readers count the computation once)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in REUSED_FILES:
        if (origin / name).exists():
            atomic_write(run_dir / name, (origin / name).read_bytes())
    atomic_write(run_dir / CONFIG, yaml.safe_dump(config, sort_keys=False).encode())
    update_meta(run_dir, **{**read_meta(origin), "reused_from": str(origin)})
