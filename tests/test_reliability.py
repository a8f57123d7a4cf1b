"""Faults injected on purpose: SIGKILL at random and at chosen points, SIGTERM, a failing run in a sweep,
divergence, a changed config, and every kind of bad input. Nothing may be lost, duplicated or overwritten."""
import os
import pickle
import random
import signal
import subprocess

import pandas as pd
import pytest
import torch
from conftest import ROOT, SMALL, compose, python, write_cifar_folder

from repro.errors import ConfigError
from repro.models import build_model
from repro.results import read_meta
from repro.train.checkpoint import load_checkpoint
from repro.train.loop import run
from repro.train.rundir import prepare_run_dir, run_diff

RUN = "cifar10-resnet-20-s0"
BASE = ["exp=smoke", *SMALL, "exp_name=r", "optim.total_steps=40", "eval_every=10", "save_model=false",
        "analyze_responses=false", "threads=1"]


def train_cmd(results, cifar, *extra):
    return [python(), "-m", "repro.train", *BASE, f"results_dir={results}", f"data.root={cifar}", *extra]


def sigint_default() -> None:
    """In the child: Ctrl-C as at a terminal, even when pytest itself was started with SIGINT ignored
    (a background job), which children inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(results, cifar, *extra, fault=None, wait=True):
    env = {**os.environ, **({"REPRO_FAULT": fault} if fault else {})}
    env.pop("REPRO_FAULT", None) if not fault else None
    p = subprocess.Popen(train_cmd(results, cifar, *extra), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    if wait:
        out, err = p.communicate(timeout=300)
        p.stdout_text, p.stderr_text = out, err
    return p


def metrics(results):
    return pd.read_csv(results / "r" / RUN / "metrics.csv").drop(columns="wall_time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, generated_cifar):
    """The uninterrupted run every interrupted one must reproduce exactly."""
    results = tmp_path_factory.mktemp("ref")
    assert launch(results, generated_cifar).returncode == 0
    return metrics(results)


@pytest.mark.parametrize("fault", ["after_row:20", "after_checkpoint:20", "checkpoint:30"])
def test_kill_at_a_chosen_point_then_resume_gives_the_identical_csv(tmp_path, generated_cifar, reference, fault):
    p = launch(tmp_path, generated_cifar, fault=fault)
    assert p.returncode == -signal.SIGKILL
    run_dir = tmp_path / "r" / RUN
    if fault == "after_row:20":  # the row of step 20 is on disk, its checkpoint is not
        assert metrics(tmp_path).step.max() == 20
        assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["state"]["step"] == 10
    if fault == "checkpoint:30":  # killed inside the checkpoint write: the previous one is intact
        assert list(run_dir.glob(".checkpoint.pt.*.tmp"))
        model = build_model("cifar10", 20, "A", width=4)  # conftest.SMALL's net
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        assert load_checkpoint(run_dir / "checkpoint.pt", model, opt).step == 20
    p = launch(tmp_path, generated_cifar)
    assert p.returncode == 0, p.stderr_text[-1000:]
    assert "resuming" in p.stdout_text
    pd.testing.assert_frame_equal(metrics(tmp_path), reference, check_exact=True)
    assert not list(run_dir.glob("*.tmp")) and read_meta(run_dir)["status"] == "done"


@pytest.mark.parametrize("seed", [1234])
def test_sigkill_at_random_steps_then_resume_gives_the_identical_csv(tmp_path, generated_cifar, reference, seed):
    """Killed three times, each at a random step (decided on progress through the fault hook, never on
    the clock): mid-interval, right after a row or a checkpoint, before or after the previous kill."""
    steps = sorted(random.Random(seed).sample(range(1, 40), 3))
    for step in steps:
        p = launch(tmp_path, generated_cifar, fault=f"kill:{step}")
        assert p.returncode == -signal.SIGKILL, f"not killed at step {step}: {p.stderr_text[-500:]}"
    p = launch(tmp_path, generated_cifar)
    assert p.returncode == 0, p.stderr_text[-1000:]
    pd.testing.assert_frame_equal(metrics(tmp_path), reference, check_exact=True)


def test_sigterm_checkpoints_mid_interval_and_the_rerun_resumes_exactly(tmp_path, generated_cifar, reference):
    p = launch(tmp_path, generated_cifar, "eval_every=20", fault="term:27")  # SIGTERM between two evaluations
    assert p.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
    meta = read_meta(tmp_path / "r" / RUN)
    assert meta["status"] == "preempted" and meta["preempted_at_step"] == 27
    p = launch(tmp_path, generated_cifar, "eval_every=20")
    assert p.returncode == 0
    expected = reference[reference.step.isin([20, 40])].reset_index(drop=True)
    ours = metrics(tmp_path)
    pd.testing.assert_frame_equal(ours[["step", "epoch", "lr", "test_loss", "test_err"]],
                                  expected[["step", "epoch", "lr", "test_loss", "test_err"]], check_exact=True)
    assert len(ours) == 2  # and the training sums survived the mid-interval stop (same rows as uninterrupted):
    launch(tmp_path / "u", generated_cifar, "eval_every=20")
    pd.testing.assert_frame_equal(ours, metrics(tmp_path / "u"), check_exact=True)


def checkpoint_step(run_dir) -> int:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["state"]["step"]


def test_ctrl_c_stops_at_the_step_with_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, generated_cifar,
                                                                                  reference):
    """SIGINT mid-interval (step 15, after the first row): one line saying where it stopped, exit 130, no
    traceback, status 'interrupted', a checkpoint at step 15 (not 10: nothing since the last row is lost)."""
    p = launch(tmp_path, generated_cifar, fault="int:15")
    assert p.returncode == 130 and "Traceback" not in p.stderr_text, p.stderr_text[-2000:]
    run_dir = tmp_path / "r" / RUN
    assert "[ResNet-20] Ctrl-C: stopped at step 15/40" in p.stdout_text and "rerun the same command" in p.stdout_text
    meta = read_meta(run_dir)
    assert meta["status"] == "interrupted" and meta["preempted_at_step"] == 15
    assert checkpoint_step(run_dir) == 15 and metrics(tmp_path).step.max() == 10
    p = launch(tmp_path, generated_cifar)
    assert p.returncode == 0 and "resuming" in p.stdout_text, p.stderr_text[-1000:]
    pd.testing.assert_frame_equal(metrics(tmp_path), reference, check_exact=True)
    assert read_meta(run_dir)["status"] == "done"


def test_ctrl_c_in_a_sweep_stops_it_after_the_interrupted_run_and_the_rerun_resumes_it(tmp_path, generated_cifar,
                                                                                       reference):
    cmd = [*train_cmd(tmp_path, generated_cifar, "model.shortcut=none,A", f"hydra.sweep.dir={tmp_path / 'hy'}")]
    cmd.insert(3, "-m")
    sweep = lambda **env: subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,  # noqa: E731
                                         env={**{k: v for k, v in os.environ.items() if k != "REPRO_FAULT"}, **env},
                                         preexec_fn=sigint_default)
    out = sweep(REPRO_FAULT="int:15")
    assert out.returncode == 130 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "[sweep] interrupted (Ctrl-C)" in out.stderr and "rerun the same command to resume the sweep" in out.stderr
    assert read_meta(tmp_path / "r" / "cifar10-plain-20-s0")["status"] == "interrupted"
    assert not (tmp_path / "r" / RUN).exists()  # the sweep's next run never started
    out = sweep()
    assert out.returncode == 0 and "resuming" in out.stdout, out.stderr[-2000:]
    assert read_meta(tmp_path / "r" / "cifar10-plain-20-s0")["status"] == "done"
    pd.testing.assert_frame_equal(metrics(tmp_path), reference, check_exact=True)


def test_a_second_ctrl_c_exits_at_once_and_the_last_checkpoint_stands(tmp_path, generated_cifar, reference):
    p = launch(tmp_path, generated_cifar, fault="int2:15")  # the second SIGINT while the first is handled
    assert p.returncode == 130 and "Traceback" not in p.stderr_text, p.stderr_text[-2000:]
    assert p.stderr_text.strip().splitlines() == ["second Ctrl-C: stopped at once; the last checkpoint stands: "
                                                  "rerun the same command to resume from it"]
    assert checkpoint_step(tmp_path / "r" / RUN) == 10
    assert launch(tmp_path, generated_cifar).returncode == 0
    pd.testing.assert_frame_equal(metrics(tmp_path), reference, check_exact=True)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes_exactly(tmp_path, generated_cifar,
                                                                               reference):
    """ENOSPC while the checkpoint of step 30 is written (injected where a full disk fails it: the temp file
    written, before the rename): one line naming the file, the cause and the fix, exit 1, the run marked failed,
    the checkpoint of step 20 whole and no temp file left; with room again the rerun gives the uninterrupted CSV."""
    p = launch(tmp_path, generated_cifar, fault="enospc:30")
    run_dir = tmp_path / "r" / RUN
    assert p.returncode == 1, p.stderr_text[-2000:]
    (line,) = p.stderr_text.strip().splitlines()
    assert line.startswith(f"error: cannot write {run_dir / 'checkpoint.pt'}: no space left on the device (ENOSPC); "
                           f"free some space") and "its checkpoint at step 20 kept" in line, line
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and "ENOSPC" in meta["error"]
    assert checkpoint_step(run_dir) == 20 and not list(run_dir.glob(".*.tmp"))
    assert list(metrics(tmp_path).step) == [10, 20, 30]  # rows are written before their checkpoint
    p = launch(tmp_path, generated_cifar)
    assert p.returncode == 0 and "resuming" in p.stdout_text, p.stderr_text[-1000:]
    pd.testing.assert_frame_equal(metrics(tmp_path), reference, check_exact=True)


@pytest.fixture
def read_only_folder(tmp_path):
    """A real folder that cannot be written: a read-only tmpfs where this process may mount one (root, as in
    CI), else a folder without write permission (which root would ignore)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder, "permission denied (EACCES)"
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("root without the right to mount a read-only tmpfs here")
    try:
        yield folder, "read-only file system (EROFS)"
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_results_folder_is_one_line_exit_2_and_nothing_written(generated_cifar, read_only_folder):
    folder, cause = read_only_folder
    p = launch(folder / "results", generated_cifar)
    assert p.returncode == 2, p.stderr_text[-2000:]
    (line,) = p.stderr_text.strip().splitlines()
    assert line.startswith(f"error: cannot write {folder / 'results'}") and cause in line and "results_dir=" in line
    assert not any(folder.iterdir())
    from repro.plots.__main__ import main as plots

    # a figure of the committed runs drawn into it: one line, exit 2
    assert plots(["fig1", "--results", str(ROOT / "results" / "fig6_short"), "--out", str(folder / "plots")]) == 2
    assert not any(folder.iterdir())


def test_commands_end_on_ctrl_c_with_one_line_and_exit_130(capsys):
    from repro.errors import command

    @command
    def busy() -> int:
        raise KeyboardInterrupt

    assert busy() == 130 and capsys.readouterr().err.startswith("interrupted (Ctrl-C)")


def test_a_finished_run_is_skipped_without_touching_the_data(tmp_path, generated_cifar):
    data = tmp_path / "data"
    write_cifar_folder(data, n_train=1000, n_test=500)
    assert launch(tmp_path, data, "optim.total_steps=10").returncode == 0
    csv = tmp_path / "r" / RUN / "metrics.csv"
    before = (csv.stat().st_mtime_ns, csv.read_bytes())
    (data / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"gone")  # reading it now would fail
    p = launch(tmp_path, data, "optim.total_steps=10")
    assert p.returncode == 0 and "is done; skipping" in p.stdout_text, p.stderr_text[-500:]
    assert (csv.stat().st_mtime_ns, csv.read_bytes()) == before  # and its results untouched


def test_the_same_run_finished_by_another_experiment_is_reused_not_trained_again(tmp_path, generated_cifar):
    from repro.results import distinct_runs, read_results

    assert launch(tmp_path, generated_cifar, "optim.total_steps=10").returncode == 0
    p = launch(tmp_path, generated_cifar, "optim.total_steps=10", "exp_name=other")
    assert p.returncode == 0 and "reused it instead of training it again" in p.stdout_text
    assert "[ResNet-20] step" not in p.stdout_text  # nothing was trained
    reused = tmp_path / "other" / RUN
    assert read_meta(reused)["reused_from"] == str(tmp_path / "r" / RUN)
    assert (reused / "metrics.csv").read_bytes() == (tmp_path / "r" / RUN / "metrics.csv").read_bytes()
    both = read_results(tmp_path)
    assert both.path.nunique() == 2 and distinct_runs(both).path.nunique() == 1  # one computation, counted once
    p = launch(tmp_path, generated_cifar, "optim.total_steps=10", "exp_name=third", "seed=1")  # another seed: trained
    assert "reused" not in p.stdout_text and read_meta(tmp_path / "third" / "cifar10-resnet-20-s1")["status"] == "done"


def test_a_changed_config_is_refused_naming_the_keys_and_overwrite_moves_it_aside(tmp_path, generated_cifar):
    short = "optim.total_steps=10"
    assert launch(tmp_path, generated_cifar, short).returncode == 0
    old = (tmp_path / "r" / RUN / "metrics.csv").read_bytes()
    p = launch(tmp_path, generated_cifar, short, "optim.lr=0.05")
    assert p.returncode == 2
    assert "optim.lr: 0.1 -> 0.05" in p.stderr_text and "overwrite=true" in p.stderr_text
    assert (tmp_path / "r" / RUN / "metrics.csv").read_bytes() == old  # untouched
    p = launch(tmp_path, generated_cifar, short, "optim.lr=0.05", "overwrite=true")
    assert p.returncode == 0
    assert (tmp_path / "r" / f"{RUN}.old-1" / "metrics.csv").read_bytes() == old  # moved aside, not deleted
    assert read_meta(tmp_path / "r" / RUN)["status"] == "done"


def test_a_failing_run_does_not_stop_the_sweep_and_is_recorded(tmp_path, generated_cifar):
    cmd = [python(), "-m", "repro.train", "-m", *BASE, f"results_dir={tmp_path}", f"data.root={generated_cifar}",
           "model.shortcut=none,A", "optim.total_steps=20", f"hydra.sweep.dir={tmp_path / 'hy'}"]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "REPRO_FAULT": "raise:15"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]  # the sweep went on, then said that runs failed
    assert "error: 2 run(s) of this sweep failed" in out.stderr and "  model.shortcut=none " in out.stderr
    for run_name in ("cifar10-plain-20-s0", RUN):  # the first failed, the second still ran (and failed too)
        meta = read_meta(tmp_path / "r" / run_name)
        assert meta["status"] == "failed" and "injected failure at step 15" in meta["error"]
        assert len(pd.read_csv(tmp_path / "r" / run_name / "metrics.csv")) == 1  # the row of step 10 is kept
    assert out.stderr.count("continuing with the next run") == 2


def test_divergence_is_a_result_not_a_crash(tmp_path, generated_cifar):
    p = launch(tmp_path, generated_cifar, "optim.lr=1e12", "optim.milestones=[0.99]")
    assert p.returncode == 0, p.stderr_text[-1000:]
    run_dir = tmp_path / "r" / RUN
    assert read_meta(run_dir)["status"] == "diverged"
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert len(rows) >= 1 and not rows.train_loss.iloc[-1] < float("inf")
    from repro.plots.figures import label
    from repro.results import read_results

    assert label(read_results(tmp_path / "r"), (20, "A")) == "ResNet-20 (diverged)"


def _tamper(kind, root):
    folder = write_cifar_folder(root)
    f = folder / "data_batch_2"
    if kind == "truncated":
        f.write_bytes(f.read_bytes()[:500])
    elif kind == "code":
        f.write_bytes(b"cos\nsystem\n(S'touch " + str(root / "PWNED").encode() + b"'\ntR.")
    elif kind == "shape":
        f.write_bytes(pickle.dumps({b"data": torch.zeros(4, 100, dtype=torch.uint8).numpy(), b"labels": [0] * 4}, 2))
    return root


BAD = {
    "depth": (["model.depth=21"], "CIFAR depth must be 6n+2"),
    "shortcut": (["model.shortcut=D"], "unknown shortcut 'D'; valid: none, A, B, C"),
    "experiment": (["exp=fig99"], "unknown exp 'fig99' (exp=fig99); known: convergence, default, demo"),
    "missing data": (["data.download=false", "data.root=/nonexistent/cifar"], "not found in /nonexistent/cifar"),
    "eval_every": (["eval_every=0"], "eval_every=0 must be a positive integer"),
    "batch_size": (["optim.batch_size=-1"], "optim.batch_size=-1 must be a positive integer"),
    "total_steps": (["optim.total_steps=0"], "optim.total_steps=0 must be a positive integer"),
    "fast switch": (["fast.bf16=sometimes"], "fast.bf16='sometimes'; valid: auto, true, false"),
    "compile mode": (["fast.compile=fastest"], "fast.compile='fastest'; valid: false, true, default"),
    "graphs with splits": (["fast.compile=reduce-overhead", "optim.splits=2"],
                           "fast.compile=reduce-overhead with optim.splits=2"),
    "truncated": ("truncated", "corrupt CIFAR-10 file"),
    "code": ("code", "refusing to load os.system"),
    "shape": ("shape", "expected uint8 N x 3072"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_clear_line_and_writes_nothing(tmp_path, generated_cifar, case):
    extra, message = BAD[case]
    results = tmp_path / "results"
    cifar = generated_cifar
    if isinstance(extra, str):
        cifar, extra = _tamper(extra, tmp_path / "c"), []
    cmd = train_cmd(results, cifar, *extra)
    if case == "experiment":
        cmd.remove("exp=smoke")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-1000:]  # as the README promises: exit 2 ...
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines  # ... one line
    assert not results.exists()  # nothing written to results/
    assert not (tmp_path / "c" / "PWNED").exists()


def test_cuda_out_of_memory_suggests_a_smaller_batch_and_leaves_no_folder(tmp_path, generated_cifar, monkeypatch):
    import repro.train.loop as t

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(t, "train", oom)
    cfg = compose(["exp=smoke", f"results_dir={tmp_path}", f"data.root={generated_cifar}", "exp_name=r"])
    with pytest.raises(ConfigError, match=r"CUDA out of memory at optim.batch_size=32; try a smaller batch \(e.g. optim.batch_size=16\)"):
        run(cfg)
    assert not (tmp_path / "r").exists()  # no run folder, and no empty experiment folder either


def test_speed_switches_and_placement_may_change_on_resume_but_the_experiment_may_not():
    old = {"optim": {"lr": 0.1}, "fast": {"bf16": "auto"}, "threads": 1, "device": "cpu"}
    moved = {"optim": {"lr": 0.1}, "fast": {"bf16": False, "cpu_allocator": "auto"}, "threads": None, "device": "cuda"}
    diff = lambda new: list(run_diff(old, {}, new, "fp32"))  # noqa: E731  (old meta: arithmetic unrecorded)
    assert diff(moved) == []  # e.g. started on a CPU, finished on a GPU with a newer fast group
    assert diff({**moved, "optim": {"lr": 0.05}}) == ["optim.lr"]


def test_the_arithmetic_may_not_change_on_resume(tmp_path):
    """bf16 autocast changes the numbers (it is part of the protocol): a run started in bf16 is not
    continued in fp32, whatever fast.bf16=auto resolves to on the new machine."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"optim": {"lr": 0.1}, "fast": {"bf16": "auto"}}
    (run_dir / "config.yaml").write_text("optim: {lr: 0.1}\nfast: {bf16: auto}\n")
    (run_dir / "meta.json").write_text('{"status": "running", "fast": {"bf16": true}}')
    assert prepare_run_dir(run_dir, config, "bf16") == "resume"
    with pytest.raises(Exception, match="arithmetic: bf16 -> fp32"):
        prepare_run_dir(run_dir, config, "fp32")


def test_a_resume_keeps_the_optimiser_switches_of_this_process_not_the_checkpoints(tmp_path):
    """Checkpointed in channels_last with fused SGD, resumed contiguous with the loop over tensors: the
    momentum buffers take the parameters' layout (CUDA's fused SGD rejects mismatched strides) and the
    fused flag is this process's (load_state_dict would take the checkpoint's)."""
    from repro.train.checkpoint import State, save_checkpoint

    torch.manual_seed(0)
    old = build_model("cifar10", 20, "A").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(old.parameters(), lr=0.1, momentum=0.9, fused=True)
    torch.nn.functional.cross_entropy(old(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    save_checkpoint(tmp_path / "checkpoint.pt", old, opt, State(step=1))
    new = build_model("cifar10", 20, "A")
    new_opt = torch.optim.SGD(new.parameters(), lr=0.1, momentum=0.9, fused=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt", new, new_opt).step == 1
    assert all(g["fused"] is False for g in new_opt.param_groups)
    moved = 0
    for p_old, p in zip(old.parameters(), new.parameters()):
        buf = new_opt.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride() and torch.equal(buf, opt.state[p_old]["momentum_buffer"])
        moved += p_old.stride() != p.stride()
    assert moved > 0  # the 4-d conv weights did change layout


def test_split_steps_under_ddp_all_reduce_once():
    """optim.splits chunks: every chunk but the last runs under DDP's no_sync (one gradient all-reduce per
    step, not one per chunk)."""
    import contextlib

    from repro.train.step import train_step

    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(1)
        yield

    net = build_model("cifar10", 20, "A")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sums = torch.zeros(3, dtype=torch.float64)
    train_step(net, opt, torch.randn(8, 3, 32, 32), torch.arange(8) % 10, sums, splits=4, no_sync=no_sync)
    assert len(entered) == 3 and sums[2] == 8


def test_a_run_is_not_resumed_on_other_data_put_in_its_folder(tmp_path, monkeypatch):
    """The files under data.root replaced between a kill and the rerun: refused, naming both copies, and the
    run folder left as it was (no rows dropped)."""
    from conftest import tiny_run_overrides

    from repro.errors import ResultsError

    data = tmp_path / "data"
    write_cifar_folder(data, n_train=1000, n_test=500)
    overrides = tiny_run_overrides(tmp_path / "res", data, "analyze_responses=false", "save_model=false")
    monkeypatch.setenv("REPRO_FAULT", "raise:15")  # after the row and checkpoint of step 10
    with pytest.raises(RuntimeError, match="injected failure"):
        run(compose(overrides))
    monkeypatch.delenv("REPRO_FAULT")
    write_cifar_folder(data, n_train=1000, n_test=500, seed=1)  # other images, same folder
    (run_dir,) = (tmp_path / "res" / "t").iterdir()
    before = (run_dir / "metrics.csv").read_bytes()
    with pytest.raises(ResultsError, match=r"was started on CIFAR-10 \(copy \w{8}\), but .* now holds another "
                                           r"copy \(copy \w{8}\).*overwrite=true"):
        run(compose(overrides))
    assert (run_dir / "metrics.csv").read_bytes() == before


def test_a_finished_run_counts_as_the_same_data_by_its_md5s_not_its_folder(tmp_path):
    from repro.data.cifar import cifar_fingerprint
    from repro.train.run import same_data

    data = tmp_path / "d"
    write_cifar_folder(data)
    check, old = same_data(compose(["exp=smoke", f"data.root={data}"])), {"data": {"root": str(data)}}
    md5 = cifar_fingerprint(data)
    assert check(old, {"data_md5": md5})
    assert not check(old, {"data_md5": {**md5, "test_batch": "0" * 32}})  # other files once stood in this folder
    assert check(old, {})  # an older run without md5s: the same folder is all there is to go by


def test_a_run_folder_has_one_owner_and_a_killed_owner_frees_it(tmp_path):
    """RunLock: a second owner is refused naming the holder; released, the folder is free again; a holder
    killed with SIGKILL leaves its lock file behind but not its lock (never a stale lock to delete by hand)."""
    from repro.train.rundir import RunBusy, RunLock

    run_dir = tmp_path / "r" / RUN
    first = RunLock(run_dir).acquire(0)
    with pytest.raises(RunBusy, match=rf"{RUN} is being trained by pid {os.getpid()} on .* since .*rerun the same"):
        RunLock(run_dir).acquire(0)
    first.release()
    RunLock(run_dir).acquire(0).release()
    assert not (tmp_path / "r").exists()  # nothing left behind
    code = (f"import os, signal; from pathlib import Path; from repro.train.rundir import RunLock; "
            f"RunLock(Path({str(run_dir)!r})).acquire(0); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([python(), "-c", code], cwd=ROOT).returncode == -signal.SIGKILL
    assert (tmp_path / "r" / f".{RUN}.lock").exists()  # the file stayed, its lock died with its process
    RunLock(run_dir).acquire(0).release()


def line_with(proc, text: str) -> str:
    """Read `proc`'s stdout until a line containing `text` (progress decides, never the clock); fails if the
    process ends first."""
    for line in proc.stdout:
        if text in line:
            return line
    raise AssertionError(f"ended before printing {text!r}: {proc.stderr.read()[-1000:]}")


def test_the_same_run_started_twice_at_once_trains_once(tmp_path, generated_cifar, reference):
    """The second start waits for the first (held at step 5 by SIGSTOP until the second says it waits), then
    skips the finished run: both end, every row once, the CSV the uninterrupted run's."""
    first = launch(tmp_path, generated_cifar, fault="stop:5", wait=False)
    line_with(first, "stops at step 5")
    second = launch(tmp_path, generated_cifar, "lock_wait_s=600", wait=False)
    assert f"pid {first.pid}" in line_with(second, "is being trained by")
    os.kill(first.pid, signal.SIGCONT)
    out, err = second.communicate(timeout=300)
    assert first.wait(timeout=300) == 0 and second.returncode == 0, err[-1000:]
    assert "let go of it" in out and "is done; skipping" in out and "[ResNet-20] step" not in out
    pd.testing.assert_frame_equal(metrics(tmp_path), reference, check_exact=True)


def test_a_run_held_too_long_is_refused_in_one_line_naming_the_holder(tmp_path, generated_cifar):
    first = launch(tmp_path, generated_cifar, fault="stop:5", wait=False)
    try:
        line_with(first, "stops at step 5")
        second = launch(tmp_path, generated_cifar, "lock_wait_s=0")
        assert second.returncode == 2
        lines = second.stderr_text.strip().splitlines()
        assert len(lines) == 1 and f"is being trained by pid {first.pid}" in lines[0], lines
    finally:
        first.kill()
        first.communicate()


def test_meta_records_the_warm_up_exit_step_and_a_resume_after_it_keeps_it(tmp_path, generated_cifar, monkeypatch):
    """§4.2's warm-up (here for every depth, ending below 95% training error): meta.json says at which step it
    ended, and a run killed after that point and resumed keeps the same step there."""
    from conftest import tiny_run_overrides

    overrides = tiny_run_overrides(tmp_path, generated_cifar, "optim.warmup_from_depth=null", "save_model=false",
                                   "optim.warmup_until_err=0.95", "optim.total_steps=40", "analyze_responses=false")
    run(compose(overrides))
    (run_dir,) = (tmp_path / "t").iterdir()
    exit_step = read_meta(run_dir)["warmup_exit_step"]
    assert exit_step is not None and exit_step % 10 == 0 and exit_step < 40
    again = [*overrides, f"results_dir={tmp_path / 'again'}"]  # elsewhere: not reused from the finished one
    monkeypatch.setenv("REPRO_FAULT", f"raise:{exit_step + 5}")
    with pytest.raises(RuntimeError, match="injected failure"):
        run(compose(again))
    monkeypatch.delenv("REPRO_FAULT")
    assert run(compose(again)) == "done"
    assert read_meta(tmp_path / "again" / "t" / run_dir.name)["warmup_exit_step"] == exit_step
