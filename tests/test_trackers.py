"""The optional trackers (logger=tensorboard|wandb, repro.train.trackers) and the TensorBoard exporter: a tracker
shows each CSV row once, in order, across kills and resumes; a missing package is one line, exit 2."""
import signal
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from conftest import SMALL, compose, train_process

from repro.results import read_meta

RUN = "cifar10-resnet-20-s0"
BASE = ["exp=smoke", *SMALL, "exp_name=r", "optim.total_steps=40", "eval_every=10", "save_model=false",
        "analyze_responses=false", "threads=1"]
TAGS = {"err/train": "train_err", "err/test": "test_err", "loss/train": "train_loss", "lr": "lr"}


def raw_events(log_dir: Path) -> list[tuple[str, int, float]]:
    """Every scalar event in every event file under `log_dir`, as written (no purging applied)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                out.append((v.tag, ev.step, float(v.tensor.float_val[0] if v.tensor.float_val else v.simple_value)))
    return out


def shown(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: its own reader, which applies the purge steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_shows_the_csv(log_dir: Path, csv: pd.DataFrame) -> None:
    raw = raw_events(log_dir)
    assert len(raw) == len({(tag, step) for tag, step, _ in raw}), "a row was sent twice"
    view = shown(log_dir)
    for tag, col in TAGS.items():
        assert [s for s, _ in view[tag]] == list(csv.step), tag  # every step once, in order
        assert [v for _, v in view[tag]] == pytest.approx(list(csv[col]), rel=1e-6), tag


@pytest.mark.parametrize("fault", ["after_row:20", "after_checkpoint:20"])
def test_a_tensorboard_run_killed_after_its_second_row_and_resumed_shows_each_csv_row_once(tmp_path, generated_cifar,
                                                                                          fault):
    """after_row: row 20 is in the CSV but its checkpoint is not (the resume recomputes it); after_checkpoint:
    row 20's checkpoint is on disk but the tracker never got the row (the resume sends it from the CSV)."""
    pytest.importorskip("tensorboard")
    args = [*BASE, f"results_dir={tmp_path / 'results'}", f"data.root={generated_cifar}", "logger=tensorboard",
            f"logger.dir={tmp_path / 'tb'}"]
    assert train_process(args, fault=fault).returncode == -signal.SIGKILL
    log_dir = tmp_path / "tb" / "r" / RUN
    assert [s for s, _ in shown(log_dir)["err/train"]] == [10]  # only the row whose checkpoint was on disk
    p = train_process(args)
    assert p.returncode == 0, p.stderr
    run_dir = tmp_path / "results" / "r" / RUN
    csv = pd.read_csv(run_dir / "metrics.csv")
    assert list(csv.step) == [10, 20, 30, 40]
    assert_shows_the_csv(log_dir, csv)
    assert read_meta(run_dir)["tracked_step"] == 40


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, generated_cifar):
    args = [*BASE, f"results_dir={tmp_path}", f"data.root={generated_cifar}", "logger=wandb"]
    blocker = tmp_path / "no-wandb"  # a `wandb` that cannot be imported, whether or not wandb is installed
    blocker.mkdir()
    (blocker / "wandb.py").write_text("raise ImportError('blocked by the test')\n")
    p = train_process(args, env={"PYTHONPATH": str(blocker)})
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: logger=wandb needs the wandb package, not installed here: pip install 'repro[wandb]' (or uv sync "
        "--extra wandb), or run with logger=none"]
    assert not (tmp_path / "r").exists()  # refused before anything was written
    p = train_process([*BASE, f"results_dir={tmp_path}", f"data.root={generated_cifar}", "logger=mlflow"])
    assert p.returncode == 2 and "unknown logger 'mlflow' (logger=mlflow); known: none, tensorboard, wandb" in p.stderr


class FakeWandb(types.ModuleType):
    """What repro.train.trackers calls of W&B, recorded (W&B itself is an optional, heavy extra)."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)
        return self

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished += 1


def test_wandb_gets_each_row_once_in_one_resumed_run_offline_by_default(tmp_path, generated_cifar, monkeypatch):
    from repro.train.loop import run

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    over = [*BASE, f"results_dir={tmp_path}", f"data.root={generated_cifar}", "logger=wandb",
            f"logger.dir={tmp_path / 'wb'}"]
    run(compose([*over, "optim.total_steps=40"]))
    assert [s for s, _ in fake.logged] == [10, 20, 30, 40]
    assert fake.logged[0][1]["err/train"] == pd.read_csv(tmp_path / "r" / RUN / "metrics.csv").train_err[0]
    (init,) = fake.inits
    assert init["mode"] == "offline" and init["resume"] == "allow" and init["name"] == f"r/{RUN}"
    assert init["config"]["optim"]["total_steps"] == 40 and fake.finished == 1

    monkeypatch.setenv("WANDB_API_KEY", "x")
    monkeypatch.setenv("SLURM_JOB_ID", "1")  # a batch job: offline even with a key
    fake2 = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake2)
    run(compose([*over, "overwrite=true", "optim.total_steps=40"]))
    assert fake2.inits[0]["mode"] == "offline" and fake2.inits[0]["id"] != init["id"]  # a fresh start: a new run


def test_the_exporter_writes_finished_runs_and_says_what_it_skipped(tmp_path, generated_cifar, capsys):
    pytest.importorskip("tensorboard")
    from repro.export_tb import main
    from repro.train.loop import run

    run(compose([*BASE, f"results_dir={tmp_path / 'results'}", f"data.root={generated_cifar}"]))
    unfinished = tmp_path / "results" / "r" / "cifar10-plain-20-s0"
    unfinished.mkdir()
    pd.read_csv(tmp_path / "results" / "r" / RUN / "metrics.csv").head(1).to_csv(unfinished / "metrics.csv",
                                                                                  index=False)
    out = tmp_path / "tb"
    assert main([str(tmp_path / "results"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cifar10-plain-20-s0: unknown, skipped (--unfinished to export it too)" in text
    assert main([str(tmp_path / "results"), "--out", str(out)]) == 0  # again: replaced, not appended
    assert_shows_the_csv(out / "r" / RUN, pd.read_csv(tmp_path / "results" / "r" / RUN / "metrics.csv"))
    assert not (out / "r" / "cifar10-plain-20-s0").exists()
    assert main([str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_a_diverged_run_rerun_from_its_checkpoint_shows_each_step_once(tmp_path, generated_cifar):
    """A diverged run's last row reached the tracker without a checkpoint after it; its rerun resumes from the
    checkpoint before it and diverges again: the purge step drops the first copy. (Diverging after a checkpoint:
    a warm-up at a sane lr until the first check, then lr 1e12.)"""
    pytest.importorskip("tensorboard")
    from repro.train.loop import run

    over = [*BASE, f"results_dir={tmp_path / 'results'}", f"data.root={generated_cifar}", "logger=tensorboard",
            f"logger.dir={tmp_path / 'tb'}", "optim.lr=1e12", "optim.milestones=[0.99]", "optim.warmup_lr=0.01",
            "optim.warmup_from_depth=20", "optim.warmup_until_err=0.999"]
    assert run(compose(over)) == "diverged"
    first = shown(tmp_path / "tb" / "r" / RUN)["err/train"]
    assert [s for s, _ in first] == [10, 20]  # diverged at the second row, after the first one's checkpoint
    assert run(compose(over)) == "diverged"
    csv = pd.read_csv(tmp_path / "results" / "r" / RUN / "metrics.csv")
    assert [s for s, _ in shown(tmp_path / "tb" / "r" / RUN)["err/train"]] == list(csv.step) == [s for s, _ in first]
