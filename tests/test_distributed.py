"""Data-parallel runs for real: two gloo processes on the CPU under torchrun, killed, preempted and resumed.
Every kill point is decided on progress (the fault hooks at a step), never on the clock. Slow (each run
starts two processes): `make test-all` runs them, `make test` does not."""
import random

import pandas as pd
import pytest

from repro.results import read_meta
from repro.train import AGREE_EVERY
from conftest import train_process

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

    from repro.models import build_model
    from repro.sources import load_source
    from conftest import compose

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
