"""Data-parallel runs for real: two gloo processes on the CPU under torchrun, killed, preempted and resumed.
Every kill point is decided on progress (the fault hooks at a step), never on the clock. Slow (each run
starts two processes): `make test-all` runs them, `make test` does not."""
import random

import pandas as pd
import pytest
from conftest import train_process

from repro.results import read_meta
from repro.train.loop import AGREE_EVERY

pytestmark = pytest.mark.slow

RUN = "cifar10-resnet-20-s0-fp32"  # fast.bf16=false names the folder
# fp32 and contiguous weights: the comparison with one process is then down to the order of float sums
ARGS = ["exp=smoke", "exp_name=r", "optim.total_steps=60", "eval_every=20", "save_model=false",
        "analyze_responses=false", "threads=1", "fast.bf16=false", "fast.channels_last=false"]


def go(results, cifar, *extra, nproc=2, fault=None):
    return train_process([*ARGS, f"results_dir={results}", f"data.root={cifar}", *extra], fault, nproc,
                         env={"OMP_NUM_THREADS": "1"})


def metrics(results):
    return pd.read_csv(results / "r" / RUN / "metrics.csv").drop(columns="wall_time")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, generated_cifar):
    """An uninterrupted two-process run, with its final weights."""
    results = tmp_path_factory.mktemp("ddp")
    p = go(results, generated_cifar, "save_model=true")
    assert p.returncode == 0, p.stderr[-2000:]
    return results


@pytest.fixture(scope="module")
def uninterrupted(ddp_run):
    return metrics(ddp_run)


def test_evaluations_measure_the_model_rank_0_saves(ddp_run, generated_cifar):
    """Each rank evaluates half of the test set; with rank 0's BN statistics on both, the logged test error
    is the saved model's (with its own, rank 1 would measure a slightly different model)."""
    import torch
    from conftest import compose

    from repro.data.sources import load_source
    from repro.models import build_model

    model = build_model("cifar10", 20, "A")
    model.load_state_dict(torch.load(ddp_run / "r" / RUN / "model.pt", weights_only=True))
    cfg = compose([*ARGS, f"data.root={generated_cifar}"])
    loss, errs, n = load_source(cfg, torch.device("cpu")).splits["test"](model).tolist()
    last = metrics(ddp_run).iloc[-1]
    assert n == 500 and errs / n == last.test_err and loss / n == pytest.approx(last.test_loss, rel=1e-6)


@pytest.mark.parametrize("fault", ["after_checkpoint:20", f"kill:{random.Random(7).randrange(21, 40)}"])
def test_two_processes_killed_then_resumed_give_the_uninterrupted_csv(tmp_path, generated_cifar, uninterrupted, fault):
    """Killed right after a checkpoint, and mid-interval at a random step: the checkpoint holds the bare model
    and all ranks' sums together, loaded alike on every rank, so the rerun ends with the same CSV."""
    killed = go(tmp_path, generated_cifar, fault=fault)
    assert killed.returncode != 0 and read_meta(tmp_path / "r" / RUN)["status"] == "running"
    again = go(tmp_path, generated_cifar)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout and "at step 20" in again.stdout
    pd.testing.assert_frame_equal(metrics(tmp_path), uninterrupted, check_exact=True)


def test_sigterm_to_the_launcher_stops_every_rank_at_one_step_and_the_rerun_resumes_exactly(
        tmp_path, generated_cifar, uninterrupted):
    """As SLURM signals a job step: torchrun hands SIGTERM on to the ranks, which get it at different steps;
    they agree on one step to stop at, rank 0 writes one checkpoint there, and the rerun continues it
    exactly, the mid-interval training sums included."""
    p = go(tmp_path, generated_cifar, fault="term_launcher:27")
    assert p.returncode != 0
    run_dir = tmp_path / "r" / RUN
    meta = read_meta(run_dir)
    assert meta["status"] == "preempted", p.stderr[-2000:]
    stop = meta["preempted_at_step"]
    assert 27 < stop < 60 and stop % AGREE_EVERY == 0  # at a vote, before the end
    assert [f.name for f in run_dir.glob("*checkpoint*")] == ["checkpoint.pt"]  # one, complete
    again = go(tmp_path, generated_cifar)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"at step {stop}" in again.stdout
    pd.testing.assert_frame_equal(metrics(tmp_path), uninterrupted, check_exact=True)


def test_two_processes_train_as_one_process_with_the_same_global_batch(tmp_path, generated_cifar, uninterrupted):
    """Two ranks of 16 images each = one process with the batch of 32 in two BN chunks (optim.splits=2):
    the same gradients, summed in another order. The test columns are not compared: under DDP the BN running
    statistics are rank 0's chunk's, in one process they follow both chunks."""
    p = go(tmp_path, generated_cifar, "optim.splits=2", nproc=0)
    assert p.returncode == 0, p.stderr[-2000:]
    one = metrics(tmp_path)
    cols = ["step", "epoch", "lr", "train_loss", "train_err"]
    pd.testing.assert_frame_equal(one[cols], uninterrupted[cols], check_exact=False, rtol=1e-5, atol=1e-6)


def test_a_two_process_run_resumes_in_one_process_with_the_same_bn_chunks(tmp_path, generated_cifar, uninterrupted):
    """Killed on two processes, resumed on one: refused with one BN batch of 32 (another protocol), taken with
    optim.splits=2 (BN over 16, as on the two ranks), ending as the uninterrupted two-process run does (to float
    tolerance: the gradients are summed in another order)."""
    assert go(tmp_path, generated_cifar, fault="after_checkpoint:20").returncode != 0
    alone = go(tmp_path, generated_cifar, nproc=0)
    assert alone.returncode == 2 and "optim.splits: 2 -> 1 (BN chunks of a batch" in alone.stderr, alone.stderr[-1000:]
    again = go(tmp_path, generated_cifar, "optim.splits=2", nproc=0)
    assert again.returncode == 0 and "at step 20" in again.stdout, again.stderr[-2000:]
    assert read_meta(tmp_path / "r" / RUN)["processes"] == 2  # the run's protocol stays the one it started with
    cols = ["step", "epoch", "lr", "train_loss", "train_err"]
    pd.testing.assert_frame_equal(metrics(tmp_path)[cols], uninterrupted[cols], check_exact=False, rtol=1e-5, atol=1e-6)


def start(results, cifar, *extra, fault=None, fault_rank=None, tag="first"):
    """The two-process run in the background, its processes marked by REPRO_TEST_TAG=<tag>."""
    import os
    import subprocess

    from conftest import ROOT, python

    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRO_FAULT")}
    env |= {"OMP_NUM_THREADS": "1", "REPRO_TEST_TAG": tag} | ({"REPRO_FAULT": fault} if fault else {}) | \
        ({"REPRO_FAULT_RANK": str(fault_rank)} if fault_rank is not None else {})
    cmd = [python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "repro.train", *ARGS,
           f"results_dir={results}", f"data.root={cifar}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tagged(tag: str) -> list[int]:
    """Live processes started with REPRO_TEST_TAG=<tag>."""
    from pathlib import Path

    pids = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if f"REPRO_TEST_TAG={tag}".encode() in (p / "environ").read_bytes().split(b"\0"):
                state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
                pids.append(int(p.name)) if state != "Z" else None
        except OSError:
            continue
    return pids


def test_the_launcher_killed_alone_leaves_no_orphans_and_the_rerun_completes_the_run(tmp_path, generated_cifar,
                                                                                    uninterrupted):
    """torchrun SIGKILLed right after the first checkpoint: its workers (in sessions of their own) get SIGTERM
    from the kernel as their parent dies, stop at one voted step with a checkpoint; the same command at once
    waits for them to let go of the folder and resumes — every row once, no hang, no process of the first
    launch left."""
    first = start(tmp_path, generated_cifar, fault="kill_launcher:20", tag="k1")
    first.communicate(timeout=300)
    assert first.returncode == -9
    again = go(tmp_path, generated_cifar)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout
    pd.testing.assert_frame_equal(metrics(tmp_path), uninterrupted, check_exact=True)
    assert tagged("k1") == []
    assert read_meta(tmp_path / "r" / RUN)["status"] == "done"


def test_the_same_two_process_run_started_twice_at_once_trains_once(tmp_path, generated_cifar, uninterrupted):
    """The first launch's rank 0 is held (SIGSTOP at step 5) until the second launch's rank 0 says it waits for
    it; then both end, the second skipping the finished run, and the CSV has every row once."""
    import os
    import signal

    from test_reliability import line_with

    first = start(tmp_path, generated_cifar, fault="stop:5", fault_rank=0, tag="t1")
    holder = int(line_with(first, "stops at step 5").split()[2])  # "[fault] pid N stops at step 5"
    second = start(tmp_path, generated_cifar, "lock_wait_s=600", tag="t2")
    assert f"pid {holder}" in line_with(second, "is being trained by")
    os.kill(holder, signal.SIGCONT)
    out, err = second.communicate(timeout=300)
    first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err[-2000:]
    assert "is done; skipping" in out and "[ResNet-20] step" not in out
    pd.testing.assert_frame_equal(metrics(tmp_path), uninterrupted, check_exact=True)


@pytest.mark.parametrize("fault", ["kill:25", "stop:25"])
def test_a_rank_whose_peer_is_lost_ends_with_a_clear_error_and_the_rerun_resumes(tmp_path, generated_cifar,
                                                                                 uninterrupted, fault):
    """Rank 1 killed (its socket closes) or stalled (SIGSTOP: only the collective timeout can tell) at step 25:
    rank 0 ends within dist_timeout_s with one line, the run marked failed, and the rerun resumes from the
    checkpoint of step 20 to the uninterrupted CSV."""
    lost = start(tmp_path, generated_cifar, "dist_timeout_s=20", fault=fault, fault_rank=1, tag=f"p{fault[0]}")
    out, err = lost.communicate(timeout=300)
    assert lost.returncode != 0
    assert "a data-parallel peer was lost or stalled at step 2" in err, err[-2000:]
    assert read_meta(tmp_path / "r" / RUN)["status"] == "failed"
    again = go(tmp_path, generated_cifar)
    assert again.returncode == 0 and "at step 20" in again.stdout, again.stderr[-2000:]
    pd.testing.assert_frame_equal(metrics(tmp_path), uninterrupted, check_exact=True)
