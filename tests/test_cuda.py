"""What only a GPU can show (.ci/gpu-check runs the graph and pack tests first): the CUDA path of the training
loop for real — bf16 autocast and channels_last as
`fast=auto` picks them there, a bit-exact kill-and-resume with `deterministic=true` (docs/gpus-and-clusters.md),
the logged test error equal to the saved model's, a CUDA checkpoint resumed on the CPU, and a run
under torchrun. They skip on a machine without CUDA (CI, this project's CPU machines); docs/gpus-and-clusters.md
says where they last ran. Kill points are decided on progress (the fault hooks), never on the clock."""

import pandas as pd
import pytest
import torch
from conftest import compose, train_process

from repro.results import read_meta
from repro.train.step import CHECKED

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RUN = "cifar10-resnet-20-s0"
ARGS = ["exp=smoke", "exp_name=r", "optim.total_steps=60", "eval_every=20", "analyze_responses=false",
        "device=cuda"]


def go(results, cifar, *extra, fault=None, torchrun=False):
    return train_process([*ARGS, f"results_dir={results}", f"data.root={cifar}", *extra], fault, 1 if torchrun else None)


def metrics(results):
    return pd.read_csv(results / "r" / RUN / "metrics.csv").drop(columns="wall_time")


@pytest.fixture(scope="module")
def deterministic_run(tmp_path_factory, generated_cifar):
    results = tmp_path_factory.mktemp("cuda")
    p = go(results, generated_cifar, "deterministic=true")
    assert p.returncode == 0, p.stderr[-2000:]
    return results


def test_a_cuda_run_uses_the_fast_path_and_logs_finite_falling_curves(deterministic_run):
    meta = read_meta(deterministic_run / "r" / RUN)
    assert meta["status"] == "done" and meta["device"] == torch.cuda.get_device_name(0)
    assert meta["fast"]["bf16"] is True and meta["fast"]["channels_last"] is True  # fast=auto on a bf16 GPU
    m = metrics(deterministic_run)
    assert list(m.step) == [20, 40, 60] and m.notna().all().all()
    assert m.train_loss.iloc[-1] < m.train_loss.iloc[0]


def test_the_logged_test_error_is_the_saved_models(deterministic_run, generated_cifar):
    from repro.data.sources import load_source
    from repro.models import build_model

    device = torch.device("cuda")
    model = build_model("cifar10", 20, "A").to(device)
    model.load_state_dict(torch.load(deterministic_run / "r" / RUN / "model.pt", weights_only=True))
    cfg = compose([*ARGS, f"data.root={generated_cifar}"])
    loss, errs, n = load_source(cfg, device).splits["test"](model).tolist()
    last = metrics(deterministic_run).iloc[-1]
    assert n == 500 and errs / n == pytest.approx(last.test_err, abs=2 / n)  # bf16: a borderline image may flip
    assert loss / n == pytest.approx(last.test_loss, rel=1e-2)


@pytest.mark.parametrize("fault", ["kill:33", "term:27"])
def test_deterministic_cuda_run_killed_then_resumed_gives_the_identical_csv(tmp_path, generated_cifar,
                                                                           deterministic_run, fault):
    p = go(tmp_path, generated_cifar, "deterministic=true", fault=fault)
    assert p.returncode != 0
    again = go(tmp_path, generated_cifar, "deterministic=true")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout
    pd.testing.assert_frame_equal(metrics(tmp_path), metrics(deterministic_run), check_exact=True)


def test_a_run_preempted_on_the_gpu_finishes_on_the_cpu(tmp_path, generated_cifar):
    """The checkpoint holds CPU tensors: a cluster job cut off on a GPU can be finished anywhere."""
    p = go(tmp_path, generated_cifar, fault="term:27")
    assert read_meta(tmp_path / "r" / RUN)["status"] == "preempted", p.stderr[-2000:]
    again = go(tmp_path, generated_cifar, "device=cpu", "threads=2", "fast.bf16=true")  # bf16 as it started, even
    # on a CPU without native bf16 (emulated: slower, the same arithmetic), where fast=auto would refuse the resume
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout and list(metrics(tmp_path).step) == [20, 40, 60]


def test_a_run_under_torchrun_trains_on_its_local_rank_gpu(tmp_path, generated_cifar):
    """One process (this machine has one GPU: NCCL refuses two ranks on one device, so DDP over NCCL needs two)."""
    p = go(tmp_path, generated_cifar, torchrun=True)
    assert p.returncode == 0, p.stderr[-2000:]
    meta = read_meta(tmp_path / "r" / RUN)
    assert meta["status"] == "done" and meta["processes"] == 1


# The whole step as one CUDA graph (fast.graph, repro/train/step.py) and several runs on one GPU (repro/train/pack.py):
# with deterministic=true a graphed run's CSV is the eager run's, bit for bit.

def test_a_graphed_run_gives_the_eager_runs_csv_across_the_lr_drops(tmp_path, generated_cifar, deterministic_run):
    """60 steps with the lr divided at 30 and 45: three captures, each replayed; the eager run is the reference."""
    eager = go(tmp_path, generated_cifar, "deterministic=true", "fast.graph=false")
    assert eager.returncode == 0, eager.stderr[-2000:]
    assert read_meta(tmp_path / "r" / RUN)["step"] == "eager"
    assert read_meta(deterministic_run / "r" / RUN)["step"] == CHECKED  # fast=auto on CUDA
    pd.testing.assert_frame_equal(metrics(deterministic_run), metrics(tmp_path), check_exact=True)


def test_the_warm_up_exit_recaptures_and_matches_the_eager_run(tmp_path, generated_cifar):
    warm = ["optim.warmup_from_depth=null", "optim.warmup_until_err=0.95"]  # ResNet-20 warms up, exits early
    runs = {}
    for graph in ("true", "false"):
        results = tmp_path / graph
        p = go(results, generated_cifar, "deterministic=true", f"fast.graph={graph}", *warm)
        assert p.returncode == 0 and "warm-up done at step" in p.stdout, p.stderr[-2000:]
        runs[graph] = (metrics(results), read_meta(results / "r" / RUN))
    assert runs["true"][1]["step"] == CHECKED and runs["false"][1]["step"] == "eager"
    assert runs["true"][1]["warmup_exit_step"] == runs["false"][1]["warmup_exit_step"]
    pd.testing.assert_frame_equal(runs["true"][0], runs["false"][0], check_exact=True)


def test_a_packed_group_on_streams_gives_each_run_its_csv_alone(tmp_path, generated_cifar):
    nets = {"resnet-20": "cifar10-resnet-20-s0", "resnet-32": "cifar10-resnet-32-s0", "plain-20": "cifar10-plain-20-s0"}
    base = [a for a in ARGS if a != "exp=smoke"] + ["data.train_size=1000", "data.test_size=500",
                                                     "data.eval_batch_size=500", "optim.batch_size=32",
                                                     "deterministic=true"]
    for net in nets:
        p = train_process([*base, f"+net={net}", f"results_dir={tmp_path / 'alone'}", f"data.root={generated_cifar}"])
        assert p.returncode == 0, p.stderr[-2000:]
    p = train_process(["-m", *base, "+net=" + ",".join(nets), "hydra/launcher=pack",
                       f"hydra.sweep.dir={tmp_path / 'hy'}", f"results_dir={tmp_path / 'pack'}",
                       f"data.root={generated_cifar}"])
    assert p.returncode == 0 and "[pack] 3 run(s), 3 at a time" in p.stdout, p.stderr[-2000:]
    for name in nets.values():
        alone, packed = (pd.read_csv(tmp_path / where / "r" / name / "metrics.csv").drop(columns="wall_time")
                         for where in ("alone", "pack"))
        assert read_meta(tmp_path / "pack" / "r" / name)["step"] == CHECKED
        pd.testing.assert_frame_equal(packed, alone, check_exact=True)


def test_a_staggered_pack_on_streams_gives_each_run_its_csv_alone(tmp_path, generated_cifar):
    """Three nets, two at a time, one of them shorter: graphs are captured, freed and replayed out of step on
    their own streams (each owns its cuBLAS workspace), and every run still gives its CSV alone."""
    nets = {"resnet-20": "cifar10-resnet-20-s0", "resnet-32": "cifar10-resnet-32-s0", "plain-20": "cifar10-plain-20-s0"}
    base = [a for a in ARGS if a != "exp=smoke"] + ["data.train_size=1000", "data.test_size=500",
                                                     "data.eval_batch_size=500", "optim.batch_size=32",
                                                     "deterministic=true"]
    short = {"plain-20": ["optim.total_steps=20", "eval_every=10"]}
    for net in nets:
        p = train_process([*base, f"+net={net}", *short.get(net, []), f"results_dir={tmp_path / 'alone' / net}",
                           f"data.root={generated_cifar}"])
        assert p.returncode == 0, p.stderr[-2000:]
    from repro.train.pack import Job, train_pack  # in this process: one run may be shorter than the others

    jobs = [Job(compose([*base, f"+net={net}", *short.get(net, []), f"results_dir={tmp_path / 'staggered'}",
                         f"data.root={generated_cifar}"])) for net in ("resnet-20", "plain-20", "resnet-32")]
    assert train_pack(jobs, runs_at_once=2) == ["done", "done", "done"]
    for net, name in nets.items():
        alone, packed = (pd.read_csv(tmp_path / where / "r" / name / "metrics.csv").drop(columns="wall_time")
                         for where in (f"alone/{net}", "staggered"))
        assert read_meta(tmp_path / "staggered" / "r" / name)["step"] == CHECKED
        pd.testing.assert_frame_equal(packed, alone, check_exact=True)


def test_a_graph_that_fails_its_capture_falls_back_to_eager_and_gives_the_eager_csv(tmp_path, generated_cifar,
                                                                                   deterministic_run):
    p = go(tmp_path, generated_cifar, "deterministic=true", fault="capture:3")  # the first capture (WARMUP)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "CUDA graph not used: capture failed (injected capture failure at step 3)" in p.stdout
    assert read_meta(tmp_path / "r" / RUN)["step"].startswith("eager (graph check failed: capture failed")
    eager = go(tmp_path / "eager", generated_cifar, "deterministic=true", "fast.graph=false")
    assert eager.returncode == 0, eager.stderr[-2000:]
    pd.testing.assert_frame_equal(metrics(tmp_path), metrics(tmp_path / "eager"), check_exact=True)


@pytest.mark.parametrize("net", ["plain-20", "plain-32", "plain-44", "plain-56", "resnet-20", "resnet-32", "resnet-44",
                                 "resnet-56", "resnet-110"])
def test_the_graph_check_passes_on_every_net_of_fig6(tmp_path, generated_cifar, net):
    """deterministic=false, as users run: the graph's step within GRAPH_RTOL of the eager step at each capture."""
    args = [a for a in ARGS if a != "exp=smoke"] + ["data.train_size=1000", "data.test_size=100",
                                                     "data.eval_batch_size=100", "optim.total_steps=12",
                                                     "eval_every=6", "optim.milestones=[0.5]", f"+net={net}"]
    p = train_process([*args, f"results_dir={tmp_path}", f"data.root={generated_cifar}"])
    assert p.returncode == 0 and "CUDA graph not used" not in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    (run_dir,) = (tmp_path / "r").iterdir()
    assert read_meta(run_dir)["step"] == CHECKED
