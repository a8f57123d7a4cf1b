"""Packaging (pyproject.toml, uv.lock): the pip lock is uv.lock's export, and a wheel installed into a fresh venv
(not editable, away from the checkout) carries its Hydra configs and entry points: the demo runs end to end."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT


def uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not installed (make install puts it in .venv)")
    return found


def test_the_pip_lock_is_uv_locks_export():
    """requirements.lock (make install INSTALLER=pip) holds exactly the versions and hashes of uv.lock: regenerate
    both with `make lock`. The command is the one the lock's header records."""
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    cmd = lines[1].lstrip("# ").split()
    assert cmd[:3] == ["uv", "export", "--frozen"] and cmd[-2:] == ["-o", "requirements.lock"], lines[1]
    out = subprocess.run([uv(), *cmd[1:-2], "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2:] == lines[2:], "requirements.lock is stale: run make lock"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install <wheel>` (non-editable) into a new venv, and an empty folder to run it from: (venv, folder,
    environment). The dependencies (torch...) are borrowed from this environment through a path file, so only the
    package itself comes from the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist, venv, work = tmp / "dist", tmp / "venv", tmp / "work"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(dist), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "borrowed_deps.pth").write_text("\n".join(deps) + "\n")  # paths only: the checkout's .pth not run
    (wheel,) = dist.glob("repro-*.whl")
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True,
                          text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REPRO_FAULT")}
    where = subprocess.run([str(py), "-c", "import repro, repro.train.config as c; print(repro.__file__, c.config_dir())"],
                           cwd=work, capture_output=True, text=True, env=env, check=True).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the installed copy, not the checkout
    return venv, work, env


def test_an_installed_wheel_trains_from_its_packaged_configs_and_a_users_own_folder(installed, tmp_path):
    """repro-train, from a wheel, run away from any checkout: the configs shipped in the package, plus a user's
    experiment from their own folder on Hydra's search path; an unknown experiment is still one line."""
    venv, work, env = installed
    mine = tmp_path / "my-configs" / "exp"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\nexp_name: mine\ndata:\n  name: synthetic\n"
                                    "  train_size: 256\n  test_size: 100\noptim:\n  total_steps: 4\n  batch_size: 32\n"
                                    "eval_every: 2\nanalyze_responses: false\nsave_model: false\n")
    t = subprocess.run([str(venv / "bin" / "repro-train"), "exp=mine", "threads=1",
                        f"hydra.searchpath=[file://{tmp_path / 'my-configs'}]"], cwd=work, capture_output=True,
                       text=True, env=env, timeout=300)
    assert t.returncode == 0, t.stderr
    assert len(pd.read_csv(work / "results" / "mine" / "synthetic-resnet-20-s0" / "metrics.csv")) == 2
    bad = subprocess.run([str(venv / "bin" / "repro-train"), "exp=nope"], cwd=work, capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith(
        "error: unknown exp 'nope' (exp=nope); known: convergence, default, demo")


@pytest.mark.slow
def test_an_installed_wheel_runs_the_demo_from_its_entry_point(installed):
    """repro-demo --embedded from the wheel: 4 runs trained, the figure, table, verdicts and report written."""
    venv, work, env = installed
    demo = subprocess.run([str(venv / "bin" / "repro-demo"), "--embedded", "optim.total_steps=40", "eval_every=20",
                           "data.test_size=200"], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    out = work / "plots" / "demo-deadleaves"
    for f in ("degradation.png", "final_errors.md", "verdicts.csv", "report.md", "report.html"):
        assert (out / f).stat().st_size > 0, f
    assert len(list((work / "results" / "demo-deadleaves").glob("*/metrics.csv"))) == 4
    assert (work / "results" / "demo-deadleaves" / "diagnostics.csv").exists()  # the init-time gradient figure's
