"""Every experiment composes from the real config tree; sweeps carry their grids; launchers compose."""

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments" / "exp").glob("*.yaml"))


def _compose(overrides, hydra_cfg=False):
    with initialize_config_dir(str(ROOT / "experiments"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def test_the_paper_experiments_exist():
    for name in ("fig1", "fig6_plain", "fig6_resnet", "fig6_1202", "table6", "smoke", "demo"):
        assert name in EXPERIMENTS


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(exp):
    plain = OmegaConf.to_container(_compose([f"exp={exp}"]), resolve=True)
    assert plain["model"]["family"] in ("cifar10", "imagenet")
    assert plain["optim"]["total_steps"] > 0 and plain["eval_every"] > 0
    assert plain["exp_name"].replace("-", "_").startswith(exp.split("_imagenette")[0])  # named after its file


def test_defaults_are_the_papers_cifar_protocol():
    cfg = _compose([])
    o = cfg.optim
    assert (o.lr, o.momentum, o.weight_decay, o.batch_size, o.total_steps) == (0.1, 0.9, 1e-4, 128, 64000)
    assert [round(m * o.total_steps) for m in o.milestones] == [32000, 48000]
    assert (o.warmup_lr, o.warmup_until_err, o.warmup_from_depth) == (0.01, 0.8, 110)
    assert cfg.model.shortcut == "A" and cfg.model.depth == 20
    assert o.total_steps // cfg.eval_every >= 100  # >= 100 points over a 64k run


@pytest.mark.parametrize("exp,grid", [
    ("fig1", {"model.depth": "20,56"}),
    ("fig6_plain", {"model.depth": "20,32,44,56"}),
    ("fig6_resnet", {"model.depth": "20,32,44,56,110"}),
    ("fig6_1202", {"model.depth": "110,1202"}),
    ("table6", {"model.depth": "20,32,44,56,110", "seed": "0,1,2,3,4"}),
])
def test_experiments_carry_their_sweep_grid(exp, grid):
    cfg = _compose([f"exp={exp}"], hydra_cfg=True)
    assert dict(cfg.hydra.sweeper.params) == grid


def test_parallel_launcher_composes():
    cfg = _compose(["exp=fig6_plain", "hydra/launcher=parallel"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == 2


def test_slurm_launcher_composes():
    cfg = _compose(["exp=fig6_resnet", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"], hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (1, 1, "gpu")
    assert launcher.signal_delay_s > 0 and launcher.additional_parameters.requeue is True


@pytest.mark.parametrize("net", sorted(p.stem for p in (ROOT / "experiments" / "net").glob("*.yaml")))
def test_every_net_file_names_its_net(net):
    cfg = _compose([f"+net={net}"])
    kind, depth = net.split("-")[:2]
    assert cfg.model.depth == int(depth) and (cfg.model.shortcut == "none") == (kind == "plain")
    assert (cfg.fast.bf16 is False) == net.endswith("-fp32")


def test_the_reference_sweep_is_fig6s_nine_nets_and_resnet56_in_fp32():
    cfg = _compose(["exp=fig6_short"], hydra_cfg=True)
    nets = cfg.hydra.sweeper.params["+net"].split(",")
    assert sorted(nets) == sorted([f"plain-{d}" for d in (20, 32, 44, 56)] + [f"resnet-{d}" for d in (20, 32, 44, 56, 110)]
                                  + ["resnet-56-fp32"])
    assert (cfg.optim.total_steps, cfg.eval_every, cfg.model.width, cfg.data.train_size, cfg.data.test_size) == \
        (8000, 250, None, 0, 0)


def test_command_line_overrides_win_over_the_experiment():
    cfg = _compose(["exp=fig6_plain", "optim.total_steps=200", "eval_every=50"])
    assert cfg.optim.total_steps == 200 and cfg.eval_every == 50 and cfg.model.shortcut == "none"


def committed_runs() -> list:
    """The reference runs in the repository (`git ls-files`; every run folder of a clone without git), not
    the runs a developer is training in this checkout meanwhile."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "results/fig*/*/config.yaml"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        return sorted(ROOT / f for f in out)
    except (OSError, subprocess.CalledProcessError):
        return sorted((ROOT / "results").glob("fig*/*/config.yaml"))


COMMITTED = committed_runs()


@pytest.mark.parametrize("saved", COMMITTED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_the_committed_reference_runs_are_still_skipped_by_their_own_command(saved):
    """Config keys added since these runs were made (operational ones: lock_wait_s, dist_timeout_s, ...) must
    not change their identity: rerunning their experiment skips them instead of refusing or retraining."""
    import yaml

    from repro.results import read_meta
    from repro.train.rundir import prepare_run_dir

    old, meta = yaml.safe_load(saved.read_text()), read_meta(saved.parent)
    net = f"{'plain' if old['model']['shortcut'] == 'none' else 'resnet'}-{old['model']['depth']}"
    overrides = [f"exp={old['exp_name']}", f"seed={old['seed']}"] + \
        ([f"+net={net}{'-fp32' if old['fast']['bf16'] is False else ''}"] if old["exp_name"] == "fig6_short" else
         [f"model.depth={old['model']['depth']}", f"model.shortcut={old['model']['shortcut']}"])  # a sweep's point
    config = OmegaConf.to_container(_compose(overrides), resolve=True)
    arith = "bf16" if meta["fast"]["bf16"] else "fp32"
    assert meta["status"] == "done" and prepare_run_dir(saved.parent, config, arith) == "skip"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_config_key_is_classified_as_protocol_or_operational(exp):
    """A new key must be put in repro.protocol.PROTOCOL_KEYS (it changes numbers) or OPERATIONAL (it does not):
    an unclassified key fails here, before it can silently join or miss every run's identity."""
    from repro.protocol import OPERATIONAL, PROTOCOL_KEYS, flatten

    assert not PROTOCOL_KEYS & OPERATIONAL
    keys = flatten(OmegaConf.to_container(_compose([f"exp={exp}"]), resolve=True))
    unclassified = sorted(k for k in keys if k not in PROTOCOL_KEYS | OPERATIONAL and not k.startswith("fast."))
    assert not unclassified, f"exp={exp}: add {unclassified} to PROTOCOL_KEYS or OPERATIONAL in repro/protocol.py"


def test_the_default_config_is_the_paper_protocol_and_an_added_operational_key_changes_no_identity():
    """The default composition, on the official CIFAR-10 files in fp32, is labelled `paper`; a key added to the
    config later (here keys no code knows, and the tracker group) leaves the identity, the label and a saved run's
    skip/resume decision as they were; a changed protocol key does not."""
    import yaml

    from repro.protocol import OFFICIAL_MD5, identity, label
    from repro.train.rundir import prepare_run_dir

    official_fp32 = {"data_md5": OFFICIAL_MD5, "fast": {"bf16": False}}
    config = OmegaConf.to_container(_compose([]), resolve=True)
    assert label(identity(config, official_fp32)) == "paper"
    for logger in ("tensorboard", "wandb"):
        added = OmegaConf.to_container(_compose(["+notes=x", f"logger={logger}", "logger.dir=elsewhere",
                                                 "+logger.flush_s=30"]), resolve=True)
        assert identity(added, official_fp32) == identity(config, official_fp32)
    changed = OmegaConf.to_container(_compose(["optim.lr=0.05"]), resolve=True)
    assert label(identity(changed, official_fp32)) == "lr 0.05"
    if COMMITTED:  # a committed run's saved config with the added keys: still skipped
        from repro.errors import ResultsError
        from repro.results import read_meta

        saved = COMMITTED[0]
        old, meta = yaml.safe_load(saved.read_text()), read_meta(saved.parent)
        arith = "bf16" if meta["fast"]["bf16"] else "fp32"
        tracked = {**old, "notes": "x", "logger": {"name": "tensorboard", "flush_s": 30}}
        assert prepare_run_dir(saved.parent, tracked, arith) == "skip"
        with pytest.raises(ResultsError, match="optim.lr"):  # refused, the folder left as it is
            prepare_run_dir(saved.parent, {**old, "optim": {**old["optim"], "lr": 0.05}}, arith)


def test_the_quick_suite_fails_a_test_over_its_budget_and_passes_a_slow_one(pytester, monkeypatch):
    """The guard of `make test` (tests/budget.py): in CI a quick test over the budget fails the session and is
    named (elsewhere it is named as a warning); the same test marked slow does not count; under it all pass.
    No clock: each inner test's reported duration is set by its `takes(seconds)` mark (the guard reads only the
    reports), so the outcome is the same on any machine."""
    pytester.makeconftest("""
        import pytest
        pytest_plugins = ("budget",)

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(item, call):
            report = (yield).get_result()
            mark = item.get_closest_marker("takes")
            report.duration = mark.args[0] if mark is not None and call.when == "call" else 0.0
    """)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n    takes: its reported duration\n")
    pytester.makepyfile(test_timed="""
        import pytest
        @pytest.mark.takes(50.0)
        def test_lingers(): pass
        @pytest.mark.slow
        @pytest.mark.takes(50.0)
        def test_lingers_marked(): pass
        @pytest.mark.takes(44.0)
        def test_within(): pass
    """)
    monkeypatch.delenv("REPRO_QUICK_TEST_BUDGET_S", raising=False)  # the stated budget, 45 s
    monkeypatch.setenv("CI", "true")
    over = pytester.runpytest("-p", "no:cacheprovider")
    assert over.ret == pytest.ExitCode.TESTS_FAILED
    over.stdout.fnmatch_lines(["*test_timed.py::test_lingers took 50.0 s, over the 45 s budget*"])
    assert "test_lingers_marked took" not in over.stdout.str() and "test_within took" not in over.stdout.str()
    monkeypatch.delenv("CI")  # outside CI: named, as a warning
    warned = pytester.runpytest("-p", "no:cacheprovider")
    assert warned.ret == pytest.ExitCode.OK and "test_lingers took 50.0 s" in warned.stdout.str()
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("REPRO_QUICK_TEST_BUDGET_S", "60")
    assert pytester.runpytest("-p", "no:cacheprovider").ret == pytest.ExitCode.OK
