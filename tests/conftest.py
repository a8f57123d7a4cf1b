"""Shared fixtures: the real CIFAR-10 copy beside the checkout, tiny data sets in the exact on-disk
format, and a helper that composes the real Hydra configs (shrunk) for training runs."""
from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ("budget", "pytester")  # budget: the quick suite's per-test guard (tests/budget.py)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CIFAR = SHARED / "cifar10"
IMAGENETTE = SHARED / "imagenette"


def pytest_configure(config) -> None:
    """Under pytest-xdist (make test: one worker per core), each worker's in-process torch gets its share of
    the cores, so that two workers do not fight over both."""
    if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def has_real_cifar() -> bool:
    return (CIFAR / "cifar-10-batches-py" / "data_batch_1").exists()


@pytest.fixture(scope="session")
def real_cifar_root() -> Path:
    """The real CIFAR-10 copy, for the few tests whose point is real images (they skip without it)."""
    if not has_real_cifar():
        pytest.skip(f"needs real images: CIFAR-10 copy not found at {CIFAR} (CI has ../shared beside the checkout)")
    return CIFAR


@pytest.fixture(scope="session")
def generated_cifar(tmp_path_factory) -> Path:
    """The embedded synthetic task (2,000 / 500 images) written in the exact cifar-10-batches-py format and
    read through the real reader: for tests whose point is the machinery (faults, resume, sweeps), which
    start many processes, each reading its data in milliseconds."""
    from repro.data.cifar import make_synthetic, write_cifar_format

    root = tmp_path_factory.mktemp("generated-cifar10")
    write_cifar_format(root, *make_synthetic(n_train=2000, n_test=500))
    return root


@pytest.fixture(scope="session")
def cifar_root(generated_cifar) -> Path:
    """CIFAR-10 for training tests: the real copy beside the checkout, else (a user's clone) the generated one."""
    return CIFAR if has_real_cifar() else generated_cifar


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    """A local HTTP server for tmp_path: the real download code path (CIFAR-10's, Imagenette's), without the
    internet. (torchvision's downloader needs a Content-Length, which file:// URLs do not give.) Quiet: its request
    log would mix with the commands' own stderr."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda request, address: None  # a client that hangs up early (bad md5) is no error here
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def write_cifar_folder(root: Path, n_train: int = 250, n_test: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-10 of random pixels in the exact cifar-10-batches-py format (protocol-2 pickles)."""
    from repro.data.cifar import write_cifar_format

    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n_test))
    return write_cifar_format(root, *arrays)


@pytest.fixture
def tiny_cifar(tmp_path) -> Path:
    write_cifar_folder(tmp_path / "cifar")
    return tmp_path / "cifar"


def compose(overrides: list[str]):
    """The real config tree, composed with `overrides` (as `python -m repro.train` would)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "experiments"), version_base="1.3"):
        return hcompose("config", overrides=overrides, return_hydra_config=False)


# The nets of the tests whose point is the machinery (resume, locks, sweeps, trackers, packs), not the numbers:
# first-stage width 4 and 100 test images. Exact resume, one owner per folder and the CSV contract hold at any
# size; a test that needs the paper's width (golden parameter counts) passes model.width=null after these.
SMALL = ("model.width=4", "data.test_size=100", "data.eval_batch_size=100")


def tiny_run_overrides(results: Path, cifar: Path, *extra: str) -> list[str]:
    return ["exp=smoke", *SMALL, f"results_dir={results}", f"data.root={cifar}", "exp_name=t", *extra]


def python() -> str:
    return sys.executable


def train_process(args: list[str], fault: str | None = None, nproc: int | None = None, env: dict | None = None):
    """`python -m repro.train ARGS` run to its end (under torchrun with `nproc` processes when given), with the
    fault hook REPRO_FAULT set to `fault` or unset."""
    import os
    import subprocess

    launcher = [python(), "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else [python()]
    full_env = {k: v for k, v in os.environ.items() if k != "REPRO_FAULT"} | (env or {})
    if fault:
        full_env["REPRO_FAULT"] = fault
    return subprocess.run([*launcher, "-m", "repro.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=full_env)
