"""Several runs in one process (hydra/launcher=pack, repro.train.pack): each run gives the CSV it gives alone, a
kill -9 of the group and a rerun give every run its uninterrupted CSV, a finished run is skipped, and a run
that diverges or fails is marked while the others go on."""
import os
import signal
import subprocess

import pandas as pd
import pytest
from conftest import ROOT, SMALL, compose, python

from repro.results import read_meta
from repro.train.loop import run

# exp=smoke's sizes without its sweep grid (the nets are swept here)
BASE = ["exp_name=p", "data.train_size=1000", *SMALL, "optim.batch_size=32",
        "optim.total_steps=40", "eval_every=10", "save_model=false", "analyze_responses=false", "threads=1"]
NETS = {"resnet-20": "cifar10-resnet-20-s0", "resnet-32": "cifar10-resnet-32-s0", "plain-20": "cifar10-plain-20-s0"}


def csv(results, name):
    return pd.read_csv(results / "p" / name / "metrics.csv").drop(columns="wall_time")


@pytest.fixture(scope="module")
def alone(tmp_path_factory, generated_cifar):
    """Each of the three runs trained on its own, in this process: what the packed group must reproduce."""
    results = tmp_path_factory.mktemp("alone")
    for net in NETS:
        assert run(compose([*BASE, f"+net={net}", f"results_dir={results}", f"data.root={generated_cifar}"])) == "done"
    return {net: csv(results, name) for net, name in NETS.items()}


def pack(results, cifar, *extra, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "REPRO_FAULT"} | ({"REPRO_FAULT": fault} if fault else {})
    cmd = [python(), "-m", "repro.train", "-m", *BASE, f"results_dir={results}", f"data.root={cifar}",
           "+net=" + ",".join(NETS), "hydra/launcher=pack",
           f"hydra.sweep.dir={results / 'hy'}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_a_packed_group_gives_each_run_the_csv_it_gives_alone(tmp_path, generated_cifar, alone):
    out = pack(tmp_path, generated_cifar)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[pack] 3 run(s), 3 at a time in this process" in out.stdout
    for net, name in NETS.items():
        pd.testing.assert_frame_equal(csv(tmp_path, name), alone[net])
        assert read_meta(tmp_path / "p" / name)["status"] == "done"


def test_a_killed_group_resumes_every_run_exactly_and_skips_the_finished_one(tmp_path, generated_cifar, alone):
    assert run(compose([*BASE, "+net=resnet-20", f"results_dir={tmp_path}", f"data.root={generated_cifar}"])) == "done"
    done_before = (tmp_path / "p" / NETS["resnet-20"] / "metrics.csv").read_bytes()
    killed = pack(tmp_path, generated_cifar, "hydra.launcher.runs_at_once=2", fault="kill:25")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "is done; skipping" in killed.stdout
    assert read_meta(tmp_path / "p" / NETS["resnet-32"])["status"] == "running"  # killed mid-run
    out = pack(tmp_path, generated_cifar, "hydra.launcher.runs_at_once=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("resuming") == 2
    assert (tmp_path / "p" / NETS["resnet-20"] / "metrics.csv").read_bytes() == done_before  # not touched
    for net, name in NETS.items():
        pd.testing.assert_frame_equal(csv(tmp_path, name), alone[net])


def test_a_run_that_diverges_or_fails_in_a_group_is_marked_and_the_others_go_on(tmp_path, generated_cifar, alone):
    from repro.train.pack import Job, train_pack

    common = [*BASE, f"results_dir={tmp_path}", f"data.root={generated_cifar}"]
    jobs = [Job(compose([*common, "+net=resnet-20", "exp_name=diverges", "optim.lr=1e12", "optim.milestones=[0.99]"])),
            Job(compose([*common, "+net=resnet-20", "data.root=/nonexistent", "data.download=false"]), tmp_path / "hy" / "1", "bad root"),
            Job(compose([*common, "+net=plain-20"]))]
    assert train_pack(jobs, runs_at_once=3) == ["diverged", "error", "done"]
    assert read_meta(tmp_path / "diverges" / NETS["resnet-20"])["status"] == "diverged"
    assert "CIFAR-10 not found in /nonexistent" in (tmp_path / "hy" / "1" / "FAILED").read_text()
    assert not (tmp_path / "p" / NETS["resnet-20"]).exists()  # bad input wrote nothing
    pd.testing.assert_frame_equal(csv(tmp_path, NETS["plain-20"]), alone["plain-20"])


def test_a_staggered_pack_gives_each_run_the_csv_it_gives_alone(tmp_path, generated_cifar, alone):
    """Three runs two at a time, one of them shorter: runs start and end out of step (a finished run's slot
    is taken by the next), and each still gives its CSV alone. (On CUDA each run is a graph on its own stream:
    tests/test_cuda.py runs the same there.)"""
    from repro.train.pack import Job, train_pack

    common = [*BASE, f"results_dir={tmp_path}", f"data.root={generated_cifar}"]
    short = [*common, "+net=plain-20", "exp_name=short", "optim.total_steps=20"]
    jobs = [Job(compose([*common, "+net=resnet-20"])), Job(compose(short)), Job(compose([*common, "+net=resnet-32"]))]
    assert train_pack(jobs, runs_at_once=2) == ["done", "done", "done"]
    for net in ("resnet-20", "resnet-32"):
        pd.testing.assert_frame_equal(csv(tmp_path, NETS[net]), alone[net])
    assert run(compose([*short, f"results_dir={tmp_path / 'alone'}"])) == "done"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "short" / NETS["plain-20"] / "metrics.csv").drop(columns="wall_time"),
                                  pd.read_csv(tmp_path / "alone" / "short" / NETS["plain-20"] / "metrics.csv")
                                  .drop(columns="wall_time"))


def test_a_pack_refuses_process_wide_settings_that_differ_in_one_line_writing_nothing(tmp_path, generated_cifar):
    out = pack(tmp_path, generated_cifar, "threads=1,2")  # a sweep over a process-wide setting
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: hydra/launcher=pack runs every run in one process, but threads differs between "
                           "them (1, 2)") and "separate sweeps" in line
    assert not (tmp_path / "p").exists()  # no run folder; the sweep folder holds Hydra's own multirun.yaml alone
    assert [f.name for f in (tmp_path / "hy").iterdir()] == ["multirun.yaml"]
